"""Versioned schema migrations, written once in SQL that both SQLite and PostgreSQL accept."""

from __future__ import annotations

MIGRATIONS: tuple[tuple[str, ...], ...] = (
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
)
