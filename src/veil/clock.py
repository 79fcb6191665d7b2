"""Veil's clock: the time now in nanoseconds, and the RFC 3339 text it is stored and shown as."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ns() -> int:
    return time.time_ns()


def rfc3339(ns: int) -> str:
    """UTC, microseconds, fixed width: sorts as text in time order."""
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
