"""Verifying the governance log: a chain, its signatures and the witness's checkpoints.

Verification walks the records in ``seq`` order (``record`` gives their hash), checks each
signature against the configured public keys (``signing``), and each witness checkpoint
(``witness``) against the record it names. It needs no database: a live verify passes the
records of one snapshot (``log``), an offline one the lines of an export file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil.governance.record import GENESIS, record_hash
from veil.governance.signing import Keyring, checkpoint_message, head_message


class MalformedInput(ValueError):
    """A line of an export or witness file that is not a well-formed record or checkpoint."""


@dataclass(frozen=True)
class Verdict:
    ok: bool
    records: int
    first_bad_seq: int | None = None
    problem: str | None = None
    reason: str | None = None
    signed: bool | None = None  # None: no key given, signatures not checked
    unsigned_records: int = 0  # records from before signing was turned on (covered by later ones)
    checkpoints: int | None = None  # witness checkpoints checked (None: no witness given)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "records": self.records}
        if not self.ok:
            out.update(first_bad_seq=self.first_bad_seq, problem=self.problem, reason=self.reason)
        if self.signed is not None:
            out["signed"] = self.signed
            if self.unsigned_records:
                out["unsigned_records"] = self.unsigned_records
        if self.checkpoints is not None:
            out["checkpoints"] = self.checkpoints
        return out


_RECORD_FIELDS: tuple[tuple[str, type], ...] = (
    ("seq", int),
    ("ts", str),
    ("action", str),
    ("actor", str),
    ("details", dict),
    ("prev_hash", str),
    ("hash", str),
)
_CHECKPOINT_FIELDS: tuple[tuple[str, type], ...] = (
    ("seq", int),
    ("hash", str),
    ("ts", str),
    ("key_id", str),
    ("signature", str),
)


def _shape_problem(value: Any, fields: tuple[tuple[str, type], ...], what: str) -> str | None:
    if not isinstance(value, Mapping):
        return f"{what} is not a JSON object"
    for name, kind in fields:
        if name not in value:
            return f"{what} has no {name!r}"
        item = value[name]
        if not isinstance(item, kind) or isinstance(item, bool):
            return f"{what}'s {name!r} is not a {kind.__name__}"
    if value["seq"] < 1:
        return f"{what}'s 'seq' is not a positive integer"
    return None


@dataclass(frozen=True)
class _Checkpoint:
    seq: int
    hash: str
    ts: str
    problem: tuple[str, str] | None  # (problem, reason) when its signature is not good


def _checkpoints(checkpoints: Sequence[Any], keyring: Keyring) -> list[_Checkpoint] | Verdict:
    """Checkpoints sorted by seq, each with its signature checked; a Verdict if one is malformed."""
    checked = []
    for number, checkpoint in enumerate(checkpoints, start=1):
        shape = _shape_problem(checkpoint, _CHECKPOINT_FIELDS, f"witness checkpoint {number}")
        if shape is not None:
            return Verdict(False, 0, None, "malformed_checkpoint", shape)
        seq, hash_, ts, kid = (checkpoint[k] for k in ("seq", "hash", "ts", "key_id"))
        bad = keyring.problem(kid, checkpoint_message(seq, hash_, ts, kid), checkpoint["signature"])
        if bad is not None:
            bad = (
                "forged_checkpoint",
                f"the witness checkpoint of record {seq} (at {ts}) is not genuine: {bad[1]}",
            )
        checked.append(_Checkpoint(seq, hash_, ts, bad))
    checked.sort(key=lambda c: c.seq)
    return checked


def verify(
    records: Iterable[Any],
    head: tuple[int, str] | None = None,
    keyring: Keyring | None = None,
    checkpoints: Sequence[Any] | None = None,
) -> Verdict:
    """Walk records in stored order; report the first whose content, order or presence changed.

    ``head`` is the ``(seq, hash)`` the store recorded with its last append: a chain that is
    whole but ends elsewhere has lost its newest records (or gained unlogged ones). With a
    ``keyring``, every record's signature of its chain head must be good and made by one of
    its keys (records from before signing was turned on may come first; the first signed one
    covers them through the chain). ``checkpoints`` (from the witness, checked with the
    keyring) must each name a record of the log with the same hash: a log that ends before a
    checkpoint has lost its newest records.
    """
    signed = bool(keyring)
    ring = keyring if keyring is not None else Keyring()
    cps: list[_Checkpoint] = []
    if checkpoints is not None and signed:
        found = _checkpoints(checkpoints, ring)
        if isinstance(found, Verdict):
            return found
        cps = found

    def verdict(
        ok: bool,
        count: int,
        seq: int | None = None,
        problem: str | None = None,
        reason: str | None = None,
    ) -> Verdict:
        return Verdict(
            ok,
            count,
            seq,
            problem,
            reason,
            signed=signed if keyring is not None else None,
            unsigned_records=unsigned,
            checkpoints=matched if checkpoints is not None and signed else None,
        )

    expected_seq, prev, count, unsigned, matched = 1, GENESIS, 0, 0, 0
    signed_seen = last_signed = False
    position = 0
    source = iter(records)
    while True:
        try:
            record = next(source)
        except StopIteration:
            break
        except MalformedInput as exc:
            return verdict(False, count, expected_seq, "malformed_record", str(exc))
        shape = _shape_problem(record, _RECORD_FIELDS, f"record {expected_seq}")
        if shape is not None:
            return verdict(False, count, expected_seq, "malformed_record", shape)
        seq = record["seq"]
        if seq != expected_seq:
            problem = "missing_record" if seq > expected_seq else "reordered"
            return verdict(
                False, count, seq, problem, f"expected record {expected_seq} but found record {seq}"
            )
        if record["prev_hash"] != prev:
            return verdict(
                False,
                count,
                seq,
                "broken_link",
                f"record {seq} does not link to the hash of record {seq - 1}",
            )
        if record_hash(record) != record["hash"]:
            return verdict(
                False,
                count,
                seq,
                "changed_content",
                f"record {seq}'s content does not match its hash",
            )
        if signed:
            kid, signature = record.get("key_id"), record.get("signature")
            if kid is None and signature is None:
                if signed_seen:
                    return verdict(
                        False,
                        count,
                        seq,
                        "unsigned_record",
                        f"record {seq} is not signed, but records before it are",
                    )
                unsigned += 1
                last_signed = False
            else:
                bad = ring.problem(kid, head_message(seq, record["hash"], str(kid)), signature)
                if bad is not None:
                    return verdict(False, count, seq, bad[0], f"record {seq}: {bad[1]}")
                signed_seen = last_signed = True
        while position < len(cps) and cps[position].seq <= seq:
            checkpoint = cps[position]
            if checkpoint.problem is not None:
                return verdict(False, count, checkpoint.seq, *checkpoint.problem)
            if checkpoint.hash != record["hash"]:
                return verdict(
                    False,
                    count,
                    seq,
                    "witness_mismatch",
                    f"the witness saw record {seq} with another hash at "
                    f"{checkpoint.ts}: the record was replaced",
                )
            matched += 1
            position += 1
        prev = record["hash"]
        expected_seq += 1
        count += 1
    last = expected_seq - 1
    if signed and count and not last_signed:
        return verdict(
            False,
            count,
            last,
            "unsigned_record",
            f"the newest record ({last}) is not signed: nothing vouches for the log",
        )
    if head is not None and (head[0], head[1]) != (last, prev):
        if head[0] > last:
            return verdict(
                False,
                count,
                expected_seq,
                "missing_record",
                f"the log ends at record {last} but its head is record "
                f"{head[0]}: the newest records were removed",
            )
        return verdict(
            False,
            count,
            head[0] + 1 if head[0] < last else head[0],
            "broken_link",
            f"the log's head is record {head[0]} with another hash: "
            "records were changed or added without the log",
        )
    for checkpoint in cps[position:]:
        if checkpoint.problem is not None:
            return verdict(False, count, checkpoint.seq, *checkpoint.problem)
    if position < len(cps):
        newest = cps[-1]
        return verdict(
            False,
            count,
            expected_seq,
            "truncated",
            f"the witness saw record {newest.seq} at {newest.ts}, but the log "
            f"ends at record {last}: the newest records were cut off",
        )
    return verdict(True, count)


def _lines(path: Path, what: str) -> Iterator[Any]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise MalformedInput(f"{path}:{number}: not a JSON {what}: {exc}") from exc


def read_jsonl(path: Path) -> Iterator[Any]:
    """Records from a ``veil governance export`` file, for offline verification.

    A line that is not JSON raises MalformedInput (``verify`` turns it into a verdict)."""
    yield from _lines(path, "record")


def read_checkpoints(path: Path) -> list[Any]:
    """Every checkpoint of a witness file; MalformedInput for a line that is not JSON."""
    return list(_lines(path, "checkpoint"))
