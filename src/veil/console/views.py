"""The console's pages and forms. Views parse, call one service function, and render."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from flask import (
    Blueprint,
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response as WerkzeugResponse

from veil import schemas
from veil.console import activity, security, signin
from veil.errors import Forbidden, InvalidBody, RevealRefused, Unauthenticated, VeilError
from veil.identity import normalize_principal
from veil.services import services

log = logging.getLogger("veil.console")

blueprint = Blueprint(
    "console", __name__, url_prefix="/console", template_folder="templates", static_folder="static"
)

Page = str | WerkzeugResponse | tuple[str, int]

# Pages anyone may open before signing in.
OPEN = frozenset(
    {
        "console.static",
        "console.sign_in",
        "console.login",
        "console.callback",
        "console.demo_sign_in",
    }
)
BUILTIN_NAMES = {"application": "Application", "external": "External users"}
ONLY_ADMINS = "Only admins can be assigned permission to view private activities"


# ---- every request ----------------------------------------------------------------------


@blueprint.before_request
def identify() -> Page | None:
    if request.method not in ("GET", "HEAD"):
        refusal = security.post_refusal(request)
        if refusal is not None:
            return render_template("error.html", title="Form refused", detail=refusal), 403
    svc = services()
    if svc.config.identity.mode == "header" and request.endpoint != "console.static":
        try:
            principal = svc.auth.principal(request.headers)
        except Unauthenticated as exc:
            return render_template(
                "error.html",
                title="Not signed in",
                detail=f"the gateway did not identify you: {exc.detail}",
            ), 401
        if signin.signed_in() != principal:
            security.fresh_session(principal=principal)
    if request.endpoint in OPEN:
        return None
    principal_or_none = signin.signed_in()
    if principal_or_none is None:
        return redirect(url_for("console.sign_in"))
    g.principal = principal_or_none
    g.is_admin = svc.storage.is_admin(principal_or_none)
    return None


@blueprint.after_request
def harden(response: WerkzeugResponse) -> WerkzeugResponse:
    return security.harden(response)  # type: ignore[arg-type]


@blueprint.app_context_processor
def globals_for_templates() -> dict[str, Any]:
    return {"csrf_token": security.csrf_token, "csrf_field": security.CSRF_FIELD}


@blueprint.errorhandler(VeilError)
def veil_error(exc: VeilError) -> tuple[str, int]:
    return render_template("error.html", title=exc.title, detail=exc.detail), exc.status


def need_admin() -> str:
    principal: str = g.principal
    if not g.is_admin:
        raise Forbidden(f"{principal} is not an admin; this page needs an admin")
    return principal


def attempt(action: Any, *args: Any, done: str | None = None) -> bool:
    """Run one service call; show its error detail, or ``done``, to the user."""
    try:
        action(*args)
    except VeilError as exc:
        flash(exc.detail, "error")
        return False
    if done:
        flash(done, "success")
    return True


# ---- sign-in ----------------------------------------------------------------------------


@blueprint.get("/sign-in")
def sign_in() -> Page:
    from flask import current_app

    if signin.signed_in() and services().config.identity.mode == "header":
        return redirect(url_for("console.index"))
    return render_template(
        "sign_in.html",
        oidc=signin.oidc() is not None,
        demo=bool(signin.demo_users(current_app)),
        header_mode=services().config.identity.mode == "header",
    )


@blueprint.get("/sign-in/oidc")
def login() -> Page:
    provider = signin.oidc()
    if provider is None:
        abort(404)
    security.fresh_session()
    try:
        return provider.start()
    except Exception:  # discovery failed: Authlib raises requests' and its own errors
        log.warning("the identity provider's discovery document could not be read")
        return render_template(
            "sign_in.html",
            oidc=True,
            demo=False,
            header_mode=False,
            error="sign-in failed: the identity provider could not be reached; try again later",
        ), 502


@blueprint.get("/sign-in/callback")
def callback() -> Page:
    provider = signin.oidc()
    if provider is None:
        abort(404)
    try:
        principal = provider.finish()
    except Unauthenticated as exc:
        return render_template(
            "sign_in.html", oidc=True, demo=False, header_mode=False, error=exc.detail
        ), 401
    security.fresh_session(principal=principal)
    return redirect(url_for("console.index"))


@blueprint.route("/sign-in/demo", methods=["GET", "POST"])
def demo_sign_in() -> Page:
    from flask import current_app

    users = signin.demo_users(current_app)
    if not users:
        abort(404)  # only `veil demo` offers this page
    if request.method == "POST":
        chosen = request.form.get("principal", "")
        if chosen not in {u.principal for u in users}:
            return render_template(
                "error.html", title="Unknown demo user", detail="pick one of the demo's users"
            ), 400
        security.fresh_session(principal=chosen)
        return redirect(url_for("console.index"))
    return render_template("demo_sign_in.html", users=users)


@blueprint.post("/sign-out")
def sign_out() -> Page:
    svc = services()
    reveal = session.get("reveal")
    if isinstance(reveal, dict):
        attempt(svc.storage.end_session, reveal.get("id"), g.principal, g.is_admin)
    session.clear()
    if svc.config.identity.mode == "header":
        return render_template(
            "error.html",
            title="Signed out of the console",
            detail="your gateway still identifies you; close the browser or "
            "sign out at the gateway",
        )
    return redirect(url_for("console.sign_in"))


@blueprint.get("/")
def index() -> Page:
    return redirect(url_for("console.activity_log"))


# ---- Scoped deployment and privacy -> Activity privacy --------------------------------


def _group_id(value: str) -> str:
    problem = schemas.body_error(schemas.PRIVACY_GROUP_BODY, {"group": value})
    if problem is not None:
        raise InvalidBody(problem[1], field="group")
    return value


def _group_names() -> dict[str, str]:
    return {**BUILTIN_NAMES, **{gr["id"]: gr["name"] for gr in services().storage.list_groups()}}


@blueprint.get("/privacy")
def privacy() -> Page:
    need_admin()
    storage = services().storage
    private = storage.list_privacy_groups()
    groups = storage.list_groups()
    names = {**BUILTIN_NAMES, **{gr["id"]: gr["name"] for gr in groups}}
    current = {p["group"] for p in private if p["private"]}
    choices = [{"id": gid, "name": name, "builtin": True} for gid, name in BUILTIN_NAMES.items()]
    choices += [
        {"id": gr["id"], "name": gr["name"], "builtin": False, "members": len(gr["members"])}
        for gr in groups
    ]
    return render_template(
        "privacy.html",
        private=private,
        names=names,
        choices=[c for c in choices if c["id"] not in current],
    )


@blueprint.post("/privacy/add")
def privacy_add() -> Page:
    actor = need_admin()
    chosen = request.form.getlist("group")
    if not chosen:
        flash("select at least one group to add", "error")
    storage = services().storage
    names = _group_names()
    for gid in chosen:
        label = names.get(gid, gid)
        attempt(
            lambda gid=gid: storage.add_privacy_group(_group_id(gid), actor),
            done=f"{label}: activities are private from now on",
        )
    return redirect(url_for("console.privacy"))


@blueprint.post("/privacy/remove")
def privacy_remove() -> Page:
    actor = need_admin()
    gid = request.form.get("group", "")
    storage = services().storage
    attempt(
        lambda: storage.remove_privacy_group(_group_id(gid), actor),
        done=f"{_group_names().get(gid, gid)} is no longer private; its interval has ended",
    )
    return redirect(url_for("console.privacy"))


# ---- Manage admin access -> Activity privacy permissions, Admins -----------------------


def _principal(field: str = "principal") -> str:
    value = request.form.get(field, "")
    problem = schemas.body_error(schemas.PRINCIPAL_BODY, {"principal": value})
    if problem is not None:
        raise InvalidBody("enter a UPN or e-mail address without spaces", field=field)
    return normalize_principal(value)


@blueprint.get("/admin-access/permissions")
def permissions() -> Page:
    need_admin()
    return render_template("permissions.html", viewers=services().storage.list_viewers())


@blueprint.post("/admin-access/permissions/add")
def permissions_add() -> Page:
    actor = need_admin()
    storage = services().storage
    try:
        principal = _principal()
        storage.grant_viewer(principal, actor)
    except VeilError as exc:
        if exc.status == 422 and not storage.is_admin(
            normalize_principal(request.form.get("principal", ""))
        ):
            flash(f"{ONLY_ADMINS}. {exc.detail}", "error")
        else:
            flash(exc.detail, "error")
    else:
        flash(f"{principal} can now view private activities", "success")
    return redirect(url_for("console.permissions"))


@blueprint.post("/admin-access/permissions/remove")
def permissions_remove() -> Page:
    actor = need_admin()
    storage = services().storage
    attempt(
        lambda: storage.revoke_viewer(_principal(), actor),
        done="permission removed; the admin's private activities sessions have ended",
    )
    return redirect(url_for("console.permissions"))


@blueprint.get("/admin-access/admins")
def admins() -> Page:
    need_admin()
    return render_template("admins.html", admins=services().storage.list_admins())


@blueprint.post("/admin-access/admins/add")
def admins_add() -> Page:
    actor = need_admin()
    storage = services().storage
    attempt(lambda: storage.add_admin(_principal(), actor), done="admin added")
    return redirect(url_for("console.admins"))


@blueprint.post("/admin-access/admins/remove")
def admins_remove() -> Page:
    actor = need_admin()
    storage = services().storage
    attempt(lambda: storage.remove_admin(_principal(), actor), done="admin removed")
    return redirect(url_for("console.admins"))


# ---- Activity log ------------------------------------------------------------------------


def _may_reveal(principal: str) -> str | None:
    """Why this user cannot show private activities, or None when they may ask."""
    storage = services().storage
    if not g.is_admin:
        return (
            "only admins who hold the Activity privacy permission can show private "
            "activities; you are not an admin"
        )
    if principal not in {v["principal"] for v in storage.list_viewers()}:
        return (
            "you do not hold the Activity privacy permission; an admin can grant it under "
            "Manage admin access"
        )
    return None


def _reveal() -> dict[str, Any] | None:
    """The user's open reveal session, or None; one past its end is dropped here."""
    reveal = session.get("reveal")
    if not isinstance(reveal, dict):
        return None
    expires = datetime.fromisoformat(str(reveal.get("expires_at")).replace("Z", "+00:00"))
    if expires.timestamp() <= time.time():
        session.pop("reveal", None)
        flash(f"your private activities session ended at {reveal.get('expires_at')}", "info")
        return None
    return {**reveal, "remaining_s": int(expires.timestamp() - time.time())}


