"""JSON Schemas of request bodies, and the validation that names the bad field."""

from __future__ import annotations

from typing import Any

import jsonschema

GROUP_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
PRINCIPAL = {"type": "string", "minLength": 1, "maxLength": 320, "pattern": r"^\S+$"}

GROUP_BODY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "members"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 256},
        "members": {"type": "array", "maxItems": 1_000_000, "items": PRINCIPAL},
    },
}

PRIVACY_GROUP_BODY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["group"],
    "properties": {"group": {"type": "string", "pattern": GROUP_ID}},
}

PRINCIPAL_BODY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["principal"],
    "properties": {"principal": PRINCIPAL},
}

REVEAL_SESSION_BODY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["acknowledge_audit"],
    "properties": {
        "acknowledge_audit": {"const": True},
        "justification": {"type": "string", "minLength": 1, "maxLength": 2000},
    },
}

BODIES = {
    "Group": GROUP_BODY,
    "PrivacyGroupRequest": PRIVACY_GROUP_BODY,
    "PrincipalRequest": PRINCIPAL_BODY,
    "RevealSessionRequest": REVEAL_SESSION_BODY,
}


def body_error(schema: dict[str, Any], document: Any) -> tuple[str, str] | None:
    """``(field, message)`` for the first problem in ``document``, or None when it is valid."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: (len(e.absolute_path),
                                                                    list(map(str, e.path))))
    if not errors:
        return None
    error = errors[0]
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in allowed)
        field = ".".join([*parts, unknown[0]])
        return field, f"unknown field {field!r}"
    if error.validator == "required":
        missing = error.message.split("'")[1]
        field = ".".join([*parts, missing])
        return field, f"field {field!r} is required"
    field = ".".join(parts) or "(body)"
    if error.validator == "const" and parts == ["acknowledge_audit"]:
        return field, "'acknowledge_audit' must be true: reveals are audited, acknowledge it"
    return field, f"field {field!r}: {error.message}"
