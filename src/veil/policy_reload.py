"""Safe policy hot reload: a changed policy directory is checked and tested, then swapped in.

Three triggers run the same ``PolicyReloader.reload``: a change under the policy directory
(a background thread polls the files' sizes and modification times), ``SIGHUP``, and
``POST /veil/v1/policy/reload`` (admins). A policy set replaces the running one only when
``veil policy check`` finds nothing, its own tests exist and all pass, and the engine loads
it; otherwise the running policy keeps serving. Queries are answered throughout.

Every attempt that is not a no-op is written to the governance log as ``policy_reloaded``
(outcome ``accepted`` or ``refused``, the reason, and the SHA-256 of every file). An accepted
set whose record cannot be written is rolled back: an unaudited policy is never served. A
process that starts serving a set other than the newest record's writes one too (trigger
``start-up``), so the records are a history of every set served, and a later reload is
compared against what was really served before it. If that start-up record cannot be written
the process serves anyway, with a warning: there is no earlier policy to keep serving, and
under ``veil serve`` the set was checked and tested before the worker started.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from flask import Flask, current_app

from veil.clock import now_ns, rfc3339
from veil.errors import PolicyError, StorageError
from veil.policy import Engine, PolicyModule, load_modules
from veil.policytools.validation import Validation, validate
from veil.storage import Storage

log = logging.getLogger("veil.reload")

EXTENSION = "veil_reload"
ACTOR_WATCH = "system:policy-watch"
ACTOR_SIGNAL = "system:sighup"
ACTOR_START = "system:start-up"
START_UP = "start-up"
MAX_RECORDED_PROBLEMS = 20


@dataclass(frozen=True)
class PolicySet:
    """The files of one policy set, by path under the policy directory, with their SHA-256."""

    files: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, directory: Path, modules: Sequence[PolicyModule]) -> PolicySet:
        hashed = []
        for module in modules:
            try:
                name = module.path.relative_to(directory).as_posix()
            except ValueError:
                name = module.path.as_posix()
            hashed.append((name, hashlib.sha256(module.text.encode()).hexdigest()))
        return cls(tuple(sorted(hashed)))

    @property
    def digest(self) -> str:
        """One SHA-256 for the whole set (over ``path NUL sha256 LF`` lines, sorted)."""
        text = "".join(f"{name}\0{sha}\n" for name, sha in self.files)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ReloadOutcome:
    """What one reload attempt did."""

    outcome: str  # accepted | refused | unchanged
    trigger: str  # file_watch | sighup | api | start-up
    actor: str
    at: str
    policy_set: PolicySet | None
    previous: PolicySet | None
    reason: str
    problems: tuple[str, ...] = ()
    tests_passed: int = 0
    tests_failed: int = 0

    def record(self) -> dict[str, Any]:
        """The governance record's details."""
        return {
            "outcome": self.outcome,
            "trigger": self.trigger,
            "reason": self.reason,
            "problems": list(self.problems[:MAX_RECORDED_PROBLEMS]),
            "tests": {"passed": self.tests_passed, "failed": self.tests_failed},
            "digest": self.policy_set.digest if self.policy_set else None,
            "files": dict(self.policy_set.files) if self.policy_set else {},
            "previous_digest": self.previous.digest if self.previous else None,
            "pid": os.getpid(),
        }

    def recorded_already(self, last: dict[str, Any]) -> bool:
        """Whether ``last`` (the newest ``policy_reloaded`` record) already says this, so a
        change is one record, not one per worker or replica. An admin's POST is always
        recorded. A reload (the broadcast after a POST, SIGHUP, each worker's file watch) is
        recorded already when ``last`` has the same outcome for the same files *from the same
        set*: every process that made that change saw the same record, while one that was
        serving something else made another change, which gets its own record. A start-up
        is recorded already when ``last`` names the set it serves (accepted or a start-up):
        the log's newest word is then what this process serves.
        """
        details = last.get("details") or {}
        if self.trigger == "api" or self.policy_set is None:
            return False
        same = (
            details.get("outcome") == self.outcome
            and details.get("digest") == self.policy_set.digest
        )
        if self.trigger == START_UP:
            return same
        previous = self.previous.digest if self.previous else None
        return same and details.get("previous_digest") == previous

    def summary(self) -> dict[str, Any]:
        """For /readyz and the API: no policy text, no file names."""
        return {
            "outcome": self.outcome,
            "trigger": self.trigger,
            "at": self.at,
            "reason": self.reason,
            "digest": self.policy_set.digest if self.policy_set else None,
        }


