"""R10 against someone who can write the database: signed chain heads, a witness outside it.

The attacker here is test code with write access to the real SQLite file or the real
PostgreSQL tables: it drops the append-only triggers, rewrites records, recomputes every
hash, re-signs with a key of its own and moves the stored head. Verify must name each.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask
from flask.testing import FlaskClient

from veil import governance
from veil.app import create_app
from veil.config import Config
from veil.errors import ConfigError
from veil.governance import signing
from veil.storage import Storage, open_storage

from conftest import (
    ADMIN,
    GRANTOR,
    ROOT,
    SECRET,
    LoopbackStore,
    activity,
    auth,
    config_doc,
    iso,
    make_config,
)
from netutil import free_port, self_signed, wait_until_ready

ANN = "ann@contoso.com"
SEC = 1_000_000_000


def admin() -> dict[str, str]:
    """A fresh admin token (one made at import would expire during a long run)."""
    return auth(ADMIN)


@dataclass
class Keys:
    key: Path  # Veil's private key
    pub: Path
    other: Path  # a second key pair of Veil's (rotation)
    other_pub: Path


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    signing.generate(tmp_path / "veil.key")
    signing.generate(tmp_path / "next.key")
    return Keys(
        tmp_path / "veil.key",
        tmp_path / "veil.key.pub",
        tmp_path / "next.key",
        tmp_path / "next.key.pub",
    )


def signed_config(
    store: LoopbackStore, storage_url: str, tmp_path: Path, pair: Keys, **governance_doc: Any
) -> Config:
    doc = {
        "signing_key_file": str(pair.key),
        "witness": str(tmp_path / "checkpoints.jsonl"),
        "checkpoint_s": 0.05,
        **governance_doc,
    }
    return make_config(
        store.url, storage_url, governance={k: v for k, v in doc.items() if v is not None}
    )


@pytest.fixture
def signed_app(
    store: LoopbackStore, storage_url: str, tmp_path: Path, keys: Keys
) -> Iterator[Flask]:
    application = create_app(signed_config(store, storage_url, tmp_path, keys))
    yield application
    application.extensions["veil"].storage.close()


@pytest.fixture
def client(signed_app: Flask) -> FlaskClient:
    return signed_app.test_client()


def storage_of(app: Flask) -> Storage:
    found: Storage = app.extensions["veil"].storage
    return found


def make_records(client: FlaskClient, n: int = 6) -> None:
    for i in range(n):
        r = client.put(
            f"/veil/v1/groups/g{i}", json={"name": f"G{i}", "members": []}, headers=admin()
        )
        assert r.status_code == 201, r.get_json()


def verify(client: FlaskClient) -> dict[str, Any]:
    r = client.get("/veil/v1/governance-log/verify", headers=admin())
    assert r.status_code == 200
    result: dict[str, Any] = r.get_json()
    return result


def checkpoints(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_checkpoint(path: Path, seq: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(c["seq"] >= seq for c in checkpoints(path)):
            return
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint of record {seq} in {path}: {checkpoints(path)}")


# ---- the attacker -------------------------------------------------------------------------

COLUMNS = ("seq", "ts", "action", "actor", "details", "prev_hash", "hash", "key_id", "signature")


class Attacker:
    """Write access to the database, no access to Veil's private key."""

    def __init__(self, storage_url: str) -> None:
        self.url = storage_url
        self.key = Ed25519PrivateKey.generate()
        self.key_id = signing.key_id(self.key.public_key())

    def _connect(self) -> Any:
        if self.url.startswith("sqlite:///"):
            return sqlite3.connect(self.url[len("sqlite:///") :])
        return psycopg.connect(self.url)

    def _sql(self, statement: str) -> str:
        return statement if self.url.startswith("sqlite") else statement.replace("?", "%s")

    def records(self) -> list[dict[str, Any]]:
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(COLUMNS)} FROM governance_log ORDER BY seq"
            ).fetchall()
        return [
            {**dict(zip(COLUMNS, row, strict=True)), "details": json.loads(row[4])} for row in rows
        ]

    def rewrite(self, records: list[dict[str, Any]], head: tuple[int, str] | None = None) -> None:
        """Drop the append-only triggers, replace the log, and move the head to its end."""
        last = records[-1] if records else None
        head = head or ((last["seq"], last["hash"]) if last else (0, "0" * 64))
        with self._connect() as conn:
            if self.url.startswith("sqlite"):
                conn.execute("DROP TRIGGER IF EXISTS governance_log_no_update")
                conn.execute("DROP TRIGGER IF EXISTS governance_log_no_delete")
            else:
                for trigger in ("no_update", "no_delete", "no_truncate"):
                    conn.execute(
                        f"DROP TRIGGER IF EXISTS governance_log_{trigger} ON governance_log"
                    )
            conn.execute("DELETE FROM governance_log")
            for record in records:
                conn.execute(
                    self._sql(
                        f"INSERT INTO governance_log ({', '.join(COLUMNS)}) "
                        f"VALUES ({', '.join('?' * len(COLUMNS))})"
                    ),
                    tuple(
                        governance.canonical(record[c]).decode() if c == "details" else record[c]
                        for c in COLUMNS
                    ),
                )
            conn.execute(
                self._sql("UPDATE governance_head SET seq = ?, hash = ? WHERE id = 1"), head
            )

    def rechain(
        self,
        records: list[dict[str, Any]],
        start: int,
        *,
        sign: bool = False,
        claim_key_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Renumber from 1, recompute every hash from index ``start``, and re-sign those
        records with the attacker's key (under its own id, or one it claims)."""
        out: list[dict[str, Any]] = []
        prev = governance.GENESIS
        for index, record in enumerate(records):
            record = {**record, "seq": index + 1}
            if index >= start:
                record["prev_hash"] = prev
                record["hash"] = governance.record_hash(record)
                if sign:
                    kid = claim_key_id or self.key_id
                    record["key_id"] = kid
                    record["signature"] = self.key.sign(
                        signing.head_message(record["seq"], record["hash"], kid)
                    ).hex()
            prev = record["hash"]
            out.append(record)
        return out


# ---- a healthy signed log -----------------------------------------------------------------


@pytest.mark.storage
def test_every_record_is_signed_and_the_log_verifies(
    client: FlaskClient, signed_app: Flask, keys: Keys, tmp_path: Path, storage_url: str
) -> None:
    make_records(client)
    records = Attacker(storage_url).records()
    kid = signing.key_id(signing.load_public(keys.pub))
    assert [r["key_id"] for r in records] == [kid] * 6
    public = signing.load_public(keys.pub)
    for r in records:  # each signature covers (seq, hash, key id) of its record
        public.verify(bytes.fromhex(r["signature"]), signing.head_message(r["seq"], r["hash"], kid))
    wait_for_checkpoint(tmp_path / "checkpoints.jsonl", 6)
    result = verify(client)
    assert result["ok"] is True and result["records"] == 6 and result["signed"] is True
    assert result["checkpoints"] >= 1
    ready = client.get("/readyz").get_json()
    assert ready["governance_log"] == {
        "signed": True,
        "key_id": kid,
        "witness": str(tmp_path / "checkpoints.jsonl"),
    }


def test_an_unsigned_log_says_so(
    store: LoopbackStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="veil"):
        app = create_app(make_config(store.url, f"sqlite:///{tmp_path / 'veil.db'}"))
    try:
        assert "governance log is UNSIGNED" in caplog.text
        ready = app.test_client().get("/readyz").get_json()
        assert ready["governance_log"] == {"signed": False, "key_id": None, "witness": None}
    finally:
        storage_of(app).close()


# ---- the attacks --------------------------------------------------------------------------


@pytest.mark.storage
def test_content_changed_and_rehashed(client: FlaskClient, storage_url: str) -> None:
    make_records(client)
    attacker = Attacker(storage_url)
    records = attacker.records()
    records[2]["actor"] = "mallory@contoso.com"
    attacker.rewrite(attacker.rechain(records, 2))  # hashes right, signatures old
    result = verify(client)
    assert (result["ok"], result["first_bad_seq"], result["problem"]) == (False, 3, "bad_signature")


@pytest.mark.storage
def test_content_changed_rehashed_and_resigned_with_another_key(
    client: FlaskClient, storage_url: str
) -> None:
    make_records(client)
    attacker = Attacker(storage_url)
    records = attacker.records()
    records[2]["details"] = {"group": "nothing-to-see"}
    attacker.rewrite(attacker.rechain(records, 2, sign=True))
    result = verify(client)
    assert (result["ok"], result["first_bad_seq"], result["problem"]) == (False, 3, "unknown_key")
    assert attacker.key_id in result["reason"]


@pytest.mark.storage
def test_resigned_under_the_configured_key_id(
    client: FlaskClient, storage_url: str, keys: Keys
) -> None:
    make_records(client)
    attacker = Attacker(storage_url)
    records = attacker.records()
    records[3]["actor"] = "mallory@contoso.com"
    kid = signing.key_id(signing.load_public(keys.pub))
    attacker.rewrite(attacker.rechain(records, 3, sign=True, claim_key_id=kid))
    result = verify(client)
    assert (result["ok"], result["first_bad_seq"], result["problem"]) == (False, 4, "bad_signature")


@pytest.mark.storage
def test_record_removed_rest_rehashed_and_resigned(client: FlaskClient, storage_url: str) -> None:
    make_records(client)
    attacker = Attacker(storage_url)
    records = attacker.records()
    del records[2]  # record 3 goes; 4.. become 3..
    attacker.rewrite(attacker.rechain(records, 2, sign=True))
    result = verify(client)
    assert (result["ok"], result["first_bad_seq"], result["problem"]) == (False, 3, "unknown_key")


@pytest.mark.storage
def test_records_reordered(client: FlaskClient, storage_url: str) -> None:
    make_records(client)
    attacker = Attacker(storage_url)
    records = attacker.records()
    records[2], records[3] = records[3], records[2]
    attacker.rewrite(attacker.rechain(records, 2))  # renumbered and rehashed
    result = verify(client)
    assert (result["ok"], result["first_bad_seq"], result["problem"]) == (False, 3, "bad_signature")


@pytest.mark.storage
def test_signatures_stripped(client: FlaskClient, storage_url: str) -> None:
    make_records(client)
    attacker = Attacker(storage_url)
    genuine = attacker.records()
    # every signature stripped: the log claims to predate signing, but its newest record is
    # not signed
    attacker.rewrite([{**r, "key_id": None, "signature": None} for r in genuine])
    result = verify(client)
    assert (result["ok"], result["first_bad_seq"], result["problem"]) == (
        False,
        6,
        "unsigned_record",
    )
    # signatures stripped from record 3 on: unsigned after signed
    tail = [*genuine[:2], *({**r, "key_id": None, "signature": None} for r in genuine[2:])]
    tail[3]["actor"] = "mallory@contoso.com"
    attacker.rewrite(attacker.rechain(tail, 3))
    result = verify(client)
    assert (result["ok"], result["first_bad_seq"], result["problem"]) == (
        False,
        3,
        "unsigned_record",
    )


@pytest.mark.storage
def test_newest_records_cut_off_and_head_moved_back(
    client: FlaskClient, signed_app: Flask, storage_url: str, keys: Keys, tmp_path: Path
) -> None:
    make_records(client)
    wait_for_checkpoint(tmp_path / "checkpoints.jsonl", 6)
    attacker = Attacker(storage_url)
    attacker.rewrite(attacker.records()[:4])  # 5 and 6 gone; the head says 4
    # The chain and its signatures alone cannot tell: what is left is a genuine prefix.
    storage = storage_of(signed_app)
    keyring = signing.Keyring.from_files([keys.pub])
    assert governance.verify(storage.iter_log(), keyring=keyring).ok is True
    result = verify(client)  # with the witness
    assert (result["ok"], result["first_bad_seq"], result["problem"]) == (False, 5, "truncated")
    assert "record 6" in result["reason"]
    # an auditor's configuration: the public key and the witness, no private key
    auditor = open_storage(
        storage_url,
        5,
        (),
        make_config(
            "http://127.0.0.1:9",
            storage_url,
            governance={
                "public_key_file": str(keys.pub),
                "witness": str(tmp_path / "checkpoints.jsonl"),
            },
        ).governance,
    )
    try:
        assert auditor.verify_log().problem == "truncated"
    finally:
        auditor.close()
    # Veil appends on after the cut: new records 5, 6, 7 carry other hashes than the witness saw
    for i in range(3):
        assert (
            client.post(
                "/veil/v1/admins", json={"principal": f"p{i}@contoso.com"}, headers=admin()
            ).status_code
            == 201
        )
    result = verify(client)
    assert (result["ok"], result["problem"]) == (False, "witness_mismatch"), result
    assert result["first_bad_seq"] in (5, 6)


@pytest.mark.storage
def test_forged_checkpoint(
    client: FlaskClient, storage_url: str, keys: Keys, tmp_path: Path
) -> None:
    make_records(client, 3)
    witness = tmp_path / "checkpoints.jsonl"
    wait_for_checkpoint(witness, 3)
    attacker = Attacker(storage_url)
    third = attacker.records()[2]
    # A checkpoint of a real record, signed by the attacker under the configured key id.
    kid = signing.key_id(signing.load_public(keys.pub))
    forged = {"seq": 3, "hash": third["hash"], "ts": "2030-01-01T00:00:00.000000Z", "key_id": kid}
    forged["signature"] = attacker.key.sign(
        signing.checkpoint_message(3, third["hash"], forged["ts"], kid)
    ).hex()
    with witness.open("a") as out:
        out.write(json.dumps(forged) + "\n")
    result = verify(client)
    assert (result["ok"], result["first_bad_seq"], result["problem"]) == (
        False,
        3,
        "forged_checkpoint",
    )
    # ... and one under its own key
    lines = witness.read_text().splitlines()[:-1]
    own = {**forged, "key_id": attacker.key_id}
    own["signature"] = attacker.key.sign(
        signing.checkpoint_message(3, third["hash"], own["ts"], attacker.key_id)
    ).hex()
    witness.write_text("\n".join([*lines, json.dumps(own)]) + "\n")
    result = verify(client)
    assert (result["ok"], result["first_bad_seq"], result["problem"]) == (
        False,
        3,
        "forged_checkpoint",
    )
    assert "not a configured public key" in result["reason"]


@pytest.mark.storage
def test_signature_from_a_key_that_is_not_configured(
    store: LoopbackStore, storage_url: str, tmp_path: Path, keys: Keys
) -> None:
    writer = open_storage(
        storage_url,
        5,
        (),
        signed_config(store, storage_url, tmp_path, keys, witness=None).governance,
    )
    try:
        for i in range(3):
            writer.record("admin_added", ADMIN, {"principal": f"p{i}"})
    finally:
        writer.close()
    # A verifier that trusts only the other key (the public key file alone, no private key).
    verifier = open_storage(
        storage_url,
        5,
        (),
        make_config(
            store.url, storage_url, governance={"public_key_file": str(keys.other_pub)}
        ).governance,
    )
    try:
        result = verifier.verify_log().as_dict()
    finally:
        verifier.close()
    assert (result["ok"], result["first_bad_seq"], result["problem"]) == (False, 1, "unknown_key")


@pytest.mark.storage
def test_key_rotation(store: LoopbackStore, storage_url: str, tmp_path: Path, keys: Keys) -> None:
    first = create_app(signed_config(store, storage_url, tmp_path, keys))
    make_records(first.test_client(), 3)
    storage_of(first).close()
    # keygen a new key, restart with it; the old public key stays in `keys`
    second = create_app(
        signed_config(
            store,
            storage_url,
            tmp_path,
            keys,
            signing_key_file=str(keys.other),
            keys=[str(keys.pub)],
        )
    )
    try:
        client = second.test_client()
        for i in range(3):
            assert (
                client.post(
                    "/veil/v1/admins", json={"principal": f"p{i}@contoso.com"}, headers=admin()
                ).status_code
                == 201
            )
        records = Attacker(storage_url).records()
        old = signing.key_id(signing.load_public(keys.pub))
        new = signing.key_id(signing.load_public(keys.other_pub))
        assert [r["key_id"] for r in records] == [old] * 3 + [new] * 3
        wait_for_checkpoint(tmp_path / "checkpoints.jsonl", 6)
        result = verify(client)
        assert result["ok"] is True and result["records"] == 6, result
        # without the old public key, the old records are not vouched for
        alone = governance.verify(
            storage_of(second).iter_log(), keyring=signing.Keyring.from_files([keys.other_pub])
        )
        assert (alone.ok, alone.first_bad_seq, alone.problem) == (False, 1, "unknown_key")
    finally:
        storage_of(second).close()


@pytest.mark.storage
def test_head_check_compares_the_hash_too(store: LoopbackStore, storage_url: str) -> None:
    """Unsigned: only the stored head catches a rewritten newest record (same seq)."""
    app = create_app(make_config(store.url, storage_url))
    try:
        client = app.test_client()
        make_records(client, 4)
        attacker = Attacker(storage_url)
        records = attacker.records()
        head = (records[-1]["seq"], records[-1]["hash"])
        records[-1]["actor"] = "mallory@contoso.com"
        attacker.rewrite(attacker.rechain(records, 3), head=head)  # head left as it was
        result = verify(client)
        assert (result["ok"], result["first_bad_seq"]) == (False, 4), result
    finally:
        storage_of(app).close()


# ---- the witness on reveals (R7) ------------------------------------------------------------


def _ready_to_reveal(client: FlaskClient, store: LoopbackStore) -> str:
    client.put(
        "/veil/v1/groups/finance", json={"name": "Finance", "members": [ANN]}, headers=admin()
    )
    client.post("/veil/v1/privacy-groups", json={"group": "finance"}, headers=admin())
    assert (
        client.post(
            "/veil/v1/private-viewers", json={"principal": ADMIN}, headers=auth(GRANTOR)
        ).status_code
        == 201
    )
    later = iso(time.time_ns() + 60 * SEC)
    store.state.rows = [activity(1, ANN, later), activity(2, "bob@contoso.com", later)]
    r = client.post(
        "/veil/v1/reveal-sessions",
        json={"acknowledge_audit": True, "justification": "case 7"},
        headers=admin(),
    )
    assert r.status_code == 201
    session: str = r.get_json()["id"]
    return session


def test_reveal_is_checkpointed_before_rows_leave(
    store: LoopbackStore, storage_url: str, tmp_path: Path, keys: Keys
) -> None:
    # A long interval: only the reveal itself can have written the checkpoint in time.
    app = create_app(signed_config(store, storage_url, tmp_path, keys, checkpoint_s=3600))
    try:
        client = app.test_client()
        session = _ready_to_reveal(client, store)
        r = client.get("/api/activities", headers={**admin(), "Veil-Reveal-Session": session})
        assert r.status_code == 200 and len(r.get_json()["data"]) == 2
        revealed = client.get(
            "/veil/v1/governance-log?action=activities_revealed", headers=admin()
        ).get_json()["records"]
        seen = checkpoints(tmp_path / "checkpoints.jsonl")
        assert (seen[-1]["seq"], seen[-1]["hash"]) == (revealed[0]["seq"], revealed[0]["hash"])
    finally:
        storage_of(app).close()


def test_reveal_is_503_when_the_witness_cannot_be_written(
    store: LoopbackStore, storage_url: str, tmp_path: Path, keys: Keys
) -> None:
    witness = tmp_path / "witness"
    app = create_app(
        signed_config(store, storage_url, tmp_path, keys, witness=str(witness), checkpoint_s=3600)
    )
    try:
        client = app.test_client()
        session = _ready_to_reveal(client, store)
        wait_for_checkpoint(witness, 1)  # the first append is checkpointed at once
        witness.unlink()
        witness.mkdir()  # a directory cannot be appended to
        r = client.get("/api/activities", headers={**admin(), "Veil-Reveal-Session": session})
        assert r.status_code == 503
        assert r.get_json()["code"] == "governance_write_failed"
        assert ANN not in r.get_data(as_text=True)
        # a query without a reveal still answers, private rows hidden
        plain = client.get("/api/activities", headers=admin())
        assert plain.status_code == 200
        assert [row["id"] for row in plain.get_json()["data"]] == ["act-2"]
    finally:
        storage_of(app).close()


# ---- verify reads one snapshot (issue 9 item 7) -------------------------------------------


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.storage
def test_verify_never_breaks_a_healthy_log_under_concurrent_appends(
    store: LoopbackStore, storage_url: str, tmp_path: Path, keys: Keys, signed: bool
) -> None:
    sealing = signed_config(store, storage_url, tmp_path, keys).governance if signed else None
    storage = open_storage(storage_url, 10, (), sealing)
    stop = threading.Event()
    errors: list[BaseException] = []

    def append(worker: int) -> None:
        try:
            # bounded: each verify reads the whole log, so an unbounded log makes the test
            # quadratic on a fast machine
            for n in range(300):
                if stop.is_set():
                    break
                storage.record("admin_added", f"w{worker}", {"principal": f"p{n}"})
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=append, args=(i,)) for i in range(3)]
    for w in writers:
        w.start()
    verdicts: list[governance.Verdict] = []
    try:
        deadline = time.monotonic() + 60
        while (storage.head() or (0, ""))[0] < 10:  # the writers are under way
            assert time.monotonic() < deadline and not errors, errors
            time.sleep(0.01)
        while len(verdicts) < 40 or any(w.is_alive() for w in writers):
            verdicts.append(storage.verify_log())
            if len(verdicts) >= 400:
                break
    finally:
        stop.set()
        for w in writers:
            w.join()
        storage.close()
    assert not errors, errors
    bad = [v.as_dict() for v in verdicts if not v.ok]
    assert not bad, f"{len(bad)} of {len(verdicts)} verify calls failed: {bad[:3]}"
    assert verdicts[-1].records > verdicts[0].records  # appends really ran alongside


