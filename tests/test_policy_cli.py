"""`veil policy test|check|eval` on good and broken policy sets built in temporary directories,
coverage that counts what the engine leaves out, and the documented FileDownloaded example."""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from veil.app import create_app
from veil.cli import main
from veil.policy import load_modules
from veil.policytools.check import check_modules
from veil.policytools.testing import run_tests

from conftest import ADMIN, POLICIES, ROOT, LoopbackStore, activity, auth, ids, iso, make_config
from opa_server import require_opa_bindings

EXAMPLES = ROOT / "docs" / "examples"
HEADER = "package veil.privacy\n\nimport rego.v1\n\n"
# The shipped policy's files (policies/veil/privacy/, tests aside).
SHIPPED_FILES = [
    "built_in_groups.rego",
    "decision.rego",
    "private_windows.rego",
    "reveal.rego",
    "unreadable_rows.rego",
    "windows.rego",
]
TEST_HEADER = "package veil.privacy_test\n\nimport rego.v1\n\nimport data.veil.privacy\n\n"


def policy_set(tmp_path: Path, extra: dict[str, str] | None = None, shipped: bool = True) -> Path:
    target = tmp_path / "policies"
    if shipped:
        shutil.copytree(POLICIES, target, ignore=shutil.ignore_patterns("*.md"))
    else:
        (target / "veil" / "privacy").mkdir(parents=True)
    for name, text in (extra or {}).items():
        path = target / "veil" / "privacy" / name
        path.write_text(text)
    return target


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["policy", *argv])
    return code, capsys.readouterr().out


# ---- veil policy test ------------------------------------------------------------------


def test_shipped_policies_pass_with_full_coverage(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "test", "--coverage", "--threshold", "100", str(POLICIES))
    assert code == 0, out
    lines = out.splitlines()
    assert all(
        re.fullmatch(r"PASS data\.veil\.privacy_test\.test_\w+ \(\d+\.\d ms\)", line)
        for line in lines
        if line.startswith(("PASS", "FAIL", "ERROR"))
    )
    for name in SHIPPED_FILES:  # one line per policy file, each at 100%
        assert re.search(rf"^coverage .*/{name}: 100\.0% \((\d+)/\1 lines\)$", out, re.M), name
    assert re.search(r"^coverage total: 100\.0% \((\d+)/\1 lines\)$", out, re.M)
    summary = re.search(r"^(\d+) passed, 0 failed$", out, re.M)
    assert summary and int(summary.group(1)) >= 40


def test_failing_test_fails_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = policy_set(
        tmp_path,
        {
            "wrong_test.rego": TEST_HEADER
            + (
                "test_everything_is_private_fails if {\n"
                '\tprivacy.private_rows == {0} with input as {"rows": []}\n}\n'
            )
        },
    )
    code, out = run(capsys, "test", str(directory))
    assert code == 1
    assert re.search(
        r"^FAIL data\.veil\.privacy_test\.test_everything_is_private_fails "
        r"\(\d+\.\d ms\): undefined \(.*wrong_test\.rego:7\)$",
        out,
        re.M,
    )
    assert re.search(r"^\d+ passed, 1 failed$", out, re.M)


def test_erroring_test_is_reported_and_later_tests_still_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = policy_set(
        tmp_path,
        {
            "aa_error_test.rego": TEST_HEADER
            + ('test_aa_type_error if {\n\tto_number("not a number") == 1\n}\n')
        },
    )
    code, out = run(capsys, "test", str(directory))
    assert code == 1
    assert re.search(
        r"^ERROR data\.veil\.privacy_test\.test_aa_type_error .*"
        r"aa_error_test\.rego:\d+:\d+: ",
        out,
        re.M,
    )
    assert "PASS data.veil.privacy_test.test_row_without_actor_is_private" in out


def test_file_that_does_not_parse_fails_without_running_tests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = policy_set(tmp_path, {"broken.rego": HEADER + "private_rows contains i if {\n"})
    code, out = run(capsys, "test", str(directory))
    assert code == 1
    assert re.search(r"^.*broken\.rego:\d+:\d+: \S", out, re.M)
    assert "PASS" not in out


