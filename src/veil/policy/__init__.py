"""The policy decision: the engine protocol, the input Veil sends, and how answers are read.

An engine answers ``data.veil.privacy.decision`` for one input (one upstream answer). Any
engine failure, or a decision that is undefined or malformed, is read as "every row private,
no reveal" (fail closed); the caller learns only that the policy could not be applied.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from veil.errors import PolicyError

if TYPE_CHECKING:
    from veil.policy.plan import RowPlan

DECISION = "data.veil.privacy.decision"

DataLoader = Callable[[], tuple[int, dict[str, Any]]]

# The input of an answer with no rows and no reveal: what start-up and readiness checks ask.
EMPTY_INPUT: dict[str, Any] = {
    "caller": "",
    "request": {},
    "reveal_session_id": None,
    "session": None,
    "now_ns": 0,
    "rows": [],
}


class Evaluation(Protocol):
    """One answer's hold on an engine, taken with ``Engine.begin`` before the answer's input
    is built: it pins one policy generation, which says whether the input must carry raw rows
    (``needs_raw``) and evaluates every rule asked through this hold, and one version of
    ``data.veil``; ``key`` names both (what Veil's caches are keyed by). Nothing about the
    answer is remembered anywhere else (no thread-local state)."""

    @property
    def needs_raw(self) -> bool:
        """Whether this answer's input must carry each row's raw JSON (the pinned policy has
        a rule that mentions ``raw``)."""

    @property
    def plan(self) -> RowPlan | None:
        """What Veil may compute per actor (``veil.policy.plan``); None: evaluate the decision."""

    @property
    def key(self) -> Hashable:
        """Changes whenever the policy set or the state version does."""

    def evaluate(self, rule: str, input_json: bytes) -> Any:
        """The value of ``rule`` (e.g. ``data.veil.privacy.decision``) for one input, by the
        pinned policy; raise PolicyError when the engine cannot answer, or cannot answer with
        this policy and state any more (fail closed)."""


class Engine(Protocol):
    """A Rego engine holding Veil's policies and the ``data.veil`` document.

    ``reload`` (hot reload, see ``veil.policy_reload``) is called only with a policy set that
    already compiled and passed its own tests; the engine swaps it in atomically or raises
    PolicyError and keeps serving the policy it had. Queries are answered throughout. Whether
    inputs must
    carry raw rows may change with a reload, so an answer takes a hold (``begin``) before it
    builds its input and evaluates through that hold: an input built without raw rows is
    never evaluated by a policy that reads ``raw`` (the hold evaluates with the policy it
    pinned, or fails closed).
    """

    name: str

    @property
    def needs_raw(self) -> bool:
        """Whether the policy served now reads raw rows (what ``begin`` would pin); reading
        it has no effect on later evaluations."""

    def sync(self, version: int, load: DataLoader) -> None:
        """Make ``data.veil`` current if ``version`` is newer than what the engine holds."""

    def evaluate(self, input_json: bytes) -> Any:
        """The decision for one input that does not depend on ``needs_raw`` (no rows, or rows
        with ``raw``), by the policy served now; raise PolicyError when the engine cannot
        answer. An answer's input is evaluated through its hold (``begin``) instead."""

    def begin(self, previous: Evaluation | None = None) -> Evaluation:
        """Hold the engine for one answer, with ``data.veil`` as it is now; PolicyError when
        it cannot be held. ``previous``: an earlier hold of the same answer (its input built
        already), whose policy the new hold keeps, e.g. to decide again on newer state."""

    def reload(self, modules: Sequence[PolicyModule]) -> None:
        """Serve these modules (``*_test.rego`` ones are ignored) from now on, atomically;
        raise PolicyError, still serving the old policy, when they cannot be loaded."""

    def ready(self) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Decision:
    """What Veil does with one answer. ``private`` is None when every row must be hidden."""

    private: frozenset[int] | None
    reveal: bool
    refusals: tuple[str, ...]
    failed: bool = False

    @classmethod
    def fail_closed(cls) -> Decision:
        return cls(private=None, reveal=False, refusals=(), failed=True)

    @classmethod
    def read(cls, result: Any, row_count: int) -> Decision:
        """Interpret an engine's result strictly; anything unexpected fails closed."""
        if not isinstance(result, dict):
            return cls.fail_closed()
        rows = result.get("private_rows")
        if not isinstance(rows, (set, frozenset, list, tuple)):
            return cls.fail_closed()
        private: set[int] = set()
        for index in rows:
            if type(index) is not int or not 0 <= index < row_count:
                return cls.fail_closed()
            private.add(index)
        refusals = result.get("refusals", [])
        if not isinstance(refusals, (set, frozenset, list, tuple)) or not all(
            isinstance(r, str) for r in refusals
        ):
            return cls.fail_closed()
        return cls(frozenset(private), result.get("reveal") is True, tuple(sorted(refusals)))

    def hidden(self, row_count: int) -> frozenset[int]:
        return frozenset(range(row_count)) if self.private is None else self.private


@dataclass(frozen=True)
class PolicyModule:
    path: Path
    text: str

    @property
    def is_test(self) -> bool:
        return self.path.name.endswith("_test.rego")


def load_modules(directory: Path) -> list[PolicyModule]:
    """Every ``.rego`` file under ``directory``, in a stable order."""
    if not directory.is_dir():
        raise PolicyError(f"policy directory {directory} does not exist")
    modules = []
    for path in sorted(directory.rglob("*.rego")):
        try:
            modules.append(PolicyModule(path, path.read_text("utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"cannot read policy file {path}: {exc}") from exc
    if not any(not m.is_test for m in modules):
        raise PolicyError(f"policy directory {directory} holds no policy (.rego) file")
    return modules


def create_engine(
    kind: str,
    directory: Path,
    opa_url: str = "",
    timeout_s: float = 2.0,
    bundle: bool = False,
    modules: Sequence[PolicyModule] | None = None,
) -> Engine:
    """The configured engine, serving ``modules`` (default: read from ``directory``)."""
    if kind == "opa":
        from veil.policy.opa import OpaEngine

        return OpaEngine(directory, opa_url, timeout_s, bundle, modules)
    from veil.policy.embedded import EmbeddedEngine

    return EmbeddedEngine(directory, modules)
