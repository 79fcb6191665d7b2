"""Who is using the console: OpenID Connect (code flow with PKCE, through Authlib), the
gateway's header in ``identity.mode: header``, or the demo's pick-a-user page (``veil demo``
only)."""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from typing import Any

from authlib.integrations.base_client import OAuthError
from authlib.integrations.flask_client import OAuth
from flask import Flask, current_app, session
from werkzeug.wrappers import Response as WerkzeugResponse

from veil import principal as principal_rules
from veil.config import Config
from veil.errors import Unauthenticated

log = logging.getLogger("veil.console")

DEMO_USERS = "veil.console.demo_users"


@dataclass(frozen=True)
class DemoUser:
    """A user the demo's sign-in page offers."""

    principal: str
    name: str
    role: str


def valid_principal(value: Any) -> str:
    """A principal from a sign-in, normalized; whitespace or control characters are refused."""
    if not isinstance(value, str) or not value.strip():
        raise Unauthenticated("the identity provider named no user")
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in value):
        raise Unauthenticated("the signed-in user's name holds whitespace or control characters")
    key = principal_rules.key(value)
    if key is None:
        raise Unauthenticated(
            f"the signed-in user's name is not a principal: {principal_rules.problem(value)}"
        )
    return key


def demo_users(app: Flask) -> tuple[DemoUser, ...]:
    """The demo's users; empty outside ``veil demo`` (which sets them after create_app)."""
    users: tuple[DemoUser, ...] = app.extensions.get(DEMO_USERS, ())
    return users


def enable_demo_sign_in(app: Flask, users: tuple[DemoUser, ...]) -> None:
    """Offer the demo's pick-a-user sign-in; only ``veil demo`` calls this."""
    app.extensions[DEMO_USERS] = users


class OidcSignIn:
    """The authorization code flow with PKCE (S256) against ``identity.oidc``."""

    NAME = "veil"

    def __init__(self, app: Flask, config: Config) -> None:
        oidc = config.identity.oidc
        assert oidc is not None
        self.config = config
        self.oauth = OAuth(app)
        kwargs: dict[str, Any] = {
            "scope": " ".join(oidc.scopes),
            "code_challenge_method": "S256",
            "timeout": 10,
        }
        if oidc.client_secret is None:
            kwargs["token_endpoint_auth_method"] = "none"
        self.oauth.register(
            self.NAME,
            client_id=oidc.client_id,
            client_secret=oidc.client_secret,
            server_metadata_url=f"{oidc.issuer}/.well-known/openid-configuration",
            client_kwargs=kwargs,
        )
        self.redirect_url = oidc.redirect_url

    @property
    def client(self) -> Any:
        return self.oauth.create_client(self.NAME)

    def start(self) -> WerkzeugResponse:
        """Redirect to the provider; state, nonce and the PKCE verifier stay in the session."""
        response: WerkzeugResponse = self.client.authorize_redirect(self.redirect_url)
        return response

    def finish(self) -> str:
        """Exchange the code, check the ID token (issuer, audience, nonce, signature), and
        return the principal."""
        try:
            token = self.client.authorize_access_token()
        except OAuthError as exc:
            raise Unauthenticated(f"sign-in failed: {exc.description or exc.error}") from exc
        except Exception as exc:  # Authlib raises JOSE and requests errors of many kinds
            log.warning("OpenID Connect sign-in failed: %s", type(exc).__name__)
            raise Unauthenticated(
                "sign-in failed: the identity provider's answer could not be verified"
            ) from exc
        claims = token.get("userinfo") or {}
        for claim in self.config.identity.principal_claims:
            if claims.get(claim):
                return valid_principal(claims[claim])
        raise Unauthenticated(
            "the identity provider's ID token carries none of the principal "
            f"claims {list(self.config.identity.principal_claims)}"
        )


def oidc(app: Flask | None = None) -> OidcSignIn | None:
    found: OidcSignIn | None = (app or current_app).extensions.get("veil.console.oidc")
    return found


def signed_in() -> str | None:
    principal = session.get("principal")
    return principal if isinstance(principal, str) else None
