"""Issue 9, management and identity side: group listings (R9), request bodies (R12), principals
(docs/rules.md, "Principal"), coalesced refusals (R12) and the admin controls, through the HTTP API
with a real loopback store and real SQLite files (PostgreSQL too where the fixture says)."""

from __future__ import annotations

import io
import json
import sqlite3
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient

from veil.app import create_app
from veil.errors import ConfigError, InvalidBody
from veil.storage import migrations, open_storage

from conftest import (
    ADMIN,
    AUDIENCE,
    GRANTOR,
    ISSUER,
    SECRET,
    LoopbackStore,
    activity,
    auth,
    config_doc,
    ids,
    iso,
    make_config,
    permit,
)

A = auth(ADMIN)
BOB = "bob@contoso.com"
CAROL = "carol@contoso.com"
SEC = 1_000_000_000


def records(client: FlaskClient, action: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.get(
        f"/veil/v1/governance-log?action={action}&limit=1000", headers=A
    ).get_json()["records"]
    return found


def later() -> str:
    return iso(time.time_ns() + 60 * SEC)


def make_private(client: FlaskClient, gid: str, members: list[str]) -> None:
    assert (
        client.put(
            f"/veil/v1/groups/{gid}", json={"name": gid, "members": members}, headers=A
        ).status_code
        == 201
    )
    assert client.post("/veil/v1/privacy-groups", json={"group": gid}, headers=A).status_code == 201


# ---- 8: group listings need an admin (R9) -------------------------------------------------


def test_group_listings_need_an_admin(client: FlaskClient) -> None:
    make_private(client, "finance", ["ann@contoso.com"])
    for path in ("/veil/v1/groups", "/veil/v1/privacy-groups"):
        refused = client.get(path, headers=auth(BOB))
        assert refused.status_code == 403, path
        assert "ann@contoso.com" not in refused.get_data(as_text=True)
        assert "finance" not in refused.get_data(as_text=True)
        assert client.get(path).status_code == 401
    groups = client.get("/veil/v1/groups", headers=A).get_json()["groups"]
    assert groups[0]["members"] == ["ann@contoso.com"]
    private = client.get("/veil/v1/privacy-groups", headers=A).get_json()["privacy_groups"]
    assert [g["group"] for g in private] == ["finance"]


# ---- 9: request size limit (the served process: tests/test_body_limit.py) ----------------


def test_body_above_the_limit_is_413_before_it_is_read(
    store: LoopbackStore, tmp_path: Path
) -> None:
    app = create_app(
        make_config(store.url, f"sqlite:///{tmp_path / 'veil.db'}", server={"max_body_bytes": 4096})
    )
    client = app.test_client()
    members = [f"user{i:05d}@contoso.com" for i in range(400)]  # about 9 KB
    r = client.put("/veil/v1/groups/big", json={"name": "Big", "members": members}, headers=A)
    assert r.status_code == 413
    assert r.get_json()["code"] == "body_too_large"
    assert "server.max_body_bytes" in r.get_json()["detail"]
    # refused whatever the route, before identity: nobody reads a declared 300 MiB
    r = client.post(
        "/veil/v1/reveal-sessions",
        input_stream=io.BytesIO(b"{}"),
        environ_overrides={"CONTENT_LENGTH": str(300 << 20)},
    )
    assert r.status_code == 413
    # at the limit it is read
    r = client.put("/veil/v1/groups/small", json={"name": "S", "members": members[:100]}, headers=A)
    assert r.status_code == 201
    assert app.config["MAX_CONTENT_LENGTH"] == 4096
    app.extensions["veil"].storage.close()


def test_max_body_bytes_defaults_to_one_mebibyte(store: LoopbackStore, tmp_path: Path) -> None:
    config = make_config(store.url, f"sqlite:///{tmp_path / 'veil.db'}")
    assert config.server.max_body_bytes == 1024 * 1024
    with pytest.raises(ConfigError, match=r"server\.max_body_bytes"):
        make_config(store.url, "sqlite:///x.db", server={"max_body_bytes": 10})


# ---- 10 (body side): lone surrogates and deep nesting are 400, never 500 -------------------


@pytest.mark.storage
def test_lone_surrogate_in_a_justification_is_400_and_audited(client: FlaskClient) -> None:
    body = b'{"acknowledge_audit": true, "justification": "case \\ud800 INC-1"}'
    r = client.post(
        "/veil/v1/reveal-sessions", data=body, content_type="application/json", headers=auth(BOB)
    )
    assert r.status_code == 400, r.get_data(as_text=True)
    assert r.get_json()["field"] == "justification"
    assert "surrogate" in r.get_json()["detail"]
    refused = records(client, "reveal_session_refused")
    assert [(x["actor"], x["details"]["field"]) for x in refused] == [(BOB, "justification")]
    assert client.get("/veil/v1/governance-log/verify", headers=A).get_json()["ok"] is True


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("put", "/veil/v1/groups/g1", '{"name": "x\\udfff", "members": []}', "name"),
        (
            "put",
            "/veil/v1/groups/g1",
            '{"name": "x", "members": ["a@b.c", "\\ud83d"]}',
            "members.1",
        ),
        ("post", "/veil/v1/admins", '{"principal": "\\udc00bob@contoso.com"}', "principal"),
        ("post", "/veil/v1/privacy-groups", '{"group": "\\ud800"}', "group"),
    ],
)
def test_lone_surrogate_anywhere_in_a_body_is_400_naming_the_field(
    client: FlaskClient, method: str, path: str, body: str, field: str
) -> None:
    r = getattr(client, method)(path, data=body, content_type="application/json", headers=A)
    assert r.status_code == 400, r.get_data(as_text=True)
    assert r.get_json()["field"] == field


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deeply_nested_body_is_400(client: FlaskClient, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    for path, who in (("/veil/v1/reveal-sessions", auth(BOB)), ("/veil/v1/admins", A)):
        body = (
            '{"principal": ' + nested + "}"
            if "admins" in path
            else ('{"acknowledge_audit": true, "justification": ' + nested + "}")
        )
        r = client.post(path, data=body, content_type="application/json", headers=who)
        assert r.status_code == 400, (path, r.get_data(as_text=True)[:200])
        assert r.get_json()["code"] == "invalid_body"


# ---- 12: principals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["\u00a0", "\u3000", "\x85", "\x1f", "\u200b", "\x00", " ", "\u2028", "\ufeff", "\t"]
)
def test_principal_with_whitespace_or_control_characters_is_refused(bad: str) -> None:
    from veil import principal

    for value in (f"alice@contoso.com{bad}", f"{bad}alice@contoso.com", f"al{bad}ice@contoso.com"):
        assert principal.key(value) is None
        with pytest.raises(InvalidBody, match="not a valid principal"):
            principal.normalize(value)


