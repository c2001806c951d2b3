"""The relay's doorbell: after a write commits its outbox event, the writer rings the streaming
relay that leads, which then claims at once instead of at its next poll. Plain Python.

Why: with a true Kafka floor under 1 ms, most of commit → ack was the relay's wait for its next
claim (half its 10 ms poll at p50). Polling faster costs CPU all day; a wake-up costs it only
when there is something to claim. PostgreSQL's own wake-up, LISTEN/NOTIFY, is ruled out: a
NOTIFY takes a database-wide lock at commit and serialized every writer (migration 0005).

Guarantees:
- Never in a write's way. A ring is one UDP datagram from a non-blocking socket, sent after the
  commit. It cannot block, fail or slow a write: no listener, a full buffer or an unreachable
  address drops it, silently. Nothing waits for an answer; there is none.
- Latency only, never correctness. A lost ring costs the event its fast path, not its delivery:
  the relay still polls (aether_platform.relay, Relay._pause), and the poll finds every row. A
  writer that never rings (SQL by hand, another service) is served by the poll as before. A ring
  changes *when* the leader claims, never which rows or in what order, so per-key order and the
  single leader are untouched.
- Only the leader listens, and it says where. While it leads, the streaming relay publishes its
  address and a random token in relay_status with each heartbeat, and clears them when it steps
  down. A writer rings only an address whose heartbeat is younger than FRESH_SECONDS.
- Only a database reader can ring. The relay ignores a datagram that does not carry its token,
  so a stray or hostile packet cannot make it claim more often.
- A loopback address is rung only from the host that published it (relay_status holds the
  node's name), so writers on other hosts never ring their own 127.0.0.1.
"""
from __future__ import annotations

import ipaddress
import json
import secrets
import selectors
import socket
import time

# The leader's doorbell, if its heartbeat is fresh. One statement for every writer (the API, the
# benchmarks), with a psycopg placeholder for the relay's name.
FRESH_SECONDS = 10.0
LOOKUP_SQL = f"""
    SELECT doorbell FROM relay_status
    WHERE relay = %s AND doorbell IS NOT NULL AND heartbeat_at > now() - interval '{FRESH_SECONDS:g} seconds'
"""

_WILDCARDS = {"", "0.0.0.0", "::"}


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Doorbell:
    """The relay's side: a UDP socket it waits on between claims."""

    def __init__(self, host: str, advertise_host: str = ""):
        """Raises ValueError for settings writers could never ring, OSError for an address this
        host cannot bind; the relay then logs it and relies on its poll."""
        advertised = advertise_host or host
        if advertised in _WILDCARDS:
            raise ValueError(f"the relay's doorbell binds {host or 'every address'!r}, which writers cannot ring: "
                             "set AETHER_RELAY_DOORBELL_ADVERTISE_HOST to an address they can reach")
        family = socket.getaddrinfo(host or None, 0, type=socket.SOCK_DGRAM)[0][0]
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.setblocking(False)
            self._sock.bind((host, 0))
        except OSError:
            self._sock.close()
            raise
        self._token = secrets.token_bytes(16)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ)
        # "family": writers resolve the advertised name in the family the socket listens on (a
        # name with both A and AAAA records would otherwise be rung over the wrong one).
        self.address = {"host": advertised, "port": self._sock.getsockname()[1], "token": self._token.hex(),
                        "node": socket.gethostname(), "family": 6 if family == socket.AF_INET6 else 4}
        self.rings = 0  # rings that woke a wait (what tests/relay/test_doorbell.py counts)

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds; True as soon as a valid ring arrives (rings that came
        while the relay was busy count: they wait in the socket's buffer)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._selector.select(remaining) and self._drain():
                self.rings += 1
                return True

    def interrupt(self) -> None:
        """Wake a wait from this process (the relay's stop()), with a ring of its own."""
        try:
            self._sock.sendto(self._token, self._sock.getsockname())
        except OSError:
            pass

    def _drain(self) -> bool:
        rung = False
        while True:
            try:
                data = self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return rung
            except OSError:  # e.g. an ICMP error queued on the socket: not a ring
                continue
            rung = rung or secrets.compare_digest(data, self._token)

    def close(self) -> None:
        self._selector.close()
        self._sock.close()


class Ringer:
    """A writer's side: rings the doorbell it was last aimed at (by `aim`, with what LOOKUP_SQL
    returned). Cheap enough to call after every commit: one sendto on a non-blocking socket."""

    def __init__(self):
        self._target: tuple[socket.socket, tuple, bytes] | None = None
        self._aimed_at: object = None
        self._sockets: dict[int, socket.socket] = {}
        self._node = socket.gethostname()

    def aim(self, doorbell: object) -> None:
        """Point at a doorbell (a dict or its JSON text, as relay_status holds it), or at none.
        Resolves the advertised name, so it may block: the API calls it in a worker thread. A
        doorbell that cannot be rung now (a name that does not resolve yet) is tried again on
        the next call."""
        if doorbell == self._aimed_at:
            return
        self._target = None
        self._aimed_at = None
        try:
            d = json.loads(doorbell) if isinstance(doorbell, (str, bytes)) else doorbell
            if not d or (_is_loopback(d["host"]) and d["node"] != self._node):
                self._aimed_at = doorbell  # nothing to ring, and that will not change
                return
            want = socket.AF_INET6 if d.get("family") == 6 else socket.AF_INET
            family, _, _, _, sockaddr = socket.getaddrinfo(d["host"], int(d["port"]), family=want,
                                                           type=socket.SOCK_DGRAM)[0]
            token = bytes.fromhex(d["token"])
        except (ValueError, KeyError, TypeError, OSError):
            return  # not ringable (now): the relay's poll serves every event meanwhile
        sock = self._sockets.get(family)
        if sock is None:
            sock = self._sockets[family] = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
        self._target = (sock, sockaddr, token)
        self._aimed_at = doorbell

    @property
    def aimed(self) -> bool:
        return self._target is not None

    def ring(self) -> None:
        target = self._target
        if target is None:
            return
        sock, sockaddr, token = target
        try:
            sock.sendto(token, sockaddr)
        except OSError:
            pass  # full buffer, unreachable: a lost ring, which the relay's poll covers

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        self._target = None
