"""Logs: every line the API writes in JSON mode is a JSON object with time, level, logger and
message; requests carry an id end to end; sensitive values are redacted by the logging chain
itself, whatever a caller passes to it."""
from __future__ import annotations

import io
import json
import logging
import re
import uuid

import httpx
import pytest

from aether_platform import logs
from tests.conftest import ApiServer

REQUIRED = {"time", "level", "logger", "message"}
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def test_every_api_line_in_json_mode_is_a_json_object(platform_env, tmp_path, tenant):
    """Two workers, so that the supervisor's lines count too; start, a few requests of every
    kind, a stream, and a graceful stop."""
    server = ApiServer({**platform_env, "AETHER_LOG_FORMAT": "json", "AETHER_LOG_LEVEL": "DEBUG"},
                       tmp_path, workers=2).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.get("/readyz").status_code == 200
            assert c.post("/api/crm/jobs", json={"title": "t"},
                          headers={"X-Tenant-Id": tenant, "Idempotency-Key": f"k-{uuid.uuid4()}"}).status_code == 202
            assert c.get("/api/crm/jobs", headers={"X-Tenant-Id": "not-a-uuid"}).status_code == 400
            assert c.get("/nowhere?secret=1").status_code == 404
            with c.stream("GET", "/crm-events", params={"tenant": tenant}) as stream:
                assert stream.status_code == 200
    finally:
        server.stop()
    lines = server.log_path.read_text().splitlines()
    assert len(lines) >= 8, lines  # startup and shutdown of a supervisor and two workers at least
    for line in lines:
        record = json.loads(line)
        assert REQUIRED <= set(record), line
        assert ISO_UTC.fullmatch(record["time"]), line
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}, line
    loggers = {json.loads(line)["logger"] for line in lines}
    assert {"uvicorn.error", "aether.stream"} <= loggers


@pytest.mark.parametrize("sent,echoed", [
    ("abc-123.XYZ:9_", "abc-123.XYZ:9_"),
    ("x" * 129, None),            # too long: replaced
    ("has space", None),          # not in the grammar: replaced
    ("", None),
])
def test_request_id_is_echoed_when_plausible_else_generated(client, sent, echoed):
    r = client.get("/nowhere", headers={"X-Request-Id": sent})
    assert r.status_code == 404  # errors carry it too
    if echoed is not None:
        assert r.headers["x-request-id"] == echoed
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


def test_request_id_is_echoed_by_the_create_fast_path_and_the_stream(client, tenant):
    r = client.post("/api/crm/jobs", json={"title": "rid"}, headers={
        "X-Tenant-Id": tenant, "Idempotency-Key": f"k-{uuid.uuid4()}", "X-Request-Id": "create-1"})
    assert r.status_code == 202 and r.headers["x-request-id"] == "create-1"
    with client.stream("GET", "/crm-events", params={"tenant": tenant}, headers={"X-Request-Id": "sse-1"}) as s:
        assert s.status_code == 200 and s.headers["x-request-id"] == "sse-1"


def test_request_id_is_generated_per_request(client):
    ids = {client.get("/livez").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


# ------------------------------------------------------------------------- redaction, in-process

def _render(fmt: str, *args, **kwargs) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter(fmt))
    logger = logging.getLogger(f"aether.test.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.info(*args, **kwargs)
    return stream.getvalue()


SECRET = "s3cr3t-" + uuid.uuid4().hex


@pytest.mark.parametrize("fmt", logs.FORMATS)
def test_sensitive_keys_are_redacted(fmt):
    out = _render(fmt, "request", extra={
        "authorization": f"Bearer {SECRET}", "Cookie": f"session={SECRET}", "access_token": SECRET,
        "query_string": f"a=1&access_token={SECRET}",
        "headers": {"Authorization": f"Bearer {SECRET}", "accept": "text/plain"},
        "raw_headers": [(b"authorization", SECRET.encode()), (b"set-cookie", SECRET.encode()), (b"host", b"h")],
        "sasl_password": SECRET, "password": SECRET})
    assert SECRET not in out
    assert logs.REDACTED in out and "text/plain" in out


@pytest.mark.parametrize("fmt", logs.FORMATS)
@pytest.mark.parametrize("message", [
    "GET /crm-events?access_token={s}&tenant=x",
    "fetching https://issuer.example/keys?client_secret={s}",
    "header was Bearer {s}",
    "header was basic {s}",
    "form body token={s}",
])
def test_query_strings_and_credentials_are_scrubbed_from_messages(fmt, message):
    out = _render(fmt, "%s", message.format(s=SECRET))
    assert SECRET not in out


def test_exceptions_are_scrubbed_and_plain():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter("json"))
    logger = logging.getLogger("aether.test.exc")
    logger.propagate = False
    logger.addHandler(handler)
    token = SECRET  # a local variable: a traceback renderer showing locals would print it

    try:
        raise RuntimeError(f"GET /crm-events?access_token={token} failed")
    except RuntimeError:
        logger.exception("failed")
    record = json.loads(stream.getvalue())
    assert "RuntimeError" in record["exception"]
    assert SECRET not in stream.getvalue()


def test_uvicorn_access_log_is_off_and_settings_are_checked():
    logs.configure("json", "INFO")
    try:
        assert logging.getLogger("uvicorn.access").disabled
        assert logging.getLogger("uvicorn.error").propagate
        config = logs.uvicorn_log_config("json", "WARNING")
        assert config["loggers"]["uvicorn.access"]["propagate"] is False
        assert config["root"]["level"] == "WARNING"
        with pytest.raises(ValueError, match="AETHER_LOG_FORMAT"):
            logs.configure("xml")
        with pytest.raises(ValueError, match="AETHER_LOG_LEVEL"):
            logs.configure("json", "LOUD")
    finally:
        logging.getLogger("uvicorn.access").disabled = False
