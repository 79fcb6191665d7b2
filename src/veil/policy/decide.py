"""Which rows of one answer are private: the policy's word, computed once per actor.

For a policy whose plan (``veil.policy.plan``) Veil follows, the private windows of each
(actor type, actor) come from the policy's ``data.veil.privacy.actor_windows``, asked only for
the actors not yet cached for this policy set and state version, and the shipped rules R1 and
R2 are applied here to the rows' facts (``veil.rows.RowFacts``: actor, actor type and time of
each row, read without building the policy's input); the authors' ``private_rows`` rules, if
any, are evaluated by the engine on the answer's whole input, built only then. A reveal, and
any policy Veil does not follow, is decided by ``data.veil.privacy.decision`` as a whole.
Anything the engine cannot answer, or answers in a shape Veil does not expect, fails closed
(every row private).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import orjson

from veil import rows as rows_module
from veil.policy import DECISION, Decision, Evaluation
from veil.policy.plan import (
    BOTH_RULE,
    CUSTOM_RULE,
    R1_WINDOW,
    R2_ACTOR,
    R2_TIME,
    WINDOWS,
    RowPlan,
)
from veil.rows import RowFacts, stamp_ns

Windows = tuple[tuple[int | float, int | float], ...]
MAX_CACHED_ACTORS = 200_000  # per policy set and state version; the cache starts over beyond
MAX_TABLES = 4  # policy sets or state versions cached at once (threads can lag one behind)

_NUMBER = (int, float)


class RowDecider:
    """Decides one answer's rows on an engine; caches each actor's windows per ``key``."""

    def __init__(self) -> None:
        self._tables: dict[Hashable, dict[tuple[Any, str], Windows]] = {}
        self._lock = threading.Lock()

    def decide(
        self, evaluation: Evaluation, document: dict[str, Any], rows: Sequence[dict[str, Any]]
    ) -> Decision:
        """The decision for ``document`` (the policy input, its ``rows`` being ``rows``).

        Raises PolicyError when the engine fails; returns a failed Decision when its answer
        is malformed (both mean: hide every row).
        """
        if evaluation.plan is None or document.get("reveal_session_id") is not None:
            result = evaluation.evaluate(DECISION, orjson.dumps(document))
            return Decision.read(result, len(rows))
        return self.decide_facts(evaluation, RowFacts.of(rows), lambda: orjson.dumps(document))

    def decide_facts(
        self, evaluation: Evaluation, facts: RowFacts, document: Callable[[], bytes]
    ) -> Decision:
        """The decision for an answer without a reveal, on a policy Veil follows
        (``evaluation.plan`` is not None), from its rows' ``facts``; ``document`` gives the
        encoded policy input, asked for only when the policy has rules of its authors'."""
        row_plan = evaluation.plan
        if row_plan is None:
            return Decision.read(evaluation.evaluate(DECISION, document()), len(facts.ids))
        private = self.private_rows(evaluation, row_plan, facts, document)
        if private is None:
            return Decision.fail_closed()
        return Decision(frozenset(private), False, ())

    def private_rows(
        self,
        evaluation: Evaluation,
        row_plan: RowPlan,
        facts: RowFacts,
        document: Callable[[], bytes],
    ) -> set[int] | None:
        """``private_rows`` for the answer as the plan computes it, with at most one
        evaluation; None when the policy's answer is malformed."""
        shipped = row_plan.shipped
        no_actor, no_time, in_window = (
            R2_ACTOR in shipped,
            R2_TIME in shipped,
            R1_WINDOW in shipped,
        )
        table = self._table(evaluation.key) if in_window else {}
        actors: list[Any] = facts.actors
        kinds, stamps = facts.kinds, facts.stamps
        found, waiting = match(actors, kinds, stamps, table, no_actor, no_time, in_window)
        private = set(found)
        add = private.add
        ns = stamp_ns
        pending: list[tuple[int, tuple[Any, str], Any]] = [
            (i, (kinds[i], actors[i]), stamps[i]) for i in waiting
        ]
        missing = dict.fromkeys(pair for _, pair, _ in pending)  # pairs not cached yet
        custom: Any = None
        if missing:
            pairs = list(missing)
            if row_plan.custom:  # one evaluation on the answer for both
                both = evaluation.evaluate(BOTH_RULE, document())
                if not isinstance(both, dict):
                    return None
                fresh = _read_windows(both.get("windows"), pairs)
                custom = both.get("custom")
            else:
                fresh = _read_windows(evaluation.evaluate(WINDOWS, _probe(pairs)), pairs)
            if fresh is None:
                return None
            if len(table) + len(fresh) > MAX_CACHED_ACTORS:
                table.clear()
            table.update(fresh)
            for i, pair, stamp in pending:
                ts = ns(stamp)
                if any(start <= ts < end for start, end in fresh[pair]):
                    add(i)
        if row_plan.custom:
            if custom is None:
                custom = evaluation.evaluate(CUSTOM_RULE, document())
            if not isinstance(custom, (set, frozenset, list, tuple)):
                return None
            for index in custom:
                if type(index) is not int or not 0 <= index < len(facts.ids):
                    return None
                add(index)
        return private

    def _table(self, key: Hashable) -> dict[tuple[Any, str], Windows]:
        table = self._tables.get(key)
        if table is None:
            with self._lock:
                table = self._tables.get(key)
                if table is None:
                    while len(self._tables) >= MAX_TABLES:
                        self._tables.pop(next(iter(self._tables)))
                    table = self._tables[key] = {}
        return table


