"""The `opa` engine: state loaded at start-up and after each change, recovery after an OPA
restart, bundle mode, and every OPA fault failing closed (rows hidden; a reveal is 503).

Normal operation runs against the loopback OPA of tests/opa_server.py (real HTTP, OPA's REST
API on regorus); `responses` only shapes what OPA answers when it fails (errors, timeouts).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import responses
from flask import Flask
from flask.testing import FlaskClient

from veil.app import create_app
from veil.errors import PolicyError
from veil.policy import load_modules
from veil.policy import opa as opa_engine_module
from veil.policy.embedded import EmbeddedEngine
from veil.policy.opa import OpaEngine
from veil.storage import open_storage

from conftest import ADMIN, GRANTOR, POLICIES, LoopbackStore, activity, auth, ids, iso, make_config
from netutil import free_port
from opa_server import Bundle, FakeOpa, bundle_from

# The shipped policy files (policies/veil/privacy/, tests aside), as OPA names them.
SHIPPED_FILES = [
    "built_in_groups.rego",
    "decision.rego",
    "private_windows.rego",
    "reveal.rego",
    "unreadable_rows.rego",
    "windows.rego",
]
SHIPPED_IDS = [f"veil/veil/privacy/{name}" for name in SHIPPED_FILES]

A = auth(ADMIN)
ANN = "ann@contoso.com"
BOB = "bob@contoso.com"
SEC = 1_000_000_000
QUERY = "/v1/query"  # the decision or actor_windows, with the state version it was made on
POLICY_QUERY = re.compile(r".*/v1/query$")


def bob_row_document() -> dict[str, Any]:
    """A policy input with one row of BOB's, at time 1."""
    return {
        "caller": BOB,
        "request": {},
        "reveal_session_id": None,
        "session": None,
        "now_ns": 1,
        "rows": [{"index": 0, "id": "a", "actor": BOB, "actor_type": "user", "ts_ns": 1}],
    }


@pytest.fixture
def opa() -> Iterator[FakeOpa]:
    server = FakeOpa()
    yield server
    server.close()


def veil_app(store: LoopbackStore, tmp_path: Path, opa_url: str, **policy: Any) -> Flask:
    section = {"engine": "opa", "opa_url": opa_url, "timeout_s": 2, **policy}
    return create_app(make_config(store.url, f"sqlite:///{tmp_path / 'veil.db'}", policy=section))


@pytest.fixture
def app(opa: FakeOpa, store: LoopbackStore, tmp_path: Path) -> Iterator[Flask]:
    application = veil_app(store, tmp_path, opa.url)
    yield application
    application.extensions["veil"].engine.close()
    application.extensions["veil"].storage.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def finance_private(client: FlaskClient, store: LoopbackStore) -> None:
    """ann (finance) is private from now on; the store answers ann's row and bob's."""
    assert (
        client.put(
            "/veil/v1/groups/finance", json={"name": "Finance", "members": [ANN]}, headers=A
        ).status_code
        == 201
    )
    assert (
        client.post("/veil/v1/privacy-groups", json={"group": "finance"}, headers=A).status_code
        == 201
    )
    later = iso(time.time_ns() + 60 * SEC)
    store.state.rows = [activity(1, ANN, later), activity(2, BOB, later)]


def open_reveal(client: FlaskClient) -> dict[str, str]:
    assert (
        client.post(
            "/veil/v1/private-viewers", json={"principal": ADMIN}, headers=auth(GRANTOR)
        ).status_code
        == 201
    )
    r = client.post(
        "/veil/v1/reveal-sessions",
        json={"acknowledge_audit": True, "justification": "case INC-42"},
        headers=A,
    )
    assert r.status_code == 201, r.get_json()
    return {**A, "Veil-Reveal-Session": r.get_json()["id"]}


def assert_fails_closed(client: FlaskClient, reveal_headers: dict[str, str]) -> None:
    """Every row hidden for an ordinary answer; a reveal is 503 and nothing is audited as
    revealed."""
    hidden = client.get("/api/activities", headers=auth(BOB))
    assert hidden.status_code == 200
    assert ids(hidden) == []
    assert hidden.headers["Veil-Degraded"] == "policy"
    revealed = client.get("/api/activities", headers=reveal_headers)
    assert revealed.status_code == 503
    assert revealed.get_json()["code"] == "policy_unavailable"
    assert "data" not in revealed.get_json()
    log = client.get("/veil/v1/governance-log?action=activities_revealed", headers=A)
    assert log.get_json()["records"] == []


