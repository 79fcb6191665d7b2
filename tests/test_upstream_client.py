"""Veil's client for the store (http.client and a pool of its own): kept-alive connections, one
retry on a connection the store closed, redirects not followed, headers as sent before, gzip
and deflate decoded (any other coding refused), a size limit that holds for decoded answers,
HTTPS verified, errors as Veil errors.

The store here is a real HTTP/1.1 server on loopback, written on sockets so that each test
can decide how it treats its connections.
"""

from __future__ import annotations

import gzip
import http.client
import socket
import socketserver
import ssl
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from werkzeug.datastructures import Headers

from veil import upstream as upstream_module
from veil.config import UpstreamConfig
from veil.errors import UpstreamBadBody, UpstreamTimeout, UpstreamUnavailable
from veil.upstream import Upstream

from netutil import free_port, self_signed

BODY = b'{"data": [{"id": 1}], "next": null}'


@dataclass
class Seen:
    connections: int = 0
    closed_by_client: int = 0
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)


# (request number on this connection, path) -> the bytes to send: one write, or a list of
# writes sent 50 ms apart; None (alone or at the end of the list) closes the connection
Answer = Callable[[int, str], bytes | list[bytes | None] | None]
Serve = Callable[..., tuple[str, Seen]]


def http_answer(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], tuple[str, Seen]]]:
    servers: list[socketserver.ThreadingTCPServer] = []

    def start(answer: Answer, tls: ssl.SSLContext | None = None) -> tuple[str, Seen]:
        seen = Seen()

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                seen.connections += 1
                number = 0
                while True:
                    line = self.rfile.readline()
                    if not line:
                        seen.closed_by_client += 1
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
                    for piece, part in enumerate(reply if isinstance(reply, list) else [reply]):
                        if part is None:
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        if piece:
                            time.sleep(0.05)  # the client reads what arrived so far
                        self.wfile.write(part)
                        self.wfile.flush()

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True

            def get_request(self) -> tuple[socket.socket, object]:
                sock, address = super().get_request()
                return (tls.wrap_socket(sock, server_side=True) if tls else sock), address

        server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        scheme = "https" if tls else "http"
        return f"{scheme}://127.0.0.1:{server.server_address[1]}", seen

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


def test_a_chunked_answer_is_read_whole_and_its_connection_kept(serve: Serve) -> None:
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (BODY[:9], BODY[9:]))
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    url, seen = serve(lambda number, path: [head + chunked[:20], chunked[20:] + b"0\r\n\r\n"])
    upstream = client(url)
    for _ in range(3):
        assert upstream.get("/api/activities", "", Headers()).body == BODY
    assert seen.connections == 1


@pytest.mark.parametrize(
    ("coding", "packed"),
    [
        ("gzip", gzip.compress(BODY)),
        ("x-gzip", gzip.compress(BODY)),
        ("deflate", zlib.compress(BODY)),
        ("identity", BODY),
    ],
)
def test_an_answer_arriving_in_pieces_is_decoded_whole(
    serve: Serve, coding: str, packed: bytes
) -> None:
    # the first piece is shorter than a gzip header: it decodes to nothing, and is not the end
    extra = f"Content-Encoding: {coding}\r\n"
    whole = http_answer(packed, extra=extra)
    head = len(whole) - len(packed)
    url, seen = serve(lambda number, path: [whole[: head + 4], whole[head + 4 :]])
    upstream = client(url)
    assert upstream.get("/api/activities", "", Headers()).body == BODY
    assert upstream.get("/api/activities", "", Headers()).body == BODY
    assert seen.connections == 1


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, gzip"])
def test_an_answer_in_a_coding_veil_cannot_decode_is_refused(serve: Serve, coding: str) -> None:
    url, _ = serve(lambda number, path: http_answer(BODY, extra=f"Content-Encoding: {coding}\r\n"))
    with pytest.raises(UpstreamBadBody, match="a Content-Encoding Veil does not decode"):
        client(url).get("/api/activities", "", Headers())


