"""The API's database connections, opened with the app and closed with it.

Two drivers, each where it is cheapest:
- psycopg 3 (`make_pool`, `checkout`): reads and every multi-statement transaction. Its pipeline
  mode sends a transaction's statements in one round trip, which asyncpg cannot.
- asyncpg (`StatementPool`): the create endpoints' one-statement write, the API's hot path.
  Its protocol is compiled; measured with 50 concurrent clients, a create cost about 0.2 ms of
  CPU less in the API process than through psycopg_pool and psycopg (0.61-0.72 ms instead of
  0.85-0.95 ms), for about 30% more creates per second.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
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


class DatabaseUnreachable(Exception):
    """The statement pool could not reach PostgreSQL (refused, reset, restarting, timed out)."""


# What asyncpg raises when the server is down, restarting or unreachable, as opposed to an error
# in the statement: class 08 (connection), 53 (e.g. too many connections), 57 (shutdown, starting
# up), its own InterfaceError (e.g. the connection was closed under it) and InternalClientError
# (its protocol state broken by a session the server terminated), socket errors, timeouts.
_UNREACHABLE = (OSError, asyncio.TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                asyncpg.PostgresConnectionError, asyncpg.InsufficientResourcesError, asyncpg.OperatorInterventionError)


@functools.lru_cache(maxsize=64)
def dollar_params(sql: str) -> str:
    """psycopg's `%s` placeholders as PostgreSQL's `$1, $2, ...`; `%%` is a literal percent."""
    counter = itertools.count(1)
    return re.sub(r"%[s%]", lambda m: "%" if m.group() == "%%" else f"${next(counter)}", sql)


# How these connections show in pg_stat_activity.
APPLICATION_NAME = "aether-api-statements"


# libpq client options that are not server settings. asyncpg sends any query parameter it does
# not know as a server setting, and the server refuses the connection over these; the psycopg
# pool still honours them.
_LIBPQ_CLIENT_ONLY = {"connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
                      "tcp_user_timeout", "options", "fallback_application_name", "channel_binding", "requirepeer",
                      "gssencmode", "sslcompression", "sslsni", "load_balance_hosts", "hostaddr", "require_auth",
                      "gssdelegation", "sslcertmode", "replication"}


def asyncpg_dsn(database_url: str) -> str:
    """DATABASE_URL (a libpq URL) as asyncpg takes it: the same, less libpq's client-only options.
    libpq's TLS parameters stay: asyncpg reads sslmode (verify-full checks the chain and the host
    name), sslrootcert, sslcert, sslkey, sslpassword and sslcrl from the URL, as psycopg does
    (tests/production proves verify-full and a refused wrong CA through both drivers)."""
    parts = urlsplit(libpq_url(database_url))
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in _LIBPQ_CLIENT_ONLY]
    return urlunsplit((*parts[:3], urlencode(query), parts.fragment))


def make_statement_pool(settings: Settings) -> "StatementPool":
    return StatementPool(asyncpg_dsn(settings.database_url), max_size=settings.db_pool_max)


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no database connection came free in time"))


class StatementPool:
    """asyncpg connections for one-statement writes; see crm.write_one_statement.

    Its own pool, not asyncpg's: asyncpg's acquire and release cost 31 µs of CPU per request
    (measured, uncontended), about a tenth of a create, mostly in release, which shields a new
    Task and resets session state this pool never sets. Every statement here is one autocommit
    statement, so a connection comes back either idle or broken, and release can be synchronous:
    a cancelled request can never strand a connection halfway back.

    Guarantees:
    - At most max_size connections, open or opening. Connections open on demand (none at
      start), so the API starts while the database is down.
    - Waiters are served in arrival order; one still waiting after `timeout` seconds fails
      (DatabaseUnreachable, a 503), as does a connect that fails or takes over 3 s. A waiter that
      times out or is cancelled takes no slot with it.
    - A connection that failed on the client side (socket, protocol, cancellation), or that the
      server closed, is terminated and never handed out again; its slot reconnects on the next
      acquire. So a server restart fails at most the requests that meet a dead socket.
    - A connection idle for over IDLE_LIFETIME seconds is closed instead of used, as asyncpg's
      pool does: a firewall or proxy may have dropped it silently, and a quiet API should not
      hold max_size sessions on the server for ever.
    - No session state outlives a statement (its advisory lock is transaction-scoped), so none
      is reset between requests."""

    IDLE_LIFETIME = 300.0

    def __init__(self, dsn: str, max_size: int, timeout: float = 5.0):
        self._dsn, self._max_size, self._timeout = dsn, max_size, timeout
        # A stack of (connection, when it went idle): the warmest connection goes out first.
        self._idle: list[tuple[asyncpg.Connection, float]] = []
        self._size = 0                             # connections open or opening
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._closed = False
        self._retiring: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones

    async def open(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(asyncpg.InterfaceError("the statement pool is closed"))
        self._waiters.clear()
        idle, self._idle = self._idle, []
        self._size -= len(idle)
        await asyncio.gather(*(conn.close(timeout=2) for conn, _ in idle), return_exceptions=True)

    async def _acquire(self) -> asyncpg.Connection:
        loop = asyncio.get_running_loop()
        deadline = None
        while True:
            if self._closed:
                raise asyncpg.InterfaceError("the statement pool is closed")
            while self._idle:
                conn, since = self._idle.pop()
                if not conn.is_closed() and loop.time() - since < self.IDLE_LIFETIME:
                    return conn
                self._retire(conn)  # closed by the server while idle, or idle too long to trust
            if self._size < self._max_size:
                self._size += 1
                try:
                    return await asyncpg.connect(self._dsn, timeout=3,
                                                 server_settings={"application_name": APPLICATION_NAME})
                except BaseException:
                    self._size -= 1
                    self._wake()
                    raise
            waiter = loop.create_future()
            self._waiters.append(waiter)
            deadline = deadline or loop.time() + self._timeout
            # A bare timer on the future, not asyncio.timeout_at: under load most requests wait
            # here, and the timeout context's task bookkeeping cost a few % of a create (profiled).
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                conn = await waiter
            except BaseException:
                # Handed a connection, or a free slot (None), as the wait ended: pass it on.
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    if (handed := waiter.result()) is None:
                        self._wake()
                    else:
                        self._release(handed)
                raise
            finally:
                timer.cancel()
            if conn is not None:
                return conn
            # None: a slot came free with no connection in it; open one (or take an idle one).

    def _wake(self, conn: asyncpg.Connection | None = None) -> bool:
        """Hand `conn` (or, with None, a free slot) to the first live waiter; False if none."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _release(self, conn: asyncpg.Connection, broken: bool = False) -> None:
        if broken or self._closed or conn.is_closed() or conn.is_in_transaction():
            conn.terminate()
            self._size -= 1
            self._wake()
        elif not self._wake(conn):
            now = asyncio.get_running_loop().time()
            self._idle.append((conn, now))
            # The stack's bottom is the longest idle; under a light load it is never popped.
            if now - self._idle[0][1] >= self.IDLE_LIFETIME:
                self._retire(self._idle.pop(0)[0])

    def _retire(self, conn: asyncpg.Connection) -> None:
        """Close an idle connection in the background, with a goodbye: the server logs a
        connection dropped without one as an error."""
        self._size -= 1
        if conn.is_closed():
            return
        task = asyncio.get_running_loop().create_task(conn.close(timeout=2))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def claimed_write(self, sql: str, params: tuple) -> bool | None:
        """crm.ClaimedStatement: run it, True if it wrote. A constraint that refuses a row (the
        record's unique index after a racing commit, a foreign key) is not an error here: None,
        and the caller's transactional path decides what to answer."""
        try:
            conn = await self._acquire()
            broken = True
            try:
                result = await conn.fetchval(dollar_params(sql), *params)
                broken = False
                return result
            except asyncpg.PostgresError:
                broken = False  # the server answered: the connection is in a known state
                raise
            finally:
                # Anything else (socket, protocol state, cancellation) leaves the connection in
                # an unknown state: terminated, its slot reconnects on the next acquire (asyncpg
                # #1069: its own pool could hand such a connection out again).
                self._release(conn, broken)
        except asyncpg.IntegrityConstraintViolationError:
            return None
        except _UNREACHABLE as exc:
            raise DatabaseUnreachable(f"{type(exc).__name__}: {exc}") from exc