def assert_filters(client: FlaskClient) -> None:
    answer = client.get("/api/activities", headers=auth(BOB))
    assert answer.status_code == 200
    assert ids(answer) == ["act-2"]
    assert "Veil-Degraded" not in answer.headers


# ---- state in OPA -----------------------------------------------------------------------


def test_start_up_loads_policies_and_data(app: Flask, opa: FakeOpa) -> None:
    """Before any query, OPA holds every policy file (not the tests) and data.veil."""
    assert opa.policy_ids() == SHIPPED_IDS
    storage = app.extensions["veil"].storage
    assert opa.document("veil/state_version") == storage.state_version()
    assert opa.document("veil/admins") == {ADMIN: True, GRANTOR: True}
    assert opa.document("veil/managed_domains") == ["contoso.com"]
    assert opa.calls("PUT", "/v1/policies/") == len(SHIPPED_FILES)  # one PUT per file


def test_first_query_after_start_up_is_answered_with_state_loaded(
    opa: FakeOpa, store: LoopbackStore, tmp_path: Path
) -> None:
    """State made before start-up is in OPA for the very first answer."""
    storage = open_storage(f"sqlite:///{tmp_path / 'veil.db'}", 5.0, [ADMIN])
    storage.put_group("finance", "Finance", [ANN], ADMIN)
    storage.add_privacy_group("finance", ADMIN)
    storage.close()
    later = iso(time.time_ns() + 60 * SEC)
    store.state.rows = [activity(1, ANN, later), activity(2, BOB, later)]
    application = veil_app(store, tmp_path, opa.url)
    try:
        assert_filters(application.test_client())
        assert opa.calls("POST", QUERY) == 1
    finally:
        application.extensions["veil"].storage.close()


def test_opa_down_at_start_up_then_up(store: LoopbackStore, tmp_path: Path) -> None:
    """Veil starts without OPA (compose may start it first), fails closed, then loads its
    state on the first query once OPA answers."""
    opa = FakeOpa()
    opa.stop()
    application = veil_app(store, tmp_path, opa.url)
    client = application.test_client()
    try:
        finance_private(client, store)
        assert ids(client.get("/api/activities", headers=auth(BOB))) == []
        assert client.get("/readyz").get_json()["checks"]["engine"] is False
        opa.start()
        assert_filters(client)
        assert opa.policy_ids() == SHIPPED_IDS
        assert client.get("/readyz").get_json()["checks"]["engine"] is True
    finally:
        application.extensions["veil"].storage.close()
        opa.close()


def test_data_is_written_after_each_change_and_only_then(
    client: FlaskClient, store: LoopbackStore, opa: FakeOpa
) -> None:
    finance_private(client, store)
    assert_filters(client)
    assert opa.document("veil/groups/finance/members") == {ANN: True}
    patches = opa.calls("PATCH", "/v1/data/veil")
    assert_filters(client)
    assert_filters(client)
    assert opa.calls("PATCH", "/v1/data/veil") == patches  # nothing changed: nothing written
    client.put("/veil/v1/groups/finance", json={"name": "Finance", "members": [BOB]}, headers=A)
    answer = client.get("/api/activities", headers=auth(BOB))
    assert ids(answer) == ["act-1"]
    assert opa.document("veil/groups/finance/members") == {BOB: True}
    assert opa.calls("PATCH", "/v1/data/veil") > patches


def test_recovery_after_an_opa_restart(
    client: FlaskClient, store: LoopbackStore, opa: FakeOpa
) -> None:
    """OPA restarts and loses Veil's policies and data: the next answer notices the
    undefined decision, loads both again and is still right."""
    finance_private(client, store)
    reveal = open_reveal(client)
    assert_filters(client)
    opa.restart()
    assert opa.policy_ids() == []
    assert_filters(client)
    assert opa.policy_ids() == SHIPPED_IDS
    assert opa.document("veil/groups/finance/members") == {ANN: True}
    opa.restart()
    assert ids(client.get("/api/activities", headers=reveal)) == ["act-1", "act-2"]


