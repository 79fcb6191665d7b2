"""SCIM 2.0 provisioning (/scim/v2): Entra ID and Okta request sequences with proxied queries
showing that privacy follows membership (R1 over leave times), SCIM errors that change nothing,
filters, paging, ETags, idempotence, and the data document staying small. Each runs on SQLite
and PostgreSQL; the scim2-tester conformance run is in tests/test_scim_conformance.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from veil import config as config_module
from veil.app import create_app
from veil.storage import Storage

from conftest import ADMIN, SECRET, LoopbackStore, activity, auth, config_doc, ids, iso

pytestmark = pytest.mark.storage  # the SCIM directory lives in storage

TOKEN = "scim-token-0123456789abcdef"
SCIM = {"Authorization": f"Bearer {TOKEN}"}
ENTRA = {**SCIM, "User-Agent": "Azure AD SCIM Client"}
OKTA = {**SCIM, "User-Agent": "Okta SCIM Client 1.0.0"}
A = auth(ADMIN)
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SEC = 1_000_000_000


def make_app(
    store: LoopbackStore, storage_url: str, env: dict[str, str] | None = None, **sections: Any
) -> Flask:
    doc = config_doc(store.url, storage_url, **sections)
    config = config_module.from_dict(doc, env={"VEIL_TEST_JWT_SECRET": SECRET, **(env or {})})
    return create_app(config)


@pytest.fixture
def scim_app(store: LoopbackStore, storage_url: str) -> Iterator[Flask]:
    app = make_app(
        store, storage_url, {"VEIL_SCIM_TOKEN": TOKEN}, scim={"token_env": "VEIL_SCIM_TOKEN"}
    )
    yield app
    app.extensions["veil"].storage.close()


@pytest.fixture
def client(scim_app: Flask) -> FlaskClient:
    return scim_app.test_client()


def storage(client: FlaskClient) -> Storage:
    found: Storage = client.application.extensions["veil"].storage
    return found


def log(client: FlaskClient) -> list[dict[str, Any]]:
    return list(storage(client).iter_log())


def patch(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH], "Operations": list(operations)}


def entra_user(upn: str, external_id: str, mail: str | None = None) -> dict[str, Any]:
    """A user as Entra ID's default attribute mappings send it."""
    return {
        "schemas": [USER, ENTERPRISE],
        "externalId": external_id,
        "userName": upn,
        "active": True,
        "displayName": upn.split("@")[0].title(),
        "emails": [{"primary": True, "type": "work", "value": mail or upn}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "Test User", "familyName": "User", "givenName": "Test"},
        "title": "Analyst",
        ENTERPRISE: {"employeeNumber": "42", "department": "Finance"},
    }


def okta_user(login: str) -> dict[str, Any]:
    """A user as Okta's SCIM 2.0 app sends it on creation."""
    return {
        "schemas": [USER],
        "userName": login,
        "name": {"givenName": "Carol", "familyName": "Jones"},
        "emails": [{"primary": True, "value": login, "type": "work"}],
        "displayName": "Carol Jones",
        "locale": "en-US",
        "externalId": "00u1abcd",
        "groups": [],
        "active": True,
    }


class Rows:
    """Activity rows in the loopback store, and which of them a caller sees through Veil."""

    def __init__(self, client: FlaskClient, store: LoopbackStore) -> None:
        self.client = client
        self.store = store
        self.n = 0

    def add(self, user: str, ts_ns: int) -> str:
        self.n += 1
        self.store.state.rows.append(activity(self.n, user, iso(ts_ns)))
        return f"act-{self.n}"

    def visible(self) -> set[str]:
        response = self.client.get("/api/activities", headers=A)
        assert response.status_code == 200, response.get_data(as_text=True)
        return set(ids(response))


def make_private(client: FlaskClient, group_id: str) -> int:
    response = client.post("/veil/v1/privacy-groups", json={"group": group_id}, headers=A)
    assert response.status_code == 201, response.get_json()
    return time.time_ns()


def tick() -> int:
    """A moment strictly after the previous change (timestamps are in nanoseconds)."""
    time.sleep(0.002)
    now = time.time_ns()
    time.sleep(0.002)
    return now


# ---- Entra ID ---------------------------------------------------------------------------