@blueprint.get("/activity")
def activity_log() -> Page:
    svc = services()
    principal: str = g.principal
    filters = activity.Filters.from_session(session.get("activity_filter"))
    cursors = session.get("cursors") or []
    cursor = cursors[-1] if cursors else None
    reveal = _reveal()
    page, refusal = None, None
    try:
        try:
            page = activity.fetch(svc, principal, filters, cursor, reveal["id"] if reveal else None)
        except RevealRefused as exc:
            session.pop("reveal", None)
            reveal, refusal = None, exc.detail
            page = activity.fetch(svc, principal, filters, cursor, None)
    except VeilError as exc:
        flash(exc.detail, "error")
    return render_template(
        "activity.html",
        page=page,
        filters=filters,
        reveal=reveal,
        refusal=refusal,
        cannot_reveal=_may_reveal(principal),
        columns=svc.config.console.activities.columns,
        paged=bool(cursors),
        require_justification=svc.config.reveal.require_justification,
    )


@blueprint.post("/activity/filter")
def activity_filter() -> Page:
    if request.form.get("clear"):
        session.pop("activity_filter", None)
    else:
        try:
            filters = activity.Filters(
                user=request.form.get("user", "").strip(),
                since=activity.form_time(request.form.get("since", ""), "since"),
                until=activity.form_time(request.form.get("until", ""), "until"),
            )
        except VeilError as exc:
            flash(exc.detail, "error")
            return redirect(url_for("console.activity_log"))
        session["activity_filter"] = filters.as_dict()
    session.pop("cursors", None)
    return redirect(url_for("console.activity_log"))


