"""GET /crm-events against a real API process and real Kafka."""
from __future__ import annotations

import time
import uuid

import httpx

from api.stream.cursor import decode
from tests.stream.conftest import CORS_ORIGIN, MAX_CLIENTS, mine, wait_until
from tests.stream.sse_client import SseClient


def _connect(api, query: str = "", headers=None, **kw) -> SseClient:
    c = SseClient(f"{api.url}/crm-events{query}", headers=headers, **kw)
    c.wait(lambda c: c.last_id(), timeout=15, what="the pinning id frame")
    return c


def test_headers_retry_pin_and_keepalive(stream_api):
    with _connect(stream_api, headers={"Accept-Encoding": "gzip, br", "Origin": CORS_ORIGIN}) as c:
        assert c.status == 200
        assert c.headers["content-type"] == "text/event-stream"
        assert c.headers["cache-control"] == "no-cache"
        assert c.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in c.headers
        assert c.headers["access-control-allow-origin"] == CORS_ORIGIN
        first = c.snapshot()[0]
        assert first.retry == 500
        pin = decode(c.last_id())
        assert len(pin.offsets) == 3  # every partition pinned, quiet ones included
        # keepalive is 1 s in the test configuration (15 s by default)
        c.wait(lambda c: any("keepalive" in x for f in c.snapshot() for x in f.comments), timeout=10,
               what="a keepalive comment")


def test_no_cors_header_for_unknown_origin(stream_api):
    with _connect(stream_api, headers={"Origin": "http://evil.example"}) as c:
        assert "access-control-allow-origin" not in c.headers


def test_bad_input_is_400_problem_before_the_stream(stream_api):
    for query, headers in [("?cursor=nonsense", None), ("?tenant=not-a-uuid", None), ("?since=yesterday", None),
                           ("?types=Job%20Created", None), ("", {"Last-Event-ID": '[{"partition":0}]'}),
                           ("?cursor=1.abc.0.0.0.0.0", None)]:
        r = httpx.get(f"{stream_api.url}/crm-events{query}", headers=headers, timeout=10)
        assert r.status_code == 400, (query, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 400


def test_fan_out_every_client_sees_every_partition(stream_api, events, tenant):
    a, b = _connect(stream_api), _connect(stream_api)
    try:
        sent = [events.job(tenant, partition=p % 3, title=f"fan-{p}") for p in range(9)]
        events.flush()
        for c in (a, b):
            got = c.wait(lambda c: len(mine(c, tenant)) == 9 and mine(c, tenant), what="9 events")
            assert {e["partition"] for e in got} == {0, 1, 2}
            assert sorted(e["value"]["Title"] for e in got) == sorted(s["Title"] for s in sent)
            for e in got:
                assert e["kind"] == "domain_event" and e["topic"] == events.topic
                assert isinstance(e["offset"], int) and isinstance(e["timestamp"], int) and e["key"]
    finally:
        a.close()
        b.close()


def _ids_after(client, tenant):
    """(event, id) pairs of this tenant's events, in arrival order."""
    return [(f.json, f.id) for f in client.snapshot()
            if f.data and f.event is None and f.json["value"].get("TenantId") == tenant]


def test_resume_with_last_event_id_is_exact(stream_api, events, tenant):
    with _connect(stream_api) as c:
        for i in range(12):
            events.job(tenant, title=f"r{i}")
        events.flush()
        c.wait(lambda c: len(mine(c, tenant)) == 12, what="12 events")
        pairs = _ids_after(c, tenant)
    seen, resume_id = [p[0] for p in pairs[:5]], pairs[4][1]
    for i in range(12, 20):
        events.job(tenant, title=f"r{i}")
    events.flush()
    with _connect(stream_api, headers={"Last-Event-ID": resume_id}) as c2:
        c2.wait(lambda c: len(mine(c, tenant)) >= 15, what="the rest after resume")
        time.sleep(0.5)
        rest = mine(c2, tenant)
    titles = [e["value"]["Title"] for e in seen + rest]
    assert sorted(titles) == sorted(f"r{i}" for i in range(20))  # no gap, no duplicate


def test_cursor_query_and_header_precedence(stream_api, events, tenant):
    with _connect(stream_api) as c:
        for i in range(6):
            events.job(tenant, title=f"c{i}")
        events.flush()
        c.wait(lambda c: len(mine(c, tenant)) == 6, what="6 events")
        pairs = _ids_after(c, tenant)
    after_second = pairs[1][1]
    after_fifth = pairs[4][1]
    with _connect(stream_api, f"?cursor={after_second}") as c2:
        c2.wait(lambda c: len(mine(c, tenant)) == 4, what="4 events after the cursor")
        # order holds within a partition only; the set must be exactly what followed the cursor
        assert sorted(e["value"]["Title"] for e in mine(c2, tenant)) == sorted(e["value"]["Title"] for e, _ in pairs[2:])
    # Last-Event-ID (a browser's reconnect) wins over ?cursor= (the page's first connect)
    with _connect(stream_api, f"?cursor={after_second}", headers={"Last-Event-ID": after_fifth}) as c3:
        c3.wait(lambda c: len(mine(c, tenant)) == 1, what="1 event after the header's cursor")
        time.sleep(0.5)
        assert [e["value"]["Title"] for e in mine(c3, tenant)] == [pairs[5][0]["value"]["Title"]]


def test_since_replays_from_a_point_in_time(stream_api, events, tenant):
    for i in range(3):
        events.job(tenant, title=f"before{i}")
    events.flush()
    time.sleep(0.3)
    t = int(time.time() * 1000)
    time.sleep(0.05)
    for i in range(4):
        events.job(tenant, title=f"after{i}")
    events.flush()
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t / 1000)) + f".{t % 1000:03d}Z"
    for since in (str(t), iso):
        with _connect(stream_api, f"?since={since}&tenant={tenant}") as c:
            c.wait(lambda c: len(mine(c, tenant)) == 4, what="the 4 later events")
            time.sleep(0.3)
            assert sorted(e["value"]["Title"] for e in mine(c, tenant)) == [f"after{i}" for i in range(4)]


