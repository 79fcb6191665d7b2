"""Answer one proxied activity query: fetch, decide once, audit any reveal, then filter.

This is where private rows are removed (R1-R3), where a reveal is allowed only on the
policy's word (R4), and where the governance record is committed before any private row
leaves (R7). Nothing here tells a caller who cannot reveal how many rows were hidden (R9):
the answer is rebuilt in one layout with only the kept envelope members, and a store answer
other than 2xx is never passed on. The decision uses management state read after the store
answered, and a reveal is checked again in the transaction that records it (R11).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from veil.config import Config
from veil.errors import (
    GovernanceWriteFailed,
    PolicyError,
    RevealRefused,
    StorageError,
    UpstreamStatus,
)
from veil.identity import Headers
from veil.metrics import Metrics
from veil.policy import DECISION, Decision, Engine, Evaluation
from veil.policy.decide import RowDecider
from veil.rows import Answer, Normalizer, RowFacts, parse_answer, pointer_tokens, render
from veil.storage import Storage
from veil.upstream import Upstream

log = logging.getLogger("veil.filtering")

ReadState = Callable[[Sequence[str]], tuple[int, dict[str, Any]]]

REVEAL_HEADER = "Veil-Reveal-Session"


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes | str
    headers: tuple[tuple[str, str], ...] = ()
    revealed: tuple[int, ...] = ()  # indices of the private rows a reveal let through


class QueryService:
    def __init__(
        self, config: Config, upstream: Upstream, engine: Engine, storage: Storage, metrics: Metrics
    ) -> None:
        self.config = config
        self.upstream = upstream
        self.engine = engine
        self.storage = storage
        self.metrics = metrics
        self.routes = frozenset(config.upstream.routes)
        self.rows_pointer = pointer_tokens(config.upstream.rows)
        self.keep = tuple(pointer_tokens(p) for p in config.upstream.keep)
        self.normalizer = Normalizer(
            config.upstream.fields, frozenset(config.upstream.application_values)
        )
        self.decider = RowDecider()  # each actor's private windows, per policy and state

    def answer(
        self, caller: str, path: str, query_string: str, headers: Headers, session_id: str | None
    ) -> Reply:
        started = time.perf_counter()
        store = self.upstream.get(path, query_string, headers)
        self.metrics.upstream_latency.observe(time.perf_counter() - started)
        if not 200 <= store.status < 300:
            # R9: an error answer may hold rows (a partial page, a debug dump): never passed on
            raise UpstreamStatus(
                f"the activity store answered {store.status}; Veil does not "
                "pass on answers other than success (their body may hold "
                "private activities)",
                store_status=store.status,
            )
        # R11: management state read after the store's answer arrived, never before; then
        # the policy pinned for this answer, which says whether its input needs raw rows. A
        # reveal notes the state version first: one that moves on is judged again (R11).
        version = self._state_version() if session_id is not None else -1
        state_ok = self._sync_state()
        evaluation = self._begin(state_ok)
        needs_raw = evaluation is not None and evaluation.needs_raw
        answer = parse_answer(
            store.body, self.rows_pointer, self.keep, self.normalizer.pointers, raw=needs_raw
        )
        extra: list[tuple[str, str]] = [("Cache-Control", "no-store")]
        if session_id is not None:
            rows = self.normalizer.rows_of(answer, include_raw=needs_raw)
            return self._reveal(
                caller,
                path,
                query_string,
                session_id,
                answer,
                rows,
                extra,
                store.status,
                store.content_type,
                evaluation,
                version,
            )
        if evaluation is not None and evaluation.plan is not None and not needs_raw:
            # the policy Veil follows: no dict per row, and no input unless authors' rules ask
            facts = self.normalizer.facts_of(answer)
            decision = self._decide_facts(caller, path, query_string, evaluation, facts, answer)
            row_count = len(facts.ids)
        else:
            rows = self.normalizer.rows_of(answer, include_raw=needs_raw)
            decision = self._decide(caller, path, query_string, None, None, rows, evaluation)
            row_count = len(rows)
        if decision.failed:
            extra.append(("Veil-Degraded", "policy"))
        hidden = decision.hidden(row_count)
        if hidden:
            self.metrics.rows_hidden.inc(len(hidden))
        return Reply(store.status, store.content_type, render(answer, hidden), tuple(extra))

    def _reveal(
        self,
        caller: str,
        path: str,
        query_string: str,
        session_id: str,
        answer: Answer,
        rows: list[dict[str, object]],
        extra: list[tuple[str, str]],
        status: int,
        content_type: str,
        evaluation: Evaluation | None,
        version: int,
    ) -> Reply:
        """Decide a reveal on ``evaluation`` (begun on state ``version`` or newer), and record
        it only if it still holds when the record is written: a revoke, a session end or a
        state change that commits first wins (R7, R11)."""
        session = self._session(session_id)

        def decide(in_record: bool) -> list[int]:
            """The private rows to reveal; in the record's transaction (on newer state, and a
            new hold on the same policy) a refusal is recorded after that transaction, by
            ``_audit_reveal``."""
            held = (
                self._begin(True, evaluation)
                if in_record and evaluation is not None
                else evaluation
            )
            decision = self._decide(caller, path, query_string, session_id, session, rows, held)
            if decision.failed:
                raise PolicyError("the policy could not decide this reveal; nothing was revealed")
            if not decision.reveal:
                if not in_record:
                    self._refused(caller, session_id, decision.refusals, path)
                raise RevealRefused(
                    "reveal refused: " + "; ".join(decision.refusals or ("the policy denied it",)),
                    reasons=list(decision.refusals),
                )
            return sorted(decision.hidden(len(rows)))

        private = decide(False)
        if private or self._state_version() != version:
            private = self._audit_reveal(
                caller,
                session,
                path,
                query_string,
                answer,
                rows,
                private,
                session_id,
                version,
                decide,
            )
        if private:
            self.metrics.rows_revealed.inc(len(private))
        return Reply(
            status, content_type, render(answer, ()), tuple(extra), revealed=tuple(private)
        )

    def _session(self, session_id: str) -> dict[str, object] | None:
        try:
            return self.storage.get_session(session_id)
        except StorageError as exc:
            raise StorageError("cannot check the reveal session: storage is unavailable") from exc

    def _state_version(self) -> int:
        try:
            return self.storage.state_version()
        except StorageError as exc:
            raise StorageError(
                "cannot check the management state of this reveal: storage is unavailable"
            ) from exc

    def _sync_state(self) -> bool:
        """Bring the engine's data.veil up to date; False when the state cannot be read now.

        The last state loaded is never used instead (R11): a group made private, or a change
        on another replica, since then would not count, so every row is hidden until the
        state can be read again."""
        try:
            version = self.storage.state_version()
            self.engine.sync(version, lambda: self.storage.policy_data(self.config.managed_domains))
        except (StorageError, PolicyError) as exc:
            log.warning("policy state cannot be read, hiding every row: %s", exc.detail)
            return False
        return True

    def _begin(self, state_ok: bool, previous: Evaluation | None = None) -> Evaluation | None:
        """This answer's hold on the engine, with the data as synced now (``previous``: an
        earlier hold of this answer, whose policy is kept); None, so every row is hidden,
        when the state cannot be read now or the engine cannot be held."""
        if not state_ok:
            return None
        try:
            if not hasattr(self.engine, "begin"):  # only evaluate(): the whole decision
                return _WholeDecision(self.engine)
            return self.engine.begin(previous)
        except PolicyError as exc:
            log.error("policy evaluation failed, hiding every row: %s", exc.detail)
            return None

    def _document(
        self,
        caller: str,
        path: str,
        query_string: str,
        session_id: str | None,
        session: dict[str, object] | None,
        rows: Sequence[dict[str, object]],
    ) -> dict[str, Any]:
        """The policy's input for one answer (policies/README.md says what it holds)."""
        return {
            "caller": caller,
            "request": {"method": "GET", "path": path, "query": query_string},
            "reveal_session_id": session_id,
            "session": session,
            "now_ns": time.time_ns(),
            "rows": rows,
        }

    def _decide(
        self,
        caller: str,
        path: str,
        query_string: str,
        session_id: str | None,
        session: dict[str, object] | None,
        rows: list[dict[str, object]],
        evaluation: Evaluation | None,
    ) -> Decision:
        """The decision on ``rows`` (as the policy sees them), through ``evaluation``."""
        document = self._document(caller, path, query_string, session_id, session, rows)
        return self._timed(evaluation, lambda held: self.decider.decide(held, document, rows))

    def _decide_facts(
        self,
        caller: str,
        path: str,
        query_string: str,
        evaluation: Evaluation,
        facts: RowFacts,
        answer: Answer,
    ) -> Decision:
        """The decision of an answer without a reveal, on a policy Veil follows, from its
        rows' facts; the whole input is built only if the policy's authors' rules need it."""

        def document() -> bytes:
            rows = self.normalizer.rows_of(answer, include_raw=False)
            return orjson.dumps(self._document(caller, path, query_string, None, None, rows))

        return self._timed(
            evaluation, lambda held: self.decider.decide_facts(held, facts, document)
        )

    def _timed(
        self, evaluation: Evaluation | None, decide: Callable[[Evaluation], Decision]
    ) -> Decision:
        """``decide`` on the hold, timed and counted; any failure fails closed."""
        if evaluation is None:
            self.metrics.policy_failures.inc()
            return Decision.fail_closed()
        started = time.perf_counter()
        try:
            decision = decide(evaluation)
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

    def _audit_reveal(
        self,
        caller: str,
        session: dict[str, object] | None,
        path: str,
        query_string: str,
        answer: Answer,
        rows: list[dict[str, object]],
        private: list[int],
        session_id: str,
        version: int,
        decide: Callable[[bool], list[int]],
    ) -> list[int]:
        """Record the reveal of ``private`` as decided on state ``version``; if the state has
        moved on, the storage transaction has ``decide`` judge again on the newer state first.
        Returns the rows recorded (and so revealed) as private."""
        text = answer.text
        revealed = private

        def details(indices: list[int]) -> dict[str, object] | None:
            if not indices:
                return None
            return {
                "session": session["id"] if session else session_id,
                "justification": session.get("justification") if session else None,
                "path": path,
                "query": query_string,
                "count": len(indices),
                "ids": [rows[i]["id"] for i in indices],
                # each revealed row exactly as sent, even one without a readable id
                "sha256": [
                    hashlib.sha256(text[start:end].encode()).hexdigest()
                    for start, end in (answer.spans[i] for i in indices)
                ],
            }

        def redecide(newer: int, read: ReadState) -> dict[str, object] | None:
            nonlocal revealed
            self.engine.sync(newer, lambda: read(self.config.managed_domains))
            revealed = decide(True)
            return details(revealed)

        try:
            self.storage.record_reveal(
                caller, session_id, details(private), state_version=version, redecide=redecide
            )
        except RevealRefused as exc:
            # revoked, ended or expired since the decision: the newer state wins (R11)
            self._refused(caller, session_id, tuple(exc.extra.get("reasons", ())), path)
            raise
        except StorageError as exc:
            log.error("governance record not written, reveal withheld: %s", exc.detail)
            raise GovernanceWriteFailed(
                "the governance record of this reveal could not be written; no private "
                "activity was sent. Retry when storage is back."
            ) from exc
        return revealed

    def _refused(self, caller: str, session_id: str, refusals: tuple[str, ...], path: str) -> None:
        try:
            # coalesced per principal (R12): a loop of refusals cannot flood the log
            self.storage.refusal(
                "reveal_refused",
                caller,
                {"session": session_id, "path": path, "reasons": list(refusals)},
            )
        except StorageError as exc:
            log.error("could not record a refused reveal: %s", exc.detail)


class _WholeDecision:
    """The hold of an engine that has only ``evaluate``: the whole decision, per answer."""

    plan = None
    key = None

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.needs_raw = engine.needs_raw

    def evaluate(self, rule: str, input_json: bytes) -> Any:
        if rule != DECISION:
            raise PolicyError(f"this engine evaluates only {DECISION}")
        return self._engine.evaluate(input_json)
