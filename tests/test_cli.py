"""The management sub-commands mirror the API for scripts, on the configured storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import SECRET, config_doc


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "veil.yaml"
    path.write_text(yaml.safe_dump(config_doc("http://127.0.0.1:9",
                                              f"sqlite:///{tmp_path / 'veil.db'}")))
    return path


def veil(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    actor = [] if args[0] == "governance" else ["--actor", "ops@contoso.com"]
    return subprocess.run([sys.executable, "-m", "veil.cli", *args, "--config", str(cfg), *actor],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "VEIL_TEST_JWT_SECRET": SECRET})


def test_management_commands(cfg: Path, tmp_path: Path) -> None:
    members = tmp_path / "members.txt"
    members.write_text("Ann@Contoso.com\n\nbob@contoso.com\n")
    put = veil(cfg, "groups", "put", "finance", "--name", "Finance", "--members-file",
               str(members))
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout)["members"] == ["ann@contoso.com", "bob@contoso.com"]
    assert veil(cfg, "privacy-groups", "add", "finance").returncode == 0
    listed = json.loads(veil(cfg, "privacy-groups", "list").stdout)
    assert listed[0]["group"] == "finance" and listed[0]["private"] is True
    refused = veil(cfg, "private-viewers", "add", "carol@contoso.com")
    assert refused.returncode == 2 and "not an admin" in refused.stderr
    assert veil(cfg, "admins", "add", "carol@contoso.com").returncode == 0
    assert veil(cfg, "private-viewers", "add", "carol@contoso.com").returncode == 0
    missing = veil(cfg, "privacy-groups", "add", "ghosts")
    assert missing.returncode == 2 and "unknown group 'ghosts'" in missing.stderr
    log = veil(cfg, "governance", "verify")
    assert json.loads(log.stdout) == {"ok": True, "records": 4}
    export = veil(cfg, "governance", "export")
    actors = {json.loads(line)["actor"] for line in export.stdout.splitlines()}
    assert actors == {"ops@contoso.com"}
