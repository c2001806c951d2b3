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


def test_every_middleware_of_the_app_lets_the_hub_send_outside_a_task(platform_env):
    """The constraint stated where api.main adds the middlewares: a /crm-events response's `send`,
    passed down through every middleware of the real app, finishes when driven by send_now from a
    loop callback, where no task is current."""
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.middleware.exceptions import ExceptionMiddleware

    from api.main import create_app

    app = create_app()
    assert app.user_middleware
    assert not any(issubclass(m.cls, BaseHTTPMiddleware) for m in app.user_middleware)

    async def main():
        captured, wire = {}, []
        loop = asyncio.get_running_loop()
        parked = loop.create_future()

        async def endpoint(scope, receive, send):  # what SseSession does: a head, then a parked send
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
            captured["send"] = send
            await parked

        stack = ExceptionMiddleware(endpoint)
        for m in reversed(app.user_middleware):
            stack = m.cls(stack, *m.args, **m.kwargs)

        async def receive():
            await asyncio.sleep(3600)

        async def send(message):
            wire.append(message)

        scope = {"type": "http", "method": "GET", "path": "/crm-events", "raw_path": b"/crm-events",
                 "query_string": b"", "headers": [], "app": app, "state": {}, "root_path": "",
                 "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1), "http_version": "1.1"}
        task = asyncio.ensure_future(stack(scope, receive, send))
        while "send" not in captured:
            await asyncio.sleep(0)
        results = []
        loop.call_soon(lambda: results.append(
            (asyncio.current_task(), send_now(captured["send"], {"type": "http.response.body", "body": b"data: x\n\n",
                                                                   "more_body": True}))))
        await asyncio.sleep(0.01)
        parked.set_result(None)
        task.cancel()
        return results, wire

    results, wire = asyncio.run(main())
    [(current, rest)] = results
    assert current is None and rest is None
    assert wire[-1]["body"] == b"data: x\n\n"