def test_entra_sequence_privacy_follows_membership(
    client: FlaskClient, store: LoopbackStore
) -> None:
    rows = Rows(client, store)
    # 1. Entra looks the user up by userName (and finds nobody), then creates them.
    found = client.get('/scim/v2/Users?filter=userName+eq+"Bob%40Contoso.com"', headers=ENTRA)
    assert found.status_code == 200 and found.get_json()["totalResults"] == 0
    created = client.post(
        "/scim/v2/Users",
        json=entra_user("Bob@Contoso.com", "e-bob", "bob.smith@contoso.com"),
        headers=ENTRA,
    )
    assert created.status_code == 201, created.get_json()
    assert created.mimetype == "application/scim+json"
    bob = created.get_json()["id"]
    assert created.headers["Location"].endswith(f"/scim/v2/Users/{bob}")
    found = client.get('/scim/v2/Users?filter=userName eq "bob@contoso.com"', headers=ENTRA)
    assert [u["id"] for u in found.get_json()["Resources"]] == [bob]

    # 2. The group: looked up by displayName without members, then created empty.
    found = client.get(
        '/scim/v2/Groups?excludedAttributes=members&filter=displayName eq "Finance"', headers=ENTRA
    )
    assert found.get_json()["totalResults"] == 0
    group = client.post(
        "/scim/v2/Groups",
        json={
            "schemas": [GROUP],
            "externalId": "8d3c-finance",
            "displayName": "Finance",
            "members": [],
        },
        headers=ENTRA,
    )
    assert group.status_code == 201, group.get_json()
    gid = group.get_json()["id"]

    before = rows.add("bob@contoso.com", time.time_ns() - 60 * SEC)
    make_private(client, gid)

    # 3. Entra adds the member with a value array and a capitalised op.
    added = client.patch(
        f"/scim/v2/Groups/{gid}",
        json=patch({"op": "Add", "path": "members", "value": [{"value": bob}]}),
        headers=ENTRA,
    )
    assert added.status_code == 204, added.get_data(as_text=True)
    while_member = rows.add("bob@contoso.com", tick())
    by_mail = rows.add("bob.smith@contoso.com", tick())  # e-mails are principals too
    assert rows.visible() == {before}

    # 4. Deactivated (Entra sends the boolean as a string): still a member for R1.
    off = client.patch(
        f"/scim/v2/Users/{bob}",
        json=patch({"op": "Replace", "path": "active", "value": "False"}),
        headers=ENTRA,
    )
    assert off.status_code == 200 and off.get_json()["active"] is False
    while_inactive = rows.add("bob@contoso.com", tick())
    assert rows.visible() == {before}

    # 5. Removed by a path filter: what he did while a member stays private, after is not.
    removed = client.patch(
        f"/scim/v2/Groups/{gid}",
        json=patch({"op": "Remove", "path": f'members[value eq "{bob}"]'}),
        headers=ENTRA,
    )
    assert removed.status_code == 204
    after_leaving = rows.add("bob@contoso.com", tick())
    assert rows.visible() == {before, after_leaving}
    assert {while_member, by_mail, while_inactive}.isdisjoint(rows.visible())

    # 6. Deleted: nothing he did in the group becomes visible.
    assert client.delete(f"/scim/v2/Users/{bob}", headers=ENTRA).status_code == 204
    assert client.get(f"/scim/v2/Users/{bob}", headers=ENTRA).status_code == 404
    assert rows.visible() == {before, after_leaving}

    actions = [(r["action"], r["actor"]) for r in log(client) if r["action"].startswith("scim")]
    assert actions == [
        ("scim_user_created", "scim:provisioning"),
        ("scim_group_created", "scim:provisioning"),
        ("scim_group_updated", "scim:provisioning"),
        ("scim_user_updated", "scim:provisioning"),
        ("scim_group_updated", "scim:provisioning"),
        ("scim_user_deleted", "scim:provisioning"),
    ]
    assert storage(client).verify_log().ok


def test_entra_remove_with_a_value_and_a_rename(client: FlaskClient, store: LoopbackStore) -> None:
    """Entra also removes members with a value array, and renames with replace."""
    rows = Rows(client, store)
    ann = client.post(
        "/scim/v2/Users", json=entra_user("ann@contoso.com", "e-ann"), headers=ENTRA
    ).get_json()["id"]
    dan = client.post(
        "/scim/v2/Users", json=entra_user("dan@contoso.com", "e-dan"), headers=ENTRA
    ).get_json()["id"]
    gid = client.post(
        "/scim/v2/Groups",
        json={
            "schemas": [GROUP],
            "displayName": "Legal",
            "members": [{"value": ann}, {"value": dan}],
        },
        headers=ENTRA,
    ).get_json()["id"]
    make_private(client, gid)
    ann_in = rows.add("ann@contoso.com", tick())
    r = client.patch(
        f"/scim/v2/Groups/{gid}",
        json=patch(
            {"op": "Remove", "path": "members", "value": [{"value": ann}]},
            {"op": "Replace", "path": "displayName", "value": "Legal EU"},
        ),
        headers=ENTRA,
    )
    assert r.status_code == 204
    ann_out = rows.add("ann@contoso.com", tick())
    dan_in = rows.add("dan@contoso.com", tick())
    assert rows.visible() == {ann_out}
    assert {ann_in, dan_in}.isdisjoint(rows.visible())
    group = client.get(f"/scim/v2/Groups/{gid}", headers=ENTRA).get_json()
    assert group["displayName"] == "Legal EU"
    assert [m["value"] for m in group["members"]] == [dan]


