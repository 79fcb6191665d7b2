"""Run Veil under gunicorn (threads in each worker; one regorus engine per thread).

The policy set on disk is checked and its own tests run before the master starts and before
each worker loads it, so no process ever serves a policy that fails its tests. SIGHUP to the
master is passed to the workers, which each run the safe hot reload (check, test, swap)
instead of being restarted; ``POST /veil/v1/policy/reload`` on one worker reaches the others
the same way.

Before gunicorn starts, the address is tried (a busy port is one clear error naming
``--port``, not gunicorn's retries), and what Veil loaded is logged: configuration, policy
set and its tests, engine, storage, identity, and where it listens.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import tempfile
from dataclasses import replace
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from veil import config as config_module
from veil.config import Config
from veil.errors import PolicyError, VeilError
from veil.rows import NATIVE

log = logging.getLogger("veil.server")


def validated(config: Config) -> str:
    """Raise PolicyError unless the policy directory checks and its tests pass; else say what
    was loaded (files, the set's digest, the tests that passed)."""
    if config.policy.engine == "opa" and config.policy.opa_bundle:
        return "from OPA's bundle (not checked here)"
    from veil.policy import load_modules
    from veil.policy_reload import PolicySet
    from veil.policytools.validation import validate

    modules = load_modules(config.policy.dir)
    validation = validate(modules)
    if not validation.ok:
        details = "\n  ".join(validation.details()[:20])
        raise PolicyError(f"{config.policy.dir}: {validation.summary}\n  {details}")
    policy_files = sum(not m.is_test for m in modules)
    digest = PolicySet.of(config.policy.dir, modules).digest
    return (
        f"{config.policy.dir}: {policy_files} policy and {len(modules) - policy_files} "
        f"test file(s), set {digest[:12]}, {validation.summary}"
    )


def check_address(host: str, port: int) -> None:
    """Raise VeilError, naming ``--port``/``--host``, when Veil cannot listen there."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise VeilError(
            f"cannot listen on {host}:{port}: {exc.strerror}; give another --host (or server.host)"
        ) from exc
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise VeilError(
                    f"port {port} on {host} is already in use by another "
                    "process; choose another one with --port (or server.port), "
                    "or stop what listens there"
                ) from exc
            raise VeilError(
                f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port or --host"
            ) from exc


def redacted(url: str) -> str:
    """A storage URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def startup_lines(config_path: str, config: Config, policy: str, bind: str) -> list[str]:
    """What Veil logs once at start: what it loaded and where it listens."""
    engine = (
        "embedded (regorus " + metadata.version("gordon-to-regorus") + ", in-process)"
        if config.policy.engine == "embedded"
        else f"opa at {config.policy.opa_url}"
        + (" (policies from its bundle)" if config.policy.opa_bundle else "")
    )
    identity = config.identity
    if identity.mode == "jwt":
        keys = " and ".join(
            k
            for k, on in (("HS256 secret", identity.jwt.hs256_secret), ("JWKS", identity.jwt.jwks))
            if on
        )
        who = f"jwt ({keys}; issuer {identity.jwt.issuer}, audience {identity.jwt.audience})"
    else:
        who = f"gateway header {identity.header}"
    return [
        f"configuration {config_path}",
        f"policy {policy}",
        f"engine {engine}",
        (
            "store answers read in one pass by veil._rowscan (C), the rest in Python"
            if NATIVE
            else "store answers read in Python only: veil._rowscan was not built (no C "
            "compiler at install), so each answer takes longer; decisions are the same"
        ),
        f"storage {redacted(config.storage.url)}",
        f"identity {who}; {len(identity.bootstrap_admins)} bootstrap admin(s)",
        _governance_line(config),
        f"listening on http://{bind} with {config.server.workers} worker(s) x "
        f"{config.server.threads} thread(s)",
    ]


def _governance_line(config: Config) -> str:
    sealing = config.governance
    if sealing.signer is None:
        return (
            "governance log UNSIGNED (hash chain only: whoever can write the database can "
            "rewrite it); set governance.signing_key_file"
        )
    return (
        f"governance log signed with key {sealing.signer.key_id}; witness "
        f"{sealing.witness or 'none (set governance.witness)'}"
    )


def _log_to_stderr() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter(
                "[%(asctime)s] [%(process)d] [%(levelname)s] veil: %(message)s",
                "%Y-%m-%d %H:%M:%S %z",
            )
        )
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


class VeilArbiter(Arbiter):  # type: ignore[misc]
    """Forwards SIGHUP to the workers (a safe policy reload) instead of restarting them."""

    def handle_hup(self) -> None:
        self.log.info("SIGHUP: asking every worker to reload the policy")
        self.kill_workers(signal.SIGHUP)


class VeilServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, config_path: str, options: dict[str, Any]) -> None:
        self.config_path = config_path
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        # Each worker builds its own app after the fork: its own connections and engines.
        from veil import policy_reload as reload
        from veil.app import create_app

        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the reloader's handler is in place
        config = config_module.load(self.config_path)
        validated(config)
        app = create_app(replace(config, policy=replace(config.policy, reload_on_sighup=True)))
        master = os.getppid()
        app.extensions[reload.BROADCAST] = lambda: os.kill(master, signal.SIGHUP)
        return app

    def run(self) -> None:
        VeilArbiter(self).run()


def serve(config_path: str, host: str | None = None, port: int | None = None) -> None:
    """Validate the config and the policy up front (a bad one stops here), then run gunicorn."""
    config = config_module.load(config_path)
    policy = validated(config)
    bind_host = host or config.server.host
    bind_port = port if port is not None else config.server.port
    check_address(bind_host, bind_port)
    workers = config.server.workers
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # prometheus_client picks its value store when first imported: set this before that.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="veil-metrics-")
    from veil.storage import open_storage

    # Create or migrate the storage once, before the workers fork.
    open_storage(config.storage.url, config.storage.timeout_s).close()
    bind = f"[{bind_host}]:{bind_port}" if ":" in bind_host else f"{bind_host}:{bind_port}"
    _log_to_stderr()
    for line in startup_lines(config_path, config, policy, bind):
        log.info("%s", line)
    options = {
        "bind": bind,
        "workers": workers,
        "threads": config.server.threads,
        "worker_class": "gthread",
        "timeout": max(30, int(config.upstream.timeout_s * 3)),
        "graceful_timeout": 10,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": "info",
    }
    VeilServer(config_path, options).run()
