"""Principals (UPNs, e-mails): the one place where a name becomes the key Veil compares.

SPEC "Principal": compared after Unicode NFC normalization and case folding; a name holding
whitespace or a control, format or unassigned character is refused, never trimmed into
someone else (``"alice@contoso.com\\u3000"`` is not alice). Every way a principal enters
(identity, request bodies and paths, group members, the admin registry, the view-private
permission, the configuration, row actors) goes through ``normalize`` or ``key``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from veil.errors import InvalidBody

MAX_LENGTH = 320


class InvalidPrincipal(InvalidBody):
    """A principal that cannot be compared with certainty (400 in a body, 401 from identity)."""

    code = "invalid_principal"
    title = "Invalid principal"


def problem(value: str) -> str | None:
    """Why ``value`` is not a principal, or None when it is one."""
    if not value:
        return "it is empty"
    if len(value) > MAX_LENGTH:
        return f"it is longer than {MAX_LENGTH} characters"
    # str.isprintable is False for every character of the categories "Other" (control,
    # format, surrogate, private use, unassigned) and "Separator" except the ASCII space.
    if not value.isprintable() or " " in value:
        bad = next(c for c in value if not c.isprintable() or c == " ")
        return (f"it contains U+{ord(bad):04X} ({unicodedata.name(bad, 'unnamed')}); "
                "whitespace and control characters are not allowed")
    return None


def key(value: str) -> str | None:
    """The comparison key of ``value`` (NFC, case-folded), or None when it is not a principal."""
    if value.isascii():
        # ASCII: NFC changes nothing and case folding is lowercasing (the hot path for rows).
        return value.lower() if value and value.isprintable() and " " not in value and len(
            value) <= MAX_LENGTH else None
    if problem(value) is not None:
        return None
    return fold(value)


def fold(value: str) -> str:
    """NFC normalization and case folding, without any check (for labels such as actor types)."""
    if value.isascii():
        return value.lower()
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", value).casefold())


def normalize(value: str, field: str = "principal") -> str:
    """The comparison key of ``value``; raise InvalidPrincipal naming ``field`` if there is none."""
    normalized = key(value)
    if normalized is None:
        raise InvalidPrincipal(f"field {field!r}: {value!r} is not a valid principal: "
                               f"{problem(value)}", field=field)
    return normalized


def normalize_all(values: Iterable[str], field: str) -> list[str]:
    """Each of ``values`` normalized; the first bad one is refused naming ``field.<index>``."""
    return [normalize(value, f"{field}.{index}") for index, value in enumerate(values)]
