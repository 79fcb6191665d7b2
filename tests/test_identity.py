"""Identity: JWT (HS256 secret, RS256/ES256 from a JWKS file) and trusted gateway headers."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import replace
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask.testing import FlaskClient

from veil import config as config_module
from veil.app import create_app
from veil.errors import Unauthenticated
from veil.identity import Authenticator

from conftest import ADMIN, AUDIENCE, ISSUER, SECRET, LoopbackStore, auth, make_config, token

USER = "bob@contoso.com"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "path", ["/api/activities", "/veil/v1/groups", "/veil/v1/admins", "/nowhere"]
)
def test_no_identity_is_401_everywhere(client: FlaskClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 401
    assert r.mimetype == "application/problem+json"
    assert r.get_json()["code"] == "unauthenticated"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/veil/v1/openapi.json"])
def test_operations_endpoints_need_no_identity(client: FlaskClient, path: str) -> None:
    assert client.get(path).status_code == 200


@pytest.mark.parametrize(
    "headers,reason",
    [
        ({"Authorization": "Basic Ym9iOnB3"}, "Bearer"),
        ({"Authorization": "Bearer not-a-jwt"}, "not a JWT"),
        (
            {
                "Authorization": "Bearer "
                + token(USER, secret="another-secret-of-sufficient-length")
            },
            "invalid",
        ),
        ({"Authorization": f"Bearer {token(USER, ttl_s=-120)}"}, "expired"),
        ({"Authorization": f"Bearer {token(USER, audience='someone-else')}"}, "audience"),
        ({"Authorization": f"Bearer {token(USER, issuer='https://evil.example')}"}, "issuer"),
        ({"Authorization": f"Bearer {token(USER, claim='sub')}"}, "principal claims"),
    ],
    ids=["basic", "garbage", "wrong-secret", "expired", "audience", "issuer", "no-principal"],
)
def test_bad_tokens_are_401(client: FlaskClient, headers: dict[str, str], reason: str) -> None:
    r = client.get("/api/activities", headers=headers)
    assert r.status_code == 401
    assert reason in r.get_json()["detail"]


def test_alg_none_is_refused(client: FlaskClient) -> None:
    now = int(time.time())
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    claims = _b64(
        json.dumps({"upn": ADMIN, "iss": ISSUER, "aud": AUDIENCE, "exp": now + 60}).encode()
    )
    r = client.get("/veil/v1/groups", headers={"Authorization": f"Bearer {header}.{claims}."})
    assert r.status_code == 401
    assert "'none' is not accepted" in r.get_json()["detail"]


def test_principal_claims_in_order(client: FlaskClient) -> None:
    t = jwt.encode(
        {
            "preferred_username": "Bob@Contoso.com",
            "email": "other@contoso.com",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "exp": int(time.time()) + 60,
        },
        SECRET,
        algorithm="HS256",
    )
    r = client.post(
        "/veil/v1/reveal-sessions",
        json={"acknowledge_audit": True, "justification": "x"},
        headers={"Authorization": f"Bearer {t}"},
    )
    assert r.status_code == 403
    log = client.get(
        "/veil/v1/governance-log?action=reveal_session_refused", headers=auth(ADMIN)
    ).get_json()["records"]
    assert log[-1]["actor"] == "bob@contoso.com"


def test_non_admin_gets_403_on_management(client: FlaskClient) -> None:
    r = client.post("/veil/v1/privacy-groups", json={"group": "external"}, headers=auth(USER))
    assert r.status_code == 403
    assert "not an admin" in r.get_json()["detail"]
    assert client.get("/veil/v1/admins", headers=auth(USER)).status_code == 403
    # reading groups and privacy groups needs an admin too: members of private groups are
    # private facts (R9); see tests/test_boundary.py for the listings themselves
    assert client.get("/veil/v1/groups", headers=auth(USER)).status_code == 403
    assert client.get("/veil/v1/privacy-groups", headers=auth(USER)).status_code == 403


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_jwks_file_keys(store: LoopbackStore, storage_url: str, tmp_path: Path, kind: str) -> None:
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        alg = "RS256"
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    else:
        private = ec.generate_private_key(ec.SECP256R1())
        alg = "ES256"
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid="k1", alg=alg, use="sig")
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    doc_identity = {
        "mode": "jwt",
        "jwt": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(tmp_path / "jwks.json")},
        "bootstrap_admins": [ADMIN],
    }
    from conftest import config_doc

    cfg = config_module.from_dict(config_doc(store.url, storage_url, identity=doc_identity), env={})
    client = create_app(cfg).test_client()
    claims = {"upn": ADMIN, "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60}
    good = jwt.encode(claims, private, algorithm=alg, headers={"kid": "k1"})
    assert (
        client.get("/veil/v1/admins", headers={"Authorization": f"Bearer {good}"}).status_code
        == 200
    )
    unknown_kid = jwt.encode(claims, private, algorithm=alg, headers={"kid": "k2"})
    assert (
        client.get(
            "/veil/v1/admins", headers={"Authorization": f"Bearer {unknown_kid}"}
        ).status_code
        == 401
    )
    # an HS256 token signed with the public key's text must not pass (key confusion)
    confused = jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": "k1"})
    assert (
        client.get("/veil/v1/admins", headers={"Authorization": f"Bearer {confused}"}).status_code
        == 401
    )


def test_header_mode(store: LoopbackStore, storage_url: str) -> None:
    from conftest import config_doc

    identity = {"mode": "header", "secret_env": "GATEWAY_SECRET", "bootstrap_admins": [ADMIN]}
    cfg = config_module.from_dict(
        config_doc(store.url, storage_url, identity=identity),
        env={"GATEWAY_SECRET": "s3cret-from-gateway"},
    )
    client = create_app(cfg).test_client()
    good = {"X-Forwarded-User": "Alice@Contoso.com", "X-Veil-Gateway-Secret": "s3cret-from-gateway"}
    assert client.get("/veil/v1/admins", headers=good).status_code == 200
    assert client.get("/veil/v1/admins", headers={"X-Forwarded-User": ADMIN}).status_code == 401
    wrong = {**good, "X-Veil-Gateway-Secret": "guess"}
    assert client.get("/veil/v1/admins", headers=wrong).status_code == 401
    nobody = {"X-Veil-Gateway-Secret": "s3cret-from-gateway"}
    r = client.get("/veil/v1/admins", headers=nobody)
    assert r.status_code == 401
    assert "X-Forwarded-User" in r.get_json()["detail"]


def test_bootstrap_admin_from_config_is_admin(store: LoopbackStore, storage_url: str) -> None:
    app = create_app(make_config(store.url, storage_url))
    r = app.test_client().get("/veil/v1/admins", headers=auth(ADMIN))
    assert r.get_json()["admins"][0] == {
        "principal": ADMIN,
        "source": "config",
        "added_at": None,
        "added_by": None,
    }


# ---- verified tokens are remembered while their time claims hold --------------------------


def authenticator(store: LoopbackStore, leeway_s: float) -> Authenticator:
    config = make_config(store.url, "sqlite:///unused.db")
    return Authenticator(
        replace(config.identity, jwt=replace(config.identity.jwt, leeway_s=leeway_s))
    )


def test_a_remembered_token_is_refused_once_it_expires(store: LoopbackStore) -> None:
    auth_ = authenticator(store, leeway_s=0)
    headers = {"Authorization": f"Bearer {token(USER, ttl_s=1)}"}
    assert auth_.principal(headers) == USER  # verified, and remembered
    assert auth_.principal(headers) == USER  # from memory
    time.sleep(1.2)
    with pytest.raises(Unauthenticated, match="expired"):
        auth_.principal(headers)


def test_a_refused_token_is_not_remembered(store: LoopbackStore) -> None:
    auth_ = authenticator(store, leeway_s=0)
    early = {"Authorization": f"Bearer {token(USER, nbf=int(time.time()) + 60)}"}
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            auth_.principal(early)


def test_only_the_same_token_is_remembered(store: LoopbackStore) -> None:
    auth_ = authenticator(store, leeway_s=0)
    good = token(USER)
    assert auth_.principal({"Authorization": f"Bearer {good}"}) == USER
    head, claims, signature = good.split(".")
    forged = f"{head}.{claims}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    with pytest.raises(Unauthenticated, match="invalid"):
        auth_.principal({"Authorization": f"Bearer {forged}"})
