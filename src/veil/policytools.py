"""Tools for policy authors: check, test (with coverage) and explain Veil's Rego policies.

``check``  parses every file as Rego v1 (a file that only parses as v0 is named as such),
           refuses built-ins that OPA or the embedded engine lacks, requires the entry points
           ``data.veil.privacy.decision`` and ``private_rows``, and evaluates every rule once on
           an empty answer, because regorus reports some errors only at evaluation.
``test``   runs every ``test_*`` rule of every ``*_test.rego`` file, with line coverage.
``eval``   evaluates the decision for one input and says which ``private_rows`` rule hid
           each private row.

A hot reload (``veil.reload``) runs ``validate``, the same check and tests, before it lets
a policy set replace the running one. Problems are ``file:line:col: message``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import regorus

from veil.errors import PolicyError
from veil.policy import DECISION, EMPTY_INPUT, Decision, PolicyModule, load_modules
from veil.policy.embedded import first_line

PACKAGE = "veil.privacy"
ENTRY_POINTS = ("decision", "private_rows")

# Built-in functions of OPA 1.0, from OPA's capabilities file for v1.0.0
# (open-policy-agent/opa, capabilities/v1.0.0.json, its "builtins" names), without the
# deprecated ones that OPA 1.x refuses in Rego v1 (OPA_DEPRECATED, below). A policy may call
# only these, and of these only the ones the embedded engine implements (see
# ``embedded_builtins``), so that it runs the same on both engines.
OPA_BUILTINS = frozenset({
    "abs", "and", "array.concat", "array.reverse", "array.slice", "assign", "base64.decode",
    "base64.encode", "base64.is_valid", "base64url.decode", "base64url.encode",
    "base64url.encode_no_pad", "bits.and", "bits.lsh", "bits.negate", "bits.or", "bits.rsh",
    "bits.xor", "ceil", "concat", "contains", "count", "crypto.hmac.equal", "crypto.hmac.md5",
    "crypto.hmac.sha1", "crypto.hmac.sha256", "crypto.hmac.sha512", "crypto.md5",
    "crypto.parse_private_keys", "crypto.sha1", "crypto.sha256",
    "crypto.x509.parse_and_verify_certificates",
    "crypto.x509.parse_and_verify_certificates_with_options",
    "crypto.x509.parse_certificate_request", "crypto.x509.parse_certificates",
    "crypto.x509.parse_keypair", "crypto.x509.parse_rsa_private_key", "div", "endswith", "eq",
    "equal", "floor", "format_int", "glob.match", "glob.quote_meta", "graph.reachable",
    "graph.reachable_paths", "graphql.is_valid", "graphql.parse", "graphql.parse_and_verify",
    "graphql.parse_query", "graphql.parse_schema", "graphql.schema_is_valid", "gt", "gte",
    "hex.decode", "hex.encode", "http.send", "indexof", "indexof_n", "internal.member_2",
    "internal.member_3", "internal.print", "intersection", "io.jwt.decode",
    "io.jwt.decode_verify", "io.jwt.encode_sign", "io.jwt.encode_sign_raw",
    "io.jwt.verify_es256", "io.jwt.verify_es384", "io.jwt.verify_es512", "io.jwt.verify_hs256",
    "io.jwt.verify_hs384", "io.jwt.verify_hs512", "io.jwt.verify_ps256", "io.jwt.verify_ps384",
    "io.jwt.verify_ps512", "io.jwt.verify_rs256", "io.jwt.verify_rs384", "io.jwt.verify_rs512",
    "is_array", "is_boolean", "is_null", "is_number", "is_object", "is_set", "is_string",
    "json.filter", "json.is_valid", "json.marshal", "json.marshal_with_options",
    "json.match_schema", "json.patch", "json.remove", "json.unmarshal", "json.verify_schema",
    "lower", "lt", "lte", "max", "min", "minus", "mul", "neq", "net.cidr_contains",
    "net.cidr_contains_matches", "net.cidr_expand", "net.cidr_intersects", "net.cidr_is_valid",
    "net.cidr_merge", "net.lookup_ip_addr", "numbers.range", "numbers.range_step",
    "object.filter", "object.get", "object.keys", "object.remove", "object.subset",
    "object.union", "object.union_n", "opa.runtime", "or", "plus", "print", "product",
    "providers.aws.sign_req", "rand.intn", "regex.find_all_string_submatch_n", "regex.find_n",
    "regex.globs_match", "regex.is_valid", "regex.match", "regex.replace", "regex.split",
    "regex.template_match", "rego.metadata.chain", "rego.metadata.rule", "rego.parse_module",
    "rem", "replace", "round", "semver.compare", "semver.is_valid", "sort", "split", "sprintf",
    "startswith", "strings.any_prefix_match", "strings.any_suffix_match", "strings.count",
    "strings.render_template", "strings.replace_n", "strings.reverse", "substring", "sum",
    "time.add_date", "time.clock", "time.date", "time.diff", "time.format", "time.now_ns",
    "time.parse_duration_ns", "time.parse_ns", "time.parse_rfc3339_ns", "time.weekday",
    "to_number", "trace", "trim", "trim_left", "trim_prefix", "trim_right", "trim_space",
    "trim_suffix", "type_name", "union", "units.parse", "units.parse_bytes", "upper",
    "urlquery.decode", "urlquery.decode_object", "urlquery.encode", "urlquery.encode_object",
    "uuid.parse", "uuid.rfc4122", "walk", "yaml.is_valid", "yaml.marshal", "yaml.unmarshal",
})

# Deprecated in OPA 0.x and not available to Rego v1 in OPA 1.x (OPA docs, "Strict mode" and
# "OPA 1.0": "Use of deprecated built-ins").
OPA_DEPRECATED = frozenset({"any", "all", "re_match", "net.cidr_overlap", "set_diff",
                            "cast_array", "cast_set", "cast_string", "cast_boolean",
                            "cast_null", "cast_object"})

# Listed by the embedded engine's ``opa.runtime()`` but evaluated as undefined there (regorus
# 0.13 has no HTTP client): a rule calling one would silently never hold on the embedded
# engine while it holds on OPA. Refused by ``check``.
EMBEDDED_UNDEFINED = frozenset({"http.send"})

# Called by the interpreter for ``print``; not listed by ``opa.runtime()``.
_EMBEDDED_SPECIAL = frozenset({"print"})

_LOCATION = re.compile(r"-->\s*(?P<path>.+?):(?P<line>\d+):(?P<col>\d+)")
_WHY = "__veil_why_"


# ---- problems and parsing ------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy set, where an editor can jump to it."""

    path: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"


