"""The fast readings of a store's answer against the reference path, over awkward JSON.

``parse_answer`` reads the usual answer with the C extension ``veil._rowscan`` (native),
else decodes with orjson and proves the row boundaries at C speed (``native=False``);
``fast=False`` is the reference (the standard library's scanner, row by row). All must give
the same rows, spans, unreadable verdicts (R2), rendering (R9) and normalized fields (from the
native reader's columns, or from decoded rows), or the same refusal.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from veil import rows as rows_module
from veil.config import FieldPointers
from veil.errors import VeilError
from veil.rows import Answer, Normalizer, RowFacts, parse_answer, pointer_tokens, render

READ = (("id",), ("user",), ("actorType",), ("timestamp",))
NESTED = FieldPointers(id="/meta/id", actor="/who/upn", actor_type="/who/kind", timestamp="/at")
NESTED_READ = tuple(pointer_tokens(p) for p in ("/meta/id", "/who/upn", "/who/kind", "/at"))

BLANKS = ["", "", "", " ", " ", "\n", "\t", "\r\n  ", "  "]
KEY_SPELLINGS = {  # the same decoded name, written several ways
    "user": ['"user"', '"\\u0075ser"', '"us\\u0065r"'],
    "id": ['"id"', '"\\u0069d"'],
    "timestamp": ['"timestamp"', '"time\\u0073tamp"'],
    "actorType": ['"actorType"', '"actor\\u0054ype"'],
}
AWKWARD_STRINGS = [
    '"plain"',
    '"},{"',
    '"}, {"',
    '"a\\"b"',
    '"\\\\"',
    '"\\":"',
    '"\\"}, {\\""',
    '"caf\u00e9"',
    '"\\u00e9"',
    '"\\ud83d\\ude00"',
    '"\U0001f600"',
    '"\\n\\t"',
    '"\\/"',
    '"line\\u2028sep"',
    '"]"',
    '"[{"',
    '"\\u0000"',
    '"{\\"x\\":1}"',
    '"19 digits 1234567890123456789"',
    '"2024-01-01T00:00:00Z"',
    '""',
]
INNER_KEYS = ['"a"', '"b"', '"\\u0061"', '"user"']
RARE_STRINGS = ['"\\ud800"', '"\\udc00x"', '"\\uDBFF"']  # lone surrogates: R2
NUMBERS = [
    "0",
    "-0",
    "1",
    "-1",
    "0.5",
    "-0.0",
    "1e3",
    "1E-7",
    "2.5e-400",
    "1.7976931348623157e308",
    str(2**63 - 1),
    str(-(2**63)),
    str(2**63),
    str(2**64 - 1),
    str(2**64),
    str(-(2**63) - 1),
    "123456789012345678901234567890",
    "-98765432109876543210",
    "1234567890123456789",
    "12345678901234567890.5",
    "3.141592653589793",
    "0.1",
    "100000000000000000000e-2",
]
RARE_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", "9" * 5000]
TIMESTAMPS = [
    '"2026-11-25T18:58:06.480Z"',
    '"2026-11-25t18:58:06z"',
    '"2026-11-25 18:58:06+01:00"',
    '"2026-11-25T18:58:06.123456789Z"',
    '"2026-11-25T18:58:06"',
    "1764097086480",
    "1764097086480.5",
    '"x"',
    "null",
    "true",
    str(2**70),
]


def blank(rng: random.Random) -> str:
    return rng.choice(BLANKS)


def scalar(rng: random.Random, rare: bool) -> str:
    roll = rng.random()
    if rare and roll < 0.03:
        return rng.choice(RARE_STRINGS + RARE_NUMBERS)
    if roll < 0.45:
        return rng.choice(AWKWARD_STRINGS)
    if roll < 0.85:
        return rng.choice(NUMBERS)
    return rng.choice(["true", "false", "null"])


def value(rng: random.Random, depth: int, rare: bool) -> str:
    roll = rng.random()
    if depth > 3 or roll < 0.7:
        return scalar(rng, rare)
    if roll < 0.85:
        members = [
            f"{blank(rng)}{rng.choice(INNER_KEYS)}"
            f"{blank(rng)}:{blank(rng)}{value(rng, depth + 1, rare)}{blank(rng)}"
            for _ in range(rng.randint(0, 3))
        ]
        return "{" + ",".join(members) + "}"
    items = [
        f"{blank(rng)}{value(rng, depth + 1, rare)}{blank(rng)}" for _ in range(rng.randint(0, 3))
    ]
    return "[" + ",".join(items) + "]"


def deep(levels: int) -> str:
    return "[" * levels + "1" + "]" * levels


def row(rng: random.Random, nested: bool, rare: bool, plain: bool = False) -> str:
    """One row: mostly an activity with the fields Veil reads, sometimes something else;
    ``plain``: names mostly written without escapes (as the native reader reads them)."""
    roll = rng.random()
    if roll < 0.03:
        return value(rng, 2, rare)  # a row that is not an object
    if rare and roll < 0.05:
        return '{"user": "deep@x", "d": ' + deep(rng.choice([40, 70, 1100])) + "}"
    fields: list[tuple[str, str]] = []
    actor = rng.choice(
        [
            '"Ann@Contoso.com"',
            '"bob@contoso.com"',
            '"app-1"',
            '"åsa@x"',
            '""',
            "7",
            "null",
            '"a b"',
            '"\\u0041nn@contoso.com"',
        ]
    )
    kind = rng.choice(['"user"', '"application"', '"APPLICATION"', "3", '"User"'])
    ident = rng.choice(['"id-1"', "42", str(2**63), str(2**64 + 5), "-5", "1.5", "null"])
    stamp = rng.choice(TIMESTAMPS)
    if nested:
        fields += [
            (rng.choice(['"meta"', '"\\u006deta"']), "{" + '"id":' + ident + "}"),
            ('"who"', "{" + f'"upn":{actor},"kind":{kind}' + "}"),
            ('"at"', stamp),
        ]
    else:

        def spelling(name: str) -> str:
            if plain and rng.random() < 0.97:
                return KEY_SPELLINGS[name][0]
            return rng.choice(KEY_SPELLINGS[name])

        fields += [
            (spelling("id"), ident),
            (spelling("user"), actor),
            (spelling("actorType"), kind),
            (spelling("timestamp"), stamp),
        ]
    extra = ['"note"', '"x"', '"obj"', '"list"', '"caf\u00e9"']
    for _ in range(rng.randint(0, 4)):
        name = '"n\\u006fte"' if rng.random() < (0.01 if plain else 0.2) else rng.choice(extra)
        fields.append((name, value(rng, 1, rare)))
    if rng.random() < (0.01 if plain else 0.08):  # a repeated name, spelled plainly or escaped
        fields.append(rng.choice(fields))
    if rng.random() < (0.01 if plain else 0.05):
        fields.append((rng.choice(KEY_SPELLINGS["user"]), rng.choice(['"mallory@x"', "null"])))
    rng.shuffle(fields)
    return (
        "{"
        + ",".join(f"{blank(rng)}{k}{blank(rng)}:{blank(rng)}{v}{blank(rng)}" for k, v in fields)
        + "}"
    )


def body_of(
    rng: random.Random, nested: bool, rare: bool, plain: bool = False
) -> tuple[bytes, tuple[str, ...]]:
    """A whole answer: the rows array in one of several envelopes."""
    count = rng.choice([0, 1, 2, 3, 5, 8, 20])
    separators = [blank(rng) + "," + blank(rng) for _ in range(3)]
    array = (
        "["
        + blank(rng)
        + "".join(
            (rng.choice(separators) if i else "") + row(rng, nested, rare, plain)
            for i in range(count)
        )
        + blank(rng)
        + "]"
    )
    shape = rng.randrange(5)
    if shape == 0:
        return f"{blank(rng)}{array}{blank(rng)}".encode(), ()
    if shape == 1:
        return f'{{"data":{array},"next":null}}'.encode(), ("data",)
    if shape == 2:  # objects after the rows array, in the envelope
        return (
            f'{{ "meta" : {{"n": 1}}, "data" : {array}, "links": [{{"a": 1}},{{"b": 2}}],'
            f' "next": "}},{{"}}'
        ).encode(), ("data",)
    if shape == 3:
        return f'{{"page": [{{"x": 1}}, {{"rows": {array}}}]}}'.encode(), ("page", "1", "rows")
    return f'{{"d\\u0061ta": {array}, "next": {{"cursor": "c"}}}}'.encode(), ("data",)


def outcome(
    body: bytes,
    pointer: tuple[str, ...],
    read: Any,
    raw: bool,
    fast: bool,
    normalizer: Normalizer,
    native: bool = False,
) -> tuple[Any, ...]:
    try:
        answer = parse_answer(
            body, pointer, [("next",)], read=read, raw=raw, fast=fast, native=native
        )
    except VeilError as exc:
        return ("refused", type(exc).__name__, str(exc))
    if read is None:
        normalized = normalizer.rows(answer.rows, include_raw=raw, unreadable=answer.unreadable)
    else:  # from the native reader's columns when it read the answer
        normalized = normalizer.rows_of(answer, include_raw=raw)
    hidden = set(range(0, len(answer.rows), 2))
    return (
        "read",
        repr(answer.rows),
        answer.spans,
        answer.array_start,
        answer.array_end,
        sorted(answer.unreadable),
        render(answer, hidden),
        render(answer, ()),
        repr(normalized),
    )


@pytest.fixture
def native_built() -> None:
    """Fails in CI, skips elsewhere, when ``veil._rowscan`` is not built."""
    if not rows_module.NATIVE:
        if os.environ.get("CI"):
            pytest.fail("veil._rowscan is not built: CI runs the native reader's tests")
        pytest.skip("veil._rowscan is not built (no C compiler at install)")


@pytest.fixture
def native_calls(native_built: None, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each call of the native reader read the answer (False: handed it back)."""
    from veil import _rowscan

    calls: list[bool] = []
    original = _rowscan.scan

    def counted(*args: Any) -> Any:
        found = original(*args)
        calls.append(found is not None)
        return found

    monkeypatch.setattr(_rowscan, "scan", counted)
    return calls


