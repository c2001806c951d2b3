"""Starting and stopping the stream hub with the API process.

Why the signal hook: on SIGTERM uvicorn stops accepting connections and then waits for open
responses to finish; an SSE response never finishes by itself, so without being told, every
stream would hang until the graceful-shutdown timeout and then be cut mid-frame. Chaining onto
uvicorn's handler lets each stream write its last frame and end its response properly; browsers
then reconnect (to another process, or to this one once restarted) with their last id.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import threading

from api.stream.hub import StreamHub

log = logging.getLogger("aether.stream")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def start(app) -> StreamHub:
    hub = StreamHub(app.state.settings)
    app.state.stream_hub = hub
    await hub.start()
    hub._previous_handlers = _chain_signals(hub)
    return hub


async def stop(app) -> None:
    hub: StreamHub | None = getattr(app.state, "stream_hub", None)
    if hub is None:
        return
    for sig, handler in (getattr(hub, "_previous_handlers", None) or {}).items():
        signal.signal(sig, handler)
    await hub.stop()


def _chain_signals(hub: StreamHub) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}
    loop = asyncio.get_running_loop()
    previous = {}
    for sig in _SIGNALS:
        prev = signal.getsignal(sig)
        if not callable(prev):
            continue  # nobody (e.g. not under uvicorn) handles it: leave default behaviour alone

        def handler(signum, frame, _prev=prev):
            loop.call_soon_threadsafe(hub.begin_shutdown)
            _prev(signum, frame)

        previous[sig] = prev
        signal.signal(sig, handler)
    return previous
