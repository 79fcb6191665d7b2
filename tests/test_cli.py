"""The management sub-commands mirror the API for scripts, on the configured storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
import yaml

from veil import config as config_module
from veil.cli import main
from veil.errors import Unauthenticated
from veil.identity import Authenticator

from conftest import ADMIN, AUDIENCE, ISSUER, SECRET, config_doc


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "veil.yaml"
    path.write_text(
        yaml.safe_dump(config_doc("http://127.0.0.1:9", f"sqlite:///{tmp_path / 'veil.db'}"))
    )
    return path


def veil(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    actor = [] if args[0] == "governance" else ["--actor", "ops@contoso.com"]
    return subprocess.run(
        [sys.executable, "-m", "veil.cli", *args, "--config", str(cfg), *actor],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "VEIL_TEST_JWT_SECRET": SECRET},
    )


def test_management_commands(cfg: Path, tmp_path: Path) -> None:
    members = tmp_path / "members.txt"
    members.write_text("Ann@Contoso.com\n\nbob@contoso.com\n")
    put = veil(cfg, "groups", "put", "finance", "--name", "Finance", "--members-file", str(members))
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


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_management_commands_need_the_storage_not_the_jwt_secret(
    cfg: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VEIL_TEST_JWT_SECRET", raising=False)
    code, out, err = run_main(
        capsys,
        "groups",
        "put",
        "hr",
        "ann@contoso.com",
        "--config",
        str(cfg),
        "--actor",
        "ops@contoso.com",
    )
    assert code == 0, err
    code, out, err = run_main(capsys, "groups", "list", "--config", str(cfg))
    assert code == 0 and json.loads(out)[0]["id"] == "hr"
    # Serving does need it, and says which variable is missing.
    code, _, err = run_main(capsys, "token", "--sub", "ann@contoso.com", "--config", str(cfg))
    assert code == 2 and "VEIL_TEST_JWT_SECRET is not set" in err


def test_token_is_accepted_by_veil_and_carries_the_documented_claims(
    cfg: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VEIL_TEST_JWT_SECRET", SECRET)
    code, out, err = run_main(
        capsys, "token", "--sub", "Carol@Contoso.com", "--ttl", "120", "--config", str(cfg)
    )
    assert code == 0, err
    token = out.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["exp"] - claims["iat"] == 120
    assert claims["sub"] == claims["upn"] == "carol@contoso.com"
    identity = config_module.load(cfg).identity
    assert (
        Authenticator(identity).principal({"Authorization": f"Bearer {token}"})
        == "carol@contoso.com"
    )
    with pytest.raises(Unauthenticated):  # the same token signed with another secret
        other = jwt.encode(claims, "x" * 40, algorithm="HS256")
        Authenticator(identity).principal({"Authorization": f"Bearer {other}"})
    code, _, err = run_main(
        capsys, "token", "--sub", "carol smith@contoso.com", "--config", str(cfg)
    )
    assert code == 2 and "is not a principal" in err


def test_token_admin_makes_the_principal_an_admin(
    cfg: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VEIL_TEST_JWT_SECRET", SECRET)
    for _ in range(2):  # a second time is not an error
        code, out, err = run_main(
            capsys,
            "token",
            "--sub",
            "dave@contoso.com",
            "--admin",
            "--config",
            str(cfg),
            "--actor",
            "ops@contoso.com",
        )
        assert code == 0 and out.count(".") == 2, err
    code, out, _ = run_main(capsys, "admins", "list", "--config", str(cfg))
    assert "dave@contoso.com" in {a["principal"] for a in json.loads(out)}
    code, out, _ = run_main(capsys, "governance", "export", "--config", str(cfg))
    assert [json.loads(line)["action"] for line in out.splitlines()] == ["admin_added"]
    code, out, _ = run_main(capsys, "token", "--admin", "--config", str(cfg))
    assert jwt.decode(out.strip(), SECRET, algorithms=["HS256"], audience=AUDIENCE)["upn"] == ADMIN


def test_a_short_hs256_secret_is_refused(
    cfg: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VEIL_TEST_JWT_SECRET", "s3cr3t")
    code, _, err = run_main(capsys, "token", "--sub", "ann@contoso.com", "--config", str(cfg))
    assert code == 2
    assert "the secret in VEIL_TEST_JWT_SECRET is 6 bytes; HS256 needs at least 32" in err
    monkeypatch.setenv("VEIL_TEST_JWT_SECRET", "x" * 32)
    assert run_main(capsys, "token", "--sub", "ann@contoso.com", "--config", str(cfg))[0] == 0


def test_python_dash_m_veil_runs_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "veil", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.startswith("veil ")
