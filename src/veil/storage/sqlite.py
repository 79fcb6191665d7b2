"""SQLite backend: one file, one connection per thread, writes serialized by BEGIN IMMEDIATE."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from veil.errors import StorageError
from veil.storage.migrations import migrate

APPEND_ONLY = (
    """CREATE TRIGGER IF NOT EXISTS governance_log_no_update BEFORE UPDATE ON governance_log
       BEGIN SELECT RAISE(ABORT, 'the governance log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS governance_log_no_delete BEFORE DELETE ON governance_log
       BEGIN SELECT RAISE(ABORT, 'the governance log is append-only'); END""",
)


class _Tx:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self.cursor = cursor
        self.committed: list[Callable[[], None]] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.cursor.execute(sql, params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.cursor.execute(sql, params).fetchone()
        return row

    def after_commit(self, action: Callable[[], None]) -> None:
        self.committed.append(action)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.cursor.execute(sql, params).fetchall()


class SqliteBackend:
    name = "sqlite"

    def __init__(self, path: str, timeout_s: float) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the directory of {self.path}: {exc}") from exc
        self._migrate()

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self, write: bool) -> Iterator[_Tx]:
        try:
            conn = self._connection()
            cursor = conn.cursor()
            cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.Error as exc:
            self._drop()
            raise StorageError(f"SQLite database {self.path} is unavailable: {exc}") from exc
        tx = _Tx(cursor)
        try:
            yield tx
            cursor.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            raise StorageError(f"SQLite database {self.path} failed: {exc}") from exc
        except BaseException:
            self._rollback(conn)
            raise
        for action in tx.committed:
            action()

    def _rollback(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            self._drop()

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        self._drop()

    def _migrate(self) -> None:
        migrate(self, str(self.path), every_start=APPEND_ONLY)
