"""The SCIM conformance checker scim2-tester, run against a live `veil serve` (gunicorn), on
SQLite and on PostgreSQL.

Every check must pass, or be skipped for a reason listed in ALLOWED_SKIPS:
- ``POST /.search`` across resource types: Veil answers 501 (RFC 7644 §3.12); it searches one
  type at a time (``POST /Users/.search``, ``POST /Groups/.search``), which is what identity
  providers use.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from httpx2 import Client
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

from conftest import SECRET, LoopbackStore, config_doc

TOKEN = "conformance-token-0123456789"
ALLOWED_SKIPS = ("POST /.search: searching several resource types at once",)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def served(store: LoopbackStore, tmp_path: Path, storage_url: str) -> Iterator[str]:
    """`veil serve` on SQLite, and on PostgreSQL (the storage_url fixture's two backends)."""
    doc = config_doc(store.url, storage_url,
                     server={"workers": 2, "threads": 4},
                     scim={"token_env": "VEIL_SCIM_TOKEN"})
    path = tmp_path / "veil.yaml"
    path.write_text(yaml.safe_dump(doc))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    process = subprocess.Popen(
        [sys.executable, "-m", "veil.cli", "serve", "--config", str(path), "--port", str(port)],
        env={**env, "VEIL_TEST_JWT_SECRET": SECRET, "VEIL_SCIM_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"veil serve exited with {process.returncode}"
            try:
                if requests.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "veil serve did not come up"
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()


def test_scim2_tester_finds_no_failure(served: str) -> None:
    with Client(base_url=f"{served}/scim/v2", headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=30) as http:
        results = check_server(SyncSCIMClient(http))
    assert len(results) > 100  # discovery, then CRUD and PATCH on every attribute of both types
    failures = [f"{r.resource_type} {r.title}: {r.reason}" for r in results
                if r.status not in (Status.SUCCESS, Status.SKIPPED)]
    assert failures == []
    skipped = [r.reason or "" for r in results if r.status == Status.SKIPPED]
    assert all(reason.startswith(ALLOWED_SKIPS) for reason in skipped), skipped
    checked = {r.resource_type for r in results if r.status == Status.SUCCESS}
    assert {"User", "Group"} <= checked


def test_bad_token_on_the_live_server(served: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = requests.get(f"{served}/scim/v2/Users", headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.headers["Content-Type"].startswith("application/scim+json")
