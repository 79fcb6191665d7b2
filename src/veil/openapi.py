"""The OpenAPI 3.1 document of Veil's HTTP interface, built from the same schemas it enforces."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from veil import __version__, schemas
from veil.app import services

blueprint = Blueprint("openapi", __name__)

PROBLEM = {"$ref": "#/components/responses/Problem"}


def _op(summary: str, ok: str, body: str | None = None, ok_schema: dict[str, Any] | None = None,
        errors: tuple[str, ...] = ("401",), params: list[dict[str, Any]] | None = None,
        tag: str = "management") -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": {}}
    if body:
        operation["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{body}"}}}}
        errors = ("400", *errors)
    content = {"application/json": {"schema": ok_schema or {"type": "object"}}}
    operation["responses"][ok] = ({"description": "done"} if ok == "204" else
                                  {"description": "done", "content": content})
    for status in errors:
        operation["responses"][status] = PROBLEM
    if params:
        operation["parameters"] = params
    return operation


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}


def _query_param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


def document(routes: tuple[str, ...]) -> dict[str, Any]:
    gid = [_path_param("gid", "group id")]
    principal = [_path_param("principal", "a principal (UPN or e-mail, case-insensitive)")]
    admin_errors = ("401", "403")
    paths: dict[str, Any] = {
        "/healthz": {"get": _op("The process is up", "200", errors=(), tag="operations")},
        "/readyz": {"get": _op("Store, engine and governance storage are reachable", "200",
                               errors=("503",), tag="operations")},
        "/metrics": {"get": {"summary": "Prometheus metrics", "tags": ["operations"],
                             "responses": {"200": {"description": "Prometheus text format",
                                                   "content": {"text/plain": {}}}}}},
        "/veil/v1/openapi.json": {"get": _op("This document", "200")},
        "/veil/v1/groups": {"get": _op("List groups, each with its source (api or scim)", "200")},
        "/veil/v1/groups/{gid}": {
            "put": _op("Import or replace a group (201 when created)", "200", "Group",
                       errors=admin_errors, params=gid),
            "delete": _op("Delete a group that was never private", "204",
                          errors=(*admin_errors, "404", "409"), params=gid),
        },
        "/veil/v1/privacy-groups": {
            "get": _op("List privacy groups with their intervals", "200"),
            "post": _op("Make a group private from now on", "201", "PrivacyGroupRequest",
                        errors=(*admin_errors, "409", "422")),
        },
        "/veil/v1/privacy-groups/{gid}": {
            "delete": _op("End a group's current privacy interval", "204",
                          errors=(*admin_errors, "404"), params=gid),
        },
        "/veil/v1/admins": {
            "get": _op("List admins", "200", errors=admin_errors),
            "post": _op("Add an admin", "201", "PrincipalRequest",
                        errors=(*admin_errors, "409")),
        },
        "/veil/v1/admins/{principal}": {
            "delete": _op("Remove an admin; ends their permission and reveal sessions", "204",
                          errors=(*admin_errors, "404", "409"), params=principal),
        },
        "/veil/v1/private-viewers": {
            "get": _op("List holders of the view-private permission", "200",
                       errors=admin_errors),
            "post": _op("Grant the view-private permission to an admin", "201",
                        "PrincipalRequest", errors=(*admin_errors, "409", "422")),
        },
        "/veil/v1/private-viewers/{principal}": {
            "delete": _op("Revoke the permission; ends the holder's reveal sessions", "204",
                          errors=(*admin_errors, "404"), params=principal),
        },
        "/veil/v1/reveal-sessions": {
            "post": _op("Open an audited reveal session", "201", "RevealSessionRequest",
                        ok_schema={"type": "object", "required": ["id", "expires_at"],
                                   "properties": {"id": {"type": "string"},
                                                  "expires_at": {"type": "string",
                                                                 "format": "date-time"},
                                                  "owner": {"type": "string"}}},
                        errors=("401", "403"), tag="reveal"),
        },
        "/veil/v1/reveal-sessions/{sid}": {
            "delete": _op("End a reveal session", "204", errors=("401", "404", "409"),
                          params=[_path_param("sid", "reveal session id")], tag="reveal"),
        },
        "/veil/v1/governance-log": {
            "get": _op("Read the governance log, oldest first", "200", errors=admin_errors,
                       tag="governance", params=[
                           _query_param("since", "records at or after this time (RFC 3339)",
                                        {"type": "string", "format": "date-time"}),
                           _query_param("until", "records before this time (RFC 3339)",
                                        {"type": "string", "format": "date-time"}),
                           _query_param("action", "only this action", {"type": "string"}),
                           _query_param("actor", "only this actor", {"type": "string"}),
                           _query_param("cursor", "next_cursor of the previous page",
                                        {"type": "string"}),
                           _query_param("limit", "records per page (1-1000, default 100)",
                                        {"type": "integer", "minimum": 1, "maximum": 1000}),
                       ]),
        },
        "/veil/v1/governance-log/verify": {
            "get": _op("Verify the hash chain", "200", errors=admin_errors, tag="governance"),
        },
        "/veil/v1/policy/reload": {
            "post": _op("Check, test and load the policy directory (hot reload); a refused "
                        "set (422, with the problems) leaves the running policy serving",
                        "200", errors=(*admin_errors, "422"), tag="policy",
                        ok_schema={"type": "object",
                                   "required": ["outcome", "trigger", "at", "reason"],
                                   "properties": {
                                       "outcome": {"enum": ["accepted", "unchanged"]},
                                       "trigger": {"type": "string"},
                                       "at": {"type": "string", "format": "date-time"},
                                       "reason": {"type": "string"},
                                       "digest": {"type": ["string", "null"]}}}),
        },
    }
    reveal_header = {"name": "Veil-Reveal-Session", "in": "header", "required": False,
                     "description": "a reveal session id: include private rows (audited)",
                     "schema": {"type": "string"}}
    for route in routes:
        paths[route] = {"get": {
            "summary": "Activity query, forwarded to the store and filtered by policy",
            "tags": ["activities"], "parameters": [reveal_header],
            "responses": {"200": {"description": "the store's answer without private rows"},
                          "401": PROBLEM, "403": PROBLEM, "502": PROBLEM, "503": PROBLEM,
                          "504": PROBLEM}}}
    from veil.scim import PREFIX
    from veil.scim.discovery import openapi_paths

    paths.update(openapi_paths(PREFIX))  # own bearer token: scimBearer, SCIM error bodies
    for open_path in ("/healthz", "/readyz", "/metrics"):
        paths[open_path]["get"]["security"] = []  # no identity needed
    return {
        "openapi": "3.1.0",
        "info": {"title": "Veil", "version": __version__,
                 "description": "Policy-as-code privacy sidecar for activity logs"},
        "components": {
            "schemas": {**schemas.BODIES, "Problem": {
                "type": "object", "required": ["type", "title", "status", "detail", "code"],
                "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                               "status": {"type": "integer"}, "detail": {"type": "string"},
                               "code": {"type": "string"}, "field": {"type": "string"}}},
                "ScimError": {
                    "type": "object", "required": ["schemas", "status"],
                    "properties": {"schemas": {"type": "array", "items": {"type": "string"}},
                                   "status": {"type": "string"},
                                   "scimType": {"type": "string"},
                                   "detail": {"type": "string"}}}},
            "responses": {"Problem": {"description": "an RFC 9457 problem",
                                      "content": {"application/problem+json": {
                                          "schema": {"$ref": "#/components/schemas/Problem"}}}},
                          "ScimError": {"description": "a SCIM error (RFC 7644 §3.12)",
                                        "content": {"application/scim+json": {
                                            "schema": {"$ref":
                                                       "#/components/schemas/ScimError"}}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"},
                                "scimBearer": {"type": "http", "scheme": "bearer",
                                               "description": "the SCIM token "
                                                              "(scim.token_env)"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


@blueprint.get("/veil/v1/openapi.json")
def openapi_json() -> Response:
    return jsonify(document(services().config.upstream.routes))
