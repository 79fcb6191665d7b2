"""R12 against `veil serve` itself: a body above `server.max_body_bytes` is refused with 413
before it is read whole, declared (Content-Length) or streamed (chunked)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from conftest import ADMIN, LoopbackStore, config_doc, token
from netutil import veil_serve

DECLARED = 300 * 1024 * 1024  # what the attacker announces
SENT = 2 * 1024 * 1024  # what this test actually sends: the server answers long before the rest


@pytest.fixture(scope="module")
def served(store_server: LoopbackStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp_path = tmp_path_factory.mktemp("body-limit")
    doc = config_doc(
        store_server.url, f"sqlite:///{tmp_path / 'veil.db'}", server={"workers": 1, "threads": 4}
    )
    with veil_serve(doc, tmp_path) as (url, _):
        yield url


def _exchange(url: str, head: str, chunks: Iterator[bytes]) -> tuple[int, bytes, int]:
    """Send ``head`` then ``chunks`` until the server answers; (status, answer, bytes sent)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        sock.setblocking(False)
        sent, answer = 0, b""
        deadline = time.monotonic() + 60
        for chunk in chunks:
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            except ConnectionResetError:
                break
            if answer:
                break
            try:
                sock.sendall(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            if time.monotonic() > deadline:
                break
        sock.setblocking(True)
        sock.settimeout(30)  # everything this test will send is sent: now the server must answer
        try:
            while not _complete(answer):
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
        except TimeoutError:
            pytest.fail(
                f"no answer after {sent} of {DECLARED} bytes: the server waits to read "
                "the whole body"
            )
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, answer, sent


def _complete(answer: bytes) -> bool:
    """Whether ``answer`` holds a whole response: headers and Content-Length bytes of body."""
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


def _pieces(total: int, size: int = 64 * 1024, chunked: bool = False) -> Iterator[bytes]:
    piece = b"[" * size
    for _ in range(total // size):
        yield (f"{size:x}\r\n".encode() + piece + b"\r\n") if chunked else piece


def test_declared_300_mib_body_is_413_before_it_is_read(served: str) -> None:
    head = (
        f"POST /veil/v1/reveal-sessions HTTP/1.1\r\nHost: veil\r\n"
        f"Authorization: Bearer {token(ADMIN)}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {DECLARED}\r\n\r\n"
    )
    status, answer, sent = _exchange(served, head, _pieces(SENT))
    assert status == 413, answer[:300]
    assert sent < DECLARED
    assert b"server.max_body_bytes" in answer or b"body_too_large" in answer


def test_streamed_body_without_length_is_cut_at_the_limit(served: str) -> None:
    head = (
        f"POST /veil/v1/reveal-sessions HTTP/1.1\r\nHost: veil\r\n"
        f"Authorization: Bearer {token(ADMIN)}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    status, answer, sent = _exchange(served, head, _pieces(SENT, chunked=True))
    assert status == 413, answer[:300]
    assert sent <= SENT + 64 * 1024


def test_bodies_under_the_limit_still_work(served: str) -> None:
    members = [f"user{i:05d}@contoso.com" for i in range(20_000)]  # about 500 KB
    body = json.dumps({"name": "Big", "members": members})
    assert 400_000 < len(body) < 1024 * 1024
    r = requests.put(
        f"{served}/veil/v1/groups/big",
        data=body,
        timeout=60,
        headers={"Authorization": f"Bearer {token(ADMIN)}", "Content-Type": "application/json"},
    )
    assert r.status_code in (200, 201), r.text
    assert requests.get(f"{served}/healthz", timeout=10).status_code == 200
