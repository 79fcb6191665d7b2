"""Veil's added latency, measured side by side with the direct query in one run.

A loopback activity store (its own process, HTTP/1.1 keep-alive) serves a fixed answer of N
realistic rows (250 distinct actors: employees of contoso.com and eu.contoso.com, external
guests, service apps). Veil runs in front of it as in production (``veil serve``: gunicorn,
embedded engine, SQLite), with the groups hr and legal and the built-in group external made
private in the middle of the rows' time span, so some rows are hidden. For each answer size,
requests go alternately to the store and through Veil, and the script prints the medians and
p90s, the added milliseconds, the ratio, and the policy work per answer (from Veil's
/metrics). Then it breaks one answer down step by step (in-process, same config and state),
and measures throughput at one size with concurrent clients, Veil against the store alone.

    python benchmarks/bench_latency.py [--rows 1000] [--sizes 100,1000,10000]
                                       [--requests 200] [--warmup 30] [--workers 2]
                                       [--breakdown-rows 100] [--throughput-rows 1000]
                                       [--clients 4] [--seconds 10]

This is a benchmark, not a test: it prints figures. Budget (SPEC, Performance): the added
median stays under 5 ms at 1,000 rows and under 2 ms at 100 rows, and the policy work per
answer under 1 ms once warm.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import jwt
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.datastructures import Headers

from veil import config as config_module
from veil.demo.store import ActivityLog, Directory

ROOT = Path(__file__).resolve().parent.parent
SECRET_ENV = "VEIL_BENCH_JWT_SECRET"
SECRET = "benchmark-secret-that-is-long-enough-for-hs256"
ADMIN = "alice@contoso.com"
CALLER = "bob@contoso.com"
PRIVATE_GROUPS = ("hr", "legal", "external")
ADDED_BUDGET_MS = {100: 2.0, 1000: 5.0}  # SPEC, Performance: added median by answer size
POLICY_BUDGET_MS = 1.0


@dataclass(frozen=True)
class Figures:
    rows: int
    requests: int
    body_kb: float
    shown: int
    direct: list[float]  # seconds
    veil: list[float]
    eval_server_ms: float  # mean, from veil_policy_evaluation_seconds
    veil_cpu_ms: float = float("nan")  # CPU of veil serve (master and workers) per answer
    store_cpu_ms: float = float("nan")  # CPU of the store per answer it served

    @property
    def added_ms(self) -> float:
        return (median(self.veil) - median(self.direct)) * 1000


SERVED: dict[str, int] = {}  # url -> pid of the process serving it (veil serve, the store)


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds (user and system) used so far by ``pid`` and its live child processes,
    from Linux's /proc (NaN elsewhere): what other work on the machine inflates far less than
    wall-clock time."""
    if pid is None or not Path("/proc/self/stat").exists():
        return float("nan")
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the process ended
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # fields[1]: the parent
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def median(values: list[float]) -> float:
    return statistics.median(values)


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


