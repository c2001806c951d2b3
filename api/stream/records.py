"""A Kafka record as the stream keeps it: parsed once, serialised once, shared by every client.

The hub and the catch-up consumers both build records here, so a client sees byte-identical
frames whichever path served it.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE


@dataclass(slots=True)
class Record:
    partition: int
    offset: int
    timestamp: int | None  # Kafka timestamp, epoch ms
    event_type: str | None
    tenant: str | None  # lower-case UUID text
    event_id: str | None
    data: bytes | None  # the `data:` JSON; None once the record is known to be a duplicate
    size: int


def _header_map(msg) -> dict[str, str]:
    out = {}
    for k, v in msg.headers() or ():
        if v is not None:
            out[k] = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return out


def from_message(msg, topic: str) -> Record:
    raw = msg.value()
    try:
        value = orjson.loads(raw) if raw is not None else None
    except orjson.JSONDecodeError:
        # Not ours, but still a record on the topic: show it rather than hide it.
        value = raw.decode("utf-8", "replace")
    key = msg.key()
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    ts_type, ts = msg.timestamp()
    ts = None if ts_type == TIMESTAMP_NOT_AVAILABLE else ts
    headers = _header_map(msg)
    fields = value if isinstance(value, dict) else {}
    event_type = headers.get("event_type") or fields.get("Type")
    tenant = headers.get("tenant_id") or fields.get("TenantId")
    data = orjson.dumps({"kind": "domain_event", "topic": topic, "partition": msg.partition(),
                         "offset": msg.offset(), "timestamp": ts, "key": key, "value": value})
    return Record(partition=msg.partition(), offset=msg.offset(), timestamp=ts,
                  event_type=str(event_type) if event_type is not None else None,
                  tenant=str(tenant).lower() if tenant is not None else None,
                  event_id=headers.get("event_id"), data=data, size=len(data) + 96)


class DedupWindow:
    """The last N event ids of one partition. The relay publishes at least once, so a relay
    killed between produce and marking the row sent publishes the same event id again; its key,
    and so its partition, is the same, which is why a window per partition suffices."""

    def __init__(self, size: int):
        self._order: deque[str] = deque()
        self._ids: set[str] = set()
        self._size = max(1, size)

    def seen(self, event_id: str | None) -> bool:
        """True if the id was already in the window; otherwise remember it."""
        if event_id is None:
            return False
        if event_id in self._ids:
            return True
        self._ids.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self._size:
            self._ids.discard(self._order.popleft())
        return False

    def mark(self, record: Record) -> Record:
        if self.seen(record.event_id):
            record.data = None
        return record


@dataclass(frozen=True, slots=True)
class Filter:
    types: frozenset[str] | None = None
    tenant: str | None = None

    def accepts(self, record: Record) -> bool:
        if record.data is None:
            return False
        if self.types is not None and record.event_type not in self.types:
            return False
        if self.tenant is not None and record.tenant != self.tenant:
            return False
        return True