# ---- configuration ------------------------------------------------------------------------


def test_config_errors_name_the_key(store: LoopbackStore, tmp_path: Path, keys: Keys) -> None:
    url = f"sqlite:///{tmp_path / 'veil.db'}"
    with pytest.raises(ConfigError, match=r"^governance.witness: .*signing_key_file"):
        make_config(store.url, url, governance={"witness": str(tmp_path / "w.jsonl")})
    verifier = make_config(
        store.url, url, governance={"public_key_file": str(keys.pub), "witness": "w.jsonl"}
    ).governance
    assert verifier.signer is None and verifier.witness == str(Path.cwd() / "w.jsonl")
    (tmp_path / "bad.key").write_text("not a key")
    with pytest.raises(ConfigError, match=r"^governance.signing_key_file: .*bad.key"):
        make_config(store.url, url, governance={"signing_key_file": str(tmp_path / "bad.key")})
    with pytest.raises(ConfigError, match=r"^governance.keys.1: "):
        make_config(store.url, url, governance={"keys": [str(keys.pub), str(keys.key)]})
    with pytest.raises(ConfigError, match=r"^governance.witness: "):
        make_config(
            store.url,
            url,
            governance={"signing_key_file": str(keys.key), "witness": "http://witness.example/cp"},
        )


