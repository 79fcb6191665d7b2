"""A problem with a policy set, located so an editor can jump to it (``file:line:col``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from veil.policy.embedded import first_line

_LOCATION = re.compile(r"-->\s*(?P<path>.+?):(?P<line>\d+):(?P<col>\d+)")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy set, where an editor can jump to it."""

    path: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"


def problem_from(exc: BaseException, path: str) -> Problem:
    """A Problem from a regorus error, whose text holds ``--> file:line:col`` and ``error:``."""
    text = first_line(exc)
    found = _LOCATION.search(text)
    errors = [
        line[len("error:") :].strip() for line in text.splitlines() if line.startswith("error:")
    ]
    message = errors[-1] if errors else text.splitlines()[0]
    if found:
        return Problem(
            found.group("path"), int(found.group("line")), int(found.group("col")), message
        )
    return Problem(path, 1, 1, message)


def is_fatal(exc: BaseException) -> bool:
    """Errors to re-raise when catching everything regorus throws (its panics included)."""
    return isinstance(exc, (KeyboardInterrupt, SystemExit))
