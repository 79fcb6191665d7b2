"""The console's web safety: signed session cookies, CSRF tokens, same-origin posts, and the
response headers every page carries (Content-Security-Policy without inline script)."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Request, Response, request, session
from flask.sessions import SecureCookieSessionInterface

COOKIE_NAME = "veil_console"
CSRF_FIELD = "csrf_token"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def is_loopback(host: str) -> bool:
    """Whether a Host header's name is this machine (cookies need no Secure flag there)."""
    name = urlsplit("//" + host).hostname or ""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, Secure unless the console is reached on loopback."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or not is_loopback(request.host)


def configure(app: Flask, secret_key: str, lifetime_s: int) -> None:
    """Sign cookies with the configured key; HttpOnly, SameSite=Lax, scoped to /console."""
    from datetime import timedelta

    app.secret_key = secret_key
    app.session_interface = ConsoleSessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_PATH="/console",
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=lifetime_s),
    )


def csrf_token() -> str:
    """The session's CSRF token, created on first use."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def post_refusal(req: Request) -> str | None:
    """Why a state-changing request must be refused (cross-site, or no valid CSRF token)."""
    site = req.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return (
            f"this form was sent from another site ({site}); console forms only work from "
            "the console itself"
        )
    origin = req.headers.get("Origin")
    if origin is not None and origin != "null" and urlsplit(origin).netloc != req.host:
        return (
            "this form was sent from another origin; console forms only work from the "
            "console itself"
        )
    if origin == "null":
        return (
            "this form was sent from an opaque origin; console forms only work from the "
            "console itself"
        )
    sent = req.form.get(CSRF_FIELD, "")
    expected = session.get("csrf")
    if (
        not isinstance(expected, str)
        or not sent
        or not hmac.compare_digest(sent.encode(), expected.encode())
    ):
        return (
            "the form's CSRF token is missing or does not match your session; reload the "
            "page and try again"
        )
    return None


def harden(response: Response) -> Response:
    """Headers for every console response: CSP, no framing, no sniffing, no caching."""
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"  # "no-referrer" makes Origin null
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def fresh_session(**values: Any) -> None:
    """Start a new session (no fixation): drop everything, then set ``values`` and a new token."""
    session.clear()
    session.permanent = True
    session.update(values)
    session["csrf"] = secrets.token_urlsafe(32)