def test_recovery_when_opa_keeps_its_policies_but_loses_the_data(
    client: FlaskClient, store: LoopbackStore, opa: FakeOpa
) -> None:
    """An OPA with the policies mounted restarts: the decision is well-formed but has no
    state. Veil must notice from data.veil's version, not only from an undefined decision."""
    finance_private(client, store)
    assert_filters(client)
    opa.forget_data()
    assert opa.policy_ids() == SHIPPED_IDS
    assert_filters(client)
    assert opa.document("veil/groups/finance/members") == {ANN: True}
    opa.forget_data()
    assert client.get("/readyz").get_json()["checks"]["engine"] is True
    assert opa.document("veil/groups/finance/members") == {ANN: True}


def test_recovery_after_opa_was_unreachable(
    client: FlaskClient, store: LoopbackStore, opa: FakeOpa
) -> None:
    finance_private(client, store)
    reveal = open_reveal(client)
    opa.stop()
    assert_fails_closed(client, reveal)
    opa.restart()
    assert_filters(client)
    assert ids(client.get("/api/activities", headers=reveal)) == ["act-1", "act-2"]


def test_readyz_follows_opa(client: FlaskClient, opa: FakeOpa) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"]["engine"] is True
    opa.stop()
    down = client.get("/readyz")
    assert down.status_code == 503
    assert down.get_json()["checks"]["engine"] is False
    opa.restart()  # it comes back empty, and no query arrives: the probe reloads it
    assert client.get("/readyz").get_json()["checks"]["engine"] is True
    assert opa.policy_ids() == SHIPPED_IDS
    assert opa.document("veil/state_version") is not None


def test_stale_policy_modules_are_removed(opa: FakeOpa, tmp_path: Path) -> None:
    requests.put(
        f"{opa.url}/v1/policies/veil/old/gone.rego",
        data="package veil.old\n\nimport rego.v1\n\nx := 1\n",
        timeout=5,
    )
    requests.put(
        f"{opa.url}/v1/policies/other/kept.rego",
        data="package other\n\nimport rego.v1\n\ny := 1\n",
        timeout=5,
    )
    engine = OpaEngine(POLICIES, opa.url, 2.0)
    engine.sync(1, lambda: (1, {"groups": {}}))
    assert opa.policy_ids() == ["other/kept.rego", *SHIPPED_IDS]
    engine.close()


def test_newest_state_wins_between_processes(opa: FakeOpa) -> None:
    """Two Veil processes share one OPA; the one that read the state before a change writes
    it after the other wrote the change: it reads again, sees the change, writes it."""
    first, second = OpaEngine(POLICIES, opa.url, 2.0), OpaEngine(POLICIES, opa.url, 2.0)
    newer = {"groups": {"finance": {"name": "Finance", "members": {ANN: True}}}}
    first.sync(2, lambda: (2, newer))
    reads: Iterator[tuple[int, dict[str, Any]]] = iter(
        [(1, {"groups": {}}), (2, newer), (2, newer), (2, newer)]
    )
    second.sync(1, lambda: next(reads))
    assert opa.document("veil/state_version") == 2
    assert opa.document("veil/groups") == newer["groups"]
    first.close()
    second.close()


def test_an_older_state_is_not_written_over_a_newer_one(opa: FakeOpa) -> None:
    """A process that read the state before another wrote a newer one sees OPA's newer
    version before writing, reads the state again and never puts the older one in OPA."""
    first, second = OpaEngine(POLICIES, opa.url, 2.0), OpaEngine(POLICIES, opa.url, 2.0)
    newer = {"groups": {"finance": {"name": "Finance", "members": {ANN: True}}}}
    first.sync(2, lambda: (2, newer))
    patches = opa.calls("PATCH", "/v1/data/veil")
    reads: Iterator[tuple[int, dict[str, Any]]] = iter(
        [(1, {"groups": {}}), (2, newer), (2, newer)]
    )
    second.sync(1, lambda: next(reads))
    assert opa.calls("PATCH", "/v1/data/veil") == patches + 1  # the newer state only
    assert opa.document("veil/state_version") == 2
    first.close()
    second.close()


