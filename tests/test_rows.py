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
    # only the rows array comes back, in one layout, with each kept row as sent
    assert render(answer, {1, 3}) == '{"data":[{"id": 1},[3]]}'
    assert render(answer, set()) == '{"data":[{"id": 1},"two",[3],null]}'


def test_pointer_escapes_and_array_indexes() -> None:
    assert pointer_tokens("/a~1b/m~0n/0") == ("a/b", "m~n", "0")
    assert pointer_tokens("") == ()
    body = json.dumps({"a/b": [{"rows": [1]}, {"rows": [2, 3]}]}).encode()
    assert parse_answer(body, ("a/b", "1", "rows")).rows == [2, 3]


def test_top_level_array_and_empty_rows() -> None:
    assert parse_answer(b" [ ] ", ()).rows == []
    assert render(parse_answer(b"[1, 2]", ()), {0}) == "[2]"
    assert render(parse_answer(b" [ 1 ,\n 2 ] ", ()), ()) == "[1,2]"


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": [1,]}',
        b'{"data": [1] ',
        b'{"data" [1]}',
        b'{"data": [1], "data": [1]}',
        b"[1] [2]",
        b"nan",
    ],
)
def test_malformed_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(UpstreamBadBody):
        parse_answer(body, ("data",) if body.startswith(b"{") else ())


def test_duplicate_member_off_the_path_is_harmless() -> None:
    assert parse_answer(b'{"x": 1, "x": 2, "data": []}', ("data",)).rows == []


@pytest.mark.parametrize(
    "value,expected",
    [
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
    ],
)
def test_timestamps(value: object, expected: int | None) -> None:
    assert timestamp_ns(value) == expected


def test_normalizer_reads_through_pointers() -> None:
    fields = FieldPointers(id="/meta/id", actor="/who/upn", actor_type="/who/kind", timestamp="/at")
    normalizer = Normalizer(fields, frozenset({"ServicePrincipal"}))
    rows = [
        {
            "meta": {"id": "a"},
            "who": {"upn": "Ann@Contoso.COM", "kind": "User"},
            "at": "2024-01-01T00:00:00Z",
        },
        {"meta": {"id": 7}, "who": {"upn": "app-1", "kind": "ServicePrincipal"}, "at": 0},
        {"meta": {"id": True}, "who": {"upn": "", "kind": ["weird"]}, "at": "x"},
        "not-a-row",
    ]
    out = normalizer.rows(rows, include_raw=True)
    assert out[0] == {
        "index": 0,
        "id": "a",
        "actor": "ann@contoso.com",
        "actor_type": "user",
        "ts_ns": 1704067200000000000,
        "raw": rows[0],
    }
    assert (out[1]["id"], out[1]["actor"], out[1]["actor_type"]) == (7, "app-1", "application")
    assert (out[2]["id"], out[2]["actor"], out[2]["actor_type"], out[2]["ts_ns"]) == (
        None,
        None,
        "user",
        None,
    )
    assert out[3]["actor"] is None and out[3]["ts_ns"] is None
    assert "raw" not in normalizer.rows(rows, include_raw=False)[0]


def test_repeated_actors_and_types_are_read_alike_in_every_row() -> None:
    """Each distinct actor is keyed once per answer: every row still gets its own verdict."""
    from veil import principal

    normalizer = Normalizer(FieldPointers(), frozenset({"Application"}))
    names = [
        "Ann@Contoso.COM",
        "ann@contoso.com",
        "ann@contoso.com\u3000",
        "",
        "Åsa@Contoso.com",
        "A\u030asa@contoso.com",
        "bob@contoso.com",
        7,
        None,
    ]
    kinds = ["application", "APPLICATION", "User", "", 3, None, "application\u3000"]
    rows = [
        {
            "id": n,
            "user": names[n % len(names)],
            "actorType": kinds[n % len(kinds)],
            "timestamp": f"2024-01-01T00:00:{n % 60:02d}Z",
        }
        for n in range(3 * 63)
    ]
    out = normalizer.rows(rows, include_raw=False)
    for row, seen in zip(rows, out, strict=True):
        actor, kind = row["user"], row["actorType"]
        assert seen["actor"] == (principal.key(actor) if type(actor) is str else None)
        assert seen["actor_type"] == (
            "application" if kind in ("application", "APPLICATION") else "user"
        )
        assert seen["ts_ns"] == timestamp_ns(row["timestamp"])
    assert {r["actor"] for r in out} == {
        "ann@contoso.com",
        "åsa@contoso.com",
        "bob@contoso.com",
        None,
    }


