"""docker/: the compose file, Veil's container configuration and the image's commands agree.

No Docker engine runs on these machines: the compose file is parsed and checked against the
Dockerfile and against Veil's configuration schema (with the environment compose gives the
container), and the image's entry command and health check are run here, on loopback.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from veil import config as config_module

from conftest import POLICIES, ROOT, LoopbackStore
from netutil import free_port, wait_until_ready
from opa_server import FakeOpa

DOCKER = ROOT / "docker"


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return document


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined; comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, rest = text.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def instruction(name: str) -> list[str]:
    return [rest for keyword, rest in dockerfile() if keyword == name]


def exec_form(name: str) -> list[str]:
    (rest,) = instruction(name)[-1:]
    if name == "HEALTHCHECK":
        rest = rest[rest.index("CMD ") + len("CMD ") :]
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def entry_command() -> list[str]:
    return exec_form("ENTRYPOINT") + exec_form("CMD")


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def compose_env(service: dict[str, Any], values: dict[str, str]) -> dict[str, str]:
    """The container's environment, with ``${VAR:?message}`` / ``${VAR:-default}`` resolved
    from ``values`` (what the operator exports)."""
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)

    def resolve(text: str) -> str:
        def one(match: re.Match[str]) -> str:
            name, op, rest = match.group(1), match.group(2) or "", match.group(3) or ""
            if name in values:
                return values[name]
            if op.endswith("-"):
                return rest
            raise AssertionError(f"compose needs ${name} from the environment: {rest}")

        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}", one, text)

    return {name: resolve(str(value)) for name, value in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read-only) for short-syntax volumes."""
    found = {}
    for volume in service.get("volumes", []):
        parts = volume.split(":")
        found[parts[1]] = (parts[0], len(parts) > 2 and "ro" in parts[2].split(","))
    return found


def published(service: dict[str, Any]) -> dict[int, tuple[str, ...]]:
    """container port -> (host address, host port)."""
    found = {}
    for port in service.get("ports", []):
        *host, container = str(port).split(":")
        found[int(container)] = tuple(host)
    return found


SECRET = {"VEIL_JWT_SECRET": "a-test-secret-that-is-long-enough-for-hs256"}


def container_config() -> config_module.Config:
    """docker/veil.yaml as the Veil container reads it, with the environment compose gives."""
    env = compose_env(compose()["services"]["veil"], SECRET)
    document = yaml.safe_load((DOCKER / "veil.yaml").read_text())
    return config_module.from_dict(document, base_dir=Path("/etc/veil"), env=env)


# ---- the compose file ----------------------------------------------------------------------


def test_compose_runs_the_store_opa_and_veil() -> None:
    services = compose()["services"]
    assert set(services) == {"store", "opa", "veil", "setup"}
    opa = services["opa"]
    image, _, tag = opa["image"].partition(":")
    assert image == "openpolicyagent/opa"
    assert tag and tag != "latest", "pin the OPA version"
    assert opa["command"][:2] == ["run", "--server"]
    assert option(opa["command"], "--addr") == ":8181"  # OPA 1.x listens on localhost only
    assert published(opa) == {8181: ("127.0.0.1", "8181")}
    assert set(services["veil"]["depends_on"]) == {"store", "opa"}


def test_veil_container_config_validates_with_the_compose_environment() -> None:
    config = container_config()
    assert config.policy.engine == "opa"
    assert config.policy.opa_bundle is False
    assert config.identity.jwt.hs256_secret == SECRET["VEIL_JWT_SECRET"]
    assert config.storage.url == "sqlite:////var/lib/veil/veil.db"


def test_compose_without_the_secret_is_refused() -> None:
    with pytest.raises(AssertionError, match="VEIL_JWT_SECRET"):
        compose_env(compose()["services"]["veil"], {})


def test_veil_reaches_the_services_compose_names() -> None:
    services = compose()["services"]
    config = container_config()
    opa_url = urlsplit(config.policy.opa_url)
    assert opa_url.hostname == "opa"
    assert f":{opa_url.port}" == option(services["opa"]["command"], "--addr")
    store_url = urlsplit(config.upstream.url)
    assert store_url.hostname == "store"
    store_bind = option(services["store"]["command"], "--bind")
    assert store_bind == f"0.0.0.0:{store_url.port}"
    assert store_url.port in published(services["store"])


