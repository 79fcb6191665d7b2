"""Who is calling: a verified JWT, or a trusted gateway header; and whether they are an admin."""

from __future__ import annotations

import hmac
import time
from typing import Any, Protocol

import jwt

from veil import principal as principals
from veil.config import IdentityConfig
from veil.errors import ConfigError, Unauthenticated

ASYMMETRIC = ("RS256", "ES256")
VERIFIED_TOKENS = 4096  # tokens whose signature and claims were checked, kept per process


class Headers(Protocol):
    """Request headers, looked up case-insensitively (werkzeug's Headers fits)."""

    def get(self, key: str, default: str) -> str: ...


def normalize_principal(value: str, field: str = "principal") -> str:
    """The principal's comparison key (``veil.principal.normalize``); 400 naming ``field``."""
    return principals.normalize(value, field)


def _identified(value: str, source: str) -> str:
    """The principal from an identity source; one that is not a valid principal is a 401."""
    normalized = principals.key(value)
    if normalized is None:
        raise Unauthenticated(
            f"the principal in {source} is not valid: "
            f"{principals.problem(value)}; it is refused, never trimmed"
        )
    return normalized


class Authenticator:
    """Turns a request's headers into a principal, or raises Unauthenticated."""

    def __init__(self, config: IdentityConfig) -> None:
        self.config = config
        self._keys: dict[str, Any] = {}
        self._algorithms: list[str] = []
        # token -> (principal, usable from, expires): a token verified once is not verified
        # again while its time claims hold (keys, issuer and audience are fixed at start-up).
        self._verified: dict[str, tuple[str, float, float]] = {}
        if config.mode == "jwt":
            if config.jwt.hs256_secret is not None:
                self._algorithms.append("HS256")
            if config.jwt.jwks is not None:
                try:
                    keyset = jwt.PyJWKSet.from_dict(config.jwt.jwks)
                except jwt.PyJWKSetError as exc:
                    raise ConfigError(f"identity.jwt.jwks_file: {exc}") from exc
                for key in keyset.keys:
                    if key.algorithm_name not in ASYMMETRIC:
                        raise ConfigError(
                            f"identity.jwt.jwks_file: key {key.key_id!r} uses "
                            f"{key.algorithm_name}; only {', '.join(ASYMMETRIC)} are accepted"
                        )
                    self._keys[key.key_id or ""] = key
                    self._algorithms.append(key.algorithm_name)

    def principal(self, headers: Headers) -> str:
        if self.config.mode == "header":
            return self._from_gateway(headers)
        return self._from_jwt(headers)

    def _from_gateway(self, headers: Headers) -> str:
        presented = headers.get(self.config.secret_header, "")
        expected = self.config.shared_secret or ""
        if not expected or not hmac.compare_digest(presented.encode(), expected.encode()):
            raise Unauthenticated(
                f"the gateway secret header {self.config.secret_header} is missing or wrong"
            )
        user = headers.get(self.config.header, "")
        if not user:
            raise Unauthenticated(f"the identity header {self.config.header} is missing or empty")
        return _identified(user, f"the header {self.config.header}")

    def _from_jwt(self, headers: Headers) -> str:
        auth = headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("send 'Authorization: Bearer <JWT>'")
        token = token.strip()
        known = self._verified.get(token)
        if known is not None:
            principal, usable_from, expires = known
            now, leeway = time.time(), self.config.jwt.leeway_s
            if usable_from <= now + leeway and now - leeway < expires:
                return principal
        return self._verify(token)

    def _verify(self, token: str) -> str:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the bearer token is not a JWT: {exc}") from exc
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise Unauthenticated(f"token algorithm {alg!r} is not accepted")
        key: Any
        if alg == "HS256":
            key = self.config.jwt.hs256_secret
        else:
            jwk = self._keys.get(header.get("kid") or "")
            if jwk is None and len(self._keys) == 1 and not header.get("kid"):
                jwk = next(iter(self._keys.values()))
            if jwk is None:
                raise Unauthenticated(f"no key with kid {header.get('kid')!r} in the JWKS")
            if jwk.algorithm_name != alg:
                raise Unauthenticated(f"token algorithm {alg!r} does not match its key")
            key = jwk.key
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                issuer=self.config.jwt.issuer,
                audience=self.config.jwt.audience,
                leeway=self.config.jwt.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("the token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthenticated("the token's audience is not accepted") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthenticated("the token's issuer is not accepted") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the token is invalid: {exc}") from exc
        unverified = False
        for claim in self.config.principal_claims:
            value = claims.get(claim)
            if not isinstance(value, str) or not value:
                continue
            if claim == "email" and claims.get("email_verified") is not True:
                unverified = True  # an unverified address names nobody: anyone can claim it
                continue
            principal = _identified(value, f"the token's {claim!r} claim")
            self._remember(token, principal, claims)
            return principal
        raise Unauthenticated(
            f"the token carries none of the principal claims {list(self.config.principal_claims)}"
            + (" (its 'email' is not used: 'email_verified' is not true)" if unverified else "")
        )

    def _remember(self, token: str, principal: str, claims: dict[str, Any]) -> None:
        """Keep a verified token with the times it may be used in (``exp``, ``nbf``, ``iat``)."""
        try:
            expires = float(claims["exp"])
            usable_from = max(float(claims.get(name, 0) or 0) for name in ("nbf", "iat"))
        except (TypeError, ValueError):
            return
        if len(self._verified) >= VERIFIED_TOKENS:
            self._verified.pop(next(iter(self._verified), ""), None)
        self._verified[token] = (principal, usable_from, expires)
