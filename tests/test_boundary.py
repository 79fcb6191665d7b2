"""The privacy boundary on the answer path (issue 9): what the store wrote around the rows,
error answers, layout, escaped repeated keys, unrepresentable rows, deep JSON, a trickling
store, and reveals racing a revoke or a state change (R2, R9, R11, R12).

Every test runs against a real HTTP store on loopback and a real storage file or server.
"""

from __future__ import annotations

import json
import socketserver
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from veil.app import create_app
from veil.config import from_dict
from veil.errors import ConfigError, StorageError

from conftest import ADMIN, SECRET, LoopbackStore, activity, auth, config_doc, ids, iso, make_config
from netutil import veil_serve

A = auth(ADMIN)
USER = "bob@contoso.com"
HR1 = "hr1@contoso.com"
CAROL = "carol@contoso.com"  # an admin of the registry, granted the permission by ADMIN
SEC = 1_000_000_000


def later() -> str:
    return iso(time.time_ns() + 60 * SEC)


def make_private(client: FlaskClient, group: str, members: list[str]) -> None:
    r = client.put(f"/veil/v1/groups/{group}", json={"name": group, "members": members}, headers=A)
    assert r.status_code in (200, 201), r.get_json()
    r = client.post("/veil/v1/privacy-groups", json={"group": group}, headers=A)
    assert r.status_code == 201, r.get_json()


def open_session(client: FlaskClient, who: str) -> str:
    """A registry admin ``who``, granted the permission by ADMIN (never by themselves)."""
    assert client.post("/veil/v1/admins", json={"principal": who}, headers=A).status_code == 201
    assert (
        client.post("/veil/v1/private-viewers", json={"principal": who}, headers=A).status_code
        == 201
    )
    r = client.post(
        "/veil/v1/reveal-sessions",
        json={"acknowledge_audit": True, "justification": "case INC-9"},
        headers=auth(who),
    )
    assert r.status_code == 201, r.get_json()
    session_id: str = r.get_json()["id"]
    return session_id


def records(client: FlaskClient) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.get(
        "/veil/v1/governance-log?limit=1000", headers=A
    ).get_json()["records"]
    return found


def actions(client: FlaskClient, action: str) -> list[dict[str, Any]]:
    return [r for r in records(client) if r["action"] == action]


@pytest.fixture
def build(storage_url: str) -> Iterator[Any]:
    """Make apps on the test's storage; each is closed at the end in this thread (a regorus
    engine must be dropped by the thread that made it, never by a collector elsewhere)."""
    made: list[Flask] = []

    def make(store_url: str, **sections: Any) -> Flask:
        made.append(create_app(make_config(store_url, storage_url, **sections)))
        return made[-1]

    yield make
    for application in made:
        application.extensions["veil"].engine.close()
        application.extensions["veil"].storage.close()


# ---- item 1: only the rows array and upstream.keep come back --------------------------------


def test_only_the_rows_and_kept_members_come_back(store: LoopbackStore, build: Any) -> None:
    """R9: totals, facets, sibling arrays and debug members may describe private rows."""
    client = build(store.url).test_client()
    make_private(client, "hr", [HR1])
    secret, shown = activity(1, HR1, later()), activity(2, USER, later())
    store.state.body = json.dumps(
        {
            "total": 2,
            "count": 39,
            "data": [secret, shown],
            "next": "page-2",
            "facets": {"user": [HR1, USER]},
            "sibling": [secret],
            "debug": {"last": [secret]},
        }
    ).encode()
    r = client.get("/api/activities", headers=auth(USER))
    assert r.status_code == 200
    assert r.get_json() == {"data": [shown]}  # secure default: nothing kept
    assert b"hr1" not in r.data

    kept = build(store.url, upstream={"keep": ["/next"]}).test_client()
    r = kept.get("/api/activities", headers=auth(USER))
    assert r.get_json() == {"data": [shown], "next": "page-2"}


