"""Versioned schema migrations, written once in SQL that both SQLite and PostgreSQL accept.

``migrate`` is the one runner both backends use. A backend adds only what its dialect needs
beyond the shared SQL (PostgreSQL's trigger function, SQLite's trigger syntax) through
``after_version`` (statements that belong to one version, run once with it) and
``every_start`` (idempotent statements re-asserted at every start).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from veil import principal as principals
from veil.errors import StorageError

if TYPE_CHECKING:
    from veil.storage.backend import Backend, Tx

# A step is SQL, or a function run in the migration's transaction (for what SQL cannot do).
Step = str | Callable[["Tx"], None]


def _principal_key(value: str) -> str:
    """The stored principal as docs/rules.md ("Principal") compares it; one that is not a
    valid principal (whitespace, control characters) is left as it is: no caller can ever
    present it."""
    return principals.key(value) or value


def normalize_principals(tx: Tx) -> None:
    """Re-key principals stored by earlier versions (``strip().lower()``) with NFC and case
    folding, so a member imported as NFC ``josé`` matches the store's NFD form. The
    governance log is never rewritten (it is hash-chained): it keeps the names as written."""
    for table, stamp, by in (
        ("admins", "added_ns", "added_by"),
        ("viewers", "granted_ns", "granted_by"),
    ):
        kept: dict[str, tuple[Any, Any]] = {}
        for principal, ts, who in tx.all(
            f"SELECT principal, {stamp}, {by} FROM {table} ORDER BY {stamp}, principal"
        ):
            kept.setdefault(_principal_key(principal), (ts, who))  # two spellings: the earliest
        tx.execute(f"DELETE FROM {table}")
        for principal, (ts, who) in kept.items():
            tx.execute(
                f"INSERT INTO {table} (principal, {stamp}, {by}) VALUES (?, ?, ?)",
                (principal, ts, who),
            )
    for gid, members, former in tx.all("SELECT id, members, former_members FROM groups"):
        keyed = sorted({_principal_key(m) for m in json.loads(members)})
        left: dict[str, int] = {}
        for member, ts in json.loads(former).items():
            left[_principal_key(member)] = max(ts, left.get(_principal_key(member), ts))
        tx.execute(
            "UPDATE groups SET members = ?, former_members = ? WHERE id = ?",
            (json.dumps(keyed), json.dumps(left, sort_keys=True), gid),
        )
    # SCIM (version 4): a user's principals, and when a principal left a group
    principals_of: dict[tuple[str, str], None] = {}
    for user, principal in tx.all("SELECT user_id, principal FROM scim_principals"):
        principals_of[(user, _principal_key(principal))] = None
    tx.execute("DELETE FROM scim_principals")
    for user, principal in principals_of:
        tx.execute(
            "INSERT INTO scim_principals (user_id, principal) VALUES (?, ?)", (user, principal)
        )
    left_at: dict[tuple[str, str], int] = {}
    for gid, principal, left_ns in tx.all("SELECT group_id, principal, left_ns FROM scim_former"):
        where = (gid, _principal_key(principal))
        left_at[where] = max(int(left_ns), left_at.get(where, int(left_ns)))
    tx.execute("DELETE FROM scim_former")
    for (gid, principal), at in left_at.items():
        tx.execute(
            "INSERT INTO scim_former (group_id, principal, left_ns) VALUES (?, ?, ?)",
            (gid, principal, at),
        )
    for sid, owner in tx.all("SELECT id, owner FROM reveal_sessions"):
        if _principal_key(owner) != owner:
            tx.execute(
                "UPDATE reveal_sessions SET owner = ? WHERE id = ?", (_principal_key(owner), sid)
            )


MIGRATIONS: tuple[tuple[Step, ...], ...] = (
    # 1: management state, reveal sessions and the governance log
    (
        """CREATE TABLE state_version (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version BIGINT NOT NULL)""",
        "INSERT INTO state_version (id, version) VALUES (1, 1)",
        """CREATE TABLE groups (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            members TEXT NOT NULL,
            updated_ns BIGINT NOT NULL,
            updated_by TEXT NOT NULL)""",
        """CREATE TABLE privacy_intervals (
            group_id TEXT NOT NULL,
            start_ns BIGINT NOT NULL,
            end_ns BIGINT,
            started_by TEXT NOT NULL,
            ended_by TEXT,
            PRIMARY KEY (group_id, start_ns))""",
        """CREATE TABLE admins (
            principal TEXT PRIMARY KEY,
            added_ns BIGINT NOT NULL,
            added_by TEXT NOT NULL)""",
        """CREATE TABLE viewers (
            principal TEXT PRIMARY KEY,
            granted_ns BIGINT NOT NULL,
            granted_by TEXT NOT NULL)""",
        """CREATE TABLE reveal_sessions (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            justification TEXT,
            created_ns BIGINT NOT NULL,
            expires_ns BIGINT NOT NULL,
            ended_ns BIGINT,
            ended_reason TEXT)""",
        "CREATE INDEX reveal_sessions_owner ON reveal_sessions (owner)",
        """CREATE TABLE governance_log (
            seq BIGINT PRIMARY KEY,
            ts TEXT NOT NULL,
            action TEXT NOT NULL,
            actor TEXT NOT NULL,
            details TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE)""",
        "CREATE INDEX governance_log_action ON governance_log (action)",
        "CREATE INDEX governance_log_actor ON governance_log (actor)",
    ),
    # 2: the chain head, updated with every append, so a deleted newest record is found
    (
        """CREATE TABLE governance_head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq BIGINT NOT NULL,
            hash TEXT NOT NULL)""",
        "INSERT INTO governance_head (id, seq, hash) VALUES (1, 0, '" + "0" * 64 + "')",
        """UPDATE governance_head SET
            seq = (SELECT MAX(seq) FROM governance_log),
            hash = (SELECT hash FROM governance_log ORDER BY seq DESC LIMIT 1)
            WHERE EXISTS (SELECT 1 FROM governance_log)""",
    ),
    # 3: members removed from a group, with when: their activities while they were members
    # and the group was private stay private ({"upn": removed_ns})
    ("ALTER TABLE groups ADD COLUMN former_members TEXT NOT NULL DEFAULT '{}'",),
    # 4: SCIM provisioning: where a group came from (api | scim), the users an identity
    # provider pushes, their principals, group membership by user, and when a principal left
    # a SCIM group (scim_former; groups.members and former_members stay empty for SCIM groups,
    # whose principals are read from these tables); a SCIM group deleted while it is or was
    # private stays as a tombstone (deleted_ns) so R1 keeps its past
    (
        "ALTER TABLE groups ADD COLUMN source TEXT NOT NULL DEFAULT 'api'",
        "ALTER TABLE groups ADD COLUMN external_id TEXT",
        "ALTER TABLE groups ADD COLUMN resource TEXT",
        "ALTER TABLE groups ADD COLUMN version BIGINT NOT NULL DEFAULT 1",
        "ALTER TABLE groups ADD COLUMN created_ns BIGINT",
        "ALTER TABLE groups ADD COLUMN deleted_ns BIGINT",
        """CREATE TABLE scim_users (
            id TEXT PRIMARY KEY,
            user_name TEXT NOT NULL UNIQUE,
            display_name TEXT,
            external_id TEXT,
            active INTEGER NOT NULL,
            resource TEXT NOT NULL,
            version BIGINT NOT NULL,
            created_ns BIGINT NOT NULL,
            modified_ns BIGINT NOT NULL)""",
        "CREATE INDEX scim_users_external_id ON scim_users (external_id)",
        """CREATE TABLE scim_principals (
            user_id TEXT NOT NULL,
            principal TEXT NOT NULL,
            PRIMARY KEY (user_id, principal))""",
        "CREATE INDEX scim_principals_principal ON scim_principals (principal)",
        """CREATE TABLE scim_members (
            group_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            display TEXT,
            PRIMARY KEY (group_id, user_id))""",
        "CREATE INDEX scim_members_user ON scim_members (user_id)",
        """CREATE TABLE scim_former (
            group_id TEXT NOT NULL,
            principal TEXT NOT NULL,
            left_ns BIGINT NOT NULL,
            PRIMARY KEY (group_id, principal))""",
        "CREATE INDEX groups_source ON groups (source)",
    ),
    # 5: refused attempts counted per principal (R12: one record per window, with the count);
    # stored principals re-keyed by docs/rules.md, "Principal" (NFC + case folding)
    (
        """CREATE TABLE refusal_counts (
            actor TEXT PRIMARY KEY,
            last_record_ns BIGINT NOT NULL,
            pending BIGINT NOT NULL,
            by_action TEXT NOT NULL)""",
        normalize_principals,
    ),
    # 6: each record's Ed25519 signature of the chain head it produces, and the key's id
    # (null for records appended without a signing key)
    (
        "ALTER TABLE governance_log ADD COLUMN key_id TEXT",
        "ALTER TABLE governance_log ADD COLUMN signature TEXT",
    ),
)


NOTHING: Mapping[int, Sequence[str]] = MappingProxyType({})


def migrate(
    backend: Backend,
    where: str,
    *,
    after_version: Mapping[int, Sequence[str]] = NOTHING,
    every_start: Sequence[str] = (),
) -> None:
    """Bring the schema to the latest version in one write transaction.

    Write transactions are serialized by the backend, so of several processes starting
    together exactly one applies a version and the others find it applied.
    """
    with backend.transaction(write=True) as tx:
        tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = tx.one("SELECT MAX(version) FROM schema_version")
        current = int(row[0]) if row and row[0] is not None else 0
        if current > len(MIGRATIONS):
            raise StorageError(
                f"{where} has schema version {current}, newer than this Veil "
                f"({len(MIGRATIONS)}); upgrade Veil"
            )
        for version, statements in enumerate(MIGRATIONS, start=1):
            if version <= current:
                continue
            for statement in (*statements, *after_version.get(version, ())):
                if callable(statement):
                    statement(tx)
                else:
                    tx.execute(statement)
            tx.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        for statement in every_start:
            tx.execute(statement)
