"""Tools for policy authors: run the Rego unit tests and check a policy directory."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil.errors import PolicyError
from veil.policy import DECISION, PolicyModule, load_modules
from veil.policy.embedded import first_line, new_engine

_PACKAGE = re.compile(r"^package\s+([A-Za-z0-9_.]+)", re.MULTILINE)
_TEST_RULE = re.compile(r"^(test_[A-Za-z0-9_]+)\b", re.MULTILINE)


@dataclass(frozen=True)
class TestResult:
    package: str
    rule: str
    passed: bool
    seconds: float
    error: str | None = None


def discover(modules: list[PolicyModule]) -> list[tuple[str, str]]:
    """``(package, rule)`` for every ``test_*`` rule of every ``*_test.rego`` file."""
    found: list[tuple[str, str]] = []
    for module in modules:
        if not module.is_test:
            continue
        package = _PACKAGE.search(module.text)
        if package is None:
            continue
        for rule in dict.fromkeys(_TEST_RULE.findall(module.text)):
            found.append((package.group(1), rule))
    return found


def run(directory: Path, pattern: str | None = None,
        coverage: bool = False) -> tuple[list[TestResult], dict[str, Any] | None]:
    modules = load_modules(directory)
    engine = new_engine(modules)
    engine.set_enable_coverage(coverage)
    selector = re.compile(pattern) if pattern else None
    results = []
    for package, rule in discover(modules):
        if selector and not selector.search(f"{package}.{rule}"):
            continue
        started = time.perf_counter()
        try:
            value = engine.eval_rule(f"data.{package}.{rule}")
            error = None if value is True else f"evaluated to {json.dumps(value)}"
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            error = first_line(exc)
        results.append(TestResult(package, rule, error is None, time.perf_counter() - started,
                                  error))
    report = json.loads(engine.get_coverage_report_as_json()) if coverage else None
    return results, report


def coverage_by_file(report: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """``{file: (covered lines, coverable lines)}`` from regorus' coverage report."""
    out: dict[str, tuple[int, int]] = {}
    for entry in report.get("files", []):
        covered = len(entry.get("covered", []))
        total = covered + len(entry.get("not_covered", []))
        out[entry["path"]] = (covered, total)
    return out


def run_tests(directory: Path, pattern: str | None = None, coverage: bool = False,
              threshold: float | None = None) -> int:
    """``veil policy test``: one line per test, a summary, and a non-zero exit on failure."""
    try:
        results, report = run(directory, pattern, coverage or threshold is not None)
    except PolicyError as exc:
        print(f"ERROR {exc.detail}")
        return 1
    for result in results:
        status = "PASS" if result.passed else "FAIL"
        line = f"{status} data.{result.package}.{result.rule} ({result.seconds * 1000:.1f} ms)"
        print(line + (f": {result.error}" if result.error else ""))
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    code = 1 if failed or not results else 0
    if report is not None:
        covered_all = total_all = 0
        for path, (covered, total) in sorted(coverage_by_file(report).items()):
            if path.endswith("_test.rego"):
                continue
            covered_all += covered
            total_all += total
            print(f"coverage {path}: {100 * covered / total if total else 100:.1f}% "
                  f"({covered}/{total} lines)")
        percent = 100 * covered_all / total_all if total_all else 100.0
        print(f"coverage total: {percent:.1f}%")
        if threshold is not None and percent < threshold:
            print(f"coverage {percent:.1f}% is below the threshold {threshold:g}%")
            code = 1
    return code


def check(directory: Path) -> int:
    """``veil policy check``: every file compiles and the entry points exist."""
    try:
        modules = load_modules(directory)
        engine = new_engine(modules)
    except PolicyError as exc:
        print(exc.detail)
        return 1
    problems = []
    engine.add_data_json('{"veil": {}}')
    engine.set_input_json(json.dumps({"caller": "", "rows": [], "session": None,
                                      "reveal_session_id": None, "now_ns": 0, "request": {}}))
    for rule in (DECISION, "data.veil.privacy.private_rows"):
        try:
            if engine.eval_rule(rule) is None:
                problems.append(f"{rule} is undefined")
        except RuntimeError as exc:
            problems.append(f"{rule} fails to evaluate: {first_line(exc)}")
    for problem in problems:
        print(problem)
    if not problems:
        print(f"ok: {len(modules)} files in {directory}")
    return 1 if problems else 0
