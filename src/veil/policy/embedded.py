"""The embedded engine: regorus in-process, one interpreter per thread.

A regorus ``Engine`` is bound to the thread that made it, so each thread builds its own from
the parsed modules and re-loads ``data.veil`` when the shared data version moves on. Panics in
the interpreter (``pyo3_runtime.PanicException``, a ``BaseException``) become PolicyError.

A reload swaps in a new immutable *generation* (the modules, whether they read ``raw``, and
the row plan of ``veil.policy.plan``). An answer pins the generation it starts with
(``begin`` returns a hold on it, which says whether the input needs raw rows and evaluates
with that generation only); each thread builds a fresh interpreter when a hold asks for a
generation its interpreter is not, so answers in flight finish on the policy they started
with. The interpreter loads the policy as the plan rewrites it (each
``private_rows`` rule renamed, their union unchanged), so one answer can ask for the authors'
rules apart from the shipped ones.
"""

from __future__ import annotations

import itertools
import json
import threading
import weakref
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import regorus

from veil.errors import PolicyError
from veil.policy import (
    DECISION,
    EMPTY_INPUT,
    DataLoader,
    Evaluation,
    PolicyModule,
    load_modules,
)
from veil.policy.plan import R1_WINDOW, WINDOWS, RowPlan, plan


def first_line(exc: BaseException) -> str:
    """regorus errors carry a Rust backtrace after the message; keep the message."""
    text = str(exc).strip()
    return text.split("\nStack backtrace:")[0].strip() or type(exc).__name__


def new_engine(modules: Sequence[PolicyModule]) -> Any:
    engine = regorus.Engine()
    for module in modules:
        try:
            engine.add_policy(str(module.path), module.text)
        except RuntimeError as exc:
            raise PolicyError(f"policy {module.path} does not compile: {first_line(exc)}") from exc
    return engine


def refers_to_raw(engine: Any) -> bool:
    """Does any loaded rule mention ``raw``? Only then is each row's raw JSON put in the input."""
    for module in json.loads(engine.get_ast_as_json()):
        if '"raw"' in json.dumps(module.get("ast", {})):
            return True
    return False


_serials = itertools.count(1)


@dataclass(frozen=True, eq=False)
class _Generation:
    """One loaded policy set (as the interpreter loads it); compared by identity."""

    modules: tuple[PolicyModule, ...]
    needs_raw: bool
    plan: RowPlan | None
    serial: int


class _Evaluation:
    """One answer's hold on this thread's interpreter: one policy generation, one data version."""

    def __init__(self, owner: EmbeddedEngine, state: _ThreadState) -> None:
        self._owner = owner
        self._engine = state.engine
        self.generation = state.generation
        self.needs_raw = state.generation.needs_raw
        self.plan = state.generation.plan
        self.key: Hashable = (state.generation.serial, state.data_version)

    def evaluate(self, rule: str, input_json: bytes) -> Any:
        return self._owner._eval(self._engine, rule, input_json)


class _ThreadState:
    def __init__(self, engine: Any, generation: _Generation) -> None:
        self.engine = engine
        self.generation = generation
        self.data_version = -1


class _Interpreters(threading.local):
    """This thread's interpreters, one per live EmbeddedEngine (by serial).

    A regorus interpreter must also be *dropped* by the thread that made it (pyo3 refuses the
    drop elsewhere, as an unraisable error). So interpreters live in the thread's own storage,
    not in the engine: an engine collected by another thread drops nothing there; its entries
    go when this thread next looks (``purge``) or ends.
    """

    def __init__(self) -> None:
        self.states: dict[int, tuple[weakref.ref[EmbeddedEngine], _ThreadState]] = {}

    def purge(self) -> None:
        dead = [key for key, (owner, _) in self.states.items() if owner() is None]
        for key in dead:
            del self.states[key]


_interpreters = _Interpreters()
_engine_serials = itertools.count()


