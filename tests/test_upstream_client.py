"""Veil's client for the store (urllib3): kept-alive connections, one retry on a connection the
store closed, redirects not followed, headers as sent before, gzip, errors as Veil errors.

The store here is a real HTTP/1.1 server on loopback, written on sockets so that each test
can decide how it treats its connections.
"""

from __future__ import annotations

import gzip
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from werkzeug.datastructures import Headers

from veil.config import UpstreamConfig
from veil.errors import UpstreamBadBody, UpstreamUnavailable
from veil.upstream import Upstream

from netutil import free_port

BODY = b'{"data": [{"id": 1}], "next": null}'


@dataclass
class Seen:
    connections: int = 0
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)


Answer = Callable[[int, str], bytes | None]  # (request number on this connection, path)
Serve = Callable[[Answer], tuple[str, Seen]]


def http_answer(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], tuple[str, Seen]]]:
    servers: list[socketserver.ThreadingTCPServer] = []

    def start(answer: Answer) -> tuple[str, Seen]:
        seen = Seen()

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                seen.connections += 1
                number = 0
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    path = line.split()[1].decode()
                    headers: dict[str, str] = {}
                    while (header := self.rfile.readline()) not in (b"\r\n", b""):
                        name, _, value = header.decode().partition(":")
                        headers[name.strip().lower()] = value.strip()
                    seen.requests.append((path, headers))
                    number += 1
                    reply = answer(number, path)
                    if reply is None:  # close without a word, as a keep-alive timeout does
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.wfile.write(reply)
                    self.wfile.flush()

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def client(url: str, **settings: object) -> Upstream:
    return Upstream(UpstreamConfig(url=url, routes=("/api/activities",), **settings))  # type: ignore[arg-type]


def test_connections_are_kept_alive_and_reused(serve: Serve) -> None:
    url, seen = serve(lambda number, path: http_answer(BODY))
    upstream = client(url)
    for _ in range(5):
        answer = upstream.get("/api/activities", "since=1", Headers())
        assert (answer.status, answer.body) == (200, BODY)
    assert seen.connections == 1 and len(seen.requests) == 5
    assert seen.requests[0][0] == "/api/activities?since=1"


def test_a_kept_alive_connection_the_store_closed_is_retried_once(serve: Serve) -> None:
    # every connection answers its first request and drops the second without a word
    url, seen = serve(lambda number, path: http_answer(BODY) if number == 1 else None)
    upstream = client(url)
    for _ in range(3):
        assert upstream.get("/api/activities", "", Headers()).body == BODY
    assert seen.connections == 3 and len(seen.requests) == 5


def test_a_store_that_always_drops_the_connection_is_unavailable(serve: Serve) -> None:
    url, seen = serve(lambda number, path: None)
    with pytest.raises(UpstreamUnavailable):
        client(url).get("/api/activities", "", Headers())
    assert len(seen.requests) == 2  # the request and one retry, no more


def test_redirects_are_not_followed(serve: Serve) -> None:
    url, seen = serve(
        lambda number, path: (
            http_answer(BODY)
            if path.startswith("/elsewhere")
            else http_answer(b"", "302 Found", "Location: /elsewhere\r\n")
        )
    )
    answer = client(url).get("/api/activities", "", Headers())
    assert answer.status == 302 and answer.body == b""
    assert [path for path, _ in seen.requests] == ["/api/activities"]


def test_headers_sent_as_before_and_gzip_decoded(serve: Serve) -> None:
    packed = gzip.compress(BODY)
    url, seen = serve(lambda number, path: http_answer(packed, extra="Content-Encoding: gzip\r\n"))
    upstream = client(url, forward_headers=("Authorization", "X-Tenant"))
    answer = upstream.get(
        "/api/activities", "", Headers({"Authorization": "Bearer t", "X-Other": "not forwarded"})
    )
    assert answer.body == BODY
    sent = seen.requests[0][1]
    assert sent["authorization"] == "Bearer t"
    assert "x-other" not in sent and "x-tenant" not in sent
    assert sent["accept-encoding"] == "gzip, deflate" and sent["accept"] == "*/*"
    assert sent["user-agent"].startswith("python-requests/")


def test_an_oversized_answer_is_refused_and_its_connection_not_reused(serve: Serve) -> None:
    big = b"[" + b"1," * 100_000 + b"1]"
    url, seen = serve(lambda number, path: http_answer(big if path.endswith("big") else BODY))
    upstream = client(url, max_body_bytes=50_000)
    with pytest.raises(UpstreamBadBody):
        upstream.get("/api/activities", "big", Headers())
    assert upstream.get("/api/activities", "", Headers()).body == BODY
    assert seen.connections == 2


def test_nothing_listening_is_unavailable_and_not_reachable() -> None:
    upstream = client(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UpstreamUnavailable):
        upstream.get("/api/activities", "", Headers())
    assert upstream.reachable() is False


def test_reachable_on_any_answer(serve: Serve) -> None:
    url, _ = serve(lambda number, path: http_answer(b"", "404 Not Found"))
    assert client(url).reachable() is True
