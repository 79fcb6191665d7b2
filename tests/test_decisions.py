"""One decision suite, run on both engines: `embedded` (regorus in-process) and `opa` (an OPA
server, here tests/opa_server.py: OPA's REST API over OPA's own Go evaluator, reached with
opa-python-client; skipped locally when that evaluator is not installed).

The same inputs must give the same hidden and revealed rows (docs/rules.md: both policy
engines must give the same decisions on the same inputs): R1-R5, the built-in groups
`application` and `external`, case-insensitive UPNs and managed subdomains. Each case is
checked twice: through the Engine API on a data document built by Storage.policy_data, and end
to end through the Flask app with a real loopback store and a real SQLite file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask.testing import FlaskClient

from veil.app import create_app
from veil.policy import Decision, Engine, create_engine
from veil.storage import Storage, open_storage

from conftest import ADMIN, GRANTOR, POLICIES, LoopbackStore, activity, auth, ids, iso, make_config
from opa_server import FakeOpa

ENGINES = ["embedded", "opa"]
DOMAINS = ("contoso.com",)
SEC = 1_000_000_000
ANN = "ann@contoso.com"
BOB = "bob@contoso.com"
CAROL = "carol@contoso.com"


@pytest.fixture(scope="module")
def opa_server() -> Iterator[FakeOpa]:
    server = FakeOpa()
    yield server
    server.close()


@pytest.fixture(params=ENGINES)
def engine_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def opa_url(engine_kind: str, request: pytest.FixtureRequest) -> str:
    """The OPA server's URL for the ``opa`` engine (started only then), else ``""``."""
    if engine_kind != "opa":
        return ""
    server: FakeOpa = request.getfixturevalue("opa_server")
    server.reset()  # each test starts from an OPA that holds nothing
    return server.url


def policy_section(kind: str, opa_url: str) -> dict[str, Any]:
    if kind == "opa":
        return {"engine": "opa", "opa_url": opa_url, "timeout_s": 5}
    return {"engine": "embedded"}


# ---- through the Engine API ------------------------------------------------------------


@dataclass
class World:
    """A real SQLite store of Veil's state, and the engine under test fed from it."""

    storage: Storage
    engine: Engine
    rows: list[dict[str, Any]] = field(default_factory=list)

    def row(self, actor: str | None, ts_ns: int | None, actor_type: str = "user") -> int:
        index = len(self.rows)
        self.rows.append(
            {
                "index": index,
                "id": f"r{index}",
                "actor": actor,
                "actor_type": actor_type,
                "ts_ns": ts_ns,
            }
        )
        return index

    def decide(
        self, caller: str = BOB, session_id: str | None = None, now_ns: int | None = None
    ) -> Decision:
        session = self.storage.get_session(session_id) if session_id is not None else None
        self.engine.sync(self.storage.state_version(), lambda: self.storage.policy_data(DOMAINS))
        document = {
            "caller": caller,
            "request": {"method": "GET", "path": "/api/activities", "query": ""},
            "reveal_session_id": session_id,
            "session": session,
            "now_ns": time.time_ns() if now_ns is None else now_ns,
            "rows": self.rows,
        }
        decision = Decision.read(self.engine.evaluate(orjson.dumps(document)), len(self.rows))
        assert not decision.failed, "the engine gave no well-formed decision"
        return decision

    def private_now(self, group: str) -> int:
        """Make ``group`` private; the instant just after its interval starts."""
        self.storage.add_privacy_group(group, ADMIN)
        return time.time_ns() + 1

    def public_now(self, group: str) -> int:
        self.storage.remove_privacy_group(group, ADMIN)
        return time.time_ns() + 1


@pytest.fixture
def world(engine_kind: str, opa_url: str, tmp_path: Path) -> Iterator[World]:
    storage = open_storage(f"sqlite:///{tmp_path / 'veil.db'}", 5.0, [ADMIN, GRANTOR])
    engine = create_engine(engine_kind, POLICIES, opa_url, 5.0)
    yield World(storage, engine)
    engine.close()
    storage.close()


def test_r1_forward_only(world: World) -> None:
    """Private iff in a group that was private at the row's time: not before the group was
    added, not between its intervals, not after it ended; non-members never."""
    world.storage.put_group("finance", "Finance", [ANN], ADMIN)
    before = time.time_ns()
    during_first = world.private_now("finance")
    between = world.public_now("finance")
    during_second = world.private_now("finance")
    rows = [
        world.row(ANN, before),
        world.row(ANN, during_first),
        world.row(ANN, between),
        world.row(ANN, during_second),
        world.row(CAROL, during_second),
        world.row(ANN, during_second + 3600 * SEC),
    ]
    assert world.decide().private == frozenset({rows[1], rows[3], rows[5]})


def test_r1_a_member_who_leaves_stays_private_for_the_time_they_were_in(world: World) -> None:
    """Replacing a private group's members never exposes what was private: who left stays in
    the group up to the moment they left; who joined counts for the whole interval."""
    world.storage.put_group("finance", "Finance", [ANN], ADMIN)
    during = world.private_now("finance")
    world.storage.put_group("finance", "Finance", [CAROL], ADMIN)
    after = time.time_ns() + 1
    ann_while_member = world.row(ANN, during)
    world.row(ANN, after)
    carol = world.row(CAROL, during)
    assert world.decide().private == frozenset({ann_while_member, carol})


