"""Veil's exception tree and its RFC 9457 rendering.

VeilError                      500 internal_error
├── ConfigError                (start-up only; carries the key's path)
├── BadRequest                 400 bad_request
│   └── InvalidBody            400 invalid_body
├── Unauthenticated            401 unauthenticated
├── Forbidden                  403 forbidden
│   └── RevealRefused          403 reveal_refused
├── NotFound                   404 not_found
├── Conflict                   409 conflict
├── PreconditionFailed         412 precondition_failed
├── Unprocessable              422 unprocessable
├── UpstreamError              502 upstream_error
│   ├── UpstreamUnavailable    502 upstream_unavailable
│   ├── UpstreamBadBody        502 upstream_bad_body
│   │   └── UpstreamNoRows     502 upstream_no_rows (valid JSON, no rows array)
│   ├── UpstreamStatus         502 upstream_status (the store did not answer 2xx)
│   └── UpstreamTimeout        504 upstream_timeout
├── PolicyError                503 policy_unavailable
├── StateChanged               503 state_changed (kept changing while a reveal was decided)
└── StorageError               503 storage_unavailable
    └── GovernanceWriteFailed  503 governance_write_failed
"""

from __future__ import annotations

from typing import Any, ClassVar

from flask import Response, json


class VeilError(Exception):
    """Base of every error Veil raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def to_response(self) -> Response:
        return problem(self.status, self.title, self.detail, self.code, **self.extra)


class ConfigError(VeilError):
    code = "config_error"
    title = "Invalid configuration"


class BadRequest(VeilError):
    status = 400
    code = "bad_request"
    title = "Bad request"


class InvalidBody(BadRequest):
    code = "invalid_body"
    title = "Invalid request body"


class Unauthenticated(VeilError):
    status = 401
    code = "unauthenticated"
    title = "Authentication required"


class Forbidden(VeilError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class RevealRefused(Forbidden):
    code = "reveal_refused"
    title = "Reveal refused"


class NotFound(VeilError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(VeilError):
    status = 409
    code = "conflict"
    title = "Conflict"


class PreconditionFailed(VeilError):
    status = 412
    code = "precondition_failed"
    title = "Precondition failed"


class Unprocessable(VeilError):
    status = 422
    code = "unprocessable"
    title = "Unprocessable request"


class UpstreamError(VeilError):
    status = 502
    code = "upstream_error"
    title = "Bad answer from the activity store"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"
    title = "Activity store unavailable"


class UpstreamBadBody(UpstreamError):
    code = "upstream_bad_body"
    title = "Activity store answered with an unexpected body"


class UpstreamNoRows(UpstreamBadBody):
    """Well-formed JSON without the rows array."""

    code = "upstream_no_rows"


class UpstreamStatus(UpstreamError):
    """The store answered with a status other than 2xx: its body is dropped, never passed on
    (it may hold rows, R9); ``store_status`` names the status it answered."""

    code = "upstream_status"
    title = "Activity store did not answer with success"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    title = "Activity store timed out"


class PolicyError(VeilError):
    status = 503
    code = "policy_unavailable"
    title = "Policy engine unavailable"


class StateChanged(VeilError):
    """The management state changed between a reveal's decision and its record (R11)."""

    status = 503
    code = "state_changed"
    title = "Management state changed during the reveal"


class StorageError(VeilError):
    status = 503
    code = "storage_unavailable"
    title = "Storage unavailable"


class GovernanceWriteFailed(StorageError):
    code = "governance_write_failed"
    title = "Governance record could not be written"


def problem(status: int, title: str, detail: str, code: str, **extra: Any) -> Response:
    """An RFC 9457 problem+json response; ``code`` is an extension member."""
    body = {
        "type": f"urn:veil:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    return Response(json.dumps(body), status=status, mimetype="application/problem+json")
