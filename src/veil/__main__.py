"""``python -m veil``: the ``veil`` command line, without the venv's scripts on PATH."""

from __future__ import annotations

import sys

from veil.cli import main

sys.exit(main())
