"""``veil demo``: the demo store and Veil in front of it, on loopback servers in one process.

Veil runs here on werkzeug's threaded server, which is simple to start and stop in-process;
``veil serve`` (gunicorn) is how Veil runs in production, on the same app and configuration.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jwt
import requests
import yaml
from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from veil import config as config_module
from veil.demo import walkthrough
from veil.demo.store import DOMAIN, PERSONAS, Directory, create_store_app
from veil.errors import VeilError

SECRET_ENV = "VEIL_DEMO_JWT_SECRET"
ISSUER = "https://idp.veil-demo.local"
AUDIENCE = "veil"
ADMIN = PERSONAS[0][0]  # alice@contoso.com, the security admin
PLAIN_USER = PERSONAS[1][0]  # bob@contoso.com, in sales
# A second admin: the view-private permission is granted by another admin, never self-granted.
APPROVER = f"security-lead@{DOMAIN}"
INVESTIGATOR = "erin@contoso.com"  # an admin the demo grants the view-private permission
TOKEN_TTL_S = 30 * 86400


@dataclass(frozen=True)
class DemoSettings:
    host: str = "127.0.0.1"
    port: int = 8080  # 0: any free port
    store_port: int = 9000  # 0: any free port
    data_dir: Path | None = None  # None: a new temporary directory
    policy_dir: Path | None = None  # None: ./policies, else the repository's policies
    seed: int = 7
    rate_per_minute: float = 60.0  # activities a minute in business hours


_ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")


class _AccessLog(WSGIRequestHandler):
    """An access log line on standard error, prefixed with the server it belongs to, so the
    store's requests and Veil's can be told apart in the demo's terminal."""

    prefix = "veil "

    def log(self, type: str, message: str, *args: Any) -> None:
        line = message % args
        if not sys.stderr.isatty():  # werkzeug colours the status; not in a file or a pipe
            line = _ANSI_STYLE.sub("", line)
        print(
            f"{self.prefix} | {self.address_string()} - - [{self.log_date_time_string()}] {line}",
            file=sys.stderr,
            flush=True,
        )


class _StoreAccessLog(_AccessLog):
    prefix = "store"


def veil_command() -> str:
    """How to run this Veil from any shell: the venv's ``veil`` script by its full path (no
    venv activation needed), else ``python -m veil`` with this interpreter."""
    script = Path(sys.executable).parent / "veil"
    if script.is_file() and os.access(script, os.X_OK):
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m veil"


def default_policy_dir() -> Path:
    """./policies when it holds policies, else the policies of the source checkout Veil runs
    from (an installed Veil carries no policies)."""
    here = Path.cwd() / "policies"
    if here.is_dir() and any(here.rglob("*.rego")):
        return here
    repository = Path(__file__).resolve().parents[3] / "policies"
    if repository.is_dir() and any(repository.rglob("*.rego")):
        return repository
    raise VeilError(
        "no policy directory: ./policies holds no .rego file, and this Veil is "
        "not run from a source checkout (an installed Veil carries no policies). "
        "Give --policy-dir DIR, for example a copy of policies/ from the Veil "
        "repository, or run from a directory that has policies/"
    )


def demo_secret(data_dir: Path) -> str:
    """The HS256 secret: $VEIL_DEMO_JWT_SECRET, else the one kept in the data directory (so
    tokens printed by an earlier run on it still work), else a new one kept there."""
    from_env = os.environ.get(SECRET_ENV)
    if from_env:
        return from_env
    kept = data_dir / "jwt-secret"
    if kept.is_file():
        return kept.read_text("utf-8").strip()
    secret = secrets.token_urlsafe(32)
    kept.touch(mode=0o600)
    kept.write_text(secret + "\n", "utf-8")
    return secret


def mint(principal: str, secret: str, ttl_s: int = TOKEN_TTL_S) -> str:
    """A token the demo's Veil accepts."""
    now = int(time.time())
    return jwt.encode(
        {"upn": principal, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + ttl_s},
        secret,
        algorithm="HS256",
    )


