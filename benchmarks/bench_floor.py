"""The floor under Veil's added latency: what a bare proxy on the same stack adds, and Veil.

Veil's budget (added median under 5 ms at 1,000 rows) is only meaningful against what any
proxy in front of the same store adds on the same machine that day: the second hop over
loopback, gunicorn (gthread) and Flask. This script measures, side by side in one run and
against the same loopback store as ``bench_latency.py``:

- ``direct``: the store itself;
- ``pass-through``: Flask under gunicorn gthread (2 workers, 8 threads) forwarding with
  ``http.client`` on a kept-alive connection (as Veil's store client) and returning the
  store's bytes unread;
- ``orjson``: the same, decoding the answer with orjson, dropping every other row and
  encoding it again (the cheapest "filter" there is);
- ``veil``: ``veil serve`` with the shipped policy, as ``bench_latency.py`` runs it.

Requests alternate between the four, so all see the same machine load. It prints the medians
and what each adds to the direct query. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
import yaml

from veil.demo.store import ActivityLog, Directory

from bench_latency import (
    CALLER,
    config_document,
    free_port,
    loopback_store,
    setup_privacy,
    token,
    veil_server,
    wait_healthz,
)

# The bare proxy, as a module gunicorn loads (the store's URL and the mode from the env).
PROXY = """
import http.client
import os
import threading
from urllib.parse import urlsplit

import orjson
from flask import Flask, Response, request

app = Flask("floor")
STORE, MODE = urlsplit(os.environ["FLOOR_STORE"]), os.environ["FLOOR_MODE"]
local = threading.local()  # one kept-alive connection per thread, as Veil's pool gives


@app.get("/api/activities")
def activities():
    connection = getattr(local, "connection", None)
    if connection is None:
        connection = local.connection = http.client.HTTPConnection(STORE.hostname, STORE.port)
    connection.request("GET", f"/api/activities?{request.query_string.decode()}",
                       headers={"Authorization": request.headers.get("Authorization", "")})
    answer = connection.getresponse()
    body = answer.read()
    if MODE == "orjson":
        document = orjson.loads(body)
        document["data"] = document["data"][::2]
        body = orjson.dumps(document)
    return Response(body, status=answer.status, content_type="application/json")


@app.get("/healthz")
def healthz():
    return "ok"
"""


@contextmanager
def bare_proxy(workdir: Path, store_url: str, mode: str) -> Iterator[str]:
    """The bare proxy under gunicorn gthread, as ``veil serve`` runs Veil."""
    (workdir / "floor_proxy.py").write_text(PROXY)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "2", "--threads", "8", "-k", "gthread",
         "-b", f"127.0.0.1:{port}", "floor_proxy:app"],
        cwd=workdir, env={**os.environ, "FLOOR_STORE": store_url, "FLOOR_MODE": mode},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthz(url, process, 30, f"the {mode} proxy")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="100,1000", help="answer sizes (default 100,1000)")
    parser.add_argument("--requests", type=int, default=300, help="per size and side")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured, per size and side")
    args = parser.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    directory = Directory.generate(seed=7, employees=234, guests=10)
    log = ActivityLog(directory, seed=7)
    store_port = free_port()
    store_url = f"http://127.0.0.1:{store_port}"
    headers = {"Authorization": f"Bearer {token(CALLER)}"}
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="veil-floor-") as tmp, requests.Session() as http:
        http.trust_env = False
        workdir = Path(tmp)
        port = free_port()
        config_path = workdir / "veil.yaml"
        config_path.write_text(yaml.safe_dump(config_document(store_url, workdir, port, 2)))
        with (
            veil_server(config_path, port, workdir / "veil.log") as veil_url,
            bare_proxy(workdir, store_url, "pass") as pass_url,
            bare_proxy(workdir, store_url, "orjson") as orjson_url,
        ):
            start = setup_privacy(http, veil_url, directory)
            hour = 3600 * 1_000_000_000
            bodies = {
                size: json.dumps(
                    {"data": log.sample(size, start - hour, start + hour), "next": None}
                ).encode()
                for size in sizes
            }
            urls = {"direct": store_url, "pass-through": pass_url, "orjson": orjson_url,
                    "veil": veil_url}  # fmt: skip
            with loopback_store(store_port, bodies):
                sessions = {name: requests.Session() for name in urls}
                for session in sessions.values():
                    session.trust_env = False
                for size in sizes:
                    times: dict[str, list[float]] = {name: [] for name in urls}
                    order = list(urls)
                    for i in range(args.warmup + args.requests):
                        for name in order if i % 2 else reversed(order):
                            started = time.perf_counter()
                            answer = sessions[name].get(
                                f"{urls[name]}/api/activities?limit={size}",
                                headers=headers,
                                timeout=60,
                            )
                            elapsed = time.perf_counter() - started
                            answer.raise_for_status()
                            if i >= args.warmup:
                                times[name].append(elapsed * 1000)
                    medians = {name: statistics.median(values) for name, values in times.items()}
                    cells = ", ".join(
                        f"{name} {medians[name]:.2f} ms (+{medians[name] - medians['direct']:.2f})"
                        for name in urls
                        if name != "direct"
                    )
                    print(f"{size:>6} rows, median: direct {medians['direct']:.2f} ms, {cells}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
