"""Safe hot reload: a policy set is served only when it checks and its own tests pass; a
refused one leaves the old policy serving, shows on /readyz and in the governance log, and
queries are answered throughout (real loopback store, real SQLite)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from veil import governance
from veil import policy_reload as reload
from veil.app import create_app
from veil.errors import PolicyError, StorageError
from veil.policy import DECISION, load_modules
from veil.policy.embedded import EmbeddedEngine

from conftest import ADMIN, POLICIES, ROOT, LoopbackStore, activity, auth, ids, iso, make_config

A = auth(ADMIN)
EXAMPLES = ROOT / "docs" / "examples"
PRIVACY = Path("veil") / "privacy"
HEADER = "package veil.privacy\n\nimport rego.v1\n\n"
FINANCE = {"name": "Finance", "members": ["ann@contoso.com"]}


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target, ignore=shutil.ignore_patterns("*.md"))
    return target


@pytest.fixture
def served(store: LoopbackStore, storage_url: str, policies: Path) -> Iterator[Flask]:
    app = create_app(make_config(store.url, storage_url, policy={"dir": str(policies)}))
    yield app
    reload.stop(app)
    app.extensions["veil"].storage.close()


@pytest.fixture
def client(served: Flask) -> FlaskClient:
    client = served.test_client()
    assert client.put("/veil/v1/groups/finance", json=FINANCE, headers=A).status_code == 201
    assert (
        client.post("/veil/v1/privacy-groups", json={"group": "finance"}, headers=A).status_code
        == 201
    )
    return client


def add_example(policies: Path) -> None:
    for name in ("file_downloads.rego", "file_downloads_test.rego"):
        shutil.copy(EXAMPLES / name, policies / PRIVACY / name)


def rows_now() -> list[dict[str, Any]]:
    now = iso(time.time_ns())
    return [
        activity(1, "ann@contoso.com", now),  # private: finance is private
        activity(2, "carl@contoso.com", now),
        activity(3, "carl@contoso.com", now, activity="FileDownloaded"),
    ]


def reloads(client: FlaskClient) -> list[dict[str, Any]]:
    page = client.get("/veil/v1/governance-log?action=policy_reloaded", headers=A).get_json()
    return [record["details"] for record in page["records"]]


def file_hashes(policies: Path) -> dict[str, str]:
    import hashlib

    return {
        p.relative_to(policies).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(policies.rglob("*.rego"))
    }


# ---- accepted ----------------------------------------------------------------------------


def test_reload_that_checks_and_passes_its_tests_is_served(
    client: FlaskClient, store: LoopbackStore, policies: Path
) -> None:
    store.state.rows = rows_now()
    assert ids(client.get("/api/activities", headers=A)) == ["act-2", "act-3"]
    add_example(policies)

    response = client.post("/veil/v1/policy/reload", headers=A)

    assert response.status_code == 200
    body = response.get_json()
    assert body["outcome"] == "accepted" and body["trigger"] == "api"
    assert ids(client.get("/api/activities", headers=A)) == ["act-2"]
    (record,) = reloads(client)
    assert record["outcome"] == "accepted"
    assert record["files"] == file_hashes(policies)
    assert record["tests"]["failed"] == 0 and record["tests"]["passed"] >= 20
    assert record["digest"] == body["digest"] and record["previous_digest"] != body["digest"]
    ready = client.get("/readyz").get_json()["policy"]
    assert ready["digest"] == body["digest"] and ready["last_reload"]["outcome"] == "accepted"
    assert client.get("/veil/v1/governance-log/verify", headers=A).get_json()["ok"] is True


def test_reload_of_unchanged_files_is_a_no_op(client: FlaskClient) -> None:
    response = client.post("/veil/v1/policy/reload", headers=A)
    assert response.status_code == 200
    assert response.get_json()["outcome"] == "unchanged"
    assert reloads(client) == []


def test_only_admins_may_reload(client: FlaskClient, policies: Path) -> None:
    add_example(policies)
    response = client.post("/veil/v1/policy/reload", headers=auth("bob@contoso.com"))
    assert response.status_code == 403
    assert reloads(client) == []


# ---- refused -----------------------------------------------------------------------------

BROKEN: dict[str, tuple[dict[str, str | None], str]] = {
    "syntax error": ({"broken.rego": HEADER + "private_rows contains i if {\n"}, "does not check"),
    "v0 syntax": (
        {"old.rego": "package veil.privacy\n\nprivate_rows[i] { input.rows[i] }\n"},
        "does not check",
    ),
    "failing test": (
        {"everything.rego": HEADER + ("private_rows contains i if some i, _ in input.rows\n")},
        "policy tests failed",
    ),
    "missing entry point": ({"decision.rego": None}, "does not check"),
    "no tests": ({"*_test.rego": None}, "has no tests"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_change_is_refused_and_the_old_policy_keeps_serving(
    client: FlaskClient, store: LoopbackStore, policies: Path, case: str
) -> None:
    changes, reason = BROKEN[case]
    store.state.rows = rows_now()
    before = client.get("/readyz").get_json()["policy"]["digest"]
    for name, text in changes.items():
        if text is None:
            for path in (policies / PRIVACY).glob(name):
                path.unlink()
            if name == "decision.rego":  # keep a policy file, without the entry points
                (policies / PRIVACY / "other.rego").write_text(HEADER + "x := 1\n")
        else:
            (policies / PRIVACY / name).write_text(text)

    response = client.post("/veil/v1/policy/reload", headers=A)

    assert response.status_code == 422
    problem = response.get_json()
    assert problem["outcome"]["outcome"] == "refused" and reason in problem["detail"]
    assert "keeps serving" in problem["detail"]
    if case != "no tests":
        assert problem["problems"]
    assert ids(client.get("/api/activities", headers=A)) == ["act-2", "act-3"]
    ready = client.get("/readyz")
    assert ready.status_code == 200
    status = ready.get_json()["policy"]
    assert status["digest"] == before
    assert status["last_reload"]["outcome"] == "refused"
    assert reason in status["last_reload"]["reason"]
    (record,) = reloads(client)
    assert record["outcome"] == "refused" and reason in record["reason"]
    assert record["files"] == file_hashes(policies)


def test_refused_reload_is_logged(
    client: FlaskClient, policies: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (policies / PRIVACY / "broken.rego").write_text(HEADER + "x := {\n")
    with caplog.at_level("ERROR", logger="veil.reload"):
        client.post("/veil/v1/policy/reload", headers=A)
    assert any(
        "policy reload refused" in r.getMessage() and "broken.rego:" in r.getMessage()
        for r in caplog.records
    )


def test_reload_that_cannot_be_audited_is_undone(
    client: FlaskClient,
    store: LoopbackStore,
    served: Flask,
    policies: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store.state.rows = rows_now()
    add_example(policies)

    def unavailable(*_args: Any, **_kwargs: Any) -> dict[str, Any]:
        raise StorageError("storage is down")

    monkeypatch.setattr(served.extensions["veil"].storage, "record", unavailable)
    response = client.post("/veil/v1/policy/reload", headers=A)
    assert response.status_code == 422
    assert "governance log is unavailable" in response.get_json()["detail"]
    monkeypatch.undo()
    assert ids(client.get("/api/activities", headers=A)) == ["act-2", "act-3"]
    assert served.extensions["veil"].engine.needs_raw is False


# ---- queries during reloads --------------------------------------------------------------


def test_queries_are_answered_while_reloads_are_accepted_and_refused(
    client: FlaskClient, served: Flask, store: LoopbackStore, policies: Path
) -> None:
    store.state.rows = rows_now()
    answers: list[tuple[int, list[str]]] = []
    stop = threading.Event()

    def query() -> None:
        own = served.test_client()
        while not stop.is_set():
            response = own.get("/api/activities", headers=A)
            answers.append((response.status_code, ids(response)))

    workers = [threading.Thread(target=query) for _ in range(3)]
    for worker in workers:
        worker.start()
    outcomes = []
    try:
        broken = policies / PRIVACY / "broken.rego"
        for _round in range(3):
            add_example(policies)
            outcomes.append(client.post("/veil/v1/policy/reload", headers=A).status_code)
            broken.write_text(HEADER + "x := {\n")
            outcomes.append(client.post("/veil/v1/policy/reload", headers=A).status_code)
            broken.unlink()
            for name in ("file_downloads.rego", "file_downloads_test.rego"):
                (policies / PRIVACY / name).unlink()
            outcomes.append(client.post("/veil/v1/policy/reload", headers=A).status_code)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert outcomes == [200, 422, 200] * 3
    assert len(answers) > 10
    assert {status for status, _ in answers} == {200}
    # Ann's activity (a private group) never leaks; the download shows only under the old policy.
    assert {tuple(seen) for _, seen in answers} <= {("act-2", "act-3"), ("act-2",)}


def test_an_input_built_without_raw_rows_is_not_judged_by_a_policy_that_reads_them(
    policies: Path,
) -> None:
    engine = EmbeddedEngine(policies)
    engine.sync(1, lambda: (1, {"privacy_groups": {}}))
    held = engine.begin()  # the answer's hold, taken before its input is built
    assert held.needs_raw is False  # so its rows are built without raw
    add_example(policies)
    engine.reload(load_modules(policies))
    assert engine.needs_raw is True
    row = {"index": 0, "id": "a", "actor": "carl@contoso.com", "actor_type": "user", "ts_ns": 1}
    document: dict[str, Any] = {
        "caller": "",
        "request": {},
        "reveal_session_id": None,
        "session": None,
        "now_ns": 2,
        "rows": [row],
    }
    # Evaluated with the policy the input was built for: no rule sees a missing raw.
    assert held.evaluate(DECISION, orjson.dumps(document))["private_rows"] == set()
    # Decided again on newer state (a reveal's record), the answer keeps its policy.
    engine.sync(2, lambda: (2, {"privacy_groups": {}}))
    again = engine.begin(held)
    assert again.needs_raw is False and again.key != held.key
    assert again.evaluate(DECISION, orjson.dumps(document))["private_rows"] == set()
    # A new answer holds the new policy, and carries raw rows.
    later = engine.begin()
    assert later.needs_raw is True
    raw_row = {**row, "raw": {"activity": "FileDownloaded"}}
    assert later.evaluate(DECISION, orjson.dumps({**document, "rows": [raw_row]}))[
        "private_rows"
    ] == {0}


def test_reading_needs_raw_pins_nothing(policies: Path) -> None:
    """``needs_raw`` on the engine only reports: what evaluates is chosen by a hold alone."""
    engine = EmbeddedEngine(policies)
    engine.sync(1, lambda: (1, {"privacy_groups": {}}))
    assert engine.needs_raw is False
    add_example(policies)
    engine.reload(load_modules(policies))
    raw_row = {
        "index": 0,
        "id": "a",
        "actor": "carl@contoso.com",
        "actor_type": "user",
        "ts_ns": 1,
        "raw": {"activity": "FileDownloaded"},
    }
    document: dict[str, Any] = {
        "caller": "",
        "request": {},
        "reveal_session_id": None,
        "session": None,
        "now_ns": 2,
        "rows": [raw_row],
    }
    assert engine.evaluate(orjson.dumps(document))["private_rows"] == {0}  # the new policy


def test_a_hold_is_continued_only_by_its_engine(policies: Path) -> None:
    engine, other = EmbeddedEngine(policies), EmbeddedEngine(policies)
    with pytest.raises(PolicyError, match="only be continued by the engine that began it"):
        other.begin(engine.begin())


# ---- file watch and SIGHUP ---------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def last_outcome(app: Flask) -> str | None:
    last = app.extensions[reload.EXTENSION].status()["last_reload"]
    return None if last is None else str(last["outcome"])


def test_file_watch_reloads_a_good_change_and_refuses_a_broken_one(
    client: FlaskClient, served: Flask, store: LoopbackStore, policies: Path
) -> None:
    store.state.rows = rows_now()
    triggers = reload.ReloadTriggers(served.extensions[reload.EXTENSION], 0.05, sighup=False)
    triggers.start()
    try:
        add_example(policies)
        wait_for(lambda: last_outcome(served) == "accepted")
        assert ids(client.get("/api/activities", headers=A)) == ["act-2"]
        (policies / PRIVACY / "broken.rego").write_text(HEADER + "x := {\n")
        wait_for(lambda: last_outcome(served) == "refused")
        assert ids(client.get("/api/activities", headers=A)) == ["act-2"]
    finally:
        triggers.stop()
    records = reloads(client)
    assert [(r["outcome"], r["trigger"]) for r in records] == [
        ("accepted", "file_watch"),
        ("refused", "file_watch"),
    ]
    log = client.get("/veil/v1/governance-log?action=policy_reloaded", headers=A).get_json()
    assert {r["actor"] for r in log["records"]} == {reload.ACTOR_WATCH}


def test_sighup_reloads(
    client: FlaskClient, served: Flask, store: LoopbackStore, policies: Path
) -> None:
    before = signal.getsignal(signal.SIGHUP)
    triggers = reload.ReloadTriggers(served.extensions[reload.EXTENSION], None, sighup=True)
    triggers.start()
    try:
        add_example(policies)
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for(lambda: last_outcome(served) == "accepted")
    finally:
        triggers.stop()
    assert signal.getsignal(signal.SIGHUP) == before
    (record,) = reloads(client)
    assert record["trigger"] == "sighup"


def test_readyz_names_the_policy_being_served(client: FlaskClient, policies: Path) -> None:
    status = client.get("/readyz").get_json()["policy"]
    files = file_hashes(policies)
    assert status["files"] == len(files)
    expected = "".join(f"{name}\0{sha}\n" for name, sha in sorted(files.items()))
    import hashlib

    assert status["digest"] == hashlib.sha256(expected.encode()).hexdigest()
    assert status["last_reload"] is None


# ---- start-up: the log's newest word is what a process serves ------------------------------


@pytest.fixture
def start(store: LoopbackStore, storage_url: str, policies: Path) -> Iterator[Callable[[], Flask]]:
    """Start an app (a process, a worker, a replica) on the shared storage and ``policies``."""
    apps: list[Flask] = []

    def started() -> Flask:
        apps.append(create_app(make_config(store.url, storage_url, policy={"dir": str(policies)})))
        return apps[-1]

    yield started
    for app in apps:
        reload.stop(app)
        app.extensions["veil"].storage.close()


def digests(client: FlaskClient) -> list[tuple[str, str, str | None, str | None]]:
    """Each ``policy_reloaded`` record as (trigger, outcome, digest, previous digest)."""
    return [
        (r["trigger"], r["outcome"], r["digest"], r["previous_digest"]) for r in reloads(client)
    ]


def serving(app: Flask) -> str:
    digest: str = app.extensions[reload.EXTENSION].status()["digest"]
    return digest


def remove_example(policies: Path) -> None:
    for name in ("file_downloads.rego", "file_downloads_test.rego"):
        (policies / PRIVACY / name).unlink()


def test_a_reload_after_a_restart_on_older_files_is_recorded(
    start: Callable[[], Flask], policies: Path
) -> None:
    """A->B is recorded, the files go back to A and the process restarts, then A->B again:
    the restart on A is recorded (the log's newest record named B), so the second change is
    a record of its own, not hidden behind the older "accepted B"."""
    first = start()
    a = serving(first)
    add_example(policies)
    outcome = first.extensions[reload.EXTENSION].reload("file_watch", reload.ACTOR_WATCH)
    assert outcome.outcome == "accepted"
    b = serving(first)
    reload.stop(first)
    remove_example(policies)
    second = start()  # the restart, serving A again
    client = second.test_client()
    assert serving(second) == a
    add_example(policies)
    outcome = second.extensions[reload.EXTENSION].reload("file_watch", reload.ACTOR_WATCH)
    assert outcome.outcome == "accepted" and serving(second) == b
    assert digests(client) == [
        ("file_watch", "accepted", b, a),
        ("start-up", "accepted", a, None),
        ("file_watch", "accepted", b, a),
    ]
    log = client.get("/veil/v1/governance-log?action=policy_reloaded", headers=A).get_json()
    assert log["records"][1]["actor"] == reload.ACTOR_START


def test_processes_starting_on_the_newest_recorded_set_add_no_record(
    start: Callable[[], Flask], policies: Path
) -> None:
    """A fresh log has nothing to contradict: workers starting on it write nothing; after a
    change, a worker replaced on the set the log names last writes nothing either."""
    first = start()
    start(), start()  # more workers on the same files
    client = first.test_client()
    assert digests(client) == []
    add_example(policies)
    assert first.extensions[reload.EXTENSION].reload("api", ADMIN).outcome == "accepted"
    restarted = start()
    assert serving(restarted) == serving(first)
    assert [r[0] for r in digests(client)] == ["api"]


def test_a_process_coming_from_another_set_records_its_own_change(
    start: Callable[[], Flask], policies: Path
) -> None:
    """Two processes reach B, one from A and one from C: the newest record ("accepted B from
    A") does not say what the second did, so it writes its own."""
    on_a = start()
    extra = policies / PRIVACY / "extra.rego"
    extra.write_text(HEADER + "extra_marker := 1\n")
    on_c = start()
    a, c = serving(on_a), serving(on_c)
    assert a != c
    extra.unlink()
    add_example(policies)
    for app in (on_a, on_c):
        outcome = app.extensions[reload.EXTENSION].reload("file_watch", reload.ACTOR_WATCH)
        assert outcome.outcome == "accepted"
    b = serving(on_a)
    assert serving(on_c) == b
    on_a.extensions[reload.EXTENSION].reload("sighup", reload.ACTOR_SIGNAL)  # unchanged: none
    assert digests(on_a.test_client()) == [
        ("file_watch", "accepted", b, a),
        ("file_watch", "accepted", b, c),
    ]


def test_a_start_up_that_cannot_be_recorded_serves_with_a_warning(
    start: Callable[[], Flask],
    policies: Path,
    store: LoopbackStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from veil.storage import Storage

    first = start()
    add_example(policies)
    assert first.extensions[reload.EXTENSION].reload("api", ADMIN).outcome == "accepted"
    remove_example(policies)  # a restart on other files than the log's newest record names

    def unavailable(*_args: Any, **_kwargs: Any) -> dict[str, Any]:
        raise StorageError("storage is down")

    monkeypatch.setattr(Storage, "record", unavailable)
    with caplog.at_level("WARNING", logger="veil.reload"):
        app = start()
    assert any(
        "could not be recorded in the governance log at start-up" in r.getMessage()
        for r in caplog.records
    )
    monkeypatch.undo()
    store.state.rows = rows_now()
    client = app.test_client()
    assert client.get("/api/activities", headers=A).status_code == 200
    assert [r[0] for r in digests(client)] == ["api"]


def test_a_change_after_an_unrecorded_start_up_is_recorded(
    start: Callable[[], Flask], policies: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log's newest record is "accepted B from A"; a restart on A cannot write its
    start-up record; the next A -> B of that process is recorded all the same."""
    from veil.storage import Storage

    first = start()
    a = serving(first)
    add_example(policies)
    assert first.extensions[reload.EXTENSION].reload("api", ADMIN).outcome == "accepted"
    reload.stop(first)
    remove_example(policies)
    recorded = Storage.record

    def unavailable(*_args: Any, **_kwargs: Any) -> dict[str, Any]:
        raise StorageError("storage is down")

    monkeypatch.setattr(Storage, "record", unavailable)
    second = start()  # serves A; the log still says B
    monkeypatch.setattr(Storage, "record", recorded)
    assert serving(second) == a
    add_example(policies)
    outcome = second.extensions[reload.EXTENSION].reload("file_watch", reload.ACTOR_WATCH)
    assert outcome.outcome == "accepted"
    assert [r[0] for r in digests(second.test_client())] == ["api", "file_watch"]


def test_policy_reloaded_is_a_governance_action() -> None:
    assert "policy_reloaded" in governance.ACTIONS


def test_openapi_documents_the_reload_route(client: FlaskClient) -> None:
    document = client.get("/veil/v1/openapi.json", headers=A).get_json()
    operation = document["paths"]["/veil/v1/policy/reload"]["post"]
    assert set(operation["responses"]) == {"200", "401", "403", "422"}
    assert json.dumps(operation).count("accepted") == 1