def test_group_made_private_stays_hidden_when_another_process_writes_older_state_meanwhile(
    opa: FakeOpa, store: LoopbackStore, tmp_path: Path
) -> None:
    """Two processes share one OPA. Another one's write of the state it read before a group
    was made private lands between this one's check of OPA's version and its actor_windows
    query: the windows OPA computed from that older state are neither used nor cached under
    the new version, so the newly private group's row stays hidden then and afterwards
    (R11, R1)."""
    worker_a = veil_app(store, tmp_path, opa.url)
    worker_b = veil_app(store, tmp_path, opa.url)  # another worker: same database, same OPA
    client = worker_a.test_client()
    try:
        assert (
            client.put(
                "/veil/v1/groups/finance", json={"name": "Finance", "members": [ANN]}, headers=A
            ).status_code
            == 201
        )
        later = iso(time.time_ns() + 60 * SEC)
        store.state.rows = [activity(1, ANN, later), activity(2, BOB, later)]
        assert ids(client.get("/api/activities", headers=auth(BOB))) == ["act-1", "act-2"]
        veil = worker_a.extensions["veil"]
        domains, storage = veil.config.managed_domains, veil.storage
        stale = storage.policy_data(domains)  # what worker B read just before the change
        assert (
            client.post("/veil/v1/privacy-groups", json={"group": "finance"}, headers=A).status_code
            == 201
        )
        engine_a, engine_b = veil.engine, worker_b.extensions["veil"].engine
        original = engine_a._post_decision
        steps: list[str] = []

        def interleaved(body: bytes, path: str = "veil/privacy/decision") -> Any:
            if path.endswith("actor_windows") and not steps:
                steps.append("stale")
                engine_b._write_data(*stale)  # B writes the state it read before the change
            answer = original(body, path)
            if steps == ["stale"]:
                steps.append("fresh")
                engine_b._write_data(*storage.policy_data(domains))  # B reads again, writes
            return answer

        engine_a._post_decision = interleaved
        during = client.get("/api/activities", headers=auth(BOB))
        engine_a._post_decision = original
        assert steps == ["stale", "fresh"]
        assert "act-1" not in ids(during)
        assert opa.document("veil/state_version") == storage.state_version()
        for _ in range(3):
            answer = client.get("/api/activities", headers=auth(BOB))
            assert ids(answer) == ["act-2"], "the newly private group's row is shown"
            assert "Veil-Degraded" not in answer.headers
    finally:
        for application in (worker_a, worker_b):
            application.extensions["veil"].engine.close()
            application.extensions["veil"].storage.close()


def test_needs_raw_is_computed_as_the_embedded_engine_does(
    opa: FakeOpa, tmp_path: Path, store: LoopbackStore
) -> None:
    assert OpaEngine(POLICIES, opa.url).needs_raw is EmbeddedEngine(POLICIES).needs_raw is False
    directory = tmp_path / "policies"
    directory.mkdir()
    for name in SHIPPED_FILES:
        (directory / name).write_text((POLICIES / "veil/privacy" / name).read_text())
    (directory / "secret.rego").write_text(
        "package veil.privacy\n\nimport rego.v1\n\n"
        'private_rows contains i if input.rows[i].raw.activity == "ReadSecret"\n'
    )
    assert OpaEngine(directory, opa.url).needs_raw is EmbeddedEngine(directory).needs_raw is True
    now = iso(time.time_ns())
    store.state.rows = [activity(1, BOB, now, activity="ReadSecret"), activity(2, BOB, now)]
    application = veil_app(store, tmp_path, opa.url, dir=str(directory))
    try:
        assert ids(application.test_client().get("/api/activities", headers=A)) == ["act-2"]
        assert opa.policy_ids() == sorted(
            [f"veil/{name}" for name in SHIPPED_FILES] + ["veil/secret.rego"]
        )
    finally:
        application.extensions["veil"].storage.close()


def test_opa_url_with_a_path_is_refused() -> None:
    with pytest.raises(PolicyError, match="has a path"):
        OpaEngine(POLICIES, "http://127.0.0.1:8181/opa")