@dataclass
class PolicyReloader:
    """Checks, tests and swaps in the policy directory's current files, one attempt at a time."""

    directory: Path
    engine: Engine
    storage: Storage
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _modules: list[PolicyModule] | None = field(default=None, init=False)
    _serving: PolicySet | None = field(default=None, init=False)
    _loaded_at: str = field(default="", init=False)
    _last: ReloadOutcome | None = field(default=None, init=False)
    # The log may not name what this process serves (its start-up could not be recorded):
    # its next change is then recorded whatever the newest record says.
    _log_behind: bool = field(default=False, init=False)
    seen: tuple[tuple[str, int, int], ...] = field(default=(), init=False)

    def serving_from(self, modules: Sequence[PolicyModule] | None) -> None:
        """Record what the engine serves (``None``: read the directory now)."""
        self.seen = self.signature()
        try:
            self._modules = list(modules) if modules is not None else load_modules(self.directory)
            self._serving = PolicySet.of(self.directory, self._modules)
        except PolicyError as exc:  # e.g. OPA with a bundle: no local policy directory
            log.info("policy directory not readable for hot reload: %s", exc.detail)
        self._loaded_at = rfc3339(now_ns())

    def record_start_up(self) -> ReloadOutcome | None:
        """Write a ``start-up`` record when the newest ``policy_reloaded`` record names another
        set than the one this process serves (one record when several workers start
        together). A log without such a record has nothing to contradict, so nothing is
        written: the set a deployment starts with is its configuration's, and the log speaks
        from the first change on. A log that cannot be written is a warning: the process
        serves regardless (there is nothing earlier to fall back on; ``veil serve`` checked
        and tested the set first)."""
        if self._serving is None:
            return None
        try:
            if self.storage.last_record("policy_reloaded") is None:
                return None
        except StorageError as exc:
            log.warning("the governance log cannot be read at start-up: %s", exc.detail)
            self._log_behind = True
            return None
        started = ReloadOutcome(
            "accepted",
            START_UP,
            ACTOR_START,
            self._loaded_at,
            self._serving,
            None,
            "the policy set this process started serving",
        )
        try:
            self.storage.record(
                "policy_reloaded", ACTOR_START, started.record(), unless=started.recorded_already
            )
        except StorageError as exc:
            log.warning(
                "the policy set this process serves (%s) could not be recorded in the "
                "governance log at start-up; serving it anyway: %s",
                self._serving.digest[:12],
                exc.detail,
            )
            self._log_behind = True
            return None
        return started

    def _record(self, outcome: ReloadOutcome) -> None:
        """Append ``outcome``'s record, once per change (see ``recorded_already``), or always
        while the log may not name what this process serves; StorageError if it cannot."""
        unless = None if self._log_behind else outcome.recorded_already
        self.storage.record("policy_reloaded", outcome.actor, outcome.record(), unless=unless)
        self._log_behind = False

    def on_disk_differs(self) -> bool:
        """Did the files change since the engine read them (e.g. while a worker started)?"""
        if self._serving is None:
            return False
        try:
            return PolicySet.of(self.directory, load_modules(self.directory)) != self._serving
        except PolicyError:
            return True

    def signature(self) -> tuple[tuple[str, int, int], ...]:
        """A cheap fingerprint of the directory's .rego files (path, mtime, size)."""
        found = []
        try:
            for path in sorted(self.directory.rglob("*.rego")):
                stat = path.stat()
                found.append((str(path), stat.st_mtime_ns, stat.st_size))
        except OSError:
            return ()
        return tuple(found)

    def reload(self, trigger: str, actor: str) -> ReloadOutcome:
        """One attempt; never raises for a bad policy (that is an outcome)."""
        with self._lock:
            outcome = self._attempt(trigger, actor)
            self._last = outcome
        if outcome.outcome == "accepted":
            log.info(
                "policy reloaded (%s by %s): %s, set %s",
                trigger,
                actor,
                outcome.reason,
                outcome.policy_set.digest[:12] if outcome.policy_set else "?",
            )
        elif outcome.outcome == "refused":
            log.error(
                "policy reload refused (%s by %s), the running policy keeps serving: %s%s",
                trigger,
                actor,
                outcome.reason,
                "".join(f"\n  {p}" for p in outcome.problems),
            )
        return outcome

    def _attempt(self, trigger: str, actor: str) -> ReloadOutcome:
        at = rfc3339(now_ns())
        previous = self._serving
        self.seen = self.signature()  # the files as this attempt reads them
        try:
            modules = load_modules(self.directory)
        except PolicyError as exc:
            return self._refused(
                ReloadOutcome(
                    "refused",
                    trigger,
                    actor,
                    at,
                    None,
                    previous,
                    "the policy directory cannot be read",
                    (exc.detail,),
                )
            )
        candidate = PolicySet.of(self.directory, modules)

        def outcome(
            kind: str,
            reason: str,
            problems: Sequence[str] = (),
            validation: Validation | None = None,
        ) -> ReloadOutcome:
            return ReloadOutcome(
                kind,
                trigger,
                actor,
                at,
                candidate,
                previous,
                reason,
                tuple(problems),
                validation.passed if validation else 0,
                validation.failed if validation else 0,
            )

        if candidate == previous:
            return outcome("unchanged", "the files are the ones being served")
        try:
            validation = validate(modules)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a panic in the interpreter refuses, never crashes
            return self._refused(
                outcome(
                    "refused",
                    "the policy could not be checked",
                    [f"{type(exc).__name__}: {exc}"[:500]],
                )
            )
        if not validation.ok:
            return self._refused(
                outcome("refused", validation.summary, validation.details(), validation)
            )
        try:
            self.engine.reload(modules)
        except PolicyError as exc:
            return self._refused(
                outcome("refused", "the engine refused the policy", [exc.detail], validation)
            )
        accepted = outcome("accepted", validation.summary, validation=validation)
        try:
            self._record(accepted)
        except StorageError as exc:
            self._rollback()
            return outcome(
                "refused",
                "the governance log is unavailable; the reload was undone",
                [exc.detail],
                validation,
            )
        self._modules, self._serving, self._loaded_at = modules, candidate, at
        return accepted

    def _refused(self, outcome: ReloadOutcome) -> ReloadOutcome:
        try:
            self._record(outcome)
        except StorageError as exc:
            log.error("could not record a refused policy reload: %s", exc.detail)
        return outcome

    def _rollback(self) -> None:
        if self._modules is None:
            log.critical(
                "a policy reload could not be audited and there is no previous "
                "policy to go back to; the new policy is serving unaudited"
            )
            return
        try:
            self.engine.reload(self._modules)
        except PolicyError as exc:
            log.critical(
                "could not restore the previous policy after an unaudited reload: %s", exc.detail
            )

    def status(self) -> dict[str, Any]:
        """The policy this process serves, and the last reload (for /readyz).

        ``last_reload`` is the newest ``policy_reloaded`` record of the governance log, which
        every worker and replica shares, so each of them shows the same one (a worker's own
        attempts differ: the one a POST reached reloads first, the others on the broadcast).
        Only when the log cannot be read is it this process's own last attempt.
        """
        try:
            record = self.storage.last_record("policy_reloaded")
        except StorageError:
            last = self._last.summary() if self._last else None
        else:
            last = None if record is None else _summary_of(record)
        return {
            "digest": self._serving.digest if self._serving else None,
            "files": len(self._serving.files) if self._serving else None,
            "loaded_at": self._loaded_at,
            "last_reload": last,
        }