def test_run_selects_tests_by_regex(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "test", "--run", "reveal_refused_for_(expired|ended)", str(POLICIES))
    assert code == 0
    assert [line.split()[1] for line in out.splitlines() if line.startswith("PASS")] == [
        "data.veil.privacy_test.test_reveal_refused_for_expired_session",
        "data.veil.privacy_test.test_reveal_refused_for_ended_session",
    ]
    assert "2 passed, 0 failed" in out


def test_threshold_fails_below_and_an_untested_file_counts_as_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # regorus leaves a file none of whose rules ran out of its report: it must not read 100%.
    directory = policy_set(
        tmp_path,
        {
            "unused.rego": HEADER
            + ('never_used contains i if {\n\tsome i, row in input.rows\n\trow.actor == "x"\n}\n')
        },
    )
    code, out = run(capsys, "test", "--threshold", "100", str(directory))
    assert code == 1
    assert re.search(r"^coverage .*unused\.rego: 0\.0% \(0/\d+ lines\), not covered: 5", out, re.M)
    assert re.search(r"^FAIL coverage \d+\.\d% is below the threshold 100%$", out, re.M)


def test_unconditional_else_that_no_test_reaches_is_not_covered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # window_of's `else := [start, forever]` is taken only for an open interval.
    code, out = run(capsys, "test", "--coverage", "--run", "after_group_was_removed", str(POLICIES))
    assert code == 0
    else_line = next(
        n
        for n, line in enumerate(
            (POLICIES / "veil/privacy/windows.rego").read_text().splitlines(), start=1
        )
        if line.startswith("else :=")
    )
    assert else_line in not_covered(out, "windows.rego")
    code, out = run(capsys, "test", "--coverage", "--run", "after_start_is_private", str(POLICIES))
    assert code == 0
    assert else_line not in not_covered(out, "windows.rego")


def not_covered(out: str, file: str) -> set[int]:
    """The lines of ``file`` that a ``--coverage`` report lists as not covered."""
    found = re.search(
        rf"/{re.escape(file)}: [\d.]+% \(\d+/\d+ lines\)(?:, not covered: (.*))?$", out, re.M
    )
    assert found, out
    lines: set[int] = set()
    for part in found.group(1).split(", ") if found.group(1) else []:
        first, _, last = part.partition("-")
        lines.update(range(int(first), int(last or first) + 1))
    return lines


def test_coverage_counts_lines_once_across_tests(tmp_path: Path) -> None:
    modules = load_modules(POLICIES)
    report = run_tests(modules, coverage=True).coverage
    assert report is not None
    assert sorted(Path(policy.path).name for policy in report) == sorted(SHIPPED_FILES)
    for policy in report:
        assert not policy.covered & policy.not_covered
        assert policy.total == len(policy.covered | policy.not_covered)


# ---- veil policy check -----------------------------------------------------------------


def test_check_passes_on_the_shipped_policies(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "check", str(POLICIES))
    assert code == 0
    assert out.startswith("ok: ")


def test_check_reports_syntax_errors_as_file_line_col(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = policy_set(tmp_path, {"broken.rego": HEADER + "x := {\n\n"})
    code, out = run(capsys, "check", str(directory))
    assert code == 1
    path = directory / "veil" / "privacy" / "broken.rego"
    assert re.search(rf"^{re.escape(str(path))}:\d+:\d+: expecting expression$", out, re.M)


def test_check_refuses_rego_v0_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = policy_set(
        tmp_path,
        {"old.rego": ('package veil.privacy\n\nprivate_rows[i] { input.rows[i].actor == "x" }\n')},
    )
    code, out = run(capsys, "check", str(directory))
    assert code == 1
    assert re.search(r"old\.rego:3:\d+: this file is Rego v0 syntax; Veil needs Rego v1", out)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ("__builtin_sets.union({1}, {2}) == {1, 2}", "that OPA does not have"),
        ('crypto.sha256(row.id) != ""', "does not implement"),
        ("any([true])", "deprecated built-in"),
        ('re_match("^a", row.id)', "deprecated built-in"),
        # An OPA built-in newer than OPA 1.0 (capabilities.json), which regorus lacks.
        ('strings.split_n(row.id, "@", 2) == []', "does not implement"),
        ("no_such_function(row)", "neither a built-in nor a function"),
        ('http.send({"method": "GET", "url": row.id}).status_code == 200', "leaves undefined"),
    ],
)
def test_check_refuses_builtins_one_engine_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], call: str, expected: str
) -> None:
    directory = policy_set(
        tmp_path,
        {
            "extra.rego": HEADER
            + (f"private_rows contains i if {{\n\tsome i, row in input.rows\n\t{call}\n}}\n")
        },
    )
    code, out = run(capsys, "check", str(directory))
    assert code == 1
    assert re.search(rf"extra\.rego:7:5: '[\w.]+' .*{expected}", out), out