def test_a_compressed_answer_that_is_garbage_is_refused(serve: Serve) -> None:
    url, _ = serve(
        lambda number, path: http_answer(b"\x1f\x8b not gzip", extra="Content-Encoding: gzip\r\n")
    )
    with pytest.raises(UpstreamBadBody, match="could not be decoded"):
        client(url).get("/api/activities", "", Headers())


def test_the_size_limit_holds_for_the_decoded_answer(serve: Serve) -> None:
    bomb = gzip.compress(b"[" + b"1," * 1_000_000 + b"1]")  # 2 MB that packs into a few KB
    url, seen = serve(
        lambda number, path: (
            http_answer(bomb, extra="Content-Encoding: gzip\r\n")
            if path.endswith("bomb")
            else http_answer(BODY)
        )
    )
    upstream = client(url, max_body_bytes=50_000)
    assert len(bomb) < 50_000
    with pytest.raises(UpstreamBadBody, match="larger than 50000 bytes"):
        upstream.get("/api/activities", "bomb", Headers())
    assert upstream.get("/api/activities", "", Headers()).body == BODY
    assert seen.connections == 2  # the refused answer's connection was not reused


def test_an_answer_cut_short_is_unavailable(serve: Serve) -> None:
    # the store says Content-Length N, sends fewer bytes and closes the connection
    url, _ = serve(
        lambda number, path: (
            [http_answer(BODY)[:-5], None] if path.endswith("cut") else http_answer(BODY)
        )
    )
    upstream = client(url)
    with pytest.raises(UpstreamUnavailable, match="IncompleteRead"):
        upstream.get("/api/activities", "cut", Headers())
    assert upstream.get("/api/activities", "", Headers()).body == BODY


def test_an_answer_cut_short_on_an_open_connection_times_out(serve: Serve) -> None:
    url, _ = serve(lambda number, path: http_answer(BODY)[:-5])
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        client(url, timeout_s=0.5).get("/api/activities", "", Headers())
    assert time.monotonic() - started < 5


def test_the_path_in_the_store_url_prefixes_each_request(serve: Serve) -> None:
    url, seen = serve(lambda number, path: http_answer(BODY))
    assert client(url + "/v2").get("/api/activities", "a=1", Headers()).body == BODY
    assert client(url + "/v2").reachable() is True
    assert [path for path, _ in seen.requests] == ["/v2/api/activities?a=1", "/v2/"]


def test_close_closes_the_kept_alive_connections(serve: Serve) -> None:
    url, seen = serve(lambda number, path: http_answer(BODY))
    upstream = client(url)
    upstream.get("/api/activities", "", Headers())
    upstream.close()
    upstream.get("/api/activities", "", Headers())
    assert seen.connections == 2


def _tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert


