"""The demo activity store: a small Flask app that answers activity queries with synthetic rows.

The activities are a pure function of ``(seed, minute)``: each minute of the store's history has
its own random generator, so every answer is reproducible, paging is stable, and new activities
keep appearing as time passes (a minute's rows are served once their timestamps are past).

The organisation is Contoso: employees in departments at contoso.com and eu.contoso.com,
service applications (actor type ``application``, actor = app id) and external guests.

    GET /api/activities          rows, newest first: {"data": [...], "next": cursor | null}
        since, until             RFC 3339; since inclusive, until exclusive (default: now)
        user, activity           exact match (user case-insensitive)
        department               the actor's department in the directory (e.g. hr)
        limit                    1..5000, default 100
        cursor                   the "next" of the previous page (same filters)
    GET /api/directory/groups    the departments and their members, to import into Veil
    GET /api/directory/users     every actor: id, kind, name, department
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask, Response, jsonify, request

DEFAULT_LIMIT = 100
MAX_LIMIT = 5000
MINUTE_NS = 60_000_000_000
MS_NS = 1_000_000
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # odd: multiplying by it is a bijection on 64-bit ints

DOMAIN = "contoso.com"
EU_DOMAIN = "eu.contoso.com"

# department id -> (display name, share of the employees)
DEPARTMENTS: dict[str, tuple[str, float]] = {
    "engineering": ("Engineering", 0.28),
    "sales": ("Sales", 0.18),
    "marketing": ("Marketing", 0.10),
    "finance": ("Finance", 0.10),
    "hr": ("Human Resources", 0.09),
    "it": ("IT and Security", 0.09),
    "operations": ("Operations", 0.09),
    "legal": ("Legal", 0.07),
}

# Fixed people the walk-through names: the security admin and a plain user.
PERSONAS = (("alice@contoso.com", "Alice Martin", "it"), ("bob@contoso.com", "Bob Jensen", "sales"))

FIRST_NAMES = (
    "adam",
    "amara",
    "ana",
    "andrei",
    "anna",
    "arjun",
    "beatriz",
    "carlos",
    "chen",
    "chloe",
    "daniel",
    "david",
    "diana",
    "elena",
    "emeka",
    "emma",
    "fatima",
    "felix",
    "grace",
    "hana",
    "hugo",
    "ines",
    "isaac",
    "james",
    "jana",
    "julia",
    "kenji",
    "lars",
    "laura",
    "leila",
    "liam",
    "lucas",
    "maria",
    "mateo",
    "mei",
    "mia",
    "nadia",
    "noah",
    "olga",
    "omar",
    "paula",
    "priya",
    "rafael",
    "rosa",
    "sara",
    "sofia",
    "tomas",
    "yara",
    "yusuf",
    "zoe",
)
LAST_NAMES = (
    "abbott",
    "alvarez",
    "bauer",
    "berg",
    "costa",
    "dubois",
    "eriksen",
    "fischer",
    "garcia",
    "haddad",
    "ivanova",
    "jansen",
    "kaur",
    "keller",
    "kowalski",
    "lee",
    "lindqvist",
    "moreau",
    "mueller",
    "nakamura",
    "novak",
    "obi",
    "okafor",
    "patel",
    "petrov",
    "quinn",
    "rossi",
    "santos",
    "schmidt",
    "silva",
    "singh",
    "tanaka",
    "torres",
    "vargas",
    "visser",
    "wagner",
    "weber",
    "wong",
    "yilmaz",
    "zhang",
)
GUEST_DOMAINS = ("fabrikam.com", "northwindtraders.com", "adatum.com", "woodgrovebank.com")

# (display name, activities it performs)
APPLICATIONS = (
    ("Contoso Backup", ("FileSyncDownloadedFull", "MailItemsAccessed")),
    ("Workday HR Sync", ("Update user.", "Add user.")),
    ("Payroll Connector", ("FileAccessed", "FileUploaded")),
    ("DLP Scanner", ("FileAccessed", "FileAccessed", "MailItemsAccessed")),
    ("Power Automate flows", ("Send", "FileModified")),
    ("Dynamics CRM Integration", ("MailItemsAccessed", "Send")),
)

# (activity, weight) of what people do; each activity belongs to one workload
USER_ACTIVITIES = (
    ("FileAccessed", 30),
    ("MailItemsAccessed", 20),
    ("FileDownloaded", 10),
    ("MessageSent", 10),
    ("FileModified", 8),
    ("Send", 8),
    ("UserLoggedIn", 8),
    ("FilePreviewed", 6),
    ("FileUploaded", 4),
    ("SearchQueryPerformed", 3),
    ("SharingSet", 2),
    ("MeetingParticipantDetail", 2),
    ("UserLoginFailed", 1),
    ("FileDeleted", 1),
    ("SharingInvitationCreated", 1),
    ("AnonymousLinkCreated", 1),
)
GUEST_ACTIVITIES = (
    ("FileAccessed", 10),
    ("FilePreviewed", 6),
    ("FileDownloaded", 4),
    ("UserLoggedIn", 3),
    ("PageViewed", 3),
    ("UserLoginFailed", 1),
)
WORKLOADS = {
    "FileAccessed": "SharePoint Online",
    "FileDownloaded": "SharePoint Online",
    "FileModified": "SharePoint Online",
    "FilePreviewed": "SharePoint Online",
    "FileUploaded": "OneDrive for Business",
    "FileDeleted": "SharePoint Online",
    "FileSyncDownloadedFull": "OneDrive for Business",
    "PageViewed": "SharePoint Online",
    "SearchQueryPerformed": "SharePoint Online",
    "SharingSet": "SharePoint Online",
    "SharingInvitationCreated": "SharePoint Online",
    "AnonymousLinkCreated": "SharePoint Online",
    "MailItemsAccessed": "Exchange Online",
    "Send": "Exchange Online",
    "MessageSent": "Microsoft Teams",
    "MeetingParticipantDetail": "Microsoft Teams",
    "UserLoggedIn": "Microsoft Entra ID",
    "UserLoginFailed": "Microsoft Entra ID",
    "Update user.": "Microsoft Entra ID",
    "Add user.": "Microsoft Entra ID",
}
FILES = {
    "engineering": (
        "Architecture overview.docx",
        "Release plan Q3.xlsx",
        "Incident 4711.docx",
        "API design review.pptx",
    ),
    "sales": (
        "Pipeline FY25.xlsx",
        "Customer list EMEA.csv",
        "Pricing 2025.xlsx",
        "Fabrikam proposal.docx",
    ),
    "marketing": ("Campaign calendar.xlsx", "Brand guidelines.pdf", "Launch deck.pptx"),
    "finance": (
        "Q3 forecast.xlsx",
        "Invoices 2025.xlsx",
        "Budget FY26.xlsx",
        "Audit findings.docx",
    ),
    "hr": (
        "Salaries 2025.xlsx",
        "Performance reviews.docx",
        "Headcount plan.xlsx",
        "Grievance 2025-031.docx",
    ),
    "it": ("Firewall rules.xlsx", "Access review Q3.xlsx", "Runbook on-call.docx"),
    "operations": ("Supplier contracts.xlsx", "Warehouse KPIs.xlsx", "Shipping schedule.xlsx"),
    "legal": ("NDA template.docx", "Litigation hold 2025-07.docx", "Contract Fabrikam.pdf"),
}
SIGN_IN_TARGETS = (
    "Office 365 Exchange Online",
    "Microsoft Teams",
    "SharePoint Online",
    "Microsoft Azure Portal",
    "My Apps",
)
EU_COUNTRIES = ("NL", "DE", "FR", "IE")
GUEST_COUNTRIES = ("GB", "US", "DE", "CA")


@dataclass(frozen=True)
class Actor:
    """Someone or something in the activity log."""

    id: str  # UPN for people, app id for applications
    kind: str  # "employee", "guest" or "application"
    name: str
    department: str | None
    region: str  # "us", "eu" or "external"
    country: str
    weight: int  # how active, relative to others
    activities: tuple[str, ...] = ()  # applications only

    @property
    def actor_type(self) -> str:
        return "application" if self.kind == "application" else "user"


@dataclass(frozen=True)
class Directory:
    """Contoso's people, guests and service applications."""

    actors: tuple[Actor, ...]

    @classmethod
    def generate(cls, seed: int, employees: int = 120, guests: int = 10) -> Directory:
        """A reproducible organisation of ``employees`` people (at least the personas)."""
        rng = random.Random(f"veil-demo-directory-{seed}")
        actors: list[Actor] = []
        taken: set[str] = set()
        for upn, name, department in PERSONAS:
            actors.append(Actor(upn, "employee", name, department, "us", "US", 4))
            taken.add(upn.split("@")[0])
        plan = [
            d
            for d, (_, share) in DEPARTMENTS.items()
            for _ in range(round(share * max(employees - len(PERSONAS), 0)))
        ]
        while len(plan) < employees - len(PERSONAS):
            plan.append("engineering")
        for department in plan[: max(employees - len(PERSONAS), 0)]:
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            local = _unique(f"{first}.{last}", taken)
            region = "eu" if rng.random() < 0.3 else "us"
            domain = EU_DOMAIN if region == "eu" else DOMAIN
            country = rng.choice(EU_COUNTRIES) if region == "eu" else "US"
            actors.append(
                Actor(
                    f"{local}@{domain}",
                    "employee",
                    f"{first.title()} {last.title()}",
                    department,
                    region,
                    country,
                    rng.choice((1, 1, 2, 2, 3, 4, 6, 10)),
                )
            )
        guest_taken: set[str] = set()
        for i in range(guests):
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            local = _unique(f"{first[0]}{last}", guest_taken)
            domain = GUEST_DOMAINS[i % len(GUEST_DOMAINS)]
            actors.append(
                Actor(
                    f"{local}@{domain}",
                    "guest",
                    f"{first.title()} {last.title()}",
                    None,
                    "external",
                    rng.choice(GUEST_COUNTRIES),
                    rng.choice((1, 1, 2, 3)),
                )
            )
        for name, activities in APPLICATIONS:
            app_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            actors.append(Actor(app_id, "application", name, None, "us", "US", 6, activities))
        return cls(tuple(actors))

    def departments(self) -> list[dict[str, Any]]:
        """Each department as a group Veil can import: ``{"id", "name", "members"}``."""
        return [
            {
                "id": gid,
                "name": name,
                "members": sorted(a.id for a in self.actors if a.department == gid),
            }
            for gid, (name, _) in DEPARTMENTS.items()
        ]

    def find(self, actor_id: str) -> Actor | None:
        wanted = actor_id.strip().lower()
        return next((a for a in self.actors if a.id == wanted), None)