def match(
    actors: list[Any],
    kinds: list[str],
    stamps: list[Any],
    table: dict[tuple[Any, str], Windows],
    no_actor: bool,
    no_time: bool,
    in_window: bool,
    native: bool = True,
) -> tuple[list[int], list[int]]:
    """The shipped rules on each row's facts: (the rows R2 or R1 make private, the rows whose
    (actor type, actor) ``table`` does not hold yet, for R1 to judge once it does). By
    ``veil._rowscan.private_rows`` when it is built (``native``), else by the loop below, the
    reference the tests hold it to."""
    native_module = rows_module._rowscan  # None when built without a C compiler
    if native and native_module is not None:
        return native_module.private_rows(
            actors, kinds, stamps, table, no_actor, no_time, in_window, stamp_ns
        )
    private: list[int] = []
    waiting: list[int] = []
    cached, ns = table.get, stamp_ns
    i = -1
    for actor in actors:  # one pass: R2, then R1 from the cache
        i += 1
        stamp = stamps[i]
        if actor is None or stamp is None:
            if (no_actor and actor is None) or (no_time and stamp is None):
                private.append(i)
            continue  # R1 compares a time, of an actor: neither is here
        if in_window and type(actor) is str:
            windows = cached((kinds[i], actor))
            if windows is None:
                waiting.append(i)
            elif windows:
                ts = ns(stamp)
                for start, end in windows:
                    if start <= ts < end:
                        private.append(i)
                        break
    return private, waiting


def _probe(pairs: list[tuple[Any, str]]) -> bytes:
    """An input with one row per (actor type, actor): what ``actor_windows`` reads."""
    return orjson.dumps(
        {
            "caller": "",
            "request": {},
            "reveal_session_id": None,
            "session": None,
            "now_ns": 0,
            "rows": [
                {"index": n, "id": None, "actor": actor, "actor_type": kind, "ts_ns": None}
                for n, (kind, actor) in enumerate(pairs)
            ],
        }
    )


def _read_windows(
    result: Any, pairs: list[tuple[Any, str]]
) -> dict[tuple[Any, str], Windows] | None:
    """The windows of these pairs in an ``actor_windows`` answer; None when malformed."""
    if not isinstance(result, dict):
        return None
    read: dict[tuple[Any, str], Windows] = {}
    for kind, by_actor in result.items():  # all of it must be well-formed, asked or not
        if not isinstance(by_actor, dict):
            return None
        for actor, found in by_actor.items():
            if not isinstance(found, (list, tuple)):
                return None
            windows = []
            for window in found:
                if (
                    not isinstance(window, (list, tuple))
                    or len(window) != 2
                    or not all(type(bound) in _NUMBER for bound in window)
                ):
                    return None
                windows.append((window[0], window[1]))
            read[(kind, actor)] = tuple(windows)
    return {pair: read.get(pair, ()) for pair in pairs}
