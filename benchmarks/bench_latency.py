"""Veil's added latency, measured side by side with the direct query in one run.

A loopback activity store serves a fixed answer of N realistic rows (250 distinct actors:
employees of contoso.com and eu.contoso.com, external guests, service apps). Veil runs in front
of it as in production (``veil serve``: gunicorn, embedded engine, SQLite), with the groups hr
and legal and the built-in group external made private in the middle of the rows' time span,
so some rows are hidden. For each answer size, requests go alternately to the store and
through Veil, and the script prints the medians and p90s, the added milliseconds, the ratio,
and the policy evaluation time (from Veil's /metrics, and timed in-process on the same input).

    python benchmarks/bench_latency.py [--rows 1000] [--sizes 100,1000,10000]
                                       [--requests 200] [--warmup 30] [--workers 2]

This is a benchmark, not a test: it prints figures. Budget (SPEC, Performance): at 1,000 rows
the added median stays under 10 ms and the policy evaluation under 5 ms.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import orjson
import requests
import yaml
from flask import Flask, Response, request
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.serving import WSGIRequestHandler, make_server

from veil.config import FieldPointers
from veil.demo.store import ActivityLog, Directory
from veil.policy.embedded import EmbeddedEngine
from veil.rows import Normalizer, parse_answer, pointer_tokens, render
from veil.storage import open_storage

ROOT = Path(__file__).resolve().parent.parent
SECRET_ENV = "VEIL_BENCH_JWT_SECRET"
SECRET = "benchmark-secret-that-is-long-enough-for-hs256"
ADMIN = "alice@contoso.com"
CALLER = "bob@contoso.com"
PRIVATE_GROUPS = ("hr", "legal", "external")
ADDED_BUDGET_MS = 10.0
EVAL_BUDGET_MS = 5.0


@dataclass(frozen=True)
class Figures:
    rows: int
    requests: int
    body_kb: float
    shown: int
    direct: list[float]  # seconds
    veil: list[float]
    eval_server_ms: float  # mean, from veil_policy_evaluation_seconds
    eval_local_ms: float  # median, the same engine in this process on the same input
    prepare_local_ms: float  # parse + normalize + encode the input, median
    render_local_ms: float  # drop hidden rows from the body, median

    @property
    def added_ms(self) -> float:
        return (median(self.veil) - median(self.direct)) * 1000


def median(values: list[float]) -> float:
    return statistics.median(values)


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@contextmanager
def loopback_store(bodies: dict[int, bytes]) -> Iterator[str]:
    """A real HTTP store on 127.0.0.1 answering ``/api/activities?limit=N`` with a fixed body."""
    app = Flask("bench-store")

    @app.get("/api/activities")
    def activities() -> Response:
        body = bodies[int(request.args.get("limit", "1000"))]
        return Response(body, content_type="application/json")

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def config_document(store_url: str, workdir: Path, port: int, workers: int) -> dict[str, Any]:
    return {
        "upstream": {"url": store_url, "routes": ["/api/activities"], "rows": "/data",
                     "fields": {"id": "/id", "actor": "/user", "actor_type": "/actorType",
                                "timestamp": "/timestamp"}},
        "organization": {"managed_domains": ["contoso.com"]},
        "identity": {"mode": "jwt",
                     "jwt": {"issuer": "https://idp.bench", "audience": "veil",
                             "hs256_secret_env": SECRET_ENV},
                     "bootstrap_admins": [ADMIN]},
        "policy": {"engine": "embedded", "dir": str(ROOT / "policies")},
        "server": {"host": "127.0.0.1", "port": port, "workers": workers},
        "storage": {"url": f"sqlite:///{workdir / 'veil.db'}"},
    }


def token(principal: str) -> str:
    now = int(time.time())
    return jwt.encode({"upn": principal, "iss": "https://idp.bench", "aud": "veil",
                       "iat": now, "exp": now + 86400}, SECRET, algorithm="HS256")


@contextmanager
def veil_server(config_path: Path, port: int, log_path: Path) -> Iterator[str]:
    """``veil serve`` in a subprocess, as in production; stopped with SIGTERM."""
    env = {**os.environ, SECRET_ENV: SECRET}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "veil.cli", "serve", "--config", str(config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"veil serve exited ({process.returncode}); see {log_path}")
                try:
                    if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"veil serve did not start in 30 s; see {log_path}")
                time.sleep(0.1)
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def setup_privacy(http: requests.Session, url: str, directory: Directory) -> int:
    """Import the departments and make PRIVATE_GROUPS private; the moment it started (ns)."""
    admin = {"Authorization": f"Bearer {token(ADMIN)}"}
    for group in directory.departments():
        answer = http.put(f"{url}/veil/v1/groups/{group['id']}", headers=admin, timeout=10,
                          json={"name": group["name"], "members": group["members"]})
        answer.raise_for_status()
    start = time.time_ns()
    for group_id in PRIVATE_GROUPS:
        http.post(f"{url}/veil/v1/privacy-groups", json={"group": group_id}, headers=admin,
                  timeout=10).raise_for_status()
    return start


def eval_metric(http: requests.Session, url: str) -> tuple[float, float]:
    """(sum in seconds, count) of veil_policy_evaluation_seconds."""
    text = http.get(f"{url}/metrics", timeout=10).text
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "veil_policy_evaluation_seconds":
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    total += sample.value
                elif sample.name.endswith("_count"):
                    count += sample.value
    return total, count


def local_timings(engine: EmbeddedEngine, body: bytes, runs: int) -> tuple[float, float, float]:
    """Median ms of (preparing the input, evaluating it, rendering the answer), done as Veil
    does it, in this process."""
    normalizer = Normalizer(FieldPointers(), frozenset({"application"}))
    pointer = pointer_tokens("/data")
    prepare, evaluate, rendering = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        answer = parse_answer(body, pointer)
        rows = normalizer.rows(answer.rows, include_raw=engine.needs_raw)
        document = orjson.dumps({"caller": CALLER, "request": {"method": "GET",
                                 "path": "/api/activities", "query": ""},
                                 "reveal_session_id": None, "session": None,
                                 "now_ns": time.time_ns(), "rows": rows})
        t1 = time.perf_counter()
        decision = engine.evaluate(document)
        t2 = time.perf_counter()
        render(answer, decision["private_rows"])
        t3 = time.perf_counter()
        prepare.append(t1 - t0)
        evaluate.append(t2 - t1)
        rendering.append(t3 - t2)
    return median(prepare) * 1000, median(evaluate) * 1000, median(rendering) * 1000


def measure(size: int, count: int, warmup: int, store_url: str, veil_url: str,
            body: bytes, engine: EmbeddedEngine) -> Figures:
    path = f"/api/activities?limit={size}"
    headers = {"Authorization": f"Bearer {token(CALLER)}"}
    direct: list[float] = []
    veil: list[float] = []
    shown = -1
    with requests.Session() as to_store, requests.Session() as to_veil:
        to_store.trust_env = to_veil.trust_env = False

        def one(session: requests.Session, url: str, into: list[float] | None) -> bytes:
            t0 = time.perf_counter()
            answer = session.get(url + path, headers=headers, timeout=60)
            elapsed = time.perf_counter() - t0
            answer.raise_for_status()
            if into is not None:
                into.append(elapsed)
            return answer.content

        for _ in range(warmup):
            one(to_store, store_url, None)
            one(to_veil, veil_url, None)
        before = eval_metric(to_veil, veil_url)
        for i in range(count):  # alternate, so both see the same machine load
            if i % 2:
                one(to_store, store_url, direct)
                content = one(to_veil, veil_url, veil)
            else:
                content = one(to_veil, veil_url, veil)
                one(to_store, store_url, direct)
            shown = len(json.loads(content)["data"])
        after = eval_metric(to_veil, veil_url)
    evaluations = after[1] - before[1]
    eval_server = (after[0] - before[0]) / evaluations * 1000 if evaluations else float("nan")
    prepare, evaluate, rendering = local_timings(engine, body, max(10, min(count, 100)))
    return Figures(size, count, len(body) / 1024, shown, direct, veil, eval_server, evaluate,
                   prepare, rendering)


def report(results: list[Figures], budget_rows: int, workers: int) -> None:
    ms = 1000
    print(f"\nVeil in front of a loopback store: veil serve (gunicorn, {workers} worker(s), "
          "embedded regorus engine, SQLite);")
    print("requests alternate between the store and Veil; keep-alive connections; "
          f"private groups: {', '.join(PRIVATE_GROUPS)}.\n")
    header = (f"{'rows':>6} {'n':>4} {'body KB':>8} {'shown':>6} | {'direct p50':>10} "
              f"{'p90':>7} | {'Veil p50':>9} {'p90':>7} | {'added p50':>9} {'ratio':>6} | "
              f"{'eval (server mean)':>18} {'eval (local p50)':>16} {'prepare':>8} "
              f"{'render':>7}")
    print(header)
    print("-" * len(header))
    for f in results:
        print(f"{f.rows:>6} {f.requests:>4} {f.body_kb:>8.0f} {f.shown:>6} | "
              f"{median(f.direct) * ms:>8.2f}ms {p90(f.direct) * ms:>5.2f}ms | "
              f"{median(f.veil) * ms:>7.2f}ms {p90(f.veil) * ms:>5.2f}ms | "
              f"{f.added_ms:>7.2f}ms {median(f.veil) / median(f.direct):>5.2f}x | "
              f"{f.eval_server_ms:>16.2f}ms {f.eval_local_ms:>14.2f}ms "
              f"{f.prepare_local_ms:>6.2f}ms {f.render_local_ms:>5.2f}ms")
    ordered = sorted(results, key=lambda f: f.rows)
    if len(ordered) >= 2:
        print("\nHow the added time grows:")
        for a, b in itertools.pairwise(ordered):
            slope = (b.added_ms - a.added_ms) / (b.rows - a.rows) * 1000
            print(f"  {a.rows:>6} -> {b.rows:>6} rows: added {a.added_ms:6.2f} -> "
                  f"{b.added_ms:6.2f} ms  ({slope:.2f} ms per 1,000 more rows; "
                  f"x{b.added_ms / a.added_ms:.1f} for x{b.rows / a.rows:.0f} rows)")
        xs = [float(f.rows) for f in ordered]
        ys = [f.added_ms for f in ordered]
        fit = statistics.linear_regression(xs, ys)
        worst = max(abs(y - (fit.intercept + fit.slope * x)) for x, y in zip(xs, ys,
                                                                                strict=True))
        print(f"  least squares: added ~ {fit.intercept:.2f} ms + {fit.slope * 1000:.2f} ms "
              f"per 1,000 rows (largest residual {worst:.2f} ms)")
    budget = next((f for f in results if f.rows == budget_rows), None)
    if budget is not None:
        added_ok = budget.added_ms < ADDED_BUDGET_MS
        eval_ok = max(budget.eval_server_ms, budget.eval_local_ms) < EVAL_BUDGET_MS
        print(f"\nBudget at {budget_rows:,} rows: added {budget.added_ms:.2f} ms "
              f"(< {ADDED_BUDGET_MS:g} ms: {'yes' if added_ok else 'NO'}); policy evaluation "
              f"{budget.eval_server_ms:.2f} ms server mean, {budget.eval_local_ms:.2f} ms local "
              f"median (< {EVAL_BUDGET_MS:g} ms: {'yes' if eval_ok else 'NO'}).")
    load = os.getloadavg()
    print(f"Load average during the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on "
          f"{os.cpu_count()} CPUs (other work on the machine inflates every figure).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1000,
                        help="the answer size the budget is checked at (default 1000)")
    parser.add_argument("--sizes", default="100,1000,10000",
                        help="answer sizes to measure, comma-separated (default 100,1000,10000)")
    parser.add_argument("--requests", type=int, default=200,
                        help="measured requests per size to each side (default 200; sizes "
                             "above 1,000 rows use proportionally fewer, at least 30)")
    parser.add_argument("--warmup", type=int, default=30,
                        help="unmeasured requests per size to each side first (default 30)")
    parser.add_argument("--workers", type=int, default=2,
                        help="gunicorn workers (default 2, as veil serve)")
    args = parser.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()} | {args.rows})

    directory = Directory.generate(seed=7, employees=234, guests=10)  # 250 distinct actors
    log = ActivityLog(directory, seed=7)
    bodies: dict[int, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="veil-bench-") as tmp, \
            loopback_store(bodies) as store_url, requests.Session() as http:
        http.trust_env = False
        workdir = Path(tmp)
        port = free_port()
        config_path = workdir / "veil.yaml"
        config_path.write_text(yaml.safe_dump(config_document(store_url, workdir, port,
                                                              args.workers)))
        with veil_server(config_path, port, workdir / "veil.log") as veil_url:
            start = setup_privacy(http, veil_url, directory)
            hour = 3600 * 1_000_000_000
            for size in sizes:  # rows before and after the groups became private
                rows = log.sample(size, start - hour, start + hour)
                bodies[size] = json.dumps({"data": rows, "next": None}).encode()
            storage = open_storage(f"sqlite:///{workdir / 'veil.db'}", 5.0, (ADMIN,))
            engine = EmbeddedEngine(ROOT / "policies")
            engine.sync(storage.state_version(), lambda: storage.policy_data(["contoso.com"]))
            results = []
            for size in sizes:
                count = args.requests if size <= 1000 else max(30, args.requests * 1000 // size)
                print(f"measuring {size} rows: {args.warmup} warm-up + {count} requests "
                      "each side...", flush=True)
                results.append(measure(size, count, args.warmup, store_url, veil_url,
                                       bodies[size], engine))
            storage.close()
    report(results, args.rows, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
