"""Guards that a whole suite once let break unnoticed (issue 9, "tests that let bugs through").

Each test here fails if its guard is removed: a reveal only on ``reveal is True``
(``veil.filtering``); ``exp`` required in a JWT (``veil.identity``); a row index below the row
count (``veil.policy.Decision.read``); a timestamp without an offset is unreadable
(``veil.rows.timestamp_ns``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import jwt
import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from veil.app import create_app
from veil.policy import DataLoader, Decision, Engine, PolicyModule
from veil.rows import timestamp_ns

from conftest import (
    ADMIN,
    AUDIENCE,
    ISSUER,
    SECRET,
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
SEC = 1_000_000_000


class FixedEngine:
    """An engine whose decision is fixed by the test: what a faulty or hostile policy says."""

    name = "fixed"

    def __init__(self, decision: dict[str, Any]) -> None:
        self.decision = decision
        self.inputs: list[dict[str, Any]] = []

    @property
    def needs_raw(self) -> bool:
        return False

    def sync(self, version: int, load: DataLoader) -> None:
        load()

    def evaluate(self, input_json: bytes) -> Any:
        self.inputs.append(orjson.loads(input_json))
        return self.decision

    def reload(self, modules: Sequence[PolicyModule]) -> None:
        pass

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        pass


@pytest.fixture
def fixed(store: LoopbackStore, tmp_path: Path) -> Iterator[tuple[Flask, FixedEngine]]:
    engine = FixedEngine({})
    # No begin(): Veil evaluates the whole decision with evaluate(), as for such an engine.
    app = create_app(
        make_config(store.url, f"sqlite:///{tmp_path / 'veil.db'}"), engine=cast(Engine, engine)
    )
    later = iso(time.time_ns() + 60 * SEC)
    store.state.rows = [
        activity(1, "ann@contoso.com", later),
        activity(2, "bob@contoso.com", later),
    ]
    yield app, engine
    app.extensions["veil"].storage.close()


def _session(client: FlaskClient) -> str:
    permit(client)
    return open_session(client, why="case INC-9")


@pytest.mark.parametrize("reveal", [False, None, "true", 1])
def test_only_reveal_true_reveals_even_without_refusals(
    fixed: tuple[Flask, FixedEngine], reveal: Any
) -> None:
    app, engine = fixed
    client = app.test_client()
    sid = _session(client)
    engine.decision = {"private_rows": [0], "reveal": reveal, "refusals": []}
    r = client.get("/api/activities", headers={**A, "Veil-Reveal-Session": sid})
    assert r.status_code == 403, r.get_data(as_text=True)
    assert "act-1" not in r.get_data(as_text=True)
    log = client.get("/veil/v1/governance-log?action=activities_revealed", headers=A).get_json()[
        "records"
    ]
    assert log == []
    engine.decision = {"private_rows": [0], "reveal": True, "refusals": []}
    r = client.get("/api/activities", headers={**A, "Veil-Reveal-Session": sid})
    assert ids(r) == ["act-1", "act-2"]  # the same session reveals when the policy says so


@pytest.mark.parametrize("bad_index", [2, 3, -1])
def test_a_row_index_outside_the_answer_fails_closed(
    fixed: tuple[Flask, FixedEngine], bad_index: int
) -> None:
    app, engine = fixed
    client = app.test_client()
    engine.decision = {"private_rows": [bad_index], "reveal": False, "refusals": []}
    r = client.get("/api/activities", headers=A)
    assert r.status_code == 200
    assert ids(r) == []  # two rows: index 2 names no row, so the decision is malformed
    assert r.headers["Veil-Degraded"] == "policy"
    assert Decision.read({"private_rows": [bad_index]}, 2).failed
    assert not Decision.read({"private_rows": [1]}, 2).failed


def test_a_token_without_exp_is_refused(client: FlaskClient) -> None:
    claims = {"upn": ADMIN, "iss": ISSUER, "aud": AUDIENCE, "iat": int(time.time())}
    forever = jwt.encode(claims, SECRET, algorithm="HS256")
    r = client.get("/veil/v1/admins", headers={"Authorization": f"Bearer {forever}"})
    assert r.status_code == 401
    assert "exp" in r.get_json()["detail"]
    with_exp = jwt.encode({**claims, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert (
        client.get("/veil/v1/admins", headers={"Authorization": f"Bearer {with_exp}"}).status_code
        == 200
    )


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-25T10:00:00.123456",
        "2026-11-25T10:00:00.5",
        "2026-11-25 10:00:00.123456789",
        "2026-11-25T10:00:00",
    ],
)
def test_a_timestamp_without_offset_is_unreadable(value: str) -> None:
    assert timestamp_ns(value) is None
    assert timestamp_ns(value + "Z") is not None
