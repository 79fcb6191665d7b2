"""PostgreSQL storage for real: several `veil serve` replicas on one database, one chain.

Each replica is a real `veil serve` (gunicorn) process; they share one database of the
throw-away cluster of tests/postgres.py and one loopback activity store.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import yaml
from flask import Flask

from veil.app import create_app
from veil.errors import StorageError
from veil.storage import Storage, open_storage
from veil.storage.migrations import MIGRATIONS
from veil.storage.postgres import to_pyformat

from conftest import (
    ADMIN,
    GRANTOR,
    SECRET,
    LoopbackStore,
    activity,
    auth,
    config_doc,
    iso,
    make_config,
)
from netutil import free_port, wait_until_ready
from postgres import PostgresCluster, require_bin_dir

SEC = 1_000_000_000
A = auth(ADMIN)
ANN = "ann@contoso.com"  # in finance, the private group
CAROL = "carol@contoso.com"  # public
DAVE = "dave@contoso.com"  # an ordinary caller
BOB = "bob@contoso.com"  # an admin who may view private activities
STORAGE_TIMEOUT_S = 2


@dataclass
class Replica:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def call(self, method: str, path: str, who: str = ADMIN, **kwargs: Any) -> requests.Response:
        headers = {**auth(who), **kwargs.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def query(self, who: str = DAVE, session: str | None = None) -> requests.Response:
        headers = {"Veil-Reveal-Session": session} if session else {}
        return self.call("GET", "/api/activities", who, headers=headers)

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


@dataclass
class Fleet:
    replicas: list[Replica]
    config: Path
    database_url: str


def row_ids(response: requests.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [row["id"] for row in response.json()["data"]]


def wait_up(replica: Replica, timeout_s: float = 90) -> None:
    wait_until_ready(
        replica.url + "/healthz", timeout_s, process=replica.process, describe=replica.log_tail
    )


@pytest.fixture
def fleet(
    store: LoopbackStore, postgres_url: str, tmp_path: Path
) -> Iterator[Callable[..., Fleet]]:
    """Start N replicas at the same moment (so they also race to migrate the schema)."""
    started: list[Replica] = []

    def start(count: int = 3, workers: int = 1, threads: int = 8) -> Fleet:
        doc = config_doc(
            store.url,
            postgres_url,
            server={"workers": workers, "threads": threads},
            storage={"url": postgres_url, "timeout_s": STORAGE_TIMEOUT_S},
        )
        path = tmp_path / "veil.yaml"
        path.write_text(yaml.safe_dump(doc))
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        replicas = []
        for index in range(count):
            port = free_port()
            log = tmp_path / f"replica-{index}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "veil.cli",
                        "serve",
                        "--config",
                        str(path),
                        "--port",
                        str(port),
                    ],
                    env={**env, "VEIL_TEST_JWT_SECRET": SECRET},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            replicas.append(Replica(f"http://127.0.0.1:{port}", process, log))
        started.extend(replicas)
        for replica in replicas:
            wait_up(replica)
        return Fleet(replicas, path, postgres_url)

    yield start
    for replica in started:
        replica.process.send_signal(signal.SIGTERM)
    for replica in started:
        try:
            assert replica.process.wait(timeout=30) == 0, replica.log_tail()
        finally:
            if replica.process.poll() is None:
                replica.process.kill()


def whole_log(replica: Replica) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    cursor = "0"
    while cursor is not None:
        r = replica.call("GET", f"/veil/v1/governance-log?limit=1000&cursor={cursor}")
        assert r.status_code == 200, r.text
        records += r.json()["records"]
        cursor = r.json()["next_cursor"]
    return records


def assert_one_chain(fleet: Fleet, expected: int) -> list[dict[str, Any]]:
    """Every replica and the CLI verify the same chain of exactly ``expected`` records."""
    for replica in fleet.replicas:
        r = replica.call("GET", "/veil/v1/governance-log/verify")
        assert r.status_code == 200, r.text
        assert r.json() == {"ok": True, "records": expected}
    cli = subprocess.run(
        [sys.executable, "-m", "veil.cli", "governance", "verify", "--config", str(fleet.config)],
        env={**os.environ, "VEIL_TEST_JWT_SECRET": SECRET},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert json.loads(cli.stdout) == {"ok": True, "records": expected}
    records = whole_log(fleet.replicas[0])
    assert [r["seq"] for r in records] == list(range(1, expected + 1))
    for before, after in itertools.pairwise(records):
        assert after["prev_hash"] == before["hash"]
    return records


def make_private(replica: Replica, store: LoopbackStore) -> None:
    """finance (ann) private from now; the store answers one private and one public row."""
    assert (
        replica.call(
            "PUT", "/veil/v1/groups/finance", json={"name": "Finance", "members": [ANN]}
        ).status_code
        == 201
    )
    assert (
        replica.call("POST", "/veil/v1/privacy-groups", json={"group": "finance"}).status_code
        == 201
    )
    later = iso(time.time_ns() + 600 * SEC)
    store.state.rows = [activity(1, ANN, later), activity(2, CAROL, later)]


def make_viewer(replica: Replica, who: str) -> None:
    assert replica.call("POST", "/veil/v1/admins", json={"principal": who}).status_code == 201
    assert (
        replica.call("POST", "/veil/v1/private-viewers", json={"principal": who}).status_code == 201
    )


def open_session(replica: Replica, who: str) -> str:
    r = replica.call(
        "POST",
        "/veil/v1/reveal-sessions",
        who,
        json={"acknowledge_audit": True, "justification": "case INC-7"},
    )
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


# ---- one chain across replicas ------------------------------------------------------------

VIEWERS = [f"viewer{i}@contoso.com" for i in range(6)]
REVEALS_EACH = 8
GROUPS_EACH = 3


def test_concurrent_writes_through_three_replicas_keep_one_chain(
    fleet: Callable[..., Fleet], store: LoopbackStore
) -> None:
    fleet_ = fleet(3, workers=2, threads=4)
    replicas = fleet_.replicas
    with psycopg.connect(fleet_.database_url) as conn:
        assert conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [
            (v,) for v in range(1, len(MIGRATIONS) + 1)
        ]
    make_private(replicas[0], store)
    for who in VIEWERS:
        make_viewer(replicas[1], who)
    setup_records = 2 + 2 * len(VIEWERS)
    start = threading.Barrier(len(VIEWERS) + 2)

    def investigator(t: int) -> int:
        """Open a session, reveal, import groups, toggle privacy, end; all on every replica."""
        who = VIEWERS[t]

        def on(i: int) -> Replica:
            return replicas[(t + i) % len(replicas)]

        start.wait()
        written = 0
        sid = open_session(on(0), who)
        written += 1
        for i in range(REVEALS_EACH):
            assert row_ids(on(i).query(who, sid)) == ["act-1", "act-2"]
            written += 1
            if i < GROUPS_EACH:
                r = on(i + 1).call(
                    "PUT",
                    f"/veil/v1/groups/g-{t}-{i}",
                    json={"name": f"G {t} {i}", "members": [f"u{t}@contoso.com"]},
                )
                assert r.status_code == 201, r.text
                written += 1
        assert (
            on(1).call("POST", "/veil/v1/privacy-groups", json={"group": f"g-{t}-0"}).status_code
            == 201
        )
        assert on(2).call("DELETE", f"/veil/v1/privacy-groups/g-{t}-0").status_code == 204
        assert on(0).call("DELETE", f"/veil/v1/reveal-sessions/{sid}", who).status_code == 204
        return written + 3

    def bystander(t: int) -> int:
        """Plain queries all along: the private row never shows."""
        start.wait()
        for i in range(20):
            assert row_ids(replicas[(t + i) % len(replicas)].query()) == ["act-2"]
        return 0

    with ThreadPoolExecutor(len(VIEWERS) + 2) as pool:
        futures = [pool.submit(investigator, t) for t in range(len(VIEWERS))]
        futures += [pool.submit(bystander, t) for t in range(2)]
        written = sum(f.result() for f in futures)

    expected = setup_records + written
    assert written == len(VIEWERS) * (1 + REVEALS_EACH + GROUPS_EACH + 3)
    records = assert_one_chain(fleet_, expected)
    actions = Counter(r["action"] for r in records)
    assert actions == {
        "group_imported": 1 + len(VIEWERS) * GROUPS_EACH,
        "privacy_group_added": 1 + len(VIEWERS),
        "privacy_group_removed": len(VIEWERS),
        "admin_added": len(VIEWERS),
        "permission_granted": len(VIEWERS),
        "reveal_session_opened": len(VIEWERS),
        "activities_revealed": len(VIEWERS) * REVEALS_EACH,
        "reveal_session_ended": len(VIEWERS),
    }
    assert all(
        r["details"]["ids"] == ["act-1"] for r in records if r["action"] == "activities_revealed"
    )


# ---- a change through one replica applies on every replica --------------------------------


def test_change_through_one_replica_takes_effect_on_every_replica(
    fleet: Callable[..., Fleet], store: LoopbackStore
) -> None:
    r0, r1, r2 = fleet(3).replicas
    assert (
        r0.call(
            "PUT", "/veil/v1/groups/finance", json={"name": "Finance", "members": [ANN]}
        ).status_code
        == 201
    )
    later = iso(time.time_ns() + 600 * SEC)
    store.state.rows = [activity(1, ANN, later), activity(2, CAROL, later)]
    make_viewer(r0, BOB)
    for replica in (r0, r1, r2):  # every replica has loaded the state: nothing private yet
        assert row_ids(replica.query()) == ["act-1", "act-2"]

    # a privacy group added through r1
    assert r1.call("POST", "/veil/v1/privacy-groups", json={"group": "finance"}).status_code == 201
    for replica in (r0, r1, r2):
        assert row_ids(replica.query()) == ["act-2"]

    # a session ended through r0
    first = open_session(r2, BOB)
    for replica in (r0, r1, r2):
        assert row_ids(replica.query(BOB, first)) == ["act-1", "act-2"]
    assert r0.call("DELETE", f"/veil/v1/reveal-sessions/{first}", BOB).status_code == 204
    for replica in (r1, r2):
        r = replica.query(BOB, first)
        assert r.status_code == 403 and b"act-1" not in r.content

    # the permission revoked through r2
    second = open_session(r1, BOB)
    assert row_ids(r0.query(BOB, second)) == ["act-1", "act-2"]
    assert r2.call("DELETE", f"/veil/v1/private-viewers/{BOB}").status_code == 204
    for replica in (r0, r1):
        r = replica.query(BOB, second)
        assert r.status_code == 403 and b"act-1" not in r.content
    refused = r0.call(
        "POST",
        "/veil/v1/reveal-sessions",
        BOB,
        json={"acknowledge_audit": True, "justification": "again"},
    )
    assert refused.status_code == 403

    # the privacy group ended through r0: later activities show again everywhere
    assert r0.call("DELETE", "/veil/v1/privacy-groups/finance").status_code == 204
    for replica in (r1, r2):
        assert row_ids(replica.query()) == ["act-1", "act-2"]


# ---- PostgreSQL down, then back -----------------------------------------------------------


def test_postgres_down_503_for_writes_and_reveals_queries_hide_every_row_then_recovery(
    fleet: Callable[..., Fleet], store: LoopbackStore, postgres_cluster: PostgresCluster
) -> None:
    fleet_ = fleet(3)
    replicas = fleet_.replicas
    pids = [r.process.pid for r in replicas]
    make_private(replicas[0], store)
    make_viewer(replicas[0], BOB)
    sid = open_session(replicas[1], BOB)
    for replica in replicas:
        assert row_ids(replica.query()) == ["act-2"]
        assert row_ids(replica.query(BOB, sid)) == ["act-1", "act-2"]
    records_before = 2 + 2 + 1 + len(replicas)

    postgres_cluster.stop()
    try:
        for replica in replicas:
            started = time.monotonic()
            hidden = replica.query()  # not the last state it loaded: it may be stale (R11)
            assert row_ids(hidden) == [] and hidden.headers["Veil-Degraded"] == "policy"
            assert time.monotonic() - started < STORAGE_TIMEOUT_S + 3
            for method, path, body in (
                ("POST", "/veil/v1/privacy-groups", {"group": "external"}),
                ("PUT", "/veil/v1/groups/hr", {"name": "HR", "members": []}),
                ("DELETE", f"/veil/v1/private-viewers/{BOB}", None),
                ("GET", "/veil/v1/governance-log/verify", None),
            ):
                r = replica.call(method, path, json=body)
                assert r.status_code == 503, (method, path, r.text)
                assert r.headers["Content-Type"] == "application/problem+json"
                assert r.json()["code"] == "storage_unavailable"
            revealed = replica.query(BOB, sid)
            assert revealed.status_code == 503
            assert b"act-1" not in revealed.content
            assert row_ids(replica.query(CAROL)) == []
            ready = requests.get(replica.url + "/readyz", timeout=30)
            assert ready.status_code == 503 and ready.json()["checks"]["storage"] is False
    finally:
        postgres_cluster.start()

    for replica in replicas:  # the same processes recover on their own
        deadline = time.monotonic() + 30
        while replica.call("GET", "/veil/v1/admins").status_code != 200:
            assert time.monotonic() < deadline, replica.log_tail()
            time.sleep(0.2)
        assert row_ids(replica.query(BOB, sid)) == ["act-1", "act-2"]
        assert row_ids(replica.query()) == ["act-2"]
        assert requests.get(replica.url + "/readyz", timeout=30).status_code == 200
    assert [r.process.pid for r in replicas] == pids
    assert all(r.process.poll() is None for r in replicas)
    assert (
        replicas[2]
        .call("PUT", "/veil/v1/groups/hr", json={"name": "HR", "members": []})
        .status_code
        == 201
    )
    records = assert_one_chain(fleet_, records_before + len(replicas) + 1)
    assert records[-1]["action"] == "group_imported"


# ---- the database itself ------------------------------------------------------------------


@pytest.fixture
def pg_storage(postgres_url: str) -> Iterator[Storage]:
    storage = open_storage(postgres_url, STORAGE_TIMEOUT_S, [ADMIN])
    yield storage
    storage.close()


def test_replicas_starting_together_migrate_once(postgres_url: str) -> None:
    start = threading.Barrier(8)

    def open_one(_: int) -> Storage:
        start.wait()
        return open_storage(postgres_url, STORAGE_TIMEOUT_S)

    with ThreadPoolExecutor(8) as pool:
        opened = list(pool.map(open_one, range(8)))
    for storage in opened:
        assert storage.state_version() == 1
        storage.close()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [
            (v,) for v in range(1, len(MIGRATIONS) + 1)
        ]


def test_concurrent_appends_from_separate_pools_never_fork(postgres_url: str) -> None:
    stores = [open_storage(postgres_url, STORAGE_TIMEOUT_S) for _ in range(4)]
    start = threading.Barrier(8)

    def append(t: int) -> None:
        start.wait()
        for i in range(40):
            stores[t % 4].record("policy_reloaded", f"worker{t}", {"i": i})

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(append, range(8)))
        assert stores[0].verify_log().as_dict() == {"ok": True, "records": 8 * 40}
    finally:
        for storage in stores:
            storage.close()


def test_governance_log_is_append_only_in_postgres(pg_storage: Storage, postgres_url: str) -> None:
    pg_storage.record("policy_reloaded", "a", {})
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for statement in (
            "UPDATE governance_log SET actor = 'x'",
            "DELETE FROM governance_log",
            "TRUNCATE governance_log",
        ):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement)
    assert pg_storage.verify_log().as_dict() == {"ok": True, "records": 1}


def test_tampering_by_a_database_superuser_is_found(pg_storage: Storage, postgres_url: str) -> None:
    for i in range(5):
        pg_storage.record("policy_reloaded", "a", {"i": i})
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE governance_log DISABLE TRIGGER USER")
        conn.execute("UPDATE governance_log SET actor = 'mallory' WHERE seq = 3")
    verdict = pg_storage.verify_log()
    assert (verdict.ok, verdict.first_bad_seq, verdict.problem) == (False, 3, "changed_content")


def test_reveal_is_503_when_postgres_refuses_the_record(
    store: LoopbackStore, postgres_url: str
) -> None:
    app: Flask = create_app(make_config(store.url, postgres_url))
    client = app.test_client()
    try:
        client.put("/veil/v1/groups/finance", json={"name": "F", "members": [ANN]}, headers=A)
        client.post("/veil/v1/privacy-groups", json={"group": "finance"}, headers=A)
        assert (
            client.post(
                "/veil/v1/private-viewers", json={"principal": ADMIN}, headers=auth(GRANTOR)
            ).status_code
            == 201
        )
        later = iso(time.time_ns() + 600 * SEC)
        store.state.rows = [activity(1, ANN, later), activity(2, CAROL, later)]
        sid = client.post(
            "/veil/v1/reveal-sessions",
            headers=A,
            json={"acknowledge_audit": True, "justification": "x"},
        ).get_json()["id"]
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'disk says no'; END $$"
            )
            conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON governance_log "
                "FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
        headers = {**A, "Veil-Reveal-Session": sid}
        r = client.get("/api/activities", headers=headers)
        assert r.status_code == 503
        assert r.get_json()["code"] == "governance_write_failed"
        assert b"act-1" not in r.data
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("DROP TRIGGER refuse ON governance_log")
        r = client.get("/api/activities", headers=headers)
        assert [row["id"] for row in r.get_json()["data"]] == ["act-1", "act-2"]
        revealed = app.extensions["veil"].storage.log_page(action="activities_revealed")
        assert len(revealed) == 1
    finally:
        app.extensions["veil"].storage.close()


def test_text_sorts_by_bytes_whatever_the_database_collation(
    postgres_cluster: PostgresCluster,
) -> None:
    """Listings come out in the same order as on SQLite, even on an ICU en-US database."""
    name = "veil_icu"
    with postgres_cluster.admin() as conn:
        if conn.info.server_version < 150000:
            pytest.skip("ICU database locales need PostgreSQL 15")
        conn.execute(
            f"CREATE DATABASE {name} LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
            "LOCALE 'C' TEMPLATE template0"
        )
    storage = open_storage(postgres_cluster.url(name), STORAGE_TIMEOUT_S)
    try:
        group_ids = ["ab", "a_b", "B", "a-c", "Z", "aB"]
        for gid in group_ids:
            storage.put_group(gid, gid, [], ADMIN)
        assert [g["id"] for g in storage.list_groups()] == sorted(group_ids)
    finally:
        storage.close()
        postgres_cluster.drop_database(name)


def test_placeholders_and_literal_percent_signs(pg_storage: Storage) -> None:
    assert to_pyformat("SELECT '50%?', ? WHERE a LIKE 'x%' AND b = ?") == (
        "SELECT '50%%?', %s WHERE a LIKE 'x%%' AND b = %s"
    )
    with pg_storage.backend.transaction(write=False) as tx:
        assert tx.one("SELECT '100%' || ?, '?', ? + 1", ("x", 2**40)) == ("100%x", "?", 2**40 + 1)
        assert tx.one("SELECT '100%'") == ("100%",)


def test_unreachable_server_is_a_storage_error(postgres_cluster: PostgresCluster) -> None:
    with pytest.raises(StorageError, match="unavailable"):
        open_storage(f"postgresql://veil@127.0.0.1:{free_port()}/nothing", 1)
    with pytest.raises(StorageError, match="does not exist"):
        open_storage(postgres_cluster.url("no_such_database"), 1)


def test_missing_binaries_fail_under_ci_and_skip_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    import postgres

    monkeypatch.setattr(postgres, "find_bin_dir", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_bin_dir()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_bin_dir()