def test_keep_with_a_nested_rows_pointer(store: LoopbackStore, build: Any) -> None:
    client = build(
        store.url, upstream={"rows": "/result/items", "keep": ["/result/next", "/request_id"]}
    ).test_client()
    make_private(client, "hr", [HR1])
    secret, shown = activity(1, HR1, later()), activity(2, USER, later())
    store.state.body = json.dumps(
        {
            "request_id": "r-1",
            "result": {
                "total": 2,
                "items": [secret, shown],
                "next": None,
                "actors": [HR1],
                "hidden": {"items": [secret]},
            },
            "stats": {"count": 2},
        }
    ).encode()
    r = client.get("/api/activities", headers=auth(USER))
    assert r.get_json() == {"request_id": "r-1", "result": {"items": [shown], "next": None}}


def test_a_top_level_rows_array_comes_back_alone(store: LoopbackStore, build: Any) -> None:
    client = build(store.url, upstream={"rows": ""}).test_client()
    make_private(client, "hr", [HR1])
    shown, also = activity(2, USER, later()), activity(3, USER, later())
    store.state.body = json.dumps([shown, activity(1, HR1, later()), also], indent=1).encode()
    hidden = client.get("/api/activities", headers=auth(USER))
    assert hidden.get_json() == [shown, also]
    store.state.body = json.dumps([shown, also], indent=1).encode()
    plain = client.get("/api/activities", headers=auth(USER))
    assert hidden.data == plain.data  # one layout, whether or not a row was removed
    kept = [json.dumps(row, indent=1).replace("\n", "\n ") for row in (shown, also)]
    assert plain.data == ("[" + ",".join(kept) + "]").encode()


@pytest.mark.parametrize(
    "rows,keep",
    [
        ("/data", ["/data"]),
        ("/data", ["/data/0"]),
        ("/result/items", ["/result"]),
        ("", ["/next"]),
        ("/data", ["/meta", "/meta/next"]),
    ],
)
def test_keep_never_overlaps_the_rows(tmp_path: Path, rows: str, keep: list[str]) -> None:
    doc = config_doc(
        "http://127.0.0.1:9",
        f"sqlite:///{tmp_path / 'v.db'}",
        upstream={"rows": rows, "keep": keep},
    )
    with pytest.raises(ConfigError, match=r"upstream\.keep"):
        from_dict(doc, env={"VEIL_TEST_JWT_SECRET": SECRET})


def test_keep_defaults_to_nothing_and_refuses_a_non_pointer(tmp_path: Path) -> None:
    doc = config_doc("http://127.0.0.1:9", f"sqlite:///{tmp_path / 'v.db'}")
    assert from_dict(doc, env={"VEIL_TEST_JWT_SECRET": SECRET}).upstream.keep == ()
    doc["upstream"]["keep"] = ["next"]
    with pytest.raises(ConfigError, match=r"upstream\.keep\.0"):
        from_dict(doc, env={"VEIL_TEST_JWT_SECRET": SECRET})


def test_the_demo_keeps_the_cursor(tmp_path: Path) -> None:
    from veil.demo.runner import config_document

    doc = config_document("http://127.0.0.1:9", "127.0.0.1", 8080, tmp_path, tmp_path / "d.db")
    assert from_dict(
        doc, env={"VEIL_DEMO_JWT_SECRET": "x" * 40, "VEIL_JWT_SECRET": "x" * 40}
    ).upstream.keep == ("/next",)


# ---- item 2: a store answer other than 2xx is never passed on ------------------------------


# Veil never reads the body of an answer other than 2xx: each status and each kind of body is
# tried once (a status x body grid would test the same line 35 times).
@pytest.mark.parametrize(
    "status,body",
    [
        (301, '{{"error": "bad since parameter", "user": "{hr}"}}'),  # well-formed, no rows array
        (302, '{{"partial": [{row}]}}'),
        (400, '{{"debug": {{"last_rows": [{row}]}}}}'),
        (404, '{{"data": [{row}]}}'),  # even the rows array itself
        (429, "<html>{row}</html>"),
        (500, '{{"data": [{row}], "data": []}}'),  # unreadable: a repeated member
        (503, '{{"data": [{row}'),  # unreadable: truncated
    ],
    ids=[
        "301-error-member",
        "302-partial",
        "400-debug",
        "404-rows",
        "429-html",
        "500-duplicate-member",
        "503-truncated",
    ],
)
def test_store_error_answers_are_never_passed_on(
    client: FlaskClient, store: LoopbackStore, status: int, body: str
) -> None:
    make_private(client, "hr", [HR1])
    store.state.status = status
    store.state.body = body.format(row=json.dumps(activity(1, HR1, later())), hr=HR1).encode()
    r = client.get("/api/activities", headers=auth(USER))
    assert r.status_code == 502
    assert r.mimetype == "application/problem+json"
    problem = r.get_json()
    assert problem["code"] == "upstream_status"
    assert problem["store_status"] == status
    assert str(status) in problem["detail"]
    assert b"hr1" not in r.data and b"act-1" not in r.data
    assert set(problem) == {"type", "title", "status", "detail", "code", "store_status"}


