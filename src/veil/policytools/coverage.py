"""Line coverage of the policy files (not the tests), summed over a test run, from regorus'
coverage report or from OPA's."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from veil.policytools.parse import Parsed
from veil.policytools.rego_ast import coverable_lines


@dataclass(frozen=True)
class FileCoverage:
    """The covered and not covered lines of one policy file."""

    path: str
    covered: frozenset[int]
    not_covered: frozenset[int]

    @property
    def total(self) -> int:
        return len(self.covered) + len(self.not_covered)

    @property
    def percent(self) -> float:
        return 100.0 * len(self.covered) / self.total if self.total else 100.0


def _untouched(item: Parsed) -> FileCoverage:
    """A file none of whose rules was evaluated: 0%, not 100% (engines leave it out)."""
    return FileCoverage(item.path, frozenset(), frozenset(coverable_lines(item.ast)))


class RegorusCoverage:
    """Line coverage summed over the regorus engines a test run used."""

    def __init__(self) -> None:
        self.covered: dict[str, set[int]] = {}
        self.not_covered: dict[str, set[int]] = {}

    def add(self, engine: Any) -> None:
        """Add an engine's report (``set_enable_coverage(True)`` before it evaluated)."""
        report = json.loads(engine.get_coverage_report_as_json())
        for entry in report.get("files", []):
            self.covered.setdefault(entry["path"], set()).update(entry.get("covered", []))
            self.not_covered.setdefault(entry["path"], set()).update(entry.get("not_covered", []))

    def files(
        self, parsed: Sequence[Parsed], markers: dict[str, dict[int, int]]
    ) -> list[FileCoverage]:
        """Per policy file; ``markers`` ({path: {marker line: else line}}, from
        ``regorus_compat.else_markers``) count a marker's line as its ``else``'s."""
        out = []
        for item in parsed:
            if item.module.is_test:
                continue
            if item.path not in self.covered and item.path not in self.not_covered:
                out.append(_untouched(item))
                continue
            covered = set(self.covered.get(item.path, ()))
            missed = set(self.not_covered.get(item.path, ()))
            for marker, line in markers.get(item.path, {}).items():
                taken = marker in covered
                covered.discard(marker)
                missed.discard(marker)
                (covered if taken else missed).add(line)
            out.append(FileCoverage(item.path, frozenset(covered), frozenset(missed - covered)))
        return out


def _rows_of(spans: Iterable[dict[str, Any]] | None) -> set[int]:
    return {
        row for span in spans or () for row in range(span["start"]["row"], span["end"]["row"] + 1)
    }


class OpaCoverage:
    """Line coverage summed over OPA evaluations (``eval_query(..., coverage=True)``)."""

    def __init__(self) -> None:
        self.covered: dict[str, set[int]] = {}
        self.not_covered: dict[str, set[int]] = {}

    def add(self, report: dict[str, Any] | None) -> None:
        """Add an ``OpaEngine.last_coverage`` report (spans of rows per file)."""
        for path, entry in ((report or {}).get("files") or {}).items():
            self.covered.setdefault(path, set()).update(_rows_of(entry.get("covered")))
            self.not_covered.setdefault(path, set()).update(_rows_of(entry.get("not_covered")))

    def files(self, parsed: Sequence[Parsed]) -> list[FileCoverage]:
        """Per policy file."""
        out = []
        for item in parsed:
            if item.module.is_test:
                continue
            if item.path not in self.covered and item.path not in self.not_covered:
                out.append(_untouched(item))
                continue
            covered = self.covered.get(item.path, set())
            out.append(
                FileCoverage(
                    item.path,
                    frozenset(covered),
                    frozenset(self.not_covered.get(item.path, set()) - covered),
                )
            )
        return out
