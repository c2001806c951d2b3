"""The API's connection pool (psycopg 3, async), opened with the app and closed with it."""
from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

from aether_platform.db_url import libpq_url
from aether_platform.settings import Settings


def make_pool(settings: Settings) -> AsyncConnectionPool:
    # open=False: the app opens it in its lifespan, without waiting, so the API starts (and
    # answers 503) even while the database is down, and recovers when it comes back.
    return AsyncConnectionPool(
        libpq_url(settings.database_url),
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        open=False,
        timeout=5.0,
        kwargs={"autocommit": True, "connect_timeout": 3},
    )


class checkout:
    """`async with checkout(pool) as conn`: a connection for one request, returned on exit.

    Why not `pool.connection()`: that also enters the connection's own context, whose exit checks
    for a transaction to commit, and goes through a generator-based context manager; together
    about 40 µs per request (measured with 50 concurrent writers), which a create spends nowhere
    else. The connections are in autocommit mode and the write path ends its own transactions;
    anything left open (a cancelled request) is rolled back by the pool when the connection
    returns, and a broken one is replaced, exactly as with `pool.connection()`."""

    __slots__ = ("_pool", "_conn")

    def __init__(self, pool: AsyncConnectionPool):
        self._pool = pool

    async def __aenter__(self):
        self._conn = await self._pool.getconn()
        return self._conn

    async def __aexit__(self, *exc_info) -> None:
        await self._pool.putconn(self._conn)
