from __future__ import annotations

import uuid

import httpx
import pytest


@pytest.fixture
def client(api_server):
    with httpx.Client(base_url=api_server.url, timeout=30) as c:
        yield c


def headers(tenant: str, key: str | None = None, **extra) -> dict[str, str]:
    h = {"X-Tenant-Id": tenant, **extra}
    if key is not None:
        h["Idempotency-Key"] = key
    return h


def new_key() -> str:
    return f"key-{uuid.uuid4()}"


def outbox_rows(db, tenant: str) -> list[tuple]:
    return db.execute("SELECT type, payload, aggregate_key, event_id FROM outbox_events WHERE tenant_id = %s"
                      " ORDER BY id", (tenant,)).fetchall()


def raw_request(base_url: str, method: str, path: str, header_lines: list[bytes], body: bytes = b"") -> tuple[int, dict, bytes]:
    """Send bytes exactly as given (httpx refuses control characters in header values, which
    is what these tests need to send). Returns status, lower-cased headers and body."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(base_url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        head = [f"{method} {path} HTTP/1.1".encode(), f"Host: {u.hostname}".encode(), b"Connection: close",
                f"Content-Length: {len(body)}".encode(), b"Content-Type: application/json", *header_lines]
        s.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    hdrs = {k.strip().lower().decode(): v.strip().decode() for k, _, v in (l.partition(b":") for l in lines[1:])}
    return status, hdrs, rest