@pytest.fixture
def fast_calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each call of the fast rows reader proved its boundaries."""
    calls: list[bool] = []
    original: Callable[..., int | None] = rows_module._Parser.fast_rows_array

    def counted(self: Any, start: int, decoded: list[Any]) -> int | None:
        end = original(self, start, decoded)
        calls.append(end is not None)
        return end

    monkeypatch.setattr(rows_module._Parser, "fast_rows_array", counted)
    return calls


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("rare", [False, True])
def test_fast_reading_matches_the_reference(
    nested: bool, rare: bool, fast_calls: list[bool]
) -> None:
    rng = random.Random(f"veil-rows-{nested}-{rare}")
    fields = NESTED if nested else FieldPointers()
    normalizer = Normalizer(fields, frozenset({"application"}))
    reads: list[Any] = [NESTED_READ if nested else READ, None]
    kinds = set()
    split = located = 0  # proven rows: split at one spelling of the boundary, or located
    for case in range(700):
        body, pointer = body_of(rng, nested, rare)
        for read in reads:
            for raw in (False, True):
                expected = outcome(body, pointer, read, raw, False, normalizer)
                got = outcome(body, pointer, read, raw, True, normalizer)
                assert got == expected, (case, body, read, raw)
                kinds.add(expected[0])
        try:
            answer = parse_answer(body, pointer, [("next",)], read=reads[0], native=False)
        except VeilError:
            continue
        if len(answer.rows) > 1 and answer.row_spans is None:
            split += 1
        elif len(answer.rows) > 1 and answer.inners is None:
            located += 1
    proven, refused = fast_calls.count(True), fast_calls.count(False)
    # the corpus takes both ways: boundaries proven, and bodies the fast reader hands back
    assert proven > 1000 and refused > 100, (proven, refused)
    assert split > 20 and located > 20, (split, located)
    assert kinds == {"read", "refused"} if rare else "read" in kinds


@pytest.mark.parametrize(
    "text",
    [
        '[{"id": 1, "user": "a"}, {"id": 2, "user": "a", "user": "b"}]',
        '[{"id": 1, "\\u0075ser": "a", "user": "b"}, {"id": 2}]',
        '[{"id": 1, "note": "},{"}, {"id": 2}]',
        '[{"id": 1, "l": [{"a": 1},{"b": 2}]}, {"id": 2}]',
        '[{"id": 12345678901234567890, "user": "a"}, {"id": 2}]',
        '[{"id": 1, "n": -9223372036854775809}, {"id": 2}]',
        '[{"id": 1, "n": NaN}, {"id": 2}]',
        '[{"id": 1, "n": "\\udc00"}, {"id": 2}]',
        '[\n  {\n    "id" : 1\n  },\n  {\n    "id" : 2\n  }\n]',
        '{"data": [{"id": 1}, {"id": 2}], "links": [{"a": 1}, {"b": 2}]}',
        # deeper than the standard library's scanner goes, not as deep as orjson's limit
        '[{"id": 1, "d": ' + "[" * 1020 + "]" * 1020 + '}, {"id": 2}]',
        '[{"id": 1, "d": ' + '{"a":' * 1020 + "1" + "}" * 1020 + '}, {"id": 2}]',
        '[{"id": 1, "d": ' + "[" * 300 + "]" * 300 + '}, {"id": 2}]',
        # a boundary spelling first met in a string: the split must not be taken for the rows
        '[{"s": "}, {}]"},{"t": 1}]',
        '[{"s": "}, {"},{"t": 1},{"u": "}, {"}]',
        '[{"a": 1},{"b": 2}, {"c": 3}]',
        '[{"a": 1}]',
        '[ {"a": "}, {"} ]',
        '{"data": [{"a": 1}, {"b": 2}], "next": "}, {"}',
        '{"data": [{"a": 1}, {"b": 2}], "next": [{"c": 1}, {"d": 2}]}',
    ],
)
def test_hand_written_awkward_bodies(text: str) -> None:
    body = text.encode()
    pointer = ("data",) if text.startswith("{") else ()
    normalizer = Normalizer(FieldPointers(), frozenset())
    for read in (READ, None):
        for raw in (False, True):
            expected = outcome(body, pointer, read, raw, False, normalizer)
            assert outcome(body, pointer, read, raw, True, normalizer) == expected
            if rows_module.NATIVE:
                assert outcome(body, pointer, read, raw, True, normalizer, True) == expected


def test_a_plain_answer_takes_the_fast_path(fast_calls: list[bool]) -> None:
    rows = [{"id": i, "user": f"u{i}@x", "note": "},{"} for i in range(50)]
    body = json.dumps({"data": rows, "next": None}).encode()
    answer = parse_answer(body, ("data",), read=READ, native=False)
    assert fast_calls == [False]  # "},{" in the strings: more candidates than boundaries
    fast_calls.clear()
    body = json.dumps({"data": [{"id": i, "user": f"u{i}@x"} for i in range(50)]}).encode()
    answer = parse_answer(body, ("data",), read=READ, native=False)
    assert fast_calls == [True]
    text = body.decode()
    assert [json.loads(text[s:e]) for s, e in answer.spans] == answer.rows
    assert isinstance(answer, Answer)


@pytest.mark.parametrize("rare", [False, True])
def test_native_reading_matches_the_reference(rare: bool, native_calls: list[bool]) -> None:
    """The C extension against the reference and the orjson reading, over answers written
    mostly as it reads them (and, ``rare``, with NaN, lone surrogates and deep nesting)."""
    rng = random.Random(f"veil-native-{rare}")
    normalizer = Normalizer(FieldPointers(), frozenset({"application"}))
    for case in range(1500):
        body, pointer = body_of(rng, False, rare, plain=True)
        expected = outcome(body, pointer, READ, False, False, normalizer)
        assert outcome(body, pointer, READ, False, True, normalizer, True) == expected, (
            case,
            body,
        )
        assert outcome(body, pointer, READ, False, True, normalizer) == expected, (case, body)
    read, handed_back = native_calls.count(True), native_calls.count(False)
    # both ways are taken: answers it reads, and answers it leaves to the Python reader
    assert read > (380 if rare else 450) and handed_back > 500, (read, handed_back)


def mutated(rng: random.Random, text: str) -> str:
    """``text`` with one to three JSON-significant characters inserted, deleted or replaced."""
    alphabet = '{}[],:"\\ 0-1.eE+tfnu\x00\x1f\u00e9'
    chars = list(text)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(chars) + 1)
        roll = rng.random()
        if roll < 0.4 or not chars:
            chars.insert(at, rng.choice(alphabet))
        elif roll < 0.7:
            del chars[min(at, len(chars) - 1)]
        else:
            chars[min(at, len(chars) - 1)] = rng.choice(alphabet)
    return "".join(chars)


def test_native_reading_refuses_and_reads_broken_json_as_the_reference(
    native_calls: list[bool],
) -> None:
    """Bodies broken at random, one to three characters each: the C extension must never
    read what the reference refuses, and where it reads, read as the reference does."""
    rng = random.Random("veil-native-mutations")
    normalizer = Normalizer(FieldPointers(), frozenset({"application"}))
    refused = 0
    for case in range(4000):
        body, pointer = body_of(rng, False, False, plain=True)
        broken = mutated(rng, body.decode()).encode()
        expected = outcome(broken, pointer, READ, False, False, normalizer)
        got = outcome(broken, pointer, READ, False, True, normalizer, True)
        assert got == expected, (case, broken)
        refused += expected[0] == "refused"
    assert refused > 2500 and native_calls.count(True) > 250, (refused, native_calls.count(True))


@pytest.mark.parametrize(
    ("text", "native"),
    [
        ('{"data": [{"id": 1, "user": "a@x"}, {"id": 2, "user": "b@x"}], "next": null}', True),
        # values it leaves to Python's decoder: escapes, long and other numbers, literals
        ('{"data": [{"user": "\\u0041nn@x", "id": 12345678901234567890}]}', True),
        ('{"data": [{"id": -999999999999999999, "timestamp": 1764097086480.5}]}', True),
        ('{"data": [{"id": true, "user": {"a": 1}, "actorType": [1], "timestamp": false}]}', True),
        (
            '{"data": [{"id": -9223372036854775809, "user": "a"}, {"id": 9223372036854775807}]}',
            True,
        ),
        # code points, not bytes: text before and inside the rows outside ASCII
        ('{"m": "\u00e5\u00e4\U0001f600", "data": [{"user": "\u00e9\U0001f600@x"}, {}]}', True),
        ('[{"user": "a"}, {"user": "b"}]', True),
        ('{"data": [], "next": "c"}', True),
        ('{"next": {"c": [1, {"d": null}]}, "data": [{"x": [[[]]]}], "z": -0.5e-3}', True),
        # left to the Python reader, which refuses or judges these
        ('{"data": [{"user": "a", "user": "b"}, {"id": 2}]}', False),
        ('{"data": [{"\\u0075ser": "a"}]}', False),
        ('{"d\\u0061ta": [{"user": "a"}]}', False),
        ('{"data": [{"user": "a"}], "data": []}', False),
        ('{"data": [{"user": "a"}], "next": 1, "next": 2}', False),
        ('{"data": [{"user": "\\ud800"}]}', False),
        ('{"data": [{"n": NaN}]}', False),
        ('{"data": [{"n": -Infinity}]}', False),
        ('{"data": [1, {"user": "a"}]}', False),
        ('{"data": {"user": "a"}}', False),
        ('{"rows": [{"user": "a"}]}', False),
        ('{"data": [{"user": "a"},]}', False),
        ('{"data": [{"id": 01}]}', False),
        ('{"data": [{"user": "a\tb"}]}', False),
        ('{"data": [{"user": "a"}]} x', False),
        ('{"data": [{"user": "a"}]', False),
        ('{"data": [{"user" "a"}]}', False),
        ('{"data": [{"d": ' + "[" * 250 + "]" * 250 + "}]}", False),
        ('\ufeff{"data": []}', False),
    ],
)
def test_native_reading_of_hand_written_bodies(
    text: str, native: bool, native_calls: list[bool]
) -> None:
    body = text.encode()
    pointer = ("data",) if text.startswith("{") else ()
    normalizer = Normalizer(FieldPointers(), frozenset({"application"}))
    expected = outcome(body, pointer, READ, False, False, normalizer)
    assert outcome(body, pointer, READ, False, True, normalizer, True) == expected
    if expected[0] == "read":
        answer = parse_answer(body, pointer, [("next",)], read=READ)
        assert (answer.columns is not None) == native
    else:
        assert not native


@pytest.mark.parametrize("limit", [640, 4300, 0])
def test_native_reading_follows_pythons_limit_on_converting_integers(
    limit: int, native_calls: list[bool]
) -> None:
    """An integer Python will not convert (``sys.set_int_max_str_digits``, which an operator
    may lower) makes the reference find its row unreadable, even in a field Veil does not
    read: the native reader hands such a body back, whatever the limit is now."""
    row = '{"id": 1, "user": "alice@x", "timestamp": "2026-11-25T18:58:06.480Z", "n": %s}'
    body = ('{"data": [' + row % ("1" * 1000) + ", " + row % "2" + '], "next": null}').encode()
    normalizer = Normalizer(FieldPointers(), frozenset({"application"}))
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(limit)
    try:
        expected = outcome(body, ("data",), READ, False, False, normalizer)
        assert outcome(body, ("data",), READ, False, True, normalizer, True) == expected
        answer = parse_answer(body, ("data",), [("next",)], read=READ)
        facts = normalizer.facts_of(answer)
    finally:
        sys.set_int_max_str_digits(before)
    assert native_calls[-1] == (limit == 0 or limit > 1000)
    assert facts.actors[0] == ("alice@x" if limit == 0 or limit > 1000 else None)


def test_a_plain_answer_is_read_by_the_native_reader_into_columns(
    native_calls: list[bool],
) -> None:
    rows = [{"id": i, "user": f"u{i}@x", "note": "},{", "timestamp": "x"} for i in range(50)]
    body = json.dumps({"data": rows, "next": None}).encode()
    answer = parse_answer(body, ("data",), [("next",)], read=READ)
    assert native_calls == [True]
    assert answer.columns is not None and answer.decoded is None
    assert answer.columns[("user",)] == [f"u{i}@x" for i in range(50)]
    assert answer.columns[("actorType",)] == [None] * 50
    assert answer.rows == rows  # decoded only when asked for
    facts = Normalizer(FieldPointers(), frozenset()).facts_of(answer)
    assert facts.actors == [f"u{i}@x" for i in range(50)] and facts.ids == list(range(50))


def test_the_normalizer_reads_millisecond_utc_times_as_timestamp_ns_does() -> None:
    """The normalizer's shortcut for "YYYY-MM-DDTHH:MM:SS.fffZ" against ``timestamp_ns``,
    over that shape with characters changed at random (invalid dates, out of range, ...)."""
    from veil.rows import timestamp_ns

    rng = random.Random("veil-times")
    templates = [
        "2026-11-25T18:58:06.480Z",
        "2262-04-11T23:47:16.854Z",
        "1677-09-21T00:12:43.145Z",
        "0001-01-01T00:00:00.000Z",
        "9999-12-31T23:59:59.999Z",
        "1678-01-01T00:00:00.000Z",
        "2261-12-31T23:59:59.999Z",
    ]
    values: list[Any] = list(templates)
    for _ in range(3000):
        chars = list(rng.choice(templates))
        for _ in range(rng.randint(1, 3)):
            chars[rng.randrange(24)] = rng.choice("0123456789" * 6 + ":-.+TtZz ,")
        values.append("".join(chars))
    normalizer = Normalizer(FieldPointers(), frozenset())
    out = normalizer.rows([{"timestamp": value} for value in values], include_raw=False)
    assert [row["ts_ns"] for row in out] == [timestamp_ns(value) for value in values]
    read = [row["ts_ns"] for row in out]
    assert read.count(None) > 100 and len(set(read)) > 150  # both outcomes, many instants


@pytest.fixture
def native_facts(native_built: None, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of rows each call of ``veil._rowscan.facts`` read."""
    from veil import _rowscan

    calls: list[int] = []
    original = _rowscan.facts

    def counted(*args: Any) -> Any:
        calls.append(len(args[0]))
        return original(*args)

    monkeypatch.setattr(_rowscan, "facts", counted)
    return calls


