"""Veil: a policy-as-code authorization sidecar for activity logs."""

from __future__ import annotations

__version__ = "0.1.0"