def test_user_functions_and_imported_ones_are_not_builtins(tmp_path: Path) -> None:
    helper = "package veil.helpers\n\nimport rego.v1\n\nshout(s) := upper(s)\n"
    directory = policy_set(
        tmp_path,
        {
            "helpers.rego": helper,
            "uses.rego": HEADER
            + (
                "local(r) := r.actor\n\nprivate_rows contains i if {\n\tsome i, row in input.rows\n"
                '\tlocal(row) == "x"\n\tdata.veil.helpers.shout("a") == "A"\n}\n'
            ),
        },
    )
    assert check_modules(load_modules(directory)) == []


@pytest.mark.parametrize("missing", ["decision", "private_rows"])
def test_check_requires_the_entry_points(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], missing: str
) -> None:
    rules = {
        "decision": 'decision := {"private_rows": set(), "reveal": false, "refusals": set()}\n',
        "private_rows": "private_rows contains 0 if false\n",
    }
    text = HEADER + "".join(rule for name, rule in rules.items() if name != missing)
    directory = policy_set(tmp_path, {"main.rego": text}, shipped=False)
    code, out = run(capsys, "check", str(directory))
    assert code == 1
    assert f"no rule defines data.veil.privacy.{missing}, an entry point" in out


def test_check_finds_errors_that_show_only_at_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = policy_set(
        tmp_path,
        {
            "unsafe.rego": HEADER
            + (
                "private_rows contains i if {\n\tsome i, row in input.rows\n"
                "\tnot_bound == row.actor\n}\n"
            )
        },
    )
    code, out = run(capsys, "check", str(directory))
    assert code == 1
    assert re.search(r"unsafe\.rego:7:5: use of undefined variable `not_bound` is unsafe", out)


def test_check_refuses_a_malformed_decision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = policy_set(
        tmp_path,
        {
            "main.rego": HEADER
            + (
                'decision := {"private_rows": ["everything"], "reveal": false, '
                '"refusals": set()}\n\n'
                "private_rows contains 0 if false\n"
            )
        },
        shipped=False,
    )
    code, out = run(capsys, "check", str(directory))
    assert code == 1
    assert "data.veil.privacy.decision must be an object" in out


def test_check_refuses_rules_read_through_an_import_alias(tmp_path: Path) -> None:
    lib = 'package veil.lib\n\nimport rego.v1\n\nflagged contains "x@contoso.com"\n'
    directory = policy_set(
        tmp_path,
        {
            "lib.rego": lib,
            "uses_lib.rego": HEADER
            + (
                "import data.veil.lib\n\nprivate_rows contains i if {\n"
                "\tsome i, row in input.rows\n"
                "\trow.actor in lib.flagged\n}\n"
            ),
        },
    )
    problems = check_modules(load_modules(directory))
    assert [p.message.split(" instead")[0] for p in problems] == ["write data.veil.lib.<rule>"]


def test_tests_see_every_file_of_a_package_through_an_import_alias(tmp_path: Path) -> None:
    # regorus 0.13 drops forward-referencing rules of a package's later files when the package
    # is read through an alias; a file sorting before the shipped ones must not break their tests.
    directory = policy_set(
        tmp_path,
        {
            "aaa_first.rego": HEADER
            + (
                "private_rows contains i if {\n\tsome i, row in input.rows\n"
                '\trow.actor == "zed@x"\n}\n'
            )
        },
    )
    run_ = run_tests(load_modules(directory))
    assert run_.results and run_.ok, [r.detail for r in run_.results if not r.passed]


# ---- veil policy eval ------------------------------------------------------------------


