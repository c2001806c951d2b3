"""api.http_protocol: a small response leaves in one write, and nothing is held past a loop turn,
reordered, or lost on close.

Real uvicorn servers (on uvloop, as in production, and on asyncio) run the protocol in a thread;
the socket transport is wrapped to record what reaches it, and plain sockets play the client. The
wrapper's own guarantees are also checked on a recording transport, where timing is exact.
"""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvicorn

from api.http_protocol import HeadHoldingTransport, HttpToolsProtocol

BODY = b'{"id":"6c0f6d3e-1111-4222-8333-444455556666","status":"Open"}'
# Set by the client once it has the head of /stream: only then does the app send a first chunk.
HEAD_RECEIVED = threading.Event()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":
        # Head first, and the first chunk only once the client has the head (or 10 s later, past
        # the client's 5 s read timeout): a head held for the body is a timeout, not a slow pass.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for _ in range(1000):
            if HEAD_RECEIVED.is_set():
                break
            await asyncio.sleep(0.01)
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

    def writelines(self, chunks):
        self._writes.append(b"".join(chunks))
        self._transport.writelines(chunks)

    def __getattr__(self, name):
        return getattr(self._transport, name)


WRITES: list[bytes] = []


class RecordingProtocol(HttpToolsProtocol):
    def connection_made(self, transport):
        super().connection_made(_Recording(transport, WRITES))


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def server(request):
    # The server serves a socket bound here, on port 0: no other process can take its port.
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, http=RecordingProtocol, loop=request.param,
                                        lifespan="off", log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started
    yield port
    srv.should_exit = True
    thread.join(5)
    sock.close()


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
    HEAD_RECEIVED.clear()
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.settimeout(5)
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            head = _read_response(sock, b"\r\n\r\n")
        except TimeoutError:
            pytest.fail("the head was held for the body, which is only sent once the head has arrived")
        HEAD_RECEIVED.set()
        assert head.startswith(b"HTTP/1.1 200 ")
        rest = _read_response(sock, b"0\r\n\r\n")
    assert b"data: one" in head + rest
    assert WRITES[0].endswith(b"\r\n\r\n")  # the head went alone, before the first chunk existed


def test_connection_close_still_delivers_the_whole_response(server):
    WRITES.clear()
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
        response = _read_response(sock, b"\x00never")  # reads until the server closes
    assert response.startswith(b"HTTP/1.1 202 ") and response.endswith(BODY)
    assert len(WRITES) == 1


# --------------------------------------------------------------------------- the wrapper alone


class _FakeTransport:
    def __init__(self):
        self.log: list = []
        self.closing = False

    def write(self, data):
        self.log.append(("write", bytes(data)))

    def writelines(self, chunks):
        self.log.append(("write", b"".join(chunks)))

    def write_eof(self):
        self.log.append(("eof",))

    def get_write_buffer_size(self):
        return 0

    def close(self):
        self.log.append(("close",))
        self.closing = True

    def abort(self):
        self.log.append(("abort",))
        self.closing = True

    def is_closing(self):
        return self.closing


@pytest.fixture
def wrapped():
    """(loop, recording transport, wrapper); the loop is closed after the test."""
    loop = asyncio.new_event_loop()
    fake = _FakeTransport()
    yield loop, fake, HeadHoldingTransport(fake, loop)
    loop.close()


@pytest.fixture
def holding(wrapped):
    """The same, with a response head already held."""
    loop, fake, t = wrapped
    t.hold_next_write()
    t.write(b"HEAD")
    assert fake.log == []
    return wrapped


def _one_turn(loop):
    loop.run_until_complete(asyncio.sleep(0))


def test_only_an_armed_write_is_held_and_it_leaves_with_the_next_one(wrapped):
    loop, fake, t = wrapped
    t.write(b"unarmed")
    assert fake.log == [("write", b"unarmed")]
    t.hold_next_write()
    t.write(b"HEAD")
    assert fake.log == [("write", b"unarmed")]
    t.write(b"BODY")
    t.write(b"MORE")
    assert fake.log[1:] == [("write", b"HEADBODY"), ("write", b"MORE")]
    _one_turn(loop)
    assert len(fake.log) == 3  # the scheduled flush found nothing left


def test_a_held_head_leaves_at_the_end_of_the_turn(holding):
    loop, fake, t = holding
    _one_turn(loop)
    assert fake.log == [("write", b"HEAD")]


def test_whoever_writes_next_goes_after_the_held_head(holding):
    # e.g. uvicorn answering 400 to a bad pipelined request, on the protocol's side rather than
    # the request cycle's
    loop, fake, t = holding
    t.write(b"HTTP/1.1 400 Bad Request")
    t.close()
    assert fake.log == [("write", b"HEADHTTP/1.1 400 Bad Request"), ("close",)]


def test_a_close_sends_the_held_head_first(holding):
    # e.g. uvicorn closing a keep-alive connection at shutdown or on its keep-alive timeout
    loop, fake, t = holding
    t.close()
    assert fake.log == [("write", b"HEAD"), ("close",)]
    _one_turn(loop)
    assert fake.log == [("write", b"HEAD"), ("close",)]


def test_the_peers_end_of_stream_sends_a_held_head_before_the_loop_closes_the_connection(holding):
    loop, fake, t = holding
    protocol = HttpToolsProtocol.__new__(HttpToolsProtocol)
    protocol.transport = t
    protocol.eof_received()
    assert fake.log == [("write", b"HEAD")]


def test_abort_drops_what_is_held(holding):
    loop, fake, t = holding
    t.abort()
    _one_turn(loop)
    assert fake.log == [("abort",)]


def test_writelines_goes_after_the_held_head_in_one_send(holding):
    loop, fake, t = holding
    t.writelines([b"BO", b"DY"])
    assert fake.log == [("write", b"HEADBODY")]


def test_a_head_written_in_pieces_is_held_whole(wrapped):
    loop, fake, t = wrapped
    t.hold_next_write()
    t.writelines([b"HE", b"AD"])
    assert fake.log == []
    t.write(b"BODY")
    assert fake.log == [("write", b"HEADBODY")]


def test_write_eof_sends_the_held_head_first(holding):
    loop, fake, t = holding
    t.write_eof()
    assert fake.log == [("write", b"HEAD"), ("eof",)]


def test_known_read_only_methods_are_forwarded_and_unknown_ones_refused(wrapped):
    loop, fake, t = wrapped
    assert t.get_write_buffer_size() == 0
    with pytest.raises(AttributeError, match="could bypass a held head"):
        t.sendfile  # noqa: B018 - a transport method this wrapper does not know


def test_the_protocol_refuses_another_uvicorn_release(monkeypatch):
    import importlib

    import uvicorn

    import api.http_protocol as module

    monkeypatch.setattr(uvicorn, "__version__", "0.99.0")
    with pytest.raises(ImportError, match="found uvicorn 0.99.0"):
        importlib.reload(module)
    monkeypatch.undo()
    importlib.reload(module)
