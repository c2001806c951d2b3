"""send_now() lets the hub write for parked clients outside their tasks; a send that blocks must
finish, or be cancelled, exactly as if the task had awaited it."""
from __future__ import annotations

import asyncio

import pytest

from api.stream.session import send_now


async def _finish(rest):
    await rest


def test_a_send_that_does_not_block_finishes_at_once():
    async def main():
        sent = []

        async def send(message):
            sent.append(message)

        assert send_now(send, {"n": 1}) is None
        assert sent == [{"n": 1}]

    asyncio.run(main())


def test_a_blocked_send_is_finished_by_the_task_that_awaits_it():
    async def main():
        gates = [asyncio.Event(), asyncio.Event()]
        sent = []

        async def send(message):
            for gate in gates:  # two separate waits, as a drain then a second drain would be
                await gate.wait()
            sent.append(message)
            return "done"

        rest = send_now(send, {"n": 2})
        assert rest is not None and sent == []
        task = asyncio.create_task(_finish(rest))
        await asyncio.sleep(0.01)
        assert not task.done()
        gates[0].set()
        await asyncio.sleep(0.01)
        assert not task.done() and sent == []
        gates[1].set()
        await asyncio.wait_for(task, 1)
        assert sent == [{"n": 2}]

    asyncio.run(main())


def test_cancelling_the_awaiting_task_cancels_the_blocked_send():
    async def main():
        cleaned = []

        async def send(message):
            try:
                await asyncio.Event().wait()
            finally:
                cleaned.append(message)

        task = asyncio.create_task(_finish(send_now(send, {"n": 3})))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned == [{"n": 3}]

    asyncio.run(main())


def test_an_error_in_the_send_reaches_the_caller():
    async def main():
        async def send(message):
            raise OSError("connection reset")

        with pytest.raises(OSError):
            send_now(send, {})

    asyncio.run(main())
