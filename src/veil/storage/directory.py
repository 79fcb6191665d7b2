"""SCIM-provisioned users and groups: their storage, and the rules that keep Veil groups current.

A SCIM group is a Veil group (a ``groups`` row with ``source = 'scim'``) whose id is the SCIM
``id`` Veil assigned when the group was created. Its ``members`` (the principals the policy
reads) are derived from its member users' principals (``userName`` and e-mails). Each change
runs in one write transaction with one governance record whose actor is the provisioning
client; a request that changes nothing writes nothing. Whoever stops being a member is
remembered with the time (``former_members``), so R1 keeps their activities private for the
time they were in a private group. A user that is deactivated stays a member until removed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from veil.clock import now_ns
from veil.errors import BadRequest, Conflict, NotFound, PreconditionFailed

if TYPE_CHECKING:
    from veil.storage.backend import Tx
    from veil.storage.state import Storage

CHUNK = 500  # ids per IN (...) list or multi-row INSERT
LISTED = 100  # principals or ids named in one governance record; the rest are counted
RECOMPUTE_ABOVE = 64  # removed principals above which a group's principals are recomputed


@dataclass(frozen=True)
class UserState:
    """What a SCIM user request leaves: the resource as stored, and what Veil reads of it."""

    resource: dict[str, Any]
    user_name: str  # normalized principal
    display_name: str | None
    external_id: str | None
    active: bool
    principals: frozenset[str]


@dataclass(frozen=True)
class StoredUser:
    id: str
    resource: dict[str, Any]
    version: int
    created_ns: int
    modified_ns: int
    groups: tuple[tuple[str, str], ...] = ()  # (group id, displayName)


@dataclass(frozen=True)
class GroupState:
    resource: dict[str, Any]  # without members
    display_name: str
    external_id: str | None


@dataclass(frozen=True)
class StoredGroup:
    id: str
    resource: dict[str, Any]
    version: int
    created_ns: int
    modified_ns: int
    members: tuple[tuple[str, str], ...] | None = None  # (user id, userName); None: not read


@dataclass
class MemberChange:
    """Member additions and removals in the order a request gives them (user ids)."""

    steps: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    displays: dict[str, str] = field(default_factory=dict)  # user id: the "display" sent

    def add(self, ids: Iterable[str], displays: dict[str, str] | None = None) -> None:
        self.steps.append(("add", frozenset(ids)))
        self.displays.update(displays or {})

    def remove(self, ids: Iterable[str]) -> None:
        self.steps.append(("remove", frozenset(ids)))

    def replace(self, ids: Iterable[str], displays: dict[str, str] | None = None) -> None:
        self.steps.append(("replace", frozenset(ids)))
        self.displays.update(displays or {})


def etag(version: int) -> str:
    return f'W/"{version}"'


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _listed(values: Iterable[str]) -> dict[str, Any]:
    ordered = sorted(values)
    return {"count": len(ordered), "listed": ordered[:LISTED]}


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class Directory:
    """Reads and changes of SCIM users and groups, each change audited in its transaction."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.backend = storage.backend

    # ---- users -----------------------------------------------------------------------

    def get_user(self, user_id: str) -> StoredUser | None:
        with self.backend.transaction(write=False) as tx:
            return self._user(tx, user_id, with_groups=True)

    def list_users(
        self, where: tuple[str, str] | None, start: int, count: int
    ) -> tuple[int, list[StoredUser]]:
        """``where`` is ``(column, value)`` for an ``eq`` filter (columns as in the table)."""
        clause, params = self._where(
            where,
            {
                "id": "id",
                "userName": "user_name",
                "externalId": "external_id",
                "displayName": "display_name",
            },
        )
        with self.backend.transaction(write=False) as tx:
            total_row = tx.one(f"SELECT COUNT(*) FROM scim_users{clause}", params)
            rows = (
                tx.all(
                    "SELECT id, resource, version, created_ns, modified_ns FROM scim_users"
                    f"{clause} ORDER BY created_ns, id LIMIT ? OFFSET ?",
                    (*params, count, start - 1),
                )
                if count > 0
                else []
            )
            groups = self._groups_of(tx, [r[0] for r in rows])
        users = [
            StoredUser(uid, json.loads(res), int(v), int(c), int(m), tuple(groups.get(uid, ())))
            for uid, res, v, c, m in rows
        ]
        return int(total_row[0]) if total_row else 0, users

    def create_user(self, state: UserState, actor: str, client: str) -> StoredUser:
        ts = self.storage_now()
        user_id = str(uuid.uuid4())
        with self.backend.transaction(write=True) as tx:
            self._unique_user_name(tx, state.user_name, None)
            tx.execute(
                "INSERT INTO scim_users (id, user_name, display_name, external_id, active, "
                "resource, version, created_ns, modified_ns) VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?)",
                (
                    user_id,
                    state.user_name,
                    state.display_name,
                    state.external_id,
                    int(state.active),
                    _canonical(state.resource),
                    ts,
                    ts,
                ),
            )
            self._insert_rows(
                tx,
                "scim_principals",
                "user_id, principal",
                [(user_id, p) for p in sorted(state.principals)],
            )
            self.storage.log.append(
                tx,
                "scim_user_created",
                actor,
                {
                    "user": user_id,
                    "userName": state.user_name,
                    "externalId": state.external_id,
                    "active": state.active,
                    "principals": sorted(state.principals),
                    "client": client,
                },
            )
        return StoredUser(user_id, state.resource, 1, ts, ts)

    def update_user(
        self,
        user_id: str,
        change: Callable[[StoredUser], UserState],
        if_match: str | None,
        actor: str,
        client: str,
    ) -> tuple[StoredUser, bool]:
        """Replace or patch a user: ``change`` maps the stored user to its new state."""
        ts = self.storage_now()
        with self.backend.transaction(write=True) as tx:
            stored = self._user(tx, user_id, with_groups=True)
            if stored is None:
                raise NotFound(f"there is no user {user_id!r}")
            self._precondition(if_match, stored.version)
            state = change(stored)
            if _canonical(state.resource) == _canonical(stored.resource):
                return stored, False
            self._unique_user_name(tx, state.user_name, user_id)
            old = {
                p
                for (p,) in tx.all(
                    "SELECT principal FROM scim_principals WHERE user_id = ?", (user_id,)
                )
            }
            added, removed = set(state.principals) - old, old - set(state.principals)
            version = stored.version + 1
            tx.execute(
                "UPDATE scim_users SET user_name = ?, display_name = ?, external_id = ?, "
                "active = ?, resource = ?, version = ?, modified_ns = ? WHERE id = ?",
                (
                    state.user_name,
                    state.display_name,
                    state.external_id,
                    int(state.active),
                    _canonical(state.resource),
                    version,
                    ts,
                    user_id,
                ),
            )
            for principal in sorted(removed):
                tx.execute(
                    "DELETE FROM scim_principals WHERE user_id = ? AND principal = ?",
                    (user_id, principal),
                )
            self._insert_rows(
                tx, "scim_principals", "user_id, principal", [(user_id, p) for p in sorted(added)]
            )
            group_ids = [gid for gid, _ in stored.groups]
            if added or removed:
                for gid in group_ids:
                    self._reprincipal(tx, gid, added, removed, ts, actor)
            self.storage.log.append(
                tx,
                "scim_user_updated",
                actor,
                {
                    "user": user_id,
                    "userName": state.user_name,
                    "externalId": state.external_id,
                    "active": state.active,
                    "principals_added": sorted(added),
                    "principals_removed": sorted(removed),
                    "groups": group_ids,
                    "client": client,
                },
            )
        return StoredUser(
            user_id, state.resource, version, stored.created_ns, ts, stored.groups
        ), True

    def delete_user(self, user_id: str, if_match: str | None, actor: str, client: str) -> None:
        ts = self.storage_now()
        with self.backend.transaction(write=True) as tx:
            stored = self._user(tx, user_id, with_groups=True)
            if stored is None:
                raise NotFound(f"there is no user {user_id!r}")
            self._precondition(if_match, stored.version)
            principals = {
                p
                for (p,) in tx.all(
                    "SELECT principal FROM scim_principals WHERE user_id = ?", (user_id,)
                )
            }
            tx.execute("DELETE FROM scim_members WHERE user_id = ?", (user_id,))
            tx.execute("DELETE FROM scim_principals WHERE user_id = ?", (user_id,))
            tx.execute("DELETE FROM scim_users WHERE id = ?", (user_id,))
            group_ids = [gid for gid, _ in stored.groups]
            for gid in group_ids:
                self._reprincipal(tx, gid, set(), principals, ts, actor)
            self.storage.log.append(
                tx,
                "scim_user_deleted",
                actor,
                {
                    "user": user_id,
                    "userName": stored.resource.get("userName"),
                    "principals": sorted(principals),
                    "groups_left": group_ids,
                    "client": client,
                },
            )

    # ---- groups ----------------------------------------------------------------------

    def get_group(self, group_id: str, with_members: bool = True) -> StoredGroup | None:
        with self.backend.transaction(write=False) as tx:
            return self._group(tx, group_id, with_members)

    def list_groups(
        self, where: tuple[str, str] | None, start: int, count: int, with_members: bool
    ) -> tuple[int, list[StoredGroup]]:
        clause, params = self._where(
            where, {"id": "id", "displayName": "name", "externalId": "external_id"}
        )
        live = " AND " if clause else " WHERE "
        live += "source = 'scim' AND deleted_ns IS NULL"
        with self.backend.transaction(write=False) as tx:
            total_row = tx.one(f"SELECT COUNT(*) FROM groups{clause}{live}", params)
            ids = (
                [
                    gid
                    for (gid,) in tx.all(
                        f"SELECT id FROM groups{clause}{live} "
                        "ORDER BY created_ns, id LIMIT ? OFFSET ?",
                        (*params, count, start - 1),
                    )
                ]
                if count > 0
                else []
            )
            groups = [self._group(tx, gid, with_members) for gid in ids]
        return (int(total_row[0]) if total_row else 0), [g for g in groups if g is not None]

    def create_group(
        self,
        state: GroupState,
        member_ids: Sequence[str],
        actor: str,
        client: str,
        displays: dict[str, str] | None = None,
    ) -> StoredGroup:
        ts = self.storage_now()
        group_id = str(uuid.uuid4())
        members = sorted(set(member_ids))
        displays = displays or {}
        with self.backend.transaction(write=True) as tx:
            self._known_users(tx, members)
            principals = self._principals_of(tx, members)
            tx.execute(  # members and former_members: read from scim_members and scim_former
                "INSERT INTO groups (id, name, members, updated_ns, updated_by, former_members, "
                "source, external_id, resource, version, created_ns) "
                "VALUES (?, ?, '[]', ?, ?, '{}', 'scim', ?, ?, 1, ?)",
                (
                    group_id,
                    state.display_name,
                    ts,
                    actor,
                    state.external_id,
                    _canonical(state.resource),
                    ts,
                ),
            )
            self._insert_rows(
                tx,
                "scim_members",
                "group_id, user_id, display",
                [(group_id, uid, displays.get(uid)) for uid in members],
            )
            self.storage.log.append(
                tx,
                "scim_group_created",
                actor,
                {
                    "group": group_id,
                    "displayName": state.display_name,
                    "externalId": state.external_id,
                    "members_added": _listed(members),
                    "principals_added": _listed(principals),
                    "client": client,
                },
            )
            stored = self._group(tx, group_id, True)
        assert stored is not None
        return stored

    def update_group(
        self,
        group_id: str,
        change: Callable[[StoredGroup], tuple[GroupState, MemberChange]],
        if_match: str | None,
        actor: str,
        client: str,
    ) -> tuple[StoredGroup, bool]:
        """Replace or patch a group: ``change`` maps it to new attributes and member steps."""
        ts = self.storage_now()
        with self.backend.transaction(write=True) as tx:
            stored = self._group(tx, group_id, with_members=False)
            if stored is None:
                raise NotFound(f"there is no group {group_id!r}")
            self._precondition(if_match, stored.version)
            state, members = change(stored)
            added, removed = self._member_delta(tx, group_id, members)
            self._known_users(tx, sorted(added))
            resource_changed = _canonical(state.resource) != _canonical(stored.resource)
            if not (resource_changed or added or removed):
                return stored, False
            for uid in sorted(removed):
                tx.execute(
                    "DELETE FROM scim_members WHERE group_id = ? AND user_id = ?", (group_id, uid)
                )
            self._insert_rows(
                tx,
                "scim_members",
                "group_id, user_id, display",
                [(group_id, uid, members.displays.get(uid)) for uid in sorted(added)],
            )
            version = stored.version + 1
            tx.execute(
                "UPDATE groups SET name = ?, external_id = ?, resource = ?, version = ?, "
                "updated_ns = ?, updated_by = ? WHERE id = ?",
                (
                    state.display_name,
                    state.external_id,
                    _canonical(state.resource),
                    version,
                    ts,
                    actor,
                    group_id,
                ),
            )
            p_added, p_removed = self._reprincipal(
                tx,
                group_id,
                self._principals_of(tx, sorted(added)),
                self._principals_of(tx, sorted(removed)),
                ts,
                actor,
                changed=resource_changed,
            )
            self.storage.log.append(
                tx,
                "scim_group_updated",
                actor,
                {
                    "group": group_id,
                    "displayName": state.display_name,
                    "externalId": state.external_id,
                    "members_added": _listed(added),
                    "members_removed": _listed(removed),
                    "principals_added": _listed(p_added),
                    "principals_left": _listed(p_removed),
                    "client": client,
                },
            )
        return StoredGroup(group_id, state.resource, version, stored.created_ns, ts), True

    def delete_group(self, group_id: str, if_match: str | None, actor: str, client: str) -> None:
        """Delete a group; one that is or was private stays as a tombstone for R1."""
        ts = self.storage_now()
        with self.backend.transaction(write=True) as tx:
            stored = self._group(tx, group_id, with_members=False)
            if stored is None:
                raise NotFound(f"there is no group {group_id!r}")
            self._precondition(if_match, stored.version)
            count_row = tx.one("SELECT COUNT(*) FROM scim_members WHERE group_id = ?", (group_id,))
            private = self._is_or_was_private(tx, group_id)
            if private:  # every member leaves now; the group stays for what it kept private
                self._left(tx, group_id, members_of(tx, [group_id]).get(group_id, []), ts)
                tx.execute(
                    "UPDATE groups SET deleted_ns = ?, updated_ns = ?, updated_by = ? WHERE id = ?",
                    (ts, ts, actor, group_id),
                )
                self.storage.state_changed(tx)
            tx.execute("DELETE FROM scim_members WHERE group_id = ?", (group_id,))
            if not private:
                tx.execute("DELETE FROM scim_former WHERE group_id = ?", (group_id,))
                tx.execute("DELETE FROM groups WHERE id = ?", (group_id,))
            self.storage.log.append(
                tx,
                "scim_group_deleted",
                actor,
                {
                    "group": group_id,
                    "displayName": stored.resource.get("displayName"),
                    "members_left": int(count_row[0]) if count_row else 0,
                    "kept_for_privacy": private,
                    "client": client,
                },
            )

    # ---- helpers ---------------------------------------------------------------------

    @staticmethod
    def storage_now() -> int:
        return now_ns()

    @staticmethod
    def _where(
        where: tuple[str, str] | None, columns: dict[str, str]
    ) -> tuple[str, tuple[Any, ...]]:
        if where is None:
            return "", ()
        attribute, value = where
        column = columns[attribute]
        if column in ("name", "display_name"):  # displayName is not case-exact (RFC 7643)
            return f" WHERE LOWER({column}) = LOWER(?)", (value,)
        return f" WHERE {column} = ?", (value,)

    @staticmethod
    def _precondition(if_match: str | None, version: int) -> None:
        if if_match is None:
            return
        wanted = {tag.strip() for tag in if_match.split(",")}
        if "*" not in wanted and etag(version) not in wanted and f'"{version}"' not in wanted:
            raise PreconditionFailed(f"the resource is at version {etag(version)}, not {if_match}")

    @staticmethod
    def _unique_user_name(tx: Tx, user_name: str, user_id: str | None) -> None:
        row = tx.one("SELECT id FROM scim_users WHERE user_name = ?", (user_name,))
        if row is not None and row[0] != user_id:
            raise Conflict(
                f"userName {user_name!r} is already taken by user {row[0]}", scim_type="uniqueness"
            )

    @staticmethod
    def _insert_rows(
        tx: Tx, table: str, columns: str, rows: Sequence[tuple[str | None, ...]]
    ) -> None:
        if not rows:
            return
        row_marks = "(" + _marks(len(rows[0])) + ")"
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            tx.execute(
                f"INSERT INTO {table} ({columns}) VALUES " + ", ".join(row_marks for _ in chunk),
                [value for row in chunk for value in row],
            )

    @staticmethod
    def _known_users(tx: Tx, user_ids: Sequence[str]) -> None:
        for chunk in _chunks(user_ids):
            found = {
                uid
                for (uid,) in tx.all(
                    f"SELECT id FROM scim_users WHERE id IN ({_marks(len(chunk))})", chunk
                )
            }
            missing = [uid for uid in chunk if uid not in found]
            if missing:
                raise BadRequest(
                    f"member {missing[0]!r} is not a user provisioned here "
                    "(members are Users, by their id)",
                    scim_type="invalidValue",
                )

    @staticmethod
    def _principals_of(tx: Tx, user_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(user_ids):
            found.update(
                p
                for (p,) in tx.all(
                    "SELECT principal FROM scim_principals "
                    f"WHERE user_id IN ({_marks(len(chunk))})",
                    chunk,
                )
            )
        return found

    @staticmethod
    def _is_or_was_private(tx: Tx, group_id: str) -> bool:
        return tx.one("SELECT 1 FROM privacy_intervals WHERE group_id = ?", (group_id,)) is not None

    def _member_delta(
        self, tx: Tx, group_id: str, change: MemberChange
    ) -> tuple[set[str], set[str]]:
        """``(added, removed)`` user ids relative to the stored members, steps applied in order."""
        if not change.steps:
            return set(), set()
        if any(kind == "replace" for kind, _ in change.steps):
            current = {
                uid
                for (uid,) in tx.all(
                    "SELECT user_id FROM scim_members WHERE group_id = ?", (group_id,)
                )
            }
            final = set(current)
            for kind, ids in change.steps:
                if kind == "replace":
                    final = set(ids)
                elif kind == "add":
                    final |= ids
                else:
                    final -= ids
            return final - current, current - final
        # Only additions and removals: read just the ids they name (milliseconds in any group).
        named = sorted(set().union(*(ids for _, ids in change.steps)))
        present: set[str] = set()
        for chunk in _chunks(named):
            present.update(
                uid
                for (uid,) in tx.all(
                    f"SELECT user_id FROM scim_members WHERE group_id = ? AND user_id IN "
                    f"({_marks(len(chunk))})",
                    (group_id, *chunk),
                )
            )
        state = set(present)
        for kind, ids in change.steps:
            state = state | ids if kind == "add" else state - ids
        return state - present, present - state

    def _reprincipal(
        self,
        tx: Tx,
        group_id: str,
        add: set[str],
        candidates: set[str],
        ts: int,
        actor: str,
        changed: bool = False,
    ) -> tuple[set[str], set[str]]:
        """Record who left a group after its members (or their principals) changed.

        A group's principals are read from its members' (``members_of``), so nothing is
        rewritten for an addition: a one-member change costs the same in any group. A
        candidate principal leaves only when no remaining member holds it; it is remembered
        with ``ts`` in ``scim_former`` (R1). Returns ``(added, left)`` principals.
        """
        if len(candidates) > RECOMPUTE_ABOVE:
            held = {
                p
                for (p,) in tx.all(
                    "SELECT DISTINCT sp.principal FROM scim_members m JOIN scim_principals sp "
                    "ON sp.user_id = m.user_id WHERE m.group_id = ?",
                    (group_id,),
                )
            }
            gone = {p for p in candidates if p not in held}
        else:
            # principal first: the few users holding it, not every member of a large group
            gone = {
                p
                for p in candidates
                if tx.one(
                    "SELECT 1 FROM scim_principals sp WHERE sp.principal = ? AND EXISTS "
                    "(SELECT 1 FROM scim_members m WHERE m.group_id = ? AND m.user_id = sp.user_id)"
                    " LIMIT 1",
                    (p, group_id),
                )
                is None
            }
        self._left(tx, group_id, gone, ts)
        if (add or gone or changed) and self._is_or_was_private(tx, group_id):
            self.storage.state_changed(tx)  # data.veil carries this group: the engine reloads it
        return add, gone

    @staticmethod
    def _left(tx: Tx, group_id: str, principals: Iterable[str], ts: int) -> None:
        for principal in sorted(principals):
            tx.execute(
                "INSERT INTO scim_former (group_id, principal, left_ns) VALUES (?, ?, ?) "
                "ON CONFLICT (group_id, principal) DO UPDATE SET left_ns = "
                "excluded.left_ns",
                (group_id, principal, ts),
            )

    @staticmethod
    def _groups_of(tx: Tx, user_ids: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        found: dict[str, list[tuple[str, str]]] = {}
        for chunk in _chunks(user_ids):
            for uid, gid, name in tx.all(
                "SELECT m.user_id, g.id, g.name FROM scim_members m JOIN groups g "
                f"ON g.id = m.group_id WHERE m.user_id IN ({_marks(len(chunk))}) "
                "ORDER BY g.id",
                chunk,
            ):
                found.setdefault(uid, []).append((gid, name))
        return found

    def _user(self, tx: Tx, user_id: str, with_groups: bool) -> StoredUser | None:
        row = tx.one(
            "SELECT id, resource, version, created_ns, modified_ns FROM scim_users WHERE id = ?",
            (user_id,),
        )
        if row is None:
            return None
        groups = self._groups_of(tx, [user_id]).get(user_id, []) if with_groups else []
        return StoredUser(
            row[0], json.loads(row[1]), int(row[2]), int(row[3]), int(row[4]), tuple(groups)
        )

    @staticmethod
    def _group(tx: Tx, group_id: str, with_members: bool) -> StoredGroup | None:
        row = tx.one(
            "SELECT id, resource, version, created_ns, updated_ns FROM groups "
            "WHERE id = ? AND source = 'scim' AND deleted_ns IS NULL",
            (group_id,),
        )
        if row is None:
            return None
        members = (
            tuple(
                (uid, name)
                for uid, name in tx.all(
                    "SELECT m.user_id, COALESCE(m.display, u.user_name) FROM scim_members m "
                    "JOIN scim_users u "
                    "ON u.id = m.user_id WHERE m.group_id = ? ORDER BY m.user_id",
                    (group_id,),
                )
            )
            if with_members
            else None
        )
        return StoredGroup(
            row[0], json.loads(row[1]), int(row[2]), int(row[3]), int(row[4]), members
        )


def members_of(tx: Tx, group_ids: Sequence[str]) -> dict[str, list[str]]:
    """The principals of SCIM groups' members, sorted, by group id."""
    found: dict[str, list[str]] = {}
    for chunk in _chunks(group_ids):
        for gid, principal in tx.all(
            "SELECT DISTINCT m.group_id, sp.principal FROM scim_members m "
            "JOIN scim_principals sp ON sp.user_id = m.user_id "
            f"WHERE m.group_id IN ({_marks(len(chunk))}) ORDER BY m.group_id, sp.principal",
            chunk,
        ):
            found.setdefault(gid, []).append(principal)
    return found


def former_of(tx: Tx, group_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """When each principal left each SCIM group: ``{group: {principal: left_ns}}``."""
    found: dict[str, dict[str, int]] = {}
    for chunk in _chunks(group_ids):
        for gid, principal, left in tx.all(
            "SELECT group_id, principal, left_ns FROM scim_former "
            f"WHERE group_id IN ({_marks(len(chunk))})",
            chunk,
        ):
            found.setdefault(gid, {})[principal] = int(left)
    return found
