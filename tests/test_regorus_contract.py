"""What Veil relies on in regorus (PyPI ``gordon-to-regorus``, pinned exactly in pyproject.toml).

It is a single-author build; Veil matches its error text, walks its AST and works around its
thread binding. A new version must pass this file before the pin moves.
"""

from __future__ import annotations

import json
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

import regorus

from veil.policy.embedded import first_line
from veil.policytools import rego_ast
from veil.policytools.capabilities import EMBEDDED_UNDEFINED, embedded_builtins
from veil.policytools.problems import problem_from

ROOT = Path(__file__).resolve().parent.parent

SOURCE = """package veil.contract

import rego.v1

import data.veil.other as alias

default flag := false

s contains i if {
	some i, v in input.rows
	v.a == "q"
	x := count(input.rows)
	alias.r[i]
}

f(a) := b if {
	b := a + 1
}

p if {
	every k, v in [1] {
		v > k
	}
}

q := 1 if false

else := 2

t := input["rows"]
"""


def ast_of(text: str, path: str = "contract.rego") -> dict[str, Any]:
    engine = regorus.Engine()
    engine.add_policy(path, text)
    modules = json.loads(engine.get_ast_as_json())
    assert isinstance(modules, list) and len(modules) == 1
    assert modules[0]["source"]["file"] == path
    tree: dict[str, Any] = modules[0]["ast"]
    return tree


def test_the_installed_version_is_the_pinned_one() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert f'"gordon-to-regorus=={metadata.version("gordon-to-regorus")}"' in text


def test_errors_are_runtime_errors_with_location_error_line_and_backtrace() -> None:
    engine = regorus.Engine()
    try:
        engine.add_policy("bad.rego", "package x\n\nimport rego.v1\n\np if {\n\t1 +\n}\n")
    except RuntimeError as exc:
        text = str(exc)
    else:
        raise AssertionError("a syntax error was accepted")
    assert "\nStack backtrace:" in text  # first_line cuts there
    assert "--> bad.rego:7:1" in first_line(RuntimeError(text))
    assert "\nerror: expecting expression" in text
    problem = problem_from(RuntimeError(text), "bad.rego")
    assert (problem.path, problem.line, problem.col) == ("bad.rego", 7, 1)
    assert problem.message == "expecting expression"


def test_an_undefined_rule_path_says_not_a_valid_rule_path() -> None:
    engine = regorus.Engine()
    engine.add_policy("a.rego", "package a\n\nimport rego.v1\n\np := 1\n")
    try:
        engine.eval_rule("data.a.nope")
    except RuntimeError as exc:
        assert "not a valid rule path" in str(exc)  # EmbeddedEngine._check matches it
    else:
        raise AssertionError("an unknown rule evaluated")
    assert engine.eval_rule("data.a.p") == 1


def test_v1_is_the_default_and_v0_can_be_asked_for() -> None:
    v0 = "package x\n\np { true }\n"
    engine = regorus.Engine()
    try:
        engine.add_policy("v0.rego", v0)
        raise AssertionError("Rego v0 parsed as v1")
    except RuntimeError:
        pass
    old = regorus.Engine()
    old.set_rego_v0(True)
    old.add_policy("v0.rego", v0)


