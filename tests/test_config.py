"""Configuration: a bad file stops start-up and names the bad key's path."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from veil import config as config_module
from veil.errors import ConfigError

from conftest import config_doc

ENV = {"VEIL_TEST_JWT_SECRET": "x" * 40}


def base() -> dict[str, Any]:
    return config_doc("http://127.0.0.1:9000", "sqlite:///veil.db")


@pytest.mark.parametrize(
    "mutate,message",
    [
        (
            lambda d: d["upstream"].update(timeout_s="ten"),
            "upstream.timeout_s: 'ten' is not of type",
        ),
        (lambda d: d["upstream"].update(colour="blue"), "upstream.colour: unknown key"),
        (lambda d: d.update(extra=1), "extra: unknown key"),
        (lambda d: d["upstream"].pop("routes"), "upstream.routes: required key is missing"),
        (lambda d: d["upstream"].update(routes=["api/no-slash"]), "upstream.routes.0:"),
        (lambda d: d["policy"].update(engine="wasm"), "policy.engine:"),
        (lambda d: d["identity"]["jwt"].pop("audience"), "identity.jwt.audience: required"),
        (
            lambda d: d["identity"]["jwt"].update(hs256_secret_env="MISSING_VAR"),
            "identity.jwt.hs256_secret_env: environment variable MISSING_VAR is not set",
        ),
        (lambda d: d["storage"].update(url="mysql://x"), "storage.url:"),
        (
            lambda d: d["upstream"].update(url="http://127.0.0.1:99999"),
            "upstream.url: 'http://127.0.0.1:99999' is not a usable URL",
        ),
        (
            lambda d: d["upstream"].update(url="http://:8080/x"),
            "upstream.url: 'http://:8080/x' names no host",
        ),
        (
            lambda d: (
                d["reveal"].update(session_ttl_s=0)
                if "reveal" in d
                else d.update(reveal={"session_ttl_s": 0})
            ),
            "reveal.session_ttl_s:",
        ),
    ],
    ids=[
        "type",
        "unknown-key",
        "unknown-top-key",
        "missing",
        "route-pattern",
        "engine",
        "jwt-audience",
        "secret-env",
        "storage-url",
        "store-port",
        "store-host",
        "ttl",
    ],
)
def test_bad_config_names_the_key(mutate: Callable[[dict[str, Any]], object], message: str) -> None:
    doc = base()
    mutate(doc)
    with pytest.raises(ConfigError) as info:
        config_module.from_dict(doc, env=ENV)
    assert message in info.value.detail


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    doc = {
        "upstream": {"url": "http://127.0.0.1:9000/", "routes": ["/api/activities"]},
        "identity": {"jwt": {"issuer": "i", "audience": "a", "hs256_secret_env": "S"}},
        "storage": {"url": "sqlite:///data/veil.db"},
        "policy": {"dir": "pol"},
    }
    path = tmp_path / "veil.yaml"
    path.write_text(yaml.safe_dump(doc))
    cfg = config_module.load(path, env={"S": "s" * 32})
    assert cfg.upstream.url == "http://127.0.0.1:9000"
    assert cfg.upstream.rows == "/data"
    assert cfg.identity.principal_claims == ("upn", "preferred_username", "email")
    assert cfg.reveal.session_ttl_s == 900 and cfg.reveal.require_justification
    assert cfg.policy.engine == "embedded" and cfg.policy.dir == tmp_path / "pol"
    assert cfg.storage.url == f"sqlite:///{tmp_path / 'data' / 'veil.db'}"
    assert cfg.identity.jwt.hs256_secret == "s" * 32


def test_a_file_that_leaves_keys_out_gets_the_same_defaults_as_the_dataclasses(
    tmp_path: Path,
) -> None:
    """Both are read from the schema's ``default`` keywords: one source."""
    c = config_module
    jwt = {"issuer": "i", "audience": "a", "hs256_secret_env": "S"}
    cfg = c.from_dict(
        {"upstream": {"url": "http://store", "routes": ["/a"]}, "identity": {"jwt": jwt}},
        base_dir=tmp_path,
        env={"S": "s" * 32},
    )
    assert cfg.upstream == c.UpstreamConfig(url="http://store", routes=("/a",))
    assert cfg.identity == c.IdentityConfig(
        jwt=c.JwtConfig(issuer="i", audience="a", hs256_secret="s" * 32)
    )
    assert cfg.policy == c.PolicyConfig(dir=tmp_path / c.PolicyConfig().dir)
    assert cfg.storage == c.StorageConfig(url=f"sqlite:///{tmp_path / 'veil.db'}")
    assert (cfg.managed_domains, cfg.server, cfg.reveal, cfg.console, cfg.scim) == (
        (),
        c.ServerConfig(),
        c.RevealConfig(),
        c.ConsoleConfig(),
        c.ScimConfig(),
    )
    assert (cfg.governance.keys, cfg.governance.checkpoint_s) == (
        (),
        c.GovernanceConfig().checkpoint_s,
    )
    assert (
        c.ServerConfig().port
        == c.schema()["properties"]["server"]["properties"]["port"]["default"]
        == 8080
    )


def test_config_is_frozen() -> None:
    cfg = config_module.from_dict(base(), env=ENV)
    with pytest.raises(AttributeError):
        cfg.upstream.url = "http://elsewhere"  # type: ignore[misc]  # the test: frozen


def test_invalid_yaml_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "veil.yaml"
    path.write_text("upstream: [unclosed")
    with pytest.raises(ConfigError) as info:
        config_module.load(path)
    assert "not valid YAML" in info.value.detail


def test_veil_serve_refuses_a_bad_config(tmp_path: Path) -> None:
    doc = base()
    doc["server"] = {"port": "eighty"}
    path = tmp_path / "veil.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = subprocess.run(
        [sys.executable, "-m", "veil.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **ENV},
    )
    assert result.returncode == 2
    assert "server.port: 'eighty' is not of type 'integer'" in result.stderr