def test_principal_is_nfc_and_case_folded() -> None:
    from veil import principal

    nfc, nfd = "jos\u00e9@contoso.com", "jose\u0301@contoso.com"
    assert principal.key(nfd) == principal.key(nfc) == nfc
    assert principal.key("JOS\u00c9@Contoso.COM") == nfc
    assert principal.key("Stra\u00dfe@contoso.com") == principal.key("STRASSE@contoso.com")
    assert principal.key("Alice@Contoso.com") == "alice@contoso.com"
    assert principal.key("") is None
    assert principal.key("a" * 321) is None


# Which characters are refused: the unit test above; here one that str.strip() would trim and
# one it would keep, through identity and through a body.
@pytest.mark.parametrize("bad", ["\u00a0", "\u200b"])
def test_identity_with_a_bad_principal_is_401_never_trimmed(client: FlaskClient, bad: str) -> None:
    # alice is an admin: trimmed, this token would be hers
    r = client.get("/veil/v1/admins", headers=auth(ADMIN + bad))
    assert r.status_code == 401, r.get_json()
    assert "never trimmed" in r.get_json()["detail"]
    r = client.get("/veil/v1/admins", headers=auth(bad + ADMIN, claim="preferred_username"))
    assert r.status_code == 401


def test_gateway_header_with_a_bad_principal_is_401(store: LoopbackStore, tmp_path: Path) -> None:
    from veil import config as config_module

    doc = config_doc(
        store.url,
        f"sqlite:///{tmp_path / 'veil.db'}",
        identity={"mode": "header", "secret_env": "GW", "bootstrap_admins": [ADMIN]},
    )
    app = create_app(config_module.from_dict(doc, env={"GW": "gateway-secret"}))
    client = app.test_client()
    gateway = {"X-Veil-Gateway-Secret": "gateway-secret"}
    ok = client.get("/veil/v1/admins", headers={**gateway, "X-Forwarded-User": "Alice@Contoso.com"})
    assert ok.status_code == 200
    # WSGI headers are latin-1: NBSP and \x85 arrive as themselves
    for bad in ("\u00a0", "\x85", "\x1f"):
        r = client.get(
            "/veil/v1/admins", headers={**gateway, "X-Forwarded-User": f"alice@contoso.com{bad}"}
        )
        assert r.status_code == 401, bad
    app.extensions["veil"].storage.close()


