"""The app factory: wires config, storage, engine, upstream and the blueprints."""

from __future__ import annotations

import logging

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from veil import api, console, health, openapi, policy_reload, proxy, scim
from veil.config import Config
from veil.errors import VeilError, problem
from veil.filtering import QueryService
from veil.identity import Authenticator
from veil.metrics import Metrics
from veil.policy import Engine, create_engine, load_modules
from veil.services import Services, services
from veil.storage import Storage, open_storage
from veil.upstream import Upstream

log = logging.getLogger("veil")

OPEN_ENDPOINTS = frozenset(
    {"health.healthz", "health.readyz", "health.metrics", "openapi.openapi_json"}
)
PROXY_ENDPOINT = "proxy.activities"


def create_app(
    config: Config, *, storage: Storage | None = None, engine: Engine | None = None
) -> Flask:
    app = Flask("veil")
    # R12: a body above the limit is refused (413) before it is read whole, chunked ones too.
    app.config["MAX_CONTENT_LENGTH"] = config.server.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    storage = storage or open_storage(
        config.storage.url,
        config.storage.timeout_s,
        config.identity.bootstrap_admins,
        config.governance,
    )
    sealing = storage.sealing_status()
    if sealing["signed"]:
        log.info(
            "governance log signed with key %s; witness: %s",
            sealing["key_id"],
            sealing["witness"] or "none (set governance.witness)",
        )
        key_file = config.governance.signing_key_file
        if key_file is not None and key_file.stat().st_mode & 0o077:
            log.warning(
                "%s (governance.signing_key_file) is readable by other users; chmod 600 it",
                key_file,
            )
    elif config.governance.witness:
        log.warning(
            "governance.witness is set but governance.signing_key_file is not: this "
            "configuration can verify the log, but its own appends are UNSIGNED and "
            "no checkpoint is written"
        )
    else:
        log.warning(
            "governance log is UNSIGNED (hash chain only): someone who can write the "
            "database can rewrite it undetected; set governance.signing_key_file"
        )
    modules = None
    if engine is None:
        # Read once: the engine serves these, and the hot reload compares the disk against them.
        if not (config.policy.engine == "opa" and config.policy.opa_bundle):
            modules = load_modules(config.policy.dir)
        engine = create_engine(
            config.policy.engine,
            config.policy.dir,
            config.policy.opa_url,
            config.policy.timeout_s,
            config.policy.opa_bundle,
            modules,
        )
    upstream = Upstream(config.upstream)
    metrics = Metrics()
    app.extensions["veil"] = Services(
        config=config,
        storage=storage,
        engine=engine,
        upstream=upstream,
        auth=Authenticator(config.identity),
        metrics=metrics,
        query=QueryService(config, upstream, engine, storage, metrics),
    )
    try:  # data.veil into the engine now (for OPA: data, then policies), not at the first query
        engine.sync(storage.state_version(), lambda: storage.policy_data(config.managed_domains))
    except VeilError as exc:
        log.warning("policy state not loaded at start-up; retried at each query: %s", exc.detail)

    app.register_blueprint(health.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(openapi.blueprint)
    app.register_blueprint(proxy.blueprint)
    scim.init_app(app)  # /scim/v2: group provisioning, with its own bearer token
    policy_reload.init_app(app, modules=modules)  # the API route, file watch, SIGHUP
    if config.console.enabled:
        console.init_app(app, config)

    @app.before_request
    def bounded() -> None:
        """A declared length above the limit is refused at once, whatever the route (SCIM
        applies its own ``scim.max_body_bytes`` the same way, after its token)."""
        length = request.content_length
        if (
            length is not None
            and length > config.server.max_body_bytes
            and request.blueprint != "scim"
        ):
            raise RequestEntityTooLarge()

    @app.before_request
    def authenticate() -> None:
        # The console signs its users in itself (veil.console.signin); /scim/v2 has its own
        # bearer token (veil.scim). Neither takes the JWT identity.
        if request.endpoint in OPEN_ENDPOINTS or request.blueprint in ("console", "scim"):
            return
        g.principal = services().auth.principal(request.headers)

    routes = frozenset(config.upstream.routes)

    @app.after_request
    def count(response: Response) -> Response:
        rule = request.url_rule
        if rule is None:
            route = "unmatched"
        elif request.endpoint == PROXY_ENDPOINT:  # the configured route, never a free path
            route = request.path if request.path in routes else "unmatched"
        else:
            route = rule.rule
        metrics.requests.labels(route=route, status=str(response.status_code)).inc()
        return response

    @app.errorhandler(VeilError)
    def veil_error(exc: VeilError) -> Response:
        if exc.status >= 500:
            log.warning("%s: %s", exc.code, exc.detail)
        return exc.to_response()

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if isinstance(exc, RequestEntityTooLarge):  # (a blueprint's own handler wins, as SCIM's)
            return problem(
                413,
                "Request body too large",
                f"the request body is larger than {config.server.max_body_bytes} "
                "bytes (server.max_body_bytes); it was not read",
                "body_too_large",
            )
        code = (exc.name or "error").lower().replace(" ", "_")
        response = problem(status, exc.name or "Error", exc.description or "", code)
        allow = dict(exc.get_headers()).get("Allow")
        if allow:  # 405 names the methods the path answers (RFC 9110)
            response.headers["Allow"] = allow
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error")
        return problem(
            500, "Internal error", "Veil failed unexpectedly; see its log", "internal_error"
        )

    app.teardown_appcontext(lambda _exc: None)
    return app
