"""What a plain install pulls in, what an extra adds, and what the wheel holds."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from veil.errors import StorageError
from veil.storage import open_storage

from conftest import ROOT


def project() -> dict[str, object]:
    document = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found: dict[str, object] = document["project"]
    return found


def test_psycopg_is_the_postgres_extra_and_the_test_extra_pulls_it() -> None:
    meta = project()
    dependencies = meta["dependencies"]
    extras = meta["optional-dependencies"]
    assert isinstance(dependencies, list) and isinstance(extras, dict)
    assert not [d for d in dependencies if d.lower().startswith("psycopg")]
    assert any(d.startswith("psycopg[") for d in extras["postgres"])
    assert "veil[postgres]" in extras["test"]


def test_regorus_is_pinned_exactly() -> None:
    dependencies = project()["dependencies"]
    assert isinstance(dependencies, list)
    (regorus,) = [d for d in dependencies if d.startswith("gordon-to-regorus")]
    assert regorus.startswith("gordon-to-regorus==")


def test_a_postgresql_url_without_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "veil.storage.postgres", raising=False)
    with pytest.raises(StorageError, match=r"pip install 'veil\[postgres\]'"):
        open_storage("postgresql://veil@127.0.0.1:1/veil", 1.0)


def test_the_wheel_holds_opas_capabilities_file(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "-w", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("veil-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "veil/policytools/capabilities.py" in names
        shipped = archive.read("veil/policytools/capabilities.json")
    assert shipped == (ROOT / "src/veil/policytools/capabilities.json").read_bytes()
    assert {"veil/config.schema.json", "veil/py.typed"} <= names