CALENDAR_EDGES = (
    *(f"{year}-02-29" for year in (2000, 1900, 2100, 2004, 2001, 1700, 1800, 2200)),
    *("2024-02-30", "2024-04-31", "2024-04-30", "2024-12-31", "2024-12-32", "2023-02-28"),
    *("2024-00-10", "2024-13-10", "2024-01-00", "1677-12-31", "2262-01-01", "1970-01-01"),
)


def _time(rng: random.Random) -> Any:
    """A time as a store may write it: mostly the usual spelling, valid or broken at random."""
    roll = rng.random()
    if roll < 0.45:  # a valid instant anywhere in 1600-2400, in the usual spelling
        seconds = rng.randrange(-11_676_096_000, 13_569_465_600)
        moment = datetime.fromtimestamp(0, UTC) + timedelta(seconds=seconds)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{rng.randrange(1000):03d}Z"
    if roll < 0.75:  # the usual spelling with one to three characters changed
        chars = list(f"{rng.randrange(1600, 2400):04d}-{rng.choice(['02', '04', '12', '13'])}-"
                     f"{rng.choice(['28', '29', '30', '31', '00'])}T23:59:59.999Z")  # fmt: skip
        for _ in range(rng.randint(0, 3)):
            chars[rng.randrange(24)] = rng.choice("0123456789" * 4 + ":-.+TtZz ,\u0663")
        return "".join(chars)
    return rng.choice(
        [
            None,
            True,
            1_764_000_000_000,
            -5,
            2**70,
            1.5e12,
            float("nan"),
            "2026-11-25T18:58:06Z",
            "2026-11-25T18:58:06.480123456+01:00",
            # the calendar's edges: leap years by 4, 100 and 400, months' last days
            *(f"{day}T12:00:00.000Z" for day in CALENDAR_EDGES),
            "2026-11-25 18:58:06.480z",
            "2026-11-25T18:58:06.480",
            "",
            {"at": 1},
            ["2026-11-25T18:58:06.480Z"],
        ]
    )


