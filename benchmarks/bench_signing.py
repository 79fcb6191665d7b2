"""What signing the governance log costs: Ed25519 per record, and per append on SQLite.

Prints, for N iterations: the time to sign one chain head and to check one signature (the
`cryptography` library's Ed25519), a witness checkpoint written to a file (sign, append,
fsync), and the median time of one governance append on a real SQLite file without and with
a signing key (alternating, so both see the same disk).

    python benchmarks/bench_signing.py [--n 20000] [--appends 300]

This is a benchmark, not a test: it prints figures. Budget (issue 10): signing well under a
millisecond per record.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from veil.config import GovernanceConfig
from veil.governance import signing
from veil.governance.signing import Keyring, Signer, head_message
from veil.governance.witness import FileWitness
from veil.storage import open_storage


def per_call_us(call: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="signatures to time")
    parser.add_argument("--appends", type=int, default=300, help="appends per mode")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="veil-bench-signing-") as tmp:
        base = Path(tmp)
        signing.generate(base / "k.key")
        signer = Signer.from_file(base / "k.key")
        digest = "ab" * 32
        sign_us = per_call_us(lambda: signer.sign_head(123456, digest), args.n)
        signature = signer.sign_head(123456, digest)
        public = signer.public
        message = head_message(123456, digest, signer.key_id)
        verify_us = per_call_us(lambda: public.verify(bytes.fromhex(signature), message), args.n)
        witness = FileWitness(base / "checkpoints.jsonl")
        checkpoint_us = per_call_us(
            lambda: witness.write(signer.checkpoint(1, digest, "2026-01-01T00:00:00.000000Z")),
            max(50, args.n // 100),
        )

        sealing = GovernanceConfig(
            signing_key_file=base / "k.key", signer=signer, keyring=Keyring.of([public])
        )
        plain = open_storage(f"sqlite:///{base / 'plain.db'}", 10)
        signed = open_storage(f"sqlite:///{base / 'signed.db'}", 10, (), sealing)
        times: dict[str, list[float]] = {"unsigned": [], "signed": []}
        try:
            for i in range(args.appends):
                for name, storage in (("unsigned", plain), ("signed", signed)):
                    started = time.perf_counter()
                    storage.record("admin_added", "bench", {"principal": f"p{i}"})
                    times[name].append((time.perf_counter() - started) * 1e3)
            assert signed.verify_log().ok
        finally:
            plain.close()
            signed.close()

    print(f"Ed25519 sign one chain head:   {sign_us:8.1f} µs  (n={args.n})")
    print(f"Ed25519 check one signature:   {verify_us:8.1f} µs  (n={args.n})")
    print(f"witness checkpoint to a file:  {checkpoint_us:8.1f} µs  (sign + append + fsync)")
    for name, values in times.items():
        print(
            f"SQLite append, {name:9}       {statistics.median(values):8.3f} ms median, "
            f"p90 {statistics.quantiles(values, n=10)[-1]:.3f} ms  (n={args.appends})"
        )
    added = statistics.median(times["signed"]) - statistics.median(times["unsigned"])
    print(f"added by signing, median:      {added * 1000:8.1f} µs")


if __name__ == "__main__":
    main()
