"""The management API: validated bodies, problem+json errors, state rules, OpenAPI."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from conftest import ADMIN, auth

A = auth(ADMIN)


@pytest.mark.parametrize(
    "method,path,body,field",
    [
        ("put", "/veil/v1/groups/finance", {"members": []}, "name"),
        ("put", "/veil/v1/groups/finance", {"name": "F", "members": "ann"}, "members"),
        ("put", "/veil/v1/groups/finance", {"name": "F", "members": [""]}, "members.0"),
        ("put", "/veil/v1/groups/finance", {"name": "F", "members": [], "owner": "x"}, "owner"),
        ("post", "/veil/v1/privacy-groups", {}, "group"),
        ("post", "/veil/v1/privacy-groups", {"group": "bad id!"}, "group"),
        ("post", "/veil/v1/privacy-groups", {"group": "finance", "since": "2020"}, "since"),
        ("post", "/veil/v1/admins", {"principal": 7}, "principal"),
        ("post", "/veil/v1/private-viewers", {"who": ADMIN}, "who"),
        ("post", "/veil/v1/private-viewers", {}, "principal"),
        ("post", "/veil/v1/reveal-sessions", {"justification": "x"}, "acknowledge_audit"),
        (
            "post",
            "/veil/v1/reveal-sessions",
            {"acknowledge_audit": False, "justification": "x"},
            "acknowledge_audit",
        ),
    ],
    ids=[
        "missing",
        "type",
        "empty-member",
        "unknown-field",
        "group-missing",
        "group-pattern",
        "group-unknown-field",
        "principal-type",
        "principal-misnamed",
        "principal-missing",
        "no-ack",
        "false-ack",
    ],
)
def test_bad_bodies_are_400_naming_the_field(
    client: FlaskClient, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    r = getattr(client, method)(path, json=body, headers=A)
    assert r.status_code == 400, r.get_json()
    problem = r.get_json()
    assert r.mimetype == "application/problem+json"
    assert problem["field"] == field
    assert field.split(".")[0] in problem["detail"]
    assert {"type", "title", "status", "detail", "code"} <= set(problem)


def test_body_that_is_not_json(client: FlaskClient) -> None:
    r = client.post("/veil/v1/privacy-groups", data="group=x", headers=A)
    assert r.status_code == 400
    assert "JSON" in r.get_json()["detail"]
    r = client.post(
        "/veil/v1/privacy-groups", data="{nope", headers={**A, "Content-Type": "application/json"}
    )
    assert r.status_code == 400


@pytest.mark.storage
def test_unknown_group_is_refused(client: FlaskClient) -> None:
    r = client.post("/veil/v1/privacy-groups", json={"group": "ghosts"}, headers=A)
    assert r.status_code == 422
    assert "unknown group 'ghosts'" in r.get_json()["detail"]
    assert client.get("/veil/v1/privacy-groups", headers=A).get_json()["privacy_groups"] == []


@pytest.mark.storage
def test_group_lifecycle(client: FlaskClient) -> None:
    r = client.put(
        "/veil/v1/groups/finance",
        json={"name": "Finance", "members": ["B@x.com", "a@x.com", "a@X.com"]},
        headers=A,
    )
    assert r.status_code == 201
    assert r.get_json() == {"id": "finance", "name": "Finance", "members": ["a@x.com", "b@x.com"]}
    r = client.put("/veil/v1/groups/finance", json={"name": "Finance", "members": []}, headers=A)
    assert r.status_code == 200
    groups = client.get("/veil/v1/groups", headers=A).get_json()["groups"]
    assert [(g["id"], g["members"]) for g in groups] == [("finance", [])]
    assert client.delete("/veil/v1/groups/finance", headers=A).status_code == 204
    assert client.delete("/veil/v1/groups/finance", headers=A).status_code == 404


@pytest.mark.storage
def test_builtin_groups_cannot_be_imported(client: FlaskClient) -> None:
    r = client.put("/veil/v1/groups/external", json={"name": "x", "members": []}, headers=A)
    assert r.status_code == 409


@pytest.mark.storage
def test_a_group_with_privacy_history_cannot_be_deleted(client: FlaskClient) -> None:
    client.put("/veil/v1/groups/hr", json={"name": "HR", "members": ["x@contoso.com"]}, headers=A)
    client.post("/veil/v1/privacy-groups", json={"group": "hr"}, headers=A)
    client.delete("/veil/v1/privacy-groups/hr", headers=A)
    r = client.delete("/veil/v1/groups/hr", headers=A)
    assert r.status_code == 409
    assert [g["id"] for g in client.get("/veil/v1/groups", headers=A).get_json()["groups"]] == [
        "hr"
    ]


@pytest.mark.storage
def test_privacy_group_conflicts(client: FlaskClient) -> None:
    assert (
        client.post("/veil/v1/privacy-groups", json={"group": "external"}, headers=A).status_code
        == 201
    )
    assert (
        client.post("/veil/v1/privacy-groups", json={"group": "external"}, headers=A).status_code
        == 409
    )
    assert client.delete("/veil/v1/privacy-groups/external", headers=A).status_code == 204
    assert client.delete("/veil/v1/privacy-groups/external", headers=A).status_code == 404
    listed = client.get("/veil/v1/privacy-groups", headers=A).get_json()["privacy_groups"]
    assert listed[0]["group"] == "external" and listed[0]["private"] is False
    assert len(listed[0]["intervals"]) == 1 and listed[0]["intervals"][0]["end"] is not None


@pytest.mark.storage
def test_admin_registry(client: FlaskClient) -> None:
    assert (
        client.post(
            "/veil/v1/admins", json={"principal": "Carol@Contoso.com"}, headers=A
        ).status_code
        == 201
    )
    assert (
        client.post(
            "/veil/v1/admins", json={"principal": "carol@contoso.com"}, headers=A
        ).status_code
        == 409
    )
    carol = auth("carol@contoso.com")
    assert client.get("/veil/v1/admins", headers=carol).status_code == 200
    assert client.delete(f"/veil/v1/admins/{ADMIN}", headers=carol).status_code == 409
    assert client.delete("/veil/v1/admins/carol@contoso.com", headers=A).status_code == 204
    assert client.get("/veil/v1/admins", headers=carol).status_code == 403
