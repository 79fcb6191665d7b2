"""Loopback helpers shared by the tests that start real servers: a free port, and a readiness
wait that survives a loaded machine (any requests error is retried until the deadline)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
import yaml

from conftest import SECRET


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def self_signed(directory: Path, ip: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``ip`` (its own CA) and its key, as PEM files in
    ``directory``: (certificate, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{ip}.crt", directory / f"{ip}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def wait_until_ready(
    url: str,
    deadline_s: float = 60,
    *,
    process: subprocess.Popen[bytes] | subprocess.Popen[str] | None = None,
    describe: Callable[[], str] = lambda: "",
    expect: int = 200,
    attempt_timeout_s: float = 5,
) -> requests.Response:
    """GET ``url`` until it answers ``expect``; retry on any ``requests.RequestException``
    (refused, reset, read time-out after ``attempt_timeout_s``, ...) until ``deadline_s``
    seconds have passed. A ``process`` that exits meanwhile fails at once; ``describe()``
    adds its log to the error."""
    deadline = time.monotonic() + deadline_s
    last = "no answer yet"
    while True:
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"the server exited with {process.returncode} before {url} was ready\n{describe()}"
            )
        try:
            answer = requests.get(url, timeout=attempt_timeout_s)
            if answer.status_code == expect:
                return answer
            last = f"status {answer.status_code}"
        except requests.RequestException as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{url} was not ready within {deadline_s:g} s ({last})\n{describe()}"
            )
        time.sleep(0.2)


@contextmanager
def veil_serve(
    doc: dict[str, Any], tmp_path: Path, log: Path | None = None, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`veil serve` on a free port with this configuration (and ``env`` added to the
    environment); stopped with SIGTERM after. Its standard error (Veil's and gunicorn's log)
    goes to ``log``, by default ``tmp_path/veil-serve-N.log``, and is shown when it does not
    come up."""
    serial = time.monotonic_ns()
    path = tmp_path / f"veil-{serial}.yaml"
    path.write_text(yaml.safe_dump(doc))
    port = free_port()
    log_path = log or tmp_path / f"veil-serve-{serial}.log"
    base = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with log_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "veil.cli", "serve", "--config", str(path), "--port", str(port)],
            env={**base, "VEIL_TEST_JWT_SECRET": SECRET, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(
            url + "/healthz",
            90,
            process=process,
            describe=lambda: log_path.read_text(errors="replace")[-4000:],
        )
        yield url, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=20) == 0
        finally:
            if process.poll() is None:
                process.kill()