# ---- the command line: keygen, export, offline verify ---------------------------------------


def veil_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "veil.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VEIL_TEST_JWT_SECRET": SECRET},
    )


def test_keygen(tmp_path: Path) -> None:
    out = tmp_path / "k" / "gov.key"
    out.parent.mkdir()
    made = veil_cli("governance", "keygen", "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    kid = json.loads(made.stdout)["key_id"]
    assert signing.Signer.from_file(out).key_id == kid
    assert signing.key_id(signing.load_public(Path(f"{out}.pub"))) == kid
    again = veil_cli("governance", "keygen", "--out", str(out))
    assert again.returncode == 2 and "exists" in again.stderr
    assert signing.Signer.from_file(out).key_id == kid  # not replaced


def _cli_config(store: LoopbackStore, storage_url: str, tmp_path: Path, keys: Keys) -> Path:
    path = tmp_path / "veil.yaml"
    path.write_text(
        yaml.safe_dump(
            config_doc(
                store.url,
                storage_url,
                governance={
                    "signing_key_file": str(keys.key),
                    "witness": str(tmp_path / "checkpoints.jsonl"),
                    "checkpoint_s": 0.05,
                },
            )
        )
    )
    return path


README_SCRIPT = re.compile(r"<!-- verify-script -->\n```python\n(.*?)```", re.S)


@pytest.mark.storage
def test_offline_verify_with_the_public_key_and_the_witness(
    client: FlaskClient, store: LoopbackStore, storage_url: str, tmp_path: Path, keys: Keys
) -> None:
    make_records(client, 4)
    cfg = _cli_config(store, storage_url, tmp_path, keys)
    # a management command from the command line appends a signed record too
    added = veil_cli("admins", "add", "carol@contoso.com", "--config", str(cfg))
    assert added.returncode == 0, added.stderr
    witness = tmp_path / "checkpoints.jsonl"
    wait_for_checkpoint(witness, 5)
    export = tmp_path / "log.jsonl"
    done = veil_cli("governance", "export", "--config", str(cfg), "-o", str(export))
    assert done.returncode == 0, done.stderr
    lines = export.read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["signature"] for line in lines)
    # Offline: nothing but the files.
    offline = [
        "governance",
        "verify",
        "--file",
        str(export),
        "--public-key",
        str(keys.pub),
        "--witness",
        str(witness),
    ]
    ok = veil_cli(*offline)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["ok"] is True and json.loads(ok.stdout)["signed"] is True
    script = tmp_path / "verify_log.py"
    match = README_SCRIPT.search((ROOT / "README.md").read_text())
    assert match, "the README's verification script is missing"
    script.write_text(match.group(1))

    def run_script(log: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script), str(log), str(keys.pub), str(witness)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    readme_ok = run_script(export)
    assert readme_ok.returncode == 0 and "OK: 5 records" in readme_ok.stdout, readme_ok.stderr
    # cut off the newest record: only the witness can tell
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[:4]) + "\n")
    chain_only = veil_cli("governance", "verify", "--file", str(cut), "--public-key", str(keys.pub))
    assert chain_only.returncode == 0
    no_key = veil_cli("governance", "verify", "--file", str(cut))
    assert no_key.returncode == 0 and "not checked" in json.loads(no_key.stdout)["signatures"]
    keyless_witness = veil_cli(
        "governance", "verify", "--file", str(cut), "--witness", str(witness)
    )
    assert keyless_witness.returncode == 1
    assert json.loads(keyless_witness.stdout)["problem"] == "no_public_key"
    found = veil_cli(
        "governance",
        "verify",
        "--file",
        str(cut),
        "--public-key",
        str(keys.pub),
        "--witness",
        str(witness),
    )
    assert found.returncode == 1
    assert (json.loads(found.stdout)["problem"], json.loads(found.stdout)["first_bad_seq"]) == (
        "truncated",
        5,
    )
    assert run_script(cut).returncode != 0
    # content changed and rehashed in the export: the signature does not match
    edited = [json.loads(line) for line in lines]
    edited[1]["actor"] = "mallory@contoso.com"
    edited = Attacker(storage_url).rechain(edited, 1)
    changed = tmp_path / "changed.jsonl"
    changed.write_text("".join(governance.canonical(r).decode() + "\n" for r in edited))
    bad = veil_cli("governance", "verify", "--file", str(changed), "--public-key", str(keys.pub))
    assert bad.returncode == 1
    assert (json.loads(bad.stdout)["problem"], json.loads(bad.stdout)["first_bad_seq"]) == (
        "bad_signature",
        2,
    )
    script_bad = run_script(changed)
    assert script_bad.returncode != 0 and "record 2" in script_bad.stderr
    # another key's public key: not the configured one
    other = veil_cli(
        "governance", "verify", "--file", str(export), "--public-key", str(keys.other_pub)
    )
    assert json.loads(other.stdout)["problem"] == "unknown_key"


