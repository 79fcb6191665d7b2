"""The gate a policy set passes before Veil serves it, at start-up and on a hot reload:
``check``, then the tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from veil.policy import PolicyModule
from veil.policytools.check import check_modules
from veil.policytools.problems import Problem
from veil.policytools.testing import TestResult, run_tests


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
            f"{r.status} {r.case.name}: {r.detail}" for r in self.results if not r.passed
        ]


def validate(modules: Sequence[PolicyModule]) -> Validation:
    """``check``, then the tests: the gate a policy set passes before it is served."""
    problems = check_modules(modules)
    if problems:
        return Validation(tuple(problems), ())
    run = run_tests(modules)
    return Validation(tuple(run.problems), tuple(run.results))
