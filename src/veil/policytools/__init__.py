"""Tools for policy authors: check, test (with coverage) and explain Veil's Rego policies.

One module per responsibility (import from the module, not from this package):

``commands``        ``veil policy check|test|eval``: load the directory, run, print, exit code
``check``           what ``check`` refuses: Rego v0, built-ins one engine lacks, missing entry
                    points, errors regorus shows only at evaluation, and what OPA's evaluator
                    says when it is installed
``testing``         the ``test_*`` rules of ``*_test.rego`` files, on regorus and on OPA
``coverage``        line coverage of the policy files, summed over a test run
``validation``      the gate a policy set passes before Veil serves it (check, then tests)
``explain``         the decision for one input and the ``private_rows`` rule that hid each row
``report``          how results are written for people
``capabilities``    the built-ins of OPA (``capabilities.json``) and of the embedded engine
``parse``           Rego v1 parsing with regorus into ASTs; ``problems``: ``file:line:col``
``rego_ast``        reading regorus' AST (references, rule heads, a walk over every node)
``regorus_compat``  source rewrites that work around regorus 0.13
``opa_evaluator``   OPA's Go evaluator (``opa_bindings``) when installed, and its errors

Start-up and a hot reload run ``validation.validate`` before they let a policy set
replace the running one. Problems are ``file:line:col: message``.
"""

from __future__ import annotations

# The Rego package of Veil's entry points (``data.veil.privacy.decision``, ``private_rows``).
PACKAGE = "veil.privacy"
