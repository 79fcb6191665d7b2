"""The activity store behind Veil: one pooled HTTP session, timeouts, and faults translated."""

from __future__ import annotations

import time
from dataclasses import dataclass

import requests
import urllib3
from requests.adapters import HTTPAdapter

from veil.config import UpstreamConfig
from veil.errors import UpstreamBadBody, UpstreamTimeout, UpstreamUnavailable
from veil.identity import Headers


@dataclass(frozen=True)
class StoreAnswer:
    status: int
    content_type: str
    body: bytes


class Upstream:
    """Forwards GET queries to the store and reads its answer within the configured time."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=config.pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.trust_env = False

    def forward_headers(self, headers: Headers) -> dict[str, str]:
        forwarded = {}
        for name in self.config.forward_headers:
            value = headers.get(name, "")
            if value:
                forwarded[name] = value
        return forwarded

    def get(self, path: str, query_string: str, headers: Headers) -> StoreAnswer:
        """GET ``path?query`` on the store; the whole answer must arrive within ``timeout_s``.

        The deadline holds for the answer as a whole, however slowly it trickles in: before
        each read the connection's timeout is set to the time left (R12).
        """
        url = self.config.url + path + (f"?{query_string}" if query_string else "")
        deadline = time.monotonic() + self.config.timeout_s
        try:
            response = self.session.get(
                url,
                headers=self.forward_headers(headers),
                timeout=self.config.timeout_s,
                stream=True,
                allow_redirects=False,
            )
            with response:
                body = self._read_body(response, deadline)
                return StoreAnswer(
                    status=response.status_code,
                    content_type=response.headers.get("Content-Type", "application/json"),
                    body=body,
                )
        except (requests.Timeout, urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
            raise self._timeout() from exc
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise UpstreamUnavailable(
                f"the store at {self.config.url} is unreachable ({type(exc).__name__})"
            ) from exc

    def _read_body(self, response: requests.Response, deadline: float) -> bytes:
        raw = response.raw
        connection = getattr(raw, "connection", None)
        sock = getattr(connection, "sock", None)
        chunks: list[bytes] = []
        size = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._timeout()
            if sock is not None:
                sock.settimeout(left)
            chunk = raw.read1(64 * 1024, decode_content=True)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.config.max_body_bytes:
                raise UpstreamBadBody(
                    f"the store's answer is larger than {self.config.max_body_bytes} bytes")
            chunks.append(chunk)

    def _timeout(self) -> UpstreamTimeout:
        return UpstreamTimeout(f"the store did not answer within {self.config.timeout_s:g} s")

    def reachable(self) -> bool:
        """True when the store accepts a connection and answers anything at all."""
        try:
            self.session.head(self.config.url + "/", timeout=min(self.config.timeout_s, 2.0))
        except requests.RequestException:
            return False
        return True

