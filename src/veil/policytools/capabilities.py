"""Which built-in functions each engine has: OPA's, from its capabilities file, and the
embedded engine's (regorus), as it lists them. A policy may call only built-ins of both, so
that it runs the same on both engines.

``capabilities.json`` beside this module is OPA's own capabilities file for OPA v1.20.2, the
OPA release that ``opa-golib-python-bindings`` 0.4.4 (``opa_bindings``, OPA's Go evaluator,
the reference in the tests) is built from: OPA embeds its ``capabilities/*.json`` in the
library, and this is the library's ``v1.20.2.json``, byte for byte the file
``capabilities/v1.20.2.json`` of open-policy-agent/opa (95,783 bytes, sha256 538a17e6...).
To move to another OPA, copy that release's ``capabilities/v<version>.json`` here and change
``OPA_VERSION``; ``tests/test_policy_capabilities.py`` checks the file against the installed
evaluator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

import regorus

OPA_VERSION = "1.20.2"  # the OPA release capabilities.json was written by

# Listed by the embedded engine's ``opa.runtime()`` but evaluated as undefined there (regorus
# 0.13 has no HTTP client): a rule calling one would silently never hold on the embedded
# engine while it holds on OPA. Refused by ``check``.
EMBEDDED_UNDEFINED = frozenset({"http.send"})

# Called by the interpreter for ``print``; not listed by ``opa.runtime()``.
_EMBEDDED_SPECIAL = frozenset({"print"})


@dataclass(frozen=True)
class OpaBuiltins:
    """OPA's built-ins: those a Rego v1 policy may call, and the deprecated ones, which OPA
    1.x refuses in Rego v1 (``"deprecated": true`` in the capabilities file)."""

    callable: frozenset[str]
    deprecated: frozenset[str]


@cache
def opa_builtins() -> OpaBuiltins:
    """The built-ins of ``capabilities.json`` (OPA's format: ``{"builtins": [{"name", "decl",
    "deprecated"?}, ...]}``)."""
    text = resources.files("veil.policytools").joinpath("capabilities.json").read_text("utf-8")
    listed = json.loads(text)["builtins"]
    deprecated = frozenset(b["name"] for b in listed if b.get("deprecated"))
    return OpaBuiltins(frozenset(b["name"] for b in listed) - deprecated, deprecated)


def embedded_builtins() -> frozenset[str]:
    """The built-ins the embedded engine implements, as it lists them in ``opa.runtime()``."""
    engine = regorus.Engine()
    engine.add_policy("builtins.rego", "package veil_builtins\n\nruntime := opa.runtime()\n")
    runtime = engine.eval_rule("data.veil_builtins.runtime")
    return frozenset(runtime.get("builtins", [])) | _EMBEDDED_SPECIAL


def builtin_message(name: str, embedded: frozenset[str]) -> str | None:
    """Why a policy may not call the built-in ``name``; None when both engines evaluate it."""
    opa = opa_builtins()
    if name in opa.deprecated:
        return f"'{name}' is a deprecated built-in that OPA 1.x refuses in Rego v1"
    if name not in opa.callable:
        if name in embedded:
            return (
                f"'{name}' is a built-in of the embedded engine (regorus) that OPA does "
                "not have; the policy must stay valid for OPA"
            )
        return f"'{name}' is neither a built-in nor a function defined in these policies"
    if name not in embedded:
        return (
            f"'{name}' is an OPA built-in that the embedded engine (regorus) does not "
            "implement; use only built-ins both engines have"
        )
    if name in EMBEDDED_UNDEFINED:
        return (
            f"'{name}' is an OPA built-in that the embedded engine (regorus) leaves "
            "undefined (a rule calling it never holds there); use only built-ins both "
            "engines evaluate"
        )
    return None
