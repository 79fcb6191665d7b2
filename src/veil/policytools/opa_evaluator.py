"""OPA's own Go evaluator (``opa_bindings``, PyPI ``opa-golib-python-bindings``) when it is
installed, and its errors as problems."""

from __future__ import annotations

import re
from typing import Any

from veil.policytools.problems import Problem

INSTALL = "pip install --ignore-requires-python opa-golib-python-bindings"

_OPA_ERROR = re.compile(r"(?P<path>[^\s:][^:]*):(?P<line>\d+): (?P<code>rego_\w+): (?P<msg>.*)")


def opa_evaluator() -> Any | None:
    """The ``opa_bindings`` module, or None when it is not installed."""
    try:
        import opa_bindings
    except ImportError:
        return None
    return opa_bindings


def opa_problems(exc: Any) -> list[Problem]:
    """Problems from an ``OpaError`` ("N errors occurred:" then ``file:row: code: msg``)."""
    found = []
    for line in str(exc.message).splitlines():
        match = _OPA_ERROR.search(line)
        if match:
            found.append(
                Problem(
                    match.group("path"),
                    int(match.group("line")),
                    1,
                    f"OPA: {match.group('code')}: {match.group('msg')}",
                )
            )
    return found or [Problem("policies", 1, 1, f"OPA: {exc.code}: {exc.message}")]