def test_native_facts_match_the_python_loop(native_facts: list[int]) -> None:
    """``veil._rowscan.facts`` against ``Normalizer._facts_in_python`` (the reference) over
    generated columns: ids of every JSON type and size, actors valid, odd, repeated and not
    strings, actor types of both kinds, and times valid and broken (including every date of a
    wide span of years, so the calendar arithmetic is checked)."""
    rng = random.Random("veil-native-facts")
    actors = ["Ann@Contoso.COM", "ann@contoso.com", "Åsa@contoso.com", "bad actor", "", "x" * 300]
    kinds = ["application", "APPLICATION", "Application\u3000", "user", "", "Service"]
    ids = ["a-1", "", 0, -(2**63), 2**63 - 1, True, 1.5, None, {}]
    beyond = [2**63, -(2**63) - 1, 10**30]  # beyond 64 bits: the row is unreadable (R2)
    n = 6000
    columns: list[list[Any]] = [
        [rng.choice(beyond if rng.random() < 0.03 else ids) for _ in range(n)],
        [rng.choice([*actors, None, 7, ["a"]]) for _ in range(n)],
        [rng.choice([*kinds, None, 3]) for _ in range(n)],
        [_time(rng) for _ in range(n)],
    ]
    unreadable = {rng.randrange(n) for _ in range(50)}
    native = Normalizer(FieldPointers(), frozenset({"application", "service"}))
    python = Normalizer(FieldPointers(), frozenset({"application", "service"}))
    got = native._facts(columns, unreadable)
    want = python._facts_in_python(columns, unreadable)
    assert native_facts == [n]
    assert got.ids == want.ids and got.actors == want.actors and got.kinds == want.kinds
    assert [RowFacts.ns(s) for s in got.stamps] == [RowFacts.ns(s) for s in want.stamps]
    assert sorted(got.unreadable) == sorted(want.unreadable)
    assert native._actors == python._actors and native._kinds == python._kinds
    # both outcomes, in quantity: the corpus reaches each branch
    assert sum(s is None for s in got.stamps) > 1000 and len(set(got.stamps)) > 2000
    assert len(got.unreadable) > len(unreadable) + 100  # ids beyond 64 bits were found
    assert {"application", "user"} == set(got.kinds) and None in got.actors