MAX_CURSOR = 256
MAX_PAGES_BACK = 8


@blueprint.post("/activity/page")
def activity_page() -> Page:
    cursors = list(session.get("cursors") or [])
    cursor = request.form.get("cursor", "")
    if request.form.get("direction") == "older" and 0 < len(cursor) <= MAX_CURSOR:
        cursors.append(cursor)
    elif request.form.get("direction") == "newer" and cursors:
        cursors.pop()
    else:
        cursors = []
    session["cursors"] = cursors[-MAX_PAGES_BACK:]  # the cookie stays well under 4 KB
    return redirect(url_for("console.activity_log"))


@blueprint.post("/activity/show-private")
def show_private() -> Page:
    svc = services()
    principal: str = g.principal
    try:
        justification = activity.reveal_request(
            request.form.get("justification", ""),
            request.form.get("acknowledge") == "yes",
            svc.config.reveal.require_justification,
        )
        opened = svc.storage.open_session(principal, justification, svc.config.reveal.session_ttl_s)
    except VeilError as exc:
        flash(f"Private activities were not shown: {exc.detail}", "error")
    else:
        session["reveal"] = {"id": opened["id"], "expires_at": opened["expires_at"]}
    return redirect(url_for("console.activity_log"))


@blueprint.post("/activity/hide-private")
def hide_private() -> Page:
    svc = services()
    reveal = session.pop("reveal", None)
    if isinstance(reveal, dict):
        attempt(
            svc.storage.end_session,
            str(reveal.get("id")),
            g.principal,
            g.is_admin,
            done="private activities are hidden again; the session has ended",
        )
    return redirect(url_for("console.activity_log"))


