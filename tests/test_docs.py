"""The project's own documents: the rules R1-R12 are written down here and cited, and the
README's configuration defaults are the schema's."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from veil import config

from conftest import ROOT

RULES = ROOT / "docs" / "rules.md"


def test_rules_md_states_r1_to_r12_once_each() -> None:
    text = RULES.read_text()
    stated = re.findall(r"^\*\*(R\d+) — [^*]+\*\*", text, re.M)
    assert stated == [f"R{n}" for n in range(1, 13)]


def test_documents_cite_rules_md_not_a_spec_outside_the_repository() -> None:
    rego = sorted((ROOT / "policies").rglob("*.rego"))
    citing = [
        ROOT / "README.md",
        ROOT / "policies" / "README.md",
        *(path for path in rego if not path.name.endswith("_test.rego")),
    ]
    assert len(citing) > 2
    for path in [*citing, *rego, *sorted((ROOT / "src" / "veil").rglob("*.py"))]:
        text = path.read_text()
        assert "SPEC.md" not in text and "SPEC rules" not in text, path
    for path in citing:
        assert "docs/rules.md" in path.read_text(), path


def _readme_config_table() -> list[tuple[str, str]]:
    """``(key cell, default cell)`` of every row of the README's configuration reference."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Configuration reference", 1)[1].split("\n#", 1)[0]
    rows = [line[1:].split("|", 2) for line in section.splitlines() if line.startswith("| `")]
    return [(key.strip(), default.strip()) for key, default, _meaning in rows]


def _keys(cell: str) -> list[str]:
    """``a.b.c``, ``.d`` (a sibling of the key before) and ``a.b.x/y`` (two keys)."""
    keys: list[str] = []
    for span in re.findall(r"`([^`]+)`", cell):
        if span.startswith("."):
            span = keys[-1].rsplit(".", 1)[0] + span
        parent, _, last = span.rpartition(".")
        keys += [f"{parent}.{name}" for name in last.split("/")]
    return keys


def _pieces(cell: str) -> list[str]:
    """The default cell split at ", " outside backticks."""
    return [p.strip() for p in re.split(r",\s+(?=(?:[^`]*`[^`]*`)*[^`]*$)", cell.strip())]


def _documented_defaults() -> dict[str, Any]:
    """Key -> the README's default (parsed as YAML), or NO_DEFAULT for prose ("none", ...)."""
    documented: dict[str, Any] = {}
    for key_cell, default_cell in _readme_config_table():
        keys, pieces = _keys(key_cell), _pieces(default_cell)
        if len(pieces) == 1 and len(keys) > 1 and "`" not in pieces[0]:
            pieces *= len(keys)  # "required in jwt mode" for every key of the row
        assert len(pieces) == len(keys), (key_cell, default_cell)
        for key, piece in zip(keys, pieces, strict=True):
            value = re.match(r"`([^`]*)`", piece)
            documented[key] = yaml.safe_load(value.group(1)) if value else NO_DEFAULT
    return documented


NO_DEFAULT = object()


def _schema_keys() -> dict[str, Any]:
    """Every key of the configuration schema -> its default, or NO_DEFAULT."""
    found: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for name, sub in node.get("properties", {}).items():
            found[prefix + name] = sub.get("default", NO_DEFAULT)
            walk(sub, f"{prefix}{name}.")

    walk(config.schema(), "")
    return found


def test_readme_config_defaults_are_the_schemas() -> None:
    schema = _schema_keys()
    documented = _documented_defaults()
    assert len(documented) > 40
    for key, value in documented.items():
        assert key in schema, f"the README documents {key}, which the schema does not know"
        expected = schema[key]
        if value is NO_DEFAULT or expected is NO_DEFAULT:
            assert value is expected, (
                f"{key}: README and schema disagree on whether it "
                f"has a default ({expected!r} in the schema)"
            )
        else:  # compared as JSON: 0 is not false
            assert json.dumps(value) == json.dumps(expected), (
                f"{key}: the README says {value!r}, the schema's default is {expected!r}"
            )
    sections = {key for key, value in schema.items() if value == {}}
    undocumented = sorted(
        key
        for key, value in schema.items()
        if value is not NO_DEFAULT and key not in sections and key not in documented
    )
    assert undocumented == [], "defaults missing from the README's configuration table"


def test_policy_files_and_the_documents_that_cite_them_agree() -> None:
    """Every file of the shipped policy is in policies/README.md's table, and every policy
    file a document cites exists (the policy is one file per rule)."""
    shipped = sorted(path.name for path in (ROOT / "policies/veil/privacy").glob("*.rego"))
    assert "decision.rego" in shipped and len(shipped) > 2
    guide = (ROOT / "policies" / "README.md").read_text()
    for name in shipped:
        assert f"`{name}`" in guide or f"veil/privacy/{name}`" in guide, name
    citations = 0
    for document in (ROOT / "README.md", ROOT / "policies" / "README.md", RULES):
        for cited in re.findall(r"\b([a-z][a-z_]*\.rego)\b", document.read_text()):
            assert cited in shipped or (ROOT / "docs/examples" / cited).is_file(), (
                document.name,
                cited,
            )
            citations += 1
    assert citations >= len(shipped)
