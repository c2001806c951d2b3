"""The Command Center with auth on, in Debian's Chromium: an operator signs in with a token from
the real OpenID Provider, a job created with a tenant's provider-issued token travels API →
outbox → relay → Kafka → /crm-events and shows up live and green; the credential never appears
in a URL, the browser history, a cookie a script can read, or any log."""
from __future__ import annotations

import json
import uuid

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from tests.api.conftest import new_key
from tests.conftest import ApiServer, launch_chromium
from tests.e2e.conftest import RelayProcess, e2e_env  # noqa: F401 - a database and topic of the module's own
from tests.security.test_auth import auth
from tests.security.test_oidc_provider import AUDIENCE, Clients, start_provider, token
from tests.stream.test_command_center import GREEN

LIVE_DOT = "rgb(34, 197, 94)"


@pytest.fixture(scope="module")
def stack(e2e_env, tmp_path_factory):  # noqa: F811 - the imported fixture
    d = tmp_path_factory.mktemp("cc-auth")
    clients = Clients()
    provider = start_provider(clients, d / "oidc")
    env = {**e2e_env, "AETHER_AUTH": "on", "AETHER_AUTH_OIDC_ISSUER": provider.issuer,
           "AETHER_AUTH_OIDC_AUDIENCE": AUDIENCE, "AETHER_WRITE_RATE_PER_TENANT": "0",
           "AETHER_SSE_RETRY_MS": "500"}
    api = ApiServer(env, d).start()
    relay = RelayProcess(e2e_env, d).start()
    yield clients, provider, api, relay
    relay.stop()
    api.stop()
    provider.stop()


@pytest.fixture
def browser_context():
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            yield browser.new_context()
        finally:
            browser.close()


def test_operator_signs_in_and_sees_a_created_job_live(stack, browser_context):
    clients, provider, api, relay = stack
    ops_token = token(provider, clients, "ops")
    tenant_token = token(provider, clients, "client-a")
    page = browser_context.new_page()

    first = page.goto(f"{api.url}/ops/crm-events")
    assert first.status == 401
    page.fill("#token", ops_token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{api.url}/ops/crm-events")
    status = page.locator("#status")
    expect(status).to_have_attribute("data-state", "live", timeout=15_000)
    assert page.locator("#status .dot").evaluate("e => getComputedStyle(e).backgroundColor") == LIVE_DOT

    title = f"Boiler {uuid.uuid4().hex[:8]}"
    r = httpx.post(f"{api.url}/api/crm/jobs", json={"title": title, "status": "Open"},
                   headers=auth(tenant_token, clients.tenant_a, new_key()), timeout=30)
    assert r.status_code == 202, r.text
    item = page.locator("li.ev", has_text=title)
    expect(item).to_be_visible(timeout=15_000)
    expect(item).to_have_class("ev created")
    assert item.evaluate("e => getComputedStyle(e).borderLeftColor") == GREEN
    item.locator("summary").click()
    expect(item.locator("pre")).to_contain_text(r.json()["id"])

    # The credential: not in the URL or any history entry, not readable by the page's scripts.
    history = page.context.new_cdp_session(page).send("Page.getNavigationHistory")
    urls = [e["url"] for e in history["entries"]] + [page.url]
    assert all(ops_token not in u and "access_token" not in u and "token=" not in u for u in urls), urls
    assert page.evaluate("document.cookie") == ""
    cookies = browser_context.cookies()
    assert {c["path"] for c in cookies} == {"/ops", "/crm-events"}
    assert all(c["httpOnly"] and c["sameSite"] == "Strict" for c in cookies)
    ticket = cookies[0]["value"]
    assert ops_token not in ticket

    # Nothing that authenticates anybody reaches a log.
    logs = [api.log_path, relay.log_path, provider.state_dir / "provider.log"]
    assert all(json.loads(line)["level"] for line in logs[2].read_text().splitlines())
    for path in logs:
        text = path.read_text()
        for secret in (ops_token, tenant_token, ticket, *clients.secrets.values()):
            assert secret not in text, path


def test_an_invalid_sign_in_stays_on_the_form(stack, browser_context):
    clients, provider, api, _ = stack
    page = browser_context.new_page()
    page.goto(f"{api.url}/ops/crm-events?types=JobCreated")
    page.fill("#token", token(provider, clients, "client-a"))  # a tenant's token: not an operator
    page.click("button[type=submit]")
    expect(page.locator(".message")).to_have_text("The Command Center needs an operator token.")
    assert browser_context.cookies() == []
    page.fill("#token", token(provider, clients, "ops"))
    page.click("button[type=submit]")
    page.wait_for_url(f"{api.url}/ops/crm-events?types=JobCreated")
    expect(page.locator("#status")).to_have_attribute("data-state", "live", timeout=15_000)


def test_a_sign_in_survives_a_restart_with_a_shared_secret_and_ends_cleanly_without(stack, browser_context,
                                                                                  e2e_env, tmp_path):  # noqa: F811
    """With AETHER_AUTH_STREAM_TICKET_SECRET the ticket outlives the process; once it is no
    longer valid the page says "signed out" and offers the sign-in, instead of looping on "down"."""
    clients, provider, _, _ = stack
    env = {**e2e_env, "AETHER_AUTH": "on", "AETHER_AUTH_OIDC_ISSUER": provider.issuer,
           "AETHER_AUTH_OIDC_AUDIENCE": AUDIENCE, "AETHER_SSE_RETRY_MS": "300",
           "AETHER_AUTH_STREAM_TICKET_SECRET": uuid.uuid4().hex}
    api = ApiServer(env, tmp_path).start()
    try:
        page = browser_context.new_page()
        page.goto(f"{api.url}/ops/crm-events")
        page.fill("#token", token(provider, clients, "ops"))
        page.click("button[type=submit]")
        status = page.locator("#status")
        expect(status).to_have_attribute("data-state", "live", timeout=15_000)

        api.stop()
        expect(status).to_have_attribute("data-state", "down", timeout=15_000)
        api.start()
        expect(status).to_have_attribute("data-state", "live", timeout=30_000)

        api.stop()
        api.env = {**env, "AETHER_AUTH_STREAM_TICKET_SECRET": uuid.uuid4().hex}  # every ticket now invalid
        api.start()
        expect(status).to_have_attribute("data-state", "signed out", timeout=30_000)
        sign_in = page.locator("#sign-in")
        expect(sign_in).to_be_visible()
        sign_in.click()
        expect(page.locator(".message")).to_have_text("Your sign-in has expired or is no longer valid.")
        page.fill("#token", token(provider, clients, "ops"))
        page.click("button[type=submit]")
        expect(page.locator("#status")).to_have_attribute("data-state", "live", timeout=15_000)
    finally:
        api.stop()
