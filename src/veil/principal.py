"""Principals (UPNs, e-mails): the one place where a name becomes the key Veil compares.

docs/rules.md, "Principal": compared after Unicode NFC normalization and case folding; a
name holding whitespace or a control or format character is refused, never trimmed into someone
else (``"alice@contoso.com\\u3000"`` is not alice). Every way a principal enters
(identity, request bodies and paths, group members, the admin registry, the view-private
permission, the configuration, row actors) goes through ``normalize`` or ``key``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from veil.errors import InvalidBody

MAX_LENGTH = 320


class InvalidPrincipal(InvalidBody):
    """A principal that cannot be compared with certainty (400 in a body, 401 from identity)."""

    code = "invalid_principal"
    title = "Invalid principal"


# Whitespace and invisible controls: Unicode categories Cc, Cf, Zs, Zl and Zp (Unicode 14,
# plus the format controls Unicode 15 added at U+13439-U+1343F). A test checks that every
# such character of the running Python is here. Code points above U+FFFF are written as
# themselves, so the same class reads alike in Python, ECMA-262 and Rust regex engines.
_HIDDEN_RANGES = (
    (0x0000, 0x0020),
    (0x007F, 0x00A0),
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x1680, 0x1680),
    (0x180E, 0x180E),
    (0x2000, 0x200F),
    (0x2028, 0x202F),
    (0x205F, 0x2064),
    (0x2066, 0x206F),
    (0x3000, 0x3000),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
)


def _spell(code: int) -> str:
    return f"\\u{code:04X}" if code <= 0xFFFF else chr(code)


HIDDEN_CLASS = "".join(
    _spell(a) if a == b else f"{_spell(a)}-{_spell(b)}" for a, b in _HIDDEN_RANGES
)
# The JSON Schema pattern of a principal (request bodies, path parameters, OpenAPI).
PATTERN = f"^[^{HIDDEN_CLASS}]+$"
_HIDDEN = re.compile(f"[{HIDDEN_CLASS}\\ud800-\\udfff]")


def problem(value: str) -> str | None:
    """Why ``value`` is not a principal, or None when it is one."""
    if not value:
        return "it is empty"
    if len(value) > MAX_LENGTH:
        return f"it is longer than {MAX_LENGTH} characters"
    bad = _HIDDEN.search(value)
    if bad is not None:
        char = bad.group()
        return (
            f"it contains U+{ord(char):04X} ({unicodedata.name(char, 'a control')}); "
            "whitespace and control characters are not allowed"
        )
    return None


def key(value: str) -> str | None:
    """The comparison key of ``value`` (NFC, case-folded), or None when it is not a principal."""
    if value.isascii():
        # ASCII: NFC changes nothing and case folding is lowercasing (the hot path for rows).
        return (
            value.lower()
            if value and value.isprintable() and " " not in value and len(value) <= MAX_LENGTH
            else None
        )
    if problem(value) is not None:
        return None
    return fold(value)


def visible(text: str) -> bool:
    """Whether ``text`` holds a character that is neither whitespace nor an invisible control."""
    return any(_HIDDEN.fullmatch(c) is None for c in text)


def fold(value: str) -> str:
    """NFC normalization and case folding, without any check (for labels such as actor types)."""
    if value.isascii():
        return value.lower()
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", value).casefold())


def normalize(value: str, field: str = "principal") -> str:
    """The comparison key of ``value``; raise InvalidPrincipal naming ``field`` if there is none."""
    normalized = key(value)
    if normalized is None:
        raise InvalidPrincipal(
            f"field {field!r}: {value!r} is not a valid principal: {problem(value)}", field=field
        )
    return normalized


def normalize_all(values: Iterable[str], field: str) -> list[str]:
    """Each of ``values`` normalized; the first bad one is refused naming ``field.<index>``."""
    return [normalize(value, f"{field}.{index}") for index, value in enumerate(values)]
