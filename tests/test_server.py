"""`veil serve` for real: gunicorn workers and threads, concurrent queries, shared metrics."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from veil import rows

from conftest import ADMIN, POLICIES, SECRET, LoopbackStore, activity, auth, config_doc, iso
from netutil import free_port, veil_serve

SEC = 1_000_000_000


@pytest.fixture
def served(store: LoopbackStore, tmp_path: Path) -> Iterator[str]:
    doc = config_doc(
        store.url, f"sqlite:///{tmp_path / 'veil.db'}", server={"workers": 2, "threads": 4}
    )
    with veil_serve(doc, tmp_path) as (url, _):
        yield url


def test_concurrent_queries_through_gunicorn(served: str, store: LoopbackStore) -> None:
    a = auth(ADMIN)
    requests.put(
        f"{served}/veil/v1/groups/finance",
        headers=a,
        timeout=10,
        json={"name": "Finance", "members": ["ann@contoso.com"]},
    ).raise_for_status()
    requests.post(
        f"{served}/veil/v1/privacy-groups", json={"group": "finance"}, headers=a, timeout=10
    ).raise_for_status()
    later = iso(time.time_ns() + 60 * SEC)
    store.state.rows = [
        activity(i, "ann@contoso.com" if i % 3 == 0 else f"u{i}@contoso.com", later)
        for i in range(300)
    ]
    expected = [f"act-{i}" for i in range(300) if i % 3]

    def query(_: int) -> list[str]:
        r = requests.get(f"{served}/api/activities", headers=a, timeout=10)
        assert r.status_code == 200, r.text
        return [row["id"] for row in r.json()["data"]]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(query, range(80)))
    assert all(answer == expected for answer in answers)
    metrics = requests.get(f"{served}/metrics", timeout=10).text
    count = next(
        float(x.split()[-1])
        for x in metrics.splitlines()
        if x.startswith("veil_policy_evaluation_seconds_count")
    )
    assert count == 80  # summed over both workers
    hidden = next(
        float(x.split()[-1]) for x in metrics.splitlines() if x.startswith("veil_rows_hidden_total")
    )
    assert hidden == 80 * 100


def test_readyz_reports_each_dependency(served: str, store: LoopbackStore) -> None:
    r = requests.get(f"{served}/readyz", timeout=10)
    assert r.status_code == 200
    assert r.json()["checks"] == {"store": True, "engine": True, "storage": True}


EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def test_sighup_reloads_policy_safely_in_every_worker(store: LoopbackStore, tmp_path: Path) -> None:
    """SIGHUP to the master: each worker checks and tests the new set before serving it; a
    broken set is refused and the old one keeps serving."""
    import shutil

    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    doc = config_doc(
        store.url,
        f"sqlite:///{tmp_path / 'veil.db'}",
        server={"workers": 2, "threads": 2},
        policy={"dir": str(policies), "reload_on_sighup": True},
    )
    a = auth(ADMIN)
    now = iso(time.time_ns())
    store.state.rows = [
        activity(1, "carl@contoso.com", now, activity="FileDownloaded"),
        activity(2, "carl@contoso.com", now, activity="FileAccessed"),
    ]

    def answers(n: int = 12) -> set[tuple[str, ...]]:
        return {
            tuple(
                row["id"]
                for row in requests.get(f"{url}/api/activities", headers=a, timeout=10).json()[
                    "data"
                ]
            )
            for _ in range(n)
        }

    def reloads() -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = requests.get(
            f"{url}/veil/v1/governance-log?action=policy_reloaded", headers=a, timeout=10
        ).json()["records"]
        return records

    def wait_for(outcome: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = [r for r in reloads() if r["details"]["outcome"] == outcome]
            if found:
                return found
            time.sleep(0.2)
        raise AssertionError(f"no {outcome} policy reload recorded: {reloads()}")

    def settled(expected: set[tuple[str, ...]]) -> set[tuple[str, ...]]:
        deadline = time.monotonic() + 30
        while (seen := answers()) != expected and time.monotonic() < deadline:
            time.sleep(0.2)
        return seen

    with veil_serve(doc, tmp_path) as (url, process):
        assert answers() == {("act-1", "act-2")}
        time.sleep(1)  # let every worker finish starting (a SIGHUP before that ends it)
        for name in ("file_downloads.rego", "file_downloads_test.rego"):
            shutil.copy(EXAMPLES / name, policies / "veil" / "privacy" / name)
        process.send_signal(signal.SIGHUP)
        assert settled({("act-2",)}) == {("act-2",)}  # every worker serves the new rule
        assert len(wait_for("accepted")) == 1  # one record, not one per worker
        (policies / "veil" / "privacy" / "file_downloads.rego").write_text(
            "package veil.privacy\nprivate_rows contains i if {\n"
        )  # a broken save
        process.send_signal(signal.SIGHUP)
        assert wait_for("refused")
        time.sleep(0.5)
        assert answers(20) == {("act-2",)}  # the accepted policy keeps serving
        assert [r["details"]["outcome"] for r in reloads()] == ["accepted", "refused"]
        assert process.poll() is None


def test_serve_refuses_a_policy_whose_tests_fail(store: LoopbackStore, tmp_path: Path) -> None:
    import shutil

    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    (policies / "veil" / "privacy" / "wrong_test.rego").write_text(
        "package veil.privacy_test\n\nimport rego.v1\n\n"
        "test_everything_is_private if data.veil.privacy.private_rows == {0}\n"
    )
    path = tmp_path / "veil.yaml"
    path.write_text(
        yaml.safe_dump(
            config_doc(store.url, f"sqlite:///{tmp_path / 'v.db'}", policy={"dir": str(policies)})
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "veil.cli",
            "serve",
            "--config",
            str(path),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "VEIL_TEST_JWT_SECRET": SECRET},
    )
    assert result.returncode == 2
    assert "test_everything_is_private" in result.stderr


def test_api_reload_reaches_every_worker(store: LoopbackStore, tmp_path: Path) -> None:
    import shutil

    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    doc = config_doc(
        store.url,
        f"sqlite:///{tmp_path / 'veil.db'}",
        server={"workers": 3, "threads": 2},
        policy={"dir": str(policies)},
    )
    a = auth(ADMIN)
    now = iso(time.time_ns())
    store.state.rows = [
        activity(1, "carl@contoso.com", now, activity="FileDownloaded"),
        activity(2, "carl@contoso.com", now, activity="FileAccessed"),
    ]
    with veil_serve(doc, tmp_path) as (url, _):
        time.sleep(1)  # let every worker finish starting
        for name in ("file_downloads.rego", "file_downloads_test.rego"):
            shutil.copy(EXAMPLES / name, policies / "veil" / "privacy" / name)
        r = requests.post(f"{url}/veil/v1/policy/reload", headers=a, timeout=30)
        assert r.status_code == 200 and r.json()["outcome"] == "accepted"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = {
                tuple(
                    row["id"]
                    for row in requests.get(f"{url}/api/activities", headers=a, timeout=10).json()[
                        "data"
                    ]
                )
                for _ in range(30)
            }
            if seen == {("act-2",)}:
                break
            time.sleep(0.2)
        assert seen == {("act-2",)}  # no worker still serves the old policy
        records = requests.get(
            f"{url}/veil/v1/governance-log?action=policy_reloaded", headers=a, timeout=10
        ).json()["records"]
        # One record for the change, the admin's: the workers that catch up on the broadcast
        # (each also watching the files) find it already said and add none.
        assert [
            (x["actor"], x["details"]["trigger"], x["details"]["outcome"]) for x in records
        ] == [(ADMIN, "api", "accepted")]

        # /readyz, whichever worker answers, shows one policy and one last reload (only
        # loaded_at, when that worker swapped the policy in, is its own).
        def reading() -> str:
            policy = requests.get(f"{url}/readyz", timeout=10).json()["policy"]
            return json.dumps([policy["digest"], policy["last_reload"]], sort_keys=True)

        deadline = time.monotonic() + 30
        while True:
            readings = {reading() for _ in range(30)}
            if len(readings) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(readings) == 1, readings
        digest, last_reload = json.loads(readings.pop())
        assert (last_reload["outcome"], last_reload["trigger"]) == ("accepted", "api")
        assert last_reload["digest"] == digest == r.json()["digest"]


def test_serve_logs_what_it_loaded(store: LoopbackStore, tmp_path: Path) -> None:
    doc = config_doc(
        store.url, f"sqlite:///{tmp_path / 'veil.db'}", server={"workers": 1, "threads": 2}
    )
    log = tmp_path / "stderr"
    with veil_serve(doc, tmp_path, log) as (url, _):
        text = log.read_text()
    port = url.rsplit(":", 1)[1]
    assert re.search(r"veil: configuration .*veil-\d+\.yaml$", text, re.M), text
    tests = len(list(POLICIES.rglob("*_test.rego")))
    policies = len(list(POLICIES.rglob("*.rego"))) - tests
    assert re.search(
        rf"veil: policy .*policies: {policies} policy and {tests} test file\(s\), "
        r"set [0-9a-f]{12}, all "
        r"\d+ policy tests passed$",
        text,
        re.M,
    ), text
    assert re.search(r"veil: engine embedded \(regorus [\d.]+, in-process\)$", text, re.M)
    reader = "in one pass by veil._rowscan" if rows.NATIVE else "in Python only"
    assert f"veil: store answers read {reader}" in text, text
    assert f"veil: storage sqlite:///{tmp_path / 'veil.db'}" in text
    assert "veil: identity jwt (HS256 secret; issuer" in text
    assert f"veil: listening on http://127.0.0.1:{port} with 1 worker(s) x 2 thread(s)" in text
    assert SECRET not in text


def test_serve_on_a_busy_port_says_so_and_names_the_option(
    store: LoopbackStore, tmp_path: Path
) -> None:
    path = tmp_path / "veil.yaml"
    path.write_text(yaml.safe_dump(config_doc(store.url, f"sqlite:///{tmp_path / 'v.db'}")))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "veil.cli", "serve", "--config", str(path), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "VEIL_TEST_JWT_SECRET": SECRET},
        )
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "--port" in result.stderr
    assert "Retrying" not in result.stderr and "Connection in use" not in result.stderr
    assert time.monotonic() - started < 30  # no gunicorn retries


def test_storage_urls_are_logged_without_their_password() -> None:
    from veil.server import redacted

    assert (
        redacted("postgresql://veil:s3cret@db:5432/veil?sslmode=require")
        == "postgresql://veil:***@db:5432/veil?sslmode=require"
    )
    assert redacted("sqlite:////var/lib/veil/veil.db") == "sqlite:////var/lib/veil/veil.db"


def test_both_readmes_say_sighup_and_the_post_reach_every_worker() -> None:
    """What test_sighup_reloads... and test_api_reload_reaches_every_worker show."""
    from conftest import ROOT

    for path in (ROOT / "README.md", ROOT / "policies" / "README.md"):
        text = " ".join(path.read_text().split())
        assert "reaches one worker" not in text, path
        assert re.search(
            r"SIGHUP[^.]*(?:reach|passed on to) every worker"
            r"|every trigger reaches every worker",
            text,
        ), path
        assert (
            re.search(r"POST[^.]*(?:reach every worker|passed on to the others)", text)
            or "both of which reach every worker" in text
        ), path
