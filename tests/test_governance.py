"""R10: the governance log is append-only and hash-chained; tampering is found by verify."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient

from veil import governance

from conftest import ADMIN, SECRET, auth, config_doc

A = auth(ADMIN)


def make_records(client: FlaskClient, n: int = 6) -> None:
    for i in range(n):
        r = client.put(f"/veil/v1/groups/g{i}", json={"name": f"G{i}", "members": []}, headers=A)
        assert r.status_code == 201


def verify(client: FlaskClient) -> dict[str, Any]:
    result: dict[str, Any] = client.get("/veil/v1/governance-log/verify", headers=A).get_json()
    return result


@pytest.fixture
def db(app: Flask) -> Path:
    """The SQLite file under the app (tests that tamper with it run on SQLite only)."""
    path: Path = app.extensions["veil"].storage.backend.path
    return path


def tamper(db: Path, *statements: str) -> None:
    """An attacker with file access: drop the append-only triggers, then edit."""
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER governance_log_no_update")
        conn.execute("DROP TRIGGER governance_log_no_delete")
        for statement in statements:
            conn.execute(statement)


@pytest.mark.storage
def test_chain_verifies(client: FlaskClient) -> None:
    make_records(client)
    assert verify(client) == {"ok": True, "records": 6}


def test_log_is_append_only_in_the_database(client: FlaskClient, db: Path) -> None:
    make_records(client, 2)
    with sqlite3.connect(db) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE governance_log SET actor = 'x'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM governance_log")


def test_changed_content_is_found(client: FlaskClient, db: Path) -> None:
    make_records(client)
    tamper(db, "UPDATE governance_log SET actor = 'mallory@contoso.com' WHERE seq = 3")
    result = verify(client)
    assert result["ok"] is False
    assert (result["first_bad_seq"], result["problem"]) == (3, "changed_content")


def test_deleted_record_is_found(client: FlaskClient, db: Path) -> None:
    make_records(client)
    tamper(db, "DELETE FROM governance_log WHERE seq = 4")
    result = verify(client)
    assert (result["ok"], result["first_bad_seq"], result["problem"]) == (
        False,
        5,
        "missing_record",
    )


def test_deleted_tail_record_cannot_hide_in_a_renumbered_chain(
    client: FlaskClient, db: Path
) -> None:
    make_records(client)
    tamper(
        db,
        "DELETE FROM governance_log WHERE seq = 2",
        "UPDATE governance_log SET seq = seq - 1 WHERE seq > 2",
    )
    result = verify(client)
    assert result["ok"] is False and result["first_bad_seq"] == 2


def test_deleted_newest_record_is_found(client: FlaskClient, db: Path) -> None:
    make_records(client)
    tamper(db, "DELETE FROM governance_log WHERE seq = 6")
    result = verify(client)
    assert (result["ok"], result["first_bad_seq"], result["problem"]) == (
        False,
        6,
        "missing_record",
    )


def test_chain_head_is_kept_across_appends(client: FlaskClient, db: Path) -> None:
    make_records(client, 3)
    with sqlite3.connect(db) as conn:
        head = conn.execute("SELECT seq, hash FROM governance_head").fetchone()
        last = conn.execute("SELECT seq, hash FROM governance_log ORDER BY seq DESC").fetchone()
    assert head == last


def test_reordered_records_are_found(client: FlaskClient, db: Path) -> None:
    make_records(client)
    cols = "ts, action, actor, details, prev_hash, hash"
    tamper(
        db,
        "CREATE TEMP TABLE r3 AS SELECT * FROM governance_log WHERE seq = 3",
        "CREATE TEMP TABLE r4 AS SELECT * FROM governance_log WHERE seq = 4",
        "DELETE FROM governance_log WHERE seq IN (3, 4)",
        f"INSERT INTO governance_log (seq, {cols}) SELECT 3, {cols} FROM r4",
        f"INSERT INTO governance_log (seq, {cols}) SELECT 4, {cols} FROM r3",
    )
    result = verify(client)
    assert (result["ok"], result["first_bad_seq"]) == (False, 3)
    assert result["problem"] in ("broken_link", "changed_content")


def test_verify_walks_a_pure_sequence() -> None:
    records = []
    prev = governance.GENESIS
    for seq in range(1, 4):
        record = {
            "seq": seq,
            "ts": "2024-01-01T00:00:00.000000Z",
            "action": "admin_added",
            "actor": "a",
            "details": {"principal": f"p{seq}"},
            "prev_hash": prev,
        }
        prev = governance.record_hash(record)
        record["hash"] = prev
        records.append(record)
    assert governance.verify(records).ok
    swapped = governance.verify([records[0], records[2], records[1]])
    assert (swapped.ok, swapped.first_bad_seq, swapped.problem) == (False, 3, "missing_record")
    repeated = governance.verify([records[0], records[1], records[0]])
    assert (repeated.first_bad_seq, repeated.problem) == (1, "reordered")
    broken = [records[0], {**records[1], "prev_hash": "f" * 64}, records[2]]
    assert governance.verify(broken).problem == "broken_link"


@pytest.mark.storage
def test_log_filters_and_paging(client: FlaskClient) -> None:
    make_records(client, 5)
    client.post("/veil/v1/admins", json={"principal": "carol@contoso.com"}, headers=A)
    page = client.get("/veil/v1/governance-log?limit=2", headers=A).get_json()
    assert [r["seq"] for r in page["records"]] == [1, 2] and page["next_cursor"] == "2"
    page = client.get(
        f"/veil/v1/governance-log?limit=2&cursor={page['next_cursor']}", headers=A
    ).get_json()
    assert [r["seq"] for r in page["records"]] == [3, 4]
    only = client.get("/veil/v1/governance-log?action=admin_added", headers=A).get_json()
    assert [r["details"]["principal"] for r in only["records"]] == ["carol@contoso.com"]
    by_actor = client.get(f"/veil/v1/governance-log?actor={ADMIN.upper()}", headers=A)
    assert len(by_actor.get_json()["records"]) == 6
    future = client.get("/veil/v1/governance-log?since=2999-01-01T00:00:00Z", headers=A)
    assert future.get_json()["records"] == []
    past = client.get("/veil/v1/governance-log?until=2000-01-01T00:00:00%2B00:00", headers=A)
    assert past.get_json()["records"] == []
    for bad in (
        "since=yesterday",
        "limit=0",
        "cursor=-1",
        "colour=red",
        "since=2024-01-01T00:00:00",
    ):
        r = client.get(f"/veil/v1/governance-log?{bad}", headers=A)
        assert r.status_code == 400, bad
        assert r.get_json()["field"] == bad.split("=")[0]
    assert client.get("/veil/v1/governance-log", headers=auth("bob@contoso.com")).status_code == 403


def _cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "veil.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "VEIL_TEST_JWT_SECRET": SECRET, **(env_extra or {})},
    )


def test_cli_verify_export_and_offline_check(
    client: FlaskClient, app: Flask, db: Path, tmp_path: Path
) -> None:
    make_records(client)
    cfg = tmp_path / "veil.yaml"
    cfg.write_text(yaml.safe_dump(config_doc("http://127.0.0.1:9", f"sqlite:///{db}")))
    ok = _cli("governance", "verify", "--config", str(cfg))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"ok": True, "records": 6}
    export = tmp_path / "log.jsonl"
    assert _cli("governance", "export", "--config", str(cfg), "-o", str(export)).returncode == 0
    lines = export.read_text().splitlines()
    assert len(lines) == 6
    offline = _cli("governance", "verify", "--file", str(export))
    assert offline.returncode == 0 and json.loads(offline.stdout)["ok"] is True
    # the documented procedure: sha256 of the canonical record without its hash and signature
    import hashlib

    first = json.loads(lines[0])
    assert (first["key_id"], first["signature"]) == (None, None)  # this log is unsigned
    body = {k: v for k, v in first.items() if k not in ("hash", "key_id", "signature")}
    assert (
        hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        ).hexdigest()
        == first["hash"]
    )
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join([lines[0], lines[1].replace("G1", "G9"), *lines[2:]]) + "\n")
    bad = _cli("governance", "verify", "--file", str(edited))
    assert bad.returncode == 1 and json.loads(bad.stdout)["first_bad_seq"] == 2
    tamper(db, "UPDATE governance_log SET details = '{}' WHERE seq = 5")
    broken = _cli("governance", "verify", "--config", str(cfg))
    assert broken.returncode == 1
    assert json.loads(broken.stdout)["first_bad_seq"] == 5


def test_upgrading_a_version_1_log_keeps_it_verifiable(client: FlaskClient, db: Path) -> None:
    from veil.storage import open_storage

    make_records(client, 3)
    with sqlite3.connect(db) as conn:  # back to schema version 1, as an older Veil left it
        conn.execute("DROP TABLE governance_head")
        conn.execute("ALTER TABLE groups DROP COLUMN former_members")
        # version 4 (SCIM provisioning)
        for table in ("scim_users", "scim_principals", "scim_members", "scim_former"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("DROP INDEX groups_source")
        for column in ("source", "external_id", "resource", "version", "created_ns", "deleted_ns"):
            conn.execute(f"ALTER TABLE groups DROP COLUMN {column}")
        # version 5 (coalesced refusals)
        conn.execute("DROP TABLE refusal_counts")
        # version 6 (signatures); SQLite checks the triggers on DROP COLUMN
        conn.execute("DROP TRIGGER governance_log_no_update")
        conn.execute("DROP TRIGGER governance_log_no_delete")
        conn.execute("ALTER TABLE governance_log DROP COLUMN key_id")
        conn.execute("ALTER TABLE governance_log DROP COLUMN signature")
        conn.execute("DELETE FROM schema_version WHERE version > 1")
    storage = open_storage(f"sqlite:///{db}", 5)
    try:
        assert storage.verify_log().as_dict() == {"ok": True, "records": 3}
        storage.record("admin_added", "x", {"principal": "y"})
        assert storage.verify_log().as_dict() == {"ok": True, "records": 4}
    finally:
        storage.close()


RECORD_FIELDS = ("seq", "ts", "action", "actor", "details", "prev_hash", "hash")


@pytest.mark.parametrize("field", RECORD_FIELDS)
def test_a_record_without_a_field_is_a_malformed_verdict_naming_it(field: str) -> None:
    """An exported record that lacks a field is a verdict naming the field, never a
    KeyError (``veil governance verify --file`` printed a traceback for ``prev_hash``)."""
    record: dict[str, Any] = {
        "seq": 1,
        "ts": "2026-01-01T00:00:00.000000Z",
        "action": "admin_added",
        "actor": "a",
        "details": {},
        "prev_hash": "0" * 64,
    }
    record["hash"] = governance.record_hash(record)
    assert governance.verify([record]).ok
    del record[field]
    verdict = governance.verify([record])
    assert (verdict.ok, verdict.first_bad_seq, verdict.problem) == (False, 1, "malformed_record")
    assert verdict.reason is not None and repr(field) in verdict.reason
