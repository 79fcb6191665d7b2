"""Real Chromium (Debian's, no browser download) through Playwright, and `veil serve` as a real
process, for the console's browser tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from netutil import free_port, wait_until_ready

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def need_chromium() -> None:
    """Skip without Chromium on a workstation; under CI a missing browser is a failure."""
    if os.path.exists(CHROMIUM):
        return
    if os.environ.get("CI"):
        pytest.fail(
            f"{CHROMIUM} is missing: the console's browser tests need Debian's "
            "chromium (apt-get install chromium)"
        )
    pytest.skip(f"{CHROMIUM} is not installed")


@contextmanager
def chromium() -> Iterator[Any]:
    """One headless Chromium for a test module."""
    need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


ROOT = Path(__file__).resolve().parent.parent


def screenshot_dir(scratch: Path) -> Path:
    """Where the console's screenshots go: docs/console/ when VEIL_CONSOLE_SCREENSHOTS=1
    (to regenerate the README's pictures), else a scratch directory."""
    target = (
        ROOT / "docs" / "console"
        if os.environ.get("VEIL_CONSOLE_SCREENSHOTS")
        else scratch / "shots"
    )
    target.mkdir(parents=True, exist_ok=True)
    return target


@contextmanager
def veil_serve(
    doc: dict[str, Any], directory: Path, env: dict[str, str], port: int | None = None
) -> Iterator[tuple[str, Path]]:
    """`veil serve` on loopback with this configuration; yields its URL and its log file."""
    path = directory / "veil.yaml"
    path.write_text(yaml.safe_dump(doc))
    port = port or free_port()
    log_path = directory / "veil.log"
    base = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "veil.cli", "serve", "--config", str(path), "--port", str(port)],
            env={**base, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(
                url + "/healthz",
                90,
                process=process,
                describe=partial(log_path.read_text, errors="replace"),
            )
            yield url, log_path
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            finally:
                if process.poll() is None:
                    process.kill()
