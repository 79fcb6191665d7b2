"""The project's own documents: the rules R1-R12 are written down here and cited."""

from __future__ import annotations

import re

from conftest import ROOT

RULES = ROOT / "docs" / "rules.md"


def test_rules_md_states_r1_to_r12_once_each() -> None:
    text = RULES.read_text()
    stated = re.findall(r"^\*\*(R\d+) — [^*]+\*\*", text, re.M)
    assert stated == [f"R{n}" for n in range(1, 13)]


def test_documents_cite_rules_md_not_a_spec_outside_the_repository() -> None:
    rego = sorted((ROOT / "policies").rglob("*.rego"))
    citing = [ROOT / "README.md", ROOT / "policies" / "README.md",
              *(path for path in rego if not path.name.endswith("_test.rego"))]
    assert len(citing) > 2
    for path in [*citing, *rego, *sorted((ROOT / "src" / "veil").rglob("*.py"))]:
        text = path.read_text()
        assert "SPEC.md" not in text and "SPEC rules" not in text, path
    for path in citing:
        assert "docs/rules.md" in path.read_text(), path


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
            assert cited in shipped or (ROOT / "docs/examples" / cited).is_file(), \
                (document.name, cited)
            citations += 1
    assert citations >= len(shipped)