@pytest.mark.storage
def test_store_error_answer_to_a_reveal_reveals_and_records_nothing(
    client: FlaskClient, store: LoopbackStore
) -> None:
    make_private(client, "hr", [HR1])
    session = open_session(client, CAROL)
    store.state.status = 500
    store.state.body = json.dumps({"debug": {"last_rows": [activity(1, HR1, later())]}}).encode()
    r = client.get("/api/activities", headers={**auth(CAROL), "Veil-Reveal-Session": session})
    assert r.status_code == 502
    assert r.get_json()["store_status"] == 500
    assert b"hr1" not in r.data
    assert actions(client, "activities_revealed") == []


def test_store_error_status_is_documented(client: FlaskClient) -> None:
    document = client.get("/veil/v1/openapi.json", headers=A).get_json()
    answers = document["paths"]["/api/activities"]["get"]["responses"]
    assert "store_status" in answers["502"]["description"]
    assert "store_status" in document["components"]["schemas"]["Problem"]["properties"]


# ---- item 4: repeated keys are compared after unescaping, per row -------------------------


def test_an_escaped_repeat_under_a_nested_field_pointer(store: LoopbackStore, build: Any) -> None:
    fields = {"id": "/id", "actor": "/who/upn", "actor_type": "/who/kind", "timestamp": "/at"}
    client = build(store.url, upstream={"fields": fields}).test_client()
    make_private(client, "hr", [HR1])
    ts = later()
    rows = [
        f'{{"id":"act-1","who":{{"upn":"{HR1}","\\u0075pn":"{USER}","kind":"user"}},"at":"{ts}"}}',
        f'{{"id":"act-2","who":{{"upn":"{USER}","kind":"user"}},"at":"{ts}",'
        '"extra":{"x":1,"\\u0078":2}}',  # a repeat Veil does not read: harmless
    ]
    store.state.body = ('{"data": [' + ", ".join(rows) + "]}").encode()
    assert ids(client.get("/api/activities", headers=auth(USER))) == ["act-2"]


def test_a_policy_reading_raw_rows_makes_any_repeat_private(
    store: LoopbackStore, build: Any, tmp_path: Path
) -> None:
    from conftest import POLICIES

    policies = tmp_path / "policies"
    for source in POLICIES.rglob("*.rego"):
        if not source.name.endswith("_test.rego"):
            target = policies / source.relative_to(POLICIES)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source.read_text("utf-8"))
    (policies / "veil" / "privacy" / "legal.rego").write_text(
        "package veil.privacy\n\nimport rego.v1\n\n"
        'private_rows contains i if input.rows[i].raw.department == "legal"\n'
    )
    app = build(store.url, policy={"dir": str(policies)})
    client = app.test_client()
    ts = later()
    rows = [
        f'{{"id":"act-1","user":"{USER}","actorType":"user","timestamp":"{ts}",'
        '"department":"legal","d\\u0065partment":"sales"}',
        f'{{"id":"act-2","user":"{USER}","actorType":"user","timestamp":"{ts}",'
        '"department":"sales"}',
        f'{{"id":"act-3","user":"{USER}","actorType":"user","timestamp":"{ts}",'
        '"department":"legal"}',
    ]
    store.state.body = ('{"data": [' + ", ".join(rows) + "]}").encode()
    assert ids(client.get("/api/activities", headers=auth(USER))) == ["act-2"]


# ---- item 10 (store side): rows Veil cannot represent, JSON nested too deep ----------------


