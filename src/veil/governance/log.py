"""The governance log in Veil's store: append a record inside a write transaction, read the
records and the chain head, and verify one snapshot of them (R7, R8, R10).

Every record goes through ``GovernanceLog.append``, in the transaction of the change it
audits: the record, its signature and the new head commit with that change or not at all.
Checkpoints go to the witness after the commit (at once for a reveal).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veil.clock import now_ns, rfc3339
from veil.governance.record import GENESIS, WITNESSED_AT_ONCE, canonical, record_hash
from veil.governance.verify import Verdict, read_checkpoints, verify
from veil.governance.witness import Checkpointer, open_witness

if TYPE_CHECKING:
    from veil.config import GovernanceConfig
    from veil.storage.backend import Backend, Tx

_COLUMNS = "seq, ts, action, actor, details, prev_hash, hash, key_id, signature"


class GovernanceLog:
    """The hash-chained, signed log of ``backend``; ``sealing`` (the ``governance``
    configuration) gives the key that signs every appended record, the public keys verify
    accepts, and the witness that receives checkpoints."""

    def __init__(self, backend: Backend, sealing: GovernanceConfig | None = None) -> None:
        self.backend = backend
        self.signer = sealing.signer if sealing else None
        self.keyring = sealing.keyring if sealing and sealing.keyring else None
        self.witness_file = (
            Path(sealing.witness)
            if sealing and sealing.witness and not sealing.witness.startswith("https://")
            else None
        )
        self.checkpointer = (
            Checkpointer(
                sealing.signer,
                open_witness(sealing.witness),
                sealing.checkpoint_s,
                self.head,
                lambda: rfc3339(now_ns()),
            )
            if sealing and sealing.signer and sealing.witness
            else None
        )

    def close(self) -> None:
        """Write the checkpoint still waiting, if any."""
        if self.checkpointer is not None:
            self.checkpointer.close()

    def sealing_status(self) -> dict[str, Any]:
        """Whether appended records are signed, and where checkpoints go (for /readyz)."""
        return {
            "signed": self.signer is not None,
            "key_id": self.signer.key_id if self.signer else None,
            "witness": self.checkpointer.witness.where if self.checkpointer else None,
        }

    def append(self, tx: Tx, action: str, actor: str, details: dict[str, Any]) -> dict[str, Any]:
        """Add a record at the chain's head, inside the caller's (serialized) write transaction.

        The record is signed (the chain head it produces) in the same transaction, and
        checkpointed to the witness after the commit (at once for a reveal, whose ``with``
        block then raises GovernanceWriteFailed if the witness fails).
        """
        head = tx.one("SELECT seq, hash FROM governance_head WHERE id = 1")
        seq, prev = (int(head[0]) + 1, head[1]) if head else (1, GENESIS)
        record: dict[str, Any] = {
            "seq": seq,
            "ts": rfc3339(now_ns()),
            "action": action,
            "actor": actor,
            "details": details,
            "prev_hash": prev,
        }
        record["hash"] = record_hash(record)
        record["key_id"] = self.signer.key_id if self.signer else None
        record["signature"] = self.signer.sign_head(seq, record["hash"]) if self.signer else None
        tx.execute(
            f"INSERT INTO governance_log ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                record["ts"],
                action,
                actor,
                canonical(details).decode(),
                prev,
                record["hash"],
                record["key_id"],
                record["signature"],
            ),
        )
        tx.execute(
            "UPDATE governance_head SET seq = ?, hash = ? WHERE id = 1", (seq, record["hash"])
        )
        if self.checkpointer is not None:
            if action in WITNESSED_AT_ONCE:
                tx.after_commit(partial(self.checkpointer.now, seq, record["hash"]))
            else:
                tx.after_commit(self.checkpointer.soon)
        return record

    def page(
        self,
        since: str | None = None,
        until: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Records after ``seq`` ``after``, filtered, at most ``limit``."""
        where: list[str] = ["seq > ?"]
        params: list[Any] = [after]
        for clause, value in (
            ("ts >= ?", since),
            ("ts < ?", until),
            ("action = ?", action),
            ("actor = ?", actor),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        with self.backend.transaction(write=False) as tx:
            rows = tx.all(
                f"SELECT {_COLUMNS} FROM governance_log "
                f"WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                (*params, limit),
            )
        return [_record(row) for row in rows]

    def last_record(self, action: str, tx: Tx | None = None) -> dict[str, Any] | None:
        """The newest record of one action, or None (in ``tx`` when given)."""
        if tx is None:
            with self.backend.transaction(write=False) as own:
                return self.last_record(action, own)
        row = tx.one(
            f"SELECT {_COLUMNS} FROM governance_log WHERE action = ? ORDER BY seq DESC LIMIT 1",
            (action,),
        )
        return None if row is None else _record(row)

    def iter_records(self, batch: int = 1000) -> Iterator[dict[str, Any]]:
        """Every record in chain order, from one snapshot of the log."""
        with self.backend.transaction(write=False) as tx:
            yield from _records(tx, batch)

    def head(self) -> tuple[int, str] | None:
        """The chain head ``(seq, hash)``, or None while the log is empty."""
        with self.backend.transaction(write=False) as tx:
            row = tx.one("SELECT seq, hash FROM governance_head WHERE id = 1")
        return (int(row[0]), row[1]) if row and int(row[0]) > 0 else None

    def verify(self) -> Verdict:
        """Verify the chain, its signatures and the witness's checkpoints, and that the chain
        ends at the head recorded with the last append.

        The witness is read first: every checkpoint in it names a record committed before,
        so the snapshot read next holds it. Head and records come from that one snapshot.
        """
        checkpoints: list[Any] | None = None
        if self.witness_file is not None and self.keyring:
            try:
                checkpoints = read_checkpoints(self.witness_file)
            except FileNotFoundError:
                checkpoints = []
            except (OSError, ValueError) as exc:
                return Verdict(
                    False,
                    0,
                    None,
                    "unreadable_witness",
                    f"the witness {self.witness_file}: {exc}",
                    signed=True,
                )
        with self.backend.transaction(write=False) as tx:
            head = tx.one("SELECT seq, hash FROM governance_head WHERE id = 1")
            return verify(
                _records(tx),
                head=(int(head[0]), head[1]) if head else None,
                keyring=self.keyring,
                checkpoints=checkpoints,
            )


def _records(tx: Tx, batch: int = 1000) -> Iterator[dict[str, Any]]:
    after = 0
    while True:
        rows = tx.all(
            f"SELECT {_COLUMNS} FROM governance_log WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, batch),
        )
        if not rows:
            return
        for row in rows:
            yield _record(row)
        after = rows[-1][0]


def _record(row: tuple[Any, ...]) -> dict[str, Any]:
    seq, ts, action, actor, details, prev_hash, hash_, key_id, signature = row
    return {
        "seq": int(seq),
        "ts": ts,
        "action": action,
        "actor": actor,
        "details": json.loads(details),
        "prev_hash": prev_hash,
        "hash": hash_,
        "key_id": key_id,
        "signature": signature,
    }