GOOD = {
    "seq": 1,
    "ts": "2026-01-01T00:00:00.000000Z",
    "action": "admin_added",
    "actor": "a",
    "details": {},
    "prev_hash": "0" * 64,
}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "unreadable_file"),
        ("this is not json\n", "malformed_record"),
        ('{"seq": 1}\n', "malformed_record"),
        ("[1, 2]\n", "malformed_record"),
        (json.dumps({**GOOD, "seq": "1", "hash": "x"}) + "\n", "malformed_record"),
        (json.dumps({**GOOD, "seq": True, "hash": "x"}) + "\n", "malformed_record"),
        (json.dumps({**GOOD, "details": None, "hash": "x"}) + "\n", "malformed_record"),
        (json.dumps({**GOOD, "hash": "x", "key_id": 5, "signature": 7}) + "\n", "unknown_key"),
        (
            json.dumps(
                {**GOOD, "hash": governance.record_hash(GOOD), "key_id": "k", "signature": "zz"}
            )
            + "\n",
            "unknown_key",
        ),
        (b"\xff\xfe\x00garbage\n", "unreadable_file"),
    ],
    ids=[
        "missing-file",
        "not-json",
        "missing-fields",
        "not-an-object",
        "seq-text",
        "seq-bool",
        "details-null",
        "bad-types",
        "unknown-key",
        "not-utf8",
    ],
)
def test_malformed_offline_input_is_a_verdict(
    tmp_path: Path, keys: Keys, content: str | bytes | None, problem: str
) -> None:
    export = tmp_path / "log.jsonl"
    if isinstance(content, bytes):
        export.write_bytes(content)
    elif content is not None:
        export.write_text(content)
    result = veil_cli("governance", "verify", "--file", str(export), "--public-key", str(keys.pub))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stdout + result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["ok"] is False and verdict["problem"] in (problem, "changed_content")
    assert verdict["reason"]