@pytest.mark.parametrize("bad", ["\u200b", "\u00a0"])
def test_principal_in_a_body_or_path_is_400(client: FlaskClient, bad: str) -> None:
    r = client.post("/veil/v1/admins", json={"principal": f"bob@contoso.com{bad}"}, headers=A)
    assert r.status_code == 400
    assert r.get_json()["field"] == "principal"
    r = client.put(
        "/veil/v1/groups/g", json={"name": "G", "members": [BOB, f"x{bad}@c.com"]}, headers=A
    )
    assert r.status_code == 400
    assert r.get_json()["field"] == "members.1"
    r = client.delete(f"/veil/v1/admins/bob@contoso.com{bad}", headers=A)
    assert r.status_code == 400
    assert client.get("/veil/v1/admins", headers=A).get_json()["admins"][-1]["principal"] != BOB


@pytest.mark.storage
def test_members_are_stored_normalized(client: FlaskClient) -> None:
    r = client.put(
        "/veil/v1/groups/g",
        headers=A,
        json={"name": "G", "members": ["jose\u0301@Contoso.com", "Bob@contoso.com"]},
    )
    assert r.status_code == 201
    assert r.get_json()["members"] == [BOB, "jos\u00e9@contoso.com"]


def test_actor_with_whitespace_is_unreadable_so_private(
    client: FlaskClient, store: LoopbackStore
) -> None:
    make_private(client, "finance", ["ann@contoso.com"])
    # trimmed, the first two would be ann (private anyway); the next two are ann to a reader
    # that ignores invisible characters, and were shown as someone else
    store.state.rows = [
        activity(1, "ann@contoso.com\u3000", later()),
        activity(2, " ann@contoso.com", later()),
        activity(3, "ann@contoso.com\u200b", later()),
        activity(4, "ann\u2060@contoso.com", later()),
        activity(5, BOB, later()),
    ]
    assert ids(client.get("/api/activities", headers=auth(BOB))) == ["act-5"]


def test_application_values_compare_case_insensitively(
    store: LoopbackStore, tmp_path: Path
) -> None:
    app = create_app(
        make_config(
            store.url,
            f"sqlite:///{tmp_path / 'veil.db'}",
            upstream={"application_values": ["Application", "ServicePrincipal"]},
        )
    )
    client = app.test_client()
    assert (
        client.post("/veil/v1/privacy-groups", json={"group": "application"}, headers=A).status_code
        == 201
    )
    store.state.rows = [
        activity(1, "app-1", later(), actor_type="APPLICATION"),
        activity(2, "app-2", later(), actor_type="serviceprincipal"),
        activity(3, "app-3", later(), actor_type="application"),
        activity(4, BOB, later(), actor_type="User"),
    ]
    assert ids(client.get("/api/activities", headers=auth(BOB))) == ["act-4"]
    app.extensions["veil"].storage.close()


