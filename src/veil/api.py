"""The management API under /veil/v1: groups, privacy groups, admins, viewers, reveal
sessions, the governance log and policy reloads. Views parse, call one service function,
and render."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from veil import policy_reload, schemas
from veil.errors import BadRequest, InvalidBody, Unprocessable
from veil.identity import normalize_principal
from veil.services import caller, require_admin, services

blueprint = Blueprint("api", __name__, url_prefix="/veil/v1")


_GROUP_ID = re.compile(schemas.GROUP_ID)


def body(schema: dict[str, Any]) -> dict[str, Any]:
    """The request's JSON body, validated; a bad body is a 400 naming the field.

    A body above ``server.max_body_bytes`` is a 413 before it is read whole (werkzeug's
    ``MAX_CONTENT_LENGTH``, also for chunked bodies); one nested too deeply, or holding a
    string Veil cannot store (a lone surrogate), is a 400.
    """
    if not request.is_json:
        raise InvalidBody("send a JSON body with 'Content-Type: application/json'")
    data = request.get_data(cache=True)  # at most max_content_length bytes are read
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(data) >= limit:
        # a streamed body that reached the limit: werkzeug stops there, silently cut
        raise RequestEntityTooLarge()
    try:
        document = request.get_json(silent=True)
    except RecursionError:
        raise InvalidBody("the request body is nested too deeply") from None
    if document is None:
        raise InvalidBody("the request body is not valid JSON")
    problem = schemas.unrepresentable(document) or schemas.body_error(schema, document)
    if problem is not None:
        field, message = problem
        raise InvalidBody(message, field=field)
    return dict(document)


def group_id(value: str, field: str = "id") -> str:
    """A group id, matched whole (``hr\\n`` is not ``hr``)."""
    if not _GROUP_ID.fullmatch(value):
        raise BadRequest(f"group id {value!r} must match {schemas.GROUP_ID}", field=field)
    return value


def created(payload: Any) -> tuple[Response, int]:
    return jsonify(payload), 201


def no_content() -> Response:
    return Response(status=204)


# ---- groups -----------------------------------------------------------------------------


@blueprint.get("/groups")
def list_groups() -> Response:
    require_admin()  # members of private groups are private facts (R9)
    return jsonify(groups=services().storage.list_groups())


@blueprint.put("/groups/<gid>")
def put_group(gid: str) -> tuple[Response, int]:
    actor = require_admin()
    doc = body(schemas.GROUP_BODY)
    was_created, group = services().storage.put_group(
        group_id(gid), doc["name"], doc["members"], actor
    )
    return jsonify(group), 201 if was_created else 200


@blueprint.delete("/groups/<gid>")
def delete_group(gid: str) -> Response:
    services().storage.delete_group(group_id(gid), require_admin())
    return no_content()


# ---- privacy groups ---------------------------------------------------------------------


@blueprint.get("/privacy-groups")
def list_privacy_groups() -> Response:
    require_admin()
    return jsonify(privacy_groups=services().storage.list_privacy_groups())


@blueprint.post("/privacy-groups")
def add_privacy_group() -> tuple[Response, int]:
    actor = require_admin()
    doc = body(schemas.PRIVACY_GROUP_BODY)
    return created(services().storage.add_privacy_group(group_id(doc["group"], "group"), actor))


@blueprint.delete("/privacy-groups/<gid>")
def remove_privacy_group(gid: str) -> Response:
    services().storage.remove_privacy_group(group_id(gid), require_admin())
    return no_content()


# ---- admins and the view-private permission ---------------------------------------------


@blueprint.get("/admins")
def list_admins() -> Response:
    require_admin()
    return jsonify(admins=services().storage.list_admins())


@blueprint.post("/admins")
def add_admin() -> tuple[Response, int]:
    actor = require_admin()
    principal = normalize_principal(body(schemas.PRINCIPAL_BODY)["principal"])
    services().storage.add_admin(principal, actor)
    return created({"principal": principal})


@blueprint.delete("/admins/<principal>")
def remove_admin(principal: str) -> Response:
    actor = require_admin()
    services().storage.remove_admin(normalize_principal(principal), actor)
    return no_content()


@blueprint.get("/private-viewers")
def list_viewers() -> Response:
    require_admin()
    return jsonify(private_viewers=services().storage.list_viewers())


@blueprint.post("/private-viewers")
def grant_viewer() -> tuple[Response, int]:
    actor = require_admin()
    principal = normalize_principal(body(schemas.PRINCIPAL_BODY)["principal"])
    services().storage.grant_viewer(principal, actor)
    return created({"principal": principal})


@blueprint.delete("/private-viewers/<principal>")
def revoke_viewer(principal: str) -> Response:
    actor = require_admin()
    services().storage.revoke_viewer(normalize_principal(principal), actor)
    return no_content()


# ---- reveal sessions --------------------------------------------------------------------


@blueprint.post("/reveal-sessions")
def open_session() -> tuple[Response, int]:
    svc = services()
    try:
        doc = body(schemas.REVEAL_SESSION_BODY)
        justification = doc.get("justification")
        if justification is not None or svc.config.reveal.require_justification:
            schemas.check_justification(justification)
    except InvalidBody as exc:  # a refused opt-in is audited like any other (coalesced, R12)
        svc.storage.refusal(
            "reveal_session_refused",
            caller(),
            {"reason": exc.detail, "field": exc.extra.get("field")},
        )
        raise
    session = svc.storage.open_session(caller(), justification, svc.config.reveal.session_ttl_s)
    return created(
        {"id": session["id"], "expires_at": session["expires_at"], "owner": session["owner"]}
    )


@blueprint.delete("/reveal-sessions/<sid>")
def end_session(sid: str) -> Response:
    svc = services()
    principal = caller()
    svc.storage.end_session(sid, principal, svc.storage.is_admin(principal))
    return no_content()


# ---- governance log ---------------------------------------------------------------------

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def _time_filter(name: str) -> str | None:
    """A time filter (RFC 3339, leap seconds and years 0-9999 included) as the log's text."""
    value = request.args.get(name)
    if value is None:
        return None
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise BadRequest(
            f"query parameter {name!r} must be an RFC 3339 time with a time zone "
            "offset, e.g. 2026-11-25T10:00:00Z",
            field=name,
        )
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = (match.group(7) or ".")[1:]
    sign, off_h, off_m = match.group(9), int(match.group(10) or 0), int(match.group(11) or 0)
    try:
        local = datetime(
            max(year, 1), month, day, hour, minute, min(second, 59), int(fraction[:6].ljust(6, "0"))
        )
        if off_h > 23 or off_m > 59:
            raise ValueError("offset out of range")
    except ValueError:
        raise BadRequest(f"query parameter {name!r} is not a valid time", field=name) from None
    offset = timedelta(hours=off_h, minutes=off_m) * (-1 if sign == "-" else 1)
    try:
        moment = local - offset if year > 0 else datetime.min
    except OverflowError:
        moment = datetime.min if offset > timedelta(0) else datetime.max
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
        f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond:06d}Z"
    )


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    value = request.args.get(name)
    if value is None:
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise BadRequest(
            f"query parameter {name!r} must be an integer from {low} to {high}", field=name
        )
    return int(value)


