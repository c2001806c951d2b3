"""The resume cursor of the live event stream, and the `since` time parameter.

A cursor names, for every partition of the topic, the next offset the client has not seen, plus
an epoch tag that identifies the topic incarnation. Offsets alone are meaningless once a topic is
deleted and recreated; the epoch lets the server notice that instead of resuming at wrong offsets.

Shape: ``1.<epoch>.<next0>.<next1>...`` with offsets in base 36, e.g. ``1.k3f9a.9ix.9d0.9cw``.

Why this shape: browsers send the id back as `Last-Event-ID`, and a cross-origin reconnect needs
a CORS preflight when that header is longer than 128 bytes or holds characters such as
``"():<>?@[\\]{}``. Digits, letters and dots keep the id safe; base 36 keeps it short (an offset of
a trillion is 8 characters), so a topic of a dozen partitions still fits in 128 bytes.

Every partition is always present, including quiet ones: a cursor that left a partition
unspecified ("latest") would skip whatever arrives there before the client's next event.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone

VERSION = "1"
MAX_BYTES = 128
SAFE_CHARS = re.compile(r"[A-Za-z0-9._~-]*")
_EPOCH = re.compile(r"[0-9a-z]{1,8}")
_OFFSET = re.compile(r"0|[1-9a-z][0-9a-z]{0,12}")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


class CursorError(ValueError):
    """The client sent a cursor this server cannot have issued."""


def _b36(n: int) -> str:
    if n < 0:
        raise ValueError("offsets are never negative")
    if n == 0:
        return "0"
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(_DIGITS[r])
    return "".join(reversed(out))


def topic_epoch(topic: str, topic_id: str | None) -> str:
    """A short stable tag for one incarnation of a topic (its Kafka topic id, when known)."""
    return _b36(zlib.crc32(f"{topic}/{topic_id or ''}".encode()))[:6]


@dataclass(frozen=True)
class Cursor:
    epoch: str
    offsets: tuple[int, ...]  # next offset to deliver, indexed by partition

    def encode(self) -> str:
        text = ".".join((VERSION, self.epoch, *map(_b36, self.offsets)))
        if len(text) > MAX_BYTES:
            raise ValueError(f"cursor of {len(self.offsets)} partitions exceeds {MAX_BYTES} bytes")
        return text


class CursorEncoder:
    """Encodes the cursor after each event of a stream. Only the changed partition is re-encoded,
    because one cursor is written per event per client."""

    def __init__(self, epoch: str, offsets: list[int]):
        self._parts = [VERSION, epoch, *map(_b36, offsets)]

    def set(self, partition: int, next_offset: int) -> None:
        self._parts[2 + partition] = _b36(next_offset)

    def text(self) -> str:
        return ".".join(self._parts)


def decode(text: str) -> Cursor:
    if len(text) > MAX_BYTES:
        raise CursorError(f"cursor longer than {MAX_BYTES} bytes")
    if not SAFE_CHARS.fullmatch(text):
        raise CursorError("cursor has characters outside [A-Za-z0-9._~-]")
    parts = text.split(".")
    if parts[0] != VERSION:
        raise CursorError(f"unknown cursor version {parts[0]!r}")
    if len(parts) < 3:
        raise CursorError("cursor names no partition")
    epoch, offsets = parts[1], parts[2:]
    if not _EPOCH.fullmatch(epoch):
        raise CursorError("malformed cursor epoch")
    for o in offsets:
        if not _OFFSET.fullmatch(o):
            raise CursorError(f"malformed offset {o!r} in cursor")
    return Cursor(epoch, tuple(int(o, 36) for o in offsets))


# Epoch milliseconds from 2001-09-09 onwards have 13 digits; a 10-digit value is almost certainly
# seconds sent by mistake, and replaying from 1970 instead would be a silent surprise.
_MIN_MS = 1_000_000_000_000
_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def parse_since(text: str) -> int:
    """`?since=` as epoch milliseconds: either an integer of epoch ms or an ISO-8601 time
    (a time without zone is UTC)."""
    text = text.strip()
    if not text:
        raise ValueError("since is empty")
    if text.isdigit():
        ms = int(text)
        if not _MIN_MS <= ms <= _MAX_MS:
            raise ValueError("since as a number must be epoch milliseconds (13 digits)")
        return ms
    # An unescaped "+" in a query string arrives as a space: "...T10:00:00 02:00".
    text = re.sub(r" (\d\d:?\d\d)$", r"+\1", text)
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("since must be epoch milliseconds or an ISO-8601 time") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return int(ts.timestamp() * 1000)