def test_entra_attribute_updates(client: FlaskClient) -> None:
    """Entra's updates of profile attributes: extension paths, the manager as a bare id."""
    uid = client.post(
        "/scim/v2/Users", json=entra_user("max@contoso.com", "e-max"), headers=ENTRA
    ).get_json()["id"]
    r = client.patch(
        f"/scim/v2/Users/{uid}",
        json=patch(
            {"op": "Add", "path": f"{ENTERPRISE}:manager", "value": "boss-id"},
            {"op": "Replace", "path": f"{ENTERPRISE}:department", "value": "Legal"},
            {"op": "Replace", "path": "name.givenName", "value": "Maxine"},
            {"op": "Add", "path": 'addresses[type eq "work"].locality', "value": "Paris"},
        ),
        headers=ENTRA,
    )
    assert r.status_code == 200, r.get_json()
    user = client.get(f"/scim/v2/Users/{uid}", headers=ENTRA).get_json()
    assert user[ENTERPRISE]["manager"]["value"] == "boss-id"
    assert user[ENTERPRISE]["department"] == "Legal"
    assert user["name"]["givenName"] == "Maxine"
    assert user["addresses"] == [{"type": "work", "locality": "Paris"}]


def test_entra_user_rename_keeps_the_old_name_private(
    client: FlaskClient, store: LoopbackStore
) -> None:
    rows = Rows(client, store)
    eve = client.post(
        "/scim/v2/Users", json=entra_user("eve@contoso.com", "e-eve"), headers=ENTRA
    ).get_json()["id"]
    gid = client.post(
        "/scim/v2/Groups",
        json={"schemas": [GROUP], "displayName": "HR", "members": [{"value": eve}]},
        headers=ENTRA,
    ).get_json()["id"]
    make_private(client, gid)
    old_name = rows.add("eve@contoso.com", tick())
    r = client.patch(
        f"/scim/v2/Users/{eve}",
        json=patch(
            {"op": "Replace", "path": "userName", "value": "eve.new@contoso.com"},
            {
                "op": "Replace",
                "path": 'emails[type eq "work"].value',
                "value": "eve.new@contoso.com",
            },
        ),
        headers=ENTRA,
    )
    assert r.status_code == 200, r.get_json()
    old_after = rows.add("eve@contoso.com", tick())
    new_name = rows.add("eve.new@contoso.com", tick())
    assert rows.visible() == {old_after}
    assert {old_name, new_name}.isdisjoint(rows.visible())


# ---- Okta -------------------------------------------------------------------------------


