"""Reading the store's answer: find the rows array, normalize each row, and drop hidden rows.

The rows are located with a single pass of the standard library's C JSON scanner that also
records where each row starts and ends in the body, so the rows that are kept go back to the
caller byte-for-byte as the store sent them, and nothing outside the rows array changes.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from veil import principal
from veil.config import FieldPointers
from veil.errors import UpstreamBadBody, UpstreamNoRows

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_scan_string = json.decoder.scanstring  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Answer:
    """A parsed store answer: the rows, and where each sits in the body's text."""

    text: str
    rows: list[Any]
    spans: list[tuple[int, int]]
    array_start: int  # index of "["
    array_end: int  # index just past "]"


def pointer_tokens(pointer: str) -> tuple[str, ...]:
    """Split an RFC 6901 JSON pointer into its unescaped reference tokens."""
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise ValueError(f"JSON pointer {pointer!r} must start with '/'")
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/"))


def resolve(document: Any, tokens: Sequence[str]) -> Any:
    """The value at a pointer's tokens, or None when it is absent."""
    for token in tokens:
        if isinstance(document, dict):
            document = document.get(token)
        elif isinstance(document, list) and token.isdigit():
            index = int(token)
            document = document[index] if index < len(document) else None
        else:
            return None
        if document is None:
            return None
    return document