def test_policy_opa_rejects_is_reported(opa: FakeOpa) -> None:
    engine = OpaEngine(POLICIES, opa.url, 2.0)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(re.compile(re.escape(opa.url) + r"/v1/(data|policies$)"))
        mock.put(
            re.compile(re.escape(opa.url) + r"/v1/policies/.*"),
            status=400,
            json={
                "code": "invalid_parameter",
                "message": "error(s) occurred while compiling module(s)",
                "errors": [{"code": "rego_type_error", "message": "undefined function foo.bar"}],
            },
        )
        with pytest.raises(PolicyError, match=r"rejects policy .*\.rego.*foo.bar"):
            engine.sync(1, lambda: (1, {"groups": {}}))
    engine.close()


# ---- faults fail closed ------------------------------------------------------------------


def test_unreachable_opa_fails_closed(
    client: FlaskClient, store: LoopbackStore, opa: FakeOpa
) -> None:
    """OPA went down (connections reset) after Veil loaded it."""
    finance_private(client, store)
    reveal = open_reveal(client)
    opa.stop()
    assert_fails_closed(client, reveal)


def test_nothing_listening_fails_closed(store: LoopbackStore, tmp_path: Path) -> None:
    """Connections refused from start-up on: nothing was ever loaded."""
    application = veil_app(store, tmp_path, f"http://127.0.0.1:{free_port()}")
    client = application.test_client()
    try:
        finance_private(client, store)
        assert_fails_closed(client, open_reveal(client))
        assert client.get("/readyz").get_json()["checks"]["engine"] is False
    finally:
        application.extensions["veil"].storage.close()


def test_opa_slower_than_the_timeout_fails_closed(
    opa: FakeOpa, store: LoopbackStore, tmp_path: Path
) -> None:
    application = veil_app(store, tmp_path, opa.url, timeout_s=0.3)
    client = application.test_client()
    try:
        finance_private(client, store)
        reveal = open_reveal(client)
        opa.decision_delay_s = 0.6
        started = time.monotonic()
        assert_fails_closed(client, reveal)
        assert time.monotonic() - started < 2 * 0.6 + 1
        opa.decision_delay_s = 0
        time.sleep(0.7)  # let the loopback OPA finish the answers nobody waits for
        assert_filters(client)
    finally:
        application.extensions["veil"].storage.close()


OPA_FAULTS: dict[str, dict[str, Any]] = {
    "timeout": {"body": requests.exceptions.ReadTimeout("read timed out")},
    "connection-reset": {"body": requests.exceptions.ConnectionError("connection reset")},
    "error-500": {
        "status": 500,
        "json": {"code": "internal_error", "message": "error(s) occurred while evaluating query"},
    },
    "error-400": {"status": 400, "json": {"code": "invalid_parameter", "message": "bad input"}},
    "not-json": {"status": 200, "body": "<html>bad gateway</html>"},
    "undefined": {"status": 200, "json": {}},
    "malformed": {"status": 200, "json": {"result": {"private_rows": "all"}}},
    "not-an-object": {"status": 200, "json": ["result"]},
}


@pytest.mark.parametrize("fault", list(OPA_FAULTS))
def test_opa_fault_fails_closed(
    fault: str, client: FlaskClient, store: LoopbackStore, opa: FakeOpa
) -> None:
    finance_private(client, store)
    reveal = open_reveal(client)
    assert_filters(client)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(store.url)
        # Everything but the policy's answers still reaches the loopback OPA (reloads included).
        mock.add_passthru(
            re.compile(
                re.escape(opa.url) + r"/(health|v1/policies|v1/data/veil$|"
                r"v1/data/veil/[a-z_]+$)"
            )
        )
        mock.post(POLICY_QUERY, **OPA_FAULTS[fault])
        # A new state version: the actors' windows cached for the previous one are not used.
        assert (
            client.post(
                "/veil/v1/admins", json={"principal": "carol@contoso.com"}, headers=A
            ).status_code
            == 201
        )
        assert_fails_closed(client, reveal)
        assert client.get("/readyz").get_json()["checks"]["engine"] is False
        decisions = [c for c in mock.calls if POLICY_QUERY.match(c.request.url or "")]
        assert decisions, "the policy was never asked"
    assert_filters(client)  # OPA answers well again: so does Veil
    assert client.get("/readyz").get_json()["checks"]["engine"] is True


