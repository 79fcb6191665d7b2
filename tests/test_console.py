"""The admin console in a real Chromium against `veil serve` (a real process) behind a gateway
(``identity.mode: header``), with a loopback store: the three procedures of Activity privacy
end to end, the reveal and its audit, and the console's web safety.

The tests of this module run in order on one server and one browser (each user in their own
browser context, whose gateway headers sign them in)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize, expect
from werkzeug.serving import make_server

from browser import chromium, screenshot_dir, veil_serve
from conftest import ADMIN, LoopbackStore, activity, config_doc, iso

GATEWAY_SECRET = "gateway-secret-for-console-tests"
CONSOLE_KEY = "console-cookie-key-that-is-long-enough-0123456789"
INVESTIGATOR = "dave@contoso.com"  # made an admin, then granted the permission, in the tests
PLAIN = "bob@contoso.com"
CAROL = "carol@contoso.com"  # in hr, the group made private
JUSTIFICATION = "Investigating ticket SEC-1042 (data exfiltration alert)"
LAPTOP: ViewportSize = {"width": 1280, "height": 860}
PHONE: ViewportSize = {"width": 390, "height": 844}

expect.set_options(timeout=20_000)


class Console:
    """The served console, its browser, one browser context per user, and every URL asked."""

    def __init__(
        self, url: str, log: Path, browser: Browser, store: LoopbackStore, shots: Path
    ) -> None:
        self.url = url
        self.log = log
        self.browser = browser
        self.store = store
        self.shots = shots
        self.contexts: dict[str, BrowserContext] = {}
        self.pages: dict[str, Page] = {}
        self.urls: list[str] = []

    def page(self, principal: str) -> Page:
        if principal not in self.pages:
            context = self.browser.new_context(
                viewport=LAPTOP,
                extra_http_headers={
                    "X-Forwarded-User": principal,
                    "X-Veil-Gateway-Secret": GATEWAY_SECRET,
                },
            )
            context.set_default_timeout(30_000)
            context.on("request", lambda r: self.urls.append(r.url))
            self.contexts[principal] = context
            self.pages[principal] = context.new_page()
        return self.pages[principal]

    def open(self, principal: str, path: str) -> Page:
        page = self.page(principal)
        page.goto(self.url + path)
        return page

    def api(self, method: str, path: str, principal: str = ADMIN, **kwargs: Any) -> Any:
        return requests.request(
            method,
            self.url + path,
            timeout=30,
            headers={"X-Forwarded-User": principal, "X-Veil-Gateway-Secret": GATEWAY_SECRET},
            **kwargs,
        )

    def shot(self, page: Page, name: str) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def console(
    store_server: LoopbackStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Console]:
    directory = tmp_path_factory.mktemp("console")
    shots = screenshot_dir(directory)
    store_server.reset()
    doc = config_doc(
        store_server.url,
        f"sqlite:///{directory / 'veil.db'}",
        identity={
            "mode": "header",
            "secret_env": "VEIL_GATEWAY_SECRET",
            "bootstrap_admins": [ADMIN],
        },
        server={"workers": 1, "threads": 4},
        upstream={"keep": ["/next"]},  # the console pages with the store's cursor
        console={
            "enabled": True,
            "secret_key_env": "VEIL_CONSOLE_KEY",
            "page_size": 25,
            "activities": {
                "columns": [
                    {"label": "Id", "pointer": "/id"},
                    {"label": "Activity", "pointer": "/activity"},
                ]
            },
        },
    )
    env = {"VEIL_GATEWAY_SECRET": GATEWAY_SECRET, "VEIL_CONSOLE_KEY": CONSOLE_KEY}
    with chromium() as browser, veil_serve(doc, directory, env) as (url, log):
        served = Console(url, log, browser, store_server, shots)
        answer = served.api(
            "PUT", "/veil/v1/groups/hr", json={"name": "Human Resources", "members": [CAROL]}
        )
        assert answer.status_code == 201, answer.text
        now = time.time_ns()
        store_server.state.rows = [
            activity(1, CAROL, iso(now - 3600 * 10**9), activity="FileDownloaded"),
            activity(2, PLAIN, iso(now - 1800 * 10**9), activity="MailItemsAccessed"),
        ]
        try:
            yield served
        finally:
            for context in served.contexts.values():
                context.close()
            store_server.reset()


def rows_shown(page: Page) -> list[str]:
    """The Id column of the Activity log's table."""
    cells = page.locator("#activities tbody tr td:nth-child(4)").all_inner_texts()
    return [c.strip() for c in cells]