def test_email_claim_only_when_verified(client: FlaskClient) -> None:
    def bearer(**claims: Any) -> dict[str, str]:
        now = int(time.time())
        token = jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 60, **claims}, SECRET, algorithm="HS256"
        )
        return {"Authorization": f"Bearer {token}"}

    # an unverified address names nobody: anyone can put the admin's address in a token
    r = client.get("/veil/v1/admins", headers=bearer(email=ADMIN))
    assert r.status_code == 401
    assert "email_verified" in r.get_json()["detail"]
    assert (
        client.get(
            "/veil/v1/admins", headers=bearer(email=ADMIN, email_verified="true")
        ).status_code
        == 401
    )
    assert (
        client.get("/veil/v1/admins", headers=bearer(email=ADMIN, email_verified=True)).status_code
        == 200
    )
    # an unverified email does not hide a later claim... and upn still wins when present
    assert client.get("/veil/v1/admins", headers=bearer(upn=ADMIN, email=BOB)).status_code == 200


@pytest.mark.parametrize("gid", ["hr%0A", "hr%0D", "application%0A", "hr%20"])
def test_group_ids_are_matched_whole(client: FlaskClient, gid: str) -> None:
    r = client.put(f"/veil/v1/groups/{gid}", json={"name": "HR", "members": [BOB]}, headers=A)
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["field"] == "id"
    assert client.delete(f"/veil/v1/privacy-groups/{gid}", headers=A).status_code == 400


@pytest.mark.parametrize("group", ["hr\n", "application\n", "external\n"])
def test_group_ids_in_a_body_are_matched_whole(client: FlaskClient, group: str) -> None:
    assert (
        client.put(
            "/veil/v1/groups/hr", json={"name": "HR", "members": [BOB]}, headers=A
        ).status_code
        == 201
    )
    r = client.post("/veil/v1/privacy-groups", json={"group": group}, headers=A)
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["field"] == "group"


def test_bootstrap_admins_are_principals(store: LoopbackStore, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"identity.bootstrap_admins.1"):
        make_config(
            store.url,
            "sqlite:///x.db",
            identity={"bootstrap_admins": [ADMIN, "bob@contoso.com\u3000"]},
        )
    config = make_config(
        store.url, "sqlite:///x.db", identity={"bootstrap_admins": ["JOSE\u0301@Contoso.com"]}
    )
    assert config.identity.bootstrap_admins == ("jos\u00e9@contoso.com",)


def test_migration_rekeys_principals_stored_by_earlier_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "veil.db"
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:3])
    open_storage(f"sqlite:///{path}", 5).close()  # a version 3 database
    nfd = unicodedata.normalize("NFD", "jos\u00e9@contoso.com")
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO groups (id, name, members, updated_ns, updated_by, "
            "former_members) VALUES ('g', 'G', ?, 1, 'x', ?)",
            (
                json.dumps([nfd, "straße@contoso.com", "bad\u200b@x.com"]),
                json.dumps({"ANN\u00c9@contoso.com": 5}),
            ),
        )
        db.executemany(
            "INSERT INTO admins (principal, added_ns, added_by) VALUES (?, ?, 'x')",
            [(nfd, 1), ("jos\u00e9@contoso.com", 2), ("carol@contoso.com", 3)],
        )
        db.execute(
            "INSERT INTO viewers (principal, granted_ns, granted_by) VALUES (?, 1, 'x')", (nfd,)
        )
        db.execute(
            "INSERT INTO reveal_sessions (id, owner, created_ns, expires_ns) "
            "VALUES ('rs_1', ?, 1, 2)",
            (nfd,),
        )
    monkeypatch.undo()
    storage = open_storage(f"sqlite:///{path}", 5)
    try:
        _, data = storage.policy_data([])
        nfc = "jos\u00e9@contoso.com"
        assert sorted(data["admins"]) == ["carol@contoso.com", nfc]
        assert list(data["viewers"]) == [nfc]
        session = storage.get_session("rs_1")
        assert session is not None and session["owner"] == nfc
        assert storage.is_admin(nfc)
    finally:
        storage.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == len(
            migrations.MIGRATIONS
        )
        members, former = db.execute(
            "SELECT members, former_members FROM groups WHERE id = 'g'"
        ).fetchone()
    assert set(json.loads(members)) == {nfc, "strasse@contoso.com", "bad\u200b@x.com"}
    assert json.loads(former) == {"ann\u00e9@contoso.com": 5}


# ---- 13: refusals are coalesced per principal (R12) ---------------------------------------


