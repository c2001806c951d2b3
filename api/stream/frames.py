"""Server-Sent Events framing (WHATWG HTML §9.2): bytes only, no I/O.

Every frame that moves a client forward carries an `id:`. A frame with an id and no data does
not fire `onmessage`, yet browsers still record it as the last event id, which is how a client
that filters everything out, or whose partitions are quiet, still gets a cursor that moves.
"""
from __future__ import annotations

import orjson

from api.stream.cursor import CursorEncoder
from api.stream.records import Filter, Record

KEEPALIVE = b": keepalive\n\n"
SHUTDOWN = b": server shutting down; reconnect\n\n"


def retry(ms: int) -> bytes:
    return b"retry: %d\n\n" % ms


def id_only(cursor: str) -> bytes:
    return b"id: " + cursor.encode() + b"\n\n"


def reset(cursor: str, info: dict) -> bytes:
    return b"event: reset\nid: " + cursor.encode() + b"\ndata: " + orjson.dumps(info) + b"\n\n"


def render(records: list[Record], positions: list[int], encoder: CursorEncoder, flt: Filter,
           out: list[bytes]) -> bool:
    """Append a frame per accepted record to `out`, advancing `positions` and `encoder` past every
    record, accepted or not. Returns True if the last record was skipped, i.e. the position moved
    beyond the last id written and an id-only frame should follow."""
    skipped = False
    for rec in records:
        nxt = rec.offset + 1
        positions[rec.partition] = nxt
        encoder.set(rec.partition, nxt)
        if flt.accepts(rec):
            out.append(b"id: " + encoder.text().encode() + b"\ndata: " + rec.data + b"\n\n")
            skipped = False
        else:
            skipped = True
    return skipped
