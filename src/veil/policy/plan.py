"""What a loaded policy lets Veil compute once per actor instead of once per row.

The shipped policy's ``private_rows`` rules are R2 (a row without actor, or without time) and
R1 (a row whose time is in one of its actor's windows, ``actor_windows``). ``actor_windows``
reads only the rows' actors and data.veil, so Veil asks the policy for it once per actor, per
policy and state version, and applies R1 and R2 to the rows itself. Every other
``private_rows`` rule (a policy author's) is still evaluated by the engine, on the rows.

The shipped policy spans several files of ``policies/veil/privacy/`` (one per rule), so the
rules are matched by name and text across every module of the package, whatever file holds
them. A rule counts as shipped only when its text, and the text of every rule it relies on, is
the shipped text (comments and layout aside), defined once, in a module that imports nothing
but ``rego.v1``; and R1 only while ``actor_windows``, with every rule of the package it
reaches, reads no more of the input than the rows' actors and is defined in such modules too.
Anything else is evaluated as written; when even the decision is not the shipped one, Veil
evaluates ``data.veil.privacy.decision`` as a whole. To evaluate the authors' rules apart,
each ``private_rows`` rule is renamed in the engine's copy of the policy, and a generated
module makes ``private_rows`` their union again, so the decision is unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regorus

from veil.policy import PolicyModule

PACKAGE = "veil.privacy"
WINDOWS = "data.veil.privacy.actor_windows"
CUSTOM = "__veil_custom_rows"
CUSTOM_RULE = f"data.{PACKAGE}.{CUSTOM}"
BOTH = "__veil_windows_and_custom"  # both in one evaluation: {"windows", "custom"}
BOTH_RULE = f"data.{PACKAGE}.{BOTH}"
_RENAMED = "__veil_rows_"
GENERATED = Path("veil-row-rules.rego")  # the generated module's name in the engine

R2_ACTOR = "actor"  # the shipped rules Veil applies itself, by what they test
R2_TIME = "time"
R1_WINDOW = "window"

# The shipped texts, with comments dropped and white space collapsed (see ``normalized``):
# ``decision`` (decision.rego) and the ``private_rows`` rules of R2 (unreadable_rows.rego) and
# R1 (private_windows.rego), each with the helper rules it reads.
DECISION_TEXT = (
    'decision := { "private_rows": private_rows, "reveal": reveal_allowed, "refusals": refusals, }'
)
SHIPPED_RULES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    # private_rows rule text: (what it is, ((helper rule it reads, the helper's text), ...))
    "private_rows contains i if some i in rows_without_actor": (
        R2_ACTOR,
        (
            (
                "rows_without_actor",
                "rows_without_actor contains i if { some i, row in input.rows row.actor == null }",
            ),
        ),
    ),
    "private_rows contains i if some i in rows_without_timestamp": (
        R2_TIME,
        (
            (
                "rows_without_timestamp",
                "rows_without_timestamp contains i if { some i, row in input.rows "
                "row.ts_ns == null }",
            ),
        ),
    ),
    "private_rows contains i if some i in rows_in_private_window": (
        R1_WINDOW,
        (
            (
                "rows_in_private_window",
                "rows_in_private_window contains i if { some i, row in input.rows some window in "
                "windows_of_answer_actor[[row.actor_type, row.actor]] row.ts_ns >= window[0] "
                "row.ts_ns < window[1] }",
            ),
            (
                "windows_of_answer_actor",
                "windows_of_answer_actor := {[kind, actor]: windows | "
                "some kind, windows_by_actor in "
                "actor_windows some actor, windows in windows_by_actor }",
            ),
        ),
    ),
}

_COMMENT = re.compile(r"#[^\n]*")
_SPACE = re.compile(r"\s+")


def normalized(text: str) -> str:
    """A rule's text without comments, its white space collapsed to single spaces."""
    return _SPACE.sub(" ", _COMMENT.sub("", text)).strip()


