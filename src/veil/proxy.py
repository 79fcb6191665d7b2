"""Proxied activity queries: the store's routes, filtered by policy."""

from __future__ import annotations

from flask import Blueprint, Response, request
from flask.blueprints import BlueprintSetupState

from veil.errors import NotFound
from veil.filtering import REVEAL_HEADER
from veil.services import caller, services

blueprint = Blueprint("proxy", __name__)


@blueprint.record
def _route_each(state: BlueprintSetupState) -> None:
    """One GET rule per configured route: any other path is Flask's 404, and a 405's Allow
    names exactly the methods a path answers (the OpenAPI document says the same)."""
    for route in state.app.extensions["veil"].config.upstream.routes:
        state.add_url_rule(route, "activities", activities, methods=["GET"])


def activities() -> Response:
    svc = services()
    full = request.path
    if full not in svc.query.routes:
        raise NotFound(
            f"{full} is not a proxied route; Veil forwards {', '.join(sorted(svc.query.routes))}"
        )
    session_id = request.headers.get(REVEAL_HEADER)
    reply = svc.query.answer(
        caller(),
        full,
        request.query_string.decode("latin-1"),
        request.headers,
        session_id.strip() if session_id else None,
    )
    response = Response(reply.body, status=reply.status, content_type=reply.content_type)
    for name, value in reply.headers:
        response.headers[name] = value
    return response
