"""The resume cursor and `since` parsing: pure functions, no servers."""
from __future__ import annotations

import re

import pytest

from api.stream.cursor import (MAX_BYTES, Cursor, CursorEncoder, CursorError, decode, parse_since,
                                           topic_epoch)

SAFE = re.compile(r"[A-Za-z0-9._~-]+")


def test_round_trip_is_compact_and_cors_safe():
    c = Cursor(topic_epoch("aetherlink.events", "Xy9"), (0, 18231, 10**12))
    text = c.encode()
    assert decode(text) == c
    assert SAFE.fullmatch(text)
    assert len(text) <= MAX_BYTES


def test_worst_case_three_partitions_fits():
    c = Cursor("zzzzzz", (36**13 - 1,) * 3)
    assert len(c.encode()) <= MAX_BYTES


def test_too_many_partitions_refuses_to_encode():
    with pytest.raises(ValueError):
        Cursor("abc", (36**13 - 1,) * 12).encode()


def test_encoder_matches_full_encode():
    enc = CursorEncoder("ep1", [5, 6, 7])
    enc.set(1, 100)
    assert enc.text() == Cursor("ep1", (5, 100, 7)).encode()
    assert decode(enc.text()).offsets == (5, 100, 7)


def test_epoch_depends_on_topic_incarnation():
    assert topic_epoch("t", "id-1") != topic_epoch("t", "id-2")
    assert topic_epoch("t", "id-1") == topic_epoch("t", "id-1")


@pytest.mark.parametrize("bad", [
    "", "1", "1.abc", "2.abc.0.0.0", "1.ABC.0.0.0", "1.abc.0.-1.0", "1.abc.00.0", "1.abc..0",
    '[{"topic":"x","partition":0,"offset":1}]', "1.abc.0.0.0?x", "1.toolongepoch.0", "1." + "a" * 130,
    "1.abc." + "z" * 14,
])
def test_malformed_cursors_are_rejected(bad):
    with pytest.raises(CursorError):
        decode(bad)


def test_since_accepts_epoch_ms_and_iso():
    assert parse_since("1767225600000") == 1767225600000
    assert parse_since("2026-01-01T00:00:00Z") == 1767225600000
    assert parse_since("2026-01-01T02:00:00+02:00") == 1767225600000
    assert parse_since("2026-01-01T02:00:00 02:00") == 1767225600000  # "+" unescaped in a query string
    assert parse_since("2026-01-01T00:00:00") == 1767225600000  # no zone: UTC
    assert parse_since("2026-01-01T00:00:00.250Z") == 1767225600250


@pytest.mark.parametrize("bad", ["", "yesterday", "1767225600", "-5", "2026-13-01T00:00:00Z"])
def test_since_rejects_garbage_and_seconds(bad):
    with pytest.raises(ValueError):
        parse_since(bad)
