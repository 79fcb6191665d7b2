"""The SCIM conformance checker scim2-tester, run against a live `veil serve` (gunicorn), on
SQLite and on PostgreSQL.

Every check must pass, or be skipped for a reason listed in ALLOWED_SKIPS:
- ``POST /.search`` across resource types: Veil answers 501 (RFC 7644 §3.12); it searches one
  type at a time (``POST /Users/.search``, ``POST /Groups/.search``), which is what identity
  providers use.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from httpx2 import Client
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

from conftest import LoopbackStore, config_doc
from netutil import veil_serve

pytestmark = pytest.mark.storage  # the SCIM directory lives in storage

TOKEN = "conformance-token-0123456789"
ALLOWED_SKIPS = ("POST /.search: searching several resource types at once",)


@pytest.fixture
def served(store: LoopbackStore, tmp_path: Path, storage_url: str) -> Iterator[str]:
    """`veil serve` on SQLite, and on PostgreSQL (the storage_url fixture's two backends)."""
    doc = config_doc(
        store.url,
        storage_url,
        server={"workers": 2, "threads": 4},
        scim={"token_env": "VEIL_SCIM_TOKEN"},
    )
    with veil_serve(doc, tmp_path, env={"VEIL_SCIM_TOKEN": TOKEN}) as (url, _):
        yield url


def test_scim2_tester_finds_no_failure(served: str) -> None:
    with Client(
        base_url=f"{served}/scim/v2", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    ) as http:
        results = check_server(SyncSCIMClient(http))
    assert len(results) > 100  # discovery, then CRUD and PATCH on every attribute of both types
    failures = [
        f"{r.resource_type} {r.title}: {r.reason}"
        for r in results
        if r.status not in (Status.SUCCESS, Status.SKIPPED)
    ]
    assert failures == []
    skipped = [r.reason or "" for r in results if r.status == Status.SKIPPED]
    assert all(reason.startswith(ALLOWED_SKIPS) for reason in skipped), skipped
    checked = {r.resource_type for r in results if r.status == Status.SUCCESS}
    assert {"User", "Group"} <= checked