@pytest.mark.parametrize(
    "what", ["missing-key", "bad-key", "missing-witness", "bad-witness", "witness-fields"]
)
def test_malformed_keys_and_witness_are_a_verdict(tmp_path: Path, keys: Keys, what: str) -> None:
    export = tmp_path / "log.jsonl"
    record = {**GOOD, "hash": governance.record_hash(GOOD), "key_id": None, "signature": None}
    export.write_text(json.dumps(record) + "\n")
    key, witness = str(keys.pub), tmp_path / "w.jsonl"
    witness.write_text("")
    if what == "missing-key":
        key = str(tmp_path / "nope.pub")
    elif what == "bad-key":
        key = str(keys.key)  # a private key where a public key belongs
    elif what == "missing-witness":
        witness = tmp_path / "nope.jsonl"
    elif what == "bad-witness":
        witness.write_text("{not json\n")
    else:
        witness.write_text('{"seq": 1}\n')
    result = veil_cli(
        "governance",
        "verify",
        "--file",
        str(export),
        "--public-key",
        key,
        "--witness",
        str(witness),
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1
    verdict = json.loads(result.stdout)
    assert verdict["ok"] is False and verdict["reason"]
    assert (
        verdict["problem"]
        == {
            "missing-key": "unreadable_key",
            "bad-key": "unreadable_key",
            "missing-witness": "unreadable_witness",
            "bad-witness": "unreadable_witness",
            "witness-fields": "malformed_checkpoint",
        }[what]
    )


# ---- three `veil serve` replicas on PostgreSQL sharing one key ------------------------------


def test_three_replicas_keep_one_signed_chain(
    store: LoopbackStore, postgres_url: str, tmp_path: Path, keys: Keys
) -> None:
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    witnesses = [tmp_path / f"checkpoints-{i}.jsonl" for i in range(3)]
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    try:
        for index, witness in enumerate(witnesses):
            path = tmp_path / f"veil-{index}.yaml"
            path.write_text(
                yaml.safe_dump(
                    config_doc(
                        store.url,
                        postgres_url,
                        server={"workers": 2, "threads": 4},
                        governance={
                            "signing_key_file": str(keys.key),
                            "witness": str(witness),
                            "checkpoint_s": 0.2,
                        },
                    )
                )
            )
            port = free_port()
            log = tmp_path / f"replica-{index}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "veil.cli",
                        "serve",
                        "--config",
                        str(path),
                        "--port",
                        str(port),
                    ],
                    env={**env, "VEIL_TEST_JWT_SECRET": SECRET},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            procs.append((f"http://127.0.0.1:{port}", process, log))
        for url, process, log in procs:
            wait_until_ready(
                url + "/healthz",
                90,
                process=process,
                describe=partial(log.read_text, errors="replace"),
            )
        urls = [url for url, _, _ in procs]
        assert (
            requests.get(urls[0] + "/readyz", timeout=30).json()["governance_log"]["signed"] is True
        )

        def call(url: str, method: str, path: str, **kwargs: Any) -> requests.Response:
            return requests.request(
                method,
                url + path,
                headers={**admin(), **kwargs.pop("headers", {})},
                timeout=60,
                **kwargs,
            )

        assert (
            call(
                urls[0],
                "PUT",
                "/veil/v1/groups/finance",
                json={"name": "Finance", "members": [ANN]},
            ).status_code
            == 201
        )
        assert (
            call(urls[0], "POST", "/veil/v1/privacy-groups", json={"group": "finance"}).status_code
            == 201
        )
        assert (
            call(
                urls[1],
                "POST",
                "/veil/v1/private-viewers",
                json={"principal": ADMIN},
                headers=auth(GRANTOR),
            ).status_code
            == 201
        )
        later = iso(time.time_ns() + 600 * SEC)
        store.state.rows = [activity(1, ANN, later), activity(2, "bob@contoso.com", later)]
        session = call(
            urls[2],
            "POST",
            "/veil/v1/reveal-sessions",
            json={"acknowledge_audit": True, "justification": "case 9"},
        ).json()["id"]

        def work(n: int) -> int:
            url = urls[n % 3]
            if n % 2:
                r = call(url, "GET", "/api/activities", headers={"Veil-Reveal-Session": session})
                assert r.status_code == 200 and len(r.json()["data"]) == 2, r.text
            else:
                r = call(url, "PUT", f"/veil/v1/groups/g{n}", json={"name": "G", "members": []})
                assert r.status_code == 201, r.text
            return n

        with ThreadPoolExecutor(max_workers=9) as pool:
            assert len(list(pool.map(work, range(60)))) == 60
        expected = 4 + 60
        for url in urls:
            result = call(url, "GET", "/veil/v1/governance-log/verify").json()
            assert result["ok"] is True and result["records"] == expected, result
            assert result["signed"] is True
        records = Attacker(postgres_url).records()
        kid = signing.key_id(signing.load_public(keys.pub))
        assert [r["seq"] for r in records] == list(range(1, expected + 1))
        assert all(r["key_id"] == kid and r["signature"] for r in records)
        # every reveal record was checkpointed by the replica that wrote it
        revealed = {r["seq"] for r in records if r["action"] == "activities_revealed"}
        assert len(revealed) == 30
        seen = {c["seq"] for w in witnesses for c in checkpoints(w)}
        assert revealed <= seen
        # offline, with the three witnesses
        export = tmp_path / "log.jsonl"
        export.write_text("".join(governance.canonical(r).decode() + "\n" for r in records))
        offline = veil_cli(
            "governance",
            "verify",
            "--file",
            str(export),
            "--public-key",
            str(keys.pub),
            *(a for w in witnesses for a in ("--witness", str(w))),
        )
        assert offline.returncode == 0, offline.stdout
        assert json.loads(offline.stdout)["checkpoints"] >= 30
    finally:
        for _, process, _ in procs:
            process.send_signal(signal.SIGTERM)
        for _, process, _ in procs:
            try:
                process.wait(timeout=30)
            finally:
                if process.poll() is None:
                    process.kill()


