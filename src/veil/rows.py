"""Reading the store's answer: rows, their spans, and what Veil cannot read, in one pass.

Native path: the usual answer (strict JSON, the rows array the document or one of its
top-level members, every row an object, the fields Veil reads one level down, written
plainly) is read by ``veil._rowscan``, a small C extension, in one pass over the bytes that
validates the whole document and yields each row's span and the values of the fields Veil
reads, column by column (``Answer.columns``), and nothing else. Whatever it leaves to Python
(escaped member names, a read name repeated in a row, lone surrogates, NaN, deep nesting,
integers at Python's conversion limit, anything not strict JSON, other shapes) takes the
paths below, as does every answer when the extension is not built (``NATIVE`` is then False)
or when the policy reads whole rows.

Fast path: orjson decodes the whole body once; when every row is an object, the row
boundaries are the ``}``-``,``-``{`` sequences after the array's first row, found at C speed,
and they are exact when there are as many of them in the rest of the body as the array has
rows minus one (every true boundary is one, so none is extra). orjson refuses what Veil must
judge itself (NaN, lone surrogates, very deep nesting) and turns integers beyond 64 bits into
floats, so such bodies take the reference path below, rows that may hold an integer of 19
digits or more are decoded again by it, and rows nesting deep are scanned by it too (it
refuses less deep nesting than orjson).

Reference path: the body is read once by the standard library's C JSON scanner, row by row,
recording where each row starts and ends. That same pass yields, per row, whether the row
holds a value Veil cannot represent (a lone surrogate; an integer beyond 64 bits where Veil or
the policy reads it; ``NaN``/``Infinity``). On both paths, whether a key Veil reads appears
twice in a row (names compared after JSON unescaping) is a count at C speed over the whole
rows array; only rows it cannot clear are decoded again, one by one. Such rows are
unreadable, so private (R2).

The answer Veil sends is rebuilt from these parts in one layout (R9): the rows array written
as ``[row,row,...]`` with each kept row byte-for-byte as the store sent it, and around it only
the members named in ``upstream.keep``, also as sent. Nothing else the store wrote is returned.

The same extension reads each row's facts from the columns (``Normalizer._facts``: the
actor's key and kind, the time in nanoseconds) and joins the kept rows (``render``, for an
ASCII text); ``_facts_in_python`` and ``_join_in_python`` do the same without it, and the
tests hold the two to each other.
"""

from __future__ import annotations

import json
import re
import sys
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from itertools import accumulate
from typing import Any, NamedTuple

import orjson

from veil import principal

try:
    from veil import _rowscan as _rowscan  # (decide.py reads it here too)
except ImportError:  # built without a C compiler: every answer is read by the paths below
    _rowscan = None  # type: ignore[assignment]
from veil.config import FieldPointers
from veil.errors import UpstreamBadBody, UpstreamNoRows

Tokens = tuple[str, ...]

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_BLANK = " \t\n\r"
_BLANK_BYTES = b" \t\n\r"
# A member name with whitespace before its ':' (the fast member count looks for '":').
_SPACED_COLON = re.compile(r'"[ \t\n\r]+:')
# A decoded string holds a lone surrogate only through a \uD800-\uDFFF escape: raw surrogates
# are not UTF-8, so a body holding one does not decode at all.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
# Between two rows that are objects: "}", optional whitespace, ",", optional whitespace, "{".
_BOUNDARY = re.compile(r"\}[ \t\n\r]*,[ \t\n\r]*\{")
# The characters of a body's structure (and a few more: '"', ':'); the rest is deleted before
# the counts of the fast reading, which then run over a fraction of the body.
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'{}[],":')
# Squeezing a body: whitespace deleted (so member names are followed by '":'), digits made '0'
# (so a run of 19 digits, where an integer may leave 64 bits, is one find).
_SQUEEZE = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_DIGITS = re.compile(r"[0-9]{19}")
# orjson reads up to 1,024 levels, the standard library's scanner fewer (Python's recursion
# limit): a row with more openers than this is scanned by the latter too, to refuse alike.
_DEEP = 256
NATIVE = _rowscan is not None  # whether the usual answer is read by the C extension
# With Python's integer limit off (0), the C reader still hands back integers this long.
_DEFAULT_INT_DIGITS = 4300
_scan_string = json.decoder.scanstring  # type: ignore[attr-defined]
_skip_value = json.JSONDecoder().scan_once  # type: ignore[attr-defined]

# Integers Veil and the policy engines represent: signed 64-bit.
MIN_INT, MAX_INT = -(2**63), 2**63 - 1
# A row given to the policy as ``raw`` nests at most this deep (the engines refuse deeper).
MAX_RAW_DEPTH = 64


class _Span(NamedTuple):
    """A kept envelope member: where its value is in the body's text."""

    start: int
    end: int