def test_veil_mounts_and_ports_agree_with_its_config_and_image() -> None:
    veil = compose()["services"]["veil"]
    config = container_config()
    command = veil.get("command", exec_form("CMD"))
    assert command == exec_form("CMD")
    found = mounts(veil)
    assert found[option(command, "--config")] == ("./veil.yaml", True)
    assert found[str(config.policy.dir)] == ("../policies", True)  # policies read-only
    assert (DOCKER / "../policies").resolve() == POLICIES
    data_dir = str(Path(config.storage.url[len("sqlite:///") :]).parent)
    assert data_dir in found and not found[data_dir][1]  # the database is written
    port = int(option(command, "--port"))
    assert published(veil) == {port: ("127.0.0.1", str(port))}  # loopback only
    assert instruction("EXPOSE") == [str(port)]
    assert option(command, "--host") == "0.0.0.0"


def test_store_service_runs_the_demo_store_factory() -> None:
    store = compose()["services"]["store"]
    target = store["command"][-1]
    module, _, call = target.partition(":")
    assert call.endswith("()")
    imported = __import__(module, fromlist=[call[:-2]])
    app = getattr(imported, call[:-2])()
    assert app.test_client().get("/api/activities?limit=1").status_code == 200
    health = store["healthcheck"]["test"]
    assert health[:2] == ["CMD", "python"] and ":9000/" in health[-1]


# ---- the image ---------------------------------------------------------------------------


def test_dockerfile_is_slim_non_root_and_checks_healthz_with_python() -> None:
    assert instruction("FROM") == ["python:3.11-slim"]
    user = instruction("USER")[-1].split(":")[0]
    assert user not in ("root", "0")
    assert any(
        re.search(r"\bpip install \"\.\[postgres\]\"(\s|$)", run) for run in instruction("RUN")
    )  # one image for SQLite and PostgreSQL
    check = exec_form("HEALTHCHECK")
    assert check[0] == "python"
    assert "/healthz" in check[-1]
    assert not any(tool in " ".join(check) for tool in ("curl", "wget"))
    assert entry_command()[:2] == ["veil", "serve"]
    copied = {rest.split()[-1]: rest.split()[0] for rest in instruction("COPY")}
    assert copied[option(entry_command(), "--config")] == "docker/veil.yaml"
    assert copied[str(container_config().policy.dir)] == "policies"


@pytest.fixture
def opa() -> Iterator[FakeOpa]:
    server = FakeOpa()
    yield server
    server.close()


def test_the_image_entry_command_serves_healthz(
    store: LoopbackStore, opa: FakeOpa, tmp_path: Path
) -> None:
    """The Dockerfile's ENTRYPOINT + CMD, run here: only the config path and the port change
    (the config is docker/veil.yaml with loopback addresses); then its HEALTHCHECK passes."""
    document = yaml.safe_load((DOCKER / "veil.yaml").read_text())
    document["upstream"]["url"] = store.url
    document["policy"].update(opa_url=opa.url, dir=str(POLICIES))
    document["storage"]["url"] = f"sqlite:///{tmp_path / 'veil.db'}"
    document["server"]["workers"] = 1
    local_config = tmp_path / "veil.yaml"
    local_config.write_text(yaml.safe_dump(document))
    port = free_port()
    argv = entry_command()
    argv[argv.index("--config") + 1] = str(local_config)
    argv[argv.index("--port") + 1] = str(port)
    argv[0] = str(Path(sys.executable).parent / argv[0])  # the venv's `veil` script
    env = {**os.environ, **compose_env(compose()["services"]["veil"], SECRET)}
    env.pop("VEIL_CONFIG", None)
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        try:
            answer = wait_until_ready(f"http://127.0.0.1:{port}/healthz", 60, process=process)
        except AssertionError as exc:
            output = process.stdout.read().decode() if process.stdout else ""
            pytest.fail(f"`{shlex.join(argv)}` did not serve /healthz: {exc}\n{output}")
        assert answer.status_code == 200
        assert answer.json() == {"status": "ok"}
        ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.json()["checks"] == {"store": True, "engine": True, "storage": True}
        assert opa.policy_ids() == [
            f"veil/veil/privacy/{name}.rego"
            for name in (
                "built_in_groups",
                "decision",
                "private_windows",
                "reveal",
                "unreadable_rows",
                "windows",
            )
        ]
        check = [
            sys.executable if part == "python" else part.replace(":8080/", f":{port}/")
            for part in exec_form("HEALTHCHECK")
        ]
        assert subprocess.run(check, timeout=10).returncode == 0
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if process.stdout:
            process.stdout.close()


