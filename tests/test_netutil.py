"""The loopback helpers every server-starting test shares (tests/netutil.py): a free port, and
a readiness wait that retries any request error until its deadline."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from netutil import free_port, wait_until_ready

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def _close(conn: socket.socket) -> None:
    """Reset: the client sees the connection dropped without an answer."""


def _garbage(conn: socket.socket) -> None:
    conn.sendall(b"not http at all\r\n\r\n")


def _silent(conn: socket.socket) -> None:
    time.sleep(1.0)  # longer than the attempt's read time-out


def _answer(payload: bytes) -> Callable[[socket.socket], None]:
    return lambda conn: conn.sendall(payload)


@pytest.fixture
def starting_server() -> Iterator[tuple[str, list[str]]]:
    """A server that, one connection each, drops, answers garbage, stays silent, answers 503
    and only then 200; yields its URL and the behaviours served so far."""
    behaviours = [_close, _garbage, _silent, _answer(UNAVAILABLE), _answer(OK)]
    served: list[str] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)

    def run() -> None:
        for behave in behaviours:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                served.append(behave.__name__)  # before the answer: the client may return
                behave(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/healthz", served
    listener.close()
    thread.join(timeout=5)


def test_the_readiness_wait_retries_every_request_error_until_the_answer(
    starting_server: tuple[str, list[str]],
) -> None:
    url, served = starting_server
    answer = wait_until_ready(url, 30, attempt_timeout_s=0.3)
    assert answer.status_code == 200 and answer.text == "ok"
    assert served == ["_close", "_garbage", "_silent", "<lambda>", "<lambda>"]


def test_the_readiness_wait_gives_up_at_its_deadline_naming_the_last_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/healthz"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"was not ready within 0.5 s \(ConnectionError"):
        wait_until_ready(url, 0.5, describe=lambda: "the server's log")
    assert 0.5 <= time.monotonic() - started < 10


def test_a_free_port_can_be_listened_on() -> None:
    with socket.create_server(("127.0.0.1", free_port())) as server:
        assert server.getsockname()[1] > 0
