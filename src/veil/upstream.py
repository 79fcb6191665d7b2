"""The activity store behind Veil: one pooled HTTP session, timeouts, and faults translated."""

from __future__ import annotations

import time
from dataclasses import dataclass

import requests
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
        """GET ``path?query`` on the store; the whole answer must arrive within ``timeout_s``."""
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
                chunks = []
                size = 0
                for chunk in response.iter_content(64 * 1024):
                    size += len(chunk)
                    if size > self.config.max_body_bytes:
                        raise UpstreamBadBody(
                            f"the store's answer is larger than {self.config.max_body_bytes} bytes"
                        )
                    if time.monotonic() > deadline:
                        raise UpstreamTimeout(
                            f"the store did not answer within {self.config.timeout_s:g} s"
                        )
                    chunks.append(chunk)
                return StoreAnswer(
                    status=response.status_code,
                    content_type=response.headers.get("Content-Type", "application/json"),
                    body=b"".join(chunks),
                )
        except requests.Timeout as exc:
            raise UpstreamTimeout(
                f"the store did not answer within {self.config.timeout_s:g} s"
            ) from exc
        except requests.RequestException as exc:
            raise UpstreamUnavailable(
                f"the store at {self.config.url} is unreachable ({type(exc).__name__})"
            ) from exc

    def reachable(self) -> bool:
        """True when the store accepts a connection and answers anything at all."""
        try:
            self.session.head(self.config.url + "/", timeout=min(self.config.timeout_s, 2.0))
        except requests.RequestException:
            return False
        return True
