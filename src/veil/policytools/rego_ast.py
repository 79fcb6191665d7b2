"""Reading regorus' AST (``Engine.get_ast_as_json``): references, rule heads, every node."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def ref_path(expr: dict[str, Any]) -> str | None:
    """``a.b.c`` for a Var/RefDot/RefBrack-with-string chain, else None."""
    if "Var" in expr:
        value: str = expr["Var"]["value"]
        return value
    if "RefDot" in expr:
        base = ref_path(expr["RefDot"]["refr"])
        return None if base is None else f"{base}.{expr['RefDot']['field'][1]}"
    if "RefBrack" in expr and "String" in expr["RefBrack"]["index"]:
        base = ref_path(expr["RefBrack"]["refr"])
        return None if base is None else f"{base}.{expr['RefBrack']['index']['String']['value']}"
    return None


def root_var(expr: dict[str, Any]) -> dict[str, Any] | None:
    """The Var node a reference starts with."""
    while True:
        if "Var" in expr:
            node: dict[str, Any] = expr["Var"]
            return node
        inner = expr.get("RefDot") or expr.get("RefBrack")
        if inner is None:
            return None
        expr = inner["refr"]


def head_name(head: dict[str, Any]) -> str | None:
    """The first name of a rule head (``p`` for ``p``, ``p.q``, ``p[x]``)."""
    var = root_var(head["refr"]) if "refr" in head else None
    return None if var is None else str(var["value"])


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every object node of a tree, parents before children."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def spelled(source: bytes, span: dict[str, Any]) -> str:
    """The source text a span covers (spans are byte offsets)."""
    return source[span["start"] : span["end"]].decode()


def import_names(ast: dict[str, Any], source: bytes) -> list[tuple[str, str]]:
    """``(name, path)`` per import: ``x`` for ``import data.a.x``, ``y`` for ``... as y``."""
    names = []
    for imported in ast.get("imports", []):
        path = ref_path(imported["refr"]) or ""
        alias = imported.get("as")  # the alias' span
        if isinstance(alias, dict) and "start" in alias:
            names.append((spelled(source, alias), path))
        else:
            names.append((path.rsplit(".", 1)[-1], path))
    return names


def declares(rule: dict[str, Any], name: str, source: bytes) -> bool:
    """Does a rule declare a local variable (or argument) called ``name``?"""

    def has_var(node: Any) -> bool:
        return any(n.get("Var", {}).get("value") == name for n in walk(node))

    for node in walk(rule):
        if "AssignExpr" in node and has_var(node["AssignExpr"]["lhs"]):
            return True
        if "SomeIn" in node and (
            has_var(node["SomeIn"]["key"]) or has_var(node["SomeIn"]["value"])
        ):
            return True
        if "SomeVars" in node and any(spelled(source, v) == name for v in node["SomeVars"]["vars"]):
            return True
        if "Every" in node and any(
            isinstance(v, dict) and "start" in v and spelled(source, v) == name
            for v in (node["Every"]["key"], node["Every"]["value"])
        ):
            return True
        if "Func" in node and any(has_var(arg) for arg in node["Func"].get("args", [])):
            return True
    return False


def coverable_lines(ast: dict[str, Any]) -> set[int]:
    """Lines of rule heads and of body statements (for a file no engine reported on)."""
    lines: set[int] = set()
    for rule in ast.get("rules", []):
        spec = rule.get("Spec") or rule.get("Default") or {}
        lines.add(spec["span"]["line"])
        for body in spec.get("bodies", []):
            lines.add(body["span"]["line"])
            for stmt in (body.get("query") or {}).get("stmts", []):
                lines.add(stmt["span"]["line"])
    return lines