@pytest.mark.storage
def test_a_loop_of_refusals_writes_a_handful_of_records(
    app: Flask, client: FlaskClient, store: LoopbackStore
) -> None:
    storage = app.extensions["veil"].storage
    attempts = 2600
    body = {"acknowledge_audit": True, "justification": "let me in"}
    bob = auth(BOB)
    for _ in range(attempts - 100):
        assert client.post("/veil/v1/reveal-sessions", json=body, headers=bob).status_code == 403
    store.state.rows = [activity(1, BOB, later())]
    for _ in range(100):  # a reveal with someone else's (here: no) session, through the proxy
        r = client.get("/api/activities", headers={**bob, "Veil-Reveal-Session": "rs_nope"})
        assert r.status_code == 403
    written = [
        r
        for r in client.get(
            "/veil/v1/governance-log?actor=" + BOB + "&limit=1000", headers=A
        ).get_json()["records"]
    ]
    assert len(written) == 1  # one window: the first attempt, written at once
    assert written[0]["action"] == "reveal_session_refused"
    assert written[0]["details"]["attempts"] == 1
    # the window passes: the next refusal carries the count of every attempt in between
    storage.refusal_window_ns = 0
    assert client.post("/veil/v1/reveal-sessions", json=body, headers=bob).status_code == 403
    written = client.get("/veil/v1/governance-log?actor=" + BOB, headers=A).get_json()["records"]
    assert len(written) == 2
    assert written[1]["details"]["coalesced"] == {
        "reveal_session_refused": 2499,
        "reveal_refused": 100,
    }
    assert sum(r["details"]["attempts"] for r in written) == attempts + 1
    assert client.get("/veil/v1/governance-log/verify", headers=A).get_json()["ok"] is True


@pytest.mark.storage
def test_coalesced_counts_are_flushed_for_other_principals(app: Flask, client: FlaskClient) -> None:
    storage = app.extensions["veil"].storage
    body = {"acknowledge_audit": True, "justification": "let me in"}
    for _ in range(5):
        client.post("/veil/v1/reveal-sessions", json=body, headers=auth(BOB))
    storage.refusal_window_ns = 0
    client.post("/veil/v1/reveal-sessions", json=body, headers=auth(CAROL))  # someone else
    flushed = records(client, "refusals_coalesced")
    assert [(r["actor"], r["details"]["attempts"]) for r in flushed] == [(BOB, 4)]
    counted = [
        r["details"]["attempts"]
        for r in records(client, "reveal_session_refused")
        if r["actor"] == BOB
    ] + [4]
    assert sum(counted) == 5


# ---- 14: admin controls -------------------------------------------------------------------


@pytest.mark.storage
def test_no_admin_grants_themselves_the_permission(client: FlaskClient) -> None:
    r = client.post("/veil/v1/private-viewers", json={"principal": ADMIN}, headers=A)
    assert r.status_code == 403
    assert "another admin" in r.get_json()["detail"]
    # not by another spelling of themselves either
    r = client.post("/veil/v1/private-viewers", json={"principal": "ALICE@contoso.com"}, headers=A)
    assert r.status_code == 403
    assert client.get("/veil/v1/private-viewers", headers=A).get_json()["private_viewers"] == []
    refused = records(client, "permission_grant_refused")
    assert refused[0]["actor"] == ADMIN
    assert refused[0]["details"]["reason"] == "self-grant"
    r = client.post("/veil/v1/private-viewers", json={"principal": ADMIN}, headers=auth(GRANTOR))
    assert r.status_code == 201
    granted = records(client, "permission_granted")
    assert [(g["actor"], g["details"]["principal"]) for g in granted] == [(GRANTOR, ADMIN)]


@pytest.fixture
def no_bootstrap(store: LoopbackStore, storage_url: str) -> Iterator[FlaskClient]:
    app = create_app(make_config(store.url, storage_url, identity={"bootstrap_admins": []}))
    app.extensions["veil"].storage.add_admin(ADMIN, "cli:root")  # as `veil admins add` does
    yield app.test_client()
    app.extensions["veil"].storage.close()


