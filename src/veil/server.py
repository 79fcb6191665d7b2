"""Run Veil under gunicorn (threads in each worker; one regorus engine per thread)."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from veil import config as config_module


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
        from veil.app import create_app

        return create_app(config_module.load(self.config_path))


def serve(config_path: str, host: str | None = None, port: int | None = None) -> None:
    """Validate the config up front (a bad file stops here), then run gunicorn."""
    config = config_module.load(config_path)
    workers = config.server.workers
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # prometheus_client picks its value store when first imported: set this before that.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="veil-metrics-")
    from veil.app import create_app

    create_app(config).extensions["veil"].storage.close()  # migrate and check before forking
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
