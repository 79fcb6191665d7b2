"""The embedded engine: regorus in-process, one interpreter per thread.

A regorus ``Engine`` is bound to the thread that made it, so each thread builds its own from
the parsed modules and re-loads ``data.veil`` when the shared data version moves on. Panics in
the interpreter (``pyo3_runtime.PanicException``, a ``BaseException``) become PolicyError.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import orjson
import regorus

from veil.errors import PolicyError
from veil.policy import DECISION, DataLoader, PolicyModule, load_modules


def first_line(exc: BaseException) -> str:
    """regorus errors carry a Rust backtrace after the message; keep the message."""
    text = str(exc).strip()
    return text.split("\nStack backtrace:")[0].strip() or type(exc).__name__


def new_engine(modules: list[PolicyModule]) -> Any:
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


class _ThreadState:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.data_version = -1


class EmbeddedEngine:
    """Evaluates the decision with regorus in the calling thread."""

    name = "embedded"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._modules = [m for m in load_modules(directory) if not m.is_test]
        probe = new_engine(self._modules)
        self.needs_raw = refers_to_raw(probe)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._version = -1
        self._data_json = '{"veil": {}}'
        self._check(probe)

    def _check(self, engine: Any) -> None:
        """Evaluate an empty answer once: errors that show only at evaluation stop start-up."""
        engine.add_data_json(self._data_json)
        engine.set_input_json(json.dumps({"caller": "", "rows": [], "session": None,
                                          "reveal_session_id": None, "now_ns": 0,
                                          "request": {}}))
        try:
            result = engine.eval_rule(DECISION)
        except RuntimeError as exc:
            if "not a valid rule path" in str(exc):
                raise PolicyError(f"{DECISION} is undefined: no policy in {self.directory} "
                                  "defines it") from exc
            raise PolicyError(f"{DECISION} fails to evaluate: {first_line(exc)}") from exc
        if result is None:
            raise PolicyError(f"{DECISION} is undefined in {self.directory}")

    def sync(self, version: int, load: DataLoader) -> None:
        if version == self._version:
            return
        with self._lock:
            if version != self._version:
                loaded_version, data = load()
                self._data_json = orjson.dumps({"veil": data}).decode()
                self._version = loaded_version

    def _thread_engine(self) -> Any:
        state: _ThreadState | None = getattr(self._local, "state", None)
        if state is None:
            state = _ThreadState(new_engine(self._modules))
            self._local.state = state
        if state.data_version != self._version:
            with self._lock:
                version, data_json = self._version, self._data_json
            state.engine.clear_data()
            state.engine.add_data_json(data_json)
            state.data_version = version
        return state.engine

    def evaluate(self, input_json: bytes) -> Any:
        try:
            engine = self._thread_engine()
            engine.set_input_json(input_json.decode())
            return engine.eval_rule(DECISION)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # PanicException is a BaseException
            self._local.state = None  # never reuse an interpreter that failed mid-evaluation
            raise PolicyError(f"embedded policy evaluation failed: {first_line(exc)}") from exc

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        self._local = threading.local()
