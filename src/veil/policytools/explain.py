"""Explaining a decision: its value for one input and, per hidden row, the ``private_rows``
rules that hid it (``veil policy eval``)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regorus

from veil.errors import PolicyError
from veil.policy import DECISION, Decision, PolicyModule
from veil.policytools import PACKAGE
from veil.policytools.parse import Parsed, parse_all
from veil.policytools.problems import is_fatal, problem_from
from veil.policytools.rego_ast import root_var

_WHY = "__veil_why_"
_SECTION = re.compile(r"^#\s*-{2,}\s*(?P<title>.*?)\s*-*\s*$")

# What Veil puts in a row's fields when it cannot read them (``veil.rows``).
ROW_DEFAULTS: dict[str, Any] = {"id": None, "actor": None, "actor_type": "user", "ts_ns": None}


@dataclass(frozen=True)
class RuleSource:
    """One ``private_rows`` rule, as an author finds it."""

    path: str
    line: int
    title: str | None
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.path, "line": self.line, "title": self.title, "source": self.source}


@dataclass(frozen=True)
class Explanation:
    """The decision, how Veil reads it, the rows, the hidden ones and why each is."""

    decision: Any
    verdict: Decision
    rows: list[dict[str, Any]]
    hidden: list[int]
    reasons: dict[int, list[RuleSource]]


def rule_title(text: str, line: int) -> str | None:
    """A rule's title: its ``# METADATA`` title, the comment right above it, or its section.

    Sections are comment lines like ``# ---- R1: forward only ----`` anywhere above.
    """
    lines = text.splitlines()
    above: list[str] = []
    index = line - 2
    while index >= 0 and lines[index].lstrip().startswith("#"):
        above.insert(0, lines[index].strip().lstrip("#").strip())
        index -= 1
    if above and above[0] == "METADATA":
        for entry in above[1:]:
            if entry.startswith("title:"):
                return entry[len("title:") :].strip().strip("'\"") or None
    elif above:
        return " ".join(above)
    for earlier in reversed(lines[: max(line - 1, 0)]):
        section = _SECTION.match(earlier.strip())
        if section and section.group("title"):
            return section.group("title")
    return None


def _split_private_rows(parsed: Sequence[Parsed]) -> tuple[list[PolicyModule], list[RuleSource]]:
    """The policy with each ``private_rows`` rule renamed ``__veil_why_<n>``, plus a module
    that makes ``private_rows`` their union again, so the decision is unchanged."""
    modules: list[PolicyModule] = []
    sources: list[RuleSource] = []
    for item in parsed:
        if item.module.is_test:
            continue
        data = item.module.text.encode()
        renames: list[tuple[int, int, str]] = []
        if item.package == PACKAGE:
            for kind, head, rule in item.rules():
                var = root_var(head["refr"]) if "refr" in head else None
                if kind == "Func" or var is None or var["value"] != "private_rows":
                    continue
                name = f"{_WHY}{len(sources)}"
                renames.append((var["span"]["start"], var["span"]["end"], name))
                start = rule["span"]["line"]
                sources.append(
                    RuleSource(
                        item.path,
                        start,
                        rule_title(item.module.text, start),
                        item.module.text.splitlines()[start - 1].strip(),
                    )
                )
        for begin, end, name in sorted(renames, reverse=True):
            data = data[:begin] + name.encode() + data[end:]
        modules.append(PolicyModule(item.module.path, data.decode()))
    union = "".join(
        f"private_rows contains i if some i in {_WHY}{n}\n" for n in range(len(sources))
    )
    modules.append(
        PolicyModule(Path("veil-explain.rego"), f"package {PACKAGE}\n\nimport rego.v1\n\n{union}")
    )
    return modules, sources


def complete_input(document: dict[str, Any]) -> dict[str, Any]:
    """A sample input with Veil's defaults for what it leaves out.

    Each row gets its ``index``, and every field Veil always sends gets the value Veil sends
    when the store's row does not have it: ``null`` for ``id``, ``actor`` and ``ts_ns`` (so
    R2 hides a row without an actor or a time, as in Veil) and ``"user"`` for ``actor_type``.
    """
    filled: dict[str, Any] = {
        "caller": "",
        "request": {"method": "GET", "path": "/", "query": ""},
        "reveal_session_id": None,
        "session": None,
        "now_ns": time.time_ns(),
        "rows": [],
    }
    filled.update(document)
    filled["rows"] = [
        {**ROW_DEFAULTS, "index": n, **row} if isinstance(row, dict) else row
        for n, row in enumerate(filled["rows"] or [])
    ]
    return filled


def explain(
    modules: Sequence[PolicyModule], input_doc: dict[str, Any], data_doc: dict[str, Any]
) -> Explanation:
    """The decision for one input and, per hidden row, the ``private_rows`` rules that hid it.

    Each ``private_rows`` rule is evaluated on its own (renamed, in a second interpreter),
    so a reason is a rule an author can open, whatever helper rules its body uses.
    """
    parsed, problems = parse_all(modules)
    if problems:
        raise PolicyError("the policy does not parse:\n" + "\n".join(map(str, problems)))
    policy = [item for item in parsed if not item.module.is_test]
    rows = list(input_doc.get("rows") or [])
    input_json = json.dumps(input_doc)
    data_json = json.dumps({"veil": data_doc})

    def evaluate(loaded: Sequence[PolicyModule], rules: Sequence[str]) -> list[Any]:
        engine = regorus.Engine()
        for module in loaded:
            engine.add_policy(str(module.path), module.text)
        engine.add_data_json(data_json)
        engine.set_input_json(input_json)
        try:
            return [engine.eval_rule(rule) for rule in rules]
        except BaseException as exc:
            if is_fatal(exc):
                raise
            raise PolicyError(str(problem_from(exc, "policy"))) from exc

    (result,) = evaluate([p.module for p in policy], [DECISION])
    verdict = Decision.read(result, len(rows))
    hidden = sorted(verdict.hidden(len(rows)))
    split, sources = _split_private_rows(policy)
    sets = evaluate(split, [f"data.{PACKAGE}.{_WHY}{n}" for n in range(len(sources))])
    reasons: dict[int, list[RuleSource]] = {}
    for source, members in zip(sources, sets, strict=True):
        for index in members or ():
            if isinstance(index, int) and index in hidden:
                reasons.setdefault(index, []).append(source)
    return Explanation(result, verdict, rows, hidden, reasons)