def problem_from(exc: BaseException, path: str) -> Problem:
    """A Problem from a regorus error, whose text holds ``--> file:line:col`` and ``error:``."""
    text = first_line(exc)
    found = _LOCATION.search(text)
    errors = [line[len("error:"):].strip() for line in text.splitlines()
              if line.startswith("error:")]
    message = errors[-1] if errors else text.splitlines()[0]
    if found:
        return Problem(found.group("path"), int(found.group("line")), int(found.group("col")),
                       message)
    return Problem(path, 1, 1, message)


def _is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, (KeyboardInterrupt, SystemExit))


def _parses_as_v0(module: PolicyModule) -> bool:
    engine = regorus.Engine()
    engine.set_rego_v0(True)
    try:
        engine.add_policy(str(module.path), module.text)
    except BaseException as exc:
        if _is_fatal(exc):
            raise
        return False
    return True


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


def parse(module: PolicyModule) -> Parsed | Problem:
    """Parse one file as Rego v1; a file that parses only as v0 gets a problem saying so."""
    engine = regorus.Engine()
    try:
        engine.add_policy(str(module.path), module.text)
    except BaseException as exc:
        if _is_fatal(exc):
            raise
        problem = problem_from(exc, str(module.path))
        if _parses_as_v0(module):
            return Problem(problem.path, problem.line, problem.col,
                           f"this file is Rego v0 syntax; Veil needs Rego v1 (OPA 1.0): write "
                           f"'if' before every rule body and 'contains' in multi-value rules "
                           f"('opa fmt --v0-v1' rewrites it) [{problem.message}]")
        return problem
    return Parsed(module, json.loads(engine.get_ast_as_json())[0]["ast"])


def parse_all(modules: Sequence[PolicyModule]) -> tuple[list[Parsed], list[Problem]]:
    parsed: list[Parsed] = []
    problems: list[Problem] = []
    for module in modules:
        result = parse(module)
        if isinstance(result, Problem):
            problems.append(result)
        else:
            parsed.append(result)
    return parsed, problems


# ---- the AST ---------------------------------------------------------------------------

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


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _import_aliases(parsed: Parsed) -> set[str]:
    """The names imports bind: ``x`` for ``import data.a.x``, ``y`` for ``... as y``."""
    source = parsed.module.text.encode()
    aliases = set()
    for imported in parsed.ast.get("imports", []):
        alias = imported.get("as")  # the alias' span
        if isinstance(alias, dict) and "start" in alias:
            aliases.add(source[alias["start"]:alias["end"]].decode())
        else:
            aliases.add((ref_path(imported["refr"]) or "").rsplit(".", 1)[-1])
    return aliases


def embedded_builtins() -> frozenset[str]:
    """The built-ins the embedded engine implements, as it lists them in ``opa.runtime()``."""
    engine = regorus.Engine()
    engine.add_policy("builtins.rego", "package veil_builtins\n\nruntime := opa.runtime()\n")
    runtime = engine.eval_rule("data.veil_builtins.runtime")
    return frozenset(runtime.get("builtins", [])) | _EMBEDDED_SPECIAL


def builtin_problems(parsed: Sequence[Parsed],
                     embedded: frozenset[str] | None = None) -> list[Problem]:
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
        aliases = _import_aliases(item)
        for node in _walk(item.ast):
            call = node.get("Call")
            if not isinstance(call, dict) or "fcn" not in call:
                continue
            name = ref_path(call["fcn"])
            if name is None or name in local:
                continue
            if name.split(".", 1)[0] in aliases | {"data"}:
                continue  # a function of another package
            message = _builtin_message(name, embedded)
            if message:
                span = (root_var(call["fcn"]) or call)["span"]
                problems.append(Problem(item.path, span["line"], span["col"], message))
    return problems