def test_eval_explains_each_private_row(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(
        capsys,
        "eval",
        str(POLICIES),
        "--input",
        str(EXAMPLES / "eval-input.json"),
        "--data",
        str(EXAMPLES / "eval-data.json"),
    )
    assert code == 0, out
    assert out.splitlines()[0] == (
        'decision: {"private_rows": [0, 2], "refusals": [], "reveal": false}'
    )
    assert "2 of 4 row(s) private; reveal not allowed" in out
    r1 = (POLICIES / "veil/privacy/private_windows.rego").read_text().splitlines()
    r2 = (POLICIES / "veil/privacy/unreadable_rows.rego").read_text().splitlines()
    window = next(
        n
        for n, line in enumerate(r1, 1)
        if line.startswith("private_rows contains") and "private_window" in line
    )
    no_actor = next(
        n
        for n, line in enumerate(r2, 1)
        if line.startswith("private_rows contains") and "without_actor" in line
    )
    assert re.search(
        rf'row 0 \(id "act-0", actor "ann@contoso.com" \(user\), .*\) is private '
        rf"because of:\n  .*/private_windows\.rego:{window}  R1: .*\n      "
        r"private_rows contains i if some i in rows_in_private_window\n",
        out,
    )
    assert re.search(
        rf"row 2 .* is private because of:\n  .*/unreadable_rows\.rego:{no_actor}"
        r"  R2: ",
        out,
    )
    assert "row 1 " not in out and "row 3 " not in out


def test_eval_json_and_defaults_for_a_partial_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    partial = tmp_path / "input.json"
    partial.write_text(
        json.dumps({"rows": [{"id": "x", "actor": None, "actor_type": "user", "ts_ns": 1}]})
    )
    code, out = run(capsys, "eval", str(POLICIES), "--input", str(partial), "--json")
    assert code == 0
    document = json.loads(out)
    assert document["decision"]["private_rows"] == [0]
    assert document["failed_closed"] is False
    (reason,) = document["reasons"]["0"]
    assert reason["file"].endswith("unreadable_rows.rego")
    assert "rows_without_actor" in reason["source"]


def test_eval_of_an_undefined_decision_says_it_fails_closed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = policy_set(
        tmp_path,
        {
            "main.rego": HEADER
            + ("decision := d if input.never\n\nd := 1\n\nprivate_rows contains 0 if false\n")
        },
        shipped=False,
    )
    code, out = run(capsys, "eval", str(directory), "--input", str(EXAMPLES / "eval-input.json"))
    assert code == 1
    assert "Veil would hide every row and refuse any reveal (fail closed)" in out


# ---- the worked example of policies/README.md ------------------------------------------


@pytest.fixture
def with_example(tmp_path: Path) -> Path:
    directory = policy_set(tmp_path)
    for name in ("file_downloads.rego", "file_downloads_test.rego"):
        shutil.copy(EXAMPLES / name, directory / "veil" / "privacy" / name)
    return directory


def test_example_is_not_loaded_by_default() -> None:
    assert not list(POLICIES.rglob("file_downloads*.rego"))
    assert EXAMPLES.resolve() not in {p.resolve() for p in POLICIES.parents}


def test_example_checks_passes_and_keeps_full_coverage(
    with_example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "check", str(with_example))[0] == 0
    code, out = run(capsys, "test", "--coverage", "--threshold", "100", str(with_example))
    assert code == 0, out
    assert "PASS data.veil.privacy_test.test_file_download_is_private" in out
    assert re.search(r"file_downloads\.rego: 100\.0%", out)


def test_example_is_explained_by_eval(
    with_example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(
        capsys,
        "eval",
        str(with_example),
        "--input",
        str(EXAMPLES / "eval-input.json"),
        "--data",
        str(EXAMPLES / "eval-data.json"),
    )
    assert code == 0
    assert re.search(
        r'row 1 \(id "act-1".*\n  .*file_downloads\.rego:\d+  Every FileDownloaded '
        r"activity is private\n",
        out,
    )


def test_example_hides_file_downloads_through_veil(
    with_example: Path, store: LoopbackStore, storage_url: str
) -> None:
    app = create_app(make_config(store.url, storage_url, policy={"dir": str(with_example)}))
    now = iso(time.time_ns())
    store.state.rows = [
        activity(1, "carl@contoso.com", now),
        activity(2, "carl@contoso.com", now, activity="FileDownloaded"),
    ]
    try:
        assert ids(app.test_client().get("/api/activities", headers=auth(ADMIN))) == ["act-1"]
    finally:
        app.extensions["veil"].storage.close()


# ---- OPA's own evaluator (opa-golib-python-bindings) ----------------------------------

OPA_ONLY_ERROR = HEADER + "unused_helper(x) := upper(1)\n"


def test_check_also_compiles_with_opa(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A type error in a function nothing calls: regorus never sees it, OPA's compiler does."""
    require_opa_bindings()
    code, out = run(capsys, "check", str(POLICIES))
    assert code == 0 and "OPA's evaluator compiles and evaluates them too" in out
    directory = policy_set(tmp_path, {"helper.rego": OPA_ONLY_ERROR})
    code, out = run(capsys, "check", str(directory))
    assert code == 1
    assert re.search(r"helper\.rego:5:1: OPA: rego_type_error: upper: invalid argument", out), out


def test_check_without_opa_says_it_did_not_compile_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "opa_bindings", None)  # import fails: not installed
    directory = policy_set(tmp_path, {"helper.rego": OPA_ONLY_ERROR})
    code, out = run(capsys, "check", str(directory))
    assert code == 0
    assert "note: OPA's evaluator is not installed, so the set was not compiled with OPA" in out


def test_opa_coverage_runs_the_tests_on_opa_and_reports_its_coverage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_opa_bindings()
    code, out = run(capsys, "test", "--coverage", "--opa-coverage", str(POLICIES))
    assert code == 0, out
    for name in SHIPPED_FILES:
        assert re.search(rf"^OPA coverage .*/{name}: 100\.0% \((\d+)/\1 lines\)$", out, re.M), name
    passed = re.search(r"^(\d+) passed, 0 failed$", out, re.M)
    assert passed and f"on OPA's evaluator: {passed.group(1)} passed, 0 failed" in out
    directory = policy_set(
        tmp_path,
        {
            "wrong_test.rego": TEST_HEADER
            + (
                "test_nothing_is_private_wrongly if {\n"
                '\tprivacy.private_rows == {0} with input as {"rows": []}\n}\n'
            ),
            "extra.rego": HEADER + "never_used := 1 if input.never\n",
        },
    )
    code, out = run(capsys, "test", "--opa-coverage", str(directory))
    assert code == 1
    assert re.search(
        r"^FAIL data\.veil\.privacy_test\.test_nothing_is_private_wrongly: "
        r"undefined on OPA \(.*wrong_test\.rego:7\)$",
        out,
        re.M,
    ), out
    assert re.search(
        r"^OPA coverage .*extra\.rego: 0\.0% \(0/1 lines\), not covered: 5$", out, re.M
    ), out
    assert "on OPA's evaluator: " in out and " 1 failed" in out


def test_the_documented_example_matches_what_the_demo_store_emits() -> None:
    """An author who follows the docs against `veil demo` sees the rule take effect."""
    from veil.demo.store import create_store_app

    store = create_store_app(seed=7).test_client()
    named = set()
    for document in (
        EXAMPLES / "file_downloads.rego",
        EXAMPLES / "eval-input.json",
        ROOT / "policies" / "README.md",
        ROOT / "README.md",
    ):
        named |= set(re.findall(r'activity\\?"?\s*(?:==|:)\s*\\?"(\w+)\\?"', document.read_text()))
    assert "FileDownloaded" in named
    for name in named:
        answer = store.get(f"/api/activities?activity={name}&limit=1")
        assert answer.status_code == 200 and answer.get_json()["data"], name


def test_eval_gives_rows_the_defaults_veil_gives_so_r2_fires(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A row without ts_ns (or actor) is one Veil could not read: private, as in Veil."""
    partial = tmp_path / "input.json"
    partial.write_text(
        json.dumps(
            {
                "rows": [
                    {"id": "no-time", "actor": "ann@contoso.com"},
                    {"id": "no-actor", "ts_ns": 1704067200000000000},
                    {"id": "fine", "actor": "ann@contoso.com", "ts_ns": 1704067200000000000},
                ]
            }
        )
    )
    code, out = run(capsys, "eval", str(POLICIES), "--input", str(partial), "--json")
    assert code == 0
    document = json.loads(out)
    assert document["decision"]["private_rows"] == [0, 1]
    assert "rows_without_timestamp" in document["reasons"]["0"][0]["source"]
    assert "rows_without_actor" in document["reasons"]["1"][0]["source"]
