"""Veil's management state and its rules: groups, privacy intervals, admins, viewers and
reveal sessions (R1, R4-R6, R8, R11, R12).

``Storage`` holds every rule about the state: what may change, and the governance record
each change appends in the same transaction (``veil.governance.log``). A ``Backend``
(``veil.storage.backend``: SQLite or PostgreSQL) only runs SQL.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from veil import principal as principals
from veil.clock import now_ns, rfc3339
from veil.errors import (
    Conflict,
    Forbidden,
    NotFound,
    RevealRefused,
    StateChanged,
    StorageError,
    Unprocessable,
)
from veil.governance import GovernanceLog, Verdict
from veil.storage import directory

if TYPE_CHECKING:
    from veil.config import GovernanceConfig
    from veil.storage.backend import Backend, Tx

BUILTIN_GROUPS = ("application", "external")

# Decides a reveal again on newer state: (version, read data.veil for these managed domains)
# -> the record's details, or None when nothing private is revealed any more.
Redecide = Callable[
    [int, Callable[[Sequence[str]], tuple[int, dict[str, Any]]]], dict[str, Any] | None
]

# One principal's refused attempts (R12): the first in a window is written at once; the
# others are counted, and the count goes into the principal's next record.
REFUSAL_WINDOW_S = 60


class Storage:
    """Every read and change of Veil's state; each change is audited in its own transaction."""

    def __init__(
        self,
        backend: Backend,
        bootstrap_admins: Sequence[str] = (),
        sealing: GovernanceConfig | None = None,
    ) -> None:
        self.backend = backend
        self.bootstrap_admins = frozenset(
            principals.normalize_all(bootstrap_admins, "bootstrap_admins")
        )
        self.refusal_window_ns = REFUSAL_WINDOW_S * 1_000_000_000
        self.log = GovernanceLog(backend, sealing)

    def close(self) -> None:
        self.log.close()
        self.backend.close()

    def ping(self) -> bool:
        try:
            with self.backend.transaction(write=False) as tx:
                tx.one("SELECT version FROM state_version WHERE id = 1")
        except StorageError:
            return False
        return True

    # ---- the policy's data document --------------------------------------------------

    def state_version(self) -> int:
        with self.backend.transaction(write=False) as tx:
            row = tx.one("SELECT version FROM state_version WHERE id = 1")
        return int(row[0]) if row else 0

    def policy_data(self, managed_domains: Sequence[str]) -> tuple[int, dict[str, Any]]:
        """``(version, data.veil)`` read in one transaction."""
        with self.backend.transaction(write=False) as tx:
            return self._policy_data(tx, managed_domains)

    def _policy_data(self, tx: Tx, managed_domains: Sequence[str]) -> tuple[int, dict[str, Any]]:
        """``(version, data.veil)`` as the transaction ``tx`` sees them."""
        version_row = tx.one("SELECT version FROM state_version WHERE id = 1")
        # Only groups that are or were private: no rule reads the others, and the data
        # document stays small however many groups an identity provider provisions.
        groups = tx.all(
            "SELECT id, name, members, former_members, source FROM groups "
            "WHERE id IN (SELECT group_id FROM privacy_intervals)"
        )
        scim_ids = [row[0] for row in groups if row[4] == "scim"]
        scim_members = directory.members_of(tx, scim_ids)
        scim_former = directory.former_of(tx, scim_ids)
        intervals = tx.all(
            "SELECT group_id, start_ns, end_ns FROM privacy_intervals ORDER BY start_ns"
        )
        admins = tx.all("SELECT principal FROM admins")
        viewers = tx.all("SELECT principal FROM viewers")
        privacy: dict[str, list[dict[str, int | None]]] = {}
        for group_id, start, end in intervals:
            privacy.setdefault(group_id, []).append({"start_ns": start, "end_ns": end})
        data = {
            "groups": {
                gid: {
                    "name": name,
                    "members": dict.fromkeys(
                        scim_members.get(gid, []) if source == "scim" else json.loads(members), True
                    ),
                    "former_members": scim_former.get(gid, {})
                    if source == "scim"
                    else json.loads(former),
                }
                for gid, name, members, former, source in groups
            },
            "privacy_groups": privacy,
            "admins": dict.fromkeys(sorted(self.bootstrap_admins | {a for (a,) in admins}), True),
            "viewers": dict.fromkeys(sorted(v for (v,) in viewers), True),
            "managed_domains": sorted(managed_domains),
        }
        return (int(version_row[0]) if version_row else 0), data

    # ---- groups ----------------------------------------------------------------------

    def list_groups(self) -> list[dict[str, Any]]:
        """Every group with where it came from (``api`` or ``scim``)."""
        with self.backend.transaction(write=False) as tx:
            rows = tx.all(
                "SELECT id, name, members, updated_ns, source, external_id, "
                "deleted_ns FROM groups ORDER BY id"
            )
            scim_members = directory.members_of(tx, [r[0] for r in rows if r[4] == "scim"])
        listed = []
        for gid, name, members, ns, source, external_id, deleted_ns in rows:
            group: dict[str, Any] = {
                "id": gid,
                "name": name,
                "source": source,
                "members": scim_members.get(gid, []) if source == "scim" else json.loads(members),
                "updated_at": rfc3339(ns),
            }
            if source == "scim":
                group["external_id"] = external_id
                group["deleted_at"] = rfc3339(deleted_ns) if deleted_ns is not None else None
            listed.append(group)
        return listed

    def put_group(
        self, group_id: str, name: str, members: Sequence[str], actor: str
    ) -> tuple[bool, dict[str, Any]]:
        """Import or replace a group; ``(created, group)``."""
        if group_id in BUILTIN_GROUPS:
            raise Conflict(f"{group_id!r} is a built-in group; its members cannot be imported")
        normalized = sorted(set(principals.normalize_all(members, "members")))
        ts = now_ns()
        with self.backend.transaction(write=True) as tx:
            row = tx.one(
                "SELECT members, former_members, source FROM groups WHERE id = ?", (group_id,)
            )
            if row is not None and row[2] == "scim":
                raise Conflict(
                    f"group {group_id!r} is provisioned by SCIM; change it in the identity provider"
                )
            existed = row is not None
            # Who leaves the group stays a member for the time they were one (R1 looks at the
            # group as it was at each row's time): remember when they left.
            former: dict[str, int] = json.loads(row[1]) if row else {}
            removed = set(json.loads(row[0])) - set(normalized) if row else set()
            former.update(dict.fromkeys(removed, ts))
            tx.execute(
                "INSERT INTO groups (id, name, members, updated_ns, updated_by, former_members) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                "members = excluded.members, updated_ns = excluded.updated_ns, "
                "updated_by = excluded.updated_by, former_members = excluded.former_members",
                (
                    group_id,
                    name,
                    json.dumps(normalized),
                    ts,
                    actor,
                    json.dumps(former, sort_keys=True),
                ),
            )
            self.state_changed(tx)
            self.log.append(
                tx,
                "group_imported",
                actor,
                {
                    "group": group_id,
                    "name": name,
                    "members": len(normalized),
                    "removed": len(removed),
                    "replaced": existed,
                },
            )
        return not existed, {"id": group_id, "name": name, "members": normalized}

    def delete_group(self, group_id: str, actor: str) -> None:
        with self.backend.transaction(write=True) as tx:
            found = tx.one("SELECT source FROM groups WHERE id = ?", (group_id,))
            if found is None:
                raise NotFound(f"there is no group {group_id!r}")
            if found[0] == "scim":
                raise Conflict(
                    f"group {group_id!r} is provisioned by SCIM; delete it in the identity provider"
                )
            if tx.one("SELECT 1 FROM privacy_intervals WHERE group_id = ?", (group_id,)):
                raise Conflict(
                    f"group {group_id!r} is or was a privacy group; deleting it would expose "
                    "the activities it keeps private"
                )
            tx.execute("DELETE FROM groups WHERE id = ?", (group_id,))
            self.state_changed(tx)
            self.log.append(tx, "group_deleted", actor, {"group": group_id})

    # ---- privacy groups --------------------------------------------------------------

    def list_privacy_groups(self) -> list[dict[str, Any]]:
        with self.backend.transaction(write=False) as tx:
            rows = tx.all(
                "SELECT group_id, start_ns, end_ns, started_by, ended_by FROM privacy_intervals "
                "ORDER BY group_id, start_ns"
            )
        out: dict[str, dict[str, Any]] = {}
        for gid, start, end, started_by, ended_by in rows:
            entry = out.setdefault(gid, {"group": gid, "private": False, "intervals": []})
            entry["intervals"].append(
                {
                    "start": rfc3339(start),
                    "end": rfc3339(end) if end is not None else None,
                    "started_by": started_by,
                    "ended_by": ended_by,
                }
            )
            entry["private"] = end is None
        return list(out.values())

    def add_privacy_group(self, group_id: str, actor: str) -> dict[str, Any]:
        ts = now_ns()
        with self.backend.transaction(write=True) as tx:
            found = tx.one("SELECT deleted_ns FROM groups WHERE id = ?", (group_id,))
            if found is not None and found[0] is not None:
                raise Unprocessable(
                    f"group {group_id!r} was deleted by SCIM provisioning; "
                    "it is kept only for the activities it kept private",
                    field="group",
                )
            if group_id not in BUILTIN_GROUPS and found is None:
                raise Unprocessable(
                    f"unknown group {group_id!r}: import it with PUT /veil/v1/groups/{group_id} "
                    f"or use a built-in group ({', '.join(BUILTIN_GROUPS)})",
                    field="group",
                )
            if tx.one(
                "SELECT 1 FROM privacy_intervals WHERE group_id = ? AND end_ns IS NULL", (group_id,)
            ):
                raise Conflict(f"group {group_id!r} is already private")
            last = tx.one(
                "SELECT MAX(COALESCE(end_ns, start_ns)) FROM privacy_intervals WHERE group_id = ?",
                (group_id,),
            )
            if last and last[0] is not None and ts <= last[0]:
                ts = last[0] + 1  # intervals never overlap, even within one clock tick
            tx.execute(
                "INSERT INTO privacy_intervals (group_id, start_ns, end_ns, started_by) "
                "VALUES (?, ?, NULL, ?)",
                (group_id, ts, actor),
            )
            self.state_changed(tx)
            self.log.append(
                tx,
                "privacy_group_added",
                actor,
                {"group": group_id, "start": rfc3339(ts), "start_ns": ts},
            )
        return {"group": group_id, "private": True, "start": rfc3339(ts)}

    def remove_privacy_group(self, group_id: str, actor: str) -> None:
        ts = now_ns()
        with self.backend.transaction(write=True) as tx:
            row = tx.one(
                "SELECT start_ns FROM privacy_intervals WHERE group_id = ? AND end_ns IS NULL",
                (group_id,),
            )
            if row is None:
                raise NotFound(f"group {group_id!r} is not private")
            end = max(ts, int(row[0]) + 1)
            tx.execute(
                "UPDATE privacy_intervals SET end_ns = ?, ended_by = ? "
                "WHERE group_id = ? AND end_ns IS NULL",
                (end, actor, group_id),
            )
            self.state_changed(tx)
            self.log.append(
                tx,
                "privacy_group_removed",
                actor,
                {"group": group_id, "end": rfc3339(end), "end_ns": end},
            )

    # ---- admins and the view-private permission --------------------------------------

    def is_admin(self, principal: str) -> bool:
        if principal in self.bootstrap_admins:
            return True
        with self.backend.transaction(write=False) as tx:
            return tx.one("SELECT 1 FROM admins WHERE principal = ?", (principal,)) is not None

    def list_admins(self) -> list[dict[str, Any]]:
        with self.backend.transaction(write=False) as tx:
            rows = tx.all("SELECT principal, added_ns, added_by FROM admins ORDER BY principal")
        listed = [
            {"principal": p, "source": "config", "added_at": None, "added_by": None}
            for p in sorted(self.bootstrap_admins)
        ]
        listed += [
            {"principal": p, "source": "registry", "added_at": rfc3339(ns), "added_by": by}
            for p, ns, by in rows
            if p not in self.bootstrap_admins
        ]
        return listed

    def add_admin(self, principal: str, actor: str) -> None:
        principal = principals.normalize(principal)
        with self.backend.transaction(write=True) as tx:
            if principal in self.bootstrap_admins or tx.one(
                "SELECT 1 FROM admins WHERE principal = ?", (principal,)
            ):
                raise Conflict(f"{principal} is already an admin")
            tx.execute(
                "INSERT INTO admins (principal, added_ns, added_by) VALUES (?, ?, ?)",
                (principal, now_ns(), actor),
            )
            self.state_changed(tx)
            self.log.append(tx, "admin_added", actor, {"principal": principal})

    def remove_admin(self, principal: str, actor: str) -> None:
        """Remove an admin; their view-private permission and reveal sessions end with it.

        Never zero admins: without a bootstrap admin in the configuration, the last admin in
        the registry stays (nobody could manage Veil, or add an admin, after it).
        """
        principal = principals.normalize(principal)
        if principal in self.bootstrap_admins:
            raise Conflict(
                f"{principal} is a bootstrap admin from the configuration file; remove it there"
            )
        with self.backend.transaction(write=True) as tx:
            if tx.one("SELECT 1 FROM admins WHERE principal = ?", (principal,)) is None:
                raise NotFound(f"{principal} is not an admin")
            others = tx.one("SELECT COUNT(*) FROM admins WHERE principal <> ?", (principal,))
            if not self.bootstrap_admins and (others is None or int(others[0]) == 0):
                raise Conflict(
                    f"{principal} is the last admin and no bootstrap admin is "
                    "configured: add another admin first (Veil never runs without "
                    "an admin)"
                )
            tx.execute("DELETE FROM admins WHERE principal = ?", (principal,))
            self.state_changed(tx)
            self.log.append(tx, "admin_removed", actor, {"principal": principal})
            self._revoke_viewer(tx, principal, actor, "admin role removed")

    def list_viewers(self) -> list[dict[str, Any]]:
        with self.backend.transaction(write=False) as tx:
            rows = tx.all(
                "SELECT principal, granted_ns, granted_by FROM viewers ORDER BY principal"
            )
        return [{"principal": p, "granted_at": rfc3339(ns), "granted_by": by} for p, ns, by in rows]

    def grant_viewer(self, principal: str, actor: str) -> None:
        """Grant the view-private permission to an admin (R6), never by that admin themselves:
        a second admin approves it (four eyes); the refused attempt is audited (coalesced)."""
        principal = principals.normalize(principal)
        with self.backend.transaction(write=True) as tx:
            if principal == actor:
                self._refusal(
                    tx,
                    "permission_grant_refused",
                    actor,
                    {"principal": principal, "reason": "self-grant"},
                )
                refused = True
            else:
                refused = False
                self._grant_viewer(tx, principal, actor)
        if refused:
            raise Forbidden(
                f"{actor} cannot grant the view-private permission to themselves: "
                "another admin must grant it"
            )

    def _grant_viewer(self, tx: Tx, principal: str, actor: str) -> None:
        if (
            principal not in self.bootstrap_admins
            and tx.one("SELECT 1 FROM admins WHERE principal = ?", (principal,)) is None
        ):
            raise Unprocessable(
                f"{principal} is not an admin; only admins can be granted the "
                "view-private permission (R6). Add them with POST /veil/v1/admins first.",
                field="principal",
            )
        if tx.one("SELECT 1 FROM viewers WHERE principal = ?", (principal,)):
            raise Conflict(f"{principal} already holds the view-private permission")
        tx.execute(
            "INSERT INTO viewers (principal, granted_ns, granted_by) VALUES (?, ?, ?)",
            (principal, now_ns(), actor),
        )
        self.state_changed(tx)
        self.log.append(tx, "permission_granted", actor, {"principal": principal})

    def revoke_viewer(self, principal: str, actor: str) -> None:
        principal = principals.normalize(principal)
        with self.backend.transaction(write=True) as tx:
            if not self._revoke_viewer(tx, principal, actor, "permission revoked"):
                raise NotFound(f"{principal} does not hold the view-private permission")

    def _revoke_viewer(self, tx: Tx, principal: str, actor: str, reason: str) -> bool:
        had = tx.one("SELECT 1 FROM viewers WHERE principal = ?", (principal,)) is not None
        if had:
            tx.execute("DELETE FROM viewers WHERE principal = ?", (principal,))
            self.state_changed(tx)
            self.log.append(
                tx, "permission_revoked", actor, {"principal": principal, "reason": reason}
            )
        ts = now_ns()
        for (sid,) in tx.all(
            "SELECT id FROM reveal_sessions WHERE owner = ? AND ended_ns IS NULL "
            "AND expires_ns > ?",
            (principal, ts),
        ):
            tx.execute(
                "UPDATE reveal_sessions SET ended_ns = ?, ended_reason = ? WHERE id = ?",
                (ts, reason, sid),
            )
            self.log.append(
                tx,
                "reveal_session_ended",
                actor,
                {"session": sid, "owner": principal, "reason": reason},
            )
        return had

    # ---- reveal sessions -------------------------------------------------------------

    def open_session(self, owner: str, justification: str | None, ttl_s: int) -> dict[str, Any]:
        """Open a reveal session; a caller who may not reveal is refused, and that is logged."""
        ts = now_ns()
        with self.backend.transaction(write=True) as tx:
            is_admin = (
                owner in self.bootstrap_admins
                or tx.one("SELECT 1 FROM admins WHERE principal = ?", (owner,)) is not None
            )
            may_view = tx.one("SELECT 1 FROM viewers WHERE principal = ?", (owner,)) is not None
            if not (is_admin and may_view):
                reason = (
                    "the caller is not an admin"
                    if not is_admin
                    else "the caller does not hold the view-private permission"
                )
                self._refusal(
                    tx,
                    "reveal_session_refused",
                    owner,
                    {"reason": reason, "justification": justification},
                )
                refused = reason
            else:
                refused = None
                sid = "rs_" + secrets.token_urlsafe(24)
                expires = ts + ttl_s * 1_000_000_000
                tx.execute(
                    "INSERT INTO reveal_sessions (id, owner, justification, created_ns, "
                    "expires_ns) VALUES (?, ?, ?, ?, ?)",
                    (sid, owner, justification, ts, expires),
                )
                self.log.append(
                    tx,
                    "reveal_session_opened",
                    owner,
                    {
                        "session": sid,
                        "justification": justification,
                        "expires_at": rfc3339(expires),
                    },
                )
        if refused is not None:
            raise Forbidden(f"reveal session refused: {refused}")
        return {
            "id": sid,
            "owner": owner,
            "justification": justification,
            "created_at": rfc3339(ts),
            "expires_at": rfc3339(expires),
        }

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        """A reveal session as the policy sees it (``input.session``), or None if unknown."""
        with self.backend.transaction(write=False) as tx:
            row = tx.one(
                "SELECT id, owner, justification, expires_ns, ended_ns "
                "FROM reveal_sessions WHERE id = ?",
                (session_id,),
            )
        if row is None:
            return None
        sid, owner, justification, expires, ended = row
        return {
            "id": sid,
            "owner": owner,
            "justification": justification,
            "expires_ns": expires,
            "ended": ended is not None,
        }

    def end_session(self, session_id: str, actor: str, actor_is_admin: bool) -> None:
        """End a session: its owner may, and so may any admin."""
        ts = now_ns()
        with self.backend.transaction(write=True) as tx:
            row = tx.one(
                "SELECT owner, ended_ns, expires_ns FROM reveal_sessions WHERE id = ?",
                (session_id,),
            )
            if row is None or (row[0] != actor and not actor_is_admin):
                raise NotFound(f"there is no reveal session {session_id!r} of yours")
            if row[1] is not None or row[2] <= ts:
                raise Conflict(f"reveal session {session_id!r} has already ended")
            tx.execute(
                "UPDATE reveal_sessions SET ended_ns = ?, ended_reason = ? WHERE id = ?",
                (ts, "ended by request", session_id),
            )
            self.log.append(
                tx,
                "reveal_session_ended",
                actor,
                {"session": session_id, "owner": row[0], "reason": "ended by request"},
            )

    # ---- refused attempts (R12: audited, coalesced per principal) ---------------------

    def refusal(self, action: str, actor: str, details: dict[str, Any]) -> None:
        """Audit one refused attempt, coalesced with the same principal's others."""
        with self.backend.transaction(write=True) as tx:
            self._refusal(tx, action, actor, details)

    def _refusal(self, tx: Tx, action: str, actor: str, details: dict[str, Any]) -> None:
        """The first refusal of ``actor`` in a window is written at once, with ``attempts``:
        itself plus the refusals counted (not written) since the actor's previous record.
        The others in the window only add to that count, so the records' ``attempts`` add up
        to every refused attempt. Counts of principals whose window has passed are written
        too (``refusals_coalesced``), so a count waits at most until the next refusal."""
        ts = now_ns()
        self._flush_refusals(tx, ts, skip=actor)
        row = tx.one(
            "SELECT last_record_ns, pending, by_action FROM refusal_counts WHERE actor = ?",
            (actor,),
        )
        if row is not None and ts - int(row[0]) < self.refusal_window_ns:
            by_action: dict[str, int] = json.loads(row[2])
            by_action[action] = by_action.get(action, 0) + 1
            tx.execute(
                "UPDATE refusal_counts SET pending = ?, by_action = ? WHERE actor = ?",
                (int(row[1]) + 1, json.dumps(by_action, sort_keys=True), actor),
            )
            return
        earlier: dict[str, int] = json.loads(row[2]) if row else {}
        self.log.append(
            tx,
            action,
            actor,
            {**details, "attempts": 1 + (int(row[1]) if row else 0), "coalesced": earlier},
        )
        tx.execute("DELETE FROM refusal_counts WHERE actor = ?", (actor,))
        tx.execute(
            "INSERT INTO refusal_counts (actor, last_record_ns, pending, by_action) "
            "VALUES (?, ?, 0, '{}')",
            (actor, ts),
        )

    def _flush_refusals(self, tx: Tx, ts: int, skip: str = "") -> None:
        due = tx.all(
            "SELECT actor, pending, by_action FROM refusal_counts WHERE pending > 0 "
            "AND last_record_ns <= ? AND actor <> ? ORDER BY actor",
            (ts - self.refusal_window_ns, skip),
        )
        for actor, pending, by_action in due:
            self.log.append(
                tx,
                "refusals_coalesced",
                actor,
                {"attempts": int(pending), "coalesced": json.loads(by_action)},
            )
            tx.execute(
                "UPDATE refusal_counts SET pending = 0, by_action = '{}', "
                "last_record_ns = ? WHERE actor = ?",
                (ts, actor),
            )

    def flush_refusals(self) -> None:
        """Write the counts of refused attempts whose window has passed."""
        with self.backend.transaction(write=True) as tx:
            self._flush_refusals(tx, now_ns())

    # ---- governance log (veil.governance.log) -------------------------------------------

    def sealing_status(self) -> dict[str, Any]:
        """Whether appended records are signed, and where checkpoints go (for /readyz)."""
        return self.log.sealing_status()

    def log_page(
        self,
        since: str | None = None,
        until: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        return self.log.page(since, until, action, actor, after, limit)

    def last_record(self, action: str) -> dict[str, Any] | None:
        """The newest record of one action, or None."""
        return self.log.last_record(action)

    def iter_log(self, batch: int = 1000) -> Iterator[dict[str, Any]]:
        """Every record in chain order, from one snapshot of the log."""
        return self.log.iter_records(batch)

    def head(self) -> tuple[int, str] | None:
        """The chain head ``(seq, hash)``, or None while the log is empty."""
        return self.log.head()

    def verify_log(self) -> Verdict:
        """Verify the chain, its signatures and the witness's checkpoints (one snapshot)."""
        return self.log.verify()

    def record(
        self,
        action: str,
        actor: str,
        details: dict[str, Any],
        unless: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """Append one governance record and commit it; raise StorageError if it cannot be.

        With ``unless``, the newest record of the same action is read in the same write
        transaction, and when ``unless`` holds for it nothing is appended and it is returned
        (so processes that make the same change at once record it once).
        """
        with self.backend.transaction(write=True) as tx:
            if unless is not None:
                last = self.log.last_record(action, tx)
                if last is not None and unless(last):
                    return last
            return self.log.append(tx, action, actor, details)

    def record_reveal(
        self,
        caller: str,
        session_id: str,
        details: dict[str, Any] | None,
        state_version: int | None = None,
        redecide: Redecide | None = None,
    ) -> dict[str, Any] | None:
        """Append ``activities_revealed`` only if the reveal still holds, in one transaction.

        The session must be the caller's, not ended, not expired, and the caller an admin
        holding the view-private permission. Given ``state_version`` (the state the decision
        used) and a newer state committed since, ``redecide`` decides again on the state this
        transaction sees (no other change can commit before it ends) and returns the record's
        new details, or None when nothing private is revealed any more; without ``redecide``
        that is StateChanged. A revoke, a session end or a group made private that commits
        first therefore wins (R11). Returns the record, or None when none was needed.
        """
        with self.backend.transaction(write=True) as tx:
            reasons = self._reveal_refusals(tx, caller, session_id, now_ns())
            if reasons:
                raise RevealRefused("reveal refused: " + "; ".join(reasons), reasons=reasons)
            if state_version is not None:
                row = tx.one("SELECT version FROM state_version WHERE id = 1")
                current = int(row[0]) if row else 0
                if current != state_version:
                    if redecide is None:
                        raise StateChanged(
                            "the management state changed while this reveal "
                            "was decided; nothing was revealed. Retry."
                        )
                    details = redecide(current, lambda domains: self._policy_data(tx, domains))
            if details is None:
                return None
            return self.log.append(tx, "activities_revealed", caller, details)

    def _reveal_refusals(self, tx: Tx, caller: str, session_id: str, ts: int) -> list[str]:
        """Why ``caller`` may not reveal through ``session_id`` now (R4), in the policy's words."""
        reasons = []
        row = tx.one(
            "SELECT owner, expires_ns, ended_ns FROM reveal_sessions WHERE id = ?", (session_id,)
        )
        if row is None:
            reasons.append("the reveal session does not exist")
        else:
            owner, expires, ended = row
            if owner != caller:
                reasons.append("the reveal session belongs to another principal")
            if ended is not None:
                reasons.append("the reveal session has ended")
            if ts >= int(expires):
                reasons.append("the reveal session has expired")
        if (
            caller not in self.bootstrap_admins
            and tx.one("SELECT 1 FROM admins WHERE principal = ?", (caller,)) is None
        ):
            reasons.append("the caller is not an admin")
        if tx.one("SELECT 1 FROM viewers WHERE principal = ?", (caller,)) is None:
            reasons.append("the caller does not hold the view-private permission")
        return sorted(reasons)

    @staticmethod
    def state_changed(tx: Tx) -> None:
        """Move the state version on in ``tx``: every engine reloads data.veil before its next
        decision (R11). Every change to what data.veil holds calls it, SCIM's included."""
        tx.execute("UPDATE state_version SET version = version + 1 WHERE id = 1")