def _builtin_message(name: str, embedded: frozenset[str]) -> str | None:
    if name in OPA_DEPRECATED:
        return f"'{name}' is a deprecated built-in that OPA 1.x refuses in Rego v1"
    if name not in OPA_BUILTINS:
        if name in embedded:
            return (f"'{name}' is a built-in of the embedded engine (regorus) that OPA does "
                    "not have; the policy must stay valid for OPA")
        return f"'{name}' is neither a built-in nor a function defined in these policies"
    if name not in embedded:
        return (f"'{name}' is an OPA built-in that the embedded engine (regorus) does not "
                "implement; use only built-ins both engines have")
    if name in EMBEDDED_UNDEFINED:
        return (f"'{name}' is an OPA built-in that the embedded engine (regorus) leaves "
                "undefined (a rule calling it never holds there); use only built-ins both "
                "engines evaluate")
    return None


def import_problems(parsed: Sequence[Parsed]) -> list[Problem]:
    """OPA refuses ``import rego.v1`` together with ``future.keywords`` imports."""
    problems = []
    for item in parsed:
        imports = [(ref_path(i["refr"]) or "", i["span"]) for i in item.ast.get("imports", [])]
        if any(path == "rego.v1" for path, _ in imports):
            for path, span in imports:
                if path.startswith("future.keywords"):
                    problems.append(Problem(item.path, span["line"], span["col"],
                                            f"'import {path}' beside 'import rego.v1' is an "
                                            "error for OPA; remove it (v1 has the keywords)"))
    return problems


def alias_problems(parsed: Sequence[Parsed]) -> list[Problem]:
    """Policy files must name rules of these policies by full path, not through an import.

    regorus 0.13 can drop rules when a package spread over several files is read through an
    import alias (see ``_alias_edits``); a rule that then hides nothing would fail open.
    """
    packages = {item.package for item in parsed}
    problems = []
    for item in parsed:
        if item.module.is_test:
            continue
        for offset, length, path in _alias_edits(item, packages):
            source = item.module.text.encode()
            line = source[:offset].count(b"\n") + 1
            col = len(source[:offset].rsplit(b"\n", 1)[-1].decode()) + 1
            alias = source[offset:offset + length].decode()
            problems.append(Problem(item.path, line, col,
                                    f"write {path.decode()}.<rule> instead of {alias}.<rule> "
                                    "in policy files: the embedded engine can miss rules read "
                                    "through an import alias (tests may use aliases)"))
    return problems


def entry_point_problems(parsed: Sequence[Parsed]) -> list[Problem]:
    """``data.veil.privacy.decision`` and ``private_rows`` must be defined by a policy file."""
    defined = {head_name(head) for item in parsed if not item.module.is_test
               and item.package == PACKAGE for _kind, head, _rule in item.rules()}
    where = next((item for item in parsed if item.package == PACKAGE and
                  not item.module.is_test), None)
    problems = []
    for name in ENTRY_POINTS:
        if name not in defined:
            if where is None:
                location = next((p.path for p in parsed if not p.module.is_test), "policies")
                line = 1
            else:
                location, line = where.path, where.ast["package"]["span"]["line"]
            problems.append(Problem(location, line, 1,
                                    f"no rule defines data.{PACKAGE}.{name}, an entry point "
                                    f"Veil needs (package {PACKAGE}, rule '{name}')"))
    return problems


# Inputs ``check`` evaluates every rule with: an empty answer (what Veil evaluates at
# start-up), and a small one with raw rows, an unreadable actor and an open reveal session.
SAMPLE_INPUTS: tuple[dict[str, Any], ...] = (
    EMPTY_INPUT,
    {"caller": "alice@contoso.com",
     "request": {"method": "GET", "path": "/api/activities", "query": ""},
     "reveal_session_id": "rs_check",
     "session": {"id": "rs_check", "owner": "alice@contoso.com", "justification": "check",
                 "expires_ns": 1, "ended": False},
     "now_ns": 1704067200000000000,
     "rows": [{"index": 0, "id": "a0", "actor": "ann@contoso.com", "actor_type": "user",
               "ts_ns": 1704067200000000000, "raw": {"id": "a0", "user": "ann@contoso.com"}},
              {"index": 1, "id": None, "actor": None, "actor_type": "user", "ts_ns": None,
               "raw": {}}]},
)
SAMPLE_DATA: dict[str, Any] = {"groups": {}, "privacy_groups": {}, "admins": {},
                               "viewers": {}, "managed_domains": []}


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
                if _is_fatal(exc):
                    raise
                found = problem_from(exc, path)
                problems.setdefault(str(found), found)
                continue
            if target == f"data.{PACKAGE}.decision" and Decision.read(
                    result, len(sample["rows"])).failed:
                found = Problem(path, 1, 1, "data.veil.privacy.decision must be an object "
                                "{private_rows: set of row indexes, reveal: boolean, "
                                f"refusals: set of strings}}; got {_show(result)}")
                problems.setdefault(str(found), found)
    return list(problems.values())