def test_gateway_header_signs_in_and_admin_sees_every_page(console: Console) -> None:
    page = console.open(ADMIN, "/console/")
    expect(page.get_by_role("heading", name="Activity log")).to_be_visible()
    assert page.url.endswith("/console/activity")
    nav = page.get_by_role("navigation", name="Console")
    for name in (
        "Activity log",
        "Scoped deployment and privacy",
        "Manage admin access",
        "Governance log",
        "Groups",
    ):
        expect(nav.get_by_role("link", name=name)).to_be_visible()
    assert rows_shown(page) == ["act-1", "act-2"]
    console.shot(page, "activity-log")
    cookie = next(c for c in console.contexts[ADMIN].cookies() if c["name"] == "veil_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/console"
    assert not cookie["secure"]  # loopback: the console is reached over plain HTTP here


def test_pages_send_a_csp_without_inline_script(console: Console) -> None:
    answer = console.api("GET", "/console/activity")
    policy = answer.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert "<script>" not in answer.text and " on" + "click=" not in answer.text


def test_groups_page_lists_imported_groups_and_members(console: Console) -> None:
    page = console.open(ADMIN, "/console/groups")
    row = page.get_by_role("row", name=re.compile("Human Resources"))
    row.get_by_text("1 members").click()
    expect(row.get_by_text(CAROL)).to_be_visible()
    console.shot(page, "groups")


def test_add_user_groups_dialog_traps_focus_and_closes_with_escape(console: Console) -> None:
    page = console.open(ADMIN, "/console/privacy")
    page.get_by_role("button", name="Add user groups").click()
    dialog = page.get_by_role("dialog", name="Add user groups")
    expect(dialog).to_be_visible()
    for _ in range(8):
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.closest('dialog')?.id") == "add-groups"
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()


def test_make_a_group_private_hides_its_new_activities(console: Console) -> None:
    page = console.open(ADMIN, "/console/privacy")
    page.get_by_role("button", name="Add user groups").click()
    dialog = page.get_by_role("dialog", name="Add user groups")
    expect(dialog).to_contain_text("private from now on")
    expect(dialog).to_contain_text("Existing activities are not affected")
    expect(dialog.get_by_label("Application")).to_be_visible()
    expect(dialog.get_by_label("External users")).to_be_visible()
    console.shot(page, "add-user-groups")
    dialog.get_by_label("Human Resources").check()
    dialog.get_by_role("button", name="Add", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text(
        "Human Resources: activities are private from now on"
    )
    row = page.get_by_role("row", name=re.compile("Human Resources"))
    expect(row).to_contain_text(f"by {ADMIN}")
    console.shot(page, "activity-privacy")
    # carol acts after hr became private: through Veil her new activity is gone; her older one
    # (before hr was private) and everyone else's stay.
    console.store.state.rows.insert(
        0, activity(3, CAROL, iso(time.time_ns()), activity="FileDownloaded")
    )
    page = console.open(ADMIN, "/console/activity")
    expect(page.locator("#activities tbody tr")).to_have_count(2)
    assert rows_shown(page) == ["act-1", "act-2"]


def test_permission_refused_for_a_non_admin_then_granted_to_an_admin(console: Console) -> None:
    page = console.open(ADMIN, "/console/admin-access/permissions")
    page.get_by_role("button", name="Add admin permission").click()
    dialog = page.get_by_role("dialog", name="Add admin permission")
    dialog.get_by_label("UPN or e-mail").fill(PLAIN)
    console.shot(page, "add-admin-permission")
    dialog.get_by_role("button", name="Add permission").click()
    expect(page.get_by_role("alert")).to_contain_text(
        "Only admins can be assigned permission to view private activities"
    )
    expect(page.get_by_role("table")).not_to_contain_text(PLAIN)
    # Admins are managed on the sibling tab.
    page.get_by_role("navigation", name="Manage admin access").get_by_role(
        "link", name="Admins"
    ).click()
    page.get_by_role("button", name="Add admin").first.click()
    dialog = page.get_by_role("dialog", name="Add admin")
    dialog.get_by_label("UPN or e-mail").fill(INVESTIGATOR)
    dialog.get_by_role("button", name="Add admin").click()
    expect(page.get_by_role("table")).to_contain_text(INVESTIGATOR)
    console.shot(page, "admins")
    page.get_by_role("link", name="Activity privacy permissions").click()
    page.get_by_role("button", name="Add admin permission").click()
    dialog = page.get_by_role("dialog", name="Add admin permission")
    dialog.get_by_label("UPN or e-mail").fill(INVESTIGATOR.upper())
    dialog.get_by_role("button", name="Add permission").click()
    expect(page.get_by_role("table")).to_contain_text(INVESTIGATOR)
    console.shot(page, "activity-privacy-permissions")
    viewers = console.api("GET", "/veil/v1/private-viewers").json()["private_viewers"]
    assert [v["principal"] for v in viewers] == [INVESTIGATOR]


@pytest.mark.parametrize(
    ("who", "path", "opener", "dialog"),
    [
        (
            ADMIN,
            "/console/admin-access/permissions",
            "Add admin permission",
            "Add admin permission",
        ),
        (ADMIN, "/console/admin-access/admins", "Add admin", "Add admin"),
        (ADMIN, "/console/activity", "Activity log settings", "Activity log settings"),
        (INVESTIGATOR, "/console/activity", "Show private activities", "Show private activities"),
    ],
)
def test_every_dialog_keeps_focus_and_closes_with_escape(
    console: Console, who: str, path: str, opener: str, dialog: str
) -> None:
    page = console.open(who, path)
    if opener == "Show private activities":
        page.get_by_role("button", name="Activity log settings").click()
    page.get_by_role("button", name=opener, exact=True).first.click()
    shown = page.get_by_role("dialog", name=dialog)
    expect(shown).to_be_visible()
    dialog_id = shown.get_attribute("id")
    for key in ["Tab"] * 6 + ["Shift+Tab"] * 6:
        page.keyboard.press(key)
        assert page.evaluate("document.activeElement.closest('dialog')?.id") == dialog_id
    page.keyboard.press("Escape")
    expect(shown).to_be_hidden()


def test_plain_user_never_sees_the_option(console: Console) -> None:
    page = console.open(PLAIN, "/console/activity")
    expect(page.get_by_role("navigation", name="Console").get_by_role("link")).to_have_count(1)
    page.get_by_role("button", name="Activity log settings").click()
    settings = page.get_by_role("dialog", name="Activity log settings")
    expect(settings).to_contain_text("Show private activities is unavailable")
    expect(settings).to_contain_text("you are not an admin")
    expect(page.get_by_role("button", name="Show private activities")).to_have_count(0)
    assert page.locator("#show-private").count() == 0
    # A plain user who posts the form anyway is refused by Veil, and nothing is shown.
    answer = console.contexts[PLAIN].request.get(console.url + "/console/privacy")
    assert answer.status == 403


def test_admin_without_the_permission_sees_why(console: Console) -> None:
    page = console.open(ADMIN, "/console/activity")
    page.get_by_role("button", name="Activity log settings").click()
    settings = page.get_by_role("dialog", name="Activity log settings")
    expect(settings).to_contain_text("you do not hold the Activity privacy permission")
    expect(settings.get_by_role("button", name="Show private activities")).to_have_count(0)


def test_show_private_activities_with_a_justification(console: Console) -> None:
    page = console.open(INVESTIGATOR, "/console/activity")
    assert rows_shown(page) == ["act-1", "act-2"]
    page.get_by_role("button", name="Activity log settings").click()
    settings = page.get_by_role("dialog", name="Activity log settings")
    console.shot(page, "activity-log-settings")
    settings.get_by_role("button", name="Show private activities").click()
    dialog = page.get_by_role("dialog", name="Show private activities")
    expect(dialog).to_be_visible()
    expect(settings).to_be_hidden()
    expect(dialog).to_contain_text("This action is audited")
    dialog.get_by_label("Justification").fill(JUSTIFICATION)
    dialog.get_by_label("I understand that this action is audited").check()
    console.shot(page, "show-private-activities")
    dialog.get_by_role("button", name="OK", exact=True).click()
    expect(page.locator("#activities tbody tr")).to_have_count(3)
    assert rows_shown(page) == ["act-3", "act-1", "act-2"]
    private = page.locator("#activities tbody tr.private")
    expect(private).to_have_count(1)
    expect(private).to_contain_text("act-3")
    expect(private.get_by_text("Private", exact=True)).to_be_visible()
    banner = page.get_by_role("status").filter(has_text="Private activities are shown")
    expect(banner).to_contain_text(re.compile(r"1[45] min \d+ s left"))
    expect(page.get_by_role("button", name="Hide private activities")).to_be_visible()
    console.shot(page, "activity-log-private")


def test_governance_log_lists_the_reveal_and_verify_says_ok(console: Console) -> None:
    page = console.open(ADMIN, "/console/governance")
    page.get_by_label("Action").select_option("activities_revealed")
    page.get_by_role("button", name="Apply filters").click()
    rows = page.locator("table tbody tr")
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text(INVESTIGATOR)
    rows.get_by_text("Details").click()
    expect(rows).to_contain_text(JUSTIFICATION)
    expect(rows).to_contain_text("act-3")
    page.get_by_label("Actor").fill(PLAIN)
    page.get_by_role("button", name="Apply filters").click()
    expect(page.locator("table tbody tr")).to_contain_text("No records match")
    page.get_by_role("button", name="Clear filters").click()
    expect(page.locator("table tbody tr", has_text="privacy_group_added")).to_have_count(1)
    page.get_by_label("From (UTC)").fill("2099-01-01T00:00:00")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.locator("table tbody tr")).to_contain_text("No records match")
    page.get_by_label("From (UTC)").fill("2000-01-01T00:00:00")
    page.get_by_label("Until (UTC)").fill("2099-01-01T00:00:00")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.locator("table tbody tr", has_text="activities_revealed")).to_have_count(1)
    page.get_by_role("button", name="Clear filters").click()
    page.get_by_role("button", name="Verify").click()
    expect(page.locator("#verdict")).to_contain_text("Verified: the log is intact")
    console.shot(page, "governance-log")


