"""SCIM provisioning at scale, and what it does to query latency, in one run.

Two ``veil serve`` instances (gunicorn, embedded engine, SQLite) sit in front of the same
loopback activity store (1,000 rows of 250 distinct actors, as in bench_latency.py):

- **small**: the demo organisation's 8 departments plus 2 more groups (10 groups), pushed
  through SCIM;
- **large**: the same groups plus synthetic ones up to 2,000 groups, 50,000 users, among them
  an "All staff" group holding every user; provisioned through SCIM as an identity provider
  does it (POST /Users; POST /Groups; PATCH add members in batches), timed.

In both, the departments hr and legal (by their SCIM ids) and the built-in group external are
private. The script then times single-member PATCHes (add, then remove) on a 25-member group,
on the 50,000-member group and on a private group; queries 1,000 rows alternately through the
two instances (and the store directly); and, in this process, the size of ``data.veil`` each
instance loads into the engine, the engine's resident memory for it, and the policy evaluation
time, beside what they would be if ``data.veil`` carried every group.

    python benchmarks/bench_scim_scale.py [--users 50000] [--groups 2000] [--requests 200]
                                          [--clients 8]

A benchmark, not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import regorus
import requests
import yaml
from flask import Flask, Response
from werkzeug.serving import WSGIRequestHandler, make_server

from veil.config import FieldPointers
from veil.demo.store import ActivityLog, Directory
from veil.policy import load_modules
from veil.rows import Normalizer, parse_answer, pointer_tokens
from veil.storage import open_storage
from veil.storage.directory import former_of, members_of

# run as a script, this folder is on sys.path: one veil serve, token and port for both benches
from bench_latency import (
    ADMIN,
    CALLER,
    ROOT,
    config_document,
    free_port,
    median,
    token,
    veil_server,
)

TOKEN_ENV, TOKEN = "VEIL_BENCH_SCIM_TOKEN", "benchmark-scim-token-0123456789"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
PRIVATE = ("hr", "legal")
SCIM_HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/scim+json"}
BATCH = 1000  # members per PATCH, as Entra ID and Okta batch them


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextmanager
def loopback_store(body: list[bytes]) -> Iterator[str]:
    app = Flask("bench-store")

    @app.get("/api/activities")
    def activities() -> Response:
        return Response(body[0], content_type="application/json")

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def scim_veil(store_url: str, workdir: Path) -> Iterator[str]:
    """bench_latency's ``veil serve`` with SCIM switched on, on SQLite in ``workdir``."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    doc = {**config_document(store_url, workdir, port, 2), "scim": {"token_env": TOKEN_ENV}}
    (workdir / "veil.yaml").write_text(yaml.safe_dump(doc))
    with veil_server(
        workdir / "veil.yaml", port, workdir / "veil.log", extra_env={TOKEN_ENV: TOKEN}, start_s=60
    ) as url:
        yield url


class Provisioner:
    """An identity provider's client: concurrent sessions against /scim/v2."""

    def __init__(self, url: str, clients: int) -> None:
        self.base = f"{url}/scim/v2"
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(clients)

    def session(self) -> requests.Session:
        found: requests.Session | None = getattr(self.local, "session", None)
        if found is None:
            found = requests.Session()
            found.trust_env = False
            found.headers.update(SCIM_HEADERS)
            self.local.session = found
        return found

    def call(self, method: str, path: str, body: Any = None) -> Any:
        for attempt in range(5):
            try:
                answer = self.session().request(
                    method,
                    self.base + path,
                    timeout=120,
                    data=None if body is None else orjson.dumps(body),
                )
            except requests.RequestException:
                if attempt == 4:
                    raise
                time.sleep(0.5)
                continue
            if answer.status_code >= 300:
                raise SystemExit(f"{method} {path}: {answer.status_code} {answer.text[:300]}")
            return answer.json() if answer.content else None
        raise AssertionError("unreachable")

    def users(self, names: list[str]) -> dict[str, str]:
        def create(name: str) -> tuple[str, str]:
            made = self.call(
                "POST",
                "/Users",
                {
                    "schemas": [USER],
                    "userName": name,
                    "active": True,
                    "externalId": name,
                    "emails": [{"value": name, "type": "work", "primary": True}],
                },
            )
            return name, made["id"]

        return dict(self.pool.map(create, names))

    def groups(self, groups: dict[str, list[str]]) -> dict[str, str]:
        """Create each group empty, then add its members by PATCH in batches of BATCH."""

        def create(item: tuple[str, list[str]]) -> tuple[str, str]:
            name, members = item
            gid = self.call(
                "POST",
                "/Groups",
                {"schemas": [GROUP], "displayName": name, "externalId": name, "members": []},
            )["id"]
            for start in range(0, len(members), BATCH):
                self.call(
                    "PATCH",
                    f"/Groups/{gid}",
                    {
                        "schemas": [PATCH],
                        "Operations": [
                            {
                                "op": "Add",
                                "path": "members",
                                "value": [{"value": m} for m in members[start : start + BATCH]],
                            }
                        ],
                    },
                )
            return name, gid

        return dict(self.pool.map(create, groups.items()))

    def close(self) -> None:
        self.pool.shutdown()