def check_modules(modules: Sequence[PolicyModule]) -> list[Problem]:
    """Every problem ``veil policy check`` reports, in file order; empty when all is well."""
    parsed, problems = parse_all(modules)
    problems += import_problems(parsed)
    problems += alias_problems(parsed)
    problems += builtin_problems(parsed)
    problems += entry_point_problems(parsed)
    if not problems:
        problems += evaluation_problems(parsed)
    order = {str(m.path): n for n, m in enumerate(modules)}
    return sorted(problems, key=lambda p: (order.get(p.path, len(order)), p.line, p.col))


def _show(value: Any) -> str:
    text = json.dumps(value, default=_jsonable, sort_keys=True)
    return text if len(text) <= 200 else text[:197] + "..."


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=lambda v: json.dumps(v, default=str, sort_keys=True))
    raise TypeError(f"{type(value).__name__} is not JSON")


# ---- tests and coverage -------------------------------------------------------------------

@dataclass(frozen=True)
class TestCase:
    package: str
    rule: str
    path: str
    line: int

    @property
    def name(self) -> str:
        return f"data.{self.package}.{self.rule}"


@dataclass(frozen=True)
class TestResult:
    case: TestCase
    status: str  # PASS, FAIL, ERROR or SKIP
    seconds: float
    detail: str | None = None

    @property
    def passed(self) -> bool:
        return self.status in ("PASS", "SKIP")


@dataclass(frozen=True)
class FileCoverage:
    path: str
    covered: frozenset[int]
    not_covered: frozenset[int]

    @property
    def total(self) -> int:
        return len(self.covered) + len(self.not_covered)

    @property
    def percent(self) -> float:
        return 100.0 * len(self.covered) / self.total if self.total else 100.0


