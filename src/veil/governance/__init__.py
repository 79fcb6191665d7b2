"""The governance log's hash chain, in one place (R7, R8, R10).

    record    the record format: canonical JSON, the hash, the genesis, the audited actions
    signing   Ed25519 keys: signing each chain head and checking signatures
    witness   signed checkpoints of the head, written outside the database
    log       the log in Veil's store: append inside a transaction, read, verify a snapshot
    verify    verifying a chain (live or from an export file) against keys and checkpoints

The names callers use are re-exported here: ``from veil import governance``.
"""

from __future__ import annotations

from veil.governance.log import GovernanceLog
from veil.governance.record import ACTIONS, GENESIS, WITNESSED_AT_ONCE, canonical, record_hash
from veil.governance.verify import (
    MalformedInput,
    Verdict,
    read_checkpoints,
    read_jsonl,
    verify,
)

__all__ = [
    "ACTIONS",
    "GENESIS",
    "WITNESSED_AT_ONCE",
    "GovernanceLog",
    "MalformedInput",
    "Verdict",
    "canonical",
    "read_checkpoints",
    "read_jsonl",
    "record_hash",
    "verify",
]
