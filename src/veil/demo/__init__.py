"""The demo: a synthetic activity store with Veil in front of it (``veil demo``).

The store also runs on its own, for a compose file or a Veil started by hand:
``python -m veil.demo.store --port 9000``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Demo", "DemoSettings", "run_demo"]

if TYPE_CHECKING:
    from veil.demo.runner import Demo, DemoSettings, run_demo
else:

    def __getattr__(name: str) -> Any:
        # Imported on first use, so ``python -m veil.demo.store`` does not load the store
        # module twice (once through the runner, once as __main__).
        if name in __all__:
            from veil.demo import runner

            return getattr(runner, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