def test_https_verifies_the_stores_certificate(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context, cert = _tls(tmp_path)
    url, seen = serve(lambda number, path: http_answer(BODY), tls=context)
    # a certificate no CA in the bundle signed: refused before any request is sent
    with pytest.raises(UpstreamUnavailable, match="SSLCertVerificationError"):
        client(url).get("/api/activities", "", Headers())
    assert seen.requests == []
    monkeypatch.setattr(upstream_module, "CA_BUNDLE", str(cert))
    upstream = client(url)
    for _ in range(2):
        assert upstream.get("/api/activities", "", Headers()).body == BODY
    assert len(seen.requests) == 2
    # the right CA, the wrong name: the certificate is for 127.0.0.1, not localhost
    with pytest.raises(UpstreamUnavailable, match="SSLCertVerificationError"):
        client(url.replace("127.0.0.1", "localhost")).get("/api/activities", "", Headers())


def three_at_once(serve: Serve, pool_size: int, then: Answer) -> tuple[Upstream, Seen]:
    """A client that had three requests in flight at once (three connections, answered
    together); the store answers later requests with ``then``."""
    together = threading.Barrier(3, timeout=30)

    def answer(number: int, path: str) -> bytes | list[bytes | None] | None:
        if path.endswith("together"):
            together.wait()
            return http_answer(BODY)
        return then(number, path)

    url, seen = serve(answer)
    upstream = client(url, pool_size=pool_size)
    threads = [
        threading.Thread(target=upstream.get, args=("/api/activities", "together", Headers()))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen.connections == 3
    return upstream, seen


def test_at_most_pool_size_connections_are_kept_idle(serve: Serve) -> None:
    upstream, seen = three_at_once(serve, 1, lambda number, path: http_answer(BODY))
    deadline = time.monotonic() + 10
    while seen.closed_by_client < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen.closed_by_client == 2  # one kept for the next request
    upstream.get("/api/activities", "", Headers())
    assert seen.connections == 3


def test_idle_connections_the_store_closed_are_dropped_before_use(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the store closes each connection right after its answer (no "Connection: close")
    url, seen = serve(lambda number, path: [http_answer(BODY), None])
    sent: list[str] = []
    request = http.client.HTTPConnection.request

    def counted(self: http.client.HTTPConnection, method: str, target: str, **kw: Any) -> None:
        sent.append(target)
        request(self, method, target, **kw)

    monkeypatch.setattr(http.client.HTTPConnection, "request", counted)
    upstream = client(url)
    for _ in range(3):
        time.sleep(0.1)  # the close reaches the client's idle connection
        assert upstream.get("/api/activities", "", Headers()).body == BODY
    assert len(sent) == 3  # none was sent on a closed connection (and retried)
    assert len(seen.requests) == 3 and seen.connections == 3


def test_a_retry_goes_to_a_new_connection_not_another_idle_one(serve: Serve) -> None:
    # three idle connections, each dropping its next request without a word: the retry of
    # the first must not land on the second
    upstream, seen = three_at_once(
        serve,
        3,
        lambda number, path: None if path.endswith("drop") and number > 1 else http_answer(BODY),
    )
    assert upstream.get("/api/activities", "drop", Headers()).body == BODY  # on a new one
    assert seen.connections == 4


def test_an_answer_is_never_read_as_the_next_requests(serve: Serve) -> None:
    # an informational answer (the final one follows later), a 204 with a body after it, and
    # bytes after a complete answer: the connection is not used again for another request
    def answer(number: int, path: str) -> bytes | list[bytes | None]:
        late = http_answer(b'{"late": "' + path.encode() + b'"}')
        if path.endswith("early"):
            return [b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n", late]
        if path.endswith("empty"):
            return [b"HTTP/1.1 204 No Content\r\n\r\n", late]
        if path.endswith("extra"):
            return [http_answer(BODY), late]
        return http_answer(b'{"for": "' + path.encode() + b'"}')

    url, seen = serve(answer)
    upstream = client(url)
    assert upstream.get("/api/activities", "early", Headers()).status == 103  # then 502
    assert upstream.get("/api/activities", "empty", Headers()).status == 204
    assert upstream.get("/api/activities", "extra", Headers()).body == BODY
    time.sleep(0.2)  # the stray answers arrive
    for name in ("a", "b"):
        got = upstream.get("/api/activities", name, Headers()).body
        assert got == b'{"for": "/api/activities?' + name.encode() + b'"}'
    assert seen.connections == 4


def test_reachable_does_not_keep_its_connection(serve: Serve) -> None:
    url, seen = serve(lambda number, path: http_answer(BODY))
    upstream = client(url)
    assert upstream.reachable() is True
    assert upstream.get("/api/activities", "", Headers()).body == BODY
    assert seen.connections == 2


def test_the_request_target_is_sent_as_received_with_what_http_forbids_encoded(
    serve: Serve,
) -> None:
    url, seen = serve(lambda number, path: http_answer(BODY))
    upstream = client(url)
    # the query string arrives as the caller's bytes decoded as latin-1 (proxy.py)
    query = 'name=caf\xc3\xa9&a b=1\x7f&esc=%41&q="<x>"'
    assert upstream.get("/api/activities", query, Headers()).body == BODY
    assert seen.requests[0][0] == (
        "/api/activities?name=caf%C3%A9&a%20b=1%7F&esc=%41&q=%22%3Cx%3E%22"
    )


def test_the_deadline_holds_for_a_head_sent_a_byte_at_a_time(serve: Serve) -> None:
    head = http_answer(BODY)
    url, _ = serve(lambda number, path: [bytes([b]) for b in head])  # 50 ms a byte
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        client(url, timeout_s=0.5).get("/api/activities", "", Headers())
    assert time.monotonic() - started < 1.5  # each byte came well within a socket timeout


def test_the_deadline_holds_for_chunk_trailers_sent_a_byte_at_a_time(serve: Serve) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    body = b"%x\r\n%s\r\n0\r\n" % (len(BODY), BODY)
    trailer = b"X-Trailer: " + b"x" * 40 + b"\r\n\r\n"
    url, _ = serve(lambda number, path: [head + body, *(bytes([b]) for b in trailer)])
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        client(url, timeout_s=0.5).get("/api/activities", "", Headers())
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    ("packed", "problem"),
    [
        (gzip.compress(BODY)[:-8], "ended before its end"),  # without its CRC and size
        (gzip.compress(BODY)[:15], "ended before its end"),
        (gzip.compress(BODY) + b"junk", "could not be decoded"),
        (zlib.compress(BODY) + b"junk", "data follows"),
    ],
)
def test_a_compressed_answer_that_does_not_end_as_its_format_says_is_refused(
    serve: Serve, packed: bytes, problem: str
) -> None:
    coding = "deflate" if packed[:1] == b"x" else "gzip"
    url, _ = serve(
        lambda number, path: http_answer(packed, extra=f"Content-Encoding: {coding}\r\n")
    )
    with pytest.raises(UpstreamBadBody, match=problem):
        client(url).get("/api/activities", "", Headers())


def test_gzip_members_one_after_another_are_decoded_whole(serve: Serve) -> None:
    packed = gzip.compress(BODY[:10]) + gzip.compress(BODY[10:])
    url, _ = serve(lambda number, path: http_answer(packed, extra="Content-Encoding: gzip\r\n"))
    assert client(url).get("/api/activities", "", Headers()).body == BODY


def test_a_compressed_bomb_is_stopped_without_inflating_it(serve: Serve) -> None:
    bomb = gzip.compress(b"\0" * 200_000_000, compresslevel=9)  # 200 MB in about 200 KB
    url, _ = serve(lambda number, path: http_answer(bomb, extra="Content-Encoding: gzip\r\n"))
    upstream = client(url, max_body_bytes=1_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(UpstreamBadBody, match="larger than 1000000 bytes"):
            upstream.get("/api/activities", "", Headers())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000


def test_over_https_bytes_after_an_answer_are_not_read_as_the_next(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bytes sent with the end of an answer, in one write, so one TLS record: decrypted inside
    # TLS already, where the socket cannot show them
    big = b'{"data": [' + b",".join(b'{"id": %d}' % n for n in range(5000)) + b"]}"
    stray = http_answer(b'{"data": [{"id": "for-someone-else"}]}')

    def answer(number: int, path: str) -> bytes:
        if path.endswith("big"):
            return http_answer(big) + stray
        return http_answer(b'{"for": "' + path.encode() + b'"}')

    context, cert = _tls(tmp_path)
    url, seen = serve(answer, tls=context)
    monkeypatch.setattr(upstream_module, "CA_BUNDLE", str(cert))
    upstream = client(url)
    assert upstream.get("/api/activities", "big", Headers()).body == big
    got = upstream.get("/api/activities", "next", Headers()).body
    assert got == b'{"for": "/api/activities?next"}'
    assert seen.connections == 2