# ---- an HTTPS witness ---------------------------------------------------------------------


def test_https_witness(
    store: LoopbackStore,
    storage_url: str,
    tmp_path: Path,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flask import request as incoming
    from werkzeug.serving import make_server

    received: list[dict[str, Any]] = []
    status = {"code": 204}
    endpoint = Flask("witness")

    @endpoint.post("/checkpoints")
    def take() -> tuple[str, int]:
        if status["code"] < 300:
            received.append(json.loads(incoming.get_data()))
        return "", status["code"]

    cert, key = self_signed(tmp_path)
    server = make_server("127.0.0.1", 0, endpoint, threaded=True, ssl_context=(str(cert), str(key)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    url = f"https://127.0.0.1:{server.server_port}/checkpoints"
    app = create_app(
        signed_config(store, storage_url, tmp_path, keys, witness=url, checkpoint_s=3600)
    )
    try:
        client = app.test_client()
        session = _ready_to_reveal(client, store)
        r = client.get("/api/activities", headers={**admin(), "Veil-Reveal-Session": session})
        assert r.status_code == 200
        revealed = client.get(
            "/veil/v1/governance-log?action=activities_revealed", headers=admin()
        ).get_json()["records"][0]
        assert (received[-1]["seq"], received[-1]["hash"]) == (revealed["seq"], revealed["hash"])
        public = signing.load_public(keys.pub)
        public.verify(
            bytes.fromhex(received[-1]["signature"]),
            signing.checkpoint_message(
                revealed["seq"], revealed["hash"], received[-1]["ts"], received[-1]["key_id"]
            ),
        )
        status["code"] = 500  # the witness refuses: no reveal
        r = client.get("/api/activities", headers={**admin(), "Veil-Reveal-Session": session})
        assert r.status_code == 503 and r.get_json()["code"] == "governance_write_failed"
        assert ANN not in r.get_data(as_text=True)
    finally:
        storage_of(app).close()
        server.shutdown()


def test_start_up_log_says_signed_or_unsigned(
    store: LoopbackStore, tmp_path: Path, keys: Keys
) -> None:
    from veil.server import startup_lines

    url = f"sqlite:///{tmp_path / 'veil.db'}"
    unsigned = startup_lines("veil.yaml", make_config(store.url, url), "p", "127.0.0.1:1")
    assert any(line.startswith("governance log UNSIGNED") for line in unsigned), unsigned
    signed = startup_lines(
        "veil.yaml", signed_config(store, url, tmp_path, keys), "p", "127.0.0.1:1"
    )
    kid = signing.key_id(signing.load_public(keys.pub))
    assert (
        f"governance log signed with key {kid}; witness {tmp_path / 'checkpoints.jsonl'}" in signed
    ), signed


def test_closing_writes_the_pending_checkpoint(tmp_path: Path, keys: Keys) -> None:
    from veil.governance.witness import Checkpointer, FileWitness

    path = tmp_path / "w.jsonl"
    signer = signing.Signer.from_file(keys.key)
    head = {"now": (7, "ab" * 32)}
    checkpointer = Checkpointer(
        signer, FileWitness(path), 3600, lambda: head["now"], lambda: "2026-01-01T00:00:00.000000Z"
    )
    checkpointer.now(6, "cd" * 32)  # a reveal: written at once; the next one waits an hour
    assert [c["seq"] for c in checkpoints(path)] == [6]
    checkpointer.soon()
    time.sleep(0.05)
    assert [c["seq"] for c in checkpoints(path)] == [6]  # not yet
    checkpointer.close()  # a process that stops writes what it was waiting for
    assert [c["seq"] for c in checkpoints(path)] == [6, 7]
    public = signer.public
    last = checkpoints(path)[-1]
    public.verify(
        bytes.fromhex(last["signature"]),
        signing.checkpoint_message(7, "ab" * 32, last["ts"], signer.key_id),
    )
