"""The admin console at /console: the three procedures of Activity privacy in a browser.

The console is a client of Veil, not a second implementation: the Activity log is answered by
``QueryService.answer`` (the proxied API's code path: same filtering, same reveal checks, same
audit), and every management action calls the Storage function the ``/veil/v1`` API calls, so
every rule and governance record is the same. Views parse a form, call one service function,
and render; an error the service raises is shown with its detail.

    security   signed cookies, CSRF tokens, same-origin posts, CSP and other headers
    signin     OpenID Connect (Authlib), the gateway header, the demo's pick-a-user page
    activity   the Activity log's query through Veil and its reveal session
    views      the blueprint: pages and forms
"""

from __future__ import annotations

from flask import Flask

from veil.config import Config
from veil.console import security, signin
from veil.console.views import blueprint


def init_app(app: Flask, config: Config) -> None:
    """Serve the console when ``console.enabled``: cookies, sign-in and the blueprint."""
    assert config.console.secret_key is not None
    security.configure(app, config.console.secret_key, config.console.session_ttl_s)
    if config.identity.oidc is not None:
        app.extensions["veil.console.oidc"] = signin.OidcSignIn(app, config)
    app.register_blueprint(blueprint)