# ---- Governance log ----------------------------------------------------------------------

GOVERNANCE_PAGE = 50


@blueprint.get("/governance")
def governance() -> Page:
    need_admin()
    return _governance_page(verdict=None)


@blueprint.get("/governance/verify")
def governance_verify() -> Page:
    need_admin()
    return _governance_page(verdict=services().storage.verify_log().as_dict())


def _governance_page(verdict: dict[str, Any] | None) -> Page:
    storage = services().storage
    wanted = session.get("governance_filter") or {}
    after = int(session.get("governance_after") or 0)
    records: list[dict[str, Any]] = []
    try:
        records = storage.log_page(
            since=wanted.get("since") or None,
            until=wanted.get("until") or None,
            action=wanted.get("action") or None,
            actor=wanted.get("actor") or None,
            after=after,
            limit=GOVERNANCE_PAGE,
        )
    except VeilError as exc:
        flash(exc.detail, "error")
    more = records[-1]["seq"] if len(records) == GOVERNANCE_PAGE else None
    return render_template(
        "governance.html",
        records=records,
        wanted=wanted,
        verdict=verdict,
        more=more,
        paged=after > 0,
    )


@blueprint.post("/governance/filter")
def governance_filter() -> Page:
    need_admin()
    session.pop("governance_after", None)
    if request.form.get("clear"):
        session.pop("governance_filter", None)
        return redirect(url_for("console.governance"))
    try:
        actor = request.form.get("actor", "").strip()
        session["governance_filter"] = {
            "action": request.form.get("action", "").strip(),
            "actor": normalize_principal(actor) if actor else "",
            "since": _storage_time(request.form.get("since", ""), "since"),
            "until": _storage_time(request.form.get("until", ""), "until"),
        }
    except VeilError as exc:
        flash(exc.detail, "error")
    return redirect(url_for("console.governance"))


@blueprint.post("/governance/page")
def governance_page() -> Page:
    need_admin()
    value = request.form.get("after", "")
    session["governance_after"] = int(value) if value.isdigit() else 0
    return redirect(url_for("console.governance"))


def _storage_time(value: str, name: str) -> str:
    """A form time as the governance log's ``ts`` text (as the API's filter writes it)."""
    from veil.clock import rfc3339

    text = activity.form_time(value, name)
    if not text:
        return ""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return rfc3339(int(moment.timestamp()) * 1_000_000_000)


# ---- Groups ------------------------------------------------------------------------------


@blueprint.get("/groups")
def groups() -> Page:
    need_admin()
    return render_template("groups.html", groups=services().storage.list_groups())