def parse_answer(body: bytes, rows_pointer: tuple[str, ...]) -> Answer:
    """Parse the store's body; raise UpstreamBadBody unless the pointer names a JSON array."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UpstreamBadBody("the store's answer is not UTF-8 JSON") from exc
    try:
        start = _skip(text, 0)
        end, found = _scan(text, start, rows_pointer)
        if _skip(text, end) != len(text):
            raise UpstreamBadBody("the store's answer has trailing data after the JSON document")
    except (StopIteration, IndexError, ValueError) as exc:
        raise UpstreamBadBody("the store's answer is not valid JSON") from exc
    if found is None:
        where = "/" + "/".join(rows_pointer)
        raise UpstreamNoRows(f"the store's answer has no rows array at {where!r}")
    return found


def render(answer: Answer, hidden: Iterable[int]) -> str:
    """The body without the hidden rows; kept rows and everything around them are unchanged."""
    drop = set(hidden)
    text = answer.text
    kept = [text[s:e] for i, (s, e) in enumerate(answer.spans) if i not in drop]
    return text[: answer.array_start + 1] + ",".join(kept) + text[answer.array_end - 1 :]


def rows_with_repeated_keys(answer: Answer, pointers: Iterable[tuple[str, ...]],
                            everywhere: bool) -> set[int]:
    """Rows that a JSON reader keeping the *first* of two equal keys would read differently.

    Python keeps the last; such a row must not be judged on one reading and shown for the
    other. The configured fields' member names are counted over the whole rows array at C
    speed: when each top-level field name appears exactly as often as rows carry it, no row
    repeats it. Otherwise, or for nested fields, or when a policy reads the raw rows
    (``everywhere``: any repeated key counts), rows are parsed again one by one.
    """
    text, rows = answer.text, answer.rows
    suspects: list[tuple[str, re.Pattern[str]]] = []
    top = sorted({tokens[0] for tokens in pointers if len(tokens) == 1})
    if top:
        names = re.compile("|".join(re.escape(json.dumps(key)) for key in top)
                           + r"(?=[ \t\n\r]*:)")
        named = Counter(names.findall(text, answer.array_start, answer.array_end))
        carried = Counter(key for row in rows if type(row) is dict for key in top if key in row)
        for key in top:
            quoted = json.dumps(key)
            if named[quoted] != carried[key]:
                suspects.append((quoted, re.compile(re.escape(quoted) + r"[ \t\n\r]*:")))
    for tokens in pointers:
        if len(tokens) > 1:
            quoted = json.dumps(tokens[-1])
            suspects.append((quoted, re.compile(re.escape(quoted) + r"[ \t\n\r]*:")))
    found: set[int] = set()
    if not suspects and not everywhere:
        return found
    for index, (start, end) in enumerate(answer.spans):
        suspect = everywhere or any(
            text.count(quoted, start, end) > 1 and len(as_key.findall(text, start, end)) > 1
            for quoted, as_key in suspects)
        if suspect and _repeats_a_key(text[start:end]):
            found.add(index)
    return found


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _RepeatedKey
    return dict(pairs)


class _RepeatedKey(Exception):
    pass


def _repeats_a_key(row_text: str) -> bool:
    try:
        json.loads(row_text, object_pairs_hook=_refuse_repeats)
    except _RepeatedKey:
        return True
    return False


def _skip(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    return match.end() if match else pos


def _scan(text: str, pos: int, tokens: tuple[str, ...]) -> tuple[int, Answer | None]:
    """Scan one JSON value at ``pos``; descend along ``tokens`` to find the rows array."""
    if not tokens:
        if text[pos] != "[":
            _, end = _scan_once(text, pos)
            return end, None
        return _scan_rows(text, pos)
    char = text[pos]
    if char == "{":
        return _scan_object(text, pos, tokens)
    if char == "[" and tokens[0].isdigit():
        return _scan_array(text, pos, tokens)
    _, end = _scan_once(text, pos)
    return end, None


def _scan_object(text: str, pos: int, tokens: tuple[str, ...]) -> tuple[int, Answer | None]:
    found: Answer | None = None
    seen = False
    pos = _skip(text, pos + 1)
    if text[pos] == "}":
        return pos + 1, None
    while True:
        if text[pos] != '"':
            raise ValueError("expected a member name")
        key, pos = _scan_string(text, pos + 1, True)
        pos = _skip(text, pos)
        if text[pos] != ":":
            raise ValueError("expected ':'")
        pos = _skip(text, pos + 1)
        if key == tokens[0]:
            if seen:
                raise UpstreamBadBody(f"the store's answer repeats the member {key!r}")
            seen = True
            pos, found = _scan(text, pos, tokens[1:])
        else:
            _, pos = _scan_once(text, pos)
        pos = _skip(text, pos)
        if text[pos] == "}":
            return pos + 1, found
        if text[pos] != ",":
            raise ValueError("expected ',' or '}'")
        pos = _skip(text, pos + 1)


def _scan_array(text: str, pos: int, tokens: tuple[str, ...]) -> tuple[int, Answer | None]:
    found: Answer | None = None
    wanted = int(tokens[0])
    index = 0
    pos = _skip(text, pos + 1)
    if text[pos] == "]":
        return pos + 1, None
    while True:
        if index == wanted:
            pos, found = _scan(text, pos, tokens[1:])
        else:
            _, pos = _scan_once(text, pos)
        index += 1
        pos = _skip(text, pos)
        if text[pos] == "]":
            return pos + 1, found
        if text[pos] != ",":
            raise ValueError("expected ',' or ']'")
        pos = _skip(text, pos + 1)


def _scan_rows(text: str, start: int) -> tuple[int, Answer]:
    """Decode each row with the C scanner and remember where it starts and ends."""
    rows: list[Any] = []
    spans: list[tuple[int, int]] = []
    append_row, append_span = rows.append, spans.append
    scan, skip, blank = _scan_once, _skip, " \t\n\r"
    pos = skip(text, start + 1)
    if text[pos] != "]":
        while True:
            value, end = scan(text, pos)
            append_row(value)
            append_span((pos, end))
            pos = skip(text, end) if text[end] in blank else end
            char = text[pos]
            if char == "]":
                break
            if char != ",":
                raise ValueError("expected ',' or ']'")
            pos += 1
            if text[pos] in blank:
                pos = skip(text, pos)
    return pos + 1, Answer(text, rows, spans, start, pos + 1)


# ---- normalization ------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def getter(pointer: str) -> Callable[[Any], Any]:
    """A fast reader for one JSON pointer (a plain ``dict.get`` for one-level pointers)."""
    tokens = pointer_tokens(pointer)
    if len(tokens) == 1:
        key = tokens[0]
        return lambda row: row.get(key) if type(row) is dict else None
    return lambda row: resolve(row, tokens)


class Normalizer:
    """Reads each row's id, actor, actor type and timestamp through the configured pointers."""

    def __init__(self, fields: FieldPointers, application_values: frozenset[str]) -> None:
        self.application_values = frozenset(principal.fold(v) for v in application_values)
        self._id = getter(fields.id)
        self._actor = getter(fields.actor)
        self._type = getter(fields.actor_type)
        self._ts = getter(fields.timestamp)
        self._pointers = tuple(pointer_tokens(p) for p in (fields.actor, fields.actor_type,
                                                           fields.timestamp))
        tokens = [pointer_tokens(p) for p in (fields.id, fields.actor, fields.actor_type,
                                              fields.timestamp)]
        self._flat = (tuple(t[0] for t in tokens) if all(len(t) == 1 for t in tokens)
                      else None)

    @property
    def pointers(self) -> tuple[tuple[str, ...], ...]:
        """The pointers (as tokens) of the fields privacy depends on: actor, type and time."""
        return self._pointers

    def rows(self, rows: Sequence[Any], include_raw: bool,
             unreadable: frozenset[int] | set[int] = frozenset()) -> list[dict[str, Any]]:
        """The rows as the policy sees them; rows in ``unreadable`` get no actor nor time."""
        get_id, get_actor, get_type, get_ts = self._id, self._actor, self._type, self._ts
        apps = self.application_values
        flat = self._flat  # every field one level down: read the dict directly (hot loop)
        out = []
        for index, raw in enumerate(rows):
            if flat is not None:
                row_id, actor, kind, ts = ((raw.get(flat[0]), raw.get(flat[1]),
                                            raw.get(flat[2]), raw.get(flat[3]))
                                           if type(raw) is dict else (None, None, None, None))
            else:
                row_id, actor, kind, ts = get_id(raw), get_actor(raw), get_type(raw), get_ts(raw)
            actor = principal.key(actor) if type(actor) is str else None
            row = {
                "index": index,
                "id": row_id if type(row_id) in (str, int) else None,
                "actor": actor,
                "actor_type": ("application" if type(kind) is str and principal.fold(kind) in apps
                               else "user"),
                "ts_ns": timestamp_ns(ts),
            }
            if include_raw:
                row["raw"] = raw
            out.append(row)
        for index in unreadable:
            out[index]["actor"] = out[index]["ts_ns"] = None  # private (R2)
        return out