def test_okta_sequence_privacy_follows_membership(
    client: FlaskClient, store: LoopbackStore
) -> None:
    rows = Rows(client, store)
    found = client.get(
        '/scim/v2/Users?filter=userName eq "carol@contoso.com"&startIndex=1&count=100', headers=OKTA
    )
    assert found.get_json()["totalResults"] == 0
    created = client.post("/scim/v2/Users", json=okta_user("carol@contoso.com"), headers=OKTA)
    assert created.status_code == 201, created.get_json()
    carol = created.get_json()["id"]
    frank = client.post(
        "/scim/v2/Users", json=okta_user("frank@contoso.com"), headers=OKTA
    ).get_json()["id"]
    group = client.post(
        "/scim/v2/Groups",
        json={"schemas": [GROUP], "displayName": "Sales", "members": []},
        headers=OKTA,
    )
    gid = group.get_json()["id"]
    make_private(client, gid)

    # Okta renames with the id in the value, and adds members with a value array.
    renamed = client.patch(
        f"/scim/v2/Groups/{gid}",
        json=patch({"op": "replace", "value": {"id": gid, "displayName": "Sales EMEA"}}),
        headers=OKTA,
    )
    assert renamed.status_code == 204, renamed.get_data(as_text=True)
    added = client.patch(
        f"/scim/v2/Groups/{gid}",
        json=patch(
            {
                "op": "add",
                "path": "members",
                "value": [{"value": carol, "display": "carol@contoso.com"}],
            }
        ),
        headers=OKTA,
    )
    assert added.status_code == 204
    carol_in = rows.add("carol@contoso.com", tick())
    frank_out = rows.add("frank@contoso.com", tick())
    assert rows.visible() == {frank_out}

    # Okta's full-member replace (PATCH) swaps Carol for Frank.
    swapped = client.patch(
        f"/scim/v2/Groups/{gid}",
        json=patch({"op": "replace", "path": "members", "value": [{"value": frank}]}),
        headers=OKTA,
    )
    assert swapped.status_code == 204
    carol_out = rows.add("carol@contoso.com", tick())
    frank_in = rows.add("frank@contoso.com", tick())
    # who joins counts for the whole interval (Veil remembers leave times, not join times)
    assert rows.visible() == {carol_out}

    # ...and the whole group by PUT: Carol back, Frank out.
    put = client.put(
        f"/scim/v2/Groups/{gid}",
        json={
            "schemas": [GROUP],
            "id": gid,
            "displayName": "Sales EMEA",
            "members": [{"value": carol, "display": "carol@contoso.com"}],
        },
        headers=OKTA,
    )
    assert put.status_code == 200, put.get_json()
    assert [m["value"] for m in put.get_json()["members"]] == [carol]
    frank_after = rows.add("frank@contoso.com", tick())
    assert rows.visible() == {frank_after}  # Carol is back: her whole interval is private
    assert {carol_in, carol_out, frank_in, frank_out}.isdisjoint(rows.visible())

    # Deactivation: Okta's path-less replace. Carol stays a member.
    off = client.patch(
        f"/scim/v2/Users/{carol}",
        json=patch({"op": "replace", "value": {"active": False}}),
        headers=OKTA,
    )
    assert off.status_code == 200 and off.get_json()["active"] is False
    carol_inactive = rows.add("carol@contoso.com", tick())
    assert carol_inactive not in rows.visible()

    listed = storage(client).list_groups()
    assert [(g["id"], g["source"], g["name"]) for g in listed] == [(gid, "scim", "Sales EMEA")]
    assert client.delete(f"/scim/v2/Groups/{gid}", headers=OKTA).status_code == 204
    assert client.get(f"/scim/v2/Groups/{gid}", headers=OKTA).status_code == 404
    # A deleted private group keeps what it made private (a tombstone for R1).
    assert {carol_in, frank_in, carol_inactive}.isdisjoint(rows.visible())
    assert storage(client).list_groups()[0]["deleted_at"] is not None


# ---- errors change nothing --------------------------------------------------------------


def snapshot(client: FlaskClient) -> tuple[Any, ...]:
    s = storage(client)
    return (
        len(log(client)),
        s.state_version(),
        json.dumps(s.list_groups()),
        client.get("/scim/v2/Users", headers=SCIM).get_json()["Resources"],
    )


@pytest.fixture
def populated(client: FlaskClient) -> tuple[str, str]:
    uid = client.post(
        "/scim/v2/Users", json=entra_user("gus@contoso.com", "e-gus"), headers=SCIM
    ).get_json()["id"]
    gid = client.post(
        "/scim/v2/Groups",
        json={"schemas": [GROUP], "displayName": "Ops", "members": [{"value": uid}]},
        headers=SCIM,
    ).get_json()["id"]
    make_private(client, gid)
    return uid, gid


def assert_scim_error(response: Any, status: int, scim_type: str | None) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/scim+json"
    body = response.get_json()
    assert body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
    assert body["status"] == str(status)
    assert body.get("scimType") == scim_type
    assert body["detail"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        A,
    ],
)
def test_bad_token_is_401_and_changes_nothing(
    client: FlaskClient, populated: tuple[str, str], headers: dict[str, str]
) -> None:
    uid, gid = populated
    before = snapshot(client)
    for method, path, body in (
        ("post", "/scim/v2/Users", entra_user("x@contoso.com", "e-x")),
        ("patch", f"/scim/v2/Groups/{gid}", patch({"op": "remove", "path": "members"})),
        ("delete", f"/scim/v2/Users/{uid}", None),
        ("get", "/scim/v2/Users", None),
    ):
        response = getattr(client, method)(path, json=body, headers=headers)
        assert_scim_error(response, 401, None)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert snapshot(client) == before


