"""Resume paths beyond the happy one: positions older than the process's memory, offsets gone
from Kafka, a client too slow to keep up, and an API restart."""
from __future__ import annotations

import time

import httpx
import pytest

from api.stream.cursor import decode
from tests.conftest import ApiServer
from tests.stream.conftest import wait_until
from tests.stream.sse_client import SseClient


@pytest.fixture(scope="module")
def roomy_api(stream_env, tmp_path_factory):
    """The slow-client test's server. Its ring holds more than the test's burst, so only the
    stalled client can be left behind; with the suite's 300-event ring the healthy client, a
    Python thread parsing 10 MB, could itself fall off the ring on a loaded CI machine and be cut
    as lagging (seen once). The send timeout is longer for the same reason."""
    server = ApiServer({**stream_env, "AETHER_SSE_RING_EVENTS": "2000", "AETHER_SSE_SEND_TIMEOUT_SECONDS": "4"},
                       tmp_path_factory.mktemp("roomy-api")).start()
    yield server
    server.close()


def _pin(api, query="") -> str:
    with SseClient(f"{api.url}/crm-events{query}") as c:
        return c.wait(lambda c: c.last_id(), what="the pinning id")


def _health(api) -> dict:
    return httpx.get(api.url + "/", timeout=5).json()["stream"]


def test_old_cursor_catches_up_then_reset_announces_retention_gap(stream_api, events, tenant):
    start = _pin(stream_api)
    # 400 records on partition 0: more than the ring's 300, so `start` is older than memory
    for i in range(400):
        events.job(tenant, title=f"old{i}", partition=0)
    events.flush()
    wait_until(lambda: _health(stream_api)["buffered_from"]["0"] > decode(start).offsets[0], what="ring eviction")
    with SseClient(f"{stream_api.url}/crm-events?tenant={tenant}", headers={"Last-Event-ID": start}) as c:
        c.wait(lambda c: len(c.events()) == 400, timeout=30, what="all 400 via the catch-up consumer")
        time.sleep(0.3)
        titles = [e["value"]["Title"] for e in c.events()]
        assert titles == [f"old{i}" for i in range(400)]  # one partition: exact order, no gap, no duplicate
        assert not any(f.event == "reset" for f in c.snapshot())

    low, high = events.watermarks()[0]
    cut = high - 50
    events.delete_before(0, cut)  # retention took everything before `cut`
    with SseClient(f"{stream_api.url}/crm-events?tenant={tenant}", headers={"Last-Event-ID": start}) as c:
        c.wait(lambda c: len(c.events()) == 50, timeout=30, what="the 50 retained events")
        resets = [f for f in c.snapshot() if f.event == "reset"]
        assert len(resets) == 1
        info = resets[0].json
        assert (info["partition"], info["from"], info["to"]) == (0, decode(start).offsets[0], cut)
        assert info["missed"] == cut - decode(start).offsets[0]
        assert decode(resets[0].id).offsets[0] == cut  # reconnecting does not announce it again
        assert [e["value"]["Title"] for e in c.events()] == [f"old{i}" for i in range(350, 400)]


def test_slow_client_is_disconnected_and_resumes_losslessly(roomy_api, events, tenant):
    stream_api = roomy_api
    slow = SseClient(f"{stream_api.url}/crm-events?tenant={tenant}", rcvbuf=4096, read=False)
    healthy = SseClient(f"{stream_api.url}/crm-events?tenant={tenant}")
    try:
        healthy.wait(lambda c: c.last_id(), what="the healthy client's pin")
        wait_until(lambda: _health(stream_api)["clients"] >= 2, what="both clients registered")
        before = _health(stream_api)["slow_disconnects"]
        n = 1200
        for i in range(n):  # ~10 MB: more than any socket buffer between server and the stalled client
            events.job(tenant, title=f"s{i}", pad=8000)
        events.flush()
        # the healthy client is not held back by the stalled one
        healthy.wait(lambda c: len(c.events()) == n, timeout=60, what="all events at the healthy client")
        assert not healthy.eof, "the healthy client was cut"
        wait_until(lambda: _health(stream_api)["slow_disconnects"] > before, timeout=30,
                   what="the server to drop the stalled client")
        slow.start_reading()
        slow.wait(lambda c: c.eof, timeout=30, what="the end of what the server had flushed")
        assert not slow.clean_end  # cut, not ended: the client must reconnect
        first = [e["value"]["Title"] for e in slow.events()]
        assert len(first) < n
        resume = slow.last_id()
    finally:
        slow.close()
        healthy.close()
    with SseClient(f"{stream_api.url}/crm-events?tenant={tenant}", headers={"Last-Event-ID": resume}) as again:
        again.wait(lambda c: len(first) + len(c.events()) >= n, timeout=60, what="the rest after resuming")
        time.sleep(0.3)
        rest = [e["value"]["Title"] for e in again.events()]
    assert sorted(first + rest) == sorted(f"s{i}" for i in range(n))


def test_sigterm_ends_streams_cleanly_and_resume_survives_restart(stream_api, events, tenant):
    c = SseClient(f"{stream_api.url}/crm-events?tenant={tenant}")
    try:
        for i in range(5):
            events.job(tenant, title=f"a{i}")
        events.flush()
        c.wait(lambda c: len(c.events()) == 5, what="5 events")
        log_before = stream_api.log_path.stat().st_size
        stream_api.stop()  # SIGTERM
        c.wait(lambda c: c.eof, timeout=10, what="the stream to end")
        assert c.clean_end, "the response was cut instead of ended"
        # The stream ended itself on SIGTERM; uvicorn did not have to give up waiting for it
        # (--timeout-graceful-shutdown) and cancel it.
        with open(stream_api.log_path, "rb") as log:
            log.seek(log_before)
            shutdown = log.read().decode(errors="replace")
        assert "Shutting down" in shutdown and "timeout graceful shutdown exceeded" not in shutdown, shutdown
        resume = c.last_id()
    finally:
        c.close()
    for i in range(5, 12):  # written while no API process runs
        events.job(tenant, title=f"a{i}")
    events.flush()
    stream_api.start()
    with SseClient(f"{stream_api.url}/crm-events?tenant={tenant}", headers={"Last-Event-ID": resume}) as c2:
        c2.wait(lambda c: len(c.events()) == 7, what="the 7 events written while down")
        time.sleep(0.3)
        assert sorted(e["value"]["Title"] for e in c2.events()) == sorted(f"a{i}" for i in range(5, 12))