def test_r2_unreadable_actor_or_timestamp_is_private(world: World) -> None:
    now = time.time_ns()
    no_actor = world.row(None, now)
    no_time = world.row(BOB, None)
    world.row(BOB, now)
    app_without_time = world.row("app-1", None, "application")
    assert world.decide().private == frozenset({no_actor, no_time, app_without_time})


def test_nothing_private_when_no_group_is(world: World) -> None:
    world.storage.put_group("finance", "Finance", [ANN], ADMIN)
    world.row(ANN, time.time_ns())
    world.row("svc-backup", time.time_ns(), "application")
    world.row("guest@fabrikam.com", time.time_ns())
    assert world.decide().private == frozenset()


def test_builtin_application_group(world: World) -> None:
    before = time.time_ns()
    during = world.private_now("application")
    world.row("svc-backup", before, "application")
    app_row = world.row("svc-backup", during, "application")
    world.row(ANN, during)
    assert world.decide().private == frozenset({app_row})


def test_builtin_external_group_and_managed_subdomains(world: World) -> None:
    """External: a user whose domain is neither a managed domain nor a subdomain of one."""
    before = time.time_ns()
    during = world.private_now("external")
    world.row(ANN, during)
    world.row("dave@eu.contoso.com", during)
    world.row("erin@deep.eu.contoso.com", during)
    guest = world.row("guest@fabrikam.com", during)
    lookalike = world.row("mallory@contoso.com.evil.io", during)
    suffix_only = world.row("trudy@notcontoso.com", during)
    world.row("guest@fabrikam.com", before)
    world.row("svc-backup", during, "application")
    assert world.decide().private == frozenset({guest, lookalike, suffix_only})


def test_group_members_are_compared_case_insensitively(world: World) -> None:
    world.storage.put_group("finance", "Finance", ["Ann@Contoso.COM"], ADMIN)
    during = world.private_now("finance")
    ann = world.row(ANN, during)  # actors reach the policy lower-cased (rows.Normalizer)
    assert world.decide().private == frozenset({ann})


def test_r3_hidden_for_admins_without_a_session(world: World) -> None:
    world.storage.put_group("finance", "Finance", [ANN], ADMIN)
    ann = world.row(ANN, world.private_now("finance"))
    world.storage.grant_viewer(ADMIN, GRANTOR)
    decision = world.decide(caller=ADMIN)
    assert decision.private == frozenset({ann})
    assert decision.reveal is False


@pytest.fixture
def revealing(world: World) -> tuple[World, str, int]:
    """ann's row is private; the admin holds the permission and a live session."""
    world.storage.put_group("finance", "Finance", [ANN], ADMIN)
    ann = world.row(ANN, world.private_now("finance"))
    world.row(BOB, time.time_ns())
    world.storage.grant_viewer(ADMIN, GRANTOR)
    session = world.storage.open_session(ADMIN, "case INC-42", 900)
    return world, session["id"], ann


def test_r4_reveal_with_a_live_session_of_an_admin_with_the_permission(
    revealing: tuple[World, str, int],
) -> None:
    world, session_id, ann = revealing
    decision = world.decide(caller=ADMIN, session_id=session_id)
    assert decision.reveal is True
    assert decision.refusals == ()
    assert decision.private == frozenset({ann})  # what the reveal shows, and what it audits


@pytest.mark.parametrize(
    "change,caller,reason",
    [
        (lambda w, s: None, CAROL, "the reveal session belongs to another principal"),
        (lambda w, s: w.storage.end_session(s, ADMIN, True), ADMIN, "the reveal session has ended"),
        (
            lambda w, s: w.storage.revoke_viewer(ADMIN, ADMIN),
            ADMIN,
            "the caller does not hold the view-private permission",
        ),
    ],
    ids=["not-the-owner", "ended", "permission-revoked"],
)
def test_r4_r5_reveal_refused(
    revealing: tuple[World, str, int],
    change: Callable[[World, str], None],
    caller: str,
    reason: str,
) -> None:
    world, session_id, ann = revealing
    change(world, session_id)
    decision = world.decide(caller=caller, session_id=session_id)
    assert decision.reveal is False
    assert reason in decision.refusals
    assert decision.private == frozenset({ann})


def test_r4_r5_admin_role_removed_ends_the_reveal(world: World) -> None:
    world.storage.add_admin(CAROL, ADMIN)
    world.storage.grant_viewer(CAROL, ADMIN)
    session = world.storage.open_session(CAROL, "case INC-7", 900)
    world.storage.remove_admin(CAROL, ADMIN)
    decision = world.decide(caller=CAROL, session_id=session["id"])
    assert decision.reveal is False
    assert {
        "the caller is not an admin",
        "the reveal session has ended",
        "the caller does not hold the view-private permission",
    } <= set(decision.refusals)