def test_repeated_keys_are_found_where_they_matter() -> None:
    body = (
        b'{"data": [{"user": "a", "user": "b"}, {"user": "a", "note": "\\"user\\""},'
        b' {"x": 1, "x": 2}, {"who": {"user": 1, "user" : 2}}, {"kind": "user"}]}'
    )

    def unreadable(read: list[tuple[str, ...]] | None, raw: bool = False) -> set[int]:
        return set(parse_answer(body, ("data",), read=read, raw=raw).unreadable)

    assert unreadable([("user",)]) == {0}
    assert unreadable([("who", "user")]) == {3}
    assert unreadable([("who",)]) == set()  # "who" is not repeated; what it holds is read whole
    assert unreadable([("user",)], raw=True) == {0, 2, 3}
    assert unreadable(None) == {0, 2, 3}
    clean = parse_answer(
        b'[{"user": "a", "kind": "user"}, {"user": "b"}]', (), read=[("user",), ("kind",)]
    )
    assert clean.unreadable == frozenset()


@pytest.mark.parametrize(
    "row,repeated",
    [
        ('{"user": "a", "\\u0075ser": "b"}', True),  # R2: names compared after unescaping
        ('{"\\u0075\\u0073\\u0045r": "a", "usEr": "b"}', False),  # another name: usEr
        ('{"user" : "a", "user": "b"}', True),
        ('{"user":\n"a",\t"user"\r:"b"}', True),
        ('{"who": {"user": "a"}, "who": {"user": "b"}}', False),  # /user is not under "who"
        ('{"note": "\\":\\":\\":", "user": "a"}', False),  # '":' inside a string value
        ('{"user": "a", "x": {"y": 1, "y": 2}}', False),
        ('{"id": 1, "id": 2, "user": "a"}', True),  # the id is read too (the audit names it)
    ],
)
def test_repeated_key_verdict_per_row_on_decoded_names(row: str, repeated: bool) -> None:
    fine = '{"user": "z", "extra": 1}'
    body = ('{"data": [' + fine + ", " + row + ", " + fine + "]}").encode()
    read = [("id",), ("user",), ("actorType",), ("timestamp",)]
    answer = parse_answer(body, ("data",), read=read)
    assert answer.unreadable == (frozenset({1}) if repeated else frozenset())


def test_an_escaped_key_in_one_row_does_not_balance_a_repeat_in_another() -> None:
    """Counting literal key text over the array let one row's escaped key hide another row's
    repeated one: the verdict is per row."""
    body = b'{"data": [{"user": "a", "user": "b"}, {"\\u0075ser": "c"}, {"user": "d"}]}'
    answer = parse_answer(body, ("data",), read=[("user",)])
    assert answer.unreadable == frozenset({0})


@pytest.mark.parametrize(
    "row,unrepresentable",
    [
        ('{"user": "a", "note": "\\ud800"}', True),  # a lone high surrogate, anywhere
        ('{"user": "a", "deep": [{"x": "\\uDFFF"}]}', True),  # a lone low surrogate, nested
        ('{"user": "a", "\\udc00": 1}', True),  # in a member name
        ('{"user": "a", "emoji": "\\ud83d\\ude00"}', False),  # a valid pair
        ('{"user": "a", "path": "C:\\\\ud800"}', False),  # a backslash, then text
        ('{"user": "a", "x": NaN}', True),
        ('{"user": "a", "x": -Infinity}', True),
    ],
)
def test_values_veil_cannot_represent_make_a_row_unreadable(
    row: str, unrepresentable: bool
) -> None:
    body = ('[{"user": "z"}, ' + row + "]").encode()
    answer = parse_answer(body, (), read=[("user",)])
    assert answer.unreadable == (frozenset({1}) if unrepresentable else frozenset())
    assert answer.rows[0] == {"user": "z"}