def test_hide_private_activities_ends_the_session(console: Console) -> None:
    page = console.open(INVESTIGATOR, "/console/activity")
    page.get_by_role("button", name="Hide private activities").click()
    expect(page.get_by_role("status")).to_contain_text("private activities are hidden again")
    assert rows_shown(page) == ["act-1", "act-2"]
    ended = console.api("GET", "/veil/v1/governance-log?action=reveal_session_ended").json()
    assert [r["actor"] for r in ended["records"]] == [INVESTIGATOR]


def test_a_revoked_permission_shows_the_refusal_reason(console: Console) -> None:
    page = console.open(INVESTIGATOR, "/console/activity")
    page.get_by_role("button", name="Activity log settings").click()
    page.get_by_role("button", name="Show private activities").click()
    dialog = page.get_by_role("dialog", name="Show private activities")
    dialog.get_by_label("Justification").fill("second look")
    dialog.get_by_label("I understand that this action is audited").check()
    dialog.get_by_role("button", name="OK", exact=True).click()
    expect(page.locator("#activities tbody tr.private")).to_have_count(1)
    # Another admin revokes the permission: the session ends, the next page says why.
    assert console.api("DELETE", f"/veil/v1/private-viewers/{INVESTIGATOR}").status_code == 204
    page.reload()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Private activities are not shown")
    expect(alert).to_contain_text("the caller does not hold the view-private permission")
    assert rows_shown(page) == ["act-1", "act-2"]
    expect(page.get_by_role("button", name="Hide private activities")).to_have_count(0)