class _StoreHandler(BaseHTTPRequestHandler):
    """``GET /api/activities?limit=N``: the fixed body of N rows, over keep-alive HTTP/1.1."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms ACK wait
    bodies: ClassVar[dict[int, bytes]] = {}

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        limit = int(parse_qs(parts.query).get("limit", ["1000"])[0])
        body = self.bodies.get(limit) if parts.path == "/api/activities" else None
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve_store(port: int, bodies: dict[int, bytes]) -> None:
    _StoreHandler.bodies = bodies
    server = ThreadingHTTPServer(("127.0.0.1", port), _StoreHandler)
    server.daemon_threads = True
    server.serve_forever()


@contextmanager
def loopback_store(port: int, bodies: dict[int, bytes]) -> Iterator[str]:
    """A real HTTP store on 127.0.0.1 in its own process (so it never waits for this one's
    GIL), answering ``/api/activities?limit=N`` with a fixed body."""
    process = multiprocessing.get_context("fork").Process(
        target=_serve_store, args=(port, bodies), daemon=True
    )
    process.start()
    url = f"http://127.0.0.1:{port}"
    if process.pid is not None:
        SERVED[url] = process.pid
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{url}/ready", timeout=1)
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise SystemExit("the loopback store did not start in 30 s") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.join(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def config_document(store_url: str, workdir: Path, port: int, workers: int) -> dict[str, Any]:
    return {
        "upstream": {
            "url": store_url,
            "routes": ["/api/activities"],
            "rows": "/data",
            "fields": {
                "id": "/id",
                "actor": "/user",
                "actor_type": "/actorType",
                "timestamp": "/timestamp",
            },
        },
        "organization": {"managed_domains": ["contoso.com"]},
        "identity": {
            "mode": "jwt",
            "jwt": {
                "issuer": "https://idp.bench",
                "audience": "veil",
                "hs256_secret_env": SECRET_ENV,
            },
            "bootstrap_admins": [ADMIN],
        },
        "policy": {"engine": "embedded", "dir": str(ROOT / "policies")},
        "server": {"host": "127.0.0.1", "port": port, "workers": workers},
        "storage": {"url": f"sqlite:///{workdir / 'veil.db'}"},
    }


def token(principal: str) -> str:
    now = int(time.time())
    return jwt.encode(
        {
            "upn": principal,
            "iss": "https://idp.bench",
            "aud": "veil",
            "iat": now,
            "exp": now + 86400,
        },
        SECRET,
        algorithm="HS256",
    )


def wait_healthz(url: str, process: subprocess.Popen[bytes], start_s: float, what: str) -> None:
    """Wait for ``url/healthz`` to answer 200, retrying any request error; stop the benchmark
    if ``process`` exits first or ``start_s`` passes."""
    deadline = time.monotonic() + start_s
    while True:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited ({process.returncode})")
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start in {start_s:g} s")
        time.sleep(0.1)


@contextmanager
def veil_server(
    config_path: Path,
    port: int,
    log_path: Path,
    extra_env: dict[str, str] | None = None,
    start_s: float = 30,
) -> Iterator[str]:
    """``veil serve`` in a subprocess, as in production; stopped with SIGTERM."""
    env = {**os.environ, SECRET_ENV: SECRET, **(extra_env or {})}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "veil.cli", "serve", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        SERVED[url] = process.pid
        try:
            wait_healthz(url, process, start_s, f"veil serve (see {log_path})")
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
        answer = http.put(
            f"{url}/veil/v1/groups/{group['id']}",
            headers=admin,
            timeout=10,
            json={"name": group["name"], "members": group["members"]},
        )
        answer.raise_for_status()
    start = time.time_ns()
    for group_id in PRIVATE_GROUPS:
        http.post(
            f"{url}/veil/v1/privacy-groups", json={"group": group_id}, headers=admin, timeout=10
        ).raise_for_status()
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


def measure(
    size: int, count: int, warmup: int, store_url: str, veil_url: str, body: bytes
) -> Figures:
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
        veil_cpu = process_cpu_s(SERVED.get(veil_url))
        store_cpu = process_cpu_s(SERVED.get(store_url))
        for i in range(count):  # alternate, so both see the same machine load
            if i % 2:
                one(to_store, store_url, direct)
                content = one(to_veil, veil_url, veil)
            else:
                content = one(to_veil, veil_url, veil)
                one(to_store, store_url, direct)
            shown = len(json.loads(content)["data"])
        veil_cpu = process_cpu_s(SERVED.get(veil_url)) - veil_cpu
        store_cpu = process_cpu_s(SERVED.get(store_url)) - store_cpu
        after = eval_metric(to_veil, veil_url)
    evaluations = after[1] - before[1]
    eval_server = (after[0] - before[0]) / evaluations * 1000 if evaluations else float("nan")
    # the store served each measured request twice: once directly, once for Veil
    return Figures(
        size,
        count,
        len(body) / 1024,
        shown,
        direct,
        veil,
        eval_server,
        veil_cpu / count * 1000,
        store_cpu / (2 * count) * 1000,
    )


def breakdown(config_path: Path, store_url: str, size: int, runs: int) -> list[tuple[str, float]]:
    """Median CPU milliseconds (of this thread: what another process's load does not inflate)
    of each step of one answer, in this process, on Veil's own objects (same config, same
    SQLite state as the server): what Veil does per answer besides the HTTP hop to it,
    gunicorn and Flask."""
    from veil import policy_reload
    from veil.app import create_app

    os.environ[SECRET_ENV] = SECRET
    app = create_app(config_module.load(str(config_path)))
    services = app.extensions["veil"]
    query, metrics = services.query, services.metrics
    headers = Headers({"Authorization": f"Bearer {token(CALLER)}"})
    steps: dict[str, list[float]] = {}

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                steps.setdefault(name, []).append(time.thread_time() - started)

        return wrapper

    def each(name: str, function: Callable[[], Any]) -> None:
        for _ in range(runs):
            timed(name, function)()

    # The steps answer() takes, timed where they are called.
    query.upstream.get = timed("upstream", query.upstream.get)
    # the decision step, as veil_policy_evaluation_seconds times it (_decide before the facts)
    step = "_timed" if hasattr(query, "_timed") else "_decide"
    setattr(query, step, timed("policy", getattr(query, step)))
    query._sync_state = timed("state", query._sync_state)
    answer = timed("answer", query.answer)
    path, query_string = "/api/activities", f"limit={size}"
    for _ in range(30):
        answer(CALLER, path, query_string, headers, None)
    steps.clear()
    with requests.Session() as direct:
        direct.trust_env = False
        get_direct = timed(
            "direct", lambda: direct.get(f"{store_url}{path}?{query_string}", timeout=60)
        )
        get_direct()
        steps.clear()
        for _ in range(runs):  # alternate, as the main measurement does
            answer(CALLER, path, query_string, headers, None)
            get_direct()
    each("jwt", lambda: services.auth.principal(headers))

    def count_metrics() -> None:  # what one answer adds to the metrics (app.py, filtering.py)
        metrics.requests.labels(route=path, status="200").inc()
        metrics.upstream_latency.observe(0.001)
        metrics.policy_latency.observe(0.001)
        metrics.rows_hidden.inc(1)

    each("metrics", count_metrics)
    client = app.test_client()
    each("flask", lambda: client.get("/healthz"))
    policy_reload.stop(app)
    services.storage.close()
    m = {name: median(values) * 1000 for name, values in steps.items()}
    rest = m["answer"] - m["upstream"] - m["policy"] - m["state"]
    return [
        ("identity: JWT check (HS256)", m["jwt"]),
        ("state version read (SQLite) and engine sync", m["state"]),
        ("upstream client: Veil's GET to the store", m["upstream"]),
        ("  (the same GET with plain requests.get, for comparison)", m["direct"]),
        ("read the answer: parse, repeated keys, normalize; then render", rest),
        ("policy work (decision)", m["policy"]),
        ("metrics (one answer's counters and histograms)", m["metrics"]),
        ("Flask request cycle (test client, GET /healthz)", m["flask"]),
    ]


def throughput(url: str, size: int, clients: int, seconds: float) -> float:
    """Answers per second with ``clients`` concurrent keep-alive clients for ``seconds``."""
    path = f"/api/activities?limit={size}"
    headers = {"Authorization": f"Bearer {token(CALLER)}"}

    def client(_: int) -> int:
        done = 0
        with requests.Session() as session:
            session.trust_env = False
            for _ in range(10):  # warm the connection and the server
                session.get(url + path, headers=headers, timeout=60).raise_for_status()
            barrier.wait()
            stop = time.monotonic() + seconds
            while time.monotonic() < stop:
                session.get(url + path, headers=headers, timeout=60).raise_for_status()
                done += 1
        return done

    barrier = threading.Barrier(clients)
    with ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(client, range(clients))) / seconds


def report(
    results: list[Figures],
    workers: int,
    steps: list[tuple[str, float]],
    steps_rows: int,
    rates: tuple[float, float] | None,
    rate_rows: int,
    clients: int,
) -> None:
    ms = 1000
    print(
        f"\nVeil in front of a loopback store: veil serve (gunicorn, {workers} worker(s), "
        "embedded regorus engine, SQLite);"
    )
    print(
        "requests alternate between the store and Veil; keep-alive connections; "
        f"private groups: {', '.join(PRIVATE_GROUPS)}.\n"
    )
    header = (
        f"{'rows':>6} {'n':>4} {'body KB':>8} {'shown':>6} | {'direct p50':>10} "
        f"{'p90':>7} | {'Veil p50':>9} {'p90':>7} | {'added p50':>9} {'ratio':>6} | "
        f"{'policy work (server mean)':>25}"
    )
    print(header)
    print("-" * len(header))
    for f in results:
        print(
            f"{f.rows:>6} {f.requests:>4} {f.body_kb:>8.0f} {f.shown:>6} | "
            f"{median(f.direct) * ms:>8.2f}ms {p90(f.direct) * ms:>5.2f}ms | "
            f"{median(f.veil) * ms:>7.2f}ms {p90(f.veil) * ms:>5.2f}ms | "
            f"{f.added_ms:>7.2f}ms {median(f.veil) / median(f.direct):>5.2f}x | "
            f"{f.eval_server_ms:>23.3f}ms"
        )
    print("\nCPU per answer (from /proc, whole processes; what the machine's load inflates least):")
    for f in results:
        print(
            f"  {f.rows:>6} rows: veil serve {f.veil_cpu_ms:7.2f} ms, the store "
            f"{f.store_cpu_ms:6.2f} ms"
        )
    ordered = sorted(results, key=lambda f: f.rows)
    if len(ordered) >= 2:
        print("\nHow the added time grows:")
        for a, b in itertools.pairwise(ordered):
            slope = (b.added_ms - a.added_ms) / (b.rows - a.rows) * 1000
            print(
                f"  {a.rows:>6} -> {b.rows:>6} rows: added {a.added_ms:6.2f} -> "
                f"{b.added_ms:6.2f} ms  ({slope:.2f} ms per 1,000 more rows; "
                f"x{b.added_ms / a.added_ms:.1f} for x{b.rows / a.rows:.0f} rows)"
            )
        xs = [float(f.rows) for f in ordered]
        ys = [f.added_ms for f in ordered]
        fit = statistics.linear_regression(xs, ys)
        worst = max(abs(y - (fit.intercept + fit.slope * x)) for x, y in zip(xs, ys, strict=True))
        print(
            f"  least squares: added ~ {fit.intercept:.2f} ms + {fit.slope * 1000:.2f} ms "
            f"per 1,000 rows (largest residual {worst:.2f} ms)"
        )
    if steps:
        print(
            f"\nOne {steps_rows}-row answer, step by step (in-process, median CPU ms of the "
            "thread):"
        )
        for name, value in steps:
            print(f"  {name:<62} {value:7.3f}")
        at_size = next((f for f in results if f.rows == steps_rows), None)
        if at_size is not None:
            # what Veil adds in-process: every step, but of the GET only what exceeds a plain one
            values = dict(steps)
            inside = sum(
                value for name, value in steps if not name.startswith(("Flask", "  ", "upstream"))
            )
            inside += (
                values["upstream client: Veil's GET to the store"]
                - values["  (the same GET with plain requests.get, for comparison)"]
            )
            print(
                f"  {'the rest of the added time: HTTP hop to Veil, gunicorn, Flask':<62} "
                f"{at_size.added_ms - inside:7.3f}  (added {at_size.added_ms:.3f}, wall "
                "clock, minus the steps above but Flask; of the GET, only its excess)"
            )
    if rates is not None:
        direct, veil = rates
        print(
            f"\nThroughput at {rate_rows:,} rows, {clients} concurrent clients: store alone "
            f"{direct:.0f} answers/s, through Veil ({workers} workers) {veil:.0f} answers/s "
            f"({veil / direct:.0%} of the store's)."
        )
    print()
    for rows, limit in ADDED_BUDGET_MS.items():
        found = next((f for f in results if f.rows == rows), None)
        if found is not None:
            print(
                f"Budget at {rows:,} rows: added {found.added_ms:.2f} ms (< {limit:g} ms: "
                f"{'yes' if found.added_ms < limit else 'NO'}); policy work "
                f"{found.eval_server_ms:.3f} ms (< {POLICY_BUDGET_MS:g} ms: "
                f"{'yes' if found.eval_server_ms < POLICY_BUDGET_MS else 'NO'})."
            )
    load = os.getloadavg()
    print(
        f"Load average at the end of the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on "
        f"{os.cpu_count()} CPUs (other work on the machine inflates every figure)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--sizes",
        default="100,1000,10000",
        help="answer sizes to measure, comma-separated (default 100,1000,10000)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=200,
        help="measured requests per size to each side (default 200; sizes "
        "above 1,000 rows use proportionally fewer, at least 30)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=30,
        help="unmeasured requests per size to each side first (default 30)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="gunicorn workers (default 2, as veil serve)"
    )
    parser.add_argument(
        "--breakdown-rows",
        type=int,
        default=100,
        help="answer size broken down step by step (default 100; 0: skip)",
    )
    parser.add_argument(
        "--throughput-rows",
        type=int,
        default=1000,
        help="answer size for the throughput figure (default 1000; 0: skip)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=4,
        help="concurrent clients for the throughput figure (default 4)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="seconds of load for each side's throughput (default 10)",
    )
    args = parser.parse_args(argv)
    sizes = sorted(
        {int(s) for s in args.sizes.split(",") if s.strip()}
        | ({args.breakdown_rows} if args.breakdown_rows else set())
        | ({args.throughput_rows} if args.throughput_rows else set())
    )

    directory = Directory.generate(seed=7, employees=234, guests=10)  # 250 distinct actors
    log = ActivityLog(directory, seed=7)
    bodies: dict[int, bytes] = {}
    store_port = free_port()
    store_url = f"http://127.0.0.1:{store_port}"
    with tempfile.TemporaryDirectory(prefix="veil-bench-") as tmp, requests.Session() as http:
        http.trust_env = False
        workdir = Path(tmp)
        port = free_port()
        config_path = workdir / "veil.yaml"
        config_path.write_text(
            yaml.safe_dump(config_document(store_url, workdir, port, args.workers))
        )
        with veil_server(config_path, port, workdir / "veil.log") as veil_url:
            start = setup_privacy(http, veil_url, directory)
            hour = 3600 * 1_000_000_000
            for size in sizes:  # rows before and after the groups became private
                rows = log.sample(size, start - hour, start + hour)
                bodies[size] = json.dumps({"data": rows, "next": None}).encode()
            with loopback_store(store_port, bodies):
                results = []
                for size in sizes:
                    count = args.requests if size <= 1000 else max(30, args.requests * 1000 // size)
                    print(
                        f"measuring {size} rows: {args.warmup} warm-up + {count} requests "
                        "each side...",
                        flush=True,
                    )
                    results.append(
                        measure(size, count, args.warmup, store_url, veil_url, bodies[size])
                    )
                steps: list[tuple[str, float]] = []
                if args.breakdown_rows:
                    print(f"breaking down a {args.breakdown_rows}-row answer...", flush=True)
                    steps = breakdown(
                        config_path, store_url, args.breakdown_rows, max(50, args.requests)
                    )
                rates = None
                if args.throughput_rows:
                    print(
                        f"throughput at {args.throughput_rows} rows: {args.clients} clients, "
                        f"{args.seconds:g} s each side...",
                        flush=True,
                    )
                    rates = (
                        throughput(store_url, args.throughput_rows, args.clients, args.seconds),
                        throughput(veil_url, args.throughput_rows, args.clients, args.seconds),
                    )
    report(
        results, args.workers, steps, args.breakdown_rows, rates, args.throughput_rows, args.clients
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
