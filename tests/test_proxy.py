"""Proxied queries: R1-R3, built-in groups, case-insensitivity and upstream faults, end to end
through a real loopback store and a real SQLite file."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from flask.testing import FlaskClient

from conftest import ADMIN, LoopbackStore, activity, auth, ids, iso

USER = "bob@contoso.com"
SEC = 1_000_000_000


def make_private(client: FlaskClient, group: str, members: list[str] | None = None) -> None:
    if members is not None:
        r = client.put(
            f"/veil/v1/groups/{group}",
            json={"name": group, "members": members},
            headers=auth(ADMIN),
        )
        assert r.status_code in (200, 201), r.get_json()
    r = client.post("/veil/v1/privacy-groups", json={"group": group}, headers=auth(ADMIN))
    assert r.status_code == 201, r.get_json()


def end_private(client: FlaskClient, group: str) -> None:
    r = client.delete(f"/veil/v1/privacy-groups/{group}", headers=auth(ADMIN))
    assert r.status_code == 204, r.get_json()


def test_rows_pass_through_when_nothing_is_private(
    client: FlaskClient, store: LoopbackStore
) -> None:
    now = time.time_ns()
    store.state.rows = [activity(1, "ann@contoso.com", iso(now)), activity(2, USER, iso(now))]
    r = client.get("/api/activities?limit=5&user=x", headers=auth(USER))
    assert r.status_code == 200
    assert ids(r) == ["act-1", "act-2"]
    assert store.state.requests[-1]["query"] == "limit=5&user=x"


@pytest.mark.storage
def test_forward_only_add_remove_add(client: FlaskClient, store: LoopbackStore) -> None:
    """R1: only activities inside a privacy interval are private; before, between and after
    the intervals they stay visible."""
    ann = "ann@contoso.com"
    before = time.time_ns() - 60 * SEC
    client.put(
        "/veil/v1/groups/finance", json={"name": "Finance", "members": [ann]}, headers=auth(ADMIN)
    )
    make_private(client, "finance")
    during_first = time.time_ns() + 1
    time.sleep(0.01)
    end_private(client, "finance")
    between = time.time_ns() + 1
    time.sleep(0.01)
    make_private(client, "finance")
    during_second = time.time_ns() + 1
    store.state.rows = [
        activity(1, ann, iso(before)),
        activity(2, ann, iso(during_first)),
        activity(3, ann, iso(between)),
        activity(4, ann, iso(during_second)),
        activity(5, "carl@contoso.com", iso(during_second)),
    ]
    assert ids(client.get("/api/activities", headers=auth(USER))) == ["act-1", "act-3", "act-5"]
    end_private(client, "finance")
    after = time.time_ns() + 1
    store.state.rows.append(activity(6, ann, iso(after)))
    assert ids(client.get("/api/activities", headers=auth(USER))) == [
        "act-1",
        "act-3",
        "act-5",
        "act-6",
    ]


def test_private_rows_hidden_from_admins_too(client: FlaskClient, store: LoopbackStore) -> None:
    """R3: hidden by default, for every caller, admins included."""
    make_private(client, "finance", ["ann@contoso.com"])
    store.state.rows = [
        activity(1, "ann@contoso.com", iso(time.time_ns() + SEC)),
        activity(2, USER, iso(time.time_ns())),
    ]
    for caller in (USER, ADMIN):
        assert ids(client.get("/api/activities", headers=auth(caller))) == ["act-2"]


@pytest.mark.parametrize(
    "row",
    [
        {"id": "r", "actorType": "user", "timestamp": "2024-01-01T00:00:00Z"},  # no actor
        {"id": "r", "user": "", "actorType": "user", "timestamp": "2024-01-01T00:00:00Z"},
        {"id": "r", "user": 42, "actorType": "user", "timestamp": "2024-01-01T00:00:00Z"},
        {"id": "r", "user": "x@contoso.com", "actorType": "user"},  # no timestamp
        {
            "id": "r",
            "user": "x@contoso.com",
            "actorType": "user",
            "timestamp": "2024-01-01T00:00:00.123456",
        },  # parsed, then refused: no offset
        {"id": "r", "user": "x@contoso.com", "actorType": "user", "timestamp": 10**20},
        "not an object",
    ],
    ids=[
        "no-actor",
        "empty-actor",
        "numeric-actor",
        "no-timestamp",
        "timestamp-without-offset",
        "beyond-int64",
        "not-an-object",
    ],
)
def test_unreadable_rows_are_private(client: FlaskClient, store: LoopbackStore, row: Any) -> None:
    """R2: a row whose actor or timestamp cannot be read is private (which timestamps cannot
    be read: tests/test_rows.py::test_timestamps)."""
    ok = activity(1, USER, "2024-01-01T00:00:00Z")
    store.state.rows = [ok, row]  # row: any JSON value, as a store may send
    body = client.get("/api/activities", headers=auth(USER)).get_json()
    assert body["data"] == [ok]


def test_epoch_millisecond_timestamps_are_read(client: FlaskClient, store: LoopbackStore) -> None:
    make_private(client, "finance", ["ann@contoso.com"])
    later_ms = time.time_ns() // 1_000_000 + 5_000
    earlier_ms = time.time_ns() // 1_000_000 - 5_000
    store.state.rows = [
        activity(1, "ann@contoso.com", later_ms),
        activity(2, "ann@contoso.com", earlier_ms),
    ]
    assert ids(client.get("/api/activities", headers=auth(USER))) == ["act-2"]


@pytest.mark.storage
def test_members_and_actors_compare_case_insensitively(
    client: FlaskClient, store: LoopbackStore
) -> None:
    make_private(client, "finance", ["Ann.Lee@Contoso.COM"])
    later = iso(time.time_ns() + SEC)
    store.state.rows = [
        activity(1, "ANN.LEE@contoso.com", later),
        activity(2, " ann.lee@CONTOSO.com ", later),
        activity(3, "ann.lees@contoso.com", later),
    ]
    assert ids(client.get("/api/activities", headers=auth(USER))) == ["act-3"]


def test_application_group(client: FlaskClient, store: LoopbackStore) -> None:
    make_private(client, "application")
    later = iso(time.time_ns() + SEC)
    store.state.rows = [
        activity(1, "4f1b-app-id", later, actor_type="application"),
        activity(2, USER, later),
    ]
    assert ids(client.get("/api/activities", headers=auth(USER))) == ["act-2"]


def test_external_group_and_managed_subdomains(client: FlaskClient, store: LoopbackStore) -> None:
    make_private(client, "external")
    later = iso(time.time_ns() + SEC)
    store.state.rows = [
        activity(1, "guest@fabrikam.com", later),
        activity(2, "dana@eu.contoso.com", later),
        activity(3, "eve@notcontoso.com", later),
        activity(4, "carl@CONTOSO.com", later),
        activity(5, "svc-app", later, actor_type="application"),
    ]
    assert ids(client.get("/api/activities", headers=auth(USER))) == ["act-2", "act-4", "act-5"]


def test_kept_rows_are_byte_for_byte(store: LoopbackStore, storage_url: str) -> None:
    from veil.app import create_app

    from conftest import make_config

    app = create_app(make_config(store.url, storage_url, upstream={"keep": ["/next"]}))
    client = app.test_client()
    make_private(client, "finance", ["ann@contoso.com"])
    later = iso(time.time_ns() + SEC)
    kept = (
        '{ "id":"k1",  "user":"carl@contoso.com","actorType":"user",'
        f'"timestamp":"{later}", "amount": 1.50, "big": 123456789012345678901234567890,'
        ' "note":"caf\\u00e9 \u2603"}'
    )
    hidden = f'{{"id":"h1","user":"ann@contoso.com","actorType":"user","timestamp":"{later}"}}'
    store.state.body = (
        f'{{"meta": {{"page": 1}},\n "data": [\n  {kept},\n  {hidden}\n ], "next": null}}'
    ).encode()
    r = client.get("/api/activities", headers=auth(USER))
    assert r.status_code == 200
    # the rows array in one layout, each kept row as sent, and only the kept member beside it
    assert r.data == ('{"data":[' + kept + '],"next":null}').encode()


def test_answer_layout_is_the_same_with_or_without_hidden_rows(
    client: FlaskClient, store: LoopbackStore
) -> None:
    """R9 (layout oracle): the store's whitespace between rows never comes back, so an answer
    from which a row was removed looks like one from which nothing was."""
    make_private(client, "finance", ["ann@contoso.com"])
    later = iso(time.time_ns() + SEC)
    rows = [
        activity(1, USER, later),
        activity(2, "ann@contoso.com", later),
        activity(3, "carl@contoso.com", later),
    ]
    store.state.body = json.dumps({"data": rows}, indent=2).encode()
    hidden = client.get("/api/activities", headers=auth(USER))
    store.state.body = json.dumps({"data": [rows[0], rows[2]]}, indent=2).encode()
    plain = client.get("/api/activities", headers=auth(USER))
    assert hidden.status_code == plain.status_code == 200
    assert hidden.data == plain.data
    assert ids(plain) == ["act-1", "act-3"]
    store.state.body = (
        b'{"data" : [ {"id":"1","user":"a@contoso.com","actorType":"user",'
        b'"timestamp":"2024-01-01T00:00:00Z"} ] }'
    )
    r = client.get("/api/activities", headers=auth(USER))
    assert r.data == (
        b'{"data":[{"id":"1","user":"a@contoso.com","actorType":"user",'
        b'"timestamp":"2024-01-01T00:00:00Z"}]}'
    )


def test_unlisted_path_is_404(client: FlaskClient, store: LoopbackStore) -> None:
    r = client.get("/api/unlisted", headers=auth(USER))
    assert r.status_code == 404
    assert r.mimetype == "application/problem+json"
    assert store.state.requests == []


def test_only_configured_headers_are_forwarded(client: FlaskClient, store: LoopbackStore) -> None:
    client.get("/api/activities", headers={**auth(USER), "X-Secret": "no"})
    sent = store.state.requests[-1]["headers"]
    assert sent["Authorization"].startswith("Bearer ")
    assert "X-Secret" not in sent


def test_no_hidden_row_count_leaks(client: FlaskClient, store: LoopbackStore) -> None:
    """R9: the answer to a caller who cannot reveal says nothing about hidden rows."""
    make_private(client, "finance", ["ann@contoso.com"])
    later = iso(time.time_ns() + SEC)
    store.state.rows = [activity(1, "ann@contoso.com", later), activity(2, USER, later)]
    hidden = client.get("/api/activities", headers=auth(USER))
    store.state.rows = [activity(2, USER, later)]
    plain = client.get("/api/activities", headers=auth(USER))
    assert hidden.data == plain.data
    assert dict(hidden.headers) == dict(plain.headers)


# ---- upstream faults ----------------------------------------------------------------------


def test_store_down_is_502(store: LoopbackStore, storage_url: str) -> None:
    from veil.app import create_app

    from conftest import make_config

    app = create_app(make_config("http://127.0.0.1:9", storage_url))
    r = app.test_client().get("/api/activities", headers=auth(USER))
    assert r.status_code == 502
    assert r.get_json()["code"] == "upstream_unavailable"


def test_slow_store_is_504(client: FlaskClient, store: LoopbackStore) -> None:
    store.state.rows = [activity(1, None, "2024-01-01T00:00:00Z")]
    store.state.delay_s = 3  # the test config's timeout is 2 s
    r = client.get("/api/activities", headers=auth(USER))
    assert r.status_code == 504
    assert r.get_json()["code"] == "upstream_timeout"
    assert b"act-1" not in r.data


@pytest.mark.parametrize(
    "body",
    [
        b"<html>oops</html>",
        b'{"data": {"not": "a list"}}',
        b'{"rows": []}',
        b'{"data": [1], "data": [2]}',
        b'{"data": [1]} trailing',
        b"\xff\xfe",
        b"",
    ],
    ids=["html", "object", "missing", "duplicate-member", "trailing", "not-utf8", "empty"],
)
def test_store_body_of_wrong_shape_is_502(
    client: FlaskClient, store: LoopbackStore, body: bytes
) -> None:
    store.state.body = body
    r = client.get("/api/activities", headers=auth(USER))
    assert r.status_code == 502
    assert r.get_json()["code"] in ("upstream_bad_body", "upstream_no_rows")


def test_store_error_answer_with_rows_is_filtered(
    client: FlaskClient, store: LoopbackStore
) -> None:
    store.state.status = 206
    store.state.rows = [
        activity(1, None, "2024-01-01T00:00:00Z"),
        activity(2, USER, "2024-01-01T00:00:00Z"),
    ]
    r = client.get("/api/activities", headers=auth(USER))
    assert r.status_code == 206
    assert ids(r) == ["act-2"]


@pytest.mark.storage
def test_changes_take_effect_on_next_query_without_restart(
    client: FlaskClient, store: LoopbackStore
) -> None:
    later = iso(time.time_ns() + 60 * SEC)
    store.state.rows = [activity(1, "ann@contoso.com", later)]
    assert ids(client.get("/api/activities", headers=auth(USER))) == ["act-1"]
    make_private(client, "finance", ["ann@contoso.com"])
    assert ids(client.get("/api/activities", headers=auth(USER))) == []
    client.put(
        "/veil/v1/groups/finance", json={"name": "Finance", "members": []}, headers=auth(ADMIN)
    )
    assert ids(client.get("/api/activities", headers=auth(USER))) == ["act-1"]


@pytest.mark.parametrize(
    "row",
    [
        '{{"id":"r","user":"ann@contoso.com","user":"zed@contoso.com","actorType":"user",'
        '"timestamp":"{ts}"}}',
        '{{"id":"r","user":"zed@contoso.com","actorType":"user","timestamp":"{ts}",'
        '"timestamp":"2000-01-01T00:00:00Z"}}',
    ],
    ids=["repeated-actor", "repeated-timestamp"],
)
def test_rows_with_repeated_field_keys_are_private(
    client: FlaskClient, store: LoopbackStore, row: str
) -> None:
    """A reader keeping the first of two equal keys would see another actor or time: such a
    row cannot be read with certainty, so it is private (R2)."""
    make_private(client, "finance", ["ann@contoso.com"])
    later = iso(time.time_ns() + SEC)
    ok = json.dumps(activity(2, USER, later))
    store.state.body = ('{"data": [' + row.format(ts=later) + "," + ok + "]}").encode()
    assert ids(client.get("/api/activities", headers=auth(USER))) == ["act-2"]


@pytest.mark.storage
def test_replacing_members_never_exposes_what_was_private(
    client: FlaskClient, store: LoopbackStore
) -> None:
    """R1 judges the group as it was at each row's time: who leaves a private group keeps
    the activities of their time in it private; their later ones are visible."""
    make_private(client, "finance", ["ann@contoso.com", "bob@contoso.com"])
    while_member = time.time_ns() + 1
    time.sleep(0.01)
    r = client.put(
        "/veil/v1/groups/finance",
        json={"name": "Finance", "members": ["bob@contoso.com"]},
        headers=auth(ADMIN),
    )
    assert r.status_code == 200
    after = time.time_ns() + SEC
    store.state.rows = [
        activity(1, "ann@contoso.com", iso(while_member)),
        activity(2, "ann@contoso.com", iso(after)),
    ]
    assert ids(client.get("/api/activities", headers=auth(USER))) == ["act-2"]
    record = client.get(
        "/veil/v1/governance-log?action=group_imported", headers=auth(ADMIN)
    ).get_json()["records"][-1]
    assert record["details"]["removed"] == 1


def test_metrics_label_each_configured_route_and_no_free_path(
    client: FlaskClient, store: LoopbackStore
) -> None:
    store.state.rows = [activity(1, USER, iso(time.time_ns()))]
    for path in (
        "/api/activities",
        "/api/activities",
        "/api/other",
        "/api/unlisted",
        "/api/x-secret-name",
    ):
        client.get(path, headers=auth(USER))
    text = client.get("/metrics").data.decode()
    assert 'veil_requests_total{route="/api/activities",status="200"} 2.0' in text
    assert 'veil_requests_total{route="/api/other",status="200"} 1.0' in text
    assert 'veil_requests_total{route="unmatched",status="404"} 2.0' in text
    assert "<path:path>" not in text and "x-secret-name" not in text