def test_filters_and_paging_reach_the_store_without_entering_the_url(console: Console) -> None:
    store = console.store
    store.state.body = json.dumps({"data": store.state.rows, "next": "page-2"}).encode()
    try:
        page = console.open(ADMIN, "/console/activity")
        page.get_by_label("User").fill(PLAIN)
        page.get_by_label("From (UTC)").fill("2026-11-01T08:30:00")
        page.get_by_role("button", name="Apply filters").click()
        expect(page.get_by_label("User")).to_have_value(PLAIN)
        query = store.state.requests[-1]["query"]
        assert "user=bob%40contoso.com" in query and "since=2026-11-01T08%3A30%3A00Z" in query
        assert "limit=25" in query
        page.get_by_role("button", name="Older").click()
        expect(page.get_by_role("button", name="Newer")).to_be_visible()
        assert "cursor=page-2" in store.state.requests[-1]["query"]
        page.get_by_role("button", name="Clear filters").click()
        assert "user=" not in store.state.requests[-1]["query"]
    finally:
        store.state.body = None
    assert not [u for u in console.urls if "bob%40" in u or "user=" in u or "cursor" in u]


def test_form_without_csrf_token_is_refused(console: Console) -> None:
    page = console.open(ADMIN, "/console/privacy")
    page.evaluate("document.querySelectorAll('input[name=csrf_token]').forEach(e => e.remove())")
    page.get_by_role("button", name="Add user groups").click()
    dialog = page.get_by_role("dialog", name="Add user groups")
    dialog.get_by_label("Application").check()
    with page.expect_response(lambda r: r.url.endswith("/console/privacy/add")) as sent:
        dialog.get_by_role("button", name="Add", exact=True).click()
    assert sent.value.status == 403
    expect(page.get_by_role("alert")).to_contain_text("CSRF token is missing")
    private = console.api("GET", "/veil/v1/privacy-groups").json()["privacy_groups"]
    assert [p["group"] for p in private if p["private"]] == ["hr"]