@dataclass
class TestRun:
    results: list[TestResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    coverage: list[FileCoverage] | None = None

    @property
    def failed(self) -> int:
        return sum(not r.passed for r in self.results)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.failed


def discover(parsed: Sequence[Parsed]) -> list[TestCase]:
    """Every ``test_*`` (and skipped ``todo_test_*``) rule of the ``*_test.rego`` files."""
    found: dict[str, TestCase] = {}
    for item in parsed:
        if not item.module.is_test:
            continue
        for kind, head, _rule in item.rules():
            name = head_name(head)
            if kind != "Func" and name and name.startswith(("test_", "todo_test_")):
                case = TestCase(item.package, name, item.path, head["span"]["line"])
                found.setdefault(case.name, case)
    return list(found.values())


Edit = tuple[int, int, bytes]  # (byte offset, bytes replaced, new bytes)


def _apply(module: PolicyModule, edits: Sequence[Edit]) -> PolicyModule:
    """Apply same-line edits (no newline added or removed) to a module's text."""
    data = module.text.encode()
    for offset, length, new in sorted(edits, reverse=True):
        data = data[:offset] + new + data[offset + length:]
    return PolicyModule(module.path, data.decode())


def _else_markers(parsed: Parsed) -> tuple[list[Edit], dict[int, int]]:
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


def _declares(rule: dict[str, Any], name: str, source: bytes) -> bool:
    """Does a rule declare a local variable (or argument) called ``name``?"""
    def spelled(span: dict[str, Any]) -> bool:
        return source[span["start"]:span["end"]].decode() == name

    def has_var(node: Any) -> bool:
        return any(n.get("Var", {}).get("value") == name for n in _walk(node))

    for node in _walk(rule):
        if "AssignExpr" in node and has_var(node["AssignExpr"]["lhs"]):
            return True
        if "SomeIn" in node and (has_var(node["SomeIn"]["key"]) or
                                 has_var(node["SomeIn"]["value"])):
            return True
        if "SomeVars" in node and any(spelled(v) for v in node["SomeVars"]["vars"]):
            return True
        if "Every" in node and any(isinstance(v, dict) and "start" in v and spelled(v)
                                   for v in (node["Every"]["key"], node["Every"]["value"])):
            return True
        if "Func" in node and any(has_var(arg) for arg in node["Func"].get("args", [])):
            return True
    return False


def _alias_edits(parsed: Parsed, packages: set[str]) -> list[Edit]:
    """Spell out ``alias.rule`` as ``data.<package>.rule`` for imports of these packages.

    regorus 0.13 reads ``alias.rule`` by evaluating the whole package, and then drops the
    rules of a package's second and later files that use a rule defined further down in
    their file; a full path evaluates just the rule, as Veil itself does.
    """
    source = parsed.module.text.encode()
    targets: dict[str, str] = {}
    for imported in parsed.ast.get("imports", []):
        path = ref_path(imported["refr"]) or ""
        if not path.startswith("data.") or path[len("data."):] not in packages:
            continue
        alias = imported.get("as")
        name = (source[alias["start"]:alias["end"]].decode()
                if isinstance(alias, dict) and "start" in alias else path.rsplit(".", 1)[-1])
        targets[name] = path
    edits: list[Edit] = []
    for rule in parsed.ast.get("rules", []):
        for name, path in targets.items():
            if _declares(rule, name, source):
                continue
            for node in _walk(rule):
                inner = node.get("RefDot") or node.get("RefBrack")
                var = inner["refr"].get("Var") if inner else None
                if var is not None and var["value"] == name:
                    span = var["span"]
                    edits.append((span["start"], span["end"] - span["start"], path.encode()))
    return edits


def _coverable_lines(ast: dict[str, Any]) -> set[int]:
    """Lines of rule heads and of body statements, for a file the engine never touched."""
    lines: set[int] = set()
    for rule in ast.get("rules", []):
        spec = rule.get("Spec") or rule.get("Default") or {}
        lines.add(spec["span"]["line"])
        for body in spec.get("bodies", []):
            lines.add(body["span"]["line"])
            for stmt in (body.get("query") or {}).get("stmts", []):
                lines.add(stmt["span"]["line"])
    return lines


class _Coverage:
    """Line coverage summed over the engines a test run used."""

    def __init__(self) -> None:
        self.covered: dict[str, set[int]] = {}
        self.not_covered: dict[str, set[int]] = {}

    def add(self, engine: Any) -> None:
        report = json.loads(engine.get_coverage_report_as_json())
        for entry in report.get("files", []):
            self.covered.setdefault(entry["path"], set()).update(entry.get("covered", []))
            self.not_covered.setdefault(entry["path"], set()).update(
                entry.get("not_covered", []))

    def files(self, parsed: Sequence[Parsed], markers: dict[str, dict[int, int]]
              ) -> list[FileCoverage]:
        out = []
        for item in parsed:
            if item.module.is_test:
                continue
            if item.path not in self.covered and item.path not in self.not_covered:
                # regorus leaves out a file none of whose rules was evaluated: 0%, not 100%.
                out.append(FileCoverage(item.path, frozenset(),
                                        frozenset(_coverable_lines(item.ast))))
                continue
            covered = set(self.covered.get(item.path, ()))
            missed = set(self.not_covered.get(item.path, ()))
            for marker, line in markers.get(item.path, {}).items():
                taken = marker in covered
                covered.discard(marker)
                missed.discard(marker)
                (covered if taken else missed).add(line)
            out.append(FileCoverage(item.path, frozenset(covered),
                                    frozenset(missed - covered)))
        return out


def run_tests(modules: Sequence[PolicyModule], pattern: str | None = None,
              coverage: bool = False) -> TestRun:
    """Run the tests in one interpreter; an erroring test gets a fresh one for those after."""
    parsed, problems = parse_all(modules)
    if problems:
        return TestRun(problems=problems)
    selector = re.compile(pattern) if pattern else None
    cases = [c for c in discover(parsed) if not selector or selector.search(c.name)]
    markers: dict[str, dict[int, int]] = {}
    loaded: list[PolicyModule] = []
    packages = {item.package for item in parsed}
    for item in parsed:
        edits = _alias_edits(item, packages)
        if coverage and not item.module.is_test:
            marker_edits, markers[item.path] = _else_markers(item)
            edits += marker_edits
        loaded.append(_apply(item.module, edits))

    def fresh() -> Any:
        engine = regorus.Engine()
        for module in loaded:
            engine.add_policy(str(module.path), module.text)
        engine.set_enable_coverage(coverage)
        return engine

    run = TestRun()
    lines = _Coverage()
    engine = fresh()
    for case in cases:
        if case.rule.startswith("todo_"):
            run.results.append(TestResult(case, "SKIP", 0.0))
            continue
        started = time.perf_counter()
        try:
            value = engine.eval_rule(case.name)
        except BaseException as exc:
            if _is_fatal(exc):
                raise
            elapsed = time.perf_counter() - started
            run.results.append(TestResult(case, "ERROR", elapsed,
                                          str(problem_from(exc, case.path))))
            if coverage:
                lines.add(engine)
            engine = fresh()  # never reuse an interpreter that failed mid-evaluation
            continue
        elapsed = time.perf_counter() - started
        if value is True:
            run.results.append(TestResult(case, "PASS", elapsed))
        else:
            outcome = "undefined" if value is None else f"evaluated to {_show(value)}"
            run.results.append(TestResult(case, "FAIL", elapsed,
                                          f"{outcome} ({case.path}:{case.line})"))
    if coverage:
        lines.add(engine)
        run.coverage = lines.files(parsed, markers)
    return run


def _ranges(lines: Iterable[int]) -> str:
    spans: list[list[int]] = []
    for line in sorted(lines):
        if spans and line == spans[-1][1] + 1:
            spans[-1][1] = line
        else:
            spans.append([line, line])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


@dataclass(frozen=True)
class Validation:
    """What a hot reload needs to know: does the set compile, and do its tests pass?"""

    problems: tuple[Problem, ...]
    results: tuple[TestResult, ...]

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        return sum(not r.passed for r in self.results)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.failed and bool(self.results)

    @property
    def summary(self) -> str:
        """A short reason, with no policy text in it (it is shown on /readyz)."""
        if self.problems:
            return f"the policy set does not check: {len(self.problems)} problem(s)"
        if not self.results:
            return "the policy set has no tests; a reload needs tests that pass"
        if self.failed:
            return f"{self.failed} of {len(self.results)} policy tests failed"
        return f"all {len(self.results)} policy tests passed"

    def details(self) -> list[str]:
        return [str(p) for p in self.problems] + [
            f"{r.status} {r.case.name}: {r.detail}" for r in self.results if not r.passed]


def validate(modules: Sequence[PolicyModule]) -> Validation:
    """``check``, then the tests: the gate a policy set passes before it is served."""
    problems = check_modules(modules)
    if problems:
        return Validation(tuple(problems), ())
    run = run_tests(modules)
    return Validation(tuple(run.problems), tuple(run.results))


# ---- explaining a decision ----------------------------------------------------------------

@dataclass(frozen=True)
class RuleSource:
    """One ``private_rows`` rule, as an author finds it."""

    path: str
    line: int
    title: str | None
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.path, "line": self.line, "title": self.title,
                "source": self.source}


