"""What a view reaches through the app: its services, the caller, the admin check.

Blueprints import these from here, never from the app factory (``veil.app``), which imports
the blueprints: flaskr keeps ``get_db`` in ``db.py`` the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, g

from veil.config import Config
from veil.errors import Forbidden
from veil.filtering import QueryService
from veil.identity import Authenticator
from veil.metrics import Metrics
from veil.policy import Engine
from veil.storage import Storage
from veil.upstream import Upstream


@dataclass
class Services:
    """The subsystems ``create_app`` wires, one set per app (``app.extensions["veil"]``)."""

    config: Config
    storage: Storage
    engine: Engine
    upstream: Upstream
    auth: Authenticator
    metrics: Metrics
    query: QueryService


def services() -> Services:
    """The current app's services."""
    found: Services = current_app.extensions["veil"]
    return found


def caller() -> str:
    """The request's principal, as identity authenticated it."""
    principal: str = g.principal
    return principal


def require_admin() -> str:
    """The caller, if an admin; Forbidden otherwise."""
    principal = caller()
    if not services().storage.is_admin(principal):
        raise Forbidden(f"{principal} is not an admin; this call needs an admin")
    return principal