def _unique(local: str, taken: set[str]) -> str:
    candidate, n = local, 1
    while candidate in taken:
        n += 1
        candidate = f"{local}{n}"
    taken.add(candidate)
    return candidate


def rfc3339_ms(ns: int) -> str:
    """UTC with milliseconds, as activity stores usually write it."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return (
        datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
        + f".{rest // MS_NS:03d}Z"
    )


def parse_time(value: str) -> int:
    """Nanoseconds since the epoch from RFC 3339 text with an offset; ValueError otherwise."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("no time zone offset")
    micros: int = (moment - _EPOCH) // timedelta(microseconds=1)
    return micros * 1000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Query:
    since_ns: int | None = None
    until_ns: int | None = None
    user: str | None = None
    activity: str | None = None
    department: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: tuple[int, int] | None = None  # (minute, index): continue strictly before it


class ActivityLog:
    """Synthetic activities of a Directory, minute by minute, deterministic for a seed."""

    def __init__(
        self,
        directory: Directory,
        seed: int,
        rate_per_minute: float = 60.0,
        history_days: float = 21.0,
        quiet_factor: float = 0.4,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.directory = directory
        self.seed = seed
        self.rate = rate_per_minute
        self.quiet_factor = quiet_factor
        self.clock = clock
        self.start_minute = (clock() - int(history_days * 86400 * 1e9)) // MINUTE_NS
        self._index = {a.id: i for i, a in enumerate(directory.actors)}
        # Weighted draw tables: a slot number picks an actor, or an activity.
        self._actor_slots = tuple(
            i for i, a in enumerate(directory.actors) for _ in range(a.weight)
        )
        self._user_slots = tuple(name for name, w in USER_ACTIVITIES for _ in range(w))
        self._guest_slots = tuple(name for name, w in GUEST_ACTIVITIES for _ in range(w))
        self._employees = tuple(a.id for a in directory.actors if a.kind == "employee")

    # ---- generation -------------------------------------------------------------------

    def rate_at(self, minute: int) -> float:
        """Busier on weekdays between 07:00 and 18:00 UTC (Europe's day, America's morning)."""
        moment = datetime.fromtimestamp(minute * 60, tz=UTC)
        busy = moment.weekday() < 5 and 7 <= moment.hour < 18
        return self.rate if busy else self.rate * self.quiet_factor

    def _draws(self, minute: int) -> list[int]:
        """The minute's activities as sorted 96-bit draws: high 32 bits are the time in the
        minute, low 64 bits pick who did what."""
        rng = random.Random((self.seed << 48) ^ minute)
        rate = self.rate_at(minute)
        count = int(rate * (0.6 + 0.8 * rng.random()) + rng.random())
        return sorted(rng.getrandbits(96) for _ in range(count))

    def _actor_of(self, draw: int) -> int:
        return self._actor_slots[(draw & _MASK64) % len(self._actor_slots)]

    def _activity_of(self, actor: Actor, draw: int) -> str:
        bits = (draw & _MASK64) // len(self._actor_slots)
        if actor.kind == "application":
            return actor.activities[bits % len(actor.activities)]
        slots = self._guest_slots if actor.kind == "guest" else self._user_slots
        return slots[bits % len(slots)]

    def row(self, minute: int, index: int, draw: int) -> dict[str, Any]:
        """One activity as the store serves it."""
        actor = self.directory.actors[self._actor_of(draw)]
        ts = minute * MINUTE_NS + ((draw >> 64) * 60_000 >> 32) * MS_NS
        return self._render(actor, ts, (minute << 16) | index, draw)

    def sample(self, count: int, start_ns: int, end_ns: int) -> list[dict[str, Any]]:
        """``count`` activities, newest first, evenly spread over [start_ns, end_ns), with every
        actor acting in turn (so all of them appear): a fixed answer for benchmarks."""
        rng = random.Random(f"veil-demo-sample-{self.seed}-{count}")
        actors = list(self.directory.actors)
        rng.shuffle(actors)
        step = max((end_ns - start_ns) // max(count, 1), 1)
        return [
            self._render(
                actors[i % len(actors)], end_ns - 1 - i * step, (1 << 62) | i, rng.getrandbits(96)
            )
            for i in range(count)
        ]

    def _render(self, actor: Actor, ts: int, serial: int, draw: int) -> dict[str, Any]:
        activity = self._activity_of(actor, draw)
        bits = ((draw & _MASK64) // len(self._actor_slots)) >> 7  # past the activity's bits
        ident = (serial * _GOLDEN + self.seed) & _MASK64
        return {
            "id": str(uuid.UUID(int=(ident << 64) | (draw & _MASK64))),
            "timestamp": rfc3339_ms(ts),
            "user": actor.id,
            "actorType": actor.actor_type,
            "activity": activity,
            "app": WORKLOADS.get(activity, "Microsoft 365"),
            "object": self._object(actor, activity, bits),
            "ip": _ip(actor, bits >> 10),
            "country": actor.country,
        }

    def _object(self, actor: Actor, activity: str, bits: int) -> str:
        workload = WORKLOADS.get(activity, "")
        if workload in ("SharePoint Online", "OneDrive for Business"):
            department = actor.department
            if department is None or bits % 5 == 0:  # now and then, another department's file
                department = tuple(DEPARTMENTS)[(bits // 5) % len(DEPARTMENTS)]
            files = FILES[department]
            name = files[(bits // 40) % len(files)]
            site = DEPARTMENTS[department][0].replace(" ", "")
            return f"https://contoso.sharepoint.com/sites/{site}/Shared Documents/{name}"
        if activity in ("UserLoggedIn", "UserLoginFailed"):
            return SIGN_IN_TARGETS[bits % len(SIGN_IN_TARGETS)]
        if workload == "Microsoft Teams":
            department = actor.department or "sales"
            return f"{DEPARTMENTS[department][0]} / General"
        if actor.kind == "application":  # an app reads or updates someone's mailbox or account
            return self._employees[bits % len(self._employees)]
        return actor.id  # their own mailbox

    # ---- queries -------------------------------------------------------------------------

    def query(self, q: Query) -> tuple[list[dict[str, Any]], str | None]:
        """Matching rows, newest first, at most ``q.limit``; and the cursor of the next page."""
        now = self.clock()
        upper = now + 1 if q.until_ns is None else min(q.until_ns, now + 1)  # exclusive
        lower = (
            self.start_minute * MINUTE_NS
            if q.since_ns is None
            else max(q.since_ns, self.start_minute * MINUTE_NS)
        )
        actor_filter = self._actor_filter(q)
        if actor_filter is not None and not actor_filter:
            return [], None
        rows: list[dict[str, Any]] = []
        for minute, index, draw in self._newest_first(lower, upper, q.cursor):
            actor_index = self._actor_of(draw)
            if actor_filter is not None and actor_index not in actor_filter:
                continue
            if (
                q.activity is not None
                and self._activity_of(self.directory.actors[actor_index], draw) != q.activity
            ):
                continue
            if len(rows) == q.limit:
                return rows, f"{minute}-{index + 1}"
            rows.append(self.row(minute, index, draw))
        return rows, None

    def _actor_filter(self, q: Query) -> frozenset[int] | None:
        wanted: frozenset[int] | None = None
        if q.user is not None:
            found = self._index.get(q.user.strip().lower())
            wanted = frozenset() if found is None else frozenset({found})
        if q.department is not None:
            members = frozenset(
                i for i, a in enumerate(self.directory.actors) if a.department == q.department
            )
            wanted = members if wanted is None else wanted & members
        return wanted

    def _newest_first(
        self, lower: int, upper: int, cursor: tuple[int, int] | None
    ) -> Iterator[tuple[int, int, int]]:
        """``(minute, index, draw)`` of rows with lower <= ts < upper, newest first."""
        top = (upper - 1) // MINUTE_NS
        if cursor is not None:
            top = min(top, cursor[0])
        for minute in range(top, lower // MINUTE_NS - 1, -1):
            if minute < self.start_minute:
                return
            draws = self._draws(minute)
            end = len(draws)
            if cursor is not None and minute == cursor[0]:
                end = min(end, cursor[1])
            for index in range(end - 1, -1, -1):
                draw = draws[index]
                ts = minute * MINUTE_NS + ((draw >> 64) * 60_000 >> 32) * MS_NS
                if lower <= ts < upper:
                    yield minute, index, draw


def _ip(actor: Actor, bits: int) -> str:
    if actor.kind == "application":
        return f"20.190.{128 + bits % 32}.{1 + (bits // 32) % 250}"
    if actor.kind == "guest":
        return f"192.0.2.{1 + bits % 250}"
    if bits % 4 == 0:  # working from home
        return f"192.0.2.{1 + (bits // 4) % 250}"
    office = "198.51.100" if actor.region == "eu" else "203.0.113"
    return f"{office}.{10 + (bits // 4) % 200}"


def create_store_app(
    seed: int = 7,
    rate_per_minute: float = 60.0,
    history_days: float = 21.0,
    clock: Callable[[], int] = time.time_ns,
    directory: Directory | None = None,
) -> Flask:
    """The demo store as a Flask app."""
    directory = directory or Directory.generate(seed)
    log = ActivityLog(directory, seed, rate_per_minute, history_days, clock=clock)
    app = Flask("veil-demo-store")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["activity_log"] = log

    @app.get("/")
    def index() -> Response:
        return jsonify(
            name="Veil demo activity store",
            organization=DOMAIN,
            endpoints=["/api/activities", "/api/directory/groups", "/api/directory/users"],
        )

    @app.get("/api/activities")
    def activities() -> tuple[Response, int]:
        try:
            query = parse_query(request.args.to_dict(flat=True))
        except QueryError as exc:
            return jsonify(error=exc.message, parameter=exc.parameter), 400
        rows, cursor = log.query(query)
        return jsonify(data=rows, next=cursor), 200

    @app.get("/api/directory/groups")
    def groups() -> Response:
        return jsonify(groups=directory.departments())

    @app.get("/api/directory/users")
    def users() -> Response:
        return jsonify(
            users=[
                {
                    "id": a.id,
                    "kind": a.kind,
                    "name": a.name,
                    "department": a.department,
                    "actorType": a.actor_type,
                }
                for a in directory.actors
            ]
        )

    return app


class QueryError(ValueError):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message


KNOWN_PARAMETERS = frozenset(
    {"since", "until", "user", "activity", "department", "limit", "cursor"}
)


def parse_query(args: dict[str, str]) -> Query:
    """Validate the query string of /api/activities."""
    unknown = sorted(set(args) - KNOWN_PARAMETERS)
    if unknown:
        raise QueryError(
            unknown[0],
            f"unknown query parameter {unknown[0]!r}; known: {', '.join(sorted(KNOWN_PARAMETERS))}",
        )
    times: dict[str, int | None] = {}
    for name in ("since", "until"):
        value = args.get(name)
        try:
            times[name] = None if value is None else parse_time(value)
        except ValueError:
            raise QueryError(
                name, f"{name} must be an RFC 3339 time with an offset, e.g. 2025-01-31T09:00:00Z"
            ) from None
    limit_text = args.get("limit", str(DEFAULT_LIMIT))
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
        raise QueryError("limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    cursor = None
    if "cursor" in args:
        minute, _, index = args["cursor"].partition("-")
        if not (minute.isdigit() and index.isdigit()):
            raise QueryError("cursor", "cursor must be the 'next' value of a previous answer")
        cursor = (int(minute), int(index))
    return Query(
        since_ns=times["since"],
        until_ns=times["until"],
        user=args.get("user"),
        activity=args.get("activity"),
        department=args.get("department"),
        limit=int(limit_text),
        cursor=cursor,
    )


def main(argv: list[str] | None = None) -> int:
    """Serve the demo store on its own until Ctrl-C."""
    import argparse

    from werkzeug.serving import make_server

    parser = argparse.ArgumentParser(
        prog="python -m veil.demo.store", description="The Veil demo activity store."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0: any free port")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--rate",
        type=float,
        default=60.0,
        help="activities a minute in business hours (default 60)",
    )
    args = parser.parse_args(argv)
    server = make_server(
        args.host,
        args.port,
        create_store_app(seed=args.seed, rate_per_minute=args.rate),
        threaded=True,
    )
    print(
        f"Veil demo store on http://{args.host}:{server.server_port}/api/activities "
        "(Ctrl-C stops it)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