class EmbeddedEngine:
    """Evaluates the decision with regorus in the calling thread."""

    name = "embedded"

    def __init__(self, directory: Path, modules: Sequence[PolicyModule] | None = None) -> None:
        self.directory = directory
        self._serial = next(_engine_serials)
        self._lock = threading.Lock()
        self._version = -1
        self._data_json = '{"veil": {}}'
        self._generation = self._prepare(load_modules(directory) if modules is None else modules)

    @property
    def needs_raw(self) -> bool:
        """Whether the policy now served reads raw rows (what ``begin`` would pin now)."""
        return self._generation.needs_raw

    def _prepare(self, modules: Sequence[PolicyModule]) -> _Generation:
        policy = tuple(m for m in modules if not m.is_test)
        if not policy:
            raise PolicyError(f"policy directory {self.directory} holds no policy (.rego) file")
        row_plan = plan(policy)
        served = row_plan.modules if row_plan is not None else policy
        probe = new_engine(served)
        self._check(probe, row_plan)
        return _Generation(served, refers_to_raw(probe), row_plan, next(_serials))

    def _check(self, engine: Any, row_plan: RowPlan | None) -> None:
        """Evaluate an empty answer once: errors that show only at evaluation stop start-up."""
        engine.add_data_json(self._data_json)
        engine.set_input_json(json.dumps(EMPTY_INPUT))
        try:
            result = engine.eval_rule(DECISION)
        except RuntimeError as exc:
            if "not a valid rule path" in str(exc):
                raise PolicyError(
                    f"{DECISION} is undefined: no policy in {self.directory} defines it"
                ) from exc
            raise PolicyError(f"{DECISION} fails to evaluate: {first_line(exc)}") from exc
        if result is None:
            raise PolicyError(f"{DECISION} is undefined in {self.directory}")
        if row_plan is not None and R1_WINDOW in row_plan.shipped:
            try:
                engine.eval_rule(WINDOWS)
            except RuntimeError as exc:
                raise PolicyError(f"{WINDOWS} fails to evaluate: {first_line(exc)}") from exc

    def reload(self, modules: Sequence[PolicyModule]) -> None:
        """Serve ``modules`` (test files are left out) from now on; on PolicyError keep the old."""
        try:
            generation = self._prepare(modules)
        except (PolicyError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a panic while compiling must not take the caller down
            raise PolicyError(f"the new policy could not be loaded: {first_line(exc)}") from exc
        with self._lock:
            self._generation = generation

    def sync(self, version: int, load: DataLoader) -> None:
        if version == self._version:
            return
        with self._lock:
            if version != self._version:
                loaded_version, data = load()
                self._data_json = orjson.dumps({"veil": data}).decode()
                self._version = loaded_version

    def _thread_state(self, generation: _Generation) -> _ThreadState:
        held = _interpreters.states.get(self._serial)
        state = held[1] if held is not None else None
        if state is None or state.generation is not generation:
            _interpreters.purge()
            state = _ThreadState(new_engine(generation.modules), generation)
            _interpreters.states[self._serial] = (weakref.ref(self), state)
        if state.data_version != self._version:
            with self._lock:
                version, data_json = self._version, self._data_json
            state.engine.clear_data()
            state.engine.add_data_json(data_json)
            state.data_version = version
        return state

    def begin(self, previous: Evaluation | None = None) -> _Evaluation:
        """Hold this thread's interpreter for one answer: the policy now served (or the one
        ``previous`` pinned) with the data as it is now."""
        if previous is None:
            generation = self._generation
        elif isinstance(previous, _Evaluation) and previous._owner is self:
            generation = previous.generation
        else:
            raise PolicyError("an evaluation can only be continued by the engine that began it")
        try:
            return _Evaluation(self, self._thread_state(generation))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # PanicException is a BaseException
            self._forget()
            raise PolicyError(f"embedded policy evaluation failed: {first_line(exc)}") from exc

    def _eval(self, engine: Any, rule: str, input_json: bytes) -> Any:
        try:
            engine.set_input_json(input_json.decode())
            return engine.eval_rule(rule)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # PanicException is a BaseException
            self._forget()  # never reuse an interpreter that failed mid-evaluation
            raise PolicyError(f"embedded policy evaluation failed: {first_line(exc)}") from exc

    def evaluate(self, input_json: bytes) -> Any:
        return self.begin().evaluate(DECISION, input_json)

    def ready(self) -> bool:
        return True

    def _forget(self) -> None:
        """Drop this thread's interpreter for this engine (in this thread, as regorus needs)."""
        _interpreters.states.pop(self._serial, None)

    def close(self) -> None:
        self._forget()