def url_host(host: str) -> str:
    """The address to connect to for a bind address."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def config_document(
    store_url: str, host: str, port: int, policy_dir: Path, database: Path
) -> dict[str, Any]:
    return {
        "upstream": {
            "url": store_url,
            "routes": ["/api/activities"],
            "rows": "/data",
            "keep": ["/next"],  # the paging cursor; anything else around the rows is dropped
            "fields": {
                "id": "/id",
                "actor": "/user",
                "actor_type": "/actorType",
                "timestamp": "/timestamp",
            },
            "timeout_s": 10,
        },
        "organization": {"managed_domains": [DOMAIN]},
        "identity": {
            "mode": "jwt",
            "jwt": {"issuer": ISSUER, "audience": AUDIENCE, "hs256_secret_env": SECRET_ENV},
            "bootstrap_admins": [ADMIN, APPROVER],
        },
        "policy": {"engine": "embedded", "dir": str(policy_dir)},
        "server": {"host": host, "port": port},
        "storage": {"url": f"sqlite:///{database}"},
        "reveal": {"session_ttl_s": 900, "require_justification": True},
    }


class Demo:
    """The demo store and Veil, running on real loopback servers until ``stop()``."""

    def __init__(self, settings: DemoSettings, secret: str | None = None) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir or Path(tempfile.mkdtemp(prefix="veil-demo-"))
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.secret = secret or demo_secret(self.data_dir)
        self.policy_dir = (settings.policy_dir or default_policy_dir()).resolve()
        self.directory = Directory.generate(settings.seed)
        self.config_path = self.data_dir / "veil.yaml"
        self.admin_token = mint(ADMIN, self.secret)
        self.user_token = mint(PLAIN_USER, self.secret)
        self.approver_token = mint(APPROVER, self.secret)
        self.groups: list[dict[str, Any]] = []
        self.already_private: list[str] = []  # by an earlier run on the same data directory
        self._servers: list[BaseWSGIServer] = []
        self._threads: list[threading.Thread] = []
        self._veil: Flask | None = None
        self.store_url = ""
        self.veil_url = ""

    def start(self) -> None:
        """Start the store, then Veil in front of it, then import the store's departments."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        s = self.settings
        store = create_store_app(
            seed=s.seed, rate_per_minute=s.rate_per_minute, directory=self.directory
        )
        store_server = self._serve(store, s.store_port, "store", _StoreAccessLog)
        self.store_url = f"http://{url_host(s.host)}:{store_server.server_port}"

        # Veil's server binds before the app exists, so its configuration names the real port.
        veil = _LateApp()
        port = self._serve(veil, s.port, "Veil", _AccessLog).server_port
        self.veil_url = f"http://{url_host(s.host)}:{port}"
        document = config_document(
            self.store_url, s.host, port, self.policy_dir, self.data_dir / "veil.db"
        )
        kept = self.data_dir / "jwt-secret"
        self.config_path.write_text(
            "# Written by `veil demo`. The JWT secret is in the environment variable "
            f"{SECRET_ENV}"
            + (f" (also kept in {kept})" if kept.is_file() else "")
            + ".\n"
            + yaml.safe_dump(document, sort_keys=False),
            "utf-8",
        )
        config = config_module.load(self.config_path, env={**os.environ, SECRET_ENV: self.secret})
        from veil.app import create_app

        # The console, with the demo's pick-a-user sign-in (nothing but the demo offers it).
        console_key = hashlib.sha256(f"veil-demo-console:{self.secret}".encode()).hexdigest()
        config = replace(
            config, console=replace(config.console, enabled=True, secret_key=console_key)
        )
        app = create_app(config)
        from veil.console.signin import DemoUser, enable_demo_sign_in

        enable_demo_sign_in(
            app,
            (
                DemoUser(INVESTIGATOR, "Erin Shah", "admin with the Activity privacy permission"),
                DemoUser(
                    ADMIN,
                    "Alice Martin",
                    "admin without the permission (until the walk-through grants it)",
                ),
                DemoUser(PLAIN_USER, "Bob Jensen", "plain user"),
            ),
        )
        self._veil = veil.app = app
        self.groups = self._import_groups()
        self._set_up_investigator()
        self.already_private = sorted(
            p["group"]
            for p in self._veil.extensions["veil"].storage.list_privacy_groups()
            if p["private"]
        )

    def _serve(
        self, app: Any, port: int, what: str, handler: type[WSGIRequestHandler] | None = None
    ) -> BaseWSGIServer:
        try:
            server = make_server(
                self.settings.host, port, app, threaded=True, request_handler=handler
            )
        except (OSError, SystemExit) as exc:  # werkzeug exits when the port is taken
            option = "--store-port" if what == "store" else "--port"
            raise VeilError(
                f"cannot serve the demo {what} on {self.settings.host}:{port}; "
                f"choose another port with {option} (0: any free port)"
            ) from exc
        self._servers.append(server)
        thread = threading.Thread(
            target=server.serve_forever, name=f"veil-demo-{what}", daemon=True
        )
        thread.start()
        self._threads.append(thread)
        return server

    def _import_groups(self) -> list[dict[str, Any]]:
        """Import the store's departments into Veil through its API, as the admin would."""
        return import_groups(self.store_url, self.veil_url, self.admin_token)

    def _set_up_investigator(self) -> None:
        """Make the demo's investigator an admin holding the view-private permission, through
        Veil's API as the admin would (409: already done by an earlier run on this data)."""
        admin = {"Authorization": f"Bearer {self.admin_token}"}
        http = requests.Session()
        http.trust_env = False  # the demo's own servers: never through a proxy
        with http:
            for path in ("/veil/v1/admins", "/veil/v1/private-viewers"):
                try:
                    answer = http.post(
                        f"{self.veil_url}{path}",
                        json={"principal": INVESTIGATOR},
                        headers=admin,
                        timeout=10,
                    )
                except requests.RequestException as exc:
                    raise VeilError(f"the demo could not set up {INVESTIGATOR}: {exc}") from exc
                if answer.status_code not in (201, 409):
                    raise VeilError(
                        f"the demo could not set up {INVESTIGATOR} for the console: "
                        f"{answer.status_code} {answer.text}"
                    )

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()
        if self._veil is not None:
            services = self._veil.extensions["veil"]
            services.storage.close()
            services.engine.close()
            services.upstream.close()
            self._veil = None

    def __enter__(self) -> Demo:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def variables(self) -> dict[str, str]:
        """The shell variables the printed walk-through uses."""
        return {
            "VEIL": self.veil_url,
            "STORE": self.store_url,
            "ADMIN_TOKEN": self.admin_token,
            "USER_TOKEN": self.user_token,
            "APPROVER_TOKEN": self.approver_token,
        }

    def _someone(self) -> str:
        """A member of hr, the group the walk-through makes private."""
        hr = next((g for g in self.groups if g["id"] == "hr" and g["members"]), None)
        return str(hr["members"][0]) if hr else PLAIN_USER

    def banner(self) -> str:
        """What ``veil demo`` prints: where things are, tokens, and the walk-through."""
        v = self.variables()
        sizes = ", ".join(f"{g['id']} ({len(g['members'])})" for g in self.groups)
        people = sum(1 for a in self.directory.actors if a.kind == "employee")
        guests = sum(1 for a in self.directory.actors if a.kind == "guest")
        apps = sum(1 for a in self.directory.actors if a.kind == "application")
        return "\n".join(
            [
                "Veil demo is running.",
                f"  activity store  {self.store_url}  (Contoso: {people} employees, {guests} "
                f"external guests, {apps} service apps; about {self.settings.rate_per_minute:g} "
                "activities a minute in business hours, 3 weeks of history)",
                f"  Veil            {self.veil_url}  (embedded Rego engine, policies in "
                f"{self.policy_dir})",
                f"  state           {self.data_dir / 'veil.db'}  (configuration: "
                f"{self.config_path})",
                f"  groups imported from the store's directory: {sizes}",
                f"  admin {ADMIN}, plain user {PLAIN_USER} and the admin who approves "
                f"permissions, {APPROVER}: tokens below, valid 30 days",
                f"  admin console   {self.veil_url}/console/  (demo sign-in: pick {INVESTIGATOR}, "
                f"{ADMIN} or {PLAIN_USER})",
                *(
                    [
                        f"  already private from an earlier run on this data directory: "
                        f"{', '.join(self.already_private)} (start with a new --data-dir to "
                        "follow the "
                        "walk-through from the beginning)"
                    ]
                    if self.already_private
                    else []
                ),
                "",
                "Paste into another shell:",
                "",
                f"export VEIL={v['VEIL']} STORE={v['STORE']}",
                f"export ADMIN_TOKEN={v['ADMIN_TOKEN']}",
                f"export USER_TOKEN={v['USER_TOKEN']}",
                f"export APPROVER_TOKEN={v['APPROVER_TOKEN']}",
                "",
                walkthrough.script(walkthrough.steps(ADMIN)),
                "# The command line works on the demo's state too (no venv to activate):",
                f"{veil_command()} privacy-groups list --config {self.config_path}",
                f"{veil_command()} governance verify --config {self.config_path}",
                "# A token for another demo user (veil token signs with the demo's secret):",
                f"export {SECRET_ENV}={self.secret}",
                f"{veil_command()} token --sub {self._someone()} --config {self.config_path}",
                "",
                "Access logs below: 'store |' is the activity store, 'veil  |' is Veil.",
                "Press Ctrl-C to stop the demo.",
            ]
        )