def test_big_integers_are_unreadable_where_veil_reads_them() -> None:
    normalizer = Normalizer(FieldPointers(), frozenset({"application"}))
    big = 2**64 + 1
    body = (
        f'[{{"id": {big}, "user": "a@x", "timestamp": 0}},'
        f' {{"id": 1, "user": "b@x", "timestamp": 0, "amount": {big}}},'
        f' {{"id": {2**63 - 1}, "user": "c@x", "timestamp": 0}}]'
    ).encode()
    answer = parse_answer(body, (), read=normalizer.pointers)
    rows = normalizer.rows(answer.rows, include_raw=False, unreadable=answer.unreadable)
    assert [(r["id"], r["actor"]) for r in rows] == [(None, None), (1, "b@x"), (2**63 - 1, "c@x")]
    # a policy reading raw rows needs every integer representable (signed 64-bit)
    answer = parse_answer(body, (), read=normalizer.pointers, raw=True)
    assert answer.unreadable == frozenset({0, 1})
    rows = normalizer.rows(answer.rows, include_raw=True, unreadable=answer.unreadable)
    assert rows[1]["raw"] is None and rows[1]["actor"] is None
    assert rows[2]["raw"] == {"id": 2**63 - 1, "user": "c@x", "timestamp": 0}


def test_an_integer_of_more_digits_than_python_converts_is_one_unreadable_row() -> None:
    body = ('[{"user": "a"}, {"user": "b", "n": ' + "9" * 5000 + "}]").encode()
    answer = parse_answer(body, (), read=[("user",)])
    assert answer.unreadable == frozenset({1})
    assert render(answer, {1}) == '[{"user": "a"}]'


def test_rows_nested_too_deep_for_the_policy_are_unreadable_when_it_reads_raw() -> None:
    deep = "[" * 80 + "]" * 80
    body = ('[{"user": "a", "x": [[1]]}, {"user": "b", "x": ' + deep + "}]").encode()
    assert parse_answer(body, (), read=[("user",)]).unreadable == frozenset()
    assert parse_answer(body, (), read=[("user",)], raw=True).unreadable == frozenset({1})


def test_a_body_nested_deeper_than_veil_reads_is_a_bad_body() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for body in (b'{"data": [' + deep + b"]}", b'{"x": ' + deep + b', "data": []}', deep):
        with pytest.raises(UpstreamBadBody):
            parse_answer(body, ("data",))


def test_keep_returns_only_the_named_members_as_sent() -> None:
    body = (
        b'{"total": 7, "data": [{"id": 1}, {"id": 2}], "facets": {"user": ["x"]},'
        b' "next": {"cursor": "c\\u00e9", "n": 2}, "meta": {"page": 3, "debug": [1]}}'
    )
    answer = parse_answer(body, ("data",), keep=[("next",), ("meta", "page"), ("absent",)])
    assert render(answer, {0}) == (
        '{"data":[{"id": 2}],"next":{"cursor": "c\\u00e9", "n": 2},"meta":{"page":3}}'
    )
    nested = parse_answer(
        b'{"result": {"count": 2, "items": [1, 2], "next": "n"}, "x": 1}',
        ("result", "items"),
        keep=[("result", "next")],
    )
    assert render(nested, {1}) == '{"result":{"items":[1],"next":"n"}}'
    indexed = parse_answer(
        b'{"pages": [{"rows": [1]}, {"rows": [2], "total": 1}]}', ("pages", "1", "rows")
    )
    assert render(indexed, ()) == '{"pages":[null,{"rows":[2]}]}'