def test_cross_site_post_is_refused(console: Console) -> None:
    attacker = Flask("attacker")
    target = console.url + "/console/privacy/add"

    @attacker.get("/")
    def lure() -> str:
        return (
            f'<form method="post" action="{target}"><input type="hidden" name="group" '
            'value="application"><input type="hidden" name="csrf_token" value="guess">'
            '<button type="submit">Win a prize</button></form>'
        )

    server = make_server("127.0.0.1", 0, attacker, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        page = console.page(ADMIN)
        page.goto(f"http://localhost:{server.server_port}/")  # another site than 127.0.0.1
        with page.expect_response(lambda r: r.url == target) as sent:
            page.get_by_role("button", name="Win a prize").click()
        assert sent.value.status == 403
        expect(page.get_by_role("alert")).to_contain_text("another site")
    finally:
        server.shutdown()
    private = console.api("GET", "/veil/v1/privacy-groups").json()["privacy_groups"]
    assert [p["group"] for p in private if p["private"]] == ["hr"]


def test_remove_a_group_asks_and_ends_its_interval(console: Console) -> None:
    page = console.open(ADMIN, "/console/privacy")
    row = page.get_by_role("row", name=re.compile("Human Resources"))
    row.get_by_role("button", name="Remove").click()
    confirm = page.get_by_role("dialog", name="Remove Human Resources?")
    expect(confirm).to_be_visible()
    confirm.get_by_role("button", name="Cancel").click()
    expect(confirm).to_be_hidden()
    row.get_by_role("button", name="Remove").click()
    confirm.get_by_role("button", name="Remove").click()
    expect(page.get_by_role("status")).to_contain_text("no longer private")
    expect(page.get_by_role("heading", name="Formerly private groups")).to_be_visible()
    private = console.api("GET", "/veil/v1/privacy-groups").json()["privacy_groups"]
    assert private[0]["private"] is False and private[0]["intervals"][0]["end"] is not None


@pytest.mark.parametrize(
    "path",
    [
        "/console/activity",
        "/console/privacy",
        "/console/admin-access/permissions",
        "/console/governance",
        "/console/groups",
    ],
)
def test_pages_fit_a_phone(console: Console, path: str) -> None:
    page = console.open(ADMIN, path)
    page.set_viewport_size(PHONE)
    try:
        page.reload()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        wide = page.evaluate(
            "Array.from(document.querySelectorAll('body *')).filter(e => "
            "e.getBoundingClientRect().right > window.innerWidth + 1)"
            ".map(e => e.tagName + '.' + e.className).slice(0, 5)"
        )
        assert overflow <= 1, f"{path} is {overflow}px wider than a phone: {wide}"
        if path == "/console/activity":
            console.shot(page, "activity-log-phone")
    finally:
        page.set_viewport_size(LAPTOP)


def test_no_private_data_in_urls_or_the_log(console: Console) -> None:
    records = console.api("GET", "/veil/v1/governance-log?action=reveal_session_opened").json()
    session_ids = [r["details"]["session"] for r in records["records"]]
    assert session_ids
    text = console.log.read_text("utf-8", errors="replace")
    assert "/console/activity" in text  # the access log is there, and holds none of these:
    for secret in [*session_ids, JUSTIFICATION, "second look", "act-3"]:
        assert secret not in text
        assert not [u for u in console.urls if secret in u]