@dataclass(frozen=True)
class Explanation:
    decision: Any
    verdict: Decision
    rows: list[dict[str, Any]]
    hidden: list[int]
    reasons: dict[int, list[RuleSource]]


_SECTION = re.compile(r"^#\s*-{2,}\s*(?P<title>.*?)\s*-*\s*$")


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
                return entry[len("title:"):].strip().strip("'\"") or None
    elif above:
        return " ".join(above)
    for earlier in reversed(lines[:max(line - 1, 0)]):
        section = _SECTION.match(earlier.strip())
        if section and section.group("title"):
            return section.group("title")
    return None


def _split_private_rows(parsed: Sequence[Parsed]
                        ) -> tuple[list[PolicyModule], list[RuleSource]]:
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
                sources.append(RuleSource(item.path, start, rule_title(item.module.text, start),
                                          item.module.text.splitlines()[start - 1].strip()))
        for begin, end, name in sorted(renames, reverse=True):
            data = data[:begin] + name.encode() + data[end:]
        modules.append(PolicyModule(item.module.path, data.decode()))
    union = "".join(f"private_rows contains i if some i in {_WHY}{n}\n"
                    for n in range(len(sources)))
    modules.append(PolicyModule(Path("veil-explain.rego"),
                                f"package {PACKAGE}\n\nimport rego.v1\n\n{union}"))
    return modules, sources


def complete_input(document: dict[str, Any]) -> dict[str, Any]:
    """A sample input with Veil's defaults for what it leaves out.

    Each row gets its ``index``, and every field Veil always sends gets the value Veil sends
    when the store's row does not have it: ``null`` for ``id``, ``actor`` and ``ts_ns`` (so
    R2 hides a row without an actor or a time, as in Veil) and ``"user"`` for ``actor_type``.
    """
    filled: dict[str, Any] = {"caller": "", "request": {"method": "GET", "path": "/",
                                                        "query": ""},
                              "reveal_session_id": None, "session": None,
                              "now_ns": time.time_ns(), "rows": []}
    filled.update(document)
    filled["rows"] = [{**ROW_DEFAULTS, "index": n, **row} if isinstance(row, dict) else row
                      for n, row in enumerate(filled["rows"] or [])]
    return filled


# What Veil puts in a row's fields when it cannot read them (``veil.rows``).
ROW_DEFAULTS: dict[str, Any] = {"id": None, "actor": None, "actor_type": "user", "ts_ns": None}


def explain(modules: Sequence[PolicyModule], input_doc: dict[str, Any],
            data_doc: dict[str, Any]) -> Explanation:
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
            if _is_fatal(exc):
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


# ---- OPA's own evaluator, when installed -------------------------------------------------

_OPA_ERROR = re.compile(r"(?P<path>[^\s:][^:]*):(?P<line>\d+): (?P<code>rego_\w+): (?P<msg>.*)")


def opa_evaluator() -> Any | None:
    """OPA's Go evaluator (``opa_bindings``, PyPI ``opa-golib-python-bindings``), or None."""
    try:
        import opa_bindings
    except ImportError:
        return None
    return opa_bindings


def _opa_problems(exc: Any) -> list[Problem]:
    """Problems from an ``OpaError`` ("N errors occurred:" then ``file:row: code: msg``)."""
    found = []
    for line in str(exc.message).splitlines():
        match = _OPA_ERROR.search(line)
        if match:
            found.append(Problem(match.group("path"), int(match.group("line")), 1,
                                 f"OPA: {match.group('code')}: {match.group('msg')}"))
    return found or [Problem("policies", 1, 1, f"OPA: {exc.code}: {exc.message}")]


def opa_check_problems(modules: Sequence[PolicyModule], opa: Any) -> list[Problem]:
    """What OPA's compiler and evaluator say about the set: every file (tests too) compiled
    together, then the decision evaluated on the sample inputs."""
    engine = opa.OpaEngine()
    try:
        for module in modules:
            engine.add_policy(str(module.path), module.text)
        engine.add_data({"veil": SAMPLE_DATA})
        for sample in SAMPLE_INPUTS:
            engine.eval_query(f"result := {DECISION}", sample)
    except opa.OpaError as exc:
        return _opa_problems(exc)
    finally:
        engine.close()
    return []


