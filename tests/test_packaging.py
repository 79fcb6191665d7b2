"""What a plain install pulls in, what an extra adds, and what the wheel holds."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


def test_a_postgresql_url_without_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "veil.storage.postgres", raising=False)
    with pytest.raises(StorageError, match=r"pip install 'veil\[postgres\]'"):
        open_storage("postgresql://veil@127.0.0.1:1/veil", 1.0)


def test_the_wheel_holds_opas_capabilities_file(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("veil-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "veil/policytools/capabilities.py" in names
        shipped = archive.read("veil/policytools/capabilities.json")
    assert shipped == (ROOT / "src/veil/policytools/capabilities.json").read_bytes()
    assert {"veil/config.schema.json", "veil/py.typed"} <= names


# Imported only where an extra or a hand install provides them, and said so at the import.
OPTIONAL_IMPORTS = {
    "psycopg": "postgres",  # storage.url: postgresql://... (veil[postgres])
    "psycopg_pool": "postgres",
    "opa_bindings": None,  # OPA's evaluator, installed by hand (see .ci/run); used when present
}


def _imported_modules() -> set[str]:
    """The top-level modules that anything under src/veil imports, at any depth."""
    found: set[str] = set()
    for path in (ROOT / "src" / "veil").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def _closure(requirements: list[str], extras: frozenset[str]) -> set[str]:
    """Every distribution a plain install of these requirements brings (names normalised)."""
    seen: set[str] = set()
    pending = [(Requirement(r), extras) for r in requirements]
    while pending:
        requirement, wanted = pending.pop()
        if requirement.marker is not None and not any(
            requirement.marker.evaluate({"extra": extra}) for extra in wanted or {""}
        ):
            continue
        name = canonicalize_name(requirement.name)
        if name == "veil":
            pending.extend((Requirement(r), frozenset(requirement.extras)) for r in requirements)
            continue
        if name in seen:
            continue
        seen.add(name)
        for sub in metadata.distribution(name).requires or ():
            pending.append((Requirement(sub), frozenset(requirement.extras)))
    return seen


def test_a_plain_install_brings_every_module_veil_imports() -> None:
    """`pip install .` then `veil demo` must not fail on an import that only the test
    extra brought (as scim2-models once did)."""
    dependencies = project()["dependencies"]
    assert isinstance(dependencies, list)
    installed = _closure(dependencies, frozenset())
    providers = metadata.packages_distributions()
    missing = {}
    for module in sorted(
        _imported_modules() - set(sys.stdlib_module_names) - {"veil"} - set(OPTIONAL_IMPORTS)
    ):
        names = {canonicalize_name(d) for d in providers.get(module, [])}
        assert names, f"{module} is imported by src/veil but no installed distribution has it"
        if not names & installed:
            missing[module] = sorted(names)
    assert missing == {}, f"imported by src/veil, but not brought by a plain install: {missing}"


def test_the_optional_imports_are_the_extras_they_say() -> None:
    extras = project()["optional-dependencies"]
    assert isinstance(extras, dict)
    for module, extra in OPTIONAL_IMPORTS.items():
        if extra is None:
            continue
        providers = {canonicalize_name(d) for d in metadata.packages_distributions()[module]}
        assert providers & _closure(extras[extra], frozenset()), (module, extra)
