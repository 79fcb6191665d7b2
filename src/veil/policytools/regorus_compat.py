"""Source rewrites that work around regorus 0.13 (PyPI ``gordon-to-regorus``, pinned).

Each rewrite keeps every line where it was (no newline added or removed), so line numbers in
errors and coverage stay the author's.
"""

from __future__ import annotations

from collections.abc import Sequence

from veil.policy import PolicyModule
from veil.policytools.parse import Parsed
from veil.policytools.rego_ast import declares, import_names, walk

Edit = tuple[int, int, bytes]  # (byte offset, bytes replaced, new bytes)


def apply_edits(module: PolicyModule, edits: Sequence[Edit]) -> PolicyModule:
    """Apply same-line edits (no newline added or removed) to a module's text."""
    data = module.text.encode()
    for offset, length, new in sorted(edits, reverse=True):
        data = data[:offset] + new + data[offset + length :]
    return PolicyModule(module.path, data.decode())


def alias_edits(parsed: Parsed, packages: set[str]) -> list[Edit]:
    """Spell out ``alias.rule`` as ``data.<package>.rule`` for imports of these packages.

    regorus 0.13 reads ``alias.rule`` by evaluating the whole package, and then drops the
    rules of a package's second and later files that use a rule defined further down in
    their file; a full path evaluates just the rule, as Veil itself does.
    """
    source = parsed.module.text.encode()
    targets: dict[str, str] = {}
    for name, path in import_names(parsed.ast, source):
        if path.startswith("data.") and path[len("data.") :] in packages:
            targets[name] = path
    edits: list[Edit] = []
    for rule in parsed.ast.get("rules", []):
        for name, path in targets.items():
            if declares(rule, name, source):
                continue
            for node in walk(rule):
                inner = node.get("RefDot") or node.get("RefBrack")
                var = inner["refr"].get("Var") if inner else None
                if var is not None and var["value"] == name:
                    span = var["span"]
                    edits.append((span["start"], span["end"] - span["start"], path.encode()))
    return edits


def else_markers(parsed: Parsed) -> tuple[list[Edit], dict[int, int]]:
    """Give every ``else := value`` without a condition an ``if true`` on its last line.

    regorus' coverage marks lines of evaluated expressions; an unconditional ``else`` has
    none, so whether it was ever taken would not show. The added ``true`` is evaluated
    exactly when the ``else`` is reached. Returns the edits and {marker line: else line}.
    """
    data = parsed.module.text.encode()
    edits: list[Edit] = []
    markers: dict[int, int] = {}
    for rule in parsed.ast.get("rules", []):
        for body in rule.get("Spec", {}).get("bodies", []):
            query = body.get("query") or {}
            if body.get("is_else") and not query.get("stmts") and body.get("assign"):
                end = body["assign"]["span"]["end"]
                edits.append((end, 0, b" if true"))
                markers[data[:end].count(b"\n") + 1] = body["span"]["line"]
    return edits, markers
