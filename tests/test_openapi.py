"""The OpenAPI document tells the truth: every route is in it, and Schemathesis, run against a
live `veil serve` with an admin token and every check, finds no failure."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests
from flask import Flask
from flask.testing import FlaskClient

from veil.openapi import document

from conftest import ADMIN, ROOT, LoopbackStore, auth, config_doc, token
from netutil import veil_serve

IMPLICIT = {"HEAD", "OPTIONS"}  # Flask answers these for every route


def test_every_route_is_documented_and_every_operation_served(app: Flask) -> None:
    doc = document(app.extensions["veil"].config.upstream.routes)
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "scim.unknown"):
            continue  # scim.unknown: SCIM's own 404/405 for paths that are no SCIM endpoint
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        served |= {
            (path, method.lower()) for method in rule.methods or () if method not in IMPLICIT
        }
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert served - documented == set(), "served but not in the OpenAPI document"
    assert documented - served == set(), "in the OpenAPI document but not served"
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    for name, schema in doc["components"]["schemas"].items():
        assert schema["type"] == "object", name


def test_openapi_json_needs_no_identity(client: FlaskClient) -> None:
    r = client.get("/veil/v1/openapi.json")
    assert r.status_code == 200
    assert r.get_json()["openapi"] == "3.1.0"


def test_undeclared_method_is_405_with_allow(client: FlaskClient) -> None:
    for path, allowed in (
        ("/veil/v1/admins", {"GET", "POST"}),
        ("/veil/v1/groups/hr", {"PUT", "DELETE"}),
        ("/api/activities", {"GET"}),
    ):
        r = client.open(path, method="TRACE", headers=auth(ADMIN))
        assert r.status_code == 405, path
        assert set(r.headers["Allow"].split(", ")) - IMPLICIT == allowed, path
        assert r.mimetype == "application/problem+json"


def test_the_document_follows_the_justification_setting(app: Flask) -> None:
    routes = app.extensions["veil"].config.upstream.routes
    required = document(routes, require_justification=True)
    optional = document(routes, require_justification=False)
    body = "/veil/v1/reveal-sessions"

    def schema(doc: dict[str, Any]) -> dict[str, Any]:
        ref = doc["paths"][body]["post"]["requestBody"]["content"]["application/json"]["schema"][
            "$ref"
        ]
        found: dict[str, Any] = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
        return found

    assert "justification" in schema(required)["required"]
    assert "justification" not in schema(optional)["required"]


def test_schemathesis_finds_no_failure(store: LoopbackStore, tmp_path: Path) -> None:
    doc = config_doc(
        store.url, f"sqlite:///{tmp_path / 'veil.db'}", server={"workers": 1, "threads": 4}
    )
    with veil_serve(doc, tmp_path) as (url, _):
        # one worker: Schemathesis' threads race in CPython 3.11's ast.parse (SystemError)
        assert requests.get(f"{url}/veil/v1/openapi.json", timeout=30).status_code == 200
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "--config-file",
                str(ROOT / "tests" / "schemathesis.toml"),
                "--no-color",
                "run",
                f"{url}/veil/v1/openapi.json",
                "--checks",
                "all",
                # SCIM has its own token and is off here; scim2-tester checks its conformance
                # (tests/test_scim_conformance.py)
                "--exclude-tag",
                "scim",
                "-H",
                f"Authorization: Bearer {token(ADMIN, ttl_s=3600)}",
                "--max-examples",
                "30",
                "--workers",
                "1",
                "--request-timeout",
                "30",
                "--generation-database",
                "none",
                "--report-dir",
                str(tmp_path / "report"),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,
        )
    start = max(run.stdout.find("FAILURES"), 0)
    summary = run.stdout[start : start + 8000] + run.stdout[-1500:] + run.stderr[-2000:]
    assert run.returncode == 0, summary
    assert re.search(r"\d+ generated, \d+ passed", run.stdout), summary
