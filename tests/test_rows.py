"""Reading the store's answer: row spans, pointers, normalization and timestamps."""

from __future__ import annotations

import json

import pytest

from veil.config import FieldPointers
from veil.errors import UpstreamBadBody
from veil.rows import Normalizer, parse_answer, pointer_tokens, render, timestamp_ns


def test_spans_cover_each_row_exactly() -> None:
    body = b'{"a": {"data": [9]}, "data" : [ {"id": 1} , "two",[3] , null ] }'
    answer = parse_answer(body, ("data",))
    assert answer.rows == [{"id": 1}, "two", [3], None]
    text = body.decode()
    assert [text[s:e] for s, e in answer.spans] == ['{"id": 1}', '"two"', "[3]", "null"]
    assert render(answer, {1, 3}) == '{"a": {"data": [9]}, "data" : [{"id": 1},[3]] }'
    assert render(answer, set()) == '{"a": {"data": [9]}, "data" : [{"id": 1},"two",[3],null] }'


def test_pointer_escapes_and_array_indexes() -> None:
    assert pointer_tokens("/a~1b/m~0n/0") == ("a/b", "m~n", "0")
    assert pointer_tokens("") == ()
    body = json.dumps({"a/b": [{"rows": [1]}, {"rows": [2, 3]}]}).encode()
    assert parse_answer(body, ("a/b", "1", "rows")).rows == [2, 3]


def test_top_level_array_and_empty_rows() -> None:
    assert parse_answer(b" [ ] ", ()).rows == []
    assert render(parse_answer(b"[1, 2]", ()), {0}) == "[2]"


@pytest.mark.parametrize("body", [b'{"data": [1,]}', b'{"data": [1] ', b'{"data" [1]}',
                                  b'{"data": [1], "data": [1]}', b"[1] [2]", b"nan"])
def test_malformed_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(UpstreamBadBody):
        parse_answer(body, ("data",) if body.startswith(b"{") else ())


def test_duplicate_member_off_the_path_is_harmless() -> None:
    assert parse_answer(b'{"x": 1, "x": 2, "data": []}', ("data",)).rows == []


@pytest.mark.parametrize("value,expected", [
    ("2024-01-01T00:00:00Z", 1704067200000000000),
    ("2024-01-01t00:00:00z", 1704067200000000000),
    ("2024-01-01 01:00:00+01:00", 1704067200000000000),
    ("2024-01-01T00:00:00.5Z", 1704067200500000000),
    ("2024-01-01T00:00:00.123456789Z", 1704067200123456789),
    ("2024-01-01T00:00:00.1234567-00:00", 1704067200123456700),
    (1704067200000, 1704067200000000000),
    (1704067200000.5, 1704067200000500000),
    ("2024-01-01T00:00:00", None),
    ("2024-01-01", None),
    ("1704067200000", None),
    (True, None),
    (None, None),
    (float("nan"), None),
    ({"t": 1}, None),
    ("2262-04-11T23:47:16.854775806Z", 9223372036854775806),
    ("2262-04-11T23:47:16.854775807Z", None),  # an open interval's end: not comparable
    ("2300-01-01T00:00:00Z", None),
    ("9999-12-31T23:59:59Z", None),
    (10**13, None),
    (-(10**13), None),
])
def test_timestamps(value: object, expected: int | None) -> None:
    assert timestamp_ns(value) == expected


def test_normalizer_reads_through_pointers() -> None:
    fields = FieldPointers(id="/meta/id", actor="/who/upn", actor_type="/who/kind",
                           timestamp="/at")
    normalizer = Normalizer(fields, frozenset({"ServicePrincipal"}))
    rows = [
        {"meta": {"id": "a"}, "who": {"upn": "Ann@Contoso.COM", "kind": "User"},
         "at": "2024-01-01T00:00:00Z"},
        {"meta": {"id": 7}, "who": {"upn": "app-1", "kind": "ServicePrincipal"}, "at": 0},
        {"meta": {"id": True}, "who": {"upn": "", "kind": ["weird"]}, "at": "x"},
        "not-a-row",
    ]
    out = normalizer.rows(rows, include_raw=True)
    assert out[0] == {"index": 0, "id": "a", "actor": "ann@contoso.com", "actor_type": "user",
                      "ts_ns": 1704067200000000000, "raw": rows[0]}
    assert (out[1]["id"], out[1]["actor"], out[1]["actor_type"]) == (7, "app-1", "application")
    assert (out[2]["id"], out[2]["actor"], out[2]["actor_type"], out[2]["ts_ns"]) == (
        None, None, "user", None)
    assert out[3]["actor"] is None and out[3]["ts_ns"] is None
    assert "raw" not in normalizer.rows(rows, include_raw=False)[0]


def test_repeated_keys_are_found_where_they_matter() -> None:
    from veil.rows import rows_with_repeated_keys

    body = (b'{"data": [{"user": "a", "user": "b"}, {"user": "a", "note": "\\"user\\""},'
            b' {"x": 1, "x": 2}, {"who": {"user": 1, "user" : 2}}, {"kind": "user"}]}')
    answer = parse_answer(body, ("data",))
    assert rows_with_repeated_keys(answer, [("user",)], everywhere=False) == {0, 3}
    assert rows_with_repeated_keys(answer, [("who", "user")], everywhere=False) == {0, 3}
    assert rows_with_repeated_keys(answer, [("user",)], everywhere=True) == {0, 2, 3}
    clean = parse_answer(b'[{"user": "a", "kind": "user"}, {"user": "b"}]', ())
    assert rows_with_repeated_keys(clean, [("user",), ("kind",)], everywhere=False) == set()
