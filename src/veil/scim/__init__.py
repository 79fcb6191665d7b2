"""SCIM 2.0 group provisioning under /scim/v2 (RFC 7643/7644): Users, Groups and discovery.

Identity providers (Microsoft Entra ID, Okta) push users and groups here with a bearer token
(the value of the environment variable ``scim.token_env`` names, compared in constant time);
without a token the endpoint is off (404). These routes are not under Veil's JWT identity.
A SCIM group is a Veil group whose id is the SCIM ``id``; membership changes keep R1 (who
leaves stays private for their time in a private group) and each change writes one
governance record with ``scim.actor`` as its actor. Errors are SCIM errors
(``application/scim+json`` with ``scimType``), never problem documents.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from flask import Blueprint, Flask, Response, request
from pydantic import ValidationError
from scim2_models import (
    Error,
    Group,
    InvalidSyntaxException,
    NotFoundException,
    NotImplementedException,
    SCIMException,
)
from werkzeug.exceptions import HTTPException

from veil.errors import VeilError
from veil.scim import discovery
from veil.scim import resources as wire
from veil.services import services
from veil.storage.directory import Directory, MemberChange, etag

log = logging.getLogger("veil.scim")

PREFIX = "/scim/v2"
CONTENT_TYPE = "application/scim+json"
MAX_DEPTH = 32

blueprint = Blueprint("scim", __name__, url_prefix=PREFIX)


def init_app(app: Flask) -> None:
    """Register the SCIM routes; they answer 404 until a token is configured."""
    app.extensions["veil_scim"] = Directory(app.extensions["veil"].storage)
    app.register_blueprint(blueprint)


def directory() -> Directory:
    from flask import current_app

    found: Directory = current_app.extensions["veil_scim"]
    return found


def scim_response(
    document: Any, status: int = 200, version: int | None = None, location: str | None = None
) -> Response:
    response = Response(json.dumps(document), status=status, mimetype=CONTENT_TYPE)
    if version is not None:
        response.headers["ETag"] = etag(version)
    if location is not None:
        response.headers["Location"] = location
    return response


def scim_error(status: int, detail: str, scim_type: str | None = None) -> Response:
    error = Error(status=status, scim_type=scim_type, detail=detail)
    response = scim_response(error.model_dump(), status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="veil-scim"'
    return response


def base_url() -> str:
    return request.url_root.rstrip("/") + PREFIX


def actor() -> str:
    return services().config.scim.actor


def client() -> str:
    return request.headers.get("User-Agent", "")[:200]


def body() -> Any:
    """The JSON body; a body that is not JSON, or nested too deep, is invalidSyntax."""
    raw = request.get_data(cache=True)
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidSyntaxException(detail="the request body is not valid JSON") from None
    if _too_deep(document):
        raise InvalidSyntaxException(detail=f"the request body nests deeper than {MAX_DEPTH}")
    return document


def _too_deep(value: Any) -> bool:
    level = [value]
    for _ in range(MAX_DEPTH):
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return False
    return True


@blueprint.before_request
def authenticate() -> Response | None:
    config = services().config.scim
    if not config.enabled:
        return scim_error(404, "SCIM provisioning is off: no token is configured (scim.token_env)")
    request.max_content_length = config.max_body_bytes
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    assert config.token is not None
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode(), config.token.encode()
    ):
        return scim_error(
            401,
            "send 'Authorization: Bearer <SCIM token>' with the token configured for provisioning",
        )
    return None


@blueprint.errorhandler(Exception)
def error(exc: Exception) -> Response:
    if isinstance(exc, SCIMException):
        return scim_error(exc.status, str(exc), exc.scim_type or None)
    if isinstance(exc, ValidationError):
        found = wire.validation_error(exc)
        return scim_error(found.status, str(found), found.scim_type or None)
    if isinstance(exc, VeilError):
        if exc.status >= 500:
            log.warning("%s: %s", exc.code, exc.detail)
        return scim_error(exc.status, exc.detail, exc.extra.get("scim_type"))
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        scim_type = "tooLarge" if status == 413 else None
        return scim_error(status, exc.description or exc.name, scim_type)
    log.exception("unexpected SCIM error")
    return scim_error(500, "Veil failed unexpectedly; see its log")


# ---- discovery ----------------------------------------------------------------------------


@blueprint.get("/ServiceProviderConfig")
def service_provider_config() -> Response:
    return scim_response(discovery.service_provider_config(base_url()))


@blueprint.get("/Schemas")
def schemas() -> Response:
    return scim_response(discovery.list_response(discovery.schemas(base_url())))


@blueprint.get("/Schemas/<schema_id>")
def schema(schema_id: str) -> Response:
    for found in discovery.schemas(base_url()):
        if found["id"] == schema_id:
            return scim_response(found)
    raise NotFoundException(detail=f"there is no schema {schema_id!r}")


@blueprint.get("/ResourceTypes")
def resource_types() -> Response:
    return scim_response(discovery.list_response(discovery.resource_types(base_url())))


@blueprint.get("/ResourceTypes/<type_id>")
def resource_type(type_id: str) -> Response:
    for found in discovery.resource_types(base_url()):
        if found["id"] == type_id:
            return scim_response(found)
    raise NotFoundException(detail=f"there is no resource type {type_id!r}")


# ---- users --------------------------------------------------------------------------------


@blueprint.get("/Users")
def list_users() -> Response:
    return _list_users(request.args)


@blueprint.post("/Users/.search")
def search_users() -> Response:
    return _list_users(_search_args())


def _list_users(args: Any) -> Response:
    params = wire.response_parameters(args, wire.UserModel)
    where = wire.eq_filter(args.get("filter"), "User", wire.UserModel)
    start, count = wire.page(args, discovery.MAX_RESULTS)
    total, users = directory().list_users(where, start, count)
    return scim_response(
        discovery.list_response(
            [wire.user_document(u, base_url(), params) for u in users], total, start
        )
    )


@blueprint.post("/Users")
def create_user() -> Response:
    from scim2_models import Context

    state = wire.user_state(wire.read(wire.UserModel, body(), Context.RESOURCE_CREATION_REQUEST))
    stored = directory().create_user(state, actor(), client())
    return scim_response(
        wire.user_document(stored, base_url()),
        201,
        stored.version,
        f"{base_url()}/Users/{stored.id}",
    )


@blueprint.get("/Users/<uid>")
def get_user(uid: str) -> Response:
    params = wire.response_parameters(request.args, wire.UserModel)
    stored = directory().get_user(uid)
    if stored is None:
        raise NotFoundException(detail=f"there is no user {uid!r}")
    if request.headers.get("If-None-Match") == etag(stored.version):
        return Response(status=304, headers={"ETag": etag(stored.version)})
    return scim_response(wire.user_document(stored, base_url(), params), 200, stored.version)


@blueprint.put("/Users/<uid>")
def replace_user(uid: str) -> Response:
    from scim2_models import Context

    state = wire.user_state(wire.read(wire.UserModel, body(), Context.RESOURCE_REPLACEMENT_REQUEST))
    stored, _ = directory().update_user(
        uid, lambda _old: state, request.headers.get("If-Match"), actor(), client()
    )
    return scim_response(wire.user_document(stored, base_url()), 200, stored.version)


@blueprint.patch("/Users/<uid>")
def patch_user(uid: str) -> Response:
    document = body()
    stored, _ = directory().update_user(
        uid,
        lambda old: wire.patch_user(old, document, base_url()),
        request.headers.get("If-Match"),
        actor(),
        client(),
    )
    return scim_response(wire.user_document(stored, base_url()), 200, stored.version)


@blueprint.delete("/Users/<uid>")
def delete_user(uid: str) -> Response:
    directory().delete_user(uid, request.headers.get("If-Match"), actor(), client())
    return Response(status=204)


# ---- groups -------------------------------------------------------------------------------


@blueprint.get("/Groups")
def list_groups() -> Response:
    return _list_groups(request.args)


@blueprint.post("/Groups/.search")
def search_groups() -> Response:
    return _list_groups(_search_args())


def _list_groups(args: Any) -> Response:
    params = wire.response_parameters(args, Group)
    where = wire.eq_filter(args.get("filter"), "Group", Group)
    start, count = wire.page(args, discovery.MAX_RESULTS)
    total, groups = directory().list_groups(where, start, count, wire.members_wanted(params))
    return scim_response(
        discovery.list_response(
            [wire.group_document(g, base_url(), params) for g in groups], total, start
        )
    )


@blueprint.post("/Groups")
def create_group() -> Response:
    from scim2_models import Context

    group = wire.read(Group, body(), Context.RESOURCE_CREATION_REQUEST)
    ids, displays = wire.member_ids(group)
    stored = directory().create_group(wire.group_state(group), ids, actor(), client(), displays)
    return scim_response(
        wire.group_document(stored, base_url()),
        201,
        stored.version,
        f"{base_url()}/Groups/{stored.id}",
    )


@blueprint.get("/Groups/<gid>")
def get_group(gid: str) -> Response:
    params = wire.response_parameters(request.args, Group)
    stored = directory().get_group(gid, wire.members_wanted(params))
    if stored is None:
        raise NotFoundException(detail=f"there is no group {gid!r}")
    if request.headers.get("If-None-Match") == etag(stored.version):
        return Response(status=304, headers={"ETag": etag(stored.version)})
    return scim_response(wire.group_document(stored, base_url(), params), 200, stored.version)


@blueprint.put("/Groups/<gid>")
def replace_group(gid: str) -> Response:
    """Okta replaces a group whole, members included."""
    from scim2_models import Context

    group = wire.read(Group, body(), Context.RESOURCE_REPLACEMENT_REQUEST)
    state = wire.group_state(group)
    members = MemberChange()
    members.replace(*wire.member_ids(group))
    directory().update_group(
        gid, lambda _old: (state, members), request.headers.get("If-Match"), actor(), client()
    )
    stored = directory().get_group(gid)
    if stored is None:  # deleted between the two transactions
        raise NotFoundException(detail=f"there is no group {gid!r}")
    return scim_response(wire.group_document(stored, base_url()), 200, stored.version)


@blueprint.patch("/Groups/<gid>")
def patch_group(gid: str) -> Response:
    """Answers 204: a large group is not written back for every one-member change."""
    document = body()
    stored, _ = directory().update_group(
        gid,
        lambda old: wire.patch_group(old, document),
        request.headers.get("If-Match"),
        actor(),
        client(),
    )
    return Response(status=204, headers={"ETag": etag(stored.version)})


@blueprint.delete("/Groups/<gid>")
def delete_group(gid: str) -> Response:
    directory().delete_group(gid, request.headers.get("If-Match"), actor(), client())
    return Response(status=204)


# ---- what is not offered ------------------------------------------------------------------


@blueprint.post("/.search")
def search_all() -> Response:
    raise NotImplementedException(
        detail="search one resource type at a time: POST /Users/.search or /Groups/.search"
    )


@blueprint.route("/Bulk", methods=["POST"])
def bulk() -> Response:
    raise NotImplementedException(detail="bulk operations are not supported")


ENDPOINTS = ("ServiceProviderConfig", "Schemas", "ResourceTypes", "Users", "Groups")


@blueprint.route("/<path:anything>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def unknown(anything: str) -> Response:
    if anything.split("/")[0] in ENDPOINTS and anything.count("/") <= 1:
        return scim_error(405, f"{request.method} is not allowed on /{anything}")
    raise NotFoundException(detail=f"there is no SCIM endpoint /{anything}")


def _search_args() -> dict[str, Any]:
    document = body()
    if not isinstance(document, dict):
        raise InvalidSyntaxException(detail="a search body must be a SearchRequest object")
    args: dict[str, Any] = {}
    for key in ("filter", "startIndex", "count"):
        if key in document:
            args[key] = document[key]
    for key in ("attributes", "excludedAttributes"):
        if key in document:
            value = document[key]
            args[key] = ",".join(value) if isinstance(value, list) else value
    return args
