"""Where Veil's state is kept: the transaction and backend protocols, and opening a store.

A ``Backend`` (``sqlite``, ``postgres``) runs SQL in transactions and knows no rule; the
rules are ``veil.storage.state.Storage``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from veil.errors import StorageError
from veil.storage.state import Storage

if TYPE_CHECKING:
    from veil.config import GovernanceConfig


class Tx(Protocol):
    """One open transaction; SQL uses ``?`` placeholders whatever the backend."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...
    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None: ...
    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the transaction has committed; what it raises, the
        transaction's ``with`` block raises (the commit stands)."""


class Backend(Protocol):
    """A database that runs transactions; writes are serialized (one chain head at a time)."""

    name: str

    def transaction(self, write: bool) -> AbstractContextManager[Tx]: ...
    def close(self) -> None: ...


def open_storage(
    url: str,
    timeout_s: float,
    bootstrap_admins: Sequence[str] = (),
    sealing: GovernanceConfig | None = None,
) -> Storage:
    """The Storage for a ``storage.url``: ``sqlite:///path`` or ``postgresql://...``.

    ``sealing`` (the ``governance`` configuration) gives the key that signs every appended
    record, the public keys verify accepts, and the witness that receives checkpoints.
    """
    backend: Backend
    if url.startswith("sqlite:///"):
        from veil.storage.sqlite import SqliteBackend

        backend = SqliteBackend(url[len("sqlite:///") :], timeout_s)
    elif url.startswith(("postgresql://", "postgres://")):
        try:
            from veil.storage.postgres import PostgresBackend
        except ImportError as exc:
            raise StorageError(
                "storage.url is a PostgreSQL URL but the PostgreSQL driver (psycopg) is not "
                "installed: install Veil with the 'postgres' extra, "
                "pip install 'veil[postgres]'"
            ) from exc

        backend = PostgresBackend(url, timeout_s)
    else:
        raise StorageError(f"unsupported storage URL {url!r}")
    return Storage(backend, bootstrap_admins, sealing)
