"""The plain decision's time: ``data.veil.privacy.decision`` evaluated as a whole.

The whole decision is what a reveal, a policy without a plan (``veil.policy.plan``) and the
OPA engine with authors' row rules evaluate; the fast path does not help them. This script
evaluates it on one answer of N realistic rows (the demo's activity log, 250 distinct actors,
as ``bench_latency.py``: the departments hr and legal and the built-in group external made
private in the middle of the rows' time span), with regorus and with OPA's own Go evaluator
(``opa_bindings``, when installed), for the policy directory and, with ``--before REF``, for
the ``policies/`` tree of a git commit, alternating run by run so that both see the same load.

    python benchmarks/bench_decision.py [--rows 1000] [--runs 200] [--before REF ...]
                                        [--policies DIR] [--raw]

Each figure is the median wall-clock time of one evaluation: loading the input (already
encoded as JSON for regorus; a Python object for OPA's evaluator, which encodes it) and
evaluating the decision. This is a benchmark, not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from veil.config import FieldPointers
from veil.demo.store import ActivityLog, Directory
from veil.policy import DECISION, PolicyModule, load_modules
from veil.policy.embedded import new_engine
from veil.rows import Normalizer, parse_answer, pointer_tokens

ROOT = Path(__file__).resolve().parent.parent
HOUR_NS = 3600 * 1_000_000_000
PRIVATE_GROUPS = ("hr", "legal", "external")


def answer_rows(size: int, start_ns: int, raw: bool) -> list[dict[str, Any]]:
    """The policy input's rows for one store answer, as Veil normalizes them."""
    log = ActivityLog(Directory.generate(seed=7, employees=234, guests=10), seed=7)
    body = orjson.dumps(
        {"data": log.sample(size, start_ns - HOUR_NS, start_ns + HOUR_NS), "next": None}
    )
    normalizer = Normalizer(FieldPointers(), frozenset({"application"}))
    answer = parse_answer(
        body, pointer_tokens("/data"), [pointer_tokens("/next")], normalizer.pointers, raw=raw
    )
    rows: list[dict[str, Any]] = normalizer.rows(
        answer.rows, include_raw=raw, unreadable=answer.unreadable
    )
    return rows


def state(start_ns: int) -> dict[str, Any]:
    """data.veil as Veil builds it: only groups that are or were private are in it."""
    directory = Directory.generate(seed=7, employees=234, guests=10)
    groups = {
        group["id"]: {"name": group["name"], "members": dict.fromkeys(group["members"], True)}
        for group in directory.departments()
        if group["id"] in PRIVATE_GROUPS
    }
    return {
        "groups": groups,
        "privacy_groups": {
            name: [{"start_ns": start_ns, "end_ns": None}] for name in PRIVATE_GROUPS
        },
        "admins": {},
        "viewers": {},
        "managed_domains": ["contoso.com"],
    }


def policies_at(ref: str, into: Path) -> Path:
    """The ``policies/`` tree of a git commit, written under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "policies"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "policies"


class Regorus:
    name = "regorus"

    def __init__(
        self, modules: list[PolicyModule], data: dict[str, Any], document: dict[str, Any]
    ) -> None:
        self.engine = new_engine([m for m in modules if not m.is_test])
        self.engine.add_data_json(orjson.dumps({"veil": data}).decode())
        self.input = orjson.dumps(document).decode()

    def evaluate(self) -> Any:
        self.engine.set_input_json(self.input)
        return self.engine.eval_rule(DECISION)

    def close(self) -> None:
        pass


class OpaEvaluator:
    name = "OPA (opa_bindings)"

    def __init__(
        self, modules: list[PolicyModule], data: dict[str, Any], document: dict[str, Any]
    ) -> None:
        import opa_bindings

        self.engine = opa_bindings.OpaEngine()
        for module in modules:
            if not module.is_test:
                self.engine.add_policy(str(module.path), module.text)
        self.engine.add_data({"veil": data})
        self.input = document

    def evaluate(self) -> Any:
        return self.engine.eval_document(DECISION.removeprefix("data."), self.input)

    def close(self) -> None:
        self.engine.close()


def private_rows(decision: Any) -> frozenset[int]:
    """The decision's private rows (a set from regorus, a list from OPA's evaluator)."""
    return frozenset(int(i) for i in decision["private_rows"])


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=200, help="evaluations per figure")
    parser.add_argument(
        "--policies",
        type=Path,
        default=ROOT / "policies",
        help="the policy directory measured as 'after' (default policies/)",
    )
    parser.add_argument(
        "--before",
        metavar="REF",
        action="append",
        default=[],
        help="also measure the policies/ tree of this git commit (repeatable)",
    )
    parser.add_argument(
        "--raw",
        action="store_true",
        help="put each row's raw JSON in the input, as for a rule reading raw",
    )
    args = parser.parse_args(argv)

    start = time.time_ns()
    rows = answer_rows(args.rows, start, args.raw)
    document = {
        "caller": "bob@contoso.com",
        "request": {"method": "GET", "path": "/api/activities", "query": ""},
        "reveal_session_id": None,
        "session": None,
        "now_ns": start,
        "rows": rows,
    }
    data = state(start)
    engines: list[type[Regorus] | type[OpaEvaluator]] = [Regorus]
    try:
        import opa_bindings  # noqa: F401

        engines.append(OpaEvaluator)
    except ImportError:
        print(
            "opa_bindings is not installed: OPA's evaluator is not measured (pip install "
            "--ignore-requires-python opa-golib-python-bindings)"
        )

    with tempfile.TemporaryDirectory(prefix="veil-bench-decision-") as tmp:
        sets = {
            f"before {ref}": load_modules(policies_at(ref, Path(tmp) / str(n)))
            for n, ref in enumerate(args.before)
        }
        sets["after"] = load_modules(args.policies)
        print(
            f"{args.rows} rows, {len({r['actor'] for r in rows})} distinct actors, "
            f"raw {'in' if args.raw else 'not in'} the input; {args.runs} runs per figure; "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        print(f"before REF: policies/ at that commit; after: {args.policies}")
        verdicts: dict[tuple[str, str], frozenset[int]] = {}
        for engine_class in engines:
            runners = {
                label: engine_class(modules, data, document) for label, modules in sets.items()
            }
            times: dict[str, list[float]] = {label: [] for label in runners}
            for label, runner in runners.items():  # warm up, and the decision itself
                verdicts[engine_class.name, label] = private_rows(runner.evaluate())
            for _ in range(args.runs):  # alternate: both see the same machine load
                for label, runner in runners.items():
                    evaluate: Callable[[], Any] = runner.evaluate
                    started = time.perf_counter()
                    evaluate()
                    times[label].append(time.perf_counter() - started)
            for label, runner in runners.items():
                ordered = sorted(times[label])
                print(
                    f"  {engine_class.name:<20} {label:<18} median {median_ms(ordered):7.2f} ms"
                    f"   p90 {ordered[int(len(ordered) * 0.9)] * 1000:7.2f} ms"
                    f"   private rows {len(verdicts[engine_class.name, label])}"
                )
                runner.close()
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
        if len(set(verdicts.values())) != 1:
            print("the engines or policy sets DISAGREE on the private rows:")
            for (engine_name, label), hidden in verdicts.items():
                print(f"  {engine_name} {label}: {sorted(hidden)[:20]} ...")
            return 1
        print("every engine and policy set gives the same private rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
