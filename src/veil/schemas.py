"""JSON Schemas of request bodies, and the validation that names the bad field."""

from __future__ import annotations

import re
from typing import Any

import jsonschema

from veil import principal, schema_errors
from veil.errors import InvalidBody

GROUP_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# A principal: no whitespace nor control character (docs/rules.md, "Principal"; veil.principal).
PRINCIPAL: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": principal.MAX_LENGTH,
    "pattern": principal.PATTERN,
}
# Control characters a justification may not hold (tab, newline and carriage return it may).
_CONTROL = "\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F"
# A justification says something: at least one visible character, and no control character.
JUSTIFICATION: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 2000,
    "pattern": f"^[^{_CONTROL}]*[^{principal.HIDDEN_CLASS}][^{_CONTROL}]*$",
}
_CONTROLS = re.compile(f"[{_CONTROL}]")

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
    "properties": {
        "group": {"type": "string", "pattern": GROUP_ID, "examples": ["external", "application"]}
    },
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
        "justification": JUSTIFICATION,
    },
}

# Bodies are small documents: anything deeper is refused before it is validated.
MAX_DEPTH = 32

_PATTERN_HINTS = {
    principal.PATTERN: "a principal (UPN or e-mail) may not hold whitespace or control "
    "characters; it is refused, never trimmed",
    JUSTIFICATION["pattern"]: "a justification must hold visible text and no control "
    "character: say why you need to see private activities",
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
    errors = sorted(
        validator.iter_errors(document),
        key=lambda e: (len(e.absolute_path), list(map(str, e.path))),
    )
    if not errors:
        return None
    found = schema_errors.locate(errors[0])
    field = found.dotted("(body)")
    if found.kind == "unknown":
        return field, f"unknown field {field!r}"
    if found.kind == "missing":
        return field, f"field {field!r} is required"
    error = found.error
    if error.validator == "pattern":
        hint = _PATTERN_HINTS.get(error.validator_value, f"must match {error.validator_value}")
        return field, f"field {field!r}: {hint}"
    if error.validator == "const" and found.path == ("acknowledge_audit",):
        return field, "'acknowledge_audit' must be true: reveals are audited, acknowledge it"
    return field, f"field {field!r}: {error.message}"


def unrepresentable(document: Any) -> tuple[str, str] | None:
    """``(field, message)`` for the first string Veil cannot store (a lone surrogate), or a
    document nested deeper than MAX_DEPTH; None when the document is fine."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(document, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_DEPTH:
            return ".".join(path[:3]) + "...", f"the body is nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, str):
            if _has_surrogate(value):
                field = ".".join(path) or "(body)"
                return field, (
                    f"field {field!r} holds a lone surrogate (an unpaired \\ud800-"
                    "\\udfff escape); send valid Unicode text"
                )
        elif isinstance(value, dict):
            for key, item in value.items():
                if _has_surrogate(key):
                    return ".".join(path) or "(body)", "a member name holds a lone surrogate"
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, str(i))) for i, item in enumerate(value))
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_justification(text: str | None) -> None:
    """Raise InvalidBody unless ``text`` says something: at least one visible character
    (``"\\u200b"`` alone is not a justification) and no control character but tab and
    newline. The same rule as the JSON Schema's pattern, for when the field is required."""
    if text is None or not principal.visible(text):
        raise InvalidBody(
            "field 'justification' is required and must hold visible text: say "
            "why you need to see private activities",
            field="justification",
        )
    bad = _CONTROLS.search(text)
    if bad is not None:
        raise InvalidBody(
            f"field 'justification' holds the control character U+{ord(bad.group()):04X}",
            field="justification",
        )