@pytest.mark.parametrize(
    ("operations", "scim_type"),
    [
        ([{"op": "Frobnicate", "path": "members", "value": []}], "invalidValue"),
        ([{"op": "add", "path": "members", "value": [{"nope": 1}]}], "invalidValue"),
        ([{"op": "add", "path": "members", "value": [{"value": "no-such-user"}]}], "invalidValue"),
        ([{"op": "add", "path": "nosuchattribute", "value": "x"}], "invalidPath"),
        ([{"op": "remove", "path": 'members[display co "x"]'}], "invalidFilter"),
        ([{"op": "add", "path": 'members[value eq "x"]', "value": [{"value": "x"}]}], "noTarget"),
        ([{"op": "replace", "value": "not an object"}], "invalidValue"),
        ([], "invalidValue"),
        # nothing half-applied: the valid first operation is not kept
        (
            [
                {"op": "Remove", "path": "members"},
                {"op": "Replace", "path": "displayName", "value": 5},
            ],
            "invalidValue",
        ),
        (
            [
                {"op": "Replace", "path": "displayName", "value": "Renamed"},
                {"op": "add", "path": "members", "value": [{"value": "no-such-user"}]},
            ],
            "invalidValue",
        ),
    ],
)
def test_malformed_patch_is_400_and_changes_nothing(
    client: FlaskClient,
    populated: tuple[str, str],
    operations: list[dict[str, Any]],
    scim_type: str,
) -> None:
    _, gid = populated
    before = snapshot(client)
    response = client.patch(f"/scim/v2/Groups/{gid}", json=patch(*operations), headers=SCIM)
    assert_scim_error(response, 400, scim_type)
    assert snapshot(client) == before


def test_patch_body_that_is_not_a_patchop(client: FlaskClient, populated: tuple[str, str]) -> None:
    uid, gid = populated
    before = snapshot(client)
    assert_scim_error(
        client.patch(f"/scim/v2/Groups/{gid}", json={"Operations": []}, headers=SCIM),
        400,
        "invalidSyntax",
    )
    assert_scim_error(
        client.patch(
            f"/scim/v2/Users/{uid}",
            data=b"{not json",
            headers={**SCIM, "Content-Type": "application/scim+json"},
        ),
        400,
        "invalidSyntax",
    )
    nested: Any = {"v": 1}
    for _ in range(100):
        nested = {"v": nested}
    assert_scim_error(
        client.patch(
            f"/scim/v2/Users/{uid}",
            json=patch({"op": "replace", "path": "title", "value": nested}),
            headers=SCIM,
        ),
        400,
        "invalidSyntax",
    )
    assert snapshot(client) == before


def test_uniqueness_conflict_is_409_and_changes_nothing(
    client: FlaskClient, populated: tuple[str, str]
) -> None:
    uid, _ = populated
    other = client.post(
        "/scim/v2/Users", json=entra_user("hal@contoso.com", "e-hal"), headers=SCIM
    ).get_json()["id"]
    before = snapshot(client)
    # userName is not case-exact: GUS@contoso.com is gus@contoso.com
    assert_scim_error(
        client.post("/scim/v2/Users", json=entra_user("GUS@contoso.com", "e-2"), headers=SCIM),
        409,
        "uniqueness",
    )
    assert_scim_error(
        client.put(
            f"/scim/v2/Users/{other}", json=entra_user("gus@contoso.com", "e-hal"), headers=SCIM
        ),
        409,
        "uniqueness",
    )
    assert_scim_error(
        client.patch(
            f"/scim/v2/Users/{other}",
            json=patch({"op": "replace", "path": "userName", "value": "Gus@Contoso.com"}),
            headers=SCIM,
        ),
        409,
        "uniqueness",
    )
    assert snapshot(client) == before
    assert uid != other


def test_unknown_attribute_is_400_and_changes_nothing(
    client: FlaskClient, populated: tuple[str, str]
) -> None:
    uid, gid = populated
    before = snapshot(client)
    body = {**entra_user("ivy@contoso.com", "e-ivy"), "favouriteColour": "blue"}
    assert_scim_error(client.post("/scim/v2/Users", json=body, headers=SCIM), 400, "invalidSyntax")
    assert_scim_error(
        client.put(
            f"/scim/v2/Groups/{gid}",
            json={"schemas": [GROUP], "displayName": "Ops", "owner": "me"},
            headers=SCIM,
        ),
        400,
        "invalidSyntax",
    )
    assert_scim_error(
        client.patch(
            f"/scim/v2/Users/{uid}",
            json=patch({"op": "add", "path": "favouriteColour", "value": "blue"}),
            headers=SCIM,
        ),
        400,
        "invalidPath",
    )
    assert snapshot(client) == before