def test_undefined_decision_is_retried_once_after_reloading(
    client: FlaskClient, store: LoopbackStore, opa: FakeOpa
) -> None:
    finance_private(client, store)
    assert_filters(client)
    puts = opa.calls("PUT", "/v1/policies/")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(store.url)
        mock.add_passthru(
            re.compile(
                re.escape(opa.url) + r"/v1/(policies|data/veil$|"
                r"data/veil/[a-z_]+$)"
            )
        )
        mock.post(POLICY_QUERY, json={})
        assert (
            client.post(
                "/veil/v1/admins", json={"principal": "carol@contoso.com"}, headers=A
            ).status_code
            == 201
        )  # nothing cached for this state
        assert ids(client.get("/api/activities", headers=auth(BOB))) == []
        asked = [c for c in mock.calls if POLICY_QUERY.match(c.request.url or "")]
        assert len(asked) == 2
    assert opa.calls("PUT", "/v1/policies/") == puts + len(SHIPPED_FILES)  # loaded once again


# ---- bundle mode ---------------------------------------------------------------------------


def bundle_app(opa: FakeOpa, store: LoopbackStore, tmp_path: Path) -> Flask:
    return veil_app(store, tmp_path, opa.url, opa_bundle=True)


def test_bundle_mode_uses_the_bundle_and_writes_only_data(
    store: LoopbackStore, tmp_path: Path
) -> None:
    opa = FakeOpa(bundle=bundle_from(POLICIES))
    application = bundle_app(opa, store, tmp_path)
    client = application.test_client()
    try:
        assert application.extensions["veil"].engine.needs_raw is True
        finance_private(client, store)
        assert_filters(client)
        assert opa.calls("PUT", "/v1/policies") == 0
        assert opa.policy_ids() == [f"bundle/veil/privacy/{name}" for name in SHIPPED_FILES]
        assert opa.document("veil/groups/finance/members") == {ANN: True}
        assert client.get("/readyz").get_json()["checks"]["engine"] is True
        # OPA restarts: the bundle is activated again, Veil's data is gone. Each answer
        # checks the data version first, so no answer is made on a bundle without data.
        opa.restart()
        assert opa.document("veil") is None
        assert_filters(client)
        assert opa.document("veil/groups/finance/members") == {ANN: True}
    finally:
        application.extensions["veil"].storage.close()
        opa.close()


