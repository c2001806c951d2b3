"""The create endpoints' one-statement write through asyncpg (api.db.StatementPool), against the
real PostgreSQL: what it writes, what it leaves to the transactional path, and how it fails."""
from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta

import psycopg
import pytest

from aether_platform import aggregates, crm, idempotency
from aether_platform.db_url import libpq_url
from aether_platform.idempotency import IdempotentRequest, Verdict
from api.db import APPLICATION_NAME, DatabaseUnreachable, StatementPool, asyncpg_dsn, dollar_params
from tests.api.conftest import new_key, outbox_rows
from tests.conftest import refused_port

PATH = "/api/crm/jobs"


def test_placeholders_are_numbered_and_a_doubled_percent_is_a_literal_one():
    assert dollar_params("SELECT %s, %s::jsonb, 7 %% 2, %s") == "SELECT $1, $2::jsonb, 7 % 2, $3"


def test_libpq_client_options_are_left_out_and_server_ones_kept(database_url):
    """asyncpg would send connect_timeout to the server as a setting, and the server refuses it."""
    url = libpq_url(database_url) + "?connect_timeout=3&sslmode=disable&keepalives=1"
    dsn = asyncpg_dsn(url)
    assert dsn == libpq_url(database_url) + "?sslmode=disable"

    async def main():
        pool = StatementPool(dsn, max_size=1)
        await pool.open()
        try:
            return await pool.claimed_write("SELECT %s::int = 1", (1,))
        finally:
            await pool.close()

    assert asyncio.run(main()) is True


def _request(tenant: str, key: str, body: dict) -> IdempotentRequest:
    return IdempotentRequest(tenant_id=uuid.UUID(tenant), key=key, method="POST", path=PATH,
                             fingerprint=idempotency.fingerprint("POST", PATH, body), ttl=timedelta(hours=1))


def _create_job(tenant: str, body: dict) -> crm.Command:
    values = {"title": body["title"], "status": "Open", "account_id": body.get("accountId")}
    return crm.create(aggregates.JOB, uuid.UUID(tenant), values)


async def _writes(url: str, writes: list[tuple[str, str, dict]]) -> list:
    """Each (tenant, key, body) through one pool, in order; a result or the exception raised."""
    pool = StatementPool(url, max_size=2)
    await pool.open()
    results = []
    try:
        for tenant, key, body in writes:
            try:
                results.append(await crm.write_one_statement(pool.claimed_write, _request(tenant, key, body),
                                                             _create_job(tenant, body), 202))
            except Exception as exc:  # noqa: BLE001 - the tests below assert which
                results.append(exc)
    finally:
        await pool.close()
    return results


def _counts(db, tenant: str) -> tuple[int, int, int]:
    jobs = db.execute("SELECT count(*) FROM jobs WHERE tenant_id = %s", (tenant,)).fetchone()[0]
    keys = db.execute("SELECT count(*) FROM idempotency_keys WHERE tenant_id = %s", (tenant,)).fetchone()[0]
    return jobs, len(outbox_rows(db, tenant)), keys


def test_a_fresh_key_commits_row_event_and_record_together(database_url, db, tenant):
    (result,) = asyncio.run(_writes(libpq_url(database_url), [(tenant, new_key(), {"title": "Fit valve"})]))
    assert result.verdict is Verdict.EXECUTE and result.status_code == 202
    assert _counts(db, tenant) == (1, 1, 1)
    assert outbox_rows(db, tenant)[0][0] == "JobCreated"


def test_a_used_key_writes_nothing_and_leaves_the_answer_to_the_transaction(database_url, db, tenant):
    key = new_key()
    first, second = asyncio.run(_writes(libpq_url(database_url), [(tenant, key, {"title": "a"}),
                                                                  (tenant, key, {"title": "a"})]))
    assert first.verdict is Verdict.EXECUTE
    assert second is None
    assert _counts(db, tenant) == (1, 1, 1)


def test_a_refused_foreign_key_writes_nothing_and_is_left_to_the_transaction(database_url, db, tenant):
    (result,) = asyncio.run(_writes(libpq_url(database_url),
                                    [(tenant, new_key(), {"title": "a", "accountId": uuid.uuid4()})]))
    assert result is None
    assert _counts(db, tenant) == (0, 0, 0)