def test_native_facts_fail_as_their_callbacks_do(native_facts: list[int]) -> None:
    from veil import _rowscan

    def broken(_: str) -> str:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        _rowscan.facts([1], ["a"], ["k"], [None], {}, {}, broken, str, int, "user")
    with pytest.raises(ValueError, match="differ in length"):
        _rowscan.facts([1], [], [], [], {}, {}, str, str, int, "user")


@pytest.mark.usefixtures("native_built")
def test_native_matching_of_rows_to_windows_matches_the_python_loop() -> None:
    """``veil._rowscan.private_rows`` against ``match``'s loop (the reference) over generated
    facts and window tables: times as ints (in and beyond 64 bits) and datetimes, windows with
    int and float bounds, open-ended, empty, and pairs the table does not hold, with each of
    the shipped rules on or off."""
    from veil.policy import decide

    rng = random.Random("veil-native-match")
    base = 1_764_000_000_000_000_000
    actors = [f"u{n}@contoso.com" for n in range(12)]
    kinds = ["user", "application"]

    def bound() -> int | float:
        return rng.choice(
            [
                base + rng.randrange(-(10**12), 10**12),
                float(base + rng.randrange(-(10**12), 10**12)),
                2**63 - 1,
                -(2**63),
                2**70,
                float("inf"),
                float("-inf"),
            ]
        )

    table: dict[tuple[Any, str], Any] = {}
    for kind in kinds:
        for actor in actors[:9]:  # the last three are not cached
            windows = sorted((bound(), bound()) for _ in range(rng.randrange(3)))
            table[(kind, actor)] = tuple(windows)

    def stamp() -> Any:
        roll = rng.random()
        if roll < 0.1:
            return None
        if roll < 0.2:
            return datetime.fromtimestamp(base / 1e9, UTC) + timedelta(
                microseconds=rng.randrange(-(10**9), 10**9)
            )
        if roll < 0.25:
            return rng.choice([2**63 - 1, 2**64, -(2**63)])
        return base + rng.randrange(-(10**12), 10**12)

    n = 5000
    facts = (
        [rng.choice([*actors, None, None]) for _ in range(n)],
        [rng.choice(kinds) for _ in range(n)],
        [stamp() for _ in range(n)],
    )
    outcomes = set()
    for flags in [
        (True, True, True),
        (False, True, True),
        (True, False, True),
        (True, True, False),
    ]:
        got = decide.match(*facts, table, *flags)
        want = decide.match(*facts, table, *flags, native=False)
        assert got == want
        outcomes.add((len(got[0]), len(got[1])))
    private, waiting = decide.match(*facts, table, True, True, True)
    assert 1000 < len(private) < n - 1000 and len(waiting) > 500  # both outcomes, in quantity
    assert len(outcomes) == 4  # each rule changes the answer


