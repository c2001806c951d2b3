"""api.http_protocol: a small response leaves in one write, and nothing is held past a loop turn.

A real uvicorn server runs the protocol in a thread; its transport is wrapped to record what the
protocol writes to the socket, and plain sockets play the client.
"""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvicorn

from api.http_protocol import HttpToolsProtocol

BODY = b'{"id":"6c0f6d3e-1111-4222-8333-444455556666","status":"Open"}'


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":
        # Head first, first chunk 300 ms later: the head must not wait for it.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await asyncio.sleep(0.3)
        await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 202,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})


class _Recording:
    def __init__(self, transport, writes):
        self._transport = transport
        self._writes = writes

    def write(self, data):
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name):
        return getattr(self._transport, name)


WRITES: list[bytes] = []


class RecordingProtocol(HttpToolsProtocol):
    def connection_made(self, transport):
        super().connection_made(_Recording(transport, WRITES))


@pytest.fixture(scope="module")
def server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=RecordingProtocol, loop="asyncio",
                                        lifespan="off", log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started
    yield port
    srv.should_exit = True
    thread.join(5)


def _read_response(sock: socket.socket, until: bytes) -> bytes:
    data = b""
    while until not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_small_response_is_one_write_with_head_and_body(server):
    WRITES.clear()
    with socket.create_connection(("127.0.0.1", server)) as sock:
        for _ in range(2):  # keep-alive: each response on the connection is coalesced
            sock.sendall(b"POST /api/crm/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            response = _read_response(sock, BODY)
            assert response.startswith(b"HTTP/1.1 202 ")
            assert response.endswith(b"\r\n\r\n" + BODY)
    assert len(WRITES) == 2
    assert all(w.startswith(b"HTTP/1.1 202 ") and w.endswith(BODY) for w in WRITES)


def test_a_head_without_body_is_sent_at_once(server):
    WRITES.clear()
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.settimeout(5)
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.monotonic()
        head = _read_response(sock, b"\r\n\r\n")
        head_after = time.monotonic() - start
        assert head.startswith(b"HTTP/1.1 200 ")
        rest = _read_response(sock, b"0\r\n\r\n")
    assert head_after < 0.2, f"the head waited {head_after:.3f}s for the body"
    assert b"data: one" in head + rest
    assert WRITES[0].endswith(b"\r\n\r\n")  # the head went alone, before the first chunk existed


def test_connection_close_still_delivers_the_whole_response(server):
    WRITES.clear()
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
        response = _read_response(sock, b"\x00never")  # reads until the server closes
    assert response.startswith(b"HTTP/1.1 202 ") and response.endswith(BODY)
    assert len(WRITES) == 1