def import_groups(store_url: str, veil_url: str, admin_token: str) -> list[dict[str, Any]]:
    """Put the demo store's departments (``/api/directory/groups``) into Veil as groups, through
    Veil's API with an admin's token; return them."""
    http = requests.Session()
    http.trust_env = False  # the demo's own servers: never through a proxy
    with http:
        try:
            found = http.get(f"{store_url}/api/directory/groups", timeout=10)
            found.raise_for_status()
            groups: list[dict[str, Any]] = found.json()["groups"]
            for group in groups:
                answer = http.put(
                    f"{veil_url}/veil/v1/groups/{group['id']}",
                    json={"name": group["name"], "members": group["members"]},
                    headers={"Authorization": f"Bearer {admin_token}"},
                    timeout=10,
                )
                if answer.status_code not in (200, 201):
                    raise VeilError(
                        f"importing group {group['id']!r} into Veil failed: "
                        f"{answer.status_code} {answer.text}"
                    )
        except requests.RequestException as exc:
            raise VeilError(f"the demo could not import the store's groups: {exc}") from exc
    return groups


class _LateApp:
    """A WSGI app that answers 503 until the real app is set."""

    def __init__(self) -> None:
        self.app: Flask | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if self.app is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"Veil is starting\n"]
        return self.app(environ, start_response)


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM stops the demo like Ctrl-C does (only the main thread can set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(
    host: str = "127.0.0.1",
    port: int = 8080,
    store_port: int = 9000,
    data_dir: str | os.PathLike[str] | None = None,
    policy_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int = 7,
    rate_per_minute: float = 60.0,
) -> int:
    """Run the demo until Ctrl-C (or SIGTERM); 0 when it stopped cleanly."""
    settings = DemoSettings(
        host=host,
        port=port,
        store_port=store_port,
        data_dir=Path(data_dir) if data_dir else None,
        policy_dir=Path(policy_dir) if policy_dir else None,
        seed=seed,
        rate_per_minute=rate_per_minute,
    )
    demo = Demo(settings)
    os.environ.setdefault(SECRET_ENV, demo.secret)  # for the veil commands it prints
    with _stop_on_sigterm():
        try:
            demo.start()
            print(demo.banner(), flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("\nStopping the demo.", flush=True)
        finally:
            demo.stop()
    print(
        f"The demo's state is kept in {demo.data_dir}; pass --data-dir {demo.data_dir} "
        "to continue from it.",
        flush=True,
    )
    return 0
