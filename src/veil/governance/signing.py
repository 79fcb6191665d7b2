"""Ed25519 keys of the governance log: key generation, signing the chain head, checking it.

Every record's signature covers the chain head that record produces, and a witness
checkpoint's signature covers the head it vouches for; both sign the canonical JSON
(``record.canonical``: keys sorted, no spaces, UTF-8) of a small object whose ``type`` keeps
the two apart::

    {"hash": <record hash>, "key_id": <key id>, "seq": <seq>, "type": "veil-head"}
    {"hash": <head hash>, "key_id": <key id>, "seq": <seq>, "ts": <RFC 3339>,
     "type": "veil-checkpoint"}

A key id is the first 16 hex digits of the SHA-256 of the raw 32-byte public key. Signatures
are hex. The private key never enters the database.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from veil.governance.record import canonical


class KeyFileError(ValueError):
    """A key file that cannot be read or is not an Ed25519 key."""


def head_message(seq: int, hash_: str, key_id: str) -> bytes:
    """What a record's signature covers: the chain head it produces."""
    return canonical({"type": "veil-head", "seq": seq, "hash": hash_, "key_id": key_id})


def checkpoint_message(seq: int, hash_: str, ts: str, key_id: str) -> bytes:
    """What a witness checkpoint's signature covers."""
    return canonical(
        {"type": "veil-checkpoint", "seq": seq, "hash": hash_, "ts": ts, "key_id": key_id}
    )


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate(out: Path) -> str:
    """Write a new private key to ``out`` (PEM, mode 0600) and its public key to ``out.pub``.

    Refuses to overwrite either file. Returns the key id.
    """
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub_path = Path(f"{out}.pub")
    if pub_path.exists():
        raise FileExistsError(f"{pub_path} already exists; choose another --out")
    # O_EXCL: never replace a key; 0600 from the start, never readable by others in between.
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    pub_path.write_bytes(public_pem(private.public_key()))
    return key_id(private.public_key())


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key (make one with veil governance keygen)")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key")
    return key


@dataclass(frozen=True)
class Signer:
    """The signing key of this Veil: signs chain heads and checkpoints."""

    private: Ed25519PrivateKey
    key_id: str

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        private = load_private(path)
        return cls(private, key_id(private.public_key()))

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    def sign_head(self, seq: int, hash_: str) -> str:
        return self.private.sign(head_message(seq, hash_, self.key_id)).hex()

    def checkpoint(self, seq: int, hash_: str, ts: str) -> dict[str, Any]:
        """A signed witness checkpoint of the head ``(seq, hash_)`` at time ``ts``."""
        signature = self.private.sign(checkpoint_message(seq, hash_, ts, self.key_id)).hex()
        return {"seq": seq, "hash": hash_, "ts": ts, "key_id": self.key_id, "signature": signature}


@dataclass(frozen=True)
class Keyring:
    """The public keys a verifier accepts, by key id (old keys stay for rotated records)."""

    keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)

    @classmethod
    def of(cls, publics: Iterable[Ed25519PublicKey]) -> Keyring:
        return cls({key_id(p): p for p in publics})

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> Keyring:
        return cls.of(load_public(p) for p in paths)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def problem(self, key: Any, message: bytes, signature: Any) -> tuple[str, str] | None:
        """None when ``signature`` is a valid signature of ``message`` by a known key;
        otherwise ``(problem, reason)``."""
        public = self.keys.get(key) if isinstance(key, str) else None
        if public is None:
            return "unknown_key", (
                f"signed with key {key!r}, which is not a configured "
                f"public key ({', '.join(sorted(self.keys))})"
            )
        try:
            public.verify(bytes.fromhex(signature) if isinstance(signature, str) else b"", message)
        except (InvalidSignature, ValueError):
            return "bad_signature", f"the signature does not match under key {key}"
        return None