@dataclass(frozen=True)
class RowPlan:
    """How Veil applies one loaded policy. ``shipped`` names the shipped rules it applies
    itself (from ``actor_windows``); ``custom`` is whether other ``private_rows`` rules exist
    (evaluated as ``CUSTOM_RULE``); ``modules`` is the policy as the engine should load it."""

    shipped: frozenset[str]
    custom: bool
    modules: tuple[PolicyModule, ...]


@dataclass(frozen=True)
class _Rule:
    name: str | None  # the head's whole reference (``p``, ``p.q``), None when not plain
    kind: str
    text: str
    name_span: tuple[int, int]


def _ref_path(expr: dict[str, Any]) -> str | None:
    if "Var" in expr:
        return str(expr["Var"]["value"])
    if "RefDot" in expr:
        base = _ref_path(expr["RefDot"]["refr"])
        return None if base is None else f"{base}.{expr['RefDot']['field'][1]}"
    return None


def _rules(module: PolicyModule, ast: dict[str, Any]) -> Iterator[_Rule]:
    data = module.text.encode()
    for rule in ast.get("rules", []):
        if "Spec" in rule:
            kind, head = next(iter(rule["Spec"]["head"].items()))
            span = rule["Spec"]["span"]
        else:
            kind, head = "Default", rule["Default"]
            span = head["span"]
        refr = head.get("refr", {})
        var = refr.get("Var")
        name_span = (var["span"]["start"], var["span"]["end"]) if var else (0, 0)
        text = data[span["start"] : span["end"]].decode("utf-8", "replace")
        yield _Rule(_ref_path(refr) if refr else None, kind, text, name_span)


def _imports_only_keywords(ast: dict[str, Any]) -> bool:
    return all(
        _ref_path(item["refr"]) in ("rego.v1", "future.keywords") for item in ast.get("imports", [])
    )


def _parse(module: PolicyModule) -> dict[str, Any] | None:
    engine = regorus.Engine()
    try:
        engine.add_policy(str(module.path), module.text)
        parsed: dict[str, Any] = json.loads(engine.get_ast_as_json())[0]["ast"]
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # the engine reports the problem when it loads the policy
        return None
    return parsed


def plan(modules: Sequence[PolicyModule]) -> RowPlan | None:
    """The plan for a policy set (test files ignored); None when Veil must evaluate
    ``data.veil.privacy.decision`` as a whole."""
    policy = [m for m in modules if not m.is_test]
    texts: dict[str, list[str]] = {}  # rule name -> normalized texts, in veil.privacy
    trusted: dict[str, list[str]] = {}  # the same, from modules that import no alias
    row_rules: list[tuple[PolicyModule, _Rule]] = []
    plain_rules: list[bool] = []
    for module in policy:
        ast = _parse(module)
        if ast is None:
            return None
        path = _ref_path(ast["package"]["refr"])
        if path is None:  # spelled another way (``package veil["privacy"]``): may be ours
            return None
        package = path.removeprefix("data.")
        if package != PACKAGE:
            if f"{PACKAGE}.".startswith(f"{package}.") and any(
                rule.name is None or f"{package}.{rule.name}".startswith(f"{PACKAGE}.")
                for rule in _rules(module, ast)
            ):
                return None  # a rule of package veil.privacy written from a parent package
            continue
        plain = _imports_only_keywords(ast)
        for rule in _rules(module, ast):
            root = (rule.name or "").split(".")[0]
            if rule.name is None or (root == "private_rows" and rule.name != root):
                return None  # a head Veil does not follow: evaluate the policy as written
            texts.setdefault(rule.name, []).append(normalized(rule.text))
            if plain:
                trusted.setdefault(rule.name, []).append(normalized(rule.text))
            if rule.name == "private_rows":
                if rule.kind != "Set":
                    return None
                row_rules.append((module, rule))
                plain_rules.append(plain)
    if texts.get("decision") != [DECISION_TEXT] or trusted.get("decision") != [DECISION_TEXT]:
        return None
    shipped: set[str] = set()
    custom: list[int] = []
    for number, (_, rule) in enumerate(row_rules):
        known = SHIPPED_RULES.get(normalized(rule.text))
        intact = (
            known is not None
            and plain_rules[number]
            and all(
                texts.get(name) == [text] and trusted.get(name) == [text] for name, text in known[1]
            )
        )
        if known is not None and known[0] == R1_WINDOW:
            intact = intact and "actor_windows" in texts and reads_only_actors(texts, trusted)
        if known is not None and intact:
            shipped.add(known[0])
        else:
            custom.append(number)
    return RowPlan(
        frozenset(shipped), bool(custom), _renamed(policy, row_rules, custom, R1_WINDOW in shipped)
    )


