"""Liveness, readiness and metrics: no identity needed."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from veil.policy_reload import policy_status
from veil.services import services

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@blueprint.get("/readyz")
def readyz() -> tuple[Response, int]:
    svc = services()
    checks = {
        "store": svc.upstream.reachable(),
        "engine": svc.engine.ready(),
        "storage": svc.storage.ping(),
    }
    ready = all(checks.values())
    return jsonify(
        status="ready" if ready else "not ready",
        checks=checks,
        policy=policy_status(),
        governance_log=svc.storage.sealing_status(),
    ), 200 if ready else 503


@blueprint.get("/metrics")
def metrics() -> Response:
    return Response(
        services().metrics.exposition(), mimetype="text/plain; version=0.0.4; charset=utf-8"
    )
