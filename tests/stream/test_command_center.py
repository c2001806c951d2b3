"""The Command Center page in Debian's headless Chromium, driven by Playwright (never a
downloaded browser): live events, colours, filter, payload on click and by keyboard, and a
restart of the API with no event missing."""
from __future__ import annotations

import re
import time
import uuid

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.conftest import ApiServer, launch_chromium

GREEN = "rgb(31, 138, 59)"
YELLOW = "rgb(181, 137, 0)"
RED = "rgb(198, 40, 40)"


@pytest.fixture
def page_api(stream_env, tmp_path):
    server = ApiServer(stream_env, tmp_path).start()
    yield server
    server.close()


@pytest.fixture
def page():
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def _item(page, title):
    return page.locator("li.ev", has_text=title)


def test_command_center_live_colours_filter_and_restart(page_api, page, events, tenant):
    page.goto(f"{page_api.url}/ops/crm-events")
    status = page.locator("#status")
    expect(status).to_have_attribute("data-state", "live", timeout=15_000)
    expect(page.locator("#status-text")).to_have_text("live")
    assert page.locator("#status .dot").evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(34, 197, 94)"

    title = f"Fix boiler {uuid.uuid4().hex[:6]}"
    job = str(uuid.uuid4())
    events.job(tenant, "JobCreated", title=title, job_id=job)
    events.flush()
    item = _item(page, title)
    expect(item).to_be_visible(timeout=15_000)  # a bound on the wait; how fast is bench/'s to say
    expect(item).to_have_class("ev created")
    assert item.evaluate("e => getComputedStyle(e).borderLeftColor") == GREEN
    expect(item.locator(".meta")).to_have_text(re.compile(rf"^{re.escape(events.topic)}:[0-2]@\d+ · \d{{4}}-\d\d-\d\dT"))

    # payload pretty-printed on click
    item.locator("summary").click()
    pre = item.locator("pre")
    expect(pre).to_be_visible()
    assert f'\n  "Title": "{title}"' in pre.inner_text()

    # keyboard: Tab reaches the disclosure, Enter toggles it
    item.locator("summary").focus()
    page.keyboard.press("Enter")
    expect(pre).to_be_hidden()
    page.keyboard.press("Enter")
    expect(pre).to_be_visible()

    events.job(tenant, "JobUpdated", title=f"{title} (moved)", job_id=job)
    events.job(tenant, "JobDeleted", title=f"{title} (gone)", job_id=job)
    events.flush()
    expect(_item(page, f"{title} (gone)")).to_be_visible(timeout=5_000)
    assert _item(page, f"{title} (moved)").evaluate("e => getComputedStyle(e).borderLeftColor") == YELLOW
    assert _item(page, f"{title} (gone)").evaluate("e => getComputedStyle(e).borderLeftColor") == RED
    # newest first
    assert "(gone)" in page.locator("li.ev").first.inner_text()

    # the text filter applies as you type
    page.fill("#filter", "(moved)")
    expect(page.locator("li.ev:visible")).to_have_count(1)
    page.fill("#filter", "")
    expect(_item(page, title).first).to_be_visible()

    # stop the API: the page says so
    page_api.stop()
    expect(status).to_have_attribute("data-state", "down", timeout=15_000)
    expect(page.locator("#status-text")).to_have_text("down")
    while_down = [f"while down {i} {uuid.uuid4().hex[:4]}" for i in range(6)]
    for i, t in enumerate(while_down):
        events.job(tenant, "JobCreated", title=t, partition=i % 3)
    events.flush()
    time.sleep(3)  # long enough for the browser to give up on a retry or two

    page_api.start()
    expect(status).to_have_attribute("data-state", "live", timeout=30_000)
    for t in while_down:
        expect(_item(page, t)).to_have_count(1, timeout=10_000)
    # nothing shown twice, nothing lost
    tags = page.locator("li.ev").evaluate_all("els => els.map(e => e.dataset.tag)")
    assert len(tags) == len(set(tags))
    expect(_item(page, f"{title} (gone)")).to_have_count(1)
