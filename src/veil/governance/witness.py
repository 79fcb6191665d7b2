"""The witness: signed checkpoints of the chain head, written outside the database.

Someone who can write the database can cut off the newest records and move the head back;
the chain alone cannot tell. A checkpoint ``{"seq", "hash", "ts", "key_id", "signature"}``
(``signing``) written where that person cannot reach lets verify find it.

``governance.witness`` is a JSON Lines file (each checkpoint appended as one line, then
fsync) or an ``https://`` endpoint (each checkpoint POSTed as JSON; a 2xx answer is a write).
A checkpoint is written at once, synchronously, after every reveal record commits (a failure
there makes the reveal 503), and otherwise at most every ``governance.checkpoint_s`` seconds
after records were appended.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import requests

from veil.errors import GovernanceWriteFailed
from veil.governance.record import canonical
from veil.governance.signing import Signer

log = logging.getLogger("veil.witness")

HTTP_TIMEOUT_S = 5.0


def _line(checkpoint: dict[str, Any]) -> bytes:
    return canonical(checkpoint) + b"\n"


class Witness(Protocol):
    """Somewhere outside the database that keeps checkpoints."""

    where: str

    def write(self, checkpoint: dict[str, Any]) -> None:
        """Keep one checkpoint durably; raise OSError when it cannot."""


class FileWitness:
    """A JSON Lines file: one line per checkpoint, appended and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self._lock = threading.Lock()

    def write(self, checkpoint: dict[str, Any]) -> None:
        line = _line(checkpoint)
        with self._lock:  # O_APPEND keeps whole lines apart between processes, too
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(f"short write to {self.path}")
                os.fsync(fd)
            finally:
                os.close(fd)


class HttpsWitness:
    """An HTTPS endpoint that receives each checkpoint as a JSON POST."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = url
        self._session = requests.Session()

    def write(self, checkpoint: dict[str, Any]) -> None:
        try:
            answer = self._session.post(
                self.url,
                data=_line(checkpoint),
                timeout=HTTP_TIMEOUT_S,
                headers={"Content-Type": "application/json"},
            )
        except requests.RequestException as exc:
            raise OSError(f"{self.url} unreachable: {exc}") from exc
        if not 200 <= answer.status_code < 300:
            raise OSError(f"{self.url} answered {answer.status_code}")


def open_witness(target: str) -> Witness:
    if target.startswith("https://"):
        return HttpsWitness(target)
    return FileWitness(Path(target))


class Checkpointer:
    """Writes signed checkpoints of the chain head to a witness."""

    def __init__(
        self,
        signer: Signer,
        witness: Witness,
        interval_s: float,
        head: Callable[[], tuple[int, str] | None],
        clock: Callable[[], str],
    ) -> None:
        self.signer = signer
        self.witness = witness
        self.interval_s = interval_s
        self._head = head
        self._clock = clock
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._last_at = -math.inf  # time.monotonic() of the last checkpoint written
        self._last_seq = 0
        self._pending = False  # appended since the last checkpoint
        self._closed = False

    def now(self, seq: int, hash_: str) -> None:
        """Checkpoint this head before returning; GovernanceWriteFailed when it cannot be."""
        try:
            self._write(seq, hash_)
        except OSError as exc:
            log.error("witness %s not written: %s", self.witness.where, exc)
            raise GovernanceWriteFailed(
                f"the witness checkpoint could not be written to {self.witness.where}: {exc}"
            ) from exc

    def soon(self) -> None:
        """Checkpoint the head within ``interval_s``, at most once per interval."""
        with self._lock:
            self._pending = True
            if self._timer is not None or self._closed:
                return
            delay = max(0.0, self._last_at + self.interval_s - time.monotonic())
            self._timer = threading.Timer(delay, self._due)
            self._timer.daemon = True
            self._timer.start()

    def _due(self) -> None:
        self.flush()
        with self._lock:
            self._timer = None
            again = self._pending and not self._closed
        if again:  # appended while this checkpoint was written
            self.soon()

    def flush(self) -> None:
        """Checkpoint the current head if it moved since the last checkpoint."""
        with self._lock:
            self._pending = False
        try:
            head = self._head()
            if head is not None and head[0] > self._last_seq:
                self._write(*head)
        except Exception as exc:  # a background write: logged, retried with the next append
            log.error("witness %s not written: %s", self.witness.where, exc)

    def _write(self, seq: int, hash_: str) -> None:
        self.witness.write(self.signer.checkpoint(seq, hash_, self._clock()))
        with self._lock:
            self._last_at = time.monotonic()
            self._last_seq = max(self._last_seq, seq)

    def close(self) -> None:
        """Stop the timer; checkpoint what it was waiting for before returning."""
        with self._lock:
            timer = self._timer
            self._closed = True
        if timer is not None:
            timer.cancel()
            if timer is not threading.current_thread():
                timer.join()  # a checkpoint being written now is finished first
        if self._pending:
            self.flush()
