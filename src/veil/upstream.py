"""The activity store behind Veil: kept-alive connections, one deadline, and faults translated.

The client is the standard library's ``http.client``, with a small pool of kept-alive
connections around it. It replaced urllib3 (what ``requests`` runs on) because it costs about
0.15 ms less per answer (``benchmarks/README.md``), and an answer's added latency is the figure
Veil is held to. What urllib3 gave is kept, each covered by ``tests/test_upstream_client.py``:

- connections are kept alive and reused, at most ``upstream.pool_size`` idle at once;
- a request whose connection the store had closed (dropped before any answer) is sent once
  more on a fresh connection, and nothing else is retried;
- redirects are never followed: a 3xx is the store's answer, which Veil does not pass on;
- the headers ``requests`` sends (User-Agent, Accept-Encoding, Accept, Connection), with the
  configured caller headers added; an answer in gzip or deflate is decoded, one in any other
  content coding is refused (Veil cannot read it, so it cannot filter it);
- HTTPS verifies the store's certificate and host name against ``requests``' CA bundle; no
  proxies or settings are taken from the environment.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
import weakref
import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests.utils

from veil.config import UpstreamConfig
from veil.errors import UpstreamBadBody, UpstreamTimeout, UpstreamUnavailable
from veil.identity import Headers

CHUNK = 256 * 1024  # at most this much per read; a read returns what has arrived
# The headers every request carries, as ``requests`` sends them; the configured caller
# headers are added to these. Accept-Encoding names only what ``_decoder`` decodes.
_DEFAULT_HEADERS = {
    **requests.utils.default_headers(),
    "Accept-Encoding": "gzip, deflate",
}
CA_BUNDLE = requests.utils.DEFAULT_CA_BUNDLE_PATH
# Errors of a connection the store dropped before it answered: the request is sent again once.
_DROPPED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


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


class Upstream:
    """Forwards GET queries to the store and reads its answer within the configured time."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        parts = urlsplit(config.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        # what follows the host in upstream.url prefixes every path, as it is written
        self._prefix = config.url[len(f"{parts.scheme}://{parts.netloc}") :]
        self._context = ssl.create_default_context(cafile=CA_BUNDLE) if self._https else None
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
        """GET ``path?query`` on the store; the whole answer must arrive within ``timeout_s``.

        The deadline holds for the answer as a whole, however slowly it trickles in: the
        connection and the wait for the headers get the time left, and before each read of
        the body the connection's timeout is set to the time left (R12).
        """
        target = self._prefix + path + (f"?{query_string}" if query_string else "")
        deadline = time.monotonic() + self.config.timeout_s
        sent = {**_DEFAULT_HEADERS, **self.forward_headers(headers)}
        connection, response = self._open("GET", target, sent, deadline)
        try:
            body = self._read_body(response, connection, deadline)
        except BaseException:
            connection.close()  # a connection left mid-answer is not reused
            raise
        self._release(connection, response)
        return StoreAnswer(
            status=response.status,
            content_type=response.getheader("Content-Type", "application/json"),
            body=body,
        )

    def _open(
        self, method: str, target: str, headers: dict[str, str], deadline: float
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send the request and read the answer's head; once more on a fresh connection if
        the store dropped the connection before it answered (a GET changes nothing there)."""
        for attempt in (1, 2):
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._timeout()
            connection = self._connection()
            try:
                if connection.sock is None:
                    connection.timeout = left
                    connection.connect()
                else:
                    connection.sock.settimeout(left)
                connection.request(method, target, headers=headers)
                return connection, connection.getresponse()
            except _DROPPED as exc:
                connection.close()
                if attempt == 2:
                    raise self._unavailable(exc) from exc
            except (http.client.HTTPException, OSError) as exc:
                connection.close()
                raise self._fault(exc) from exc
            except BaseException:
                connection.close()
                raise
        raise AssertionError("not reached")

    def _connection(self) -> http.client.HTTPConnection:
        """An idle kept-alive connection (the most recently used), else a new unconnected one."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        if self._context is not None:
            return http.client.HTTPSConnection(self._host, self._port, context=self._context)
        return http.client.HTTPConnection(self._host, self._port)

    def _release(
        self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse
    ) -> None:
        """Keep the connection for the next request, unless the store is closing it or its
        answer was not read to the end."""
        if response.will_close or not response.isclosed() or connection.sock is None:
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
                # the end: the connection closed, the last chunk, or Content-Length bytes read
                done = not raw or response.length == 0
                # decoded, at most one byte past the limit (a bomb is not inflated whole)
                chunk = raw if decoder is None else decoder.decompress(raw, limit - size + 1)
                if done and decoder is not None:
                    chunk += decoder.flush()
                size += len(chunk)
                if size > limit:
                    raise UpstreamBadBody(f"the store's answer is larger than {limit} bytes")
                chunks.append(chunk)
                if done:
                    response.close()  # read to the end: its connection can serve another
                    return b"".join(chunks)
        except zlib.error as exc:
            raise UpstreamBadBody("the store's compressed answer could not be decoded") from exc
        except (http.client.HTTPException, OSError) as exc:
            raise self._fault(exc) from exc

    def _decoder(self, coding: str | None) -> zlib._Decompress | None:
        """A decoder for the answer's Content-Encoding; UpstreamBadBody for one Veil cannot
        decode (it would be read as garbage, or not at all)."""
        name = (coding or "").strip().lower()
        if name in ("", "identity"):
            return None
        if name in ("gzip", "x-gzip"):
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        if name == "deflate":  # zlib-wrapped, as RFC 9110 says (raw deflate is not accepted)
            return zlib.decompressobj()
        raise UpstreamBadBody(
            f"the store answered in Content-Encoding {coding!r}, which Veil does not decode "
            "(it asks for gzip or deflate)"
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
            connection, response = self._open(
                "HEAD", self._prefix + "/", dict(_DEFAULT_HEADERS), deadline
            )
        except (UpstreamUnavailable, UpstreamTimeout):
            return False
        try:
            response.read()
        except (http.client.HTTPException, OSError):
            connection.close()
            return True
        self._release(connection, response)
        return True