# ---- the one-shot set-up: groups imported, tokens printed ---------------------------------


def test_setup_service_runs_the_setup_against_the_compose_services() -> None:
    services = compose()["services"]
    setup, veil = services["setup"], services["veil"]
    assert setup["image"] == veil["image"] and setup["restart"] == "no"
    assert setup["entrypoint"] == ["python", "-m", "veil.demo.setup"]
    assert set(setup["depends_on"]) == {"veil", "store"}
    command = setup["command"]
    assert (
        mounts(setup)[option(command, "--config")]
        == mounts(veil)[option(veil["command"], "--config")]
    )
    assert compose_env(setup, SECRET) == compose_env(veil, SECRET)
    config = container_config()
    veil_url, store_url = urlsplit(option(command, "--veil")), urlsplit(option(command, "--store"))
    assert (veil_url.hostname, veil_url.port) == ("veil", int(option(veil["command"], "--port")))
    assert option(command, "--store") == config.upstream.url
    assert store_url.port in published(services["store"])
    assert urlsplit(option(command, "--public-veil")).port in published(veil)


@pytest.fixture
def demo_store_and_veil(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The demo store and a Veil with the container's configuration, on loopback."""
    import threading

    from werkzeug.serving import make_server

    from veil.app import create_app
    from veil.demo.store import create_store_app

    servers = [make_server("127.0.0.1", 0, create_store_app(seed=7), threaded=True)]
    document = yaml.safe_load((DOCKER / "veil.yaml").read_text())
    document["upstream"]["url"] = f"http://127.0.0.1:{servers[0].server_port}"
    document["policy"] = {"engine": "embedded", "dir": str(POLICIES)}
    document["storage"]["url"] = f"sqlite:///{tmp_path / 'veil.db'}"
    app = create_app(config_module.from_dict(document, base_dir=tmp_path, env=SECRET))
    servers.append(make_server("127.0.0.1", 0, app, threaded=True))
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield (
            f"http://127.0.0.1:{servers[1].server_port}",
            f"http://127.0.0.1:{servers[0].server_port}",
        )
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        app.extensions["veil"].storage.close()


def test_setup_imports_the_demo_groups_and_prints_working_tokens(
    demo_store_and_veil: tuple[str, str], tmp_path: Path
) -> None:
    """The setup service's command, run here with loopback addresses for the service names."""
    veil_url, store_url = demo_store_and_veil
    command = compose()["services"]["setup"]["command"]
    argv = [sys.executable, *compose()["services"]["setup"]["entrypoint"][1:], *command]
    argv[argv.index("--config") + 1] = str(DOCKER / "veil.yaml")
    argv[argv.index("--veil") + 1] = veil_url
    argv[argv.index("--store") + 1] = store_url
    env = {**os.environ, **compose_env(compose()["services"]["setup"], SECRET)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    exports = {
        name: value
        for line in done.stdout.splitlines()
        if line.startswith("export ")
        for name, value in re.findall(r"(\w+)=(\S+)", line)
    }
    assert exports["VEIL"] == "http://127.0.0.1:8080"  # as the host reaches it
    with requests.Session() as http:
        http.trust_env = False
        admin = {"Authorization": f"Bearer {exports['ADMIN_TOKEN']}"}
        groups = http.get(f"{veil_url}/veil/v1/groups", headers=admin, timeout=10).json()["groups"]
        imported = {g["id"] for g in groups}
        assert {"hr", "it", "sales"} <= imported
        user = {"Authorization": f"Bearer {exports['USER_TOKEN']}"}
        assert (
            http.get(f"{veil_url}/api/activities?limit=2", headers=user, timeout=10).status_code
            == 200
        )
    assert "groups imported from the demo store: " in done.stdout
    # Run again (compose restarts nothing, but an operator may): groups are replaced, no error.
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr


def test_setup_waits_for_veil_and_gives_up_with_a_clear_error(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        "veil.demo.setup",
        "--config",
        str(DOCKER / "veil.yaml"),
        "--veil",
        f"http://127.0.0.1:{free_port()}",
        "--store",
        "http://127.0.0.1:9",
        "--timeout",
        "1",
    ]
    done = subprocess.run(
        argv, env={**os.environ, **SECRET}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "Veil did not answer at http://127.0.0.1:" in done.stderr