def _summary_of(record: dict[str, Any]) -> dict[str, Any]:
    """A ``policy_reloaded`` record as ``ReloadOutcome.summary`` shows an attempt."""
    details = record.get("details") or {}
    return {
        "outcome": details.get("outcome"),
        "trigger": details.get("trigger"),
        "at": record.get("ts"),
        "reason": details.get("reason"),
        "digest": details.get("digest"),
        "seq": record.get("seq"),
    }


class ReloadTriggers:
    """A daemon thread that reloads on SIGHUP and, when asked, when the files change.

    A change is acted on once the directory has looked the same for one more poll, so an
    editor's multi-step save is read whole. The signal handler only wakes the thread.
    """

    def __init__(
        self, reloader: PolicyReloader, watch_interval_s: float | None, sighup: bool
    ) -> None:
        self.reloader = reloader
        self.interval = watch_interval_s if watch_interval_s and watch_interval_s > 0 else None
        self.sighup = sighup
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._signalled = threading.Event()
        self._previous_handler: Any = None
        self._thread = threading.Thread(target=self._run, name="veil-policy-reload", daemon=True)

    def start(self) -> None:
        if self.sighup:
            if threading.current_thread() is threading.main_thread():
                self._previous_handler = signal.signal(signal.SIGHUP, self._on_signal)
            else:
                log.warning("SIGHUP policy reload not installed: not in the main thread")
                self.sighup = False
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        if self.sighup and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, self._previous_handler or signal.SIG_DFL)

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self.wake()

    def wake(self) -> None:
        """Reload now, as on SIGHUP."""
        self._signalled.set()
        self._wake.set()

    def _run(self) -> None:
        pending: tuple[tuple[str, int, int], ...] | None = None
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if self._signalled.is_set():
                    self._signalled.clear()
                    self.reloader.reload("sighup", ACTOR_SIGNAL)
                    pending = None
                    continue
                if self.interval is None:
                    continue
                now = self.reloader.signature()
                if now == self.reloader.seen:
                    pending = None
                elif now == pending:
                    self.reloader.reload("file_watch", ACTOR_WATCH)
                    pending = None
                else:
                    pending = now
            except Exception:
                log.exception("policy reload trigger failed; it keeps watching")