def test_rows_veil_cannot_represent_are_private_and_the_rest_is_served(
    client: FlaskClient, store: LoopbackStore
) -> None:
    ts = later()
    rows = [
        json.dumps(activity(1, USER, ts)),
        json.dumps({**activity(2, USER, ts), "id": 2**64 + 5}),
        json.dumps({**activity(3, USER, ts), "id": -(2**63) - 1}),
        json.dumps({**activity(4, USER, ts), "id": "act-4\ud800"}),
        json.dumps({**activity(5, USER, ts), "note": {"deep": ["\udfff"]}}),
        json.dumps({**activity(6, USER, ts), "user": "bob\ud83d@contoso.com"}),
        json.dumps({**activity(7, USER, ts), "score": float("nan")}),
        json.dumps(activity(8, USER, ts)),
    ]
    assert "\\ud800" in rows[3]  # the store's JSON carries the escape
    store.state.body = ('{"data": [' + ", ".join(rows) + "]}").encode()
    for caller in (USER, ADMIN):
        r = client.get("/api/activities", headers=auth(caller))
        assert r.status_code == 200, r.get_json()
        assert ids(r) == ["act-1", "act-8"]


@pytest.mark.storage
def test_an_unrepresentable_row_is_revealed_with_its_record(
    client: FlaskClient, store: LoopbackStore
) -> None:
    session = open_session(client, CAROL)
    ts = later()
    odd = json.dumps({**activity(2, USER, ts), "id": 2**64 + 5, "note": "\ud800"})
    store.state.body = (
        '{"data": [' + json.dumps(activity(1, USER, ts)) + ", " + odd + "]}"
    ).encode()
    r = client.get("/api/activities", headers={**auth(CAROL), "Veil-Reveal-Session": session})
    assert r.status_code == 200
    assert odd.encode() in r.data
    revealed = actions(client, "activities_revealed")
    assert [(x["details"]["count"], x["details"]["ids"]) for x in revealed] == [(1, [None])]


@pytest.mark.parametrize("where", ["row", "envelope", "rows-array"])
def test_json_nested_too_deep_from_the_store_is_502(
    client: FlaskClient, store: LoopbackStore, where: str
) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    row = json.dumps(activity(1, USER, later()))
    store.state.body = {
        "row": '{"data": [' + row + ', {"x": ' + deep + "}]}",
        "envelope": '{"x": ' + deep + ', "data": [' + row + "]}",
        "rows-array": '{"data": ' + "[" * 100_000 + "]" * 100_000 + "}",
    }[where].encode()
    r = client.get("/api/activities", headers=auth(USER))
    assert r.status_code == 502
    assert r.get_json()["code"] == "upstream_bad_body"


# ---- item 6: the decision uses state at least as new as the store's answer ----------------


@pytest.fixture
def patient(build: Any, store: LoopbackStore) -> Flask:
    """An app that waits up to 10 s for the store (slow store answers take 2 s here)."""
    application: Flask = build(store.url, upstream={"timeout_s": 10})
    return application


def query_in_flight(
    app: Flask, store: LoopbackStore, headers: dict[str, str], during: Any
) -> TestResponse:
    """Send one query to a slow store; run ``during`` while the store is answering."""
    answers: list[TestResponse] = []
    seen = len(store.state.requests)
    worker = threading.Thread(
        target=lambda: answers.append(app.test_client().get("/api/activities", headers=headers))
    )
    worker.start()
    deadline = time.monotonic() + 30
    while len(store.state.requests) == seen:  # the store has the query and is sleeping
        assert time.monotonic() < deadline, "the query never reached the store"
        time.sleep(0.01)
    during()
    worker.join(60)
    assert answers, "the query did not finish"
    return answers[0]


