"""The Command Center in the production profile, in Debian's Chromium: an operator signs in with
a token from the profile's real OpenID Provider, and a job created with a tenant's provider-issued
token (API → outbox → relay → Kafka over SASL_SSL → /crm-events) shows up live and green within
2 s; the sign-in puts the credential in no URL, history entry, script-readable cookie or log."""
from __future__ import annotations

import uuid

import httpx
from playwright.sync_api import expect, sync_playwright

from tests.production.conftest import OIDC_TENANTS
from tests.stream.test_command_center import GREEN
from tests.conftest import launch_chromium

LIVE_DOT = "rgb(34, 197, 94)"


def _create(prod, token: str, tenant: str, title: str) -> httpx.Response:
    r = httpx.post(f"{prod.api_url}/api/crm/jobs", json={"title": title, "status": "Open"},
                   headers={"Authorization": f"Bearer {token}", "X-Tenant-Id": tenant,
                            "Idempotency-Key": f"cc-{uuid.uuid4()}"}, timeout=30)
    assert r.status_code == 202, r.text
    return r


def test_command_center_under_auth_shows_a_provider_token_job_live_and_green(production_stack):
    prod = production_stack
    assert prod.oidc is not None, "the production profile runs without its OpenID Provider"
    ops, tenant_token = prod.oidc_token("operator"), prod.oidc_token("tenant-a")
    tenant = OIDC_TENANTS["tenant-a"]
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            context = browser.new_context()
            page = context.new_page()
            assert page.goto(f"{prod.api_url}/ops/crm-events").status == 401
            page.fill("#token", ops)
            page.click("button[type=submit]")
            page.wait_for_url(f"{prod.api_url}/ops/crm-events")
            expect(page.locator("#status")).to_have_attribute("data-state", "live", timeout=15_000)
            assert page.locator("#status .dot").evaluate("e => getComputedStyle(e).backgroundColor") == LIVE_DOT

            # A first job warms the path up (the relay's first poll, the first produce over TLS).
            warm = f"Warm-up {uuid.uuid4().hex[:8]}"
            _create(prod, tenant_token, tenant, warm)
            expect(page.locator("li.ev", has_text=warm)).to_be_visible(timeout=60_000)

            title = f"Boiler {uuid.uuid4().hex[:8]}"
            _create(prod, tenant_token, tenant, title)
            item = page.locator("li.ev", has_text=title)
            expect(item).to_be_visible(timeout=2_000)
            expect(item).to_have_class("ev created")
            assert item.evaluate("e => getComputedStyle(e).borderLeftColor") == GREEN

            history = context.new_cdp_session(page).send("Page.getNavigationHistory")
            urls = [e["url"] for e in history["entries"]] + [page.url]
            assert all(ops not in u and "token" not in u for u in urls), urls
            assert page.evaluate("document.cookie") == ""
            ticket = context.cookies()[0]["value"]
        finally:
            browser.close()
    for path in [p for p in prod.state_dir.rglob("*.log") if p.is_file()]:
        text = path.read_text(errors="replace")
        # the profile shares one ticket key between the API's workers
        assert "AETHER_AUTH_STREAM_TICKET_SECRET is not set" not in text, path
        for secret in (ops, tenant_token, ticket):
            assert secret not in text, path