def test_principals_with_whitespace_are_refused(client: FlaskClient) -> None:
    before = snapshot(client)
    for name in ("bob smith@contoso.com", "bob@contoso.com\n", "bob\x00@contoso.com"):
        assert_scim_error(
            client.post("/scim/v2/Users", json=entra_user(name, "e"), headers=SCIM),
            400,
            "invalidValue",
        )
    body = entra_user("kim@contoso.com", "e-kim", mail="kim @contoso.com")
    assert_scim_error(client.post("/scim/v2/Users", json=body, headers=SCIM), 400, "invalidValue")
    assert snapshot(client) == before


def test_resending_the_same_state_writes_nothing(
    client: FlaskClient, populated: tuple[str, str]
) -> None:
    uid, gid = populated
    user = client.get(f"/scim/v2/Users/{uid}", headers=SCIM).get_json()
    before = snapshot(client)
    assert (
        client.put(
            f"/scim/v2/Users/{uid}", json=entra_user("gus@contoso.com", "e-gus"), headers=SCIM
        ).status_code
        == 200
    )
    assert (
        client.patch(
            f"/scim/v2/Users/{uid}",
            json=patch({"op": "Replace", "path": "active", "value": "True"}),
            headers=SCIM,
        ).status_code
        == 200
    )
    for _ in range(2):
        assert (
            client.patch(
                f"/scim/v2/Groups/{gid}",
                json=patch({"op": "Add", "path": "members", "value": [{"value": uid}]}),
                headers=SCIM,
            ).status_code
            == 204
        )
    assert (
        client.patch(
            f"/scim/v2/Groups/{gid}",
            json=patch({"op": "Remove", "path": 'members[value eq "not-a-member"]'}),
            headers=SCIM,
        ).status_code
        == 204
    )
    assert snapshot(client) == before
    assert client.get(f"/scim/v2/Users/{uid}", headers=SCIM).get_json() == user


# ---- reading: filters, paging, ETags, discovery ----------------------------------------


def test_filters_and_paging(client: FlaskClient) -> None:
    made = [
        client.post(
            "/scim/v2/Users", json=entra_user(f"u{i}@contoso.com", f"x{i}"), headers=SCIM
        ).get_json()["id"]
        for i in range(5)
    ]
    page = client.get("/scim/v2/Users?startIndex=2&count=2", headers=SCIM).get_json()
    assert (page["totalResults"], page["startIndex"], page["itemsPerPage"]) == (5, 2, 2)
    assert [u["id"] for u in page["Resources"]] == made[1:3]
    assert client.get("/scim/v2/Users?count=0", headers=SCIM).get_json()["Resources"] == []
    for query, expected in (
        ('userName eq "U3@CONTOSO.com"', [made[3]]),
        ('externalId eq "x4"', [made[4]]),
        ('externalId eq "X4"', []),  # externalId is case-exact
        (f'id eq "{made[0]}"', [made[0]]),
        ('displayName eq "U2"', [made[2]]),
    ):
        found = client.get("/scim/v2/Users", query_string={"filter": query}, headers=SCIM)
        assert [u["id"] for u in found.get_json()["Resources"]] == expected, query
    gid = client.post(
        "/scim/v2/Groups",
        json={
            "schemas": [GROUP],
            "displayName": "Audit",
            "externalId": "g-audit",
            "members": [{"value": made[0]}],
        },
        headers=SCIM,
    ).get_json()["id"]
    for query in ('displayName eq "audit"', 'externalId eq "g-audit"', f'id eq "{gid}"'):
        found = client.get(
            "/scim/v2/Groups",
            query_string={"filter": query, "excludedAttributes": "members"},
            headers=SCIM,
        ).get_json()
        assert [g["id"] for g in found["Resources"]] == [gid]
        assert "members" not in found["Resources"][0]
    searched = client.post(
        "/scim/v2/Users/.search",
        json={
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
            "filter": 'userName eq "u1@contoso.com"',
            "attributes": ["userName"],
        },
        headers=SCIM,
    )
    assert [u.get("userName") for u in searched.get_json()["Resources"]] == ["u1@contoso.com"]
    assert "emails" not in searched.get_json()["Resources"][0]
    for bad in ('userName co "u"', 'title eq "x"', "userName eq", 'emails.value eq "x"'):
        assert_scim_error(
            client.get("/scim/v2/Users", query_string={"filter": bad}, headers=SCIM),
            400,
            "invalidFilter",
        )