def test_bundle_owning_data_veil_fails_closed(
    store: LoopbackStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    opa = FakeOpa(bundle=bundle_from(POLICIES, roots=["veil"]))
    application = bundle_app(opa, store, tmp_path)
    client = application.test_client()
    try:
        finance_private(client, store)
        assert ids(client.get("/api/activities", headers=auth(BOB))) == []
        assert "owned by bundle" in caplog.text and "roots" in caplog.text
        assert client.get("/readyz").get_json()["checks"]["engine"] is False
    finally:
        application.extensions["veil"].storage.close()
        opa.close()


def test_bundle_not_activated_is_not_ready(store: LoopbackStore, tmp_path: Path) -> None:
    opa = FakeOpa(bundle=Bundle({}, activated=False))
    application = bundle_app(opa, store, tmp_path)
    client = application.test_client()
    try:
        finance_private(client, store)
        assert ids(client.get("/api/activities", headers=auth(BOB))) == []
        assert client.get("/readyz").get_json()["checks"]["engine"] is False
    finally:
        application.extensions["veil"].storage.close()
        opa.close()


def test_decision_input_is_posted_as_opa_expects(opa: FakeOpa) -> None:
    """POST /v1/query with the decision and the state version to return, and the same input
    document Veil built."""
    engine = OpaEngine(POLICIES, opa.url, 2.0)
    engine.sync(
        1,
        lambda: (
            1,
            {
                "groups": {},
                "privacy_groups": {},
                "admins": {},
                "viewers": {},
                "managed_domains": [],
            },
        ),
    )
    document: dict[str, Any] = {
        "caller": BOB,
        "request": {},
        "reveal_session_id": None,
        "session": None,
        "now_ns": 1,
        "rows": [{"index": 0, "id": "a", "actor": None, "actor_type": "user", "ts_ns": 1}],
    }
    with responses.RequestsMock() as mock:
        mock.post(
            opa.url + QUERY,
            json={
                "result": [
                    {
                        "result": {"private_rows": [0], "reveal": False, "refusals": []},
                        "version": 1,
                    }
                ]
            },
        )
        assert engine.evaluate(orjson.dumps(document))["private_rows"] == [0]
        assert orjson.loads(mock.calls[0].request.body or b"") == {
            "query": "result := data.veil.privacy.decision; version := data.veil.state_version",
            "input": document,
        }
    engine.close()


# ---- hot reload ----------------------------------------------------------------------------

RAW_RULE = (
    "package veil.privacy\n\nimport rego.v1\n\n"
    'private_rows contains i if input.rows[i].raw.activity == "ReadSecret"\n'
)


def test_reload_loads_the_new_set_and_drops_removed_files(opa: FakeOpa, tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory)
    (directory / "veil/privacy/old.rego").write_text(
        "package veil.privacy\n\nimport rego.v1\n\nold_helper := true\n"
    )
    engine = OpaEngine(directory, opa.url, 2.0)
    engine.sync(1, lambda: (1, {"groups": {}}))
    assert "veil/veil/privacy/old.rego" in opa.policy_ids()
    (directory / "veil/privacy/old.rego").unlink()
    (directory / "veil/privacy/secret.rego").write_text(RAW_RULE)
    engine.reload(load_modules(directory))
    assert opa.policy_ids() == sorted([*SHIPPED_IDS, "veil/veil/privacy/secret.rego"])
    assert engine.needs_raw is True
    row = {
        "index": 0,
        "id": "a",
        "actor": BOB,
        "actor_type": "user",
        "ts_ns": 1,
        "raw": {"activity": "ReadSecret"},
    }
    document: dict[str, Any] = {
        "caller": BOB,
        "request": {},
        "reveal_session_id": None,
        "session": None,
        "now_ns": 1,
        "rows": [row],
    }
    assert engine.evaluate(orjson.dumps(document))["private_rows"] == [0]
    engine.close()


def test_reload_refused_by_opa_keeps_the_previous_policy(opa: FakeOpa, tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory)
    engine = OpaEngine(directory, opa.url, 2.0)
    engine.sync(1, lambda: (1, {"groups": {}}))
    (directory / "veil/privacy/secret.rego").write_text(RAW_RULE)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(
            re.compile(
                re.escape(opa.url) + r"/(health|v1/data|v1/policies$|"
                r"v1/policies/veil/veil/privacy/(?!secret))"
            )
        )
        mock.put(
            opa.url + "/v1/policies/veil/veil/privacy/secret.rego",
            status=400,
            json={
                "code": "invalid_parameter",
                "message": "error(s) occurred while compiling module(s)",
                "errors": [{"code": "rego_type_error", "message": "unsafe built-in"}],
            },
        )
        with pytest.raises(PolicyError, match="did not take the new policy"):
            engine.reload(load_modules(directory))
    assert opa.policy_ids() == SHIPPED_IDS
    assert engine.needs_raw is False
    engine.close()


def test_input_without_raw_rows_is_not_decided_by_a_policy_reloaded_meanwhile(
    opa: FakeOpa, tmp_path: Path
) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory)
    engine = OpaEngine(directory, opa.url, 2.0)
    engine.sync(1, lambda: (1, {"groups": {}}))
    held = engine.begin()
    assert held.needs_raw is False  # the answer's input is built without raw rows...
    (directory / "veil/privacy/secret.rego").write_text(RAW_RULE)
    engine.reload(load_modules(directory))  # ...a policy reading raw rows arrives meanwhile
    assert engine.needs_raw is True
    document = bob_row_document()
    with pytest.raises(PolicyError, match="reloaded while this answer was prepared"):
        held.evaluate("data.veil.privacy.decision", orjson.dumps(document))
    # deciding the same answer again (a reveal on newer state) keeps failing closed
    with pytest.raises(PolicyError, match="reloaded while this answer was prepared"):
        engine.begin(held).evaluate("data.veil.privacy.decision", orjson.dumps(document))
    # a new answer's hold carries raw rows, and OPA decides it
    later = engine.begin()
    assert later.needs_raw is True
    raw_row = {**document["rows"][0], "raw": {"activity": "ReadSecret"}}
    decided = later.evaluate(
        "data.veil.privacy.decision", orjson.dumps({**document, "rows": [raw_row]})
    )
    assert decided["private_rows"] == [0]
    engine.close()


