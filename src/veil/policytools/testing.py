"""The Rego test runner: every ``test_*`` rule of every ``*_test.rego`` file (``todo_test_*``
skipped), on the embedded engine or on OPA's evaluator, with line coverage if asked."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import regorus

from veil.policy import PolicyModule
from veil.policytools.coverage import FileCoverage, OpaCoverage, RegorusCoverage
from veil.policytools.opa_evaluator import opa_problems
from veil.policytools.parse import Parsed, parse_all
from veil.policytools.problems import Problem, is_fatal, problem_from
from veil.policytools.rego_ast import head_name
from veil.policytools.regorus_compat import alias_edits, apply_edits, else_markers
from veil.policytools.report import show


@dataclass(frozen=True)
class TestCase:
    """One test rule."""

    package: str
    rule: str
    path: str
    line: int

    @property
    def name(self) -> str:
        return f"data.{self.package}.{self.rule}"


@dataclass(frozen=True)
class TestResult:
    """How one test went."""

    case: TestCase
    status: str  # PASS, FAIL, ERROR or SKIP
    seconds: float
    detail: str | None = None

    @property
    def passed(self) -> bool:
        return self.status in ("PASS", "SKIP")


@dataclass
class TestRun:
    """The results of a run, the files that did not parse, and coverage when asked."""

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


def _verdict(case: TestCase, value: Any, elapsed: float, where: str = "") -> TestResult:
    if value is True:
        return TestResult(case, "PASS", elapsed)
    outcome = "undefined" if value is None else f"evaluated to {show(value)}"
    return TestResult(case, "FAIL", elapsed, f"{outcome}{where} ({case.path}:{case.line})")


def run_tests(
    modules: Sequence[PolicyModule], pattern: str | None = None, coverage: bool = False
) -> TestRun:
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
        edits = alias_edits(item, packages)
        if coverage and not item.module.is_test:
            marker_edits, markers[item.path] = else_markers(item)
            edits += marker_edits
        loaded.append(apply_edits(item.module, edits))

    def fresh() -> Any:
        engine = regorus.Engine()
        for module in loaded:
            engine.add_policy(str(module.path), module.text)
        engine.set_enable_coverage(coverage)
        return engine

    run = TestRun()
    lines = RegorusCoverage()
    engine = fresh()
    for case in cases:
        if case.rule.startswith("todo_"):
            run.results.append(TestResult(case, "SKIP", 0.0))
            continue
        started = time.perf_counter()
        try:
            value = engine.eval_rule(case.name)
        except BaseException as exc:
            if is_fatal(exc):
                raise
            elapsed = time.perf_counter() - started
            run.results.append(
                TestResult(case, "ERROR", elapsed, str(problem_from(exc, case.path)))
            )
            if coverage:
                lines.add(engine)
            engine = fresh()  # never reuse an interpreter that failed mid-evaluation
            continue
        run.results.append(_verdict(case, value, time.perf_counter() - started))
    if coverage:
        lines.add(engine)
        run.coverage = lines.files(parsed, markers)
    return run


def run_tests_on_opa(
    modules: Sequence[PolicyModule],
    opa: Any,
    pattern: str | None = None,
) -> TestRun:
    """The same tests on OPA's evaluator (``opa``: the ``opa_bindings`` module), with OPA's
    own line coverage of the policy files."""
    parsed, problems = parse_all(modules)
    if problems:
        return TestRun(problems=problems)
    selector = re.compile(pattern) if pattern else None
    engine = opa.OpaEngine()
    lines = OpaCoverage()
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
                run.results.append(
                    TestResult(
                        case,
                        "ERROR",
                        time.perf_counter() - started,
                        f"OPA: {exc.code}: {exc.message}",
                    )
                )
                continue
            elapsed = time.perf_counter() - started
            lines.add(engine.last_coverage)
            value = found[0]["result"] if found else None
            run.results.append(_verdict(case, value, elapsed, " on OPA"))
    except opa.OpaError as exc:
        return TestRun(problems=opa_problems(exc))
    finally:
        engine.close()
    run.coverage = lines.files(parsed)
    return run
