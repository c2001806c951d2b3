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
