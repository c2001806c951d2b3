"""A minimal SSE client on a raw socket, for tests that need what HTTP libraries hide: the exact
frames (id-only ones and comments too), a clean versus a cut end of stream, and a client that
stops reading to play a slow consumer."""
from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Frame:
    id: str | None = None
    event: str | None = None
    data: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def json(self):
        return json.loads(self.data)


class SseClient:
    def __init__(self, url: str, headers: dict[str, str] | None = None, rcvbuf: int | None = None,
                 read: bool = True):
        parts = urlsplit(url)
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((parts.hostname, parts.port))
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""
        self.frames: list[Frame] = []
        self.eof = False
        self.clean_end = False  # the chunked body ended with its terminator
        self._raw = b""
        self._lock = threading.Lock()
        self._stop = False
        self._thread = None
        if read:
            self.start_reading()

    def start_reading(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    # ---- reading -------------------------------------------------------------------------

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        buf = b""
        while not self._stop:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            buf = self._consume(buf)
        self.eof = True

    def _consume(self, buf: bytes) -> bytes:
        if self.status is None:
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if not sep:
                return buf
            lines = head.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            self.headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
            buf = rest
        if self.headers.get("transfer-encoding") != "chunked":
            self.body += buf
            self._parse_events(buf)
            return b""
        while True:
            line, sep, rest = buf.partition(b"\r\n")
            if not sep:
                return buf
            size = int(line.split(b";")[0], 16)
            if len(rest) < size + 2:
                return buf
            if size == 0:
                self.clean_end = True
                return b""
            data, buf = rest[:size], rest[size + 2:]
            self.body += data
            self._parse_events(data)

    def _parse_events(self, data: bytes) -> None:
        self._raw += data
        while b"\n\n" in self._raw:
            block, self._raw = self._raw.split(b"\n\n", 1)
            frame = Frame()
            for line in block.decode().split("\n"):
                if line.startswith(":"):
                    frame.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "id":
                    frame.id = value
                elif name == "event":
                    frame.event = value
                elif name == "data":
                    frame.data = value if frame.data is None else frame.data + "\n" + value
                elif name == "retry":
                    frame.retry = int(value)
            with self._lock:
                self.frames.append(frame)

    # ---- queries ---------------------------------------------------------------------------

    def snapshot(self) -> list[Frame]:
        with self._lock:
            return list(self.frames)

    def events(self) -> list[dict]:
        return [f.json for f in self.snapshot() if f.data is not None and f.event is None]

    def last_id(self) -> str | None:
        ids = [f.id for f in self.snapshot() if f.id is not None]
        return ids[-1] if ids else None

    def wait(self, predicate, timeout: float = 20.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate(self)
            if result:
                return result
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; got {len(self.frames)} frames, "
                             f"status {self.status}, eof {self.eof}")

    def close(self) -> None:
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self._thread:
            self._thread.join(2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
