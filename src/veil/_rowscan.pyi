"""Types of the C extension ``veil._rowscan`` (see its source, ``_rowscan.c``)."""

from collections.abc import Callable
from typing import Any

Span = tuple[int, int]
Member = tuple[str, int, int]
Deferred = tuple[int, int, int]

def scan(
    body: bytes, rows_key: str | None, keys: tuple[str, ...], max_digits: int, /
) -> tuple[int, int, list[Span], tuple[list[Any], ...], list[Deferred], list[Member] | None] | None:
    """The rows of a usual store answer in one pass, or None (then veil.rows reads it)."""

def facts(
    ids: list[Any],
    actors: list[Any],
    kinds: list[Any],
    stamps: list[Any],
    actor_keys: dict[str, str | None],
    kind_names: dict[str, str],
    key_of: Callable[[str], str | None],
    kind_of: Callable[[str], str],
    to_ns: Callable[[Any], int | None],
    user: str,
    /,
) -> tuple[list[Any], list[str | None], list[str], list[int | None], list[int]]:
    """veil.rows.Normalizer's facts of each row from its columns: (ids, actors' keys, kinds,
    times in nanoseconds, indices of ids beyond 64 bits)."""

def private_rows(
    actors: list[Any],
    kinds: list[Any],
    stamps: list[Any],
    table: dict[Any, Any],
    no_actor: bool,
    no_time: bool,
    in_window: bool,
    to_ns: Callable[[Any], int],
    /,
) -> tuple[list[int], list[int]]:
    """veil.policy.decide.RowDecider.match: (private rows, rows whose (kind, actor) the
    table does not hold yet)."""

def join_rows(text: str, spans: list[Span], drop: list[int], /) -> str | None:
    """ "[" + ",".join(text[start:end] for each span not dropped) + "]" for an ASCII text;
    None for another (veil.rows.render joins it)."""