def test_r5_session_expires(revealing: tuple[World, str, int]) -> None:
    world, session_id, _ = revealing
    decision = world.decide(caller=ADMIN, session_id=session_id, now_ns=time.time_ns() + 901 * SEC)
    assert decision.reveal is False
    assert "the reveal session has expired" in decision.refusals


def test_r4_unknown_session(world: World) -> None:
    world.storage.grant_viewer(ADMIN, GRANTOR)
    decision = world.decide(caller=ADMIN, session_id="rs_unknown")
    assert decision.reveal is False
    assert "the reveal session does not exist" in decision.refusals


# ---- end to end, through the app ---------------------------------------------------------


@pytest.fixture
def veil(
    engine_kind: str, opa_url: str, store: LoopbackStore, tmp_path: Path
) -> Iterator[FlaskClient]:
    app = create_app(
        make_config(
            store.url,
            f"sqlite:///{tmp_path / 'veil.db'}",
            policy=policy_section(engine_kind, opa_url),
        )
    )
    services = app.extensions["veil"]
    assert services.engine.name == engine_kind
    yield app.test_client()
    services.engine.close()
    services.storage.close()


A = auth(ADMIN)


def api(
    client: FlaskClient,
    method: str,
    path: str,
    body: Any = None,
    status: int | tuple[int, ...] = (200, 201, 204),
) -> Any:
    response = client.open(path, method=method, json=body, headers=A)
    expected = (status,) if isinstance(status, int) else status
    assert response.status_code in expected, response.get_json()
    return response.get_json(silent=True)


def test_end_to_end_hidden_rows(veil: FlaskClient, store: LoopbackStore) -> None:
    """R1, R2, built-in groups, case-insensitive UPNs and subdomains in one answer."""
    before = time.time_ns() - 60 * SEC
    api(veil, "PUT", "/veil/v1/groups/finance", {"name": "Finance", "members": ["Ann@Contoso.COM"]})
    for group in ("finance", "external", "application"):
        api(veil, "POST", "/veil/v1/privacy-groups", {"group": group}, 201)
    later = iso(time.time_ns() + 60 * SEC)
    store.state.rows = [
        activity(1, "ANN@contoso.com", later),  # finance, any case: private
        activity(2, BOB, later),  # managed, no private group
        activity(3, "dave@eu.contoso.com", later),  # managed subdomain
        activity(4, "guest@fabrikam.com", later),  # external: private
        activity(5, "guest@fabrikam.com", iso(before)),  # external, before it was private
        activity(6, "svc-backup", later, "application"),  # application: private
        activity(7, "mallory@contoso.com.evil.io", later),  # look-alike domain: external
        activity(8, None, later),  # R2: no actor
        activity(9, BOB, "yesterday"),  # R2: unreadable timestamp
        activity(10, "Ann@Contoso.com", iso(before)),  # before finance was private
    ]
    response = veil.get("/api/activities", headers=auth(BOB))
    assert response.status_code == 200
    assert ids(response) == ["act-2", "act-3", "act-5", "act-10"]
    admin_view = veil.get("/api/activities", headers=A)  # R3: admins too
    assert ids(admin_view) == ["act-2", "act-3", "act-5", "act-10"]


def test_end_to_end_reveal(veil: FlaskClient, store: LoopbackStore) -> None:
    """R4/R5: only the owner's live session, while admin with the permission, reveals."""
    api(veil, "PUT", "/veil/v1/groups/finance", {"name": "Finance", "members": [ANN]})
    api(veil, "POST", "/veil/v1/privacy-groups", {"group": "finance"}, 201)
    later = iso(time.time_ns() + 60 * SEC)
    store.state.rows = [activity(1, ANN, later), activity(2, BOB, later)]
    api(veil, "POST", "/veil/v1/admins", {"principal": CAROL}, 201)
    api(veil, "POST", "/veil/v1/private-viewers", {"principal": CAROL}, 201)
    opened = veil.post(
        "/veil/v1/reveal-sessions",
        json={"acknowledge_audit": True, "justification": "case INC-42"},
        headers=auth(CAROL),
    )
    assert opened.status_code == 201, opened.get_json()
    session = {"Veil-Reveal-Session": opened.get_json()["id"]}

    revealed = veil.get("/api/activities", headers={**auth(CAROL), **session})
    assert revealed.status_code == 200
    assert ids(revealed) == ["act-1", "act-2"]
    stolen = veil.get("/api/activities", headers={**A, **session})
    assert stolen.status_code == 403
    assert "belongs to another principal" in stolen.get_json()["detail"]
    assert ids(veil.get("/api/activities", headers=auth(CAROL))) == ["act-2"]  # no session

    api(veil, "DELETE", f"/veil/v1/private-viewers/{CAROL}")
    refused = veil.get("/api/activities", headers={**auth(CAROL), **session})
    assert refused.status_code == 403
    assert "data" not in (refused.get_json() or {})
    records = api(veil, "GET", "/veil/v1/governance-log?action=activities_revealed")["records"]
    assert [r["details"]["ids"] for r in records] == [["act-1"]]
