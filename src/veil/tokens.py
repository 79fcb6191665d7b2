"""Development tokens for HS256 set-ups (``veil token``).

A token is an HS256 JWT that the configured ``identity.jwt`` accepts: ``iss`` and ``aud`` from
the configuration, ``exp`` (required by Veil), ``iat``, ``sub`` and the first of
``identity.principal_claims`` set to the principal. Tokens carry no roles: who is an admin is
Veil's own state (``identity.bootstrap_admins`` and the admin registry).
"""

from __future__ import annotations

import time
import unicodedata

import jwt

from veil.config import Config
from veil.errors import ConfigError, VeilError
from veil.identity import normalize_principal

DEFAULT_TTL_S = 3600
MAX_TTL_S = 30 * 86400


def checked_principal(value: str) -> str:
    """A principal as Veil compares it; refuse whitespace and control characters."""
    if not value or any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in value):
        raise VeilError(
            f"{value!r} is not a principal (a UPN or e-mail without whitespace or "
            "control characters)"
        )
    return normalize_principal(unicodedata.normalize("NFC", value))


def mint(
    config: Config, principal: str, ttl_s: int = DEFAULT_TTL_S, now: float | None = None
) -> str:
    """An HS256 token for ``principal`` that this configuration's Veil accepts."""
    jwt_config = config.identity.jwt
    if config.identity.mode != "jwt":
        raise ConfigError(
            "identity.mode: veil token makes JWTs; this configuration uses "
            f"'{config.identity.mode}' mode (the gateway names the caller)"
        )
    if jwt_config.hs256_secret is None:
        raise ConfigError(
            "identity.jwt.hs256_secret_env: veil token signs with the HS256 "
            "secret; this configuration has none (tokens come from your identity "
            "provider, verified with identity.jwt.jwks_file)"
        )
    if not 0 < ttl_s <= MAX_TTL_S:
        raise VeilError(f"--ttl must be between 1 and {MAX_TTL_S} seconds")
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": jwt_config.issuer,
        "aud": jwt_config.audience,
        "sub": principal,
        "iat": issued,
        "exp": issued + ttl_s,
    }
    claims[config.identity.principal_claims[0]] = principal
    return jwt.encode(claims, jwt_config.hs256_secret, algorithm="HS256")