def test_a_database_that_refuses_connections_is_unreachable_not_an_error(tenant):
    with refused_port() as nowhere:
        (result,) = asyncio.run(_writes(f"postgresql://aether@127.0.0.1:{nowhere}/crm",
                                        [(tenant, new_key(), {"title": "a"})]))
    assert isinstance(result, DatabaseUnreachable)


def test_connections_killed_by_the_server_are_replaced(database_url, db, tenant):
    """What a PostgreSQL restart does to idle pooled connections: the next writes get a new one."""
    url = libpq_url(database_url)

    async def main():
        pool = StatementPool(url, max_size=2)
        await pool.open()
        try:
            async def write(title):
                return await crm.write_one_statement(pool.claimed_write, _request(tenant, new_key(), {"title": title}),
                                                     _create_job(tenant, {"title": title}), 202)
            assert (await write("before")).verdict is Verdict.EXECUTE
            with psycopg.connect(url, autocommit=True) as admin:
                killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                       " WHERE application_name = %s AND datname = current_database()",
                                       (APPLICATION_NAME,)).fetchone()[0]
            assert killed >= 1
            outcomes = []
            for attempt in range(3):
                try:
                    outcomes.append((await write(f"after {attempt}")).verdict)
                except DatabaseUnreachable as exc:  # at most the request that meets the dead socket
                    outcomes.append(exc)
            return outcomes
        finally:
            await pool.close()

    outcomes = asyncio.run(main())
    assert outcomes[-1] is Verdict.EXECUTE and outcomes[-2] is Verdict.EXECUTE, outcomes
    assert _counts(db, tenant)[0] == 1 + outcomes.count(Verdict.EXECUTE)


def test_sessions_terminated_mid_statement_answer_unreachable_and_the_pool_recovers(database_url):
    """What a restart does to busy connections: the server ends sessions while statements are in
    flight. Each such write is DatabaseUnreachable (a 503), never another error (asyncpg can raise
    InternalClientError here and return the broken connection to its pool), and once the
    terminations stop every write succeeds again."""
    url = libpq_url(database_url)

    async def main():
        pool = StatementPool(url, max_size=10)
        await pool.open()
        outcomes: list = []
        stop = asyncio.Event()

        async def writer():
            while not stop.is_set():
                try:
                    outcomes.append(await pool.claimed_write("SELECT pg_sleep(0.001) IS NOT NULL OR %s::int = 1", (1,)))
                except Exception as exc:  # noqa: BLE001 - asserted below
                    outcomes.append(exc)

        writers = [asyncio.create_task(writer()) for _ in range(20)]
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
                for _ in range(100):
                    await asyncio.sleep(0.01)
                    await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                        " WHERE application_name = %s AND datname = current_database()",
                                        (APPLICATION_NAME,))
        finally:
            stop.set()
            await asyncio.gather(*writers)
        await asyncio.sleep(0.2)  # the last terminations reach their (idle) connections
        after = await asyncio.gather(*(pool.claimed_write("SELECT %s::int = 1", (1,)) for _ in range(20)))
        await pool.close()
        return outcomes, after

    outcomes, after = asyncio.run(main())
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert errors, "no statement was interrupted; the test did not exercise anything"
    assert {type(e) for e in errors} == {DatabaseUnreachable}, {type(e).__name__ for e in errors}
    assert after == [True] * 20


def _sessions(url: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as admin:
        return [r[0] for r in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
            (APPLICATION_NAME,)).fetchall()]


@contextlib.asynccontextmanager
async def _opened(dsn: str, **kwargs):
    pool = StatementPool(dsn, **kwargs)
    await pool.open()
    try:
        yield pool
    finally:
        await pool.close()


PID_SQL = "SELECT pg_backend_pid() + %s::int"
SLEEP_SQL = "SELECT pg_sleep(%s) IS NOT NULL"
SLEEP_PID_SQL = "SELECT pg_backend_pid() FROM pg_sleep(%s)"
# Sessions of other tests may linger (a statement cut off on the client side runs on until it
# next looks at its socket), so these tests follow their own sessions by pid.


