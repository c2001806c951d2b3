"""The relay's doorbell (aether_platform/doorbell.py): a writer's ring wakes the leading streaming
relay, which then claims at once; a ring without the leader's token, or aimed at another host's
loopback, wakes nothing; the leader publishes where it listens and clears it when it steps down;
and the API rings after every committed write."""
from __future__ import annotations

import socket
import threading
import time
import uuid

import httpx
import pytest
from psycopg.types.json import Jsonb

from aether_platform.doorbell import LOOKUP_SQL, Doorbell, Ringer
from aether_platform.relay import RELAY_NAME, Relay
from tests.relay.conftest import write_events


def _eventually(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)
    return value


# ------------------------------------------------------------------ the bell alone (real UDP)

def test_a_ring_wakes_the_bell_and_a_wrong_token_does_not():
    bell = Doorbell("127.0.0.1")
    ringer = Ringer()
    try:
        assert not bell.wait(0.2)  # nothing rang
        ringer.aim(bell.address)
        assert ringer.aimed
        ringer.ring()
        assert bell.wait(10)
        assert bell.rings == 1
        # A datagram from a stranger (no token) is read and ignored.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.sendto(b"let me in", ("127.0.0.1", bell.address["port"]))
        assert not bell.wait(0.3)
        assert bell.rings == 1
        # Rings that came while the relay was busy are one wake-up, not many.
        for _ in range(5):
            ringer.ring()
        assert bell.wait(10)
        assert not bell.wait(0.2)
    finally:
        ringer.close()
        bell.close()


def test_a_ringer_never_rings_another_hosts_loopback_nor_a_malformed_address():
    bell = Doorbell("127.0.0.1")
    try:
        ringer = Ringer()
        ringer.aim({**bell.address, "node": "some-other-host"})
        assert not ringer.aimed
        ringer.ring()  # aimed at nothing: a no-op
        assert not bell.wait(0.2)
        for junk in (None, {}, "not json", {"host": "127.0.0.1"}, {**bell.address, "token": "zz"}):
            ringer.aim(junk)
            assert not ringer.aimed, junk
        ringer.aim(bell.address)
        assert ringer.aimed
        ringer.close()
    finally:
        bell.close()


def _rings(bell: Doorbell) -> bool:
    """Whether a ringer aimed at what `bell` publishes wakes it."""
    ringer = Ringer()
    try:
        ringer.aim(bell.address)
        ringer.ring()
        return bell.wait(10)
    finally:
        ringer.close()
        bell.close()


def test_an_ipv6_bell_is_rung_over_ipv6():
    bell = Doorbell("::1")
    assert bell.address["family"] == 6
    assert _rings(bell)


def test_a_wildcard_bind_needs_an_address_writers_can_reach():
    with pytest.raises(ValueError, match="AETHER_RELAY_DOORBELL_ADVERTISE_HOST"):
        Doorbell("0.0.0.0")
    assert _rings(Doorbell("0.0.0.0", advertise_host="127.0.0.1"))


# ------------------------------------------------------------------ the leader (PostgreSQL + Kafka)

def _published(db, event_id) -> bool:
    return db.execute("SELECT published_at IS NOT NULL FROM outbox_events WHERE event_id = %s",
                      (event_id,)).fetchone()[0]


def test_a_ring_makes_the_sleeping_leader_claim_and_it_clears_its_bell_when_it_steps_down(
        relay_config, outbox_db, tenant):
    # Polls 60 s apart: within this test, only a ring can make the relay claim again.
    cfg = relay_config.model_copy(update={"idle_poll_seconds": 60.0, "idle_poll_max_seconds": 60.0})
    relay = Relay(cfg, mode="streaming")
    worker = threading.Thread(target=relay.run, daemon=True)
    worker.start()
    try:
        doorbell = _eventually(lambda: outbox_db.execute(LOOKUP_SQL, (RELAY_NAME,)).fetchone(), 30,
                               "the leader to publish its doorbell")[0]
        ringer = Ringer()
        ringer.aim(doorbell)
        assert ringer.aimed
        time.sleep(1.0)  # the relay's first claims are done; it now sleeps out its 60 s poll
        [event] = write_events(outbox_db, tenant, [uuid.uuid4()], 1)
        time.sleep(2.0)
        assert not _published(outbox_db, str(event.event_id)), "the relay claimed without a ring: the test proves nothing"
        ringer.ring()
        _eventually(lambda: _published(outbox_db, str(event.event_id)), 30, "the rung relay to publish")
        ringer.close()
    finally:
        relay.stop()
        worker.join(30)  # stop() rings the relay out of its 60 s wait
    assert not worker.is_alive()
    row = outbox_db.execute("SELECT doorbell FROM relay_status WHERE relay = %s", (RELAY_NAME,)).fetchone()
    assert row == (None,), "a relay that stepped down still tells writers to ring it"


def test_a_relay_whose_doorbell_cannot_listen_still_publishes_by_its_poll(relay_config, outbox_db, tenant):
    # 0.0.0.0 with no address to advertise: writers could never ring it. A latency feature must
    # not stop delivery: the relay says so and polls.
    cfg = relay_config.model_copy(update={"doorbell_host": "0.0.0.0", "doorbell_advertise_host": ""})
    relay = Relay(cfg, mode="streaming")
    worker = threading.Thread(target=relay.run, daemon=True)
    worker.start()
    try:
        [event] = write_events(outbox_db, tenant, [uuid.uuid4()], 1)
        _eventually(lambda: _published(outbox_db, str(event.event_id)), 30, "the relay to publish by its poll")
        assert outbox_db.execute("SELECT doorbell FROM relay_status WHERE relay = %s",
                                 (RELAY_NAME,)).fetchone() == (None,)
    finally:
        relay.stop()
        worker.join(30)
    assert not worker.is_alive()


# ------------------------------------------------------------------ the API rings (API process)

def test_the_api_rings_the_published_doorbell_after_each_committed_write(api_server, db, tenant):
    bell = Doorbell("127.0.0.1")
    client = httpx.Client(base_url=api_server.url, timeout=10)

    def create() -> None:
        r = client.post("/api/crm/jobs", json={"title": "ring", "status": "Open"},
                        headers={"X-Tenant-Id": tenant, "Idempotency-Key": uuid.uuid4().hex})
        assert r.status_code == 202, r.text

    try:
        db.execute("DELETE FROM relay_status WHERE relay = %s", (RELAY_NAME,))
        db.execute("INSERT INTO relay_status (relay, heartbeat_at, doorbell) VALUES (%s, now(), %s)",
                   (RELAY_NAME, Jsonb(bell.address)))

        def rung_after_a_create() -> bool:
            create()
            return bell.wait(0.5)

        # The API re-reads relay_status every second, so within a few creates it rings.
        _eventually(rung_after_a_create, 30, "the API to ring after a create")
        # A replay commits nothing new: no ring.
        key = uuid.uuid4().hex
        headers = {"X-Tenant-Id": tenant, "Idempotency-Key": key}
        assert client.post("/api/crm/jobs", json={"title": "once", "status": "Open"}, headers=headers).status_code == 202
        assert bell.wait(10)
        replay = client.post("/api/crm/jobs", json={"title": "once", "status": "Open"}, headers=headers)
        assert replay.headers.get("Idempotent-Replayed") == "true"
        assert not bell.wait(1.0), "a replay rang the relay"
    finally:
        db.execute("DELETE FROM relay_status WHERE relay = %s", (RELAY_NAME,))
        client.close()
        bell.close()
