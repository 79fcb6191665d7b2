"""The demo (``veil demo``): a realistic, deterministic store, and a printed walk-through that
works as printed through Veil, on real loopback servers and a real SQLite file."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient

from veil import cli
from veil.demo import Demo, DemoSettings, walkthrough
from veil.demo.runner import ADMIN, SECRET_ENV
from veil.demo.store import Directory, create_store_app, parse_time, rfc3339_ms

from conftest import POLICIES

SECRET = "demo-test-secret-that-is-long-enough"
NOW = 1_764_000_000 * 1_000_000_000  # a fixed "now" for the store's clock: 2025-11-24
MINUTE = 60 * 1_000_000_000
# Busy enough that hr (about 5% of the activity) is active within a second or two.
RATE = 6000.0


def store_client(clock_ns: list[int], seed: int = 7) -> FlaskClient:
    return create_store_app(seed=seed, clock=lambda: clock_ns[0]).test_client()


def data(client: FlaskClient, query: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/activities?{query}")
    assert response.status_code == 200, response.get_json()
    rows: list[dict[str, Any]] = response.get_json()["data"]
    return rows


# ---- the store ----------------------------------------------------------------------------


def test_store_rows_are_realistic_and_reproducible() -> None:
    clock = [NOW]
    rows = data(store_client(clock), "limit=5000")
    assert len(rows) == 5000
    assert rows == data(store_client(clock), "limit=5000")  # same seed, same activities
    assert rows != data(store_client(clock, seed=8), "limit=5000")
    assert {
        "id",
        "timestamp",
        "user",
        "actorType",
        "activity",
        "app",
        "object",
        "ip",
        "country",
    } <= set(rows[0])
    users = {r["user"] for r in rows if r["actorType"] == "user"}
    assert any(u.endswith("@contoso.com") for u in users)
    assert any(u.endswith("@eu.contoso.com") for u in users)
    assert any(u.endswith("@fabrikam.com") for u in users)  # external guests
    apps = {r["user"] for r in rows if r["actorType"] == "application"}
    assert apps and all(re.fullmatch(r"[0-9a-f-]{36}", a) for a in apps)  # app ids
    activities = {r["activity"] for r in rows}
    assert {
        "FileAccessed",
        "FileDownloaded",
        "MailItemsAccessed",
        "UserLoggedIn",
        "SharingSet",
    } <= activities
    assert len({r["id"] for r in rows}) == len(rows)
    stamps = [parse_time(r["timestamp"]) for r in rows]
    assert stamps == sorted(stamps, reverse=True)  # newest first
    assert stamps[0] <= NOW  # nothing from the future
    departments = {g["id"] for g in Directory.generate(7).departments()}
    assert {"finance", "hr", "engineering", "sales", "legal"} <= departments


def test_store_filters_and_pages() -> None:
    clock = [NOW]
    client = store_client(clock)
    since, until = "2025-11-24T10:00:00Z", "2025-11-24T11:00:00Z"
    whole = client.get(f"/api/activities?since={since}&until={until}&limit=5000").get_json()
    window = whole["data"]
    assert whole["next"] is None  # all of the hour in one answer
    assert len(window) > 1000
    assert all(parse_time(since) <= parse_time(r["timestamp"]) < parse_time(until) for r in window)
    pages: list[dict[str, Any]] = []
    cursor = ""
    while True:
        answer = client.get(f"/api/activities?since={since}&until={until}&limit=97{cursor}")
        pages += answer.get_json()["data"]
        if answer.get_json()["next"] is None:
            break
        cursor = f"&cursor={answer.get_json()['next']}"
    assert pages == window
    user = window[0]["user"]
    assert data(client, f"since={since}&until={until}&limit=5000&user={user.upper()}") == [
        r for r in window if r["user"] == user
    ]
    assert data(client, f"since={since}&until={until}&limit=5000&activity=SharingSet") == [
        r for r in window if r["activity"] == "SharingSet"
    ]
    hr = {
        m
        for g in client.get("/api/directory/groups").get_json()["groups"]
        if g["id"] == "hr"
        for m in g["members"]
    }
    assert data(client, f"since={since}&until={until}&limit=5000&department=hr") == [
        r for r in window if r["user"] in hr
    ]
    for bad in (
        "limit=0",
        "limit=5001",
        "since=yesterday",
        "until=2025-11-24T10:00:00",
        "cursor=x",
        "colour=blue",
    ):
        answer = client.get(f"/api/activities?{bad}")
        assert answer.status_code == 400, bad
        assert answer.get_json()["parameter"] == bad.split("=")[0]


def test_store_keeps_producing_activities_as_time_passes() -> None:
    clock = [NOW]
    client = store_client(clock)
    before = data(client, "limit=5000")
    clock[0] = NOW + 5 * MINUTE
    after = data(client, "limit=5000")
    newer = [r for r in after if parse_time(r["timestamp"]) > NOW]
    assert newer, "no new activity in five minutes"
    assert all(parse_time(r["timestamp"]) <= NOW + 5 * MINUTE for r in after)
    # What was there stays exactly as it was.
    old = {r["id"]: r for r in after if parse_time(r["timestamp"]) <= NOW}
    assert all(old[r["id"]] == r for r in before if r["id"] in old)


# ---- the walk-through, through Veil -------------------------------------------------------


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    settings = DemoSettings(
        port=0, store_port=0, data_dir=tmp_path / "demo", policy_dir=POLICIES, rate_per_minute=RATE
    )
    with Demo(settings, secret=SECRET) as running:
        yield running


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False
        yield session


def test_walkthrough_works_as_printed(
    demo: Demo,
    http: requests.Session,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every printed step, run as printed; and R1 (forward only) checked row by row against
    the store's own answer to the same query."""
    walk = walkthrough.steps(ADMIN)
    banner = demo.banner()
    for step in walk:
        assert walkthrough.curl(step) in banner
    assert f"export ADMIN_TOKEN={demo.admin_token}" in banner
    assert (demo.data_dir / "veil.db").is_file()
    assert demo.already_private == []
    variables = demo.variables()
    hr = {m for g in demo.groups if g["id"] == "hr" for m in g["members"]}
    assert len(hr) >= 5

    def store_answer(query: str, like: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The store's answer to ``query`` when it was made: new rows keep arriving, so stop
        at the newest row of ``like``."""
        until = rfc3339_ms(parse_time(like[0]["timestamp"]) + 1_000_000)
        answer = http.get(f"{demo.store_url}/api/activities?{query}&until={until}", timeout=10)
        rows: list[dict[str, Any]] = answer.json()["data"]
        return rows

    def run(number: int) -> Any:
        step = walk[number - 1]
        response = walkthrough.run(step, variables, http)
        assert response.status_code == step.expect, (number, response.text)
        return response.json() if response.content else None

    direct, as_admin, as_user = run(1)["data"], run(2)["data"], run(3)["data"]
    assert len(direct) == 3 and len(as_admin) == 3
    assert as_admin == store_answer("limit=3", as_admin)  # nothing is private yet
    assert as_user and all(r["activity"] == "FileDownloaded" for r in as_user)

    run(4)  # hr is private from START on
    start = parse_time(variables["START"])
    deadline = time.monotonic() + 15
    while not (new_hr := run(5)["data"]):  # the store logs hr's new activities
        assert time.monotonic() < deadline, "hr did not act within 15 s"
        time.sleep(0.3)
    assert all(r["user"] in hr and parse_time(r["timestamp"]) >= start for r in new_hr)
    assert run(6)["data"] == []  # ...which Veil hides, from the admin too
    earlier = run(7)["data"]
    assert earlier and all(r["user"] in hr and parse_time(r["timestamp"]) < start for r in earlier)

    # R1 row by row: the same window straddling START, from the store and through Veil.
    since, until = rfc3339(start / 1e9 - 10), rfc3339(time.time() + 1)
    window = f"/api/activities?since={since}&until={until}&limit=5000"
    time.sleep(1.2)  # let "until" pass, so both answers cover exactly the same rows
    stored = http.get(demo.store_url + window, timeout=10).json()["data"]
    shown = http.get(
        demo.veil_url + window, timeout=10, headers={"Authorization": f"Bearer {demo.user_token}"}
    ).json()["data"]
    assert len(stored) < 5000
    private = [r for r in stored if r["user"] in hr and parse_time(r["timestamp"]) >= start]
    assert private and any(r["user"] in hr for r in shown)  # hr before START stays visible
    assert shown == [r for r in stored if r not in private]

    assert "not an admin" in run(8)["detail"]
    run(9)
    run(10)
    revealed = run(11)["data"]  # the same query as 5 and 6, with the session
    assert revealed and revealed == store_answer(
        f"department=hr&since={variables['START']}&limit=5", revealed
    )
    records = run(12)["records"]
    assert records[-1]["details"]["count"] == len(revealed)
    assert records[-1]["details"]["ids"] == [r["id"] for r in revealed]
    assert records[-1]["details"]["justification"].startswith("Investigating")
    assert run(13)["ok"] is True
    run(14)

    # The printed command-line check reads the demo's configuration and state.
    monkeypatch.setenv(SECRET_ENV, SECRET)
    capsys.readouterr()
    assert cli.main(["governance", "verify", "--config", str(demo.config_path)]) == 0
    assert '"ok": true' in capsys.readouterr().out


def test_a_data_directory_keeps_state_and_tokens_across_runs(
    tmp_path: Path, http: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    settings = DemoSettings(port=0, store_port=0, data_dir=tmp_path / "kept", policy_dir=POLICIES)
    with Demo(settings) as first:
        assert first.already_private == []
        token = first.admin_token
        made = http.post(
            f"{first.veil_url}/veil/v1/privacy-groups",
            json={"group": "hr"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert made.status_code == 201, made.text
    assert (tmp_path / "kept" / "jwt-secret").stat().st_mode & 0o077 == 0
    with Demo(settings) as second:
        assert second.already_private == ["hr"]
        assert "already private from an earlier run" in second.banner()
        answer = http.get(
            f"{second.veil_url}/veil/v1/privacy-groups",
            timeout=10,
            headers={"Authorization": f"Bearer {token}"},
        )  # the old token
        assert answer.status_code == 200
        assert answer.json()["privacy_groups"][0]["group"] == "hr"


def test_veil_demo_command_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """``veil demo`` as a user runs it: it prints working commands, and Ctrl-C stops it."""
    env = {k: v for k, v in os.environ.items() if k != SECRET_ENV}
    with (tmp_path / "stderr").open("w") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "veil.cli",
                "demo",
                "--port",
                "0",
                "--store-port",
                "0",
                "--data-dir",
                str(tmp_path / "demo"),
                "--policy-dir",
                str(POLICIES),
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
        try:
            lines = _read_until(process, "Press Ctrl-C", timeout_s=20)
            printed = "\n".join(lines)
            exports = dict(re.findall(r"^export (\w+)=(\S+)", printed, re.M))
            exports.update(re.findall(r"(VEIL|STORE)=(http://\S+)", printed))
            assert {"VEIL", "STORE", "ADMIN_TOKEN", "USER_TOKEN"} <= set(exports)
            first_steps = walkthrough.steps(ADMIN)[:3]
            if shutil.which("curl"):  # the printed commands themselves, in a shell
                commands = [walkthrough.curl(s) for s in first_steps]
                assert all(c in printed for c in commands)
                shell = subprocess.run(
                    ["sh", "-ec", "\n".join(commands)],
                    env={**env, **exports},
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert shell.returncode == 0, shell.stderr
                assert shell.stdout.count('"actorType"') == 9
            with requests.Session() as http:
                http.trust_env = False
                answer = walkthrough.run(first_steps[1], dict(exports), http)
            assert answer.status_code == 200
            assert len(answer.json()["data"]) == 3
        finally:
            process.send_signal(signal.SIGINT)
            rest, _ = process.communicate(timeout=15)
    assert process.returncode == 0
    assert "Stopping the demo." in rest


def rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _read_until(process: subprocess.Popen[str], marker: str, timeout_s: float) -> list[str]:
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in iter(process.stdout.readline, ""):
            lines.put(line.rstrip("\n"))
            if marker in line:
                break
        else:
            lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        assert line is not None, "veil demo exited early:\n" + "\n".join(seen)
        seen.append(line)
        if marker in line:
            return seen


def test_printed_veil_commands_run_without_activating_the_venv(demo: Demo, tmp_path: Path) -> None:
    banner = demo.banner()
    listing = next(line for line in banner.splitlines() if " privacy-groups list " in line)
    assert not listing.startswith("veil ")  # the full path, or python -m veil
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no venv, no secret
    done = subprocess.run(
        ["sh", "-ec", listing], env=bare, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("[")
    lines = banner.splitlines()
    token_at = next(n for n, line in enumerate(lines) if " token --sub " in line)
    assert lines[token_at - 1].startswith(f"export {SECRET_ENV}=")
    done = subprocess.run(
        ["sh", "-ec", "\n".join(lines[token_at - 1 : token_at + 1])],
        env=bare,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    answer = requests.get(
        f"{demo.veil_url}/api/activities?limit=1",
        timeout=10,
        headers={"Authorization": f"Bearer {done.stdout.strip()}"},
    )
    assert answer.status_code == 200


def test_access_logs_say_whether_the_store_or_veil_answered(
    demo: Demo, http: requests.Session, capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    assert http.get(
        f"{demo.store_url}/api/activities?limit=1&probe=store", timeout=10
    ).status_code in (200, 400)
    assert (
        http.get(
            f"{demo.veil_url}/api/activities?limit=1",
            headers={"Authorization": f"Bearer {demo.admin_token}"},
            timeout=10,
        ).status_code
        == 200
    )
    logged = capfd.readouterr().err.splitlines()
    assert not [line for line in logged if "\x1b" in line]  # no colour codes in a capture
    assert any(
        line.startswith("store | ") and "/api/activities?limit=1&probe=store" in line
        for line in logged
    ), logged
    assert any(
        line.startswith("veil  | ") and '"GET /api/activities?limit=1 HTTP' in line
        for line in logged
    ), logged
    assert "'store |' is the activity store, 'veil  |' is Veil" in demo.banner()


def test_demo_help_and_error_tell_where_policies_come_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from veil.demo import runner
    from veil.errors import VeilError

    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    helped = capsys.readouterr().out
    assert "a plain `pip install` carries no policies" in " ".join(helped.split())
    # An installed Veil: no ./policies, and no checkout around the package.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "__file__", str(tmp_path / "site" / "veil" / "demo" / "r.py"))
    with pytest.raises(VeilError, match="an installed Veil carries no policies"):
        runner.default_policy_dir()
    (tmp_path / "policies" / "veil").mkdir(parents=True)
    (tmp_path / "policies" / "veil" / "p.rego").write_text("package veil.privacy\n")
    assert runner.default_policy_dir() == tmp_path / "policies"