def init_app(
    app: Flask,
    watch_interval_s: float | None = None,
    sighup: bool | None = None,
    modules: Sequence[PolicyModule] | None = None,
) -> PolicyReloader:
    """Attach a PolicyReloader to the app and start the triggers the configuration asks for
    (``policy.watch_s``: seconds between polls, 0 for no file watch; ``policy.reload_on_sighup``).
    """
    services = app.extensions["veil"]
    policy = services.config.policy
    reloader = PolicyReloader(policy.dir, services.engine, services.storage)
    reloader.serving_from(modules)
    reloader.record_start_up()
    app.extensions[EXTENSION] = reloader
    interval = watch_interval_s if watch_interval_s is not None else policy.watch_s
    on_signal = sighup if sighup is not None else policy.reload_on_sighup
    if interval > 0 or on_signal:
        triggers = ReloadTriggers(reloader, interval, on_signal)
        triggers.start()
        app.extensions[EXTENSION + "_triggers"] = triggers
        if reloader.on_disk_differs():  # changed while starting: a signal may have been missed
            triggers.wake()
    return reloader


BROADCAST = "veil_reload_broadcast"


def tell_other_workers() -> None:
    """Under ``veil serve``, have every other worker run the same reload (through SIGHUP to
    the gunicorn master, which passes it on); elsewhere there are no other workers."""
    broadcast = current_app.extensions.get(BROADCAST)
    if broadcast is not None:
        broadcast()


def reloader() -> PolicyReloader:
    """The current app's reloader (created by ``init_app``)."""
    found: PolicyReloader = current_app.extensions[EXTENSION]
    return found


def policy_status() -> dict[str, Any]:
    """The ``policy`` detail of /readyz."""
    found = current_app.extensions.get(EXTENSION)
    return found.status() if isinstance(found, PolicyReloader) else {"reload": "not enabled"}


def stop(app: Flask) -> None:
    """Stop the app's reload triggers, if any (tests; shutdown)."""
    triggers = app.extensions.pop(EXTENSION + "_triggers", None)
    if isinstance(triggers, ReloadTriggers):
        triggers.stop()
