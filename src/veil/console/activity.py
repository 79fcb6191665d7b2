"""The Activity log: one page of the store's activities, asked through ``QueryService.answer``
(the proxied API's code path), and the reveal session the console keeps for its user."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from werkzeug.datastructures import Headers

from veil import schemas
from veil.errors import InvalidBody, UpstreamBadBody
from veil.rows import pointer_tokens, resolve
from veil.services import Services


@dataclass(frozen=True)
class Filters:
    """What the Activity log is filtered by (kept in the session, never in a URL)."""

    user: str = ""
    since: str = ""  # RFC 3339, UTC
    until: str = ""

    @classmethod
    def from_session(cls, value: Any) -> Filters:
        if not isinstance(value, dict):
            return cls()
        return cls(**{k: str(value.get(k, "")) for k in ("user", "since", "until")})

    def as_dict(self) -> dict[str, str]:
        return {"user": self.user, "since": self.since, "until": self.until}


@dataclass(frozen=True)
class Row:
    time: str
    actor: str
    actor_type: str
    cells: tuple[str, ...]
    private: bool


@dataclass(frozen=True)
class Page:
    rows: tuple[Row, ...]
    next_cursor: str | None
    revealed: int


def form_time(value: str, name: str) -> str:
    """A ``datetime-local`` form value (read as UTC) or RFC 3339 text, as RFC 3339 UTC."""
    value = value.strip()
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidBody(
            f"{name} must be a date and time, e.g. 2026-11-25T09:00", field=name
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def query_string(svc: Services, filters: Filters, cursor: str | None) -> str:
    """The store query for one page, with the parameter names of ``console.activities``."""
    cfg = svc.config.console.activities
    params: list[tuple[str, str]] = [(cfg.limit_param, str(svc.config.console.page_size))]
    for name, value in (
        (cfg.user_param, filters.user),
        (cfg.since_param, filters.since),
        (cfg.until_param, filters.until),
    ):
        if value:
            params.append((name, value))
    if cursor:
        params.append((cfg.cursor_param, cursor))
    return urlencode(params)


def route(svc: Services) -> str:
    return svc.config.console.activities.route or svc.config.upstream.routes[0]


def fetch(
    svc: Services, principal: str, filters: Filters, cursor: str | None, session_id: str | None
) -> Page:
    """One page through Veil; private rows appear (marked) only in an allowed reveal."""
    reply = svc.query.answer(
        principal, route(svc), query_string(svc, filters, cursor), Headers(), session_id
    )
    if not 200 <= reply.status < 300:
        raise UpstreamBadBody(
            f"the activity store refused the query with status {reply.status}"
            f"{_store_reason(reply.body)}",
            store_status=reply.status,
        )
    document = json.loads(reply.body)
    raw_rows = resolve(document, pointer_tokens(svc.config.upstream.rows)) or []
    fields = svc.config.upstream.fields
    cfg = svc.config.console.activities
    private = frozenset(reply.revealed)
    rows = []
    for index, raw in enumerate(raw_rows):
        rows.append(
            Row(
                time=_text(_at(raw, fields.timestamp)),
                actor=_text(_at(raw, fields.actor)),
                actor_type=_text(_at(raw, fields.actor_type)),
                cells=tuple(_text(_at(raw, column.pointer)) for column in cfg.columns),
                private=index in private,
            )
        )
    next_cursor = _at(document, cfg.next) if cfg.next else None
    return Page(
        tuple(rows), str(next_cursor) if next_cursor not in (None, "") else None, len(private)
    )


def reveal_request(
    justification: str, acknowledged: bool, require_justification: bool
) -> str | None:
    """Check the form as the API checks its body (same schema); the justification or None."""
    document: dict[str, Any] = {"acknowledge_audit": acknowledged}
    if justification.strip():
        document["justification"] = justification
    problem = schemas.body_error(schemas.REVEAL_SESSION_BODY, document)
    if problem is not None:
        field, message = problem
        raise InvalidBody(message, field=field)
    if require_justification and not justification.strip():
        raise InvalidBody(
            "a justification is required: say why you need to see private activities",
            field="justification",
        )
    return document.get("justification")


def _at(document: Any, pointer: str) -> Any:
    return resolve(document, pointer_tokens(pointer)) if pointer else document


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _store_reason(body: bytes | str) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        return ""
    reason = document.get("error") if isinstance(document, dict) else None
    return f": {reason}" if isinstance(reason, str) else ""
