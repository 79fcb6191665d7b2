"""What a plain install pulls in, and what an extra adds."""

from __future__ import annotations

import sys
import tomllib

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
