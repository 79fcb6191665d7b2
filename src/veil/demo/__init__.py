"""The demo: a synthetic activity store with Veil in front of it (``veil demo``)."""

from __future__ import annotations

from veil.demo.runner import Demo, DemoSettings, run_demo

__all__ = ["Demo", "DemoSettings", "run_demo"]
