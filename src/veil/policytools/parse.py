"""Parsing policy files as Rego v1 with regorus, into ASTs the other tools read."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import regorus

from veil.policy import PolicyModule
from veil.policytools.problems import Problem, is_fatal, problem_from
from veil.policytools.rego_ast import ref_path


@dataclass(frozen=True)
class Parsed:
    """A module and its regorus AST (``ast`` of ``get_ast_as_json``)."""

    module: PolicyModule
    ast: dict[str, Any]

    @property
    def path(self) -> str:
        return str(self.module.path)

    @property
    def package(self) -> str:
        return ref_path(self.ast["package"]["refr"]) or ""

    def rules(self) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
        """``(kind, head, rule)`` for every rule; kind is Set, Compr, Func or Default."""
        for rule in self.ast.get("rules", []):
            if "Spec" in rule:
                kind, head = next(iter(rule["Spec"]["head"].items()))
                yield kind, head, rule["Spec"]
            elif "Default" in rule:
                yield "Default", rule["Default"], rule["Default"]


def _parses_as_v0(module: PolicyModule) -> bool:
    engine = regorus.Engine()
    engine.set_rego_v0(True)
    try:
        engine.add_policy(str(module.path), module.text)
    except BaseException as exc:
        if is_fatal(exc):
            raise
        return False
    return True


def parse(module: PolicyModule) -> Parsed | Problem:
    """Parse one file as Rego v1; a file that parses only as v0 gets a problem saying so."""
    engine = regorus.Engine()
    try:
        engine.add_policy(str(module.path), module.text)
    except BaseException as exc:
        if is_fatal(exc):
            raise
        problem = problem_from(exc, str(module.path))
        if _parses_as_v0(module):
            return Problem(
                problem.path,
                problem.line,
                problem.col,
                f"this file is Rego v0 syntax; Veil needs Rego v1 (OPA 1.0): write "
                f"'if' before every rule body and 'contains' in multi-value rules "
                f"('opa fmt --v0-v1' rewrites it) [{problem.message}]",
            )
        return problem
    return Parsed(module, json.loads(engine.get_ast_as_json())[0]["ast"])


def parse_all(modules: Sequence[PolicyModule]) -> tuple[list[Parsed], list[Problem]]:
    """Every module parsed, and a problem for each one that does not parse."""
    parsed: list[Parsed] = []
    problems: list[Problem] = []
    for module in modules:
        result = parse(module)
        if isinstance(result, Problem):
            problems.append(result)
        else:
            parsed.append(result)
    return parsed, problems
