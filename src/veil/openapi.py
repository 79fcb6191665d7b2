"""The OpenAPI 3.1 document of Veil's HTTP interface, built from the same schemas it enforces.

The document is the truth about the API (README, "HTTP interface"): Schemathesis runs against it
in CI (``tests/test_openapi.py``), and a test checks that every route Flask serves is in it.

Adding an endpoint: add one ``Op`` to ``operations()``. Say who may call it (``access``:
``admin``, ``caller`` or ``open``), its success status, its body schema (a name in
``schemas.BODIES``), its parameters and the errors its service can raise (404, 409, 422...);
the statuses every such route answers are added for you: 401 (identity), 403 (admin), 400
(body or parameters), 413 (body above ``server.max_body_bytes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from flask import Blueprint, Response, jsonify

from veil import __version__, schemas
from veil import principal as principal_rules
from veil.services import services

blueprint = Blueprint("openapi", __name__)

PROBLEM = {"$ref": "#/components/responses/Problem"}
PROBLEM_CONTENT = {
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
}
Access = Literal["admin", "caller", "open"]

SESSION_ID = r"^rs_[A-Za-z0-9_-]{32}$"
CURSOR = r"^[0-9]{1,18}$"

VERDICT: dict[str, Any] = {
    "type": "object",
    "required": ["ok", "records"],
    "properties": {
        "ok": {"type": "boolean"},
        "records": {
            "type": "integer",
            "minimum": 0,
            "description": "records verified before the first bad one",
        },
        "first_bad_seq": {"type": ["integer", "null"]},
        "problem": {
            "enum": [
                "missing_record",
                "reordered",
                "broken_link",
                "changed_content",
                "bad_signature",
                "unknown_key",
                "unsigned_record",
                "witness_mismatch",
                "truncated",
                "forged_checkpoint",
                "malformed_record",
                "malformed_checkpoint",
                "unreadable_witness",
            ]
        },
        "reason": {"type": "string"},
        "signed": {"type": "boolean", "description": "present when public keys are configured"},
        "unsigned_records": {
            "type": "integer",
            "description": "records from before signing was turned on",
        },
        "checkpoints": {"type": "integer", "description": "witness checkpoints checked"},
    },
}


@dataclass(frozen=True)
class Op:
    """One operation: what it does, who may call it, what it takes and what it answers."""

    method: str
    path: str
    summary: str
    ok: str = "200"
    ok_schema: dict[str, Any] | None = None
    body: str | None = None
    params: tuple[dict[str, Any], ...] = ()
    errors: tuple[str, ...] = ()
    access: Access = "admin"
    tag: str = "management"
    ok_content: str = "application/json"
    also_ok: tuple[str, ...] = ()  # other success statuses with the same body

    def document(self) -> dict[str, Any]:
        operation: dict[str, Any] = {
            "summary": self.summary,
            "tags": [self.tag],
            "operationId": f"{self.method}{self.path}",
            "responses": {},
        }
        if self.body:
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{self.body}"}}
                },
            }
        if self.params:
            operation["parameters"] = list(self.params)
        responses = operation["responses"]
        responses[self.ok] = (
            {"description": "done"}
            if self.ok == "204"
            else {
                "description": "done",
                "content": {self.ok_content: {"schema": self.ok_schema or {"type": "object"}}},
            }
        )
        for status in self.also_ok:
            responses[status] = responses[self.ok]
        implied = [
            *(["400"] if self.body or self.params else []),
            *(["401"] if self.access != "open" else []),
            *(["403"] if self.access == "admin" else []),
            *(["413"] if self.body else []),
        ]
        for status in sorted({*implied, *self.errors}):
            responses.setdefault(status, PROBLEM)
        if self.access == "open":
            operation["security"] = []  # no identity needed
        return operation


def path_param(
    name: str, description: str, pattern: str, max_length: int | None = None
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "pattern": pattern}
    if max_length is not None:
        schema["maxLength"] = max_length
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def query_param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


def _list(member: str, item: dict[str, Any]) -> dict[str, Any]:
    return _obj({member: {"type": "array", "items": item}})


STRING = {"type": "string"}
TIME = {"type": "string", "format": "date-time"}
NULLABLE_STRING = {"type": ["string", "null"]}
GROUP = _obj(
    {"id": STRING, "name": STRING, "members": {"type": "array", "items": STRING}},
    {"updated_at": TIME, "source": {"enum": ["api", "scim"]}},
)
INTERVAL = _obj(
    {"start": TIME, "end": {"type": ["string", "null"], "format": "date-time"}},
    {"started_by": STRING, "ended_by": NULLABLE_STRING},
)
PRIVACY_GROUP = _obj(
    {"group": STRING, "private": {"type": "boolean"}},
    {"intervals": {"type": "array", "items": INTERVAL}, "start": TIME},
)
ADMIN = _obj(
    {"principal": STRING},
    {
        "source": {"enum": ["config", "registry"]},
        "added_at": {"type": ["string", "null"]},
        "added_by": NULLABLE_STRING,
    },
)
VIEWER = _obj({"principal": STRING}, {"granted_at": TIME, "granted_by": STRING})
RECORD = _obj(
    {
        "seq": {"type": "integer"},
        "ts": STRING,
        "action": STRING,
        "actor": STRING,
        "details": {"type": "object"},
        "prev_hash": STRING,
        "hash": STRING,
    }
)


def operations(require_justification: bool) -> list[Op]:
    """Every operation of the management API, the health endpoints and this document."""
    gid = (path_param("gid", "group id", schemas.GROUP_ID),)
    principal = (
        path_param(
            "principal",
            "a principal (UPN or e-mail; compared after NFC and "
            "case folding; no whitespace nor control characters)",
            principal_rules.PATTERN,
            principal_rules.MAX_LENGTH,
        ),
    )
    sid = (path_param("sid", "reveal session id", SESSION_ID),)
    return [
        Op(
            "get",
            "/healthz",
            "The process is up",
            access="open",
            tag="operations",
            ok_schema=_obj({"status": {"const": "ok"}}),
        ),
        Op(
            "get",
            "/readyz",
            "Store, engine and governance storage are reachable",
            access="open",
            tag="operations",
            ok_schema=_obj({"status": STRING, "checks": {"type": "object"}}),
        ),
        Op(
            "get",
            "/metrics",
            "Prometheus metrics",
            access="open",
            tag="operations",
            ok_content="text/plain",
            ok_schema=STRING,
        ),
        Op(
            "get",
            "/veil/v1/openapi.json",
            "This document",
            access="open",
            ok_schema=_obj({"openapi": STRING, "paths": {"type": "object"}}),
        ),
        Op(
            "get",
            "/veil/v1/groups",
            "List groups, each with its members and source (api or "
            "scim); admins only: members of private groups are private facts",
            ok_schema=_list("groups", GROUP),
        ),
        Op(
            "put",
            "/veil/v1/groups/{gid}",
            "Import or replace a group (201 when created)",
            body="Group",
            params=gid,
            errors=("409",),
            also_ok=("201",),
            ok_schema=GROUP,
        ),
        Op(
            "delete",
            "/veil/v1/groups/{gid}",
            "Delete a group that was never private",
            "204",
            params=gid,
            errors=("404", "409"),
        ),
        Op(
            "get",
            "/veil/v1/privacy-groups",
            "List privacy groups with their intervals (admins only)",
            ok_schema=_list("privacy_groups", PRIVACY_GROUP),
        ),
        Op(
            "post",
            "/veil/v1/privacy-groups",
            "Make a group private from now on",
            "201",
            body="PrivacyGroupRequest",
            errors=("409", "422"),
            ok_schema=PRIVACY_GROUP,
        ),
        Op(
            "delete",
            "/veil/v1/privacy-groups/{gid}",
            "End a group's current privacy interval",
            "204",
            params=gid,
            errors=("404",),
        ),
        Op("get", "/veil/v1/admins", "List admins", ok_schema=_list("admins", ADMIN)),
        Op(
            "post",
            "/veil/v1/admins",
            "Add an admin",
            "201",
            body="PrincipalRequest",
            errors=("409",),
            ok_schema=_obj({"principal": STRING}),
        ),
        Op(
            "delete",
            "/veil/v1/admins/{principal}",
            "Remove an admin; ends their permission "
            "and reveal sessions. The last admin stays when no bootstrap admin is configured "
            "(409).",
            "204",
            params=principal,
            errors=("404", "409"),
        ),
        Op(
            "get",
            "/veil/v1/private-viewers",
            "List holders of the view-private permission",
            ok_schema=_list("private_viewers", VIEWER),
        ),
        Op(
            "post",
            "/veil/v1/private-viewers",
            "Grant the view-private permission to an admin "
            "(422 for a non-admin); another admin grants it, never the holder (403)",
            "201",
            body="PrincipalRequest",
            errors=("409", "422"),
            ok_schema=_obj({"principal": STRING}),
        ),
        Op(
            "delete",
            "/veil/v1/private-viewers/{principal}",
            "Revoke the permission; ends the holder's reveal sessions",
            "204",
            params=principal,
            errors=("404",),
        ),
        Op(
            "post",
            "/veil/v1/reveal-sessions",
            "Open an audited reveal session"
            + (" (a justification is required)" if require_justification else ""),
            "201",
            body="RevealSessionRequest" + ("Justified" if require_justification else ""),
            access="caller",
            tag="reveal",
            errors=("403",),
            ok_schema=_obj(
                {"id": {"type": "string", "pattern": SESSION_ID}, "expires_at": TIME},
                {"owner": STRING},
            ),
        ),
        Op(
            "delete",
            "/veil/v1/reveal-sessions/{sid}",
            "End a reveal session (its owner or an admin)",
            "204",
            params=sid,
            access="caller",
            tag="reveal",
            errors=("404", "409"),
        ),
        Op(
            "get",
            "/veil/v1/governance-log",
            "Read the governance log, oldest first",
            tag="governance",
            ok_schema=_obj(
                {"records": {"type": "array", "items": RECORD}, "next_cursor": NULLABLE_STRING}
            ),
            params=(
                query_param("since", "records at or after this time (RFC 3339)", TIME),
                query_param("until", "records before this time (RFC 3339)", TIME),
                query_param("action", "only this action", STRING),
                query_param("actor", "only this actor", schemas.PRINCIPAL),
                query_param(
                    "cursor",
                    "next_cursor of the previous page",
                    {"type": "string", "pattern": CURSOR},
                ),
                query_param(
                    "limit",
                    "records per page (1-1000, default 100)",
                    {"type": "integer", "minimum": 1, "maximum": 1000},
                ),
            ),
        ),
        Op(
            "get",
            "/veil/v1/governance-log/verify",
            "Verify the hash chain, its signatures and "
            "the witness; ok is false with the first bad record and a reason when the log was "
            "changed",
            tag="governance",
            ok_schema=VERDICT,
        ),
        Op(
            "post",
            "/veil/v1/policy/reload",
            "Check, test and load the policy directory (hot "
            "reload); a refused set (422, with the problems) leaves the running policy serving",
            errors=("422",),
            tag="policy",
            ok_schema=_obj(
                {
                    "outcome": {"enum": ["accepted", "unchanged"]},
                    "trigger": STRING,
                    "at": TIME,
                    "reason": STRING,
                },
                {"digest": NULLABLE_STRING},
            ),
        ),
    ]


def document(routes: tuple[str, ...], require_justification: bool = True) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for op in operations(require_justification):
        paths.setdefault(op.path, {})[op.method] = op.document()
    paths["/readyz"]["get"]["responses"]["503"] = {
        "description": "not ready: which check failed",
        "content": {
            "application/json": {"schema": _obj({"status": STRING, "checks": {"type": "object"}})}
        },
    }
    reveal_header = {
        "name": "Veil-Reveal-Session",
        "in": "header",
        "required": False,
        "description": "a reveal session id: include private rows (audited)",
        "schema": {"type": "string"},
    }
    for route in routes:
        paths[route] = {
            "get": {
                "summary": "Activity query, forwarded to the store and filtered by policy",
                "operationId": f"get{route}",
                "tags": ["activities"],
                "parameters": [reveal_header],
                "responses": {
                    **{
                        status: {
                            "description": "the store's success status, and its answer "
                            "rebuilt: the rows array without private rows "
                            "(with them, audited, for a reveal) and the "
                            "members named in upstream.keep; nothing else "
                            "the store wrote",
                            "content": {"application/json": {"schema": {}}},
                        }
                        for status in ("200", "2XX")
                    },
                    **{status: PROBLEM for status in ("401", "403", "413", "503")},
                    "502": {
                        **PROBLEM_CONTENT,
                        "description": "the store is unreachable, its body is not the "
                        "configured shape "
                        "(upstream_bad_body, upstream_no_rows), or it answered other than 2xx "
                        "(upstream_status; the member store_status names its status, and its "
                        "body is dropped)",
                    },
                    "504": {
                        **PROBLEM_CONTENT,
                        "description": "the whole answer did not arrive within upstream.timeout_s",
                    },
                },
            }
        }
    from veil.scim import PREFIX
    from veil.scim.discovery import openapi_paths

    paths.update(openapi_paths(PREFIX))  # own bearer token: scimBearer, SCIM error bodies
    bodies = dict(schemas.BODIES)
    justified = dict(schemas.REVEAL_SESSION_BODY)
    justified["required"] = [*justified["required"], "justification"]
    bodies["RevealSessionRequestJustified"] = justified
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Veil",
            "version": __version__,
            "description": "Policy-as-code privacy sidecar for activity logs",
        },
        "components": {
            "schemas": {
                **bodies,
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail", "code"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "code": {"type": "string"},
                        "field": {"type": "string"},
                        "store_status": {
                            "type": "integer",
                            "description": "upstream_status: the status the store answered",
                        },
                    },
                },
                "ScimError": {
                    "type": "object",
                    "required": ["schemas", "status"],
                    "properties": {
                        "schemas": {"type": "array", "items": {"type": "string"}},
                        "status": {"type": "string"},
                        "scimType": {"type": "string"},
                        "detail": {"type": "string"},
                    },
                },
            },
            "responses": {
                "Problem": {
                    "description": "an RFC 9457 problem",
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    },
                },
                "ScimError": {
                    "description": "a SCIM error (RFC 7644 §3.12)",
                    "content": {
                        "application/scim+json": {
                            "schema": {"$ref": "#/components/schemas/ScimError"}
                        }
                    },
                },
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "scimBearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the SCIM token (scim.token_env)",
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


@blueprint.get("/veil/v1/openapi.json")
def openapi_json() -> Response:
    config = services().config
    return jsonify(document(config.upstream.routes, config.reveal.require_justification))
