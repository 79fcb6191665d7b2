"""Audited reveal: R4-R9, through the HTTP API with a real loopback store and SQLite."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from veil.app import create_app

from conftest import (
    ADMIN,
    LoopbackStore,
    activity,
    auth,
    ids,
    iso,
    make_config,
    open_session,
    permit,
)

A = auth(ADMIN)
ANN = "ann@contoso.com"
CAROL = "carol@contoso.com"
SEC = 1_000_000_000


@pytest.fixture
def private_rows(client: FlaskClient, store: LoopbackStore) -> list[str]:
    """finance (ann) is private; the store answers one private and one public row."""
    client.put("/veil/v1/groups/finance", json={"name": "Finance", "members": [ANN]}, headers=A)
    client.post("/veil/v1/privacy-groups", json={"group": "finance"}, headers=A)
    later = iso(time.time_ns() + 60 * SEC)
    store.state.rows = [activity(1, ANN, later), activity(2, "bob@contoso.com", later)]
    return ["act-1"]


def reveal(client: FlaskClient, session_id: str, who: str = ADMIN, query: str = "") -> TestResponse:
    return client.get(
        f"/api/activities{query}", headers={**auth(who), "Veil-Reveal-Session": session_id}
    )


def log(client: FlaskClient, action: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = client.get(
        f"/veil/v1/governance-log?action={action}", headers=A
    ).get_json()["records"]
    return records


# ---- R6: only admins ----------------------------------------------------------------------


@pytest.mark.storage
def test_permission_only_for_admins(client: FlaskClient) -> None:
    r = client.post("/veil/v1/private-viewers", json={"principal": "bob@contoso.com"}, headers=A)
    assert r.status_code == 422
    assert "not an admin" in r.get_json()["detail"]
    assert client.get("/veil/v1/private-viewers", headers=A).get_json()["private_viewers"] == []
    permit(client, CAROL)
    viewers = client.get("/veil/v1/private-viewers", headers=A).get_json()["private_viewers"]
    assert [v["principal"] for v in viewers] == [CAROL]
    assert log(client, "permission_granted")[-1]["details"] == {"principal": CAROL}


# ---- R5: consent --------------------------------------------------------------------------


def test_session_needs_justification_by_default(client: FlaskClient) -> None:
    permit(client)
    r = client.post("/veil/v1/reveal-sessions", json={"acknowledge_audit": True}, headers=A)
    assert r.status_code == 400
    assert r.get_json()["field"] == "justification"
    r = client.post(
        "/veil/v1/reveal-sessions",
        json={"acknowledge_audit": True, "justification": "   "},
        headers=A,
    )
    assert r.status_code == 400
    assert log(client, "reveal_session_opened") == []


def test_justification_optional_when_configured(store: LoopbackStore, storage_url: str) -> None:
    app = create_app(make_config(store.url, storage_url, reveal={"require_justification": False}))
    client = app.test_client()
    permit(client)
    r = client.post("/veil/v1/reveal-sessions", json={"acknowledge_audit": True}, headers=A)
    assert r.status_code == 201


@pytest.mark.storage
def test_session_refused_without_permission_and_logged(client: FlaskClient) -> None:
    r = client.post(
        "/veil/v1/reveal-sessions",
        json={"acknowledge_audit": True, "justification": "curious"},
        headers=A,
    )
    assert r.status_code == 403
    assert "view-private permission" in r.get_json()["detail"]
    refused = log(client, "reveal_session_refused")
    assert refused[-1]["actor"] == ADMIN
    assert refused[-1]["details"]["justification"] == "curious"


@pytest.mark.storage
def test_session_shape_and_expiry(client: FlaskClient) -> None:
    permit(client)
    before = time.time()
    r = client.post(
        "/veil/v1/reveal-sessions",
        json={"acknowledge_audit": True, "justification": "x"},
        headers=A,
    )
    body = r.get_json()
    from datetime import datetime

    expires = datetime.fromisoformat(body["expires_at"]).timestamp()
    assert before + 899 <= expires <= time.time() + 901
    opened = log(client, "reveal_session_opened")[-1]
    assert opened["details"]["session"] == body["id"]
    assert opened["details"]["justification"] == "x"


# ---- R3, R4, R7: reveal -------------------------------------------------------------------


@pytest.mark.storage
def test_reveal_shows_private_rows_after_audit(
    client: FlaskClient, private_rows: list[str], store: LoopbackStore
) -> None:
    permit(client)
    sid = open_session(client)
    r = reveal(client, sid, query="?user=ann")
    assert r.status_code == 200
    assert ids(r) == ["act-1", "act-2"]
    assert r.headers["Cache-Control"] == "no-store"
    record = log(client, "activities_revealed")[-1]
    assert record["actor"] == ADMIN
    row_text = r.get_data(as_text=True)
    start = row_text.index('{"id": "act-1"')
    first_row = row_text[start : row_text.index("}", start) + 1]
    assert record["details"] == {
        "session": sid,
        "justification": "case INC-42",
        "path": "/api/activities",
        "query": "user=ann",
        "count": 1,
        "ids": ["act-1"],
        "sha256": [hashlib.sha256(first_row.encode()).hexdigest()],
    }
    # without the header the same admin sees the default view (R3)
    assert ids(client.get("/api/activities", headers=A)) == ["act-2"]


@pytest.mark.storage
def test_no_record_when_nothing_private_is_shown(client: FlaskClient, store: LoopbackStore) -> None:
    permit(client)
    sid = open_session(client)
    store.state.rows = [activity(2, "bob@contoso.com", iso(time.time_ns()))]
    assert ids(reveal(client, sid)) == ["act-2"]
    assert log(client, "activities_revealed") == []


@pytest.mark.parametrize("case", ["made-up", "foreign", "ended", "no-permission-any-more"])
@pytest.mark.storage
def test_invalid_sessions_are_403_without_rows(
    client: FlaskClient, private_rows: list[str], case: str
) -> None:
    permit(client)
    permit(client, CAROL)
    sid = open_session(client)
    who = ADMIN
    if case == "made-up":
        sid = "rs_made_up"
    elif case == "foreign":
        who = CAROL
    elif case == "ended":
        assert client.delete(f"/veil/v1/reveal-sessions/{sid}", headers=A).status_code == 204
    else:
        assert client.delete(f"/veil/v1/private-viewers/{ADMIN}", headers=A).status_code == 204
    r = reveal(client, sid, who=who)
    assert r.status_code == 403
    problem = r.get_json()
    assert problem["code"] == "reveal_refused"
    assert problem["reasons"]
    assert b"act-1" not in r.data and b"act-2" not in r.data
    assert log(client, "activities_revealed") == []


@pytest.mark.storage
def test_expired_session_is_refused(store: LoopbackStore, storage_url: str) -> None:
    app = create_app(make_config(store.url, storage_url, reveal={"session_ttl_s": 1}))
    client = app.test_client()
    permit(client)
    client.put("/veil/v1/groups/finance", json={"name": "F", "members": [ANN]}, headers=A)
    client.post("/veil/v1/privacy-groups", json={"group": "finance"}, headers=A)
    store.state.rows = [activity(1, ANN, iso(time.time_ns() + 60 * SEC))]
    sid = open_session(client)
    assert ids(reveal(client, sid)) == ["act-1"]
    time.sleep(1.1)
    r = reveal(client, sid)
    assert r.status_code == 403
    assert "expired" in r.get_json()["detail"]


@pytest.mark.storage
def test_removing_the_admin_role_ends_sessions_and_permission(
    client: FlaskClient, private_rows: list[str]
) -> None:
    permit(client, CAROL)
    sid = open_session(client, CAROL)
    assert ids(reveal(client, sid, who=CAROL)) == ["act-1", "act-2"]
    assert client.delete(f"/veil/v1/admins/{CAROL}", headers=A).status_code == 204
    assert reveal(client, sid, who=CAROL).status_code == 403
    assert client.get("/veil/v1/private-viewers", headers=A).get_json()["private_viewers"] == []
    ended = log(client, "reveal_session_ended")[-1]
    assert ended["details"] == {"session": sid, "owner": CAROL, "reason": "admin role removed"}
    # made admin again, she must be granted the permission again and open a new session
    client.post("/veil/v1/admins", json={"principal": CAROL}, headers=A)
    assert reveal(client, sid, who=CAROL).status_code == 403


@pytest.mark.storage
def test_revoking_permission_ends_sessions_at_once(
    client: FlaskClient, private_rows: list[str]
) -> None:
    permit(client)
    sid = open_session(client)
    client.delete(f"/veil/v1/private-viewers/{ADMIN}", headers=A)
    permit(client)  # granted again: the old session stays ended
    r = reveal(client, sid)
    assert r.status_code == 403
    assert "ended" in r.get_json()["detail"]


@pytest.mark.storage
def test_only_owner_or_admin_ends_a_session(client: FlaskClient) -> None:
    permit(client)
    sid = open_session(client)
    assert (
        client.delete(
            f"/veil/v1/reveal-sessions/{sid}", headers=auth("bob@contoso.com")
        ).status_code
        == 404
    )
    assert client.delete(f"/veil/v1/reveal-sessions/{sid}", headers=A).status_code == 204
    assert client.delete(f"/veil/v1/reveal-sessions/{sid}", headers=A).status_code == 409


# ---- R7: audit before reveal, or no reveal ------------------------------------------------


def _sqlite_file(app: Flask) -> Path:
    path: Path = app.extensions["veil"].storage.backend.path
    return path


def test_reveal_is_503_when_the_record_cannot_be_written(
    app: Flask, client: FlaskClient, private_rows: list[str]
) -> None:
    """Breaks the SQLite file directly; tests/test_postgres.py covers PostgreSQL."""
    permit(client)
    sid = open_session(client)
    with sqlite3.connect(_sqlite_file(app)) as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON governance_log "
            "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
    r = reveal(client, sid)
    assert r.status_code == 503
    assert r.get_json()["code"] == "governance_write_failed"
    assert b"act-1" not in r.data and b"act-2" not in r.data
    with sqlite3.connect(_sqlite_file(app)) as db:
        db.execute("DROP TRIGGER refuse")
    assert ids(reveal(client, sid)) == ["act-1", "act-2"]
    assert len(log(client, "activities_revealed")) == 1


@pytest.fixture
def quick_timeout_client(
    store: LoopbackStore, tmp_path: Path
) -> Iterator[tuple[FlaskClient, Path]]:
    db = tmp_path / "veil.db"
    app = create_app(make_config(store.url, f"sqlite:///{db}", storage={"timeout_s": 0.3}))
    yield app.test_client(), db


def test_reveal_is_503_when_the_log_write_times_out(
    quick_timeout_client: tuple[FlaskClient, Path], store: LoopbackStore
) -> None:
    client, db = quick_timeout_client
    permit(client)
    client.put("/veil/v1/groups/finance", json={"name": "F", "members": [ANN]}, headers=A)
    client.post("/veil/v1/privacy-groups", json={"group": "finance"}, headers=A)
    store.state.rows = [activity(1, ANN, iso(time.time_ns() + 60 * SEC))]
    sid = open_session(client)
    locked = threading.Event()
    release = threading.Event()

    def hold_write_lock() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(10)
        conn.execute("ROLLBACK")
        conn.close()

    holder = threading.Thread(target=hold_write_lock)
    holder.start()
    try:
        assert locked.wait(5)
        r = reveal(client, sid)
        assert r.status_code == 503
        assert b"act-1" not in r.data
        # the default view keeps working while the log is locked
        assert ids(client.get("/api/activities", headers=A)) == []
    finally:
        release.set()
        holder.join()
    assert ids(reveal(client, sid)) == ["act-1"]


# ---- R8: everything privacy-related is audited ---------------------------------------------


@pytest.mark.storage
def test_every_privacy_event_is_recorded(client: FlaskClient, private_rows: list[str]) -> None:
    client.post("/veil/v1/admins", json={"principal": CAROL}, headers=A)
    client.post("/veil/v1/private-viewers", json={"principal": CAROL}, headers=A)
    sid = open_session(client, CAROL)
    reveal(client, sid, who=CAROL)
    client.delete(f"/veil/v1/reveal-sessions/{sid}", headers=auth(CAROL))
    client.post(
        "/veil/v1/reveal-sessions",
        json={"acknowledge_audit": True, "justification": "x"},
        headers=auth("bob@contoso.com"),
    )
    client.delete(f"/veil/v1/private-viewers/{CAROL}", headers=A)
    client.delete(f"/veil/v1/admins/{CAROL}", headers=A)
    client.delete("/veil/v1/privacy-groups/finance", headers=A)
    records = client.get("/veil/v1/governance-log?limit=1000", headers=A).get_json()["records"]
    actions = [r["action"] for r in records]
    assert actions == [
        "group_imported",
        "privacy_group_added",
        "admin_added",
        "permission_granted",
        "reveal_session_opened",
        "activities_revealed",
        "reveal_session_ended",
        "reveal_session_refused",
        "permission_revoked",
        "admin_removed",
        "privacy_group_removed",
    ]


# ---- R9: no side channel ------------------------------------------------------------------


@pytest.mark.storage
def test_refusals_do_not_count_hidden_rows(
    client: FlaskClient, private_rows: list[str], store: LoopbackStore
) -> None:
    """A refusal is the same whether the answer held private rows or not."""
    with_private = reveal(client, "rs_made_up", who="bob@contoso.com")
    store.state.rows = [activity(2, "bob@contoso.com", iso(time.time_ns()))]
    without = reveal(client, "rs_made_up", who="bob@contoso.com")
    assert with_private.status_code == without.status_code == 403
    assert with_private.data == without.data
    assert dict(with_private.headers) == dict(without.headers)
    assert b"act-" not in with_private.data
    metrics = client.get("/metrics").data.decode()
    assert ANN not in metrics and "bob@contoso.com" not in metrics