@pytest.mark.usefixtures("native_built")
def test_native_joining_of_kept_rows_matches_the_python_join() -> None:
    """``veil._rowscan.join_rows`` against ``rows._join_in_python`` (the reference) over
    generated texts, spans and dropped rows: none, some, all, and indices beyond the rows; a
    text that is not ASCII is left to Python."""
    rng = random.Random("veil-native-join")
    for _ in range(300):
        text = "".join(rng.choice('{}[],:"ab 0\\') for _ in range(rng.randrange(200)))
        cuts = sorted(rng.randrange(len(text) + 1) for _ in range(2 * rng.randrange(12)))
        spans = list(itertools.pairwise(cuts))[::2]
        drop = {rng.randrange(len(spans) + 2) for _ in range(rng.randrange(len(spans) + 2))}
        joined = rows_module._join_rows(text, spans, drop)
        assert joined == rows_module._join_in_python(text, spans, drop)
        assert joined is not None and joined.isascii()
    assert rows_module._join_rows('[{"a": "é"}]', [(1, 11)], set()) is None
    with pytest.raises(ValueError, match="outside the text"):
        rows_module._join_rows("[{}]", [(1, 9)], set())


@pytest.mark.usefixtures("native_built")
def test_native_functions_read_their_lists_as_they_were_when_called() -> None:
    """A callback that empties the lists being read changes nothing read (no freed items are
    read: the C reads a copy of each list taken at the call)."""
    import gc

    from veil import _rowscan
    from veil.rows import timestamp_ns

    kinds, stamps = ["k" * 40 + "0", "k" * 40 + "1"], ["2026-11-25T18:58:06.480Z", None]

    def key_of(actor: str) -> str:
        kinds.clear()
        stamps.clear()
        gc.collect()
        return actor

    got = _rowscan.facts([1, 2], ["a", "b"], kinds, stamps, {}, {}, key_of, str, timestamp_ns, "u")
    assert got == (
        [1, 2],
        ["a", "b"],
        ["k" * 40 + "0", "k" * 40 + "1"],
        [timestamp_ns("2026-11-25T18:58:06.480Z"), None],
        [],
    )

    # the first time is not an int (to_ns is asked), the second a naive datetime
    actors, times = ["a", "b"], [5.0, datetime(2026, 1, 1)]

    def to_ns(stamp: Any) -> int:
        if isinstance(stamp, datetime):
            raise TypeError("a naive time has no instant")  # as stamp_ns's arithmetic
        actors.clear()
        times.clear()
        gc.collect()
        return 5

    table = {("user", "a"): ((0, 10),), ("user", "b"): ()}
    # the naive time is never converted: its actor has no windows (as in the Python loop)
    assert _rowscan.private_rows(
        actors, ["user", "user"], times, table, True, True, True, to_ns
    ) == ([0], [])
