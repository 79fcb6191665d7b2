"""OPA's built-ins come from OPA's own capabilities file, shipped in the package, and that file
is the one of the OPA inside the installed evaluator (``opa_bindings``)."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from veil.policytools.capabilities import (
    EMBEDDED_UNDEFINED,
    OPA_VERSION,
    builtin_message,
    embedded_builtins,
    opa_builtins,
)

from opa_server import require_opa_bindings

DEPRECATED = {
    "all",
    "any",
    "cast_array",
    "cast_boolean",
    "cast_null",
    "cast_object",
    "cast_set",
    "cast_string",
    "net.cidr_overlap",
    "re_match",
    "set_diff",
}


def shipped() -> dict[str, Any]:
    text = resources.files("veil.policytools").joinpath("capabilities.json").read_text()
    document: dict[str, Any] = json.loads(text)
    return document


@pytest.fixture(scope="module")
def opa() -> Any:
    return require_opa_bindings()


def test_the_file_is_in_opas_capabilities_format() -> None:
    document = shipped()
    assert set(document) >= {"builtins", "features"}
    assert "rego_v1" in document["features"]
    names = [b["name"] for b in document["builtins"]]
    assert len(names) == len(set(names)) >= 200
    assert all(b["decl"]["type"] == "function" for b in document["builtins"])
    builtins = opa_builtins()
    assert builtins.callable | builtins.deprecated == set(names)
    assert builtins.deprecated == DEPRECATED  # "deprecated": true in the file
    # OPA 1.x has these (strings.split_n and uri.parse came after OPA 1.0), not regorus' own.
    assert {"count", "sprintf", "http.send", "strings.split_n", "uri.parse"} <= builtins.callable
    assert not {"__builtin_sets.union", "no_such"} & set(names)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("count", None),
        ("any", "deprecated built-in"),
        ("http.send", "leaves undefined"),
        ("strings.split_n", "does not implement"),
        ("__builtin_sets.union", "that OPA does not have"),
        ("no_such", "neither a built-in"),
    ],
)
def test_what_each_name_is_told(name: str, expected: str | None) -> None:
    embedded = embedded_builtins()
    assert "http.send" in embedded and "http.send" in EMBEDDED_UNDEFINED
    message = builtin_message(name, embedded)
    if expected is None:
        assert message is None
    else:
        assert message is not None and expected in message


def test_the_file_belongs_to_the_opa_inside_the_installed_evaluator(opa: Any) -> None:
    # A Go library records the versions of the modules it was built from (its build info).
    library = Path(opa.__file__).parent / "libopabridge.so"
    found = set(
        re.findall(
            rb"dep\tgithub\.com/open-policy-agent/opa\tv([0-9][^\t\n]*)", library.read_bytes()
        )
    )
    assert found == {OPA_VERSION.encode()}, (
        f"opa_bindings is built from OPA {found}; ship that release's capabilities file"
    )


def test_opas_evaluator_knows_every_builtin_of_the_file_and_no_other(opa: Any) -> None:
    def told(name: str, arity: int) -> str:
        engine = opa.OpaEngine()
        args = ", ".join(["null"] * arity)
        try:
            engine.add_policy("t.rego", f"package t\n\nimport rego.v1\n\np if {name}({args})\n")
            engine.eval_query("x := data.t.p")
        except opa.OpaError as exc:
            return str(exc.message)
        finally:
            engine.close()
        return ""

    unknown = [
        b["name"]
        for b in shipped()["builtins"]
        if "undefined function" in told(b["name"], len(b["decl"].get("args", [])))
    ]
    assert not unknown, f"OPA's evaluator does not have {unknown}"
    assert "undefined function strings.no_such" in told("strings.no_such", 1)
