"""What ``veil policy check`` refuses in a policy set.

Every file must parse as Rego v1 (a file that only parses as v0 is named as such), call only
built-ins both OPA and the embedded engine evaluate (``capabilities``), name rules of these
policies by full path, and the set must define the entry points ``data.veil.privacy.decision``
and ``private_rows``. Every rule is then evaluated on sample inputs, because regorus reports
some errors only at evaluation. When OPA's evaluator is installed, it compiles and evaluates
the set too (``opa_check_problems``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import regorus

from veil.policy import DECISION, EMPTY_INPUT, Decision, PolicyModule
from veil.policytools import PACKAGE
from veil.policytools.capabilities import builtin_message, embedded_builtins
from veil.policytools.opa_evaluator import opa_problems
from veil.policytools.parse import Parsed, parse_all
from veil.policytools.problems import Problem, is_fatal, problem_from
from veil.policytools.rego_ast import head_name, import_names, ref_path, root_var, walk
from veil.policytools.regorus_compat import alias_edits
from veil.policytools.report import show

ENTRY_POINTS = ("decision", "private_rows")

# Inputs ``check`` evaluates every rule with: an empty answer (what Veil evaluates at
# start-up), and a small one with raw rows, an unreadable actor and an open reveal session.
SAMPLE_INPUTS: tuple[dict[str, Any], ...] = (
    EMPTY_INPUT,
    {
        "caller": "alice@contoso.com",
        "request": {"method": "GET", "path": "/api/activities", "query": ""},
        "reveal_session_id": "rs_check",
        "session": {
            "id": "rs_check",
            "owner": "alice@contoso.com",
            "justification": "check",
            "expires_ns": 1,
            "ended": False,
        },
        "now_ns": 1704067200000000000,
        "rows": [
            {
                "index": 0,
                "id": "a0",
                "actor": "ann@contoso.com",
                "actor_type": "user",
                "ts_ns": 1704067200000000000,
                "raw": {"id": "a0", "user": "ann@contoso.com"},
            },
            {"index": 1, "id": None, "actor": None, "actor_type": "user", "ts_ns": None, "raw": {}},
        ],
    },
)
SAMPLE_DATA: dict[str, Any] = {
    "groups": {},
    "privacy_groups": {},
    "admins": {},
    "viewers": {},
    "managed_domains": [],
}


def builtin_problems(
    parsed: Sequence[Parsed], embedded: frozenset[str] | None = None
) -> list[Problem]:
    """Calls of functions that are neither user functions nor built-ins of both engines."""
    embedded = embedded_builtins() if embedded is None else embedded
    functions: dict[str, set[str]] = {}
    for item in parsed:
        names = functions.setdefault(item.package, set())
        for kind, head, _rule in item.rules():
            if kind == "Func" and (path := ref_path(head["refr"])):
                names.add(path)
    problems = []
    for item in parsed:
        local = functions.get(item.package, set())
        aliases = {name for name, _path in import_names(item.ast, item.module.text.encode())}
        for node in walk(item.ast):
            call = node.get("Call")
            if not isinstance(call, dict) or "fcn" not in call:
                continue
            name = ref_path(call["fcn"])
            if name is None or name in local:
                continue
            if name.split(".", 1)[0] in aliases | {"data"}:
                continue  # a function of another package
            message = builtin_message(name, embedded)
            if message:
                span = (root_var(call["fcn"]) or call)["span"]
                problems.append(Problem(item.path, span["line"], span["col"], message))
    return problems


def import_problems(parsed: Sequence[Parsed]) -> list[Problem]:
    """OPA refuses ``import rego.v1`` together with ``future.keywords`` imports."""
    problems = []
    for item in parsed:
        imports = [(ref_path(i["refr"]) or "", i["span"]) for i in item.ast.get("imports", [])]
        if any(path == "rego.v1" for path, _ in imports):
            for path, span in imports:
                if path.startswith("future.keywords"):
                    problems.append(
                        Problem(
                            item.path,
                            span["line"],
                            span["col"],
                            f"'import {path}' beside 'import rego.v1' is an "
                            "error for OPA; remove it (v1 has the keywords)",
                        )
                    )
    return problems


def alias_problems(parsed: Sequence[Parsed]) -> list[Problem]:
    """Policy files must name rules of these policies by full path, not through an import.

    regorus 0.13 can drop rules when a package spread over several files is read through an
    import alias (see ``regorus_compat.alias_edits``); a rule that then hides nothing would
    fail open.
    """
    packages = {item.package for item in parsed}
    problems = []
    for item in parsed:
        if item.module.is_test:
            continue
        for offset, length, path in alias_edits(item, packages):
            source = item.module.text.encode()
            line = source[:offset].count(b"\n") + 1
            col = len(source[:offset].rsplit(b"\n", 1)[-1].decode()) + 1
            alias = source[offset : offset + length].decode()
            problems.append(
                Problem(
                    item.path,
                    line,
                    col,
                    f"write {path.decode()}.<rule> instead of {alias}.<rule> "
                    "in policy files: the embedded engine can miss rules read "
                    "through an import alias (tests may use aliases)",
                )
            )
    return problems


def entry_point_problems(parsed: Sequence[Parsed]) -> list[Problem]:
    """``data.veil.privacy.decision`` and ``private_rows`` must be defined by a policy file."""
    defined = {
        head_name(head)
        for item in parsed
        if not item.module.is_test and item.package == PACKAGE
        for _kind, head, _rule in item.rules()
    }
    where = next(
        (item for item in parsed if item.package == PACKAGE and not item.module.is_test), None
    )
    problems = []
    for name in ENTRY_POINTS:
        if name not in defined:
            if where is None:
                location = next((p.path for p in parsed if not p.module.is_test), "policies")
                line = 1
            else:
                location, line = where.path, where.ast["package"]["span"]["line"]
            problems.append(
                Problem(
                    location,
                    line,
                    1,
                    f"no rule defines data.{PACKAGE}.{name}, an entry point "
                    f"Veil needs (package {PACKAGE}, rule '{name}')",
                )
            )
    return problems


def evaluation_problems(parsed: Sequence[Parsed]) -> list[Problem]:
    """Evaluate every rule of every policy package on the sample inputs; check the decision."""
    engine = regorus.Engine()
    for item in parsed:
        engine.add_policy(item.path, item.module.text)
    engine.add_data_json(json.dumps({"veil": SAMPLE_DATA}))
    targets: dict[str, str] = {}
    for item in parsed:
        if item.module.is_test:
            continue
        for kind, head, _rule in item.rules():
            name = head_name(head)
            if kind != "Func" and name:
                targets.setdefault(f"data.{item.package}.{name}", item.path)
    problems: dict[str, Problem] = {}
    for sample in SAMPLE_INPUTS:
        engine.set_input_json(json.dumps(sample))
        for target, path in targets.items():
            try:
                result = engine.eval_rule(target)
            except BaseException as exc:
                if is_fatal(exc):
                    raise
                found = problem_from(exc, path)
                problems.setdefault(str(found), found)
                continue
            if (
                target == f"data.{PACKAGE}.decision"
                and Decision.read(result, len(sample["rows"])).failed
            ):
                found = Problem(
                    path,
                    1,
                    1,
                    "data.veil.privacy.decision must be an object "
                    "{private_rows: set of row indexes, reveal: boolean, "
                    f"refusals: set of strings}}; got {show(result)}",
                )
                problems.setdefault(str(found), found)
    return list(problems.values())


def check_modules(modules: Sequence[PolicyModule]) -> list[Problem]:
    """Every problem the embedded engine's checks find, in file order; empty when all is
    well."""
    parsed, problems = parse_all(modules)
    problems += import_problems(parsed)
    problems += alias_problems(parsed)
    problems += builtin_problems(parsed)
    problems += entry_point_problems(parsed)
    if not problems:
        problems += evaluation_problems(parsed)
    order = {str(m.path): n for n, m in enumerate(modules)}
    return sorted(problems, key=lambda p: (order.get(p.path, len(order)), p.line, p.col))


def opa_check_problems(modules: Sequence[PolicyModule], opa: Any) -> list[Problem]:
    """What OPA's compiler and evaluator (``opa``: the ``opa_bindings`` module) say about the
    set: every file (tests too) compiled together, then the decision evaluated on the sample
    inputs."""
    engine = opa.OpaEngine()
    try:
        for module in modules:
            engine.add_policy(str(module.path), module.text)
        engine.add_data({"veil": SAMPLE_DATA})
        for sample in SAMPLE_INPUTS:
            engine.eval_query(f"result := {DECISION}", sample)
    except opa.OpaError as exc:
        return opa_problems(exc)
    finally:
        engine.close()
    return []
