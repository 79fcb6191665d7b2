"""Types of the C extension ``veil._rowscan`` (see its source, ``_rowscan.c``)."""

from typing import Any

Span = tuple[int, int]
Member = tuple[str, int, int]
Deferred = tuple[int, int, int]

def scan(
    body: bytes, rows_key: str | None, keys: tuple[str, ...], max_digits: int, /
) -> tuple[int, int, list[Span], tuple[list[Any], ...], list[Deferred], list[Member] | None] | None:
    """The rows of a usual store answer in one pass, or None (then veil.rows reads it)."""
