"""pytest plugin: a throw-away PostgreSQL cluster, and a fresh database for each test.

The cluster is made with ``initdb`` and run with ``pg_ctl`` in a temporary directory, on a
free loopback port, for the whole session. Binaries are looked up in ``$VEIL_TEST_PG_BIN``,
on ``PATH``, then in Debian's ``/usr/lib/postgresql/<version>/bin``. PostgreSQL refuses to
run as root, so under root the cluster runs as the ``postgres`` user (or ``nobody``).

Without the binaries the PostgreSQL tests are skipped, except when ``CI`` is set: there they
fail, so a CI that lost its PostgreSQL cannot pass silently.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from netutil import free_port

SUPERUSER = "veil"
START_TIMEOUT_S = 60


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None."""
    candidates: list[Path] = []
    if os.environ.get("VEIL_TEST_PG_BIN"):
        candidates.append(Path(os.environ["VEIL_TEST_PG_BIN"]))
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


class PostgresCluster:
    """One PostgreSQL server in a temporary directory, listening on 127.0.0.1 only."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        as_root = os.geteuid() == 0
        # Under root the server's user must reach the directory: $TMPDIR may be private.
        self.base = Path(tempfile.mkdtemp(prefix="veil-pg-", dir="/tmp" if as_root else None))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.port = 0
        self.uid: int | None = None
        self.gid: int | None = None
        self._names = itertools.count(1)
        if as_root:
            account = self._unprivileged_account()
            self.uid, self.gid = account.pw_uid, account.pw_gid
            os.chown(self.base, self.uid, self.gid)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--no-locale",
                "--encoding=UTF8",
                "--no-sync",
            )
        except BaseException:
            shutil.rmtree(self.base, ignore_errors=True)
            raise

    @staticmethod
    def _unprivileged_account() -> pwd.struct_passwd:
        for name in ("postgres", "nobody"):
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        raise RuntimeError(
            "running as root, and neither a 'postgres' nor a 'nobody' user "
            "exists to run PostgreSQL as"
        )

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        result = subprocess.run(
            command,
            cwd=self.base,
            capture_output=True,
            text=True,
            check=False,
            timeout=START_TIMEOUT_S + 30,
            user=self.uid,
            group=self.gid,
            extra_groups=[] if self.uid is not None else None,
            env={**os.environ, "LC_ALL": "C", "PGTZ": "UTC"},
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n--- postgres.log ---\n" + "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        """Start the server (again); on first start pick a free port, then keep it."""
        attempts = 1 if self.port else 3
        for attempt in range(attempts):
            if not self.port or attempt:
                self.port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} "
                "-c unix_socket_directories='' -c max_connections=300 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                self._run(
                    "pg_ctl",
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-w",
                    "-t",
                    str(START_TIMEOUT_S),
                    "-o",
                    options,
                    "start",
                )
                return
            except RuntimeError:
                if attempt == attempts - 1:
                    raise

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url(), autocommit=True, connect_timeout=10)

    def create_database(self) -> str:
        name = f"veil_test_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            force = sql.SQL(" WITH (FORCE)") if conn.info.server_version >= 130000 else sql.SQL("")
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)) + force)

    def destroy(self) -> None:
        try:
            if self.running():
                self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def require_bin_dir() -> Path:
    """The binaries' directory; without one, fail under CI and skip elsewhere."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        message = (
            "PostgreSQL binaries (initdb, pg_ctl) not found on PATH, in "
            "$VEIL_TEST_PG_BIN or in /usr/lib/postgresql/*/bin; install the "
            "'postgresql' package"
        )
        if in_ci():
            pytest.fail(message + " (CI is set: PostgreSQL tests must run)", pytrace=False)
        pytest.skip(message)
    return bin_dir


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """The session's PostgreSQL server; a test may stop it, and it is restarted after."""
    cluster = PostgresCluster(require_bin_dir())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A ``postgresql://`` URL of a new, empty database, dropped after the test."""
    name = postgres_cluster.create_database()
    yield postgres_cluster.url(name)
    if not postgres_cluster.running():
        postgres_cluster.start()
    postgres_cluster.drop_database(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs PostgreSQL, so ``-m 'not postgres'`` leaves them out."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        if "postgres_url" in getattr(item, "fixturenames", ()) or (
            params.get("storage_url") == "postgres"
        ):
            item.add_marker(pytest.mark.postgres)


def pytest_report_header() -> str:
    bin_dir = find_bin_dir()
    return f"postgresql binaries: {bin_dir if bin_dir else 'not found'}"