def test_filters_types_and_tenant_isolation(stream_api, events):
    ta, tb = str(uuid.uuid4()), str(uuid.uuid4())
    with _connect(stream_api, f"?tenant={ta}&types=JobCreated,JobDeleted") as c:
        for i in range(4):
            events.job(ta, "JobCreated", title=f"a{i}")
            events.job(ta, "JobUpdated", title=f"a{i}")
            events.job(tb, "JobCreated", title=f"b{i}")
        events.flush()
        c.wait(lambda c: len(c.events()) >= 4, what="tenant A's JobCreated events")
        high = [h for _, h in events.watermarks()]
        # id-only frames carry the cursor past everything filtered out
        c.wait(lambda c: list(decode(c.last_id()).offsets) == high, what="the cursor to reach the end")
        got = c.events()
    assert len(got) == 4
    assert all(e["value"]["TenantId"] == ta and e["value"]["Type"] == "JobCreated" for e in got)


def test_duplicate_event_ids_are_dropped(stream_api, events, tenant):
    job = str(uuid.uuid4())
    eid = str(uuid.uuid4())
    with _connect(stream_api, f"?tenant={tenant}") as c:
        events.job(tenant, title="original", event_id=eid, job_id=job)
        events.job(tenant, title="redelivered", event_id=eid, job_id=job)  # same key: same partition
        events.job(tenant, "JobUpdated", title="next", job_id=job)
        events.flush()
        c.wait(lambda c: any(e["value"]["Title"] == "next" for e in c.events()), what="the event after the duplicate")
        time.sleep(0.3)
        assert [e["value"]["Title"] for e in c.events()] == ["original", "next"]


def test_load_is_answered_with_retry_not_an_error(stream_api):
    wait_until(lambda: httpx.get(stream_api.url + "/", timeout=5).json()["stream"]["clients"] == 0,
               what="no clients left from other tests")
    clients = [_connect(stream_api) for _ in range(MAX_CLIENTS)]
    try:
        r = httpx.get(f"{stream_api.url}/crm-events", timeout=10)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.text.startswith("retry: ")
        health = httpx.get(stream_api.url + "/", timeout=5).json()
        assert health["stream"]["clients"] == MAX_CLIENTS
        assert set(health["stream"]["consumer_position"]) == {"0", "1", "2"}
    finally:
        for c in clients:
            c.close()
