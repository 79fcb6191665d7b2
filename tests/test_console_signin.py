"""Console sign-in in a real Chromium: OpenID Connect (code flow with PKCE) against an identity
provider on loopback, with `veil serve` as a real process; and the demo's pick-a-user page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from veil.demo import Demo, DemoSettings
from veil.demo.runner import INVESTIGATOR, PLAIN_USER

from browser import chromium, screenshot_dir, veil_serve
from conftest import ADMIN, POLICIES, SECRET, LoopbackStore, config_doc
from netutil import free_port
from oidc_idp import LoopbackIdP

CONSOLE_KEY = "console-cookie-key-that-is-long-enough-0123456789"

expect.set_options(timeout=20_000)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as running:
        yield running


@pytest.fixture(scope="module")
def idp() -> Iterator[LoopbackIdP]:
    provider = LoopbackIdP()
    yield provider
    provider.close()


@pytest.fixture(scope="module")
def oidc_console(
    store_server: LoopbackStore, idp: LoopbackIdP, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("oidc")
    port = free_port()
    doc = config_doc(
        store_server.url,
        f"sqlite:///{directory / 'veil.db'}",
        identity={
            "oidc": {
                "issuer": idp.issuer,
                "client_id": idp.client_id,
                "client_secret_env": "VEIL_OIDC_SECRET",
                "redirect_url": f"http://127.0.0.1:{port}/console/sign-in/callback",
            }
        },
        server={"workers": 1, "threads": 4},
        console={"enabled": True, "secret_key_env": "VEIL_CONSOLE_KEY"},
    )
    env = {
        "VEIL_TEST_JWT_SECRET": SECRET,
        "VEIL_OIDC_SECRET": idp.client_secret,
        "VEIL_CONSOLE_KEY": CONSOLE_KEY,
    }
    with veil_serve(doc, directory, env, port=port) as (url, _log):
        yield url


def test_oidc_sign_in_with_pkce_and_sign_out(
    browser: Browser, idp: LoopbackIdP, oidc_console: str, tmp_path: Path
) -> None:
    idp.user = ADMIN
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(oidc_console + "/console/governance")
        expect(page.get_by_role("heading", name="Sign in to the Veil console")).to_be_visible()
        expect(page.get_by_role("link", name="Demo sign-in")).to_have_count(0)
        page.screenshot(path=str(screenshot_dir(tmp_path) / "sign-in.png"))
        page.get_by_role("link", name="Sign in with your organization").click()
        expect(page.get_by_role("heading", name="Activity log")).to_be_visible()
        expect(page.get_by_role("banner")).to_contain_text(ADMIN)
        authorize = [s for s in idp.seen if s["endpoint"] == "authorize"][-1]
        token = [s for s in idp.seen if s["endpoint"] == "token"][-1]
        assert authorize["code_challenge_method"] == "S256" and authorize["nonce"]
        assert len(token["code_verifier"]) >= 43
        page.get_by_role("link", name="Governance log").click()
        expect(page.get_by_role("heading", name="Governance log")).to_be_visible()
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="Sign in to the Veil console")).to_be_visible()
        page.goto(oidc_console + "/console/activity")
        expect(page.get_by_role("heading", name="Sign in to the Veil console")).to_be_visible()
    finally:
        context.close()


def test_oidc_plain_user_signs_in_without_admin_pages(
    browser: Browser, idp: LoopbackIdP, oidc_console: str
) -> None:
    idp.user = "Bob@Contoso.com"
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(oidc_console + "/console/sign-in")
        page.get_by_role("link", name="Sign in with your organization").click()
        expect(page.get_by_role("banner")).to_contain_text("bob@contoso.com")
        expect(page.get_by_role("link", name="Governance log")).to_have_count(0)
        assert context.request.get(oidc_console + "/console/governance").status == 403
    finally:
        context.close()


def test_oidc_refuses_a_forged_callback_and_a_wrong_issuer(
    browser: Browser, idp: LoopbackIdP, oidc_console: str
) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        # A callback that the console did not start (no state in the session).
        page.goto(oidc_console + "/console/sign-in/callback?code=stolen&state=forged")
        expect(page.get_by_role("alert")).to_contain_text("sign-in failed")
        assert (
            context.request.get(oidc_console + "/console/activity", max_redirects=0).status == 302
        )
        # An ID token from another issuer.
        real = idp.issuer
        idp.token_issuer = "http://evil.example"
        try:
            page.goto(oidc_console + "/console/sign-in")
            page.get_by_role("link", name="Sign in with your organization").click()
            expect(page.get_by_role("alert")).to_contain_text("sign-in failed")
        finally:
            idp.token_issuer = real
        assert (
            context.request.get(oidc_console + "/console/activity", max_redirects=0).status == 302
        )
    finally:
        context.close()


def test_demo_offers_its_users(browser: Browser, tmp_path: Path) -> None:
    settings = DemoSettings(
        port=0, store_port=0, data_dir=tmp_path / "demo", policy_dir=POLICIES, rate_per_minute=600
    )
    with Demo(settings, secret=SECRET) as demo:
        assert f"{demo.veil_url}/console/" in demo.banner()
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(demo.veil_url + "/console/")
            page.get_by_role("link", name="Demo sign-in").click()
            page.screenshot(path=str(screenshot_dir(tmp_path) / "demo-sign-in.png"))
            page.get_by_role("button", name="Sign in as Erin Shah").click()
            expect(page.get_by_role("banner")).to_contain_text(INVESTIGATOR)
            expect(page.locator("#activities tbody tr").first).to_be_visible()
            page.get_by_role("button", name="Activity log settings").click()
            expect(page.get_by_role("button", name="Show private activities")).to_be_visible()
            page.keyboard.press("Escape")
            page.get_by_role("button", name="Sign out").click()
            page.get_by_role("link", name="Demo sign-in").click()
            page.get_by_role("button", name="Sign in as Bob Jensen").click()
            expect(page.get_by_role("banner")).to_contain_text(PLAIN_USER)
            page.get_by_role("button", name="Activity log settings").click()
            expect(page.get_by_role("dialog", name="Activity log settings")).to_contain_text(
                "unavailable"
            )
            expect(page.get_by_role("button", name="Show private activities")).to_have_count(0)
        finally:
            context.close()