@pytest.mark.storage
def test_group_made_private_while_the_store_answers(patient: Flask, store: LoopbackStore) -> None:
    """R11: a row dated after the privacy start is hidden even when the group became private
    while the query was already waiting for the store."""
    app, client = patient, patient.test_client()
    client.put("/veil/v1/groups/hr", json={"name": "hr", "members": [HR1]}, headers=A)
    store.state.rows = [activity(1, HR1, later()), activity(2, USER, later())]
    assert ids(client.get("/api/activities", headers=auth(USER))) == ["act-1", "act-2"]
    store.state.delay_s = 2.0  # the change commits while the store still sleeps

    def make_hr_private() -> None:
        assert (
            client.post("/veil/v1/privacy-groups", json={"group": "hr"}, headers=A).status_code
            == 201
        )

    r = query_in_flight(app, store, auth(USER), make_hr_private)
    assert r.status_code == 200
    assert ids(r) == ["act-2"]


def test_state_that_cannot_be_read_hides_every_row(
    store: LoopbackStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R11: when the state cannot be read after the store answered, the last state loaded is
    not used (a group made private since, here by another replica, would not count): every
    row is hidden until the state can be read again."""
    url = f"sqlite:///{tmp_path / 'veil.db'}"
    replica_x, replica_y = (
        create_app(make_config(store.url, url)),
        create_app(make_config(store.url, url)),
    )
    x, y = replica_x.test_client(), replica_y.test_client()
    y.put("/veil/v1/groups/hr", json={"name": "hr", "members": [HR1]}, headers=A)
    store.state.rows = [activity(1, HR1, later()), activity(2, USER, later())]
    assert ids(x.get("/api/activities", headers=auth(USER))) == ["act-1", "act-2"]
    assert y.post("/veil/v1/privacy-groups", json={"group": "hr"}, headers=A).status_code == 201
    storage = replica_x.extensions["veil"].storage
    readable = storage.state_version

    def unavailable() -> int:
        raise StorageError("storage is unavailable")

    monkeypatch.setattr(storage, "state_version", unavailable)
    r = x.get("/api/activities", headers=auth(USER))
    assert r.status_code == 200 and ids(r) == [] and r.headers["Veil-Degraded"] == "policy"
    monkeypatch.setattr(storage, "state_version", readable)
    assert ids(x.get("/api/activities", headers=auth(USER))) == ["act-2"]
    for app in (replica_x, replica_y):
        app.extensions["veil"].engine.close()
        app.extensions["veil"].storage.close()


# ---- item 5: a reveal is checked again in the transaction of its record -------------------


@pytest.mark.parametrize("change", ["revoke-permission", "end-session", "remove-admin"])
@pytest.mark.storage
def test_a_change_during_a_slow_store_answer_wins_over_the_reveal(
    patient: Flask, store: LoopbackStore, change: str
) -> None:
    """R11: a revoke, a session end or an admin removal that commits while the store is still
    answering is seen by the reveal: 403, no private row, no activities_revealed record."""
    app, client = patient, patient.test_client()
    carol = "carol@contoso.com"
    make_private(client, "hr", [HR1])
    session = open_session(client, carol)
    store.state.rows = [activity(1, HR1, later()), activity(2, USER, later())]
    store.state.delay_s = 2.0  # the change commits while the store still sleeps

    def change_state() -> None:
        r = {
            "revoke-permission": lambda: client.delete(
                f"/veil/v1/private-viewers/{carol}", headers=A
            ),
            "end-session": lambda: client.delete(
                f"/veil/v1/reveal-sessions/{session}", headers=auth(carol)
            ),
            "remove-admin": lambda: client.delete(f"/veil/v1/admins/{carol}", headers=A),
        }[change]()
        assert r.status_code == 204, r.get_json()

    r = query_in_flight(app, store, {**auth(carol), "Veil-Reveal-Session": session}, change_state)
    assert r.status_code == 403
    assert r.get_json()["code"] == "reveal_refused"
    assert b"act-1" not in r.data and b"hr1" not in r.data
    assert actions(client, "activities_revealed") == []
    assert actions(client, "reveal_refused")[-1]["actor"] == carol


@pytest.mark.parametrize(
    "change", ["revoke-permission", "end-session", "remove-admin", "make-private", "unrelated"]
)
@pytest.mark.storage
def test_a_change_between_decision_and_record_wins(
    app: Flask, client: FlaskClient, store: LoopbackStore, change: str
) -> None:
    """R11: the reveal is checked again in the transaction that writes its record. A change
    committed after the policy decided but before the record is written wins."""
    carol, lee = "carol@contoso.com", "lee@contoso.com"
    make_private(client, "hr", [HR1])
    client.put("/veil/v1/groups/legal", json={"name": "legal", "members": [lee]}, headers=A)
    session = open_session(client, carol)
    store.state.rows = [
        activity(1, HR1, later()),
        activity(2, USER, later()),
        activity(3, lee, later()),
    ]
    services = app.extensions["veil"]
    storage, query = services.storage, services.query
    decide = query._decide
    changed: list[bool] = []

    def decide_then_change(*args: Any) -> Any:
        result = decide(*args)
        if not changed:  # once: right after the first decision, before its record
            changed.append(True)
            {
                "revoke-permission": lambda: storage.revoke_viewer(carol, ADMIN),
                "end-session": lambda: storage.end_session(session, carol, False),
                "remove-admin": lambda: storage.remove_admin(carol, ADMIN),
                "make-private": lambda: storage.add_privacy_group("legal", ADMIN),
                "unrelated": lambda: storage.put_group("sales", "sales", [USER], ADMIN),
            }[change]()
        return result

    query._decide = decide_then_change
    try:
        r = client.get("/api/activities", headers={**auth(carol), "Veil-Reveal-Session": session})
    finally:
        query._decide = decide
    assert changed
    revealed = actions(client, "activities_revealed")
    if change in ("make-private", "unrelated"):
        # decided again, in the record's transaction, on the newer state: a row that became
        # private is in the record; a change that makes nothing private changes nothing
        assert r.status_code == 200
        assert ids(r) == ["act-1", "act-2", "act-3"]
        expected = ["act-1", "act-3"] if change == "make-private" else ["act-1"]
        assert [x["details"]["ids"] for x in revealed] == [expected]
        return
    assert r.status_code == 403, r.get_json()
    assert r.get_json()["code"] == "reveal_refused"
    assert b"act-1" not in r.data and b"hr1" not in r.data
    assert revealed == []


@pytest.mark.storage
def test_concurrent_reveals_and_a_revoke(patient: Flask, store: LoopbackStore) -> None:
    """Reveals answered before a revoke are recorded before it; reveals still in flight when it
    commits are refused: no activities_revealed record follows permission_revoked."""
    app, client = patient, patient.test_client()
    carol = "carol@contoso.com"
    make_private(client, "hr", [HR1])
    session = open_session(client, carol)
    store.state.rows = [activity(1, HR1, later()), activity(2, USER, later())]
    headers = {**auth(carol), "Veil-Reveal-Session": session}
    workers = 6

    def reveal(_: int) -> TestResponse:
        return app.test_client().get("/api/activities", headers=headers)

    with ThreadPoolExecutor(workers) as pool:
        before = list(pool.map(reveal, range(workers)))
        store.state.delay_s = 2.0  # the change commits while the store still sleeps
        asked = len(store.state.requests)
        pending = [pool.submit(reveal, number) for number in range(workers)]
        deadline = time.monotonic() + 60
        while len(store.state.requests) < asked + workers:  # all in flight
            assert time.monotonic() < deadline, "the reveals never reached the store"
            time.sleep(0.01)
        assert client.delete(f"/veil/v1/private-viewers/{carol}", headers=A).status_code == 204
        after = [future.result(60) for future in pending]
    assert [r.status_code for r in before] == [200] * workers
    assert all(ids(r) == ["act-1", "act-2"] for r in before)
    assert [r.status_code for r in after] == [403] * workers
    assert all(b"act-1" not in r.data for r in after)
    log = records(client)
    revoked = next(x["seq"] for x in log if x["action"] == "permission_revoked")
    revealed = [x["seq"] for x in log if x["action"] == "activities_revealed"]
    assert len(revealed) == workers
    assert all(seq < revoked for seq in revealed)


# ---- item 11: the deadline holds for the whole answer ------------------------------------


class _TrickleHandler(socketserver.BaseRequestHandler):
    """Answers any request with headers at once, then its body one byte every 0.1 s."""

    def handle(self) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            request += chunk
        body = json.dumps(
            {"data": [activity(i, USER, "2024-01-01T00:00:00Z") for i in range(3)]}
        ).encode()
        self.request.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        stop = time.monotonic() + 20
        try:
            for byte in body:
                if time.monotonic() > stop:
                    return
                self.request.sendall(bytes([byte]))
                time.sleep(0.1)
        except OSError:
            return  # Veil gave up: as it should


@pytest.fixture
def trickling_store() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _TrickleHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_trickling_store_is_cut_at_the_deadline(trickling_store: str, build: Any) -> None:
    app = build(trickling_store, upstream={"timeout_s": 1})
    started = time.monotonic()
    r = app.test_client().get("/api/activities", headers=auth(USER))
    elapsed = time.monotonic() - started
    assert r.status_code == 504
    assert r.get_json()["code"] == "upstream_timeout"
    assert elapsed < 6  # one second of deadline, loosely: not the minute the body would take


# ---- the served process ----------------------------------------------------------------


def test_served_boundary(store: LoopbackStore, trickling_store: str, tmp_path: Path) -> None:
    """`veil serve` (gunicorn workers): envelope, error answer, deadline and a reveal racing a
    revoke, end to end over HTTP."""

    carol = "carol@contoso.com"
    doc = config_doc(
        store.url,
        f"sqlite:///{tmp_path / 'veil.db'}",
        server={"workers": 2, "threads": 4},
        upstream={"timeout_s": 10},
    )
    doc["upstream"]["keep"] = ["/next"]
    with veil_serve(doc, tmp_path) as (url, _):
        http = requests.Session()
        http.trust_env = False

        def call(method: str, path: str, who: str = ADMIN, **kwargs: Any) -> requests.Response:
            headers = {**auth(who), **kwargs.pop("headers", {})}
            return http.request(method, url + path, headers=headers, timeout=30, **kwargs)

        assert (
            call("PUT", "/veil/v1/groups/hr", json={"name": "hr", "members": [HR1]}).status_code
            == 201
        )
        assert call("POST", "/veil/v1/privacy-groups", json={"group": "hr"}).status_code == 201
        shown = activity(2, USER, later())
        store.state.body = json.dumps(
            {"total": 2, "data": [activity(1, HR1, later()), shown], "next": "p2", "facets": [HR1]},
            indent=2,
        ).encode()
        r = call("GET", "/api/activities", USER)
        assert r.status_code == 200
        assert r.json() == {"data": [shown], "next": "p2"}

        store.state.status, store.state.body = 500, b'{"partial": ["' + HR1.encode() + b'"]}'
        r = call("GET", "/api/activities", USER)
        assert (r.status_code, r.json()["store_status"]) == (502, 500)
        assert HR1 not in r.text

        store.reset()
        assert call("POST", "/veil/v1/admins", json={"principal": carol}).status_code == 201
        assert (
            call("POST", "/veil/v1/private-viewers", json={"principal": carol}).status_code == 201
        )
        session = call(
            "POST",
            "/veil/v1/reveal-sessions",
            carol,
            json={"acknowledge_audit": True, "justification": "x"},
        ).json()["id"]
        store.state.rows = [activity(1, HR1, later()), shown]
        store.state.delay_s = 2.0  # the change commits while the store still sleeps
        answers: list[requests.Response] = []
        worker = threading.Thread(
            target=lambda: answers.append(
                call("GET", "/api/activities", carol, headers={"Veil-Reveal-Session": session})
            )
        )
        worker.start()
        deadline = time.monotonic() + 30
        while not store.state.requests:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert call("DELETE", f"/veil/v1/private-viewers/{carol}").status_code == 204
        worker.join(60)
        assert answers[0].status_code == 403
        assert HR1 not in answers[0].text
        log = call("GET", "/veil/v1/governance-log?limit=1000").json()["records"]
        assert not [x for x in log if x["action"] == "activities_revealed"]

    doc = config_doc(
        trickling_store, f"sqlite:///{tmp_path / 'veil2.db'}", upstream={"timeout_s": 1}
    )
    with veil_serve(doc, tmp_path) as (url, _):
        started = time.monotonic()
        r = requests.get(url + "/api/activities", headers=auth(USER), timeout=60)
        assert r.status_code == 504
        assert time.monotonic() - started < 6
