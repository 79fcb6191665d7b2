"""Run Veil under gunicorn (threads in each worker; one regorus engine per thread).

The policy set on disk is checked and its own tests run before the master starts and before
each worker loads it, so no process ever serves a policy that fails its tests. SIGHUP to the
master is passed to the workers, which each run the safe hot reload (check, test, swap)
instead of being restarted; ``POST /veil/v1/policy/reload`` on one worker reaches the others
the same way.
"""

from __future__ import annotations

import os
import signal
import tempfile
from dataclasses import replace
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from veil import config as config_module
from veil.config import Config
from veil.errors import PolicyError


def validated(config: Config) -> None:
    """Raise PolicyError unless the policy directory checks and its tests pass."""
    if config.policy.engine == "opa" and config.policy.opa_bundle:
        return  # the policies come from OPA's bundle, not from this directory
    from veil import policytools
    from veil.policy import load_modules

    validation = policytools.validate(load_modules(config.policy.dir))
    if not validation.ok:
        details = "\n  ".join(validation.details()[:20])
        raise PolicyError(f"{config.policy.dir}: {validation.summary}\n  {details}")


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
        from veil import reload
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
    validated(config)
    workers = config.server.workers
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # prometheus_client picks its value store when first imported: set this before that.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="veil-metrics-")
    from veil.storage import open_storage

    # Create or migrate the storage once, before the workers fork.
    open_storage(config.storage.url, config.storage.timeout_s).close()
    options = {
        "bind": f"{host or config.server.host}:{port if port is not None else config.server.port}",
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