# Instants Veil can compare: a signed 64-bit count of nanoseconds, below the end of an open
# privacy interval (2**63 - 1, in 2262). Anything outside is unreadable, so private (R2).
MIN_NS, MAX_NS = -(2**63), 2**63 - 1


def timestamp_ns(value: Any) -> int | None:
    """Nanoseconds since the epoch from RFC 3339 text or epoch milliseconds; None if unreadable."""
    ns = _timestamp_ns(value)
    return ns if ns is not None and MIN_NS <= ns < MAX_NS else None


def _timestamp_ns(value: Any) -> int | None:
    if type(value) is str:
        if len(value) < 20 or value[10] not in "Tt ":
            return None
        if value[10] == "t" or value[-1] == "z":
            value = value.upper()  # RFC 3339 allows "t" and "z"
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        if moment.tzinfo is None:
            return None  # without an offset the instant is ambiguous: unreadable, private (R2)
        ns: int = (moment - _EPOCH) // _MICROSECOND * 1000
        if len(value) > 27 and value[19] == "." and value[20:27].isdigit():
            digits = value[26:29]  # beyond microseconds: keep the nanoseconds
            while digits and not digits.isdigit():
                digits = digits[:-1]
            ns += int(digits.ljust(3, "0"))
        return ns
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value * 1_000_000
    if isinstance(value, float):
        # float milliseconds carry no more than microseconds of precision
        return round(value * 1000) * 1000 if value == value and abs(value) < 1e15 else None
    return None