def test_etags(client: FlaskClient, populated: tuple[str, str]) -> None:
    uid, gid = populated
    got = client.get(f"/scim/v2/Users/{uid}", headers=SCIM)
    tag = got.headers["ETag"]
    assert got.get_json()["meta"]["version"] == tag
    assert (
        client.get(f"/scim/v2/Users/{uid}", headers={**SCIM, "If-None-Match": tag}).status_code
        == 304
    )
    before = snapshot(client)
    stale = {**SCIM, "If-Match": 'W/"999"'}
    assert_scim_error(
        client.patch(
            f"/scim/v2/Users/{uid}",
            json=patch({"op": "replace", "path": "title", "value": "Boss"}),
            headers=stale,
        ),
        412,
        None,
    )
    assert_scim_error(client.delete(f"/scim/v2/Groups/{gid}", headers=stale), 412, None)
    assert snapshot(client) == before
    ok = client.patch(
        f"/scim/v2/Users/{uid}",
        json=patch({"op": "replace", "path": "title", "value": "Boss"}),
        headers={**SCIM, "If-Match": tag},
    )
    assert ok.status_code == 200 and ok.headers["ETag"] != tag


def test_discovery(client: FlaskClient) -> None:
    config = client.get("/scim/v2/ServiceProviderConfig", headers=SCIM).get_json()
    assert config["patch"]["supported"] and config["etag"]["supported"]
    assert not config["bulk"]["supported"]
    types = client.get("/scim/v2/ResourceTypes", headers=SCIM).get_json()["Resources"]
    assert {t["endpoint"] for t in types} == {"/Users", "/Groups"}
    schemas = client.get("/scim/v2/Schemas", headers=SCIM).get_json()["Resources"]
    assert {s["id"] for s in schemas} == {USER, ENTERPRISE, GROUP}
    one = client.get(f"/scim/v2/Schemas/{GROUP}", headers=SCIM)
    assert one.status_code == 200 and one.get_json()["id"] == GROUP
    assert_scim_error(client.get("/scim/v2/Nope", headers=SCIM), 404, None)
    assert_scim_error(client.delete("/scim/v2/ServiceProviderConfig", headers=SCIM), 405, None)
    assert_scim_error(client.post("/scim/v2/.search", json={}, headers=SCIM), 501, None)


# ---- off without a token, separate from the JWT identity --------------------------------


@pytest.mark.parametrize("sections", [{}, {"scim": {"token_env": "VEIL_SCIM_TOKEN"}}])
def test_off_without_a_token(store: LoopbackStore, tmp_path: Any, sections: dict[str, Any]) -> None:
    app = make_app(store, f"sqlite:///{tmp_path / 'veil.db'}", {}, **sections)
    client = app.test_client()
    for path in ("/scim/v2/Users", "/scim/v2/ServiceProviderConfig"):
        assert_scim_error(client.get(path, headers=SCIM), 404, None)
    assert (
        client.post(
            "/scim/v2/Users", json=entra_user("a@contoso.com", "e"), headers=SCIM
        ).status_code
        == 404
    )
    assert app.extensions["veil"].storage.list_groups() == []


def test_scim_token_is_not_a_management_identity(client: FlaskClient) -> None:
    assert client.get("/veil/v1/groups", headers=SCIM).status_code == 401
    assert client.get("/api/activities", headers=SCIM).status_code == 401


# ---- Veil's own view of SCIM groups -----------------------------------------------------


def test_api_and_data_document_see_scim_groups(
    client: FlaskClient, populated: tuple[str, str]
) -> None:
    uid, gid = populated
    client.put(
        "/veil/v1/groups/manual", json={"name": "Manual", "members": ["x@contoso.com"]}, headers=A
    )
    other = client.post(
        "/scim/v2/Groups",
        json={"schemas": [GROUP], "displayName": "Other", "members": [{"value": uid}]},
        headers=SCIM,
    ).get_json()["id"]
    listed = {g["id"]: g for g in client.get("/veil/v1/groups", headers=A).get_json()["groups"]}
    assert listed["manual"]["source"] == "api"
    assert listed[gid]["source"] == "scim" and listed[gid]["members"] == ["gus@contoso.com"]
    assert listed[other]["source"] == "scim"
    # SCIM groups are changed only by the identity provider.
    conflict = client.put(f"/veil/v1/groups/{gid}", json={"name": "X", "members": []}, headers=A)
    assert conflict.status_code == 409
    assert client.delete(f"/veil/v1/groups/{other}", headers=A).status_code == 409
    # data.veil carries only groups that are or were private: not "manual", not "other".
    _, data = storage(client).policy_data(("contoso.com",))
    assert set(data["groups"]) == {gid}
    assert data["groups"][gid]["members"] == {"gus@contoso.com": True}


