"""The console's web safety and configuration, with Flask's test client (the browser tests
cover the procedures): cookies, cross-site and CSRF refusals, who may sign in how."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from veil import config as config_module
from veil.app import create_app
from veil.errors import ConfigError

from conftest import ADMIN, SECRET, LoopbackStore, auth, config_doc, make_config

KEY = "console-cookie-key-that-is-long-enough-0123456789"
GATEWAY = "gateway-secret"


def header_app(store: LoopbackStore, tmp_path: Path, **console: Any) -> Flask:
    doc = config_doc(
        store.url,
        f"sqlite:///{tmp_path / 'veil.db'}",
        identity={"mode": "header", "secret_env": "GW", "bootstrap_admins": [ADMIN]},
        console={"enabled": True, "secret_key_env": "KEY", **console},
    )
    return create_app(config_module.from_dict(doc, env={"GW": GATEWAY, "KEY": KEY}))


@pytest.fixture
def app(store: LoopbackStore, tmp_path: Path) -> Iterator[Flask]:
    application = header_app(store, tmp_path)
    yield application
    application.extensions["veil"].storage.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def gateway(principal: str = ADMIN, secret: str = GATEWAY) -> dict[str, str]:
    return {"X-Forwarded-User": principal, "X-Veil-Gateway-Secret": secret}


def token_of(client: FlaskClient) -> str:
    with client.session_transaction("/console/") as session:
        token: str = session["csrf"]
    return token


def private_groups(app: Flask) -> list[str]:
    groups = app.extensions["veil"].storage.list_privacy_groups()
    return [g["group"] for g in groups if g["private"]]


def test_cookie_is_secure_except_on_loopback(client: FlaskClient) -> None:
    local = client.get("/console/activity", headers=gateway())
    assert local.status_code == 200
    cookie = local.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie
    remote = client.get(
        "/console/activity",
        headers=gateway("carol@contoso.com"),
        base_url="http://veil.contoso.com",
    )
    assert "Secure" in remote.headers["Set-Cookie"]


def test_post_needs_the_session_csrf_token(app: Flask, client: FlaskClient) -> None:
    client.get("/console/privacy", headers=gateway())
    form = {"group": "application"}
    assert client.post("/console/privacy/add", data=form, headers=gateway()).status_code == 403
    bad = client.post(
        "/console/privacy/add", data={**form, "csrf_token": "x" * 43}, headers=gateway()
    )
    assert bad.status_code == 403 and b"CSRF token" in bad.data
    assert private_groups(app) == []
    good = client.post(
        "/console/privacy/add", data={**form, "csrf_token": token_of(client)}, headers=gateway()
    )
    assert good.status_code == 302
    assert private_groups(app) == ["application"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_cross_site_post_is_refused_even_with_the_token(
    app: Flask, client: FlaskClient, headers: dict[str, str]
) -> None:
    client.get("/console/privacy", headers=gateway())
    answer = client.post(
        "/console/privacy/add",
        data={"group": "external", "csrf_token": token_of(client)},
        headers={**gateway(), **headers},
    )
    assert answer.status_code == 403
    assert private_groups(app) == []
    same = client.post(
        "/console/privacy/add",
        data={"group": "external", "csrf_token": token_of(client)},
        headers={**gateway(), "Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"},
    )
    assert same.status_code == 302 and private_groups(app) == ["external"]


def test_a_new_gateway_user_gets_a_new_session(client: FlaskClient) -> None:
    client.get("/console/activity", headers=gateway())
    with client.session_transaction("/console/") as session:
        session["reveal"] = {"id": "rs_alices", "expires_at": "2999-01-01T00:00:00.000000Z"}
        alices_token = session["csrf"]
    client.get("/console/activity", headers=gateway("bob@contoso.com"))
    with client.session_transaction("/console/") as session:
        assert session["principal"] == "bob@contoso.com"
        assert "reveal" not in session and session["csrf"] != alices_token


def test_wrong_gateway_secret_is_not_signed_in(client: FlaskClient) -> None:
    answer = client.get("/console/activity", headers=gateway(secret="wrong"))
    assert answer.status_code == 401 and b"gateway did not identify you" in answer.data


def test_non_admin_pages_are_forbidden(client: FlaskClient) -> None:
    for path in (
        "/console/privacy",
        "/console/admin-access/permissions",
        "/console/admin-access/admins",
        "/console/governance",
        "/console/groups",
    ):
        answer = client.get(path, headers=gateway("bob@contoso.com"))
        assert answer.status_code == 403, path
        assert b"not an admin" in answer.data
    assert client.get("/console/activity", headers=gateway("bob@contoso.com")).status_code == 200


def test_every_page_sends_the_security_headers(client: FlaskClient) -> None:
    for path in ("/console/activity", "/console/privacy", "/console/static/console.js"):
        answer = client.get(path, headers=gateway())
        csp = answer.headers["Content-Security-Policy"]
        assert (
            "script-src 'self'" in csp
            and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
        ), path
        assert answer.headers["X-Frame-Options"] == "DENY"
        answer.close()


def test_demo_sign_in_exists_only_in_the_demo(client: FlaskClient) -> None:
    assert client.get("/console/sign-in/demo", headers=gateway()).status_code == 404
    page = client.get("/console/sign-in", headers=gateway()).data
    assert b"Demo sign-in" not in page


def test_jwt_mode_console_needs_a_console_sign_in(store: LoopbackStore, tmp_path: Path) -> None:
    app = create_app(
        config_module.from_dict(
            config_doc(
                store.url,
                f"sqlite:///{tmp_path / 'veil.db'}",
                console={"enabled": True, "secret_key_env": "KEY"},
            ),
            env={"VEIL_TEST_JWT_SECRET": SECRET, "KEY": KEY},
        )
    )
    client = app.test_client()
    # A bearer token is the API's identity, not a console sign-in.
    answer = client.get("/console/activity", headers=auth(ADMIN))
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/console/sign-in")
    page = client.get("/console/sign-in").data
    assert b"No sign-in is configured" in page
    assert client.get("/console/sign-in/oidc").status_code == 404
    app.extensions["veil"].storage.close()


def test_console_disabled_serves_nothing(store: LoopbackStore, tmp_path: Path) -> None:
    app = create_app(make_config(store.url, f"sqlite:///{tmp_path / 'veil.db'}"))
    answer = app.test_client().get("/console/activity", headers=auth(ADMIN))
    assert answer.status_code == 404
    app.extensions["veil"].storage.close()


@pytest.mark.parametrize(
    ("section", "env", "message"),
    [
        ({"console": {"enabled": True}}, {}, "console.secret_key_env"),
        (
            {"console": {"enabled": True, "secret_key_env": "KEY"}},
            {"KEY": "short"},
            "at least 32 characters",
        ),
        ({"console": {"enabled": True, "secret_key_env": "KEY"}}, {}, "KEY is not set"),
        (
            {
                "identity": {
                    "oidc": {
                        "issuer": "https://idp.example",
                        "client_id": "veil",
                        "redirect_url": "https://veil.example/console/sign-in/callback",
                        "scopes": ["email"],
                    }
                }
            },
            {},
            "identity.oidc.scopes",
        ),
        (
            {
                "identity": {
                    "oidc": {
                        "issuer": "https://idp.example",
                        "client_id": "veil",
                        "redirect_url": "https://veil.example/console/sign-in/callback",
                        "client_secret_env": "OIDC",
                    }
                }
            },
            {},
            "OIDC is not set",
        ),
        (
            {
                "identity": {
                    "oidc": {
                        "issuer": "idp.example",
                        "client_id": "veil",
                        "redirect_url": "https://veil.example/cb",
                    }
                }
            },
            {},
            "identity.oidc.issuer",
        ),
        (
            {"console": {"enabled": True, "secret_key_env": "KEY", "colour": "blue"}},
            {"KEY": KEY},
            "console.colour: unknown key",
        ),
        (
            {
                "console": {
                    "enabled": True,
                    "secret_key_env": "KEY",
                    "activities": {"route": "/api/unlisted"},
                }
            },
            {"KEY": KEY},
            "console.activities.route: /api/unlisted is not one of upstream.routes",
        ),
    ],
)
def test_bad_console_configuration_names_the_key(
    store: LoopbackStore, section: dict[str, Any], env: dict[str, str], message: str
) -> None:
    doc = config_doc(store.url, "sqlite:///x.db", **section)
    with pytest.raises(ConfigError, match=message):
        config_module.from_dict(doc, env={"VEIL_TEST_JWT_SECRET": SECRET, **env})


def test_unreachable_identity_provider_is_a_clear_error(
    store: LoopbackStore, tmp_path: Path
) -> None:
    doc = config_doc(
        store.url,
        f"sqlite:///{tmp_path / 'veil.db'}",
        identity={
            "oidc": {
                "issuer": "http://127.0.0.1:9",
                "client_id": "veil",
                "redirect_url": "http://127.0.0.1/console/sign-in/cb",
            }
        },
        console={"enabled": True, "secret_key_env": "KEY"},
    )
    app = create_app(config_module.from_dict(doc, env={"VEIL_TEST_JWT_SECRET": SECRET, "KEY": KEY}))
    answer = app.test_client().get("/console/sign-in/oidc")
    assert answer.status_code == 502 and b"identity provider could not be reached" in answer.data
    app.extensions["veil"].storage.close()


def test_browser_tests_fail_without_chromium_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    import browser

    monkeypatch.setattr(browser, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium"):
        browser.need_chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        browser.need_chromium()


def test_show_private_checks_the_form_as_the_api_checks_its_body(
    app: Flask, client: FlaskClient
) -> None:
    storage = app.extensions["veil"].storage
    storage.add_admin("dave@contoso.com", ADMIN)
    storage.grant_viewer("dave@contoso.com", ADMIN)
    dave = gateway("dave@contoso.com")
    client.get("/console/activity", headers=dave)

    def show(**form: str) -> str:
        answer = client.post(
            "/console/activity/show-private",
            headers=dave,
            data={"csrf_token": token_of(client), **form},
            follow_redirects=True,
        )
        return answer.get_data(as_text=True)

    assert "acknowledge_audit" in show(justification="why")
    assert "justification is required" in show(acknowledge="yes")
    with client.session_transaction("/console/") as session:
        assert "reveal" not in session
    assert "Private activities are shown" in show(acknowledge="yes", justification="SEC-7")
    with client.session_transaction("/console/") as session:
        session_id = session["reveal"]["id"]
    opened = storage.log_page(action="reveal_session_opened")
    assert [
        (r["actor"], r["details"]["session"], r["details"]["justification"]) for r in opened
    ] == [("dave@contoso.com", session_id, "SEC-7")]
    # An admin without the permission is refused by the same rule, and the refusal is logged.
    client.get("/console/activity", headers=gateway())
    answer = client.post(
        "/console/activity/show-private",
        headers=gateway(),
        data={"csrf_token": token_of(client), "acknowledge": "yes", "justification": "curious"},
        follow_redirects=True,
    )
    assert b"does not hold the view-private permission" in answer.data
    assert [r["actor"] for r in storage.log_page(action="reveal_session_refused")] == [ADMIN]


def test_paging_far_back_keeps_the_cookie_small(client: FlaskClient, store: LoopbackStore) -> None:
    client.get("/console/activity", headers=gateway())
    for page in range(12):
        answer = client.post(
            "/console/activity/page",
            headers=gateway(),
            data={
                "csrf_token": token_of(client),
                "direction": "older",
                "cursor": f"{page:03d}" + "c" * 253,
            },
        )
        assert len(answer.headers["Set-Cookie"]) < 4000
    client.get("/console/activity", headers=gateway())
    assert store.state.requests[-1]["query"].endswith("cursor=011" + "c" * 253)
    client.post(
        "/console/activity/page",
        headers=gateway(),
        data={"csrf_token": token_of(client), "direction": "newer"},
    )
    client.get("/console/activity", headers=gateway())
    assert store.state.requests[-1]["query"].endswith("cursor=010" + "c" * 253)
    too_long = client.post(
        "/console/activity/page",
        headers=gateway(),
        data={"csrf_token": token_of(client), "direction": "older", "cursor": "x" * 257},
    )
    assert too_long.status_code == 302
    client.get("/console/activity", headers=gateway())
    assert "cursor=" not in store.state.requests[-1]["query"]
