"""A small OpenID Connect provider on loopback for the console's sign-in tests: discovery,
authorize (code flow, PKCE S256 required), token (client_secret_basic), and JWKS, with RS256
ID tokens. Each authorize signs in ``user`` (set by the test) at once."""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, Response, jsonify, redirect, request
from werkzeug.serving import BaseWSGIServer, make_server


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    user: str


@dataclass
class LoopbackIdP:
    """The provider; ``user`` is who the next authorize signs in."""

    client_id: str = "veil-console"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    user: str = "alice@contoso.com"
    issuer: str = ""
    token_issuer: str = ""  # the ID token's "iss"; a test sets another to forge one
    seen: list[dict[str, Any]] = field(default_factory=list)  # authorize and token requests

    def __post_init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "test-key"
        self.grants: dict[str, Grant] = {}
        app = Flask("test-idp")

        @app.get("/.well-known/openid-configuration")
        def discovery() -> Response:
            return jsonify(
                issuer=self.issuer,
                authorization_endpoint=self.issuer + "/authorize",
                token_endpoint=self.issuer + "/token",
                jwks_uri=self.issuer + "/jwks",
                response_types_supported=["code"],
                subject_types_supported=["public"],
                id_token_signing_alg_values_supported=["RS256"],
                code_challenge_methods_supported=["S256"],
                token_endpoint_auth_methods_supported=["client_secret_basic"],
            )

        @app.get("/authorize")
        def authorize() -> Any:
            args = request.args
            self.seen.append({"endpoint": "authorize", **args.to_dict()})
            if args.get("client_id") != self.client_id or args.get("response_type") != "code":
                return Response("bad client or response type", status=400)
            if args.get("code_challenge_method") != "S256" or not args.get("code_challenge"):
                return Response("PKCE S256 is required", status=400)
            code = secrets.token_urlsafe(16)
            self.grants[code] = Grant(
                self.client_id,
                args["redirect_uri"],
                args["code_challenge"],
                args.get("nonce"),
                self.user,
            )
            return redirect(
                args["redirect_uri"]
                + "?"
                + urlencode({"code": code, "state": args.get("state", "")})
            )

        @app.post("/token")
        def token() -> Any:
            form = request.form
            self.seen.append({"endpoint": "token", **form.to_dict()})
            auth = request.authorization
            if (
                auth is None
                or auth.username != self.client_id
                or auth.password != self.client_secret
            ):
                return jsonify(error="invalid_client"), 401
            grant = self.grants.pop(form.get("code", ""), None)
            if (
                grant is None
                or form.get("grant_type") != "authorization_code"
                or form.get("redirect_uri") != grant.redirect_uri
            ):
                return jsonify(error="invalid_grant"), 400
            verifier = form.get("code_verifier", "")
            expected = (
                base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
                .rstrip(b"=")
                .decode()
            )
            if expected != grant.challenge:
                return jsonify(error="invalid_grant", error_description="PKCE failed"), 400
            now = int(time.time())
            claims = {
                "iss": self.token_issuer or self.issuer,
                "aud": self.client_id,
                "sub": grant.user,
                "email": grant.user,
                "iat": now,
                "exp": now + 300,
            }
            if grant.nonce:
                claims["nonce"] = grant.nonce
            id_token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})
            return jsonify(
                access_token=secrets.token_urlsafe(16),
                token_type="Bearer",
                expires_in=300,
                id_token=id_token,
            )

        @app.get("/jwks")
        def jwks() -> Response:
            public = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
            return jsonify(keys=[{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}])

        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.issuer = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