def test_reload_in_bundle_mode_is_refused(tmp_path: Path) -> None:
    opa = FakeOpa(bundle=bundle_from(POLICIES))
    engine = OpaEngine(POLICIES, opa.url, 2.0, bundle=True)
    with pytest.raises(PolicyError, match="publish a new bundle"):
        engine.reload(load_modules(POLICIES))
    engine.close()
    opa.close()


def test_hot_reload_through_the_api(opa: FakeOpa, store: LoopbackStore, tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory)
    application = veil_app(store, tmp_path, opa.url, dir=str(directory))
    client = application.test_client()
    try:
        now = iso(time.time_ns())
        store.state.rows = [activity(1, BOB, now, activity="ReadSecret"), activity(2, BOB, now)]
        assert ids(client.get("/api/activities", headers=A)) == ["act-1", "act-2"]
        (directory / "veil/privacy/secret.rego").write_text(RAW_RULE)
        reloaded = client.post("/veil/v1/policy/reload", headers=A)
        assert reloaded.status_code == 200, reloaded.get_json()
        assert ids(client.get("/api/activities", headers=A)) == ["act-2"]
        assert "veil/veil/privacy/secret.rego" in opa.policy_ids()
    finally:
        application.extensions["veil"].storage.close()


# ---- the fast path on OPA ------------------------------------------------------------------


def test_an_answer_is_not_decided_across_a_state_change_in_opa(opa: FakeOpa) -> None:
    """Windows cached per (policy, state version) must come from that state: an evaluation
    begun on one version and answered after another was pushed fails closed."""
    engine = OpaEngine(POLICIES, opa.url, 2.0)
    engine.sync(1, lambda: (1, {"groups": {}}))
    evaluation = engine.begin()
    assert evaluation.plan is not None  # the shipped policy: actor_windows per actor
    probe = orjson.dumps(
        {
            "caller": "",
            "request": {},
            "reveal_session_id": None,
            "session": None,
            "now_ns": 0,
            "rows": [],
        }
    )
    assert evaluation.evaluate("data.veil.privacy.actor_windows", probe) == {
        "application": {},
        "user": {},
    }
    engine.sync(2, lambda: (2, {"groups": {}}))
    with pytest.raises(PolicyError, match="changed while this answer was decided"):
        evaluation.evaluate("data.veil.privacy.actor_windows", probe)
    engine.close()


def test_opa_with_an_authors_row_rule_is_asked_the_whole_decision(
    opa: FakeOpa, tmp_path: Path
) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory)
    (directory / "veil/privacy/secret.rego").write_text(RAW_RULE)
    engine = OpaEngine(directory, opa.url, 2.0)
    assert engine.begin().plan is None
    engine.close()


@pytest.mark.parametrize("ordered", [True, False])
def test_policy_files_that_use_each_other_load_in_any_order(
    opa: FakeOpa, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ordered: bool
) -> None:
    """OPA compiles each PUT with the modules it holds: a file that uses a rule of a file that
    sorts after it is put after that one (``load_order``), and without that order a refused
    file is put again after the others."""
    if not ordered:
        monkeypatch.setattr(opa_engine_module, "load_order", list)
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory)
    (directory / "veil/privacy/aaa_uses_later.rego").write_text(
        "package veil.privacy\n\nimport rego.v1\n\nprivate_rows contains i if some i in zzz_rows\n"
    )
    (directory / "veil/privacy/zzz_defines.rego").write_text(
        "package veil.privacy\n\nimport rego.v1\n\n"
        'zzz_rows contains i if {\n\tsome i, row in input.rows\n\trow.id == "a"\n}\n'
    )
    engine = OpaEngine(directory, opa.url, 2.0)
    engine.sync(1, lambda: (1, {"groups": {}}))
    assert "veil/veil/privacy/aaa_uses_later.rego" in opa.policy_ids()
    puts = opa.calls("PUT", "/v1/policies/")
    assert puts == len(SHIPPED_FILES) + 2 if ordered else puts > len(SHIPPED_FILES) + 2
    document = bob_row_document()
    assert engine.evaluate(orjson.dumps(document))["private_rows"] == [0]
    engine.close()