def _rows_of(ranges: Iterable[dict[str, Any]] | None) -> set[int]:
    return {row for span in ranges or () for row in range(span["start"]["row"],
                                                          span["end"]["row"] + 1)}


def run_tests_on_opa(modules: Sequence[PolicyModule], opa: Any, pattern: str | None = None,
                     ) -> TestRun:
    """The same tests on OPA's evaluator, with OPA's own line coverage of the policy files."""
    parsed, problems = parse_all(modules)
    if problems:
        return TestRun(problems=problems)
    selector = re.compile(pattern) if pattern else None
    engine = opa.OpaEngine()
    covered: dict[str, set[int]] = {}
    missed: dict[str, set[int]] = {}
    run = TestRun()
    try:
        for module in modules:
            engine.add_policy(str(module.path), module.text)
        for case in discover(parsed):
            if selector and not selector.search(case.name):
                continue
            if case.rule.startswith("todo_"):
                run.results.append(TestResult(case, "SKIP", 0.0))
                continue
            started = time.perf_counter()
            try:
                found = engine.eval_query(f"result := {case.name}", coverage=True)
            except opa.OpaError as exc:
                run.results.append(TestResult(case, "ERROR", time.perf_counter() - started,
                                              f"OPA: {exc.code}: {exc.message}"))
                continue
            elapsed = time.perf_counter() - started
            for path, report in ((engine.last_coverage or {}).get("files") or {}).items():
                covered.setdefault(path, set()).update(_rows_of(report.get("covered")))
                missed.setdefault(path, set()).update(_rows_of(report.get("not_covered")))
            value = found[0]["result"] if found else None
            if value is True:
                run.results.append(TestResult(case, "PASS", elapsed))
            else:
                outcome = "undefined" if value is None else f"evaluated to {_show(value)}"
                run.results.append(TestResult(case, "FAIL", elapsed,
                                              f"{outcome} on OPA ({case.path}:{case.line})"))
    except opa.OpaError as exc:
        return TestRun(problems=_opa_problems(exc))
    finally:
        engine.close()
    run.coverage = [
        FileCoverage(item.path, frozenset(covered.get(item.path, ())),
                     frozenset(missed.get(item.path, set()) - covered.get(item.path, set()))
                     if item.path in covered or item.path in missed
                     else frozenset(_coverable_lines(item.ast)))
        for item in parsed if not item.module.is_test]
    return run


# ---- the command line ---------------------------------------------------------------------

def _load(directory: Path, out: TextIO) -> list[PolicyModule] | None:
    try:
        return load_modules(directory)
    except PolicyError as exc:
        print(f"{directory}: {exc.detail}", file=out)
        return None


def cmd_check(directory: Path, out: TextIO | None = None, opa: Any | None = None) -> int:
    """``veil policy check``: one ``file:line:col: message`` line per problem.

    When OPA's evaluator is installed (``opa``: the ``opa_bindings`` module, default: found
    by import), the set is also compiled and evaluated by it.
    """
    out = out or sys.stdout
    modules = _load(directory, out)
    if modules is None:
        return 1
    problems = check_modules(modules)
    opa = opa if opa is not None else opa_evaluator()
    if not problems and opa is not None:
        problems = opa_check_problems(modules, opa)
    for problem in problems:
        print(problem, file=out)
    if problems:
        print(f"{len(problems)} problem(s) in {directory}", file=out)
        return 1
    print(f"ok: {len(modules)} files in {directory} compile as Rego v1, use only built-ins "
          f"OPA and the embedded engine share, and define data.{PACKAGE}.decision", file=out)
    print("ok: OPA's evaluator compiles and evaluates them too" if opa is not None else
          "note: OPA's evaluator is not installed, so the set was not compiled with OPA "
          "(pip install --ignore-requires-python opa-golib-python-bindings)", file=out)
    return 0


def cmd_test(directory: Path, pattern: str | None = None, coverage: bool = False,
             threshold: float | None = None, out: TextIO | None = None,
             opa_coverage: bool = False) -> int:
    """``veil policy test``: a line per test, coverage if asked, and a summary line.

    ``opa_coverage`` also runs the tests on OPA's evaluator and prints OPA's own coverage.
    """
    out = out or sys.stdout
    modules = _load(directory, out)
    if modules is None:
        return 1
    try:
        run = run_tests(modules, pattern, coverage or threshold is not None)
    except re.error as exc:
        print(f"--run {pattern!r} is not a regular expression: {exc}", file=out)
        return 2
    for problem in run.problems:
        print(problem, file=out)
    if run.problems:
        print(f"{len(run.problems)} file(s) do not parse; no test was run", file=out)
        return 1
    for result in run.results:
        line = f"{result.status} {result.case.name} ({result.seconds * 1000:.1f} ms)"
        print(line + (f": {result.detail}" if result.detail else ""), file=out)
    code = 0 if run.ok and run.results else 1
    percent = _print_coverage(run.coverage, out) if run.coverage is not None else None
    skipped = sum(r.status == "SKIP" for r in run.results)
    passed = len(run.results) - run.failed - skipped
    print(f"{passed} passed, {run.failed} failed" + (f", {skipped} skipped" if skipped else ""),
          file=out)
    if not run.results:
        print(f"no test matched in {directory}", file=out)
    if percent is not None and threshold is not None and percent < threshold:
        print(f"FAIL coverage {percent:.1f}% is below the threshold {threshold:g}%", file=out)
        code = 1
    if opa_coverage:
        code = max(code, _opa_test_report(modules, pattern, out))
    return code