def test_writers_beyond_the_pool_size_wait_their_turn_on_at_most_that_many_sessions(database_url):
    url = libpq_url(database_url)

    async def main():
        async with _opened(url, max_size=2) as pool:
            results = await asyncio.gather(*(pool.claimed_write(SLEEP_PID_SQL, (0.02,)) for _ in range(12)))
            return results, _sessions(url)

    pids, sessions = asyncio.run(main())
    # Each session the pool opened ran a statement: two pids, two sessions.
    assert len(set(pids)) == 2 and set(pids) <= set(sessions), (pids, sessions)


def test_a_writer_that_waits_too_long_fails_unreachable_and_takes_no_slot_with_it(database_url):
    url = libpq_url(database_url)

    async def main():
        async with _opened(url, max_size=1, timeout=0.2) as pool:
            before = await pool.claimed_write(PID_SQL, (0,))
            busy = asyncio.create_task(pool.claimed_write(SLEEP_SQL, (1.0,)))
            await asyncio.sleep(0.1)
            with pytest.raises(DatabaseUnreachable, match="TimeoutError"):
                await pool.claimed_write(PID_SQL, (0,))
            gave_up_first = not busy.done()
            cancelled = asyncio.create_task(pool.claimed_write(PID_SQL, (0,)))
            await asyncio.sleep(0.05)
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            assert await busy is True
            return before, gave_up_first, await pool.claimed_write(PID_SQL, (0,))

    before, gave_up_first, after = asyncio.run(main())
    assert gave_up_first, "the writer waited for the busy statement to end, not for its deadline"
    assert after == before, "the one slot is still served by its one session"


def test_a_writer_cancelled_mid_statement_leaves_no_session_in_an_unknown_state(database_url):
    """Its connection is dropped rather than handed out again, and its slot opens a new one."""
    url = libpq_url(database_url)

    async def main():
        async with _opened(url, max_size=1) as pool:
            first = await pool.claimed_write(PID_SQL, (0,))
            interrupted = asyncio.create_task(pool.claimed_write(SLEEP_SQL, (1.0,)))
            await asyncio.sleep(0.2)
            interrupted.cancel()
            with pytest.raises(asyncio.CancelledError):
                await interrupted
            return first, await asyncio.wait_for(pool.claimed_write(PID_SQL, (0,)), 5)

    first, after = asyncio.run(main())
    assert after != first


def test_a_connection_idle_past_its_lifetime_is_closed_not_used(database_url):
    url = libpq_url(database_url)

    async def main():
        async with _opened(url, max_size=2) as pool:
            pool.IDLE_LIFETIME = 0.5
            # Two sessions, then only one in use: the other idles at the bottom of the stack.
            opened = set(await asyncio.gather(pool.claimed_write(SLEEP_PID_SQL, (0.1,)),
                                              pool.claimed_write(SLEEP_PID_SQL, (0.1,))))
            assert len(opened) == 2 and opened <= set(_sessions(url))
            pids = set()
            loop = asyncio.get_running_loop()
            end = loop.time() + 1.5
            while loop.time() < end:
                pids.add(await pool.claimed_write(PID_SQL, (0,)))
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)  # the background close reaches the server
            alive = opened & set(_sessions(url))
            await asyncio.sleep(0.7)
            return pids, alive, await pool.claimed_write(PID_SQL, (0,))

    pids, alive, last = asyncio.run(main())
    assert len(pids) == 1 and alive == pids, "the one idle past its lifetime was closed"
    assert last not in pids, "a connection idle past its lifetime is not used again"


def test_a_free_slot_handed_to_a_waiter_that_is_then_cancelled_passes_to_the_next(database_url):
    """A broken connection frees its slot to the first waiter; if that waiter is cancelled before
    it runs, the slot must go on to the next one, not stay free while others wait."""
    url = libpq_url(database_url)

    async def main():
        async with _opened(url, max_size=1) as pool:
            held = await pool._acquire()
            first = asyncio.create_task(pool._acquire())
            second = asyncio.create_task(pool._acquire())
            await asyncio.sleep(0.05)  # both are waiting
            pool._release(held, broken=True)  # the slot goes to `first`, which has not run yet
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            conn = await asyncio.wait_for(second, 3)
            pool._release(conn)
            return await pool.claimed_write(PID_SQL, (0,))

    assert isinstance(asyncio.run(main()), int)
