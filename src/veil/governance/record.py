"""The governance record and its hash: the one format the chain, signatures and verify share.

Each record is ``{"seq", "ts", "action", "actor", "details", "prev_hash"}``; its ``hash`` is
the SHA-256 (hex) of that object in canonical JSON (keys sorted, no spaces, UTF-8). The first
record's ``prev_hash`` is 64 zeros (``GENESIS``). A record also carries ``key_id`` and
``signature``: the Ed25519 signature of the chain head it produces (``signing``), null while
unsigned.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
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

# Actions checkpointed to the witness before the answer leaves (the others within
# governance.checkpoint_s).
WITNESSED_AT_ONCE = frozenset({"activities_revealed"})


def canonical(value: Any) -> bytes:
    """The canonical JSON form a record is hashed in."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    body = {k: record[k] for k in ("seq", "ts", "action", "actor", "details", "prev_hash")}
    return hashlib.sha256(canonical(body)).hexdigest()