class _Members(dict[str, Any]):
    """An object on the way to the rows array or a kept member: what of it is returned."""


class _Items(dict[int, Any]):
    """An array on the way to the rows array or a kept member: what of it is returned."""


class _RowsArray:
    """Where the rows array sits in the envelope."""


ROWS = _RowsArray()


@dataclass(frozen=True)
class Answer:
    """A parsed store answer: its rows, where each sits in the text, and which are unreadable.

    Rows that are objects split at their proven boundaries carry ``inners`` (each row's text
    without its braces) instead of spans, which are then computed only when asked for. The
    native reader's answer carries ``columns`` (the values of the fields read, per pointer)
    instead of decoded rows, which are then decoded only when asked for."""

    text: str
    decoded: list[Any] | None  # None: see ``columns``
    row_spans: list[tuple[int, int]] | None  # None: see ``inners``
    array_start: int  # index of "["
    array_end: int  # index just past "]"
    unreadable: frozenset[int] = frozenset()  # R2: a repeated read key, or an unrepresentable value
    envelope: Any = ROWS  # the rows array and the kept members, as they nest
    inners: list[str] | None = None
    first: int = 0  # with ``inners``: where the first row starts
    gap: int = 0  # with ``inners``: characters between a row's "}" and the next row's "{"
    columns: dict[Tokens, list[Any]] | None = None  # per read pointer, each row's value

    @cached_property
    def rows(self) -> list[Any]:
        """Each row, decoded (by the reference scanner when the native reader read them)."""
        if self.decoded is not None:
            return self.decoded
        text = self.text
        return [_skip_value(text, start)[0] for start, _ in self.spans]

    @cached_property
    def spans(self) -> list[tuple[int, int]]:
        """Where each row starts and ends in ``text``."""
        if self.row_spans is not None:
            return self.row_spans
        assert self.inners is not None
        return _spans(self.first, self.inners, self.gap)


def _spans(first: int, inners: list[str], gap: int) -> list[tuple[int, int]]:
    """The spans of object rows from their texts without braces, the first starting at
    ``first``, ``gap`` characters between a row's "}" and the next row's "{"."""
    starts = accumulate((len(inner) + 2 + gap for inner in inners[:-1]), initial=first)
    return [(start, start + len(inner) + 2) for start, inner in zip(starts, inners, strict=True)]


def pointer_tokens(pointer: str) -> Tokens:
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


