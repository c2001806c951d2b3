"""INSERT statements as data, so that one write can be sent as ONE SQL statement.

A write inserts up to three rows (business row, outbox event, idempotency record). Kept as data
rather than SQL text, they can be rendered plainly (`INSERT ... VALUES`) or guarded
(`INSERT ... SELECT ... FROM <guard>`): the guarded form inserts only if the guard yields a row,
which lets the idempotency claim and the inserts share one statement and one round trip.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class Insert:
    table: str
    columns: tuple[str, ...]
    params: tuple
    # One SQL expression per column; "%s" unless a cast is needed (e.g. "%s::jsonb").
    placeholders: tuple[str, ...] | None = None

    @property
    def shape(self) -> tuple:
        """Everything the SQL text depends on (not the values)."""
        return self.table, self.columns, self.placeholders

    def sql(self, guard: str | None = None) -> str:
        values = ", ".join(self.placeholders or ("%s",) * len(self.columns))
        head = f"INSERT INTO {self.table} ({', '.join(self.columns)})"
        return f"{head} VALUES ({values})" if guard is None else f"{head} SELECT {values} FROM {guard}"


def fold(inserts: list[Insert], guard: str | None = None, head: tuple[str, tuple] = ("", ()),
         tail: str | None = None) -> tuple[str, tuple]:
    """Several inserts as one statement of data-modifying CTEs, which PostgreSQL always runs to
    completion, in one snapshot, atomically.

    `head` is a leading CTE list (SQL, params) that the guard may name; `tail` is the final
    query; without one the last insert is it. Placeholders keep their order, so params concatenate.
    """
    head_sql, head_params = head
    params = tuple(head_params)
    for ins in inserts:
        params += ins.params
    return _folded_sql(tuple(ins.shape for ins in inserts), guard, head_sql, tail), params


@functools.lru_cache(maxsize=256)
def _folded_sql(shapes: tuple, guard: str | None, head_sql: str, tail: str | None) -> str:
    # A write's text depends only on the shape of its inserts, of which there are a handful; built
    # once, it is also the same string object every time, which psycopg's own caches hash for free.
    inserts = [Insert(table, columns, (), placeholders) for table, columns, placeholders in shapes]
    ctes = [head_sql] if head_sql else []
    body = inserts if tail is not None else inserts[:-1]
    ctes += [f"w{i} AS ({ins.sql(guard)})" for i, ins in enumerate(body)]
    last = tail if tail is not None else inserts[-1].sql(guard)
    return f"WITH {', '.join(ctes)} {last}" if ctes else last
