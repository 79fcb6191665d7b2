"""The governance log's hash chain: how a record is hashed, and how a chain is verified.

Each record is ``{"seq", "ts", "action", "actor", "details", "prev_hash"}``; its ``hash`` is
the SHA-256 (hex) of that object in canonical JSON (keys sorted, no spaces, UTF-8). The first
record's ``prev_hash`` is 64 zeros. Verification walks the records in ``seq`` order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64

# Every action R8 names, and what the record's details carry.
ACTIONS = (
    "group_imported",
    "group_deleted",
    "privacy_group_added",
    "privacy_group_removed",
    "admin_added",
    "admin_removed",
    "permission_granted",
    "permission_revoked",
    "reveal_session_opened",
    "reveal_session_refused",
    "reveal_session_ended",
    "activities_revealed",
    "reveal_refused",
    "policy_reloaded",
    "permission_grant_refused",
    "refusals_coalesced",
    "scim_user_created",
    "scim_user_updated",
    "scim_user_deleted",
    "scim_group_created",
    "scim_group_updated",
    "scim_group_deleted",
)


def canonical(value: Any) -> bytes:
    """The canonical JSON form a record is hashed in."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    body = {k: record[k] for k in ("seq", "ts", "action", "actor", "details", "prev_hash")}
    return hashlib.sha256(canonical(body)).hexdigest()


@dataclass(frozen=True)
class Verdict:
    ok: bool
    records: int
    first_bad_seq: int | None = None
    problem: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "records": self.records}
        if not self.ok:
            out.update(first_bad_seq=self.first_bad_seq, problem=self.problem, reason=self.reason)
        return out


def verify(records: Iterable[Mapping[str, Any]],
           head: tuple[int, str] | None = None) -> Verdict:
    """Walk records in stored order; report the first whose content, order or presence changed.

    ``head`` is the ``(seq, hash)`` the store recorded with its last append: a chain that is
    whole but ends elsewhere has lost its newest records (or gained unlogged ones).
    """
    expected_seq = 1
    prev = GENESIS
    count = 0
    for record in records:
        seq = record["seq"]
        if seq != expected_seq:
            problem = "missing_record" if seq > expected_seq else "reordered"
            return Verdict(False, count, seq, problem,
                           f"expected record {expected_seq} but found record {seq}")
        if record["prev_hash"] != prev:
            return Verdict(False, count, seq, "broken_link",
                           f"record {seq} does not link to the hash of record {seq - 1}")
        if record_hash(record) != record["hash"]:
            return Verdict(False, count, seq, "changed_content",
                           f"record {seq}'s content does not match its hash")
        prev = record["hash"]
        expected_seq += 1
        count += 1
    if head is not None and (head[0], head[1]) != (expected_seq - 1, prev):
        if head[0] >= expected_seq:
            return Verdict(False, count, expected_seq, "missing_record",
                           f"the log ends at record {expected_seq - 1} but its head is record "
                           f"{head[0]}: the newest records were removed")
        return Verdict(False, count, head[0] + 1 if head[0] < expected_seq - 1 else head[0],
                       "broken_link", f"the log's head is record {head[0]} with another hash: "
                       "records were changed or added without the log")
    return Verdict(True, count)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records from a ``veil governance export`` file, for offline verification."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"{path}:{number}: not a JSON record: {exc}") from exc
