"""The activity store behind Veil: one urllib3 connection pool, timeouts, and faults translated.

The client is urllib3 directly (what ``requests`` runs on), without the per-request work of a
``requests`` session: connections are kept alive and reused, redirects are never followed (a
3xx is the store's answer, which Veil does not pass on), nothing is retried except a request
whose kept-alive connection the store had already closed, and the TLS settings are those of
``requests`` (certificates verified against its CA bundle; no proxies or settings from the
environment).
"""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass

import requests.utils
import urllib3
from urllib3.exceptions import (
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from veil.config import UpstreamConfig
from veil.errors import UpstreamBadBody, UpstreamTimeout, UpstreamUnavailable
from veil.identity import Headers

CHUNK = 256 * 1024  # at most this much per read; a read returns what has arrived
# The headers every request carries, as ``requests`` sends them (User-Agent, Accept-Encoding,
# Accept, Connection); the configured caller headers are added to these.
_DEFAULT_HEADERS = dict(requests.utils.default_headers())


@dataclass(frozen=True)
class StoreAnswer:
    status: int
    content_type: str
    body: bytes


class Upstream:
    """Forwards GET queries to the store and reads its answer within the configured time."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=config.pool_size,
            block=False,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=requests.utils.DEFAULT_CA_BUNDLE_PATH,
        )

    def close(self) -> None:
        """Close the pooled connections."""
        self.pool.clear()

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
        url = self.config.url + path + (f"?{query_string}" if query_string else "")
        deadline = time.monotonic() + self.config.timeout_s
        sent = {**_DEFAULT_HEADERS, **self.forward_headers(headers)}
        try:
            response = self._open(url, sent, deadline)
            try:
                body = self._read_body(response, deadline)
            except BaseException:
                response.close()  # a connection left mid-answer is not reused
                raise
            finally:
                response.release_conn()
            return StoreAnswer(
                status=response.status,
                content_type=response.headers.get("Content-Type", "application/json"),
                body=body,
            )
        except NewConnectionError as exc:
            raise self._unavailable(exc) from exc
        except (Urllib3Timeout, TimeoutError) as exc:
            raise self._timeout() from exc
        except (HTTPError, http.client.HTTPException, OSError) as exc:
            raise self._unavailable(exc) from exc

    def _open(self, url: str, headers: dict[str, str], deadline: float) -> urllib3.BaseHTTPResponse:
        """Send the request; once more on a fresh connection if a kept-alive one was closed
        by the store before it answered (a GET changes nothing at the store)."""
        for attempt in (1, 2):
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._timeout()
            try:
                return self.pool.urlopen(
                    "GET",
                    url,
                    headers=headers,
                    retries=False,
                    redirect=False,
                    timeout=urllib3.Timeout(connect=left, read=left),
                    preload_content=False,
                    decode_content=True,
                )
            except ProtocolError:
                if attempt == 2:
                    raise
        raise AssertionError("not reached")

    def _read_body(self, response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
        connection = getattr(response, "connection", None)
        sock = getattr(connection, "sock", None)
        chunks: list[bytes] = []
        size = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._timeout()
            if sock is not None:
                sock.settimeout(left)
            try:
                chunk = response.read1(CHUNK, decode_content=True)
            except ReadTimeoutError as exc:
                raise self._timeout() from exc
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.config.max_body_bytes:
                raise UpstreamBadBody(
                    f"the store's answer is larger than {self.config.max_body_bytes} bytes"
                )
            chunks.append(chunk)

    def _timeout(self) -> UpstreamTimeout:
        return UpstreamTimeout(f"the store did not answer within {self.config.timeout_s:g} s")

    def _unavailable(self, exc: BaseException) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"the store at {self.config.url} is unreachable ({type(exc).__name__})"
        )

    def reachable(self) -> bool:
        """True when the store accepts a connection and answers anything at all."""
        try:
            response = self.pool.request(
                "HEAD",
                self.config.url + "/",
                headers=_DEFAULT_HEADERS,
                retries=False,
                redirect=False,
                timeout=min(self.config.timeout_s, 2.0),
            )
        except (HTTPError, http.client.HTTPException, OSError):
            return False
        response.drain_conn()
        response.release_conn()
        return True