def parse_answer(
    body: bytes,
    rows_pointer: Tokens,
    keep: Sequence[Tokens] = (),
    read: Sequence[Tokens] | None = None,
    raw: bool = False,
    fast: bool = True,
    native: bool = True,
) -> Answer:
    """Parse the store's body in one pass; raise UpstreamBadBody unless the pointer names an array.

    ``keep`` are the envelope members returned beside the rows; ``read`` the row fields Veil
    reads (None: every key counts), whose repetition makes a row unreadable; ``raw``: the
    policy reads whole rows, so any repeated key, any integer beyond 64 bits and any nesting
    deeper than ``MAX_RAW_DEPTH`` make a row unreadable too. ``fast=False``: the reference
    path only; ``native=False``: not the C extension (the tests compare all three).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UpstreamBadBody("the store's answer is not UTF-8 JSON") from exc
    if native and fast and not raw and _rowscan is not None and read is not None:
        answer = _native(body, text, rows_pointer, keep, read)
        if answer is not None:
            return answer
    try:
        document: Any = orjson.loads(body) if fast else _UNREAD
    except orjson.JSONDecodeError:
        document = _UNREAD  # perhaps NaN, a lone surrogate, deep nesting: the reference path
    parser = _Parser(text, read, raw, body, fast=document is not _UNREAD)
    targets = ((rows_pointer, True), *((tokens, False) for tokens in keep))
    try:
        start = _skip(text, 0)
        end, envelope = parser.value(start, targets, document)
        if _skip(text, end) != len(text):
            raise UpstreamBadBody("the store's answer has trailing data after the JSON document")
    except RecursionError as exc:
        raise UpstreamBadBody("the store's answer nests JSON deeper than Veil reads") from exc
    except (StopIteration, IndexError, ValueError) as exc:
        raise UpstreamBadBody("the store's answer is not valid JSON") from exc
    if parser.answer is None:
        where = "/" + "/".join(rows_pointer)
        raise UpstreamNoRows(f"the store's answer has no rows array at {where!r}")
    found = parser.answer
    return Answer(
        text,
        found.rows,
        found.spans,
        found.array_start,
        found.array_end,
        found.unreadable,
        envelope,
        found.inners,
        found.first,
        found.gap,
    )


def _native(
    body: bytes, text: str, rows_pointer: Tokens, keep: Sequence[Tokens], read: Sequence[Tokens]
) -> Answer | None:
    """The answer as ``veil._rowscan`` reads it, or None when the pointers are not of the
    shape it reads or it leaves the body to the Python reader (see the module's docstring)."""
    if len(rows_pointer) > 1 or any(len(t) != 1 for t in keep) or any(len(t) != 1 for t in read):
        return None
    fields = tuple(dict.fromkeys(read))  # each pointer once, in order
    # Python's limit on converting integers, read now (an operator may lower it): a longer
    # integer makes the reference reader find its row unreadable, so the C reader hands it back
    found = _rowscan.scan(
        body,
        rows_pointer[0] if rows_pointer else None,
        tuple(t[0] for t in fields),
        sys.get_int_max_str_digits() or _DEFAULT_INT_DIGITS,
    )
    if found is None:
        return None
    start, end, spans, columns, deferred, members = found
    envelope: Any = ROWS
    if members is not None:
        targets = {rows_pointer[0]: ROWS, **{t[0]: None for t in keep}}
        envelope = _Members()
        for name, value_start, value_end in members:
            if name in targets:
                if name in envelope:  # a repeated member: the Python reader refuses it
                    return None
                envelope[name] = ROWS if targets[name] is ROWS else _Span(value_start, value_end)
    try:
        for row, column, value_start in deferred:  # values left to the reference decoder
            columns[column][row] = _skip_value(text, value_start)[0]
    except (ValueError, RecursionError):  # not expected of what it read: the Python reader's
        return None
    return Answer(
        text,
        None,
        spans,
        start,
        end,
        columns=dict(zip(fields, columns, strict=True)),
        envelope=envelope,
    )


def render(answer: Answer, hidden: Iterable[int]) -> str:
    """The answer Veil sends: the rows array without the hidden rows, in one layout, and the
    kept envelope members; kept rows and members are byte-for-byte as the store sent them."""
    drop = set(hidden)
    text = answer.text
    inners = answer.inners
    if inners is not None:  # object rows: "[{" + "},{".join(their texts within braces) + "}]"
        kept = [inner for i, inner in enumerate(inners) if i not in drop] if drop else inners
        array = "[{" + "},{".join(kept) + "}]" if kept else "[]"
    else:
        joined = _join_rows(text, answer.spans, drop)
        array = joined if joined is not None else _join_in_python(text, answer.spans, drop)
    if answer.envelope is ROWS:
        return array
    out: list[str] = []
    _emit(answer.envelope, array, text, out)
    return "".join(out)


def _join_rows(text: str, spans: list[tuple[int, int]], drop: set[int]) -> str | None:
    """The rows array of the spans not dropped, joined by ``veil._rowscan`` (ASCII texts)."""
    if _rowscan is None or type(spans) is not list:
        return None
    return _rowscan.join_rows(text, spans, sorted(drop))


def _join_in_python(text: str, spans: Sequence[tuple[int, int]], drop: set[int]) -> str:
    """``"[" + ",".join(the text of each span not dropped) + "]"`` (the reference)."""
    if drop:
        return "[" + ",".join([text[s:e] for i, (s, e) in enumerate(spans) if i not in drop]) + "]"
    return "[" + ",".join([text[s:e] for s, e in spans]) + "]"


def _emit(node: Any, rows: str, text: str, out: list[str]) -> None:
    if node is ROWS:
        out.append(rows)
    elif type(node) is _Span:
        out.append(text[node.start : node.end])
    elif type(node) is _Members:
        out.append("{")
        for number, (key, value) in enumerate(node.items()):
            out.append(("," if number else "") + json.dumps(key) + ":")
            _emit(value, rows, text, out)
        out.append("}")
    else:  # _Items: positions not returned are null
        out.append("[")
        for index in range(max(node) + 1):
            if index:
                out.append(",")
            if index in node:
                _emit(node[index], rows, text, out)
            else:
                out.append("null")
        out.append("]")


def _skip(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    return match.end() if match else pos


class _Repeated(dict[str, Any]):
    """A decoded object that wrote some member names more than once."""

    repeated: frozenset[str] = frozenset()


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    marked = _Repeated(obj)
    marked.repeated = frozenset(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
    return marked


def _decode_marking_repeats(row_text: str) -> Any:
    return json.loads(row_text, object_pairs_hook=_pairs, parse_constant=lambda _: None)


def _repeats_anywhere(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if type(node) is _Repeated:
            return True
        if isinstance(node, dict):
            stack.extend(node.values())
        elif type(node) is list:
            stack.extend(node)
    return False


def _repeats_on(value: Any, tokens: Tokens) -> bool:
    """Whether a key on the way to ``tokens`` (the field itself included) is repeated."""
    node = value
    for token in tokens:
        if type(node) is _Repeated and token in node.repeated:
            return True
        node = resolve(node, (token,))
        if node is None:
            return False
    return False


def _holds_lone_surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    except (ValueError, TypeError, RecursionError):
        return True
    return False


def _depth(value: Any) -> int:
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in node.values())
        elif type(node) is list:
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in node)
    return deepest


@dataclass(frozen=True)
class _Found:
    rows: list[Any]
    spans: list[tuple[int, int]] | None
    array_start: int
    array_end: int
    unreadable: frozenset[int]
    inners: list[str] | None = None
    first: int = 0
    gap: int = 0


_UNREAD: Any = object()  # no decoded document (or no node of it) to go with the text


class _Parser:
    """One pass over a body: descends to the rows array and the kept members."""

    def __init__(
        self,
        text: str,
        read: Sequence[Tokens] | None,
        raw: bool,
        body: bytes | None = None,
        fast: bool = False,
    ) -> None:
        self.text = text
        self.fast = fast
        self.body = text.encode() if body is None else body
        self.read = read
        self.raw = raw
        self.flags: list[int] = []  # set by the scanner's hooks while it reads a row
        self.scan = self._scanner(raw)
        self._tolerant: Callable[[str, int], tuple[Any, int]] | None = None
        self.answer: _Found | None = None

    def _scanner(self, check_ints: bool) -> Callable[[str, int], tuple[Any, int]]:
        flags = self.flags

        def constant(_: str) -> None:  # NaN, Infinity, -Infinity: not JSON
            flags.append(1)

        def integer(digits: str) -> int:
            if len(digits) < 19:
                return int(digits)
            try:
                value = int(digits)
            except ValueError:  # more digits than Python converts
                flags.append(1)
                return 0
            if not MIN_INT <= value <= MAX_INT:
                flags.append(1)
            return value

        decoder = json.JSONDecoder(
            parse_constant=constant, parse_int=integer if check_ints else None
        )
        scan: Callable[[str, int], tuple[Any, int]] = decoder.scan_once  # type: ignore[attr-defined]
        return scan

    def value(
        self, pos: int, targets: tuple[tuple[Tokens, bool], ...], node: Any = _UNREAD
    ) -> tuple[int, Any]:
        """Read the value at ``pos`` (``node``: the same value as orjson decoded it, if it
        did); what of it is returned (None: nothing)."""
        text = self.text
        for tokens, is_rows in targets:
            if not tokens:  # pointers are prefix-free: this is the only target here
                if not is_rows:
                    _, end = _skip_value(text, pos)
                    return end, _Span(pos, end)
                if text[pos] != "[":
                    _, end = _skip_value(text, pos)
                    return end, None
                return self.rows_array(pos, node), ROWS
        char = text[pos]
        if char == "{":
            return self.object(pos, targets, node)
        if char == "[":
            return self.array(pos, targets, node)
        _, end = _skip_value(text, pos)
        return end, None

    def object(
        self, pos: int, targets: tuple[tuple[Tokens, bool], ...], node: Any = _UNREAD
    ) -> tuple[int, Any]:
        text = self.text
        found = _Members()
        seen: set[str] = set()
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
            below = tuple((t[1:], r) for t, r in targets if t[0] == key)
            if below:
                if key in seen:
                    raise UpstreamBadBody(f"the store's answer repeats the member {key!r}")
                seen.add(key)
                child = node.get(key, _UNREAD) if type(node) is dict else _UNREAD
                pos, kept = self.value(pos, below, child)
                if kept is not None:
                    found[key] = kept
            else:
                _, pos = _skip_value(text, pos)
            pos = _skip(text, pos)
            if text[pos] == "}":
                return pos + 1, (found or None)
            if text[pos] != ",":
                raise ValueError("expected ',' or '}'")
            pos = _skip(text, pos + 1)

    def array(
        self, pos: int, targets: tuple[tuple[Tokens, bool], ...], node: Any = _UNREAD
    ) -> tuple[int, Any]:
        text = self.text
        found = _Items()
        index = 0
        pos = _skip(text, pos + 1)
        if text[pos] == "]":
            return pos + 1, None
        while True:
            below = tuple((t[1:], r) for t, r in targets if t[0] == str(index))
            if below:
                child = node[index] if type(node) is list and index < len(node) else _UNREAD
                pos, kept = self.value(pos, below, child)
                if kept is not None:
                    found[index] = kept
            else:
                _, pos = _skip_value(text, pos)
            index += 1
            pos = _skip(text, pos)
            if text[pos] == "]":
                return pos + 1, (found or None)
            if text[pos] != ",":
                raise ValueError("expected ',' or ']'")
            pos = _skip(text, pos + 1)

    def rows_array(self, start: int, decoded: Any = _UNREAD) -> int:
        """Find each row and where it starts and ends: from orjson's ``decoded`` rows when
        their boundaries can be proven (see the module's docstring), else with the C scanner."""
        if self.answer is not None:
            raise UpstreamBadBody("the store's answer has two rows arrays")
        if self.fast and type(decoded) is list:
            end = self.fast_rows_array(start, decoded)
            if end is not None:
                return end
        text = self.text
        rows: list[Any] = []
        spans: list[tuple[int, int]] = []
        flagged: list[int] = []
        append_row, append_span = rows.append, spans.append
        scan, flags, blank = self.scan, self.flags, _BLANK
        pos = _skip(text, start + 1)
        if text[pos] != "]":
            while True:
                try:
                    value, end = scan(text, pos)
                except ValueError:  # perhaps an integer of more digits than Python converts
                    value, end = self.tolerant(text, pos)
                append_row(value)
                append_span((pos, end))
                if flags:
                    flagged.append(len(rows) - 1)
                    flags.clear()
                char = text[end]
                if char == ",":  # the usual separators, "," or ", ", without a regex
                    pos = end + 1
                    if text[pos] == " ":
                        pos += 1
                    if text[pos] in blank:
                        pos = _skip(text, pos)
                    continue
                if char == "]":
                    pos = end
                    break
                pos = _skip(text, end)
                char = text[pos]
                if char == "]":
                    break
                if char != ",":
                    raise ValueError("expected ',' or ']'")
                pos = _skip(text, pos + 1)
        end = pos + 1
        unreadable = self.unreadable(rows, spans, start, end, flagged)
        self.answer = _Found(rows, spans, start, end, unreadable)
        return end

    def fast_rows_array(self, start: int, rows: list[Any]) -> int | None:
        """The rows array from orjson's rows; None when their boundaries are not proven.

        Every boundary between two object rows is a ``}``-``,``-``{`` sequence (with any
        whitespace), so when the array holds exactly as many of them as there are rows minus
        one, they are the boundaries and nothing else. They are counted at C speed in the body
        with its whitespace taken out; when they are all written alike (the usual case), the
        rows are the pieces of one ``str.split``, else each is located with a regex."""
        text = self.text
        pos = _skip(text, start + 1)
        if not rows:
            if text[pos] != "]":
                return None
            self.answer = _Found(rows, [], start, pos + 1, frozenset())
            return pos + 1
        if text[pos] != "{" or set(map(type, rows)) != {dict}:
            return None
        count = len(rows)
        squeezed = self.body.translate(_SQUEEZE, _BLANK_BYTES)
        # the brackets, braces, commas, quotes and colons alone: what the counts below read
        structure = squeezed.translate(None, _NOT_STRUCTURE)
        opening = text[:pos].encode().translate(None, _NOT_STRUCTURE)
        # every boundary is after pos: when the rest of the body holds exactly count - 1
        # "}"-","-"{" (anything but those five characters aside, whitespace included), they
        # are the boundaries and nothing else (a string can only add to the count)
        if structure.count(b"},{") - opening.count(b"},{") != count - 1:
            return None
        inners: list[str] | None = None
        spans: list[tuple[int, int]] | None = None
        gap = 0
        if count == 1:
            last = pos
        else:
            first = _BOUNDARY.search(text, pos)
            if first is None:
                return None
            separator = first.group()
            gap = len(separator) - 2
            pieces = text[pos + 1 :].split(separator)  # after the first row's "{"
            if len(pieces) == count:  # every boundary is written as the first one
                inners = pieces
                last = len(text) - len(pieces[-1]) - 1  # the last row's "{"
            else:
                bounds = [match.span() for match in _BOUNDARY.finditer(text, pos)]
                if len(bounds) != count - 1:
                    return None
                starts = [pos]
                starts.extend(after - 1 for _, after in bounds)
                ends = [before + 1 for before, _ in bounds]
                last = starts[-1]
        _, last_end = _skip_value(text, last)
        end = _skip(text, last_end)
        if text[end] != "]":
            return None
        end += 1
        if count == 1:
            inners = [text[pos + 1 : last_end - 1]]
        elif inners is not None:
            inners[-1] = text[last + 1 : last_end - 1]
        else:
            ends.append(last_end)
            spans = list(zip(starts, ends, strict=True))
        head, tail = text[:start].encode(), text[end:].encode()

        def row_spans() -> list[tuple[int, int]]:
            return spans if spans is not None else _spans(pos, inners or [], gap)

        head_structure, tail_structure = (
            head.translate(None, _NOT_STRUCTURE),
            tail.translate(None, _NOT_STRUCTURE),
        )
        openers = (
            structure.count(b"{")
            + structure.count(b"[")
            - head_structure.count(b"{")
            - head_structure.count(b"[")
            - tail_structure.count(b"{")
            - tail_structure.count(b"[")
        )
        if openers - count > _DEEP:
            for s, e in row_spans():  # nesting the reference scanner may refuse: let it judge
                if text.count("{", s, e) + text.count("[", s, e) > _DEEP:
                    _skip_value(text, s)  # RecursionError: the body nests too deep, as there
        flagged: list[int] = []
        if squeezed.find(b"0" * 19) >= 0:  # an integer may be beyond 64 bits: decode again
            rows = list(rows)
            flags, scan = self.flags, self.scan
            for index, (s, e) in enumerate(row_spans()):
                if _LONG_DIGITS.search(text, s, e) is None:
                    continue
                try:
                    rows[index], _ = scan(text, s)
                except ValueError:  # an integer of more digits than Python converts
                    rows[index], _ = self.tolerant(text, s)
                if flags:
                    flagged.append(index)
                    flags.clear()
        names = _count(squeezed, head, tail, b'":')
        unreadable = self.unreadable(rows, row_spans, start, end, flagged, names, surrogates=False)
        self.answer = _Found(rows, spans, start, end, unreadable, inners, pos, gap)
        return end

    def tolerant(self, text: str, pos: int) -> tuple[Any, int]:
        if self._tolerant is None:
            self._tolerant = self._scanner(True)
        return self._tolerant(text, pos)

    def unreadable(
        self,
        rows: list[Any],
        spans: list[tuple[int, int]] | Callable[[], list[tuple[int, int]]],
        start: int,
        end: int,
        flagged: list[int],
        names: int | None = None,
        surrogates: bool = True,
    ) -> frozenset[int]:
        """Rows Veil cannot read with certainty (R2), found with counts over the whole array.

        Repeated keys: every member name is followed by ``":`` once the whitespace is taken
        out, so when the array holds as many ``":`` (outside whitespace) as its rows have
        distinct top-level keys, no object in any row repeats a name, however spelled (a ``":``
        inside a string only adds to the count). Rows the count cannot clear are decoded again
        and their repeats located. ``names``: that count, if known (the rows are then all
        objects); ``surrogates``: whether the rows may hold a lone surrogate (orjson refuses
        them).
        """
        text = self.text
        bad = set(flagged)
        objects = names is not None or set(map(type, rows)) <= {dict}
        if names is None and objects:
            names = self.member_names(start, end)
        cleared = objects and names == sum(map(len, rows))
        if cleared and not surrogates and not self.raw:
            return frozenset(bad)
        located = spans() if callable(spans) else spans
        if not cleared:
            count, spaced = text.count, _SPACED_COLON.search
            for index, (s, e) in enumerate(located):
                row = rows[index]
                if (
                    type(row) is dict
                    and len(row) == count('":', s, e)
                    and spaced(text, s, e) is None
                ):
                    continue
                if self.repeats_a_read_key(text[s:e]):
                    bad.add(index)
        if surrogates and _SURROGATE_ESCAPE.search(text, start, end):
            starts = [s for s, _ in located]
            suspects = {
                bisect_right(starts, m.start()) - 1
                for m in _SURROGATE_ESCAPE.finditer(text, start, end)
            }
            bad.update(i for i in suspects if i >= 0 and _holds_lone_surrogate(rows[i]))
        if self.raw:
            count = text.count
            bad.update(
                i
                for i, (s, e) in enumerate(located)
                if count("{", s, e) + count("[", s, e) > MAX_RAW_DEPTH
                and _depth(rows[i]) > MAX_RAW_DEPTH
            )
        return frozenset(bad)

    def member_names(self, start: int, end: int) -> int:
        """How many ``":`` the text ``[start, end)`` holds once its whitespace is taken out
        (counted in the UTF-8 body, where deleting bytes is one C pass)."""
        text = self.text
        return _names(self.body) - _names(text[:start].encode()) - _names(text[end:].encode())

    def repeats_a_read_key(self, row_text: str) -> bool:
        try:
            value = _decode_marking_repeats(row_text)
        except (ValueError, RecursionError):
            return True
        if self.read is None or self.raw:
            return _repeats_anywhere(value)
        return any(_repeats_on(value, tokens) for tokens in self.read)


def _count(squeezed: bytes, head: bytes, tail: bytes, what: bytes) -> int:
    """How many ``what`` the rows array holds once whitespace is taken out: the squeezed
    body's count less those of the (small) texts before and after the array."""
    return (
        squeezed.count(what)
        - head.translate(None, _BLANK_BYTES).count(what)
        - tail.translate(None, _BLANK_BYTES).count(what)
    )


def _names(part: bytes) -> int:
    """How many ``":`` the bytes hold once their whitespace is taken out."""
    return part.translate(None, _BLANK_BYTES).count(b'":')


# ---- normalization ------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Actors' comparison keys and actor types' kinds, remembered across answers up to this many.
MAX_REMEMBERED = 65_536
_fromisoformat = datetime.fromisoformat


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
        self._getters = tuple(
            getter(p) for p in (fields.id, fields.actor, fields.actor_type, fields.timestamp)
        )
        tokens = tuple(
            pointer_tokens(p)
            for p in (fields.id, fields.actor, fields.actor_type, fields.timestamp)
        )
        self._pointers = tokens
        self._actors: dict[str, str | None] = {}  # actor as written -> its comparison key
        self._kinds: dict[str, str] = {}  # actor type as written -> "application" or "user"
        self._flat = tuple(t[0] for t in tokens) if all(len(t) == 1 for t in tokens) else None

    @property
    def pointers(self) -> tuple[Tokens, ...]:
        """The pointers (as tokens) of the fields Veil reads: id, actor, type and time."""
        return self._pointers

    def facts(
        self, rows: Sequence[Any], unreadable: frozenset[int] | set[int] = frozenset()
    ) -> RowFacts:
        """What Veil reads of each row, column by column (see ``RowFacts``): no dict per row,
        and a time turned into nanoseconds only when asked (``RowFacts.ns``). An unreadable
        row (``unreadable``, or an id Veil cannot represent) gets no id, actor nor time, so it
        is private (R2)."""
        if self._flat is not None:  # every field one level down: read the dicts directly
            columns = [
                [row.get(key) if type(row) is dict else None for row in rows] for key in self._flat
            ]
        else:
            columns = [[get(row) for row in rows] for get in self._getters]
        return self._facts(columns, unreadable)

    def facts_of(self, answer: Answer) -> RowFacts:
        """``facts`` of a parsed answer (``parse_answer`` with ``read=self.pointers``), from
        its columns when the native reader read it."""
        if answer.columns is None:
            return self.facts(answer.rows, answer.unreadable)
        columns = answer.columns
        return self._facts([columns[tokens] for tokens in self._pointers], answer.unreadable)

    def _kind(self, kind: str) -> str:
        """What an actor type as written means: "application" or "user"."""
        return "application" if principal.fold(kind) in self.application_values else "user"

    def _facts(
        self, columns: Sequence[list[Any]], unreadable: frozenset[int] | set[int]
    ) -> RowFacts:
        """``facts`` from the columns of the id, actor, actor type and time: by
        ``veil._rowscan.facts`` when it is built, else by ``_facts_in_python``, the reference
        the tests hold it to."""
        actors, kinds = self._actors, self._kinds  # keyed once, then remembered
        if len(actors) > MAX_REMEMBERED or len(kinds) > MAX_REMEMBERED:
            actors.clear()
            kinds.clear()
        id_column, actor_column, type_column, ts_column = columns
        if _rowscan is not None:
            found = _rowscan.facts(
                id_column,
                actor_column,
                type_column,
                ts_column,
                actors,
                kinds,
                principal.key,
                self._kind,
                timestamp_ns,
                "user",
            )
            return self._drop(*found[:4], (*unreadable, *found[4]))
        return self._facts_in_python(columns, unreadable)

    def _facts_in_python(
        self, columns: Sequence[list[Any]], unreadable: frozenset[int] | set[int]
    ) -> RowFacts:
        """``_facts`` without the C extension (and the tests' reference for it)."""
        id_column, actor_column, type_column, ts_column = columns
        actors, kinds = self._actors, self._kinds
        to_ns, key, kind_of = timestamp_ns, principal.key, self._kind
        fromiso = _fromisoformat
        ids: list[Any] = []
        who_list: list[str | None] = []
        kind_list: list[str] = []
        stamps: list[int | datetime | None] = []
        add_id, add_who, add_kind, add_stamp = (
            ids.append,
            who_list.append,
            kind_list.append,
            stamps.append,
        )
        late: list[int] = []
        index = -1
        for row_id, actor, kind, ts in zip(
            id_column, actor_column, type_column, ts_column, strict=True
        ):
            index += 1
            if type(row_id) is not str:
                if type(row_id) is not int:
                    row_id = None
                elif not MIN_INT <= row_id <= MAX_INT:
                    late.append(index)
            add_id(row_id)
            if type(actor) is str:  # few distinct actors per answer: each keyed once
                try:
                    add_who(actors[actor])
                except KeyError:
                    add_who(actors.setdefault(actor, key(actor)))
            else:
                add_who(None)
            if type(kind) is str:
                try:
                    add_kind(kinds[kind])
                except KeyError:
                    add_kind(kinds.setdefault(kind, kind_of(kind)))
            else:
                add_kind("user")
            # RFC 3339 in UTC to the millisecond ("2026-11-25T18:58:06.480Z"), the usual
            # spelling: timestamp_ns's own steps, without the checks this shape makes moot; a
            # year in 1678-2261 is within MIN_NS..MAX_NS, so its nanoseconds can wait
            if type(ts) is str and len(ts) == 24 and ts[23] == "Z" and ts[10] == "T":
                try:
                    moment = fromiso(ts)
                except ValueError:
                    add_stamp(None)
                else:
                    if moment.tzinfo is None:
                        add_stamp(None)
                    elif 1677 < moment.year < 2262:
                        add_stamp(moment)
                    else:
                        add_stamp(_in_range((moment - _EPOCH) // _MICROSECOND * 1000))
            else:
                add_stamp(to_ns(ts))
        return self._drop(ids, who_list, kind_list, stamps, (*unreadable, *late))

    @staticmethod
    def _drop(
        ids: list[Any],
        who: list[str | None],
        kinds: list[str],
        stamps: list[Any],
        dropped: tuple[int, ...],
    ) -> RowFacts:
        """The facts, with the ``dropped`` rows' id, actor and time None: private (R2)."""
        for index in dropped:
            ids[index] = who[index] = stamps[index] = None
        return RowFacts(ids, who, kinds, stamps, dropped)

    def rows(
        self,
        rows: Sequence[Any],
        include_raw: bool,
        unreadable: frozenset[int] | set[int] = frozenset(),
    ) -> list[dict[str, Any]]:
        """The rows as the policy sees them (``input.rows``), from ``facts``; an unreadable
        row has no raw either."""
        return self._rows(self.facts(rows, unreadable), rows if include_raw else None)

    def rows_of(self, answer: Answer, include_raw: bool) -> list[dict[str, Any]]:
        """``rows`` of a parsed answer (``parse_answer`` with ``read=self.pointers``)."""
        return self._rows(self.facts_of(answer), answer.rows if include_raw else None)

    @staticmethod
    def _rows(facts: RowFacts, raws: Sequence[Any] | None) -> list[dict[str, Any]]:
        ns = RowFacts.ns
        out = [
            {"index": index, "id": row_id, "actor": actor, "actor_type": kind, "ts_ns": ns(stamp)}
            for index, (row_id, actor, kind, stamp) in enumerate(
                zip(facts.ids, facts.actors, facts.kinds, facts.stamps, strict=True)
            )
        ]
        if raws is not None:
            for row, raw in zip(out, raws, strict=True):
                row["raw"] = raw
            for index in facts.unreadable:
                out[index]["raw"] = None
        return out


class RowFacts(NamedTuple):
    """What Veil reads of an answer's rows, one list per field, in row order: the id (None
    when absent or unreadable), the actor's comparison key (None: no actor, or unreadable),
    the actor type ("application" or "user") and the time (None: missing or unreadable; an
    int of nanoseconds, or a ``datetime`` whose nanoseconds ``ns`` gives, always in range);
    ``unreadable``: the rows made unreadable (R2), whose id, actor and time are None."""

    ids: list[Any]
    actors: list[str | None]
    kinds: list[str]
    stamps: list[int | datetime | None]
    unreadable: tuple[int, ...] = ()

    @staticmethod
    def ns(stamp: int | datetime | None) -> int | None:
        """A stamp's nanoseconds since the epoch (None stays None)."""
        return None if stamp is None else stamp_ns(stamp)

    @classmethod
    def of(cls, rows: Sequence[dict[str, Any]]) -> RowFacts:
        """The facts of rows as the policy sees them (``Normalizer.rows``)."""
        ids: list[Any] = [row.get("id") for row in rows]
        actors: list[Any] = [row.get("actor") for row in rows]
        kinds: list[Any] = [row.get("actor_type") for row in rows]
        stamps: list[Any] = [row.get("ts_ns") for row in rows]
        return cls(ids, actors, kinds, stamps)


def stamp_ns(stamp: int | datetime) -> int:
    """A (not None) stamp's nanoseconds since the epoch: ``timestamp_ns``'s own arithmetic."""
    if isinstance(stamp, datetime):
        return (stamp - _EPOCH) // _MICROSECOND * 1000
    return stamp


def _in_range(ns: int) -> int | None:
    return ns if MIN_NS <= ns < MAX_NS else None


# Instants Veil can compare: a signed 64-bit count of nanoseconds, below the end of an open
# privacy interval (2**63 - 1, in 2262). Anything outside is unreadable, so private (R2).
MIN_NS, MAX_NS = -(2**63), 2**63 - 1


def timestamp_ns(value: Any) -> int | None:
    """Nanoseconds since the epoch from RFC 3339 text or epoch milliseconds; None if unreadable."""
    if type(value) is str:
        if len(value) < 20 or value[10] not in "Tt ":
            return None
        if value[10] == "t" or value[-1] == "z":
            value = value.upper()  # RFC 3339 allows "t" and "z"
        try:
            moment = _fromisoformat(value)
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
    elif type(value) is int:
        ns = value * 1_000_000
    elif type(value) is float:
        # float milliseconds carry no more than microseconds of precision
        if not (value == value and abs(value) < 1e15):
            return None
        ns = round(value * 1000) * 1000
    else:
        return None  # bool, null, objects, arrays
    return ns if MIN_NS <= ns < MAX_NS else None
