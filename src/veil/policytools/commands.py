"""``veil policy check|test|eval``: load the policy directory, run the tool, print the result
and return the exit code."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from veil.errors import PolicyError
from veil.policy import PolicyModule, load_modules
from veil.policytools import PACKAGE
from veil.policytools.check import check_modules, opa_check_problems
from veil.policytools.explain import complete_input, explain
from veil.policytools.opa_evaluator import INSTALL, opa_evaluator
from veil.policytools.report import explanation_json, print_coverage, print_explanation
from veil.policytools.testing import run_tests, run_tests_on_opa


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
    print(
        f"ok: {len(modules)} files in {directory} compile as Rego v1, use only built-ins "
        f"OPA and the embedded engine share, and define data.{PACKAGE}.decision",
        file=out,
    )
    print(
        "ok: OPA's evaluator compiles and evaluates them too"
        if opa is not None
        else "note: OPA's evaluator is not installed, so the set was not compiled with OPA "
        f"({INSTALL})",
        file=out,
    )
    return 0


def cmd_test(
    directory: Path,
    pattern: str | None = None,
    coverage: bool = False,
    threshold: float | None = None,
    out: TextIO | None = None,
    opa_coverage: bool = False,
) -> int:
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
    percent = print_coverage(run.coverage, out) if run.coverage is not None else None
    skipped = sum(r.status == "SKIP" for r in run.results)
    passed = len(run.results) - run.failed - skipped
    print(
        f"{passed} passed, {run.failed} failed" + (f", {skipped} skipped" if skipped else ""),
        file=out,
    )
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
        print(f"OPA coverage: OPA's evaluator is not installed ({INSTALL})", file=out)
        return 1
    run = run_tests_on_opa(modules, opa, pattern)
    for problem in run.problems:
        print(problem, file=out)
    for result in run.results:
        if not result.passed:
            print(f"{result.status} {result.case.name}: {result.detail}", file=out)
    if run.coverage is not None and not run.problems:
        print_coverage(run.coverage, out, label="OPA coverage")
    passed = sum(r.status == "PASS" for r in run.results)
    print(f"on OPA's evaluator: {passed} passed, {run.failed} failed", file=out)
    return 0 if run.ok else 1


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise PolicyError(f"cannot read the {what} {path}: {exc}") from exc


def cmd_eval(
    directory: Path,
    input_path: Path,
    data_path: Path | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
) -> int:
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
        print(explanation_json(result), file=out)
    else:
        print_explanation(result, out)
    return 1 if result.verdict.failed else 0