@pytest.mark.storage
def test_never_zero_admins(no_bootstrap: FlaskClient) -> None:
    client = no_bootstrap
    r = client.delete(f"/veil/v1/admins/{ADMIN}", headers=A)
    assert r.status_code == 409
    assert "last admin" in r.get_json()["detail"]
    assert [
        a["principal"] for a in client.get("/veil/v1/admins", headers=A).get_json()["admins"]
    ] == [ADMIN]
    assert client.post("/veil/v1/admins", json={"principal": CAROL}, headers=A).status_code == 201
    assert client.delete(f"/veil/v1/admins/{ADMIN}", headers=A).status_code == 204
    assert client.delete(f"/veil/v1/admins/{CAROL}", headers=auth(CAROL)).status_code == 409


@pytest.mark.storage
def test_last_registry_admin_may_go_when_a_bootstrap_admin_stays(client: FlaskClient) -> None:
    assert client.post("/veil/v1/admins", json={"principal": CAROL}, headers=A).status_code == 201
    assert client.delete(f"/veil/v1/admins/{CAROL}", headers=A).status_code == 204


@pytest.mark.parametrize(
    "why", ["\u200b", " \u200b\u200c\u2060 ", "\ufeff", "\u3000", "\n\t", "case\x1b[2J"]
)
def test_a_justification_needs_visible_text(client: FlaskClient, why: str) -> None:
    permit(client)
    r = client.post(
        "/veil/v1/reveal-sessions",
        headers=A,
        json={"acknowledge_audit": True, "justification": why},
    )
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["field"] == "justification"
    assert records(client, "reveal_session_opened") == []
    assert records(client, "reveal_session_refused")[0]["details"]["field"] == "justification"
    ok = client.post(
        "/veil/v1/reveal-sessions",
        headers=A,
        json={"acknowledge_audit": True, "justification": "INC-7 \u00e9t\u00e9"},
    )
    assert ok.status_code == 201


def test_optional_justification_still_needs_visible_text(
    store: LoopbackStore, tmp_path: Path
) -> None:
    app = create_app(
        make_config(
            store.url, f"sqlite:///{tmp_path / 'veil.db'}", reveal={"require_justification": False}
        )
    )
    client = app.test_client()
    permit(client)
    assert (
        client.post(
            "/veil/v1/reveal-sessions", json={"acknowledge_audit": True}, headers=A
        ).status_code
        == 201
    )
    assert (
        client.post(
            "/veil/v1/reveal-sessions",
            headers=A,
            json={"acknowledge_audit": True, "justification": "\u200b"},
        ).status_code
        == 400
    )
    app.extensions["veil"].storage.close()


def test_the_justification_rule_holds_without_the_schema() -> None:
    """The service-level check (used when the field is required, and by any caller that does
    not go through the JSON Schema) refuses what the schema's pattern refuses."""
    import re

    from veil import schemas

    pattern = re.compile(schemas.JUSTIFICATION["pattern"])
    for text in ("\u200b", " \u3000 ", "\ufeff\u2060", "case\x1b[2J", "\x00"):
        assert pattern.search(text) is None
        with pytest.raises(InvalidBody):
            schemas.check_justification(text)
    for text in ("INC-7", "r\u00e9vision\n\tsuite", "\u0301"):
        assert pattern.search(text) is not None
        schemas.check_justification(text)


def test_the_hidden_class_covers_every_whitespace_and_control_character() -> None:
    """The principal pattern is spelled out (so that Python, ECMA-262 and Rust engines read it
    alike): it must hold every Cc, Cf, Zs, Zl and Zp character this Python knows."""
    import re

    from veil import principal

    hidden = re.compile(f"[{principal.HIDDEN_CLASS}]")
    missing = [
        hex(cp)
        for cp in range(0x110000)
        if not 0xD800 <= cp <= 0xDFFF
        and unicodedata.category(chr(cp)) in {"Cc", "Cf", "Zs", "Zl", "Zp"}
        and hidden.fullmatch(chr(cp)) is None
    ]
    assert missing == []
    assert all(principal.key(f"a{chr(cp)}b") is None for cp in (0x85, 0xA0, 0x200B, 0xE0041))