# What actor_windows may not read: anything of the input but the rows, the rows' other fields.
# The rows may only be iterated (``some row in input.rows``): ``count(input.rows)`` or
# ``input.rows[0]`` read the answer as a whole, which differs from one answer to the next.
_NOT_PER_ACTOR = re.compile(
    r"\binput\b(?!\.rows\b)|(?<!\bin )\binput\.rows\b|\b(?:ts_ns|raw|index|id|now_ns|"
    r"caller|session|request|reveal_session_id)\b|\bwalk\b|\bobject\.keys\b"
)
_NAME = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")
# What actor_windows may read of the data document: the state (data.veil's parts) only; the
# rules of its own package are read by name (and followed), never through ``data.`` (a child
# package's rule, ``data.veil.privacy.sub.f``, is not followed), so any other ``data``
# reference keeps R1 with the engine.
_OTHER_DATA = re.compile(
    r"\bdata\b(?!\s*\.\s*veil\s*\.\s*(?:groups|privacy_groups|admins|viewers|managed_domains)\b)"
)


def reads_only_actors(
    texts: dict[str, list[str]], trusted: dict[str, list[str]] | None = None
) -> bool:
    """Does ``actor_windows``, with every rule of the package it reaches, read no more of the
    input than the rows' actor and actor_type, and of the data document than data.veil's
    state? (A check by name, for the usual mistakes; the contract is in policies/README.md.)
    With ``trusted`` (the texts from modules that import nothing but keywords), each of those
    rules must also be defined only in such modules: an import could give a name another
    meaning (``import input.now_ns as t``)."""
    seen, todo = set(), ["actor_windows"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if trusted is not None and trusted.get(name, []) != texts.get(name, []):
            return False
        for text in texts.get(name, []):
            if _NOT_PER_ACTOR.search(text) or _OTHER_DATA.search(text):
                return False
            mentioned = set(_NAME.findall(text))
            # a rule is reached by its name, or a ref-head rule (``sub.f``) by its first part
            todo.extend(
                rule
                for rule in texts
                if rule not in seen and (rule in mentioned or rule.split(".")[0] in mentioned)
            )
    return True


def _renamed(
    policy: Sequence[PolicyModule],
    row_rules: Sequence[tuple[PolicyModule, _Rule]],
    custom: Sequence[int],
    windows: bool,
) -> tuple[PolicyModule, ...]:
    """The policy with each ``private_rows`` rule renamed, and a module that makes
    ``private_rows`` their union again, ``CUSTOM`` the union of the authors' rules and
    ``BOTH`` that with ``actor_windows`` (one evaluation when both are needed)."""
    spans: dict[Path, list[tuple[int, int, str]]] = {}
    for number, (module, rule) in enumerate(row_rules):
        spans.setdefault(module.path, []).append((*rule.name_span, f"{_RENAMED}{number}"))
    out = []
    for module in policy:
        data = module.text.encode()
        for begin, end, name in sorted(spans.get(module.path, []), reverse=True):
            data = data[:begin] + name.encode() + data[end:]
        out.append(PolicyModule(module.path, data.decode()))
    lines = [f"private_rows contains i if some i in {_RENAMED}{n}" for n in range(len(row_rules))]
    lines += [f"{CUSTOM} contains i if some i in {_RENAMED}{n}" for n in custom]
    if custom and windows:
        lines.append(f'{BOTH} := {{"windows": actor_windows, "custom": {CUSTOM}}}')
    out.append(
        PolicyModule(
            GENERATED, f"package {PACKAGE}\n\nimport rego.v1\n\n" + "\n".join(lines) + "\n"
        )
    )
    return tuple(out)
