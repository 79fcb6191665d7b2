"""The activity store behind Veil: kept-alive connections, one deadline, and faults translated.

The client is the standard library's ``http.client``, with a small pool of kept-alive
connections around it. It replaced urllib3 (what ``requests`` runs on) because it costs about
0.15 ms less per answer (``benchmarks/README.md``), and an answer's added latency is the figure
Veil is held to. What urllib3 gave is kept, each covered by ``tests/test_upstream_client.py``:

- connections are kept alive and reused, at most ``upstream.pool_size`` idle at once; an idle
  connection that the store closed, or on which anything arrived unasked, is dropped before
  it is used, and one whose answer was not read to the end, or had no body by its status
  (1xx, 204, 304), is not kept, so that an answer is not read as another request's;
- a request whose connection the store dropped before answering is sent once more, on a new
  connection, and nothing else is retried;
- redirects are never followed: a 3xx is the store's answer, which Veil does not pass on;
- the request target is sent as Veil received it, with what HTTP does not allow in it (spaces,
  control and non-ASCII characters) percent-encoded;
- the headers ``requests`` sends (User-Agent, Accept-Encoding, Accept, Connection), with the
  configured caller headers added; an answer in gzip (members one after another too) or
  deflate is decoded and must end as its format says; one in any other content coding is
  refused (Veil cannot read it, so it cannot filter it). Stricter than urllib3: raw deflate
  (without zlib's wrapper) and bytes after the end of a gzip answer are refused too (502);
- HTTPS verifies the store's certificate and host name against ``requests``' CA bundle; no
  proxies or settings are taken from the environment.

The deadline (``upstream.timeout_s``) holds for the whole answer, however slowly its head or
body trickles in: a watch thread shuts the connection of a request still running at its
deadline (``_Deadlines``), and each read also waits no longer than the time left.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import select
import socket
import ssl
import threading
import time
import weakref
import zlib
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import requests.utils

from veil.config import UpstreamConfig
from veil.errors import UpstreamBadBody, UpstreamTimeout, UpstreamUnavailable
from veil.identity import Headers

CHUNK = 256 * 1024  # at most this much per read; a read returns what has arrived
# The headers every request carries, as ``requests`` sends them; the configured caller
# headers are added to these. Accept-Encoding names only what ``_Decoder`` decodes.
_DEFAULT_HEADERS = {
    **requests.utils.default_headers(),
    "Accept-Encoding": "gzip, deflate",
}
CA_BUNDLE = requests.utils.DEFAULT_CA_BUNDLE_PATH
# Errors of a connection the store dropped before it answered: the request is sent again once.
_DROPPED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
# What a request target may hold as it is (RFC 3986's characters, "%" of escapes included):
# anything else (space, controls, non-ASCII) is percent-encoded, as urllib3 did.
_TARGET_SAFE = "!$%&'()*+,-./:;=?@_~"
_WATCH_TICK_S = 0.05  # how often the deadline watch looks: a deadline holds to within this

log = logging.getLogger("veil.upstream")


@dataclass(frozen=True)
class StoreAnswer:
    status: int
    content_type: str
    body: bytes


def _close_all(connections: list[http.client.HTTPConnection], lock: threading.Lock) -> None:
    with lock:
        closing = connections[:]
        connections.clear()
    for connection in closing:
        connection.close()


def _target(text: str, encoding: str) -> str:
    """``text`` as a request target: what HTTP does not allow there percent-encoded (a query
    string arrives decoded as latin-1, so its bytes are encoded as they came)."""
    return quote(text, safe=_TARGET_SAFE, encoding=encoding)


class _Deadlines:
    """One thread per process that shuts the connection of each request still running at its
    deadline: a socket timeout bounds one read, not a head or a body sent a byte at a time."""

    def __init__(self) -> None:
        self._running: dict[int, tuple[float, http.client.HTTPConnection]] = {}
        self._expired: set[int] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._serial = 0

    def watch(self, deadline: float, connection: http.client.HTTPConnection) -> int:
        """Watch ``connection`` until ``done``; a number to end the watch with."""
        with self._lock:
            self._serial += 1
            self._running[self._serial] = (deadline, connection)
            if self._thread is None or not self._thread.is_alive():  # (a fork leaves none)
                self._thread = threading.Thread(
                    target=self._run, name="veil-upstream-deadlines", daemon=True
                )
                self._thread.start()
            return self._serial

    def done(self, number: int) -> bool:
        """End the watch; True if the deadline had passed and the connection was shut."""
        with self._lock:
            self._running.pop(number, None)
            if number in self._expired:
                self._expired.discard(number)
                return True
            return False

    def _run(self) -> None:
        while True:
            time.sleep(_WATCH_TICK_S)
            now = time.monotonic()
            with self._lock:
                for number, (deadline, connection) in list(self._running.items()):
                    if deadline <= now:
                        del self._running[number]
                        self._expired.add(number)
                        _shut(connection)


def _shut(connection: http.client.HTTPConnection) -> None:
    """Shut the connection's socket both ways, so a read blocked on it returns now (the
    plain socket's call: an SSL socket's own would drop its TLS state under the reader)."""
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


_DEADLINES = _Deadlines()


class _Decoder:
    """Decodes a gzip or deflate body, at most a given size at a time (a small body that
    inflates to gigabytes is stopped one byte past the limit), gzip members one after
    another; ``finish`` raises zlib.error unless the data ended as its format says."""

    def __init__(self, gzip: bool) -> None:
        self._wbits = 16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS
        self._gzip = gzip
        self._zlib = zlib.decompressobj(self._wbits)

    def decode(self, data: bytes, room: int) -> bytes:
        """``data`` decoded: at most ``room + 1`` bytes (more than ``room``: over the limit)."""
        out = self._zlib.decompress(data, room + 1)
        while self._gzip and self._zlib.eof and self._zlib.unused_data and len(out) <= room:
            rest = self._zlib.unused_data  # the next gzip member
            self._zlib = zlib.decompressobj(self._wbits)
            out += self._zlib.decompress(rest, room + 1 - len(out))
        return out

    def finish(self) -> None:
        if not self._zlib.eof:
            raise zlib.error("the compressed answer ended before its end")
        if self._zlib.unused_data:
            raise zlib.error("data follows the end of the compressed answer")


class Upstream:
    """Forwards GET queries to the store and reads its answer within the configured time."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        parts = urlsplit(config.url)
        https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if https else 80)
        # what follows the host in upstream.url prefixes every path, as it is written
        self._prefix = _target(config.url[len(f"{parts.scheme}://{parts.netloc}") :], "utf-8")
        self._context = ssl.create_default_context(cafile=CA_BUNDLE) if https else None
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        # an Upstream dropped without close() closes its idle connections when collected
        weakref.finalize(self, _close_all, self._idle, self._lock)

    def close(self) -> None:
        """Close the kept-alive connections."""
        _close_all(self._idle, self._lock)

    def forward_headers(self, headers: Headers) -> dict[str, str]:
        forwarded = {}
        for name in self.config.forward_headers:
            value = headers.get(name, "")
            if value:
                forwarded[name] = value
        return forwarded

    def get(self, path: str, query_string: str, headers: Headers) -> StoreAnswer:
        """GET ``path?query`` on the store; the whole answer must arrive within ``timeout_s``
        (R12), however slowly it trickles in (see the module's docstring)."""
        target = self._prefix + _target(path, "utf-8")
        if query_string:
            target += "?" + _target(query_string, "latin-1")
        deadline = time.monotonic() + self.config.timeout_s
        sent = {**_DEFAULT_HEADERS, **self.forward_headers(headers)}
        connection, response, watch = self._open("GET", target, sent, deadline)
        try:
            body = self._read_body(response, connection, deadline)
        except BaseException as exc:
            connection.close()  # a connection left mid-answer is not reused
            if _DEADLINES.done(watch) and not isinstance(exc, UpstreamBadBody):
                raise self._timeout() from exc
            raise
        if _DEADLINES.done(watch):  # shut at the deadline just as the answer ended
            connection.close()
            raise self._timeout()
        self._release(connection, response)
        return StoreAnswer(
            status=response.status,
            content_type=response.getheader("Content-Type", "application/json"),
            body=body,
        )

    def _open(
        self, method: str, target: str, headers: dict[str, str], deadline: float
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, int]:
        """Send the request and read the answer's head, watched until ``deadline``; once more
        on a new connection if the store dropped the connection before it answered (a GET
        changes nothing there). The number of the deadline watch comes back too."""
        for attempt in (1, 2):
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._timeout()
            connection = self._connection(reuse=attempt == 1)
            watch = _DEADLINES.watch(deadline, connection)
            try:
                if connection.sock is None:
                    connection.timeout = left
                    connection.connect()
                else:
                    connection.sock.settimeout(left)
                connection.request(method, target, headers=headers)
                return connection, connection.getresponse(), watch
            except _DROPPED as exc:
                connection.close()
                if _DEADLINES.done(watch):
                    raise self._timeout() from exc
                if attempt == 2:
                    raise self._unavailable(exc) from exc
            except (http.client.HTTPException, OSError) as exc:
                connection.close()
                if _DEADLINES.done(watch):
                    raise self._timeout() from exc
                raise self._fault(exc) from exc
            except BaseException:
                connection.close()
                _DEADLINES.done(watch)
                raise
        raise AssertionError("not reached")

    def _connection(self, reuse: bool) -> http.client.HTTPConnection:
        """An idle kept-alive connection (the most recently used) that is still quiet, else
        a new unconnected one (always, unless ``reuse``)."""
        while reuse:
            with self._lock:
                if not self._idle:
                    break
                connection = self._idle.pop()
            if _quiet(connection):
                return connection
            connection.close()  # closed by the store, or something arrived unasked
        if self._context is not None:
            return http.client.HTTPSConnection(self._host, self._port, context=self._context)
        return http.client.HTTPConnection(self._host, self._port)

    def _release(
        self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse
    ) -> None:
        """Keep the connection for the next request, unless the store is closing it, its
        answer was not read to the end, or had no body by its status (1xx, 204, 304: a store
        that sends one anyway, or a final answer after a 1xx, would have it read as the next
        request's answer)."""
        if (
            response.will_close
            or not response.isclosed()
            or response.status < 200
            or response.status in (204, 304)
            or connection.sock is None
        ):
            connection.close()
            return
        with self._lock:
            if len(self._idle) < self.config.pool_size:
                self._idle.append(connection)
                return
        connection.close()

    def _read_body(
        self,
        response: http.client.HTTPResponse,
        connection: http.client.HTTPConnection,
        deadline: float,
    ) -> bytes:
        """The answer's body, decoded, read before ``deadline``, at most ``max_body_bytes``."""
        decoder = self._decoder(response.getheader("Content-Encoding"))
        limit = self.config.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._timeout()
                if connection.sock is not None:
                    connection.sock.settimeout(left)
                raw = response.read1(CHUNK)
                if not raw and response.length:  # closed before Content-Length bytes came
                    raise http.client.IncompleteRead(b"", response.length)
                chunk = raw if decoder is None else decoder.decode(raw, limit - size)
                size += len(chunk)
                if size > limit:
                    raise UpstreamBadBody(f"the store's answer is larger than {limit} bytes")
                chunks.append(chunk)
                # the end: the connection closed, the last chunk, or Content-Length bytes read
                if not raw or response.length == 0:
                    if decoder is not None:
                        decoder.finish()
                    response.close()  # read to the end: its connection can serve another
                    return b"".join(chunks)
        except zlib.error as exc:
            raise UpstreamBadBody(
                f"the store's compressed answer could not be decoded ({exc})"
            ) from exc
        except (http.client.HTTPException, OSError) as exc:
            raise self._fault(exc) from exc

    def _decoder(self, coding: str | None) -> _Decoder | None:
        """A decoder for the answer's Content-Encoding; UpstreamBadBody for one Veil cannot
        decode (it would be read as garbage, or not at all)."""
        name = (coding or "").strip().lower()
        if name in ("", "identity"):
            return None
        if name in ("gzip", "x-gzip"):
            return _Decoder(gzip=True)
        if name == "deflate":  # zlib-wrapped, as RFC 9110 says (raw deflate is not accepted)
            return _Decoder(gzip=False)
        log.warning("the store answered in Content-Encoding %r, which Veil does not decode", coding)
        raise UpstreamBadBody(
            "the store answered in a Content-Encoding Veil does not decode (it asks for gzip "
            "or deflate); see Veil's log"
        )

    def _fault(
        self, exc: http.client.HTTPException | OSError
    ) -> UpstreamTimeout | UpstreamUnavailable:
        """A fault of the connection as Veil's error: a time-out, or the store unavailable."""
        if isinstance(exc, TimeoutError):  # socket.timeout too
            return self._timeout()
        return self._unavailable(exc)

    def _timeout(self) -> UpstreamTimeout:
        return UpstreamTimeout(f"the store did not answer within {self.config.timeout_s:g} s")

    def _unavailable(self, exc: BaseException) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"the store at {self.config.url} is unreachable ({type(exc).__name__})"
        )

    def reachable(self) -> bool:
        """True when the store accepts a connection and answers anything at all."""
        deadline = time.monotonic() + min(self.config.timeout_s, 2.0)
        try:
            connection, _, watch = self._open(
                "HEAD", self._prefix + "/", dict(_DEFAULT_HEADERS), deadline
            )
        except (UpstreamUnavailable, UpstreamTimeout):
            return False
        _DEADLINES.done(watch)
        connection.close()  # a HEAD is rare: its connection is not kept (nor any body after it)
        return True


def _quiet(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle connection is still open with nothing to read: readable means the store
    closed it, or sent something no request asked for."""
    sock = connection.sock
    if sock is None:
        return False
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False  # decrypted bytes already inside TLS, which the socket cannot show
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False
