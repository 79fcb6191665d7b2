"""Veil's store: management state, reveal sessions and the governance log, in one database.

    backend      the Tx and Backend protocols, and ``open_storage`` for a ``storage.url``
    state        ``Storage``: every rule about the management state, audited as it changes
    directory    SCIM-provisioned users and groups
    migrations   the schema, versioned
    sqlite       the SQLite backend (default: a file, nothing to run)
    postgres     the PostgreSQL backend (several replicas, one chain)

The governance log itself (append, read, verify) is ``veil.governance``.
"""

from __future__ import annotations

from veil.storage.backend import Backend, Tx, open_storage
from veil.storage.state import Storage

__all__ = ["Backend", "Storage", "Tx", "open_storage"]
