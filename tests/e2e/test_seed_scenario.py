"""The seed's end-to-end scenario, as one test: a job created through the API reaches the outbox,
Kafka, an SSE client and the Command Center page; the replay creates nothing anywhere."""
from __future__ import annotations

import json
import time
import uuid

import httpx
from playwright.sync_api import expect, sync_playwright

from tests.e2e.conftest import report
from tests.stream.conftest import stream_at
from tests.stream.sse_client import SseClient
from tests.conftest import launch_chromium



def test_job_flows_from_api_to_browser_exactly_once(e2e_api, e2e_relay, e2e_env, topic_reader, tmp_path):
    import psycopg

    from aether_platform.db_url import libpq_url

    tenant = str(uuid.uuid4())
    key = f"seed-{uuid.uuid4()}"
    title = f"Seed job {uuid.uuid4().hex[:6]}"
    headers = {"X-Tenant-Id": tenant, "Idempotency-Key": key}
    body = {"accountId": None, "title": title, "status": "Open"}

    with SseClient(f"{e2e_api.url}/crm-events?tenant={tenant}") as sse, sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_page()
        page.goto(f"{e2e_api.url}/ops/crm-events")
        expect(page.locator("#status")).to_have_attribute("data-state", "live", timeout=15_000)
        sse.wait(lambda c: c.status == 200 and c.last_id() is not None, what="the stream's first id")

        # 1. The request.
        first = httpx.post(f"{e2e_api.url}/api/crm/jobs", json=body, headers=headers, timeout=30)
        assert first.status_code == 202
        job_id = first.json()["id"]

        # 2. The outbox row, then its published_at.
        with psycopg.connect(libpq_url(e2e_env["DATABASE_URL"]), autocommit=True) as db:
            rows = db.execute("SELECT event_id, type, aggregate_key FROM outbox_events WHERE aggregate_key = %s",
                              (job_id,)).fetchall()
            assert [(r[1], r[2]) for r in rows] == [("JobCreated", job_id)]
            event_id = str(rows[0][0])
            deadline = time.monotonic() + 30
            while db.execute("SELECT published_at FROM outbox_events WHERE event_id = %s",
                             (event_id,)).fetchone()[0] is None:
                assert time.monotonic() < deadline, "the relay never marked the event published"
                time.sleep(0.05)

        # 3. The Kafka record: seed value shape, contract headers, key = job id.
        records = topic_reader.poll_until(lambda rs: any(m.key() == job_id.encode() for m in rs), 30)
        [record] = [m for m in records if m.key() == job_id.encode()]
        value = json.loads(record.value())
        assert set(value) == {"Type", "TenantId", "JobId", "Title", "Status", "Ts"}
        assert (value["Type"], value["TenantId"], value["JobId"], value["Title"]) == ("JobCreated", tenant, job_id, title)
        hdrs = {k: v.decode() for k, v in record.headers()}
        assert hdrs["event_id"] == event_id and hdrs["event_type"] == "JobCreated" and hdrs["tenant_id"] == tenant
        assert hdrs["occurred_at"]

        # 4. The SSE client and the Command Center page, with topic:partition@offset.
        sse.wait(lambda c: any(e["key"] == job_id for e in c.events()), timeout=15, what="the event on SSE")
        [event] = [e for e in sse.events() if e["key"] == job_id]
        assert event["kind"] == "domain_event" and event["topic"] == e2e_env["AETHER_TOPIC"]
        assert (event["partition"], event["offset"]) == (record.partition(), record.offset())
        assert event["value"] == value
        item = page.locator("li.ev", has_text=title)
        expect(item).to_be_visible(timeout=5_000)
        expect(item).to_contain_text(f"{e2e_env['AETHER_TOPIC']}:{record.partition()}@{record.offset()}")

        # 5. The same request again: the replayed 202, and no second event anywhere.
        again = httpx.post(f"{e2e_api.url}/api/crm/jobs", json=body, headers=headers, timeout=30)
        assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
        assert again.content == first.content
        # A second event would be in the outbox now (the 202 commits it). Once the relay has
        # published what is there, Kafka is read to its end and the stream's cursor follows it
        # there, so a copy anywhere on the path is counted.
        with psycopg.connect(libpq_url(e2e_env["DATABASE_URL"]), autocommit=True) as db:
            outbox_count = db.execute("SELECT count(*) FROM outbox_events WHERE aggregate_key = %s",
                                      (job_id,)).fetchone()[0]
            deadline = time.monotonic() + 30
            while db.execute("SELECT count(*) FROM outbox_events WHERE aggregate_key = %s AND published_at IS NULL",
                             (job_id,)).fetchone()[0]:
                assert time.monotonic() < deadline, "the relay never published the job's events"
                time.sleep(0.05)
        topic_reader.read_to_end()
        ends = topic_reader.ends()
        sse.wait(lambda c: stream_at(c, ends), timeout=15, what="the stream to reach the end of the topic")
        on_topic = sum(1 for m in topic_reader.records if m.key() == job_id.encode())
        on_sse = sum(1 for e in sse.events() if e["key"] == job_id)
        time.sleep(1)  # the page has no cursor to wait on; a copy would be on it by now
        on_page = page.locator("li.ev", has_text=title).count()
        browser.close()
    report("seed", requests=2, accepted=2, outbox=outbox_count, kafka=on_topic, sse=on_sse, page=on_page)
    assert (outbox_count, on_topic, on_sse, on_page) == (1, 1, 1, 1)
