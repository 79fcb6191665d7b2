"""Shared fixtures: a real activity store on loopback, Veil apps on real SQLite files, tokens."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jwt
import pytest
from flask import Flask, Response, request
from flask.testing import FlaskClient
from werkzeug.serving import BaseWSGIServer, make_server

from veil import config as config_module
from veil.app import create_app

pytest_plugins = ["postgres"]  # tests/postgres.py: a throw-away PostgreSQL cluster

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
SECRET = "test-secret-that-is-long-enough-for-hs256"
ISSUER = "https://idp.test"
AUDIENCE = "veil"
ADMIN = "alice@contoso.com"
# A second bootstrap admin: the view-private permission is granted by another admin, never
# self-granted (README "Admin controls"), so tests grant ADMIN's permission as GRANTOR.
GRANTOR = "grace@contoso.com"


@dataclass
class StoreState:
    """What the loopback store answers; tests change it between requests."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    body: bytes | None = None  # a raw body instead of {"data": rows}
    delay_s: float = 0.0
    content_type: str = "application/json"
    requests: list[dict[str, Any]] = field(default_factory=list)


class LoopbackStore:
    """A real HTTP activity store on 127.0.0.1, in a thread."""

    def __init__(self) -> None:
        self.state = StoreState()
        app = Flask("loopback-store")

        @app.get("/api/activities")
        @app.get("/api/other")
        def activities() -> Response:
            self.state.requests.append(
                {
                    "path": request.path,
                    "query": request.query_string.decode(),
                    "headers": dict(request.headers),
                }
            )
            if self.state.delay_s:
                time.sleep(self.state.delay_s)
            body = (
                self.state.body
                if self.state.body is not None
                else json.dumps({"data": self.state.rows, "next": None}).encode()
            )
            return Response(body, status=self.state.status, content_type=self.state.content_type)

        @app.get("/api/unlisted")
        def unlisted() -> Response:
            return Response(json.dumps({"data": self.state.rows}), content_type="application/json")

        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        self.state = StoreState()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="session")
def store_server() -> Iterator[LoopbackStore]:
    server = LoopbackStore()
    yield server
    server.close()


@pytest.fixture
def store(store_server: LoopbackStore) -> Iterator[LoopbackStore]:
    store_server.reset()
    yield store_server
    store_server.reset()


def config_doc(store_url: str, storage_url: str, **sections: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "upstream": {
            "url": store_url,
            "routes": ["/api/activities", "/api/other"],
            "rows": "/data",
            "fields": {
                "id": "/id",
                "actor": "/user",
                "actor_type": "/actorType",
                "timestamp": "/timestamp",
            },
            "timeout_s": 2,
        },
        "organization": {"managed_domains": ["contoso.com"]},
        "identity": {
            "mode": "jwt",
            "jwt": {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "hs256_secret_env": "VEIL_TEST_JWT_SECRET",
            },
            "bootstrap_admins": [ADMIN, GRANTOR],
        },
        "policy": {"engine": "embedded", "dir": str(POLICIES)},
        "storage": {"url": storage_url},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(doc.get(name), dict):
            doc[name] = {**doc[name], **value}
        else:
            doc[name] = value
    return doc


def make_config(store_url: str, storage_url: str, **sections: Any) -> config_module.Config:
    return config_module.from_dict(
        config_doc(store_url, storage_url, **sections), env={"VEIL_TEST_JWT_SECRET": SECRET}
    )


# Storage backends. A test that exercises storage behaviour (management state, the governance
# chain, reveal records, SCIM directory, migrations, concurrency) is marked
# ``@pytest.mark.storage`` and runs on each backend; every other test gets SQLite only.
# "postgres" is a fresh database on the throw-away cluster of tests/postgres.py (skipped
# without PostgreSQL, failed under CI).
STORAGE_BACKENDS = ["sqlite", "postgres"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the ``storage``-marked tests that use ``storage_url`` on every backend."""
    if "storage_url" in metafunc.fixturenames and metafunc.definition.get_closest_marker("storage"):
        metafunc.parametrize("storage_url", STORAGE_BACKENDS, indirect=True)


@pytest.fixture
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage URL: SQLite, or each backend for a test marked ``storage``."""
    backend: str = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'veil.db'}"
    url: str = request.getfixturevalue(f"{backend}_url")
    return url


@pytest.fixture
def app(store: LoopbackStore, storage_url: str) -> Iterator[Flask]:
    application = create_app(make_config(store.url, storage_url))
    yield application
    application.extensions["veil"].engine.close()  # in this thread: regorus engines are
    application.extensions["veil"].storage.close()  # bound to the thread that made them


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def token(
    principal: str,
    *,
    secret: str = SECRET,
    issuer: str = ISSUER,
    audience: str = AUDIENCE,
    ttl_s: int = 3 * 3600,
    claim: str = "upn",
    **extra: Any,
) -> str:
    """A token Veil accepts; modules mint theirs at collection, so it outlives the whole run
    (the suite takes more than five minutes on a busy machine)."""
    now = int(time.time())
    claims = {
        claim: principal,
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "exp": now + ttl_s,
        **extra,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def auth(principal: str, **kwargs: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(principal, **kwargs)}"}


def open_session(client: FlaskClient, who: str = ADMIN, why: str = "case INC-42") -> str:
    """A reveal session opened by ``who`` (who holds the permission: see ``permit``)."""
    r = client.post(
        "/veil/v1/reveal-sessions",
        json={"acknowledge_audit": True, "justification": why},
        headers=auth(who),
    )
    assert r.status_code == 201, r.get_json()
    session_id: str = r.get_json()["id"]
    return session_id


def permit(client: FlaskClient, who: str = ADMIN) -> None:
    """``who`` made a registry admin (unless ADMIN, a bootstrap one) and granted the
    view-private permission by GRANTOR (never by themselves)."""
    if who != ADMIN:
        assert (
            client.post("/veil/v1/admins", json={"principal": who}, headers=auth(ADMIN)).status_code
            == 201
        )
    assert (
        client.post(
            "/veil/v1/private-viewers", json={"principal": who}, headers=auth(GRANTOR)
        ).status_code
        == 201
    )


def activity(
    i: int, user: str | None, timestamp: Any, actor_type: str = "user", **extra: Any
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": f"act-{i}",
        "actorType": actor_type,
        "timestamp": timestamp,
        "activity": "FileAccessed",
        **extra,
    }
    if user is not None:
        row["user"] = user
    return row


def iso(ns: int) -> str:
    """RFC 3339 with nanoseconds, for a row timestamp."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest:09d}Z"


T = TypeVar("T")


def constant(value: T) -> Callable[[], T]:
    """A callable returning ``value``: a data loader or an engine's ``begin`` made in a loop."""
    return lambda: value


def ids(response: Any) -> list[str]:
    return [row["id"] for row in response.get_json()["data"]]
