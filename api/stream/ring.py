"""The recent history of one partition, held by the process's single consumer.

Clients are positions into these rings rather than owners of queues: a record is stored once
however many clients read it, and a client that fell behind reads on from where it is. The ring
promises that every record with an offset in [lo, next) is held, so a position in that range is
served from memory; a position below `lo` is older than memory and needs a catch-up consumer.
"""
from __future__ import annotations

from bisect import bisect_left

from api.stream.records import Record


class PartitionRing:
    def __init__(self, start: int, max_events: int, max_bytes: int):
        # Offsets are not contiguous (transaction markers, compaction), so look them up by bisect.
        # A list with a moving head instead of a deque: bisect needs O(1) indexing.
        self._offsets: list[int] = []
        self._records: list[Record] = []
        self._head = 0
        self._max_events = max(1, max_events)
        self._max_bytes = max(1, max_bytes)
        self.bytes = 0
        self.lo = start
        self.next = start

    def __len__(self) -> int:
        return len(self._records) - self._head

    def append(self, record: Record) -> bool:
        if record.offset < self.next:
            return False  # already held: librdkafka re-fetched after a reconnect
        self._offsets.append(record.offset)
        self._records.append(record)
        self.bytes += record.size
        self.next = record.offset + 1
        while len(self) > self._max_events or (self.bytes > self._max_bytes and len(self) > 1):
            old = self._records[self._head]
            self._records[self._head] = None  # type: ignore[call-overload]  # free it now
            self._head += 1
            self.bytes -= old.size
            self.lo = old.offset + 1
        if self._head > 1024 and self._head * 2 > len(self._records):
            del self._offsets[:self._head]
            del self._records[:self._head]
            self._head = 0
        return True

    def read(self, position: int, limit: int, end: int) -> list[Record]:
        """Up to `limit` held records in [position, end); position must be >= lo."""
        i = bisect_left(self._offsets, position, self._head)
        j = bisect_left(self._offsets, end, i, min(len(self._offsets), i + limit))
        return self._records[i:j]
