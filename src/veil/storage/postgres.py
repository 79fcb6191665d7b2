"""PostgreSQL backend: several Veil replicas share one database and one governance chain.

Connections come from a psycopg_pool pool (autocommit connections; this module issues BEGIN,
COMMIT and ROLLBACK itself). Every write transaction first takes one transaction-scoped
advisory lock, so writes from every replica run one after the other: the chain head a write
reads is the head it appends to, and the chain never forks. Reads run in REPEATABLE READ, one
snapshot per transaction, and never wait for that lock.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from types import MappingProxyType
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from veil.errors import StorageError
from veil.storage.migrations import migrate

# pg_advisory_xact_lock key of Veil's write lock: "veil" in ASCII.
WRITE_LOCK_KEY = 0x7665696C
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10  # a gunicorn worker runs 8 threads by default; each holds one at a time
# While the server is unreachable, wait this long (at most) for a connection, so that queries
# fall back to the last loaded state at once instead of after storage.timeout_s each.
UNREACHABLE_WAIT_S = 0.2
# How long the pool keeps retrying one connection attempt (1, 2, 4 s apart) before it gives
# up; the next request then starts a new attempt at once. Short, so recovery is prompt.
RECONNECT_TIMEOUT_S = 5.0

BEGIN_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
# READ COMMITTED on purpose: each statement after the lock sees every write committed before
# it. (A REPEATABLE READ snapshot would be taken by the lock statement itself, before it waits.)
BEGIN_WRITE = "BEGIN ISOLATION LEVEL READ COMMITTED"
TAKE_WRITE_LOCK = f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})"

# Compare and sort text by bytes, as SQLite does, whatever the database's default collation.
_C_COLLATED = (
    ("groups", "id"),
    ("privacy_intervals", "group_id"),
    ("admins", "principal"),
    ("viewers", "principal"),
    ("reveal_sessions", "id"),
    ("reveal_sessions", "owner"),
    ("governance_log", "ts"),
    ("governance_log", "action"),
    ("governance_log", "actor"),
)

_C_COLLATED_4 = (
    ("groups", "source"),
    ("groups", "external_id"),
    ("scim_users", "id"),
    ("scim_users", "user_name"),
    ("scim_users", "external_id"),
    ("scim_principals", "user_id"),
    ("scim_principals", "principal"),
    ("scim_members", "group_id"),
    ("scim_members", "user_id"),
    ("scim_former", "group_id"),
    ("scim_former", "principal"),
)

AFTER_VERSION = MappingProxyType(
    {
        4: tuple(
            f'ALTER TABLE {table} ALTER COLUMN {column} TYPE TEXT COLLATE "C"'
            for table, column in _C_COLLATED_4
        ),
        1: (
            *(
                f'ALTER TABLE {table} ALTER COLUMN {column} TYPE TEXT COLLATE "C"'
                for table, column in _C_COLLATED
            ),
            """CREATE FUNCTION veil_governance_log_append_only() RETURNS trigger
           LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'the governance log is append-only'; END $$""",
            """CREATE TRIGGER governance_log_no_update BEFORE UPDATE ON governance_log
           FOR EACH ROW EXECUTE FUNCTION veil_governance_log_append_only()""",
            """CREATE TRIGGER governance_log_no_delete BEFORE DELETE ON governance_log
           FOR EACH ROW EXECUTE FUNCTION veil_governance_log_append_only()""",
            # TRUNCATE skips row triggers; it gets its own.
            """CREATE TRIGGER governance_log_no_truncate BEFORE TRUNCATE ON governance_log
           FOR EACH STATEMENT EXECUTE FUNCTION veil_governance_log_append_only()""",
        ),
    }
)

# A quoted literal or identifier, a comment, a placeholder, or a percent sign.
_SQL_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|\?|%")


def to_pyformat(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s``; literal ``%`` doubled, quoted text kept."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "?":
            return "%s"
        return token.replace("%", "%%")

    return _SQL_TOKENS.sub(replace, sql)


class _Tx:
    def __init__(self, cursor: psycopg.Cursor[tuple[Any, ...]], backend: PostgresBackend) -> None:
        self.cursor = cursor
        self.backend = backend
        self.committed: list[Callable[[], None]] = []

    def _run(self, sql: str, params: Sequence[Any]) -> None:
        if params:
            self.cursor.execute(self.backend.converted(sql), tuple(params))
        else:
            self.cursor.execute(sql)  # without parameters psycopg parses no placeholders

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._run(sql, params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        self._run(sql, params)
        return self.cursor.fetchone()

    def after_commit(self, action: Callable[[], None]) -> None:
        self.committed.append(action)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._run(sql, params)
        return self.cursor.fetchall()


class PostgresBackend:
    name = "postgresql"

    def __init__(self, url: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise StorageError(f"storage.url is not a valid PostgreSQL URL: {exc}") from exc
        self.where = "PostgreSQL {}:{}/{}".format(
            params.get("host") or "localhost",
            params.get("port") or 5432,
            params.get("dbname") or params.get("user") or "",
        )
        params.setdefault("connect_timeout", max(2, math.ceil(timeout_s)))
        params.setdefault("application_name", "veil")
        conninfo = make_conninfo("", **params)
        try:
            # One direct connection first: the pool would only log why it cannot connect.
            psycopg.connect(conninfo).close()
        except psycopg.Error as exc:
            raise StorageError(f"{self.where} is unavailable: {_reason(exc)}") from exc
        self._statements: dict[str, str] = {}
        self._pool: ConnectionPool[psycopg.Connection[tuple[Any, ...]]] = ConnectionPool(
            conninfo,
            kwargs={"autocommit": True},
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            open=False,
            configure=self._configure,
            name="veil-storage",
            timeout=timeout_s,
            reconnect_timeout=RECONNECT_TIMEOUT_S,
        )
        self._unreachable = False  # set when connections fail; cleared by the next success
        try:
            self._pool.open(wait=True, timeout=max(timeout_s, 1.0))
            migrate(self, self.where, after_version=AFTER_VERSION)
        except psycopg.Error as exc:
            self._pool.close()
            raise StorageError(f"{self.where} is unavailable: {_reason(exc)}") from exc
        except BaseException:
            self._pool.close()
            raise

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        """Per-connection limits: no statement, and no idle open transaction, outlives them."""
        statement_ms = int(self.timeout_s * 1000)
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false), "
            "set_config('idle_in_transaction_session_timeout', %s, false)",
            (str(statement_ms), str(2 * statement_ms)),
        )

    def converted(self, sql: str) -> str:
        found = self._statements.get(sql)
        if found is None:
            found = to_pyformat(sql)
            if len(self._statements) < 1024:  # the SQL Storage writes is a small, fixed set
                self._statements[sql] = found
        return found

    @contextmanager
    def transaction(self, write: bool) -> Iterator[_Tx]:
        try:
            conn = self._begin(write)
        except PoolTimeout as exc:
            # A pool that could still grow but got no connection cannot reach the server; a
            # full pool is only busy.
            self._unreachable = self._pool.get_stats().get("pool_size", 0) < POOL_MAX_SIZE
            raise StorageError(f"{self.where} is unavailable: {_reason(exc)}") from exc
        except psycopg.Error as exc:
            raise StorageError(f"{self.where} is unavailable: {_reason(exc)}") from exc
        self._unreachable = False
        try:
            cursor = conn.cursor()
            tx = _Tx(cursor, self)
            yield tx
            cursor.execute("COMMIT")
        except psycopg.Error as exc:
            self._unreachable = conn.broken
            _rollback(conn)
            raise StorageError(f"{self.where} failed: {_reason(exc)}") from exc
        except BaseException:
            _rollback(conn)
            raise
        finally:
            self._pool.putconn(conn)  # the pool discards a broken connection and replaces it
        for action in tx.committed:
            action()

    def _begin(self, write: bool) -> psycopg.Connection[tuple[Any, ...]]:
        """A pooled connection inside a new transaction (holding the write lock for writes).

        A connection the server closed while it sat in the pool (a restart, a failover) fails
        here, before anything ran: it is discarded and the next one tried.
        """
        for attempt in range(POOL_MAX_SIZE + 1):
            conn = self._pool.getconn(
                min(self.timeout_s, UNREACHABLE_WAIT_S) if self._unreachable else None
            )
            try:
                conn.execute(BEGIN_WRITE if write else BEGIN_READ)
                if write:
                    conn.execute(TAKE_WRITE_LOCK)
            except psycopg.Error:
                broken = conn.broken
                self._pool.putconn(conn)
                if broken:
                    self._unreachable = True
                    if attempt < POOL_MAX_SIZE:
                        continue
                raise
            except BaseException:
                self._pool.putconn(conn)
                raise
            return conn
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self._pool.close()


def _rollback(conn: psycopg.Connection[Any]) -> None:
    if conn.broken or conn.closed:
        return
    with suppress(psycopg.Error):  # the pool resets or discards it when it comes back
        conn.execute("ROLLBACK")


def _reason(exc: psycopg.Error) -> str:
    """The first line of a psycopg error, which never contains the password."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
