"""Answer one proxied activity query: fetch, decide once, audit any reveal, then filter.

This is where private rows are removed (R1-R3), where a reveal is allowed only on the
policy's word (R4), and where the governance record is committed before any private row
leaves (R7). Nothing here tells a caller who cannot reveal how many rows were hidden (R9).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import orjson

from veil.config import Config
from veil.errors import (
    GovernanceWriteFailed,
    PolicyError,
    RevealRefused,
    StorageError,
    UpstreamBadBody,
    UpstreamNoRows,
)
from veil.identity import Headers
from veil.metrics import Metrics
from veil.policy import Decision, Engine
from veil.policy.decide import RowDecider
from veil.rows import (
    Answer,
    Normalizer,
    parse_answer,
    pointer_tokens,
    render,
    rows_with_repeated_keys,
)
from veil.storage import Storage
from veil.upstream import Upstream

log = logging.getLogger("veil.query")

REVEAL_HEADER = "Veil-Reveal-Session"


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes | str
    headers: tuple[tuple[str, str], ...] = ()
    revealed: tuple[int, ...] = ()  # indices of the private rows a reveal let through


class QueryService:
    def __init__(self, config: Config, upstream: Upstream, engine: Engine, storage: Storage,
                 metrics: Metrics) -> None:
        self.config = config
        self.upstream = upstream
        self.engine = engine
        self.storage = storage
        self.metrics = metrics
        self.routes = frozenset(config.upstream.routes)
        self.rows_pointer = pointer_tokens(config.upstream.rows)
        self.normalizer = Normalizer(config.upstream.fields,
                                     frozenset(config.upstream.application_values))
        self._state_loaded = False
        self.decider = RowDecider()  # each actor's private windows, per policy and state

    def answer(self, caller: str, path: str, query_string: str, headers: Headers,
               session_id: str | None) -> Reply:
        session = self._session(session_id) if session_id is not None else None
        state_ok = self._sync_state()
        started = time.perf_counter()
        store = self.upstream.get(path, query_string, headers)
        self.metrics.upstream_latency.observe(time.perf_counter() - started)
        try:
            answer = parse_answer(store.body, self.rows_pointer)
        except UpstreamNoRows:
            if 200 <= store.status < 300:
                raise
            # A well-formed error answer without rows (the store refusing the query) goes back
            # as it is; one Veil cannot read is never passed on (it might hold rows).
            return Reply(store.status, store.content_type, store.body, (("Cache-Control",
                                                                          "no-store"),))
        except UpstreamBadBody as exc:
            if 200 <= store.status < 300:
                raise
            raise UpstreamBadBody(f"the store answered {store.status} with a body Veil cannot "
                                  f"check for private activities ({exc.detail})",
                                  store_status=store.status) from exc
        needs_raw = self.engine.needs_raw
        ambiguous = rows_with_repeated_keys(answer, self.normalizer.pointers,
                                            everywhere=needs_raw)
        rows = self.normalizer.rows(answer.rows, include_raw=needs_raw, unreadable=ambiguous)
        decision = self._decide(caller, path, query_string, session_id, session, rows,
                                state_ok)
        extra: list[tuple[str, str]] = [("Cache-Control", "no-store")]
        if decision.failed:
            extra.append(("Veil-Degraded", "policy"))
        if session_id is not None:
            if decision.failed:
                raise PolicyError("the policy could not decide this reveal; nothing was revealed")
            if not decision.reveal:
                self._refused(caller, session_id, decision.refusals, path)
                raise RevealRefused("reveal refused: " + "; ".join(decision.refusals or
                                                                    ("the policy denied it",)),
                                    reasons=list(decision.refusals))
            private = sorted(decision.hidden(len(rows)))
            if private:
                self._audit_reveal(caller, session, path, query_string, answer, rows, private)
                self.metrics.rows_revealed.inc(len(private))
            return Reply(store.status, store.content_type, store.body, tuple(extra),
                         revealed=tuple(private))
        hidden = decision.hidden(len(rows))
        if not hidden:
            return Reply(store.status, store.content_type, store.body, tuple(extra))
        self.metrics.rows_hidden.inc(len(hidden))
        return Reply(store.status, store.content_type, render(answer, hidden), tuple(extra))

    def _session(self, session_id: str) -> dict[str, object] | None:
        try:
            return self.storage.get_session(session_id)
        except StorageError as exc:
            raise StorageError("cannot check the reveal session: storage is unavailable") from exc

    def _sync_state(self) -> bool:
        """Bring the engine's data.veil up to date; False when no state could ever be loaded."""
        try:
            version = self.storage.state_version()
            self.engine.sync(version, lambda: self.storage.policy_data(
                self.config.managed_domains))
            self._state_loaded = True
        except (StorageError, PolicyError) as exc:
            log.warning("policy state not refreshed: %s", exc.detail)
        return self._state_loaded

    def _decide(self, caller: str, path: str, query_string: str, session_id: str | None,
                session: dict[str, object] | None, rows: list[dict[str, object]],
                state_ok: bool) -> Decision:
        if not state_ok:
            self.metrics.policy_failures.inc()
            return Decision.fail_closed()
        document = {
            "caller": caller,
            "request": {"method": "GET", "path": path, "query": query_string},
            "reveal_session_id": session_id,
            "session": session,
            "now_ns": time.time_ns(),
            "rows": rows,
        }
        started = time.perf_counter()
        try:
            begin = getattr(self.engine, "begin", None)
            if begin is None:  # an engine with only evaluate(): the whole decision, per answer
                decision = Decision.read(self.engine.evaluate(orjson.dumps(document)), len(rows))
            else:
                decision = self.decider.decide(begin, document, rows)
        except PolicyError as exc:
            log.error("policy evaluation failed, hiding every row: %s", exc.detail)
            self.metrics.policy_failures.inc()
            return Decision.fail_closed()
        finally:
            self.metrics.policy_latency.observe(time.perf_counter() - started)
        if decision.failed:
            log.error("policy decision undefined or malformed, hiding every row")
            self.metrics.policy_failures.inc()
        return decision

    def _audit_reveal(self, caller: str, session: dict[str, object] | None, path: str,
                      query_string: str, answer: Answer, rows: list[dict[str, object]],
                      private: list[int]) -> None:
        text = answer.text
        details = {
            "session": session["id"] if session else None,
            "justification": session.get("justification") if session else None,
            "path": path,
            "query": query_string,
            "count": len(private),
            "ids": [rows[i]["id"] for i in private],
            # each revealed row exactly as sent, even one without a readable id
            "sha256": [hashlib.sha256(text[start:end].encode()).hexdigest()
                       for start, end in (answer.spans[i] for i in private)],
        }
        try:
            self.storage.record("activities_revealed", caller, details)
        except StorageError as exc:
            log.error("governance record not written, reveal withheld: %s", exc.detail)
            raise GovernanceWriteFailed(
                "the governance record of this reveal could not be written; no private "
                "activity was sent. Retry when storage is back."
            ) from exc

    def _refused(self, caller: str, session_id: str, refusals: tuple[str, ...],
                 path: str) -> None:
        try:
            # coalesced per principal (R12): a loop of refusals cannot flood the log
            self.storage.refusal("reveal_refused", caller, {"session": session_id, "path": path,
                                                            "reasons": list(refusals)})
        except StorageError as exc:
            log.error("could not record a refused reveal: %s", exc.detail)