def test_changes_to_groups_never_private_leave_the_policy_data_alone(
    client: FlaskClient, populated: tuple[str, str]
) -> None:
    uid, _ = populated
    version = storage(client).state_version()
    other = client.post(
        "/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "Big"}, headers=SCIM
    ).get_json()["id"]
    client.patch(
        f"/scim/v2/Groups/{other}",
        json=patch({"op": "add", "path": "members", "value": [{"value": uid}]}),
        headers=SCIM,
    )
    client.post("/scim/v2/Users", json=entra_user("new@contoso.com", "e-new"), headers=SCIM)
    assert storage(client).state_version() == version
    # a change to a private group's members is a new state: the engine reloads it
    client.patch(
        f"/scim/v2/Users/{uid}",
        json=patch({"op": "add", "path": "emails", "value": [{"value": "gus2@contoso.com"}]}),
        headers=SCIM,
    )
    assert storage(client).state_version() == version + 1


def test_deleting_a_group_never_private_removes_it(client: FlaskClient) -> None:
    gid = client.post(
        "/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "Tmp"}, headers=SCIM
    ).get_json()["id"]
    assert client.delete(f"/scim/v2/Groups/{gid}", headers=SCIM).status_code == 204
    assert storage(client).list_groups() == []
    assert_scim_error(client.delete(f"/scim/v2/Groups/{gid}", headers=SCIM), 404, None)


def test_cli_groups_list_shows_the_source(
    client: FlaskClient,
    populated: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
    storage_url: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import yaml

    from veil.cli import main

    monkeypatch.setenv("VEIL_TEST_JWT_SECRET", SECRET)
    _, gid = populated
    config = client.application.extensions["veil"].config
    path = tmp_path / "veil.yaml"
    path.write_text(yaml.safe_dump(config_doc(config.upstream.url, storage_url)))
    assert main(["groups", "list", "--config", str(path)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(g["id"], g["source"]) for g in listed] == [(gid, "scim")]


def test_request_above_the_body_limit_is_413(store: LoopbackStore, tmp_path: Any) -> None:
    app = make_app(
        store,
        f"sqlite:///{tmp_path / 'veil.db'}",
        {"VEIL_SCIM_TOKEN": TOKEN},
        scim={"token_env": "VEIL_SCIM_TOKEN", "max_body_bytes": 2048},
    )
    client = app.test_client()
    body = entra_user("big@contoso.com", "e-big")
    body["title"] = "x" * 4096
    assert_scim_error(client.post("/scim/v2/Users", json=body, headers=SCIM), 413, "tooLarge")
    assert (
        client.post(
            "/scim/v2/Users", json=entra_user("ok@contoso.com", "e-ok"), headers=SCIM
        ).status_code
        == 201
    )
    assert [r["action"] for r in app.extensions["veil"].storage.iter_log()] == ["scim_user_created"]


def test_concurrent_patches_are_each_applied_once(
    client: FlaskClient, populated: tuple[str, str]
) -> None:
    """One transaction per request: concurrent member additions to one group all land, each
    with its own governance record, and the chain stays whole."""
    from concurrent.futures import ThreadPoolExecutor

    _, gid = populated
    app = client.application
    users = [
        client.post(
            "/scim/v2/Users", json=entra_user(f"c{i}@contoso.com", f"c{i}"), headers=SCIM
        ).get_json()["id"]
        for i in range(12)
    ]
    records = len(log(client))

    def add(uid: str) -> int:
        status: int = (
            app.test_client()
            .patch(
                f"/scim/v2/Groups/{gid}",
                json=patch({"op": "Add", "path": "members", "value": [{"value": uid}]}),
                headers=SCIM,
            )
            .status_code
        )
        return status

    with ThreadPoolExecutor(6) as pool:
        assert set(pool.map(add, users)) == {204}
    group = client.get(f"/scim/v2/Groups/{gid}", headers=SCIM)
    assert len(group.get_json()["members"]) == 13
    assert group.headers["ETag"] == 'W/"13"'  # created at 1, then 12 changes
    assert len(log(client)) == records + 12
    assert storage(client).verify_log().ok
