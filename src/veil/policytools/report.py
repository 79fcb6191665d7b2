"""How ``veil policy`` writes results for people: values, line ranges, coverage, reasons."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, TextIO

from veil.policytools import PACKAGE
from veil.policytools.coverage import FileCoverage
from veil.policytools.explain import Explanation


def jsonable(value: Any) -> Any:
    """``json.dumps`` default for what regorus returns: sets as sorted lists."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=lambda v: json.dumps(v, default=str, sort_keys=True))
    raise TypeError(f"{type(value).__name__} is not JSON")


def show(value: Any) -> str:
    """A value as short JSON (cut at 200 characters)."""
    text = json.dumps(value, default=jsonable, sort_keys=True)
    return text if len(text) <= 200 else text[:197] + "..."


def ranges(lines: Iterable[int]) -> str:
    """``1-3, 7`` for lines 1, 2, 3 and 7."""
    spans: list[list[int]] = []
    for line in sorted(lines):
        if spans and line == spans[-1][1] + 1:
            spans[-1][1] = line
        else:
            spans.append([line, line])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def print_coverage(files: list[FileCoverage], out: TextIO, label: str = "coverage") -> float:
    """Print a line per policy file and the total; return the total percentage."""
    covered = sum(len(f.covered) for f in files)
    total = sum(f.total for f in files)
    for item in files:
        line = f"{label} {item.path}: {item.percent:.1f}% ({len(item.covered)}/{item.total} lines)"
        if item.not_covered:
            line += f", not covered: {ranges(item.not_covered)}"
        print(line, file=out)
    percent = 100.0 * covered / total if total else 100.0
    print(f"{label} total: {percent:.1f}% ({covered}/{total} lines)", file=out)
    return percent


def _describe_row(row: Any) -> str:
    if not isinstance(row, dict):
        return json.dumps(row)[:80]
    from veil.clock import rfc3339

    ts = row.get("ts_ns")
    when = rfc3339(ts) if isinstance(ts, int) else "unreadable time"
    return (
        f"id {json.dumps(row.get('id'))}, actor {json.dumps(row.get('actor'))} "
        f"({row.get('actor_type')}), {when}"
    )


def explanation_json(result: Explanation) -> str:
    """``veil policy eval --json``."""
    return json.dumps(
        {
            "decision": result.decision,
            "failed_closed": result.verdict.failed,
            "hidden": result.hidden,
            "reasons": {
                str(i): [s.as_dict() for s in result.reasons.get(i, [])] for i in result.hidden
            },
        },
        default=jsonable,
        indent=2,
    )


def print_explanation(result: Explanation, out: TextIO) -> None:
    """The decision, then each private row with the rules that hid it."""

    def whole(value: Any) -> str:
        return json.dumps(value, default=jsonable, sort_keys=True)

    print(f"decision: {whole(result.decision)}", file=out)
    if result.verdict.failed:
        print(
            f"data.{PACKAGE}.decision is undefined or malformed: Veil would hide every row "
            "and refuse any reveal (fail closed)",
            file=out,
        )
        return
    total = len(result.rows)
    print(
        f"{len(result.hidden)} of {total} row(s) private; reveal "
        f"{'allowed' if result.verdict.reveal else 'not allowed'}"
        + (f" ({'; '.join(result.verdict.refusals)})" if result.verdict.refusals else ""),
        file=out,
    )
    for index in result.hidden:
        print(f"row {index} ({_describe_row(result.rows[index])}) is private because of:", file=out)
        reasons = result.reasons.get(index)
        if not reasons:
            print(
                "  no single private_rows rule: the decision's private_rows comes from "
                "elsewhere (check how data.veil.privacy.decision builds it)",
                file=out,
            )
        for source in reasons or ():
            title = f"  {source.title}" if source.title else ""
            print(f"  {source.path}:{source.line}{title}", file=out)
            print(f"      {source.source}", file=out)
