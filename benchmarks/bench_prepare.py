"""Veil's in-process "prepare" work for one store answer, step by step.

Prepare is what Veil does between the store's body and the policy's input: parse the body
(rows, their spans, and the per-row verdicts: repeated keys, unrepresentable values), normalize
the rows, and encode the policy's input; render is the answer sent back. On a policy Veil
follows, an answer without a reveal reads only the rows' facts instead of normalizing and
encoding (``Normalizer.facts``: no dict per row, times turned into nanoseconds later). The
body is the same synthetic answer as in ``bench_latency.py`` (the demo's activity log, 250
distinct actors).

    python benchmarks/bench_prepare.py [--sizes 100,1000,10000] [--runs 300] [--wall]

Times are the median CPU time of this thread (``--wall``: wall-clock time), so that other
work on the machine inflates them less. This is a benchmark, not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from veil.config import FieldPointers
from veil.demo.store import ActivityLog, Directory
from veil.rows import Normalizer, parse_answer, pointer_tokens, render

HOUR_NS = 3600 * 1_000_000_000


def input_document(rows: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(
        {
            "caller": "bob@contoso.com",
            "request": {"method": "GET", "path": "/api/activities", "query": ""},
            "reveal_session_id": None,
            "session": None,
            "now_ns": time.time_ns(),
            "rows": rows,
        }
    )


def median_ms(step: Callable[[], object], runs: int, clock: Callable[[], float]) -> float:
    times = []
    for _ in range(runs):
        started = clock()
        step()
        times.append(clock() - started)
    return statistics.median(times) * 1000


def measure(
    body: bytes, size: int, normalizer: Normalizer, runs: int, clock: Callable[[], float]
) -> list[float]:
    """Median ms of (prepare, parse, normalize, encode, render, orjson parse, reference parse,
    facts) for one body. Parse is the native reader (``veil._rowscan``) when it is built; the
    orjson parse is the reading without it (orjson and proven row boundaries); the reference
    parse is the standard library's scanner row by row, which both are tested against."""
    rows_pointer, keep = pointer_tokens("/data"), [pointer_tokens("/next")]

    def parse(fast: bool = True, native: bool = True) -> Any:
        return parse_answer(
            body, rows_pointer, keep, normalizer.pointers, raw=False, fast=fast, native=native
        )

    def prepare() -> bytes:
        return input_document(normalizer.rows_of(parse(), include_raw=False))

    answer = parse()
    rows = normalizer.rows_of(answer, include_raw=False)
    hidden = range(0, size, 3)
    return [
        median_ms(step, runs, clock)
        for step in (
            prepare,
            parse,
            lambda: normalizer.rows_of(answer, include_raw=False),
            lambda: input_document(rows),
            lambda: render(answer, hidden),
            lambda: parse(native=False),
            lambda: parse(fast=False),
            lambda: normalizer.facts_of(answer),
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument(
        "--runs",
        type=int,
        default=300,
        help="runs per size (sizes above 1,000 rows use a tenth, at least 20)",
    )
    parser.add_argument("--wall", action="store_true", help="wall-clock instead of CPU time")
    args = parser.parse_args(argv)
    clock = time.perf_counter if args.wall else time.thread_time
    normalizer = Normalizer(FieldPointers(), frozenset({"application"}))
    log = ActivityLog(Directory.generate(seed=7, employees=234, guests=10), seed=7)
    now = time.time_ns()
    print(
        f"{'rows':>6} {'body KB':>8} | {'prepare':>8} = {'parse':>7} {'normalize':>9} "
        f"{'encode':>7} | {'render':>7} | {'orjson parse':>12} {'reference parse':>15} | "
        f"{'facts':>6}  (ms, median)"
    )
    for size in sorted(int(s) for s in args.sizes.split(",") if s.strip()):
        body = json.dumps(
            {"data": log.sample(size, now - HOUR_NS, now + HOUR_NS), "next": None}
        ).encode()
        runs = args.runs if size <= 1000 else max(20, args.runs // 10)
        figures = measure(body, size, normalizer, runs, clock)
        print(
            f"{size:>6} {len(body) / 1024:>8.0f} | {figures[0]:>8.2f} = {figures[1]:>7.2f} "
            f"{figures[2]:>9.2f} {figures[3]:>7.2f} | {figures[4]:>7.2f} | "
            f"{figures[5]:>12.2f} {figures[6]:>15.2f} | {figures[7]:>6.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