@blueprint.get("/governance-log")
def governance_log() -> Response:
    require_admin()
    unknown = set(request.args) - {"since", "until", "action", "actor", "cursor", "limit"}
    if unknown:
        raise BadRequest(
            f"unknown query parameter {sorted(unknown)[0]!r}", field=sorted(unknown)[0]
        )
    limit = _int_arg("limit", 100, 1, 1000)
    actor = request.args.get("actor")
    if actor is not None:
        actor = normalize_principal(actor, "actor")
    records = services().storage.log_page(
        since=_time_filter("since"),
        until=_time_filter("until"),
        action=request.args.get("action"),
        actor=actor,
        after=_int_arg("cursor", 0, 0, 10**18 - 1),
        limit=limit,
    )
    next_cursor = str(records[-1]["seq"]) if len(records) == limit else None
    return jsonify(records=records, next_cursor=next_cursor)


@blueprint.get("/governance-log/verify")
def verify_log() -> Response:
    require_admin()
    return jsonify(services().storage.verify_log().as_dict())


# ---- policy hot reload ------------------------------------------------------------------


@blueprint.post("/policy/reload")
def reload_policy() -> Response:
    """Check, test and load the policy directory; a refused set leaves the old one serving."""
    outcome = policy_reload.reloader().reload("api", require_admin())
    if outcome.outcome == "accepted":
        policy_reload.tell_other_workers()
    if outcome.outcome == "refused":
        raise Unprocessable(
            f"policy reload refused: {outcome.reason}; the running policy keeps serving",
            outcome=outcome.summary(),
            problems=list(outcome.problems),
        )
    return jsonify(outcome.summary())