def test_the_ast_has_the_shape_policytools_walks() -> None:
    tree = ast_of(SOURCE)
    assert rego_ast.ref_path(tree["package"]["refr"]) == "veil.contract"
    assert tree["package"]["span"]["line"] == 1
    imports = tree["imports"]
    assert [rego_ast.ref_path(i["refr"]) for i in imports] == ["rego.v1", "data.veil.other"]
    alias = imports[1]["as"]
    assert SOURCE.encode()[alias["start"] : alias["end"]] == b"alias"
    for imported in imports:
        assert {"line", "col"} <= set(imported["span"])

    kinds = {}
    for rule in tree["rules"]:
        if "Default" in rule:
            kinds[rego_ast.head_name(rule["Default"])] = "Default"
            continue
        kind, head = next(iter(rule["Spec"]["head"].items()))
        kinds[rego_ast.head_name(head)] = kind
        assert {"line", "col", "start", "end"} <= set(
            head["refr"].get("Var", {}).get("span", {}) or rule["Spec"]["span"]
        )
    assert kinds == {
        "flag": "Default",
        "s": "Set",
        "f": "Func",
        "p": "Compr",
        "q": "Compr",
        "t": "Compr",
    }

    nodes = list(rego_ast.walk(tree))
    names = {key for node in nodes for key in node}
    for needed in ("SomeIn", "AssignExpr", "Every", "Call", "RefDot", "RefBrack", "Var"):
        assert needed in names, needed
    call = next(n["Call"] for n in nodes if "Call" in n)
    assert rego_ast.ref_path(call["fcn"]) == "count"
    brack = next(
        n["RefBrack"] for n in nodes if "RefBrack" in n and "String" in n["RefBrack"]["index"]
    )
    assert brack["index"]["String"]["value"] == "rows"
    dot = next(n["RefDot"] for n in nodes if "RefDot" in n)
    assert isinstance(dot["field"], list) and isinstance(dot["field"][1], str)
    some_in = next(n["SomeIn"] for n in nodes if "SomeIn" in n)
    assert some_in["key"]["Var"]["value"] == "i" and some_in["value"]["Var"]["value"] == "v"
    every = next(n["Every"] for n in nodes if "Every" in n)
    assert SOURCE.encode()[every["key"]["start"] : every["key"]["end"]] == b"k"
    func = next(r["Spec"] for r in tree["rules"] if "Func" in r.get("Spec", {}).get("head", {}))
    assert func["head"]["Func"]["args"][0]["Var"]["value"] == "a"
    bodies = next(
        r["Spec"]["bodies"]
        for r in tree["rules"]
        if rego_ast.head_name(next(iter(r.get("Spec", {}).get("head", {"_": {}}).values()))) == "q"
    )
    assert [b["is_else"] for b in bodies] == [False, True]
    assert bodies[1]["assign"]["span"]["end"] > 0 and not (bodies[1]["query"] or {}).get("stmts")
    assert all("stmts" in (b["query"] or {"stmts": []}) for b in bodies)


def test_opa_runtime_lists_the_builtins_and_http_send_is_left_undefined() -> None:
    listed = embedded_builtins()
    assert {"count", "sprintf", "strings.any_suffix_match", "http.send"} <= listed
    engine = regorus.Engine()
    engine.add_policy(
        "h.rego",
        "package h\n\nimport rego.v1\n\n"
        'r := http.send({"method": "GET", "url": "http://127.0.0.1:9/"})\n',
    )
    assert engine.eval_rule("data.h.r") is None  # listed, yet undefined: check refuses it
    assert "http.send" in EMBEDDED_UNDEFINED


def test_sets_come_back_as_python_sets_and_coverage_as_json() -> None:
    engine = regorus.Engine()
    engine.add_policy("c.rego", "package c\n\nimport rego.v1\n\ns contains 1\n\nu := 2 if false\n")
    engine.set_enable_coverage(True)
    assert engine.eval_rule("data.c.s") == {1}
    report = json.loads(engine.get_coverage_report_as_json())
    (entry,) = report["files"]
    assert entry["path"] == "c.rego"
    assert 5 in entry["covered"] and 7 in entry["not_covered"]


def test_an_engine_used_from_another_thread_panics_with_a_base_exception() -> None:
    """Why the embedded engine keeps one interpreter per thread and catches BaseException."""
    engine = regorus.Engine()
    engine.add_policy("a.rego", "package a\n\nimport rego.v1\n\np := 1\n")
    raised: list[BaseException] = []

    def use() -> None:
        try:
            engine.eval_rule("data.a.p")
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=use)
    thread.start()
    thread.join()
    (panic,) = raised
    assert type(panic).__name__ == "PanicException"
    assert type(panic).__module__ == "pyo3_runtime"
    assert not isinstance(panic, Exception)
    assert "unsendable" in str(panic)


def test_data_is_replaced_with_clear_data_and_add_data_json() -> None:
    engine = regorus.Engine()
    engine.add_policy("a.rego", "package a\n\nimport rego.v1\n\np := [input.x, data.y]\n")
    engine.add_data_json('{"y": 2}')
    engine.set_input_json('{"x": 1}')
    assert engine.eval_rule("data.a.p") == [1, 2]
    engine.clear_data()
    engine.add_data_json('{"y": 3}')
    assert engine.eval_rule("data.a.p") == [1, 3]