def _opa_test_report(modules: Sequence[PolicyModule], pattern: str | None, out: TextIO) -> int:
    """The tests on OPA's evaluator: failures, OPA's coverage and a summary; 1 on failure."""
    opa = opa_evaluator()
    if opa is None:
        print("OPA coverage: OPA's evaluator is not installed (pip install "
              "--ignore-requires-python opa-golib-python-bindings)", file=out)
        return 1
    run = run_tests_on_opa(modules, opa, pattern)
    for problem in run.problems:
        print(problem, file=out)
    for result in run.results:
        if not result.passed:
            print(f"{result.status} {result.case.name}: {result.detail}", file=out)
    if run.coverage is not None and not run.problems:
        _print_coverage(run.coverage, out, label="OPA coverage")
    passed = sum(r.status == "PASS" for r in run.results)
    print(f"on OPA's evaluator: {passed} passed, {run.failed} failed", file=out)
    return 0 if run.ok else 1


def _print_coverage(files: list[FileCoverage], out: TextIO, label: str = "coverage") -> float:
    """Print a line per policy file and the total; return the total percentage."""
    covered = sum(len(f.covered) for f in files)
    total = sum(f.total for f in files)
    for item in files:
        line = (f"{label} {item.path}: {item.percent:.1f}% "
                f"({len(item.covered)}/{item.total} lines)")
        if item.not_covered:
            line += f", not covered: {_ranges(item.not_covered)}"
        print(line, file=out)
    percent = 100.0 * covered / total if total else 100.0
    print(f"{label} total: {percent:.1f}% ({covered}/{total} lines)", file=out)
    return percent


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise PolicyError(f"cannot read the {what} {path}: {exc}") from exc


def cmd_eval(directory: Path, input_path: Path, data_path: Path | None = None,
             as_json: bool = False, out: TextIO | None = None) -> int:
    """``veil policy eval``: the decision for a sample input, and why each hidden row is."""
    out = out or sys.stdout
    modules = _load(directory, out)
    if modules is None:
        return 1
    input_doc = _read_json(input_path, "input")
    if not isinstance(input_doc, dict):
        raise PolicyError(f"the input {input_path} must be a JSON object (Veil's input)")
    data_doc = _read_json(data_path, "data") if data_path else {}
    if isinstance(data_doc, dict) and set(data_doc) == {"veil"}:
        data_doc = data_doc["veil"]  # given as data, not as data.veil
    if not isinstance(data_doc, dict):
        raise PolicyError(f"the data {data_path} must be a JSON object (data.veil)")
    result = explain(modules, complete_input(input_doc), data_doc)
    if as_json:
        print(json.dumps({
            "decision": result.decision, "failed_closed": result.verdict.failed,
            "hidden": result.hidden,
            "reasons": {str(i): [s.as_dict() for s in result.reasons.get(i, [])]
                        for i in result.hidden},
        }, default=_jsonable, indent=2), file=out)
        return 1 if result.verdict.failed else 0
    _print_explanation(result, out)
    return 1 if result.verdict.failed else 0


def _describe_row(row: Any) -> str:
    if not isinstance(row, dict):
        return json.dumps(row)[:80]
    from veil.storage import rfc3339

    ts = row.get("ts_ns")
    when = rfc3339(ts) if isinstance(ts, int) else "unreadable time"
    return (f"id {json.dumps(row.get('id'))}, actor {json.dumps(row.get('actor'))} "
            f"({row.get('actor_type')}), {when}")


def _print_explanation(result: Explanation, out: TextIO) -> None:
    def show(value: Any) -> str:
        return json.dumps(value, default=_jsonable, sort_keys=True)

    print(f"decision: {show(result.decision)}", file=out)
    if result.verdict.failed:
        print(f"data.{PACKAGE}.decision is undefined or malformed: Veil would hide every row "
              "and refuse any reveal (fail closed)", file=out)
        return
    total = len(result.rows)
    print(f"{len(result.hidden)} of {total} row(s) private; reveal "
          f"{'allowed' if result.verdict.reveal else 'not allowed'}"
          + (f" ({'; '.join(result.verdict.refusals)})" if result.verdict.refusals else ""),
          file=out)
    for index in result.hidden:
        print(f"row {index} ({_describe_row(result.rows[index])}) is private because of:",
              file=out)
        reasons = result.reasons.get(index)
        if not reasons:
            print("  no single private_rows rule: the decision's private_rows comes from "
                  "elsewhere (check how data.veil.privacy.decision builds it)", file=out)
        for source in reasons or ():
            title = f"  {source.title}" if source.title else ""
            print(f"  {source.path}:{source.line}{title}", file=out)
            print(f"      {source.source}", file=out)