def organisation(
    users: int,
    groups: int,
    directory: Directory,
) -> tuple[list[str], dict[str, list[str]], dict[str, list[str]]]:
    """(every userName, the 10 groups of the small state, the groups of the large state)."""
    employees = [a.id for a in directory.actors if a.kind == "employee"]
    synthetic = [f"user{i:05d}@contoso.com" for i in range(max(0, users - len(employees)))]
    names = employees + synthetic
    small = {d["id"]: d["members"] for d in directory.departments()}
    small["contractors"] = synthetic[:25]
    small["interns"] = synthetic[25:50]
    large = dict(small)
    large["all-staff"] = names
    i, cursor = 0, 50
    while len(large) < groups:
        large[f"team-{i:04d}"] = synthetic[cursor : cursor + 25] if synthetic else []
        cursor = (cursor + 25) % max(1, len(synthetic) - 25)
        i += 1
    return names, small, large


def make_private(url: str, group_ids: list[str]) -> None:
    admin = {"Authorization": f"Bearer {token(ADMIN)}"}
    for gid in [*group_ids, "external"]:
        requests.post(
            f"{url}/veil/v1/privacy-groups", json={"group": gid}, headers=admin, timeout=30
        ).raise_for_status()


def eval_metric(url: str) -> tuple[float, float]:
    """(sum in seconds, count) of veil_policy_evaluation_seconds on a Veil's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    base = url.rsplit("/api/", 1)[0]
    total = count = 0.0
    for family in text_string_to_metric_families(requests.get(f"{base}/metrics", timeout=30).text):
        if family.name == "veil_policy_evaluation_seconds":
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    total += sample.value
                elif sample.name.endswith("_count"):
                    count += sample.value
    return total, count


def timed(calls: int, fn: Callable[[int], None]) -> list[float]:
    out = []
    for i in range(calls):
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def patch_latency(prov: Provisioner, gid: str, user_id: str, calls: int) -> list[float]:
    def one(i: int) -> None:
        op = (
            {"op": "Add", "path": "members", "value": [{"value": user_id}]}
            if i % 2 == 0
            else {"op": "Remove", "path": f'members[value eq "{user_id}"]'}
        )
        prov.call("PATCH", f"/Groups/{gid}", {"schemas": [PATCH], "Operations": [op]})

    return timed(calls, one)


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def engine_figures(
    data: dict[str, Any],
    body: bytes,
    runs: int,
    workdir: Path,
) -> dict[str, float]:
    """Size of data.veil, the engine's memory for it, and the evaluation time on ``body``:
    measured in a fresh process (``--probe``), so one case's allocations do not hide another's.
    """
    data_path, body_path = workdir / "probe-data.json", workdir / "probe-body.json"
    data_path.write_text(json.dumps({"veil": data}))
    body_path.write_bytes(body)
    out = subprocess.run(
        [sys.executable, __file__, "--probe", str(data_path), str(body_path), str(runs)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    figures: dict[str, float] = json.loads(out)
    return figures


def probe(data_path: Path, body_path: Path, runs: int) -> None:
    """Load the policy, then data.veil, evaluate ``runs`` times; print the figures as JSON."""
    data_json = data_path.read_text()
    engine = regorus.Engine()
    for module in load_modules(ROOT / "policies"):
        if not module.is_test:
            engine.add_policy(str(module.path), module.text)
    engine.set_input_json("{}")
    engine.eval_rule("data.veil.privacy.decision")
    before = rss_kb()
    engine.add_data_json(data_json)
    normalizer = Normalizer(FieldPointers(), frozenset({"application"}))
    answer = parse_answer(body_path.read_bytes(), pointer_tokens("/data"))
    rows = normalizer.rows(answer.rows, include_raw=False)
    document = orjson.dumps(
        {
            "caller": CALLER,
            "request": {"method": "GET", "path": "/api/activities", "query": ""},
            "reveal_session_id": None,
            "session": None,
            "now_ns": time.time_ns(),
            "rows": rows,
        }
    ).decode()
    times = []
    private = -1
    for _ in range(runs):
        t0 = time.perf_counter()
        engine.set_input_json(document)
        decision = engine.eval_rule("data.veil.privacy.decision")
        times.append((time.perf_counter() - t0) * 1000)
        private = len(decision["private_rows"])
    print(
        json.dumps(
            {
                "data_kb": len(data_json) / 1024,
                "rss_kb": rss_kb() - before,
                "eval_ms": median(times),
                "private": private,
            }
        )
    )


def all_groups_data(db: Path, managed: list[str]) -> dict[str, Any]:
    """data.veil as it would be if it carried every group (the state before this change)."""
    storage = open_storage(f"sqlite:///{db}", 30.0, (ADMIN,))
    try:
        _, data = storage.policy_data(managed)
        with storage.backend.transaction(write=False) as tx:
            rows = tx.all("SELECT id, name FROM groups")
            members = members_of(tx, [gid for gid, _ in rows])
            former = former_of(tx, [gid for gid, _ in rows])
        data["groups"] = {
            gid: {
                "name": name,
                "members": dict.fromkeys(members.get(gid, []), True),
                "former_members": former.get(gid, {}),
            }
            for gid, name in rows
        }
        return data
    finally:
        storage.close()


def instance_data(db: Path, managed: list[str]) -> dict[str, Any]:
    storage = open_storage(f"sqlite:///{db}", 30.0, (ADMIN,))
    try:
        return storage.policy_data(managed)[1]
    finally:
        storage.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--probe"]:
        probe(Path(argv[1]), Path(argv[2]), int(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--groups", type=int, default=2_000)
    parser.add_argument(
        "--requests", type=int, default=200, help="measured queries per instance (default 200)"
    )
    parser.add_argument(
        "--patches",
        type=int,
        default=100,
        help="single-member PATCHes per group kind (default 100)",
    )
    parser.add_argument(
        "--clients", type=int, default=8, help="concurrent provisioning connections (default 8)"
    )
    args = parser.parse_args(argv)

    directory = Directory.generate(seed=7, employees=234, guests=10)  # 250 distinct actors
    names, small_groups, large_groups = organisation(args.users, args.groups, directory)
    if "team-0000" not in large_groups:  # the 25-member group whose PATCHes are timed
        parser.error(
            f"--groups {args.groups} is too few: the large state holds the small state's "
            f"{len(small_groups)} groups, all-staff and at least one 25-member team "
            f"(--groups {len(small_groups) + 2} or more)"
        )
    body: list[bytes] = [b""]
    with (
        tempfile.TemporaryDirectory(prefix="veil-scim-bench-") as tmp,
        loopback_store(body) as store_url,
        scim_veil(store_url, Path(tmp) / "small") as small_url,
        scim_veil(store_url, Path(tmp) / "large") as large_url,
    ):
        print(
            f"small: {len(small_groups)} groups; large: {len(names):,} users in "
            f"{len(large_groups):,} groups ({sum(map(len, large_groups.values())):,} "
            "memberships)",
            flush=True,
        )
        small = Provisioner(small_url, args.clients)
        small_users = small.users(sorted({m for ms in small_groups.values() for m in ms}))
        small_ids = small.groups(
            {n: [small_users[m] for m in ms] for n, ms in small_groups.items()}
        )

        large = Provisioner(large_url, args.clients)
        t0 = time.perf_counter()
        large_users = large.users(names)
        t_users = time.perf_counter() - t0
        t1 = time.perf_counter()
        large_ids = large.groups(
            {n: [large_users[m] for m in ms] for n, ms in large_groups.items()}
        )
        t_groups = time.perf_counter() - t1
        print(
            f"provisioned {len(names):,} users in {t_users:.1f} s "
            f"({len(names) / t_users:.0f}/s) and {len(large_ids):,} groups with their "
            f"members in {t_groups:.1f} s; total {t_users + t_groups:.1f} s",
            flush=True,
        )
        # Both private from (nearly) the same moment: the same rows are private in both.
        make_private(small_url, [small_ids[g] for g in PRIVATE])
        make_private(large_url, [large_ids[g] for g in PRIVATE])

        spare = large_users[names[-1]]
        patches = {
            "25-member group": patch_latency(large, large_ids["team-0000"], spare, args.patches),
            f"{len(names):,}-member group (add/remove an existing member)": patch_latency(
                large, large_ids["all-staff"], spare, args.patches
            ),
            "private group (hr)": patch_latency(large, large_ids["hr"], spare, args.patches),
        }
        small.close()
        large.close()

        start = time.time_ns()
        hour = 3600 * 1_000_000_000
        rows = ActivityLog(directory, seed=7).sample(1000, start - hour, start + hour)
        body[0] = json.dumps({"data": rows, "next": None}).encode()

        headers = {"Authorization": f"Bearer {token(CALLER)}"}
        latencies: dict[str, list[float]] = {"direct": [], "small": [], "large": []}
        shown: dict[str, int] = {}
        targets = {
            "direct": f"{store_url}/api/activities",
            "small": f"{small_url}/api/activities",
            "large": f"{large_url}/api/activities",
        }
        evals_before = {name: eval_metric(targets[name]) for name in ("small", "large")}
        with requests.Session() as http:
            http.trust_env = False
            for i in range(30 + args.requests):
                order = ["direct", "small", "large"] if i % 2 else ["direct", "large", "small"]
                for name in order:  # neither instance always goes right after the other
                    url = targets[name]
                    t = time.perf_counter()
                    answer = http.get(url, headers=headers, timeout=60)
                    elapsed = (time.perf_counter() - t) * 1000
                    answer.raise_for_status()
                    shown[name] = len(answer.json()["data"])
                    if i >= 30:
                        latencies[name].append(elapsed)

        server_eval = {}
        for name in ("small", "large"):
            total, count = eval_metric(targets[name])
            server_eval[name] = (
                (total - evals_before[name][0]) / max(1.0, count - evals_before[name][1]) * 1000
            )
        managed = ["contoso.com"]
        engines = {
            "small (10 groups)": engine_figures(
                instance_data(Path(tmp) / "small" / "veil.db", managed), body[0], 200, Path(tmp)
            ),
            f"large ({len(large_ids):,} groups)": engine_figures(
                instance_data(Path(tmp) / "large" / "veil.db", managed), body[0], 200, Path(tmp)
            ),
            f"large, if data.veil carried all {len(large_ids):,} groups": engine_figures(
                all_groups_data(Path(tmp) / "large" / "veil.db", managed), body[0], 200, Path(tmp)
            ),
        }

    print("\nload average (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print("\nsingle-member PATCH /Groups/{id} latency (ms, add and remove alternately):")
    for name, values in patches.items():
        print(f"  {name:<58} median {median(values):6.2f}  p90 {pct(values, 0.9):6.2f}")
    print(f"\nquery latency, 1,000 rows, {args.requests} requests each, alternating (ms):")
    for name, values in latencies.items():
        added = (
            ""
            if name == "direct"
            else f"  added {median(values) - median(latencies['direct']):5.2f}"
        )
        evaluated = (
            ""
            if name == "direct"
            else f"  policy evaluation (server mean) {server_eval[name]:5.2f}"
        )
        print(
            f"  {name:<8} median {median(values):6.2f}  p90 {pct(values, 0.9):6.2f}"
            f"{added}  rows shown {shown[name]}{evaluated}"
        )
    diff = median(latencies["large"]) - median(latencies["small"])
    paired = [b - a for a, b in zip(latencies["small"], latencies["large"], strict=True)]
    print(
        f"  large - small: {diff:+.2f} ms between the medians; median of the paired "
        f"differences {median(paired):+.2f} ms (p25 {pct(paired, 0.25):+.2f}, "
        f"p75 {pct(paired, 0.75):+.2f})"
    )
    print("\nthe engine's data (data.veil), each in a fresh process:")
    for name, figures in engines.items():
        print(
            f"  {name:<48} {figures['data_kb']:9.1f} KB JSON, engine RSS "
            f"+{figures['rss_kb'] / 1024:6.1f} MB, eval {figures['eval_ms']:6.2f} ms, "
            f"{figures['private']} private rows"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
