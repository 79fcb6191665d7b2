"""The embedded engine end to end: one evaluation per answer, raw rows on demand, and every
engine fault failing closed (rows hidden; a reveal is 503)."""

from __future__ import annotations

import gc
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from veil.app import create_app
from veil.errors import PolicyError
from veil.policy import EMPTY_INPUT
from veil.policy.embedded import EmbeddedEngine

from conftest import (
    ADMIN,
    POLICIES,
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
HEADER = "\nimport rego.v1\n"


def policy_dir(tmp_path: Path, extra: dict[str, str] | None = None, shipped: bool = True) -> Path:
    target = tmp_path / "policies"
    if shipped:
        shutil.copytree(POLICIES, target)
    else:
        target.mkdir()
    for name, text in (extra or {}).items():
        (target / name).write_text(text)
    return target


def app_with(store: LoopbackStore, storage_url: str, directory: Path) -> Flask:
    return create_app(make_config(store.url, storage_url, policy={"dir": str(directory)}))


def rows_now() -> list[dict[str, object]]:
    now = iso(time.time_ns())
    return [activity(1, "ann@contoso.com", now), activity(2, "bob@contoso.com", now)]


def test_one_evaluation_per_answer(client: FlaskClient, store: LoopbackStore) -> None:
    store.state.rows = [
        activity(i, f"u{i % 7}@contoso.com", iso(time.time_ns())) for i in range(500)
    ]
    client.get("/api/activities", headers=A)
    before = client.get("/metrics").data.decode()
    client.get("/api/activities", headers=A)
    after = client.get("/metrics").data.decode()

    def count(text: str) -> float:
        line = next(
            x for x in text.splitlines() if x.startswith("veil_policy_evaluation_seconds_count")
        )
        return float(line.split()[-1])

    assert count(after) - count(before) == 1


def test_rule_on_raw_rows_is_applied(
    store: LoopbackStore, storage_url: str, tmp_path: Path
) -> None:
    rule = (
        "package veil.privacy"
        + HEADER
        + 'private_rows contains i if input.rows[i].raw.activity == "FileDownload"\n'
    )
    directory = policy_dir(tmp_path, {"downloads.rego": rule})
    app = app_with(store, storage_url, directory)
    assert app.extensions["veil"].engine.needs_raw is True
    store.state.rows = [
        *rows_now(),
        activity(3, "carl@contoso.com", iso(time.time_ns()), activity="FileDownload"),
    ]
    assert ids(app.test_client().get("/api/activities", headers=A)) == ["act-1", "act-2"]


def test_raw_rows_are_left_out_when_no_rule_reads_them(app: Flask) -> None:
    assert app.extensions["veil"].engine.needs_raw is False


BROKEN_AT_EVALUATION = (
    "package veil.privacy"
    + HEADER
    + """
private_rows contains i if {
	some i, row in input.rows
	ambiguous(row) == 1
}

ambiguous(row) := 1
ambiguous(row) := 2 if row.actor
"""
)

UNDEFINED_WITH_ROWS = (
    "package veil.privacy"
    + HEADER
    + """
private_rows contains 0 if false
decision := {"private_rows": private_rows, "reveal": false, "refusals": set()} if {
	count(input.rows) == 0
}
"""
)

MALFORMED_WITH_ROWS = (
    "package veil.privacy"
    + HEADER
    + """
private_rows contains 0 if false
decision := {"private_rows": private_rows, "reveal": false, "refusals": set()} if {
	count(input.rows) == 0
}
decision := {"private_rows": ["first"], "reveal": true} if count(input.rows) > 0
"""
)


@pytest.mark.parametrize(
    "files,shipped",
    [
        ({"broken.rego": BROKEN_AT_EVALUATION}, True),
        ({"undefined.rego": UNDEFINED_WITH_ROWS}, False),
        ({"malformed.rego": MALFORMED_WITH_ROWS}, False),
    ],
    ids=["error-at-evaluation", "undefined-decision", "malformed-decision"],
)
def test_engine_faults_fail_closed(
    store: LoopbackStore, storage_url: str, tmp_path: Path, files: dict[str, str], shipped: bool
) -> None:
    app = app_with(store, storage_url, policy_dir(tmp_path, files, shipped))
    client = app.test_client()
    store.state.rows = rows_now()
    r = client.get("/api/activities", headers=A)
    assert r.status_code == 200
    assert ids(r) == []
    assert r.headers["Veil-Degraded"] == "policy"
    permit(client)
    sid = open_session(client, why="x")
    r = client.get("/api/activities", headers={**A, "Veil-Reveal-Session": sid})
    assert r.status_code == 503
    assert b"act-" not in r.data
    assert "veil_policy_failures_total 2.0" in client.get("/metrics").data.decode()


@pytest.mark.parametrize(
    "files,message",
    [
        ({"x.rego": "package veil.privacy\nprivate_rows contains i if {"}, "does not compile"),
        ({"x.rego": "package other" + HEADER + "y := 1\n"}, "is undefined"),
        ({"x_test.rego": "package veil.privacy_test" + HEADER + "test_x if true\n"}, "no policy"),
    ],
    ids=["syntax", "no-decision", "only-tests"],
)
def test_broken_policy_stops_start_up(tmp_path: Path, files: dict[str, str], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        EmbeddedEngine(policy_dir(tmp_path, files, shipped=False))


def test_storage_never_read_means_every_row_hidden(store: LoopbackStore, tmp_path: Path) -> None:
    db = tmp_path / "veil.db"
    app = create_app(make_config(store.url, f"sqlite:///{db}"))
    storage = app.extensions["veil"].storage
    storage.close()
    db.unlink()
    db.mkdir()  # the file is now a directory: every read fails
    store.state.rows = rows_now()
    r = app.test_client().get("/api/activities", headers=A)
    assert r.status_code == 200
    assert ids(r) == []
    assert r.headers["Veil-Degraded"] == "policy"


def test_an_engine_collected_in_another_thread_drops_no_interpreter_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A regorus interpreter dropped outside the thread that made it is an unraisable error
    (and, under gunicorn or a test run, lands in whatever code runs the collector next)."""
    unraisable: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda hook: unraisable.append(str(hook.exc_value)))
    holder = [EmbeddedEngine(POLICIES)]  # the worker must not keep the engine alive itself
    evaluated, release = threading.Event(), threading.Event()

    def worker() -> None:
        holder[0].evaluate(json.dumps(EMPTY_INPUT).encode())  # an interpreter made here
        evaluated.set()
        release.wait(30)
        EmbeddedEngine(POLICIES).evaluate(json.dumps(EMPTY_INPUT).encode())  # purges here

    thread = threading.Thread(target=worker)
    thread.start()
    assert evaluated.wait(30)
    holder.clear()
    gc.collect()  # the engine dies here, in the main thread, while the worker lives on
    release.set()
    thread.join(30)
    gc.collect()
    assert unraisable == []
