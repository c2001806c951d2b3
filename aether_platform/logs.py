"""Process-wide logging, one home for every process: the API (and uvicorn's own loggers), the
CLI, relay runs, the Dagster code location and the stack launcher.

Why structlog's ProcessorFormatter over the standard library's `logging`: the code keeps plain
`logging.getLogger(...)` loggers (so do uvicorn, alembic, psycopg and Dagster), and every record,
ours or a library's, goes through the same processor chain to one handler on stderr.

Guarantees:
- `AETHER_LOG_FORMAT=json`: one JSON object per line with `time` (ISO 8601, UTC), `level`,
  `logger` and `message`, plus `request_id` and `tenant` while an API request is being served
  (bound by api/request_context.py), `exception` with the traceback when there is one, and any
  `extra={...}` fields. `text` (the default) is for a terminal. `AETHER_LOG_LEVEL` (INFO).
- Redaction is structural, in the chain, whatever the caller wrote: values under known-sensitive
  keys (authorization, cookies, tokens, passwords, query strings) are replaced, and every string
  value is scrubbed of URL query strings and bearer/basic credentials. Tracebacks are plain
  (never with local variables, which may hold a token). uvicorn's access log, whose lines carry
  the raw query string (`?access_token=` on the stream), is switched off here, not only by a flag.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import uuid
from contextvars import ContextVar
from typing import Any

import structlog

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

REDACTED = "[redacted]"
# Compared after lower-casing and mapping "-" to "_".
SENSITIVE_KEYS = frozenset({
    "authorization", "proxy_authorization", "cookie", "cookies", "set_cookie", "token", "access_token",
    "id_token", "refresh_token", "bearer", "password", "passwd", "secret", "client_secret", "api_key",
    "sasl_password", "query_string", "query", "query_params",
})
# Query strings of URLs and absolute paths, and credentials after an auth scheme or a token-ish key.
_QUERY = re.compile(r"((?:\b[a-z][a-z0-9+.-]*://[^\s?#\"']*|(?<![\w/])/[^\s?#\"']*))\?[^\s#\"']*", re.I)
_SCHEME_CREDENTIAL = re.compile(r"\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+", re.I)
_KEY_CREDENTIAL = re.compile(r"\b(access_token|id_token|refresh_token|token|password|secret)=[^\s&\"']+", re.I)


def scrub(text: str) -> str:
    """The string with query strings and credentials replaced (the message and every value)."""
    if "?" in text:
        text = _QUERY.sub(rf"\1?{REDACTED}", text)
    text = _SCHEME_CREDENTIAL.sub(rf"\1 {REDACTED}", text)
    return _KEY_CREDENTIAL.sub(rf"\1={REDACTED}", text)


_PLAIN = (int, float, bool, type(None))


def _redact_value(key: str, value: Any, depth: int = 0) -> Any:
    if key.lower().replace("-", "_") in SENSITIVE_KEYS:
        return REDACTED
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, _PLAIN):
        return value
    if depth < 4 and type(value) is dict:
        return {str(k): _redact_value(str(k), v, depth + 1) for k, v in value.items()}
    if depth < 4 and type(value) in (list, tuple):
        # Header lists, [(name, value), ...]: by the pair's name.
        if all(type(v) in (list, tuple) and len(v) == 2 for v in value):
            return [(_text(k), _redact_value(_text(k), v, depth + 1)) for k, v in value]
        return [_redact_value(key, v, depth + 1) for v in value]
    # Anything else (bytes, objects, deeper nesting) is written as its scrubbed text.
    return scrub(_text(value))


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)


# Extras libraries attach for their own formatters (uvicorn: the message with ANSI colours).
_NOISE = frozenset({"color_message"})


# Dagster's run loggers (aether_platform/dagster_defs/run_logger.py) get the run's metadata as
# extras (run_id, job_name, step_key, ...) and the DagsterEvent object itself: the event is
# written as its type (PIPELINE_START, STEP_START, ...), not as the object's repr.
def lift_dagster_meta(_logger, _method, event_dict: dict) -> dict:
    meta = event_dict.pop("dagster_meta", None)
    if isinstance(meta, dict):
        for key in ("run_id", "job_name", "step_key"):
            if meta.get(key):
                event_dict.setdefault(key, meta[key])
        event_dict.setdefault("dagster_event", meta.get("dagster_event"))
    event = event_dict.get("dagster_event")
    if event is not None and not isinstance(event, str):
        event_dict["dagster_event"] = getattr(event, "event_type_value", None)
    event_dict.pop("dagster_event_batch_metadata", None)
    return event_dict


def redact(_logger, _method, event_dict: dict) -> dict:
    """structlog processor: the last word before rendering on what may leave the process."""
    return {k: _redact_value(k, v) for k, v in event_dict.items() if k not in _NOISE}


# ------------------------------------------------------------------------------------------ request

class RequestContext:
    """What an API request contributes to its log lines. The tenant is the authenticated
    principal's, once the authentication middleware put it in the request's ASGI state, else the
    X-Tenant-Id header's if it is a UUID. Header values are kept raw and only decoded and checked
    when a line is written: most requests write none."""

    __slots__ = ("_request_id", "_header_tenant", "state")

    def __init__(self, request_id: bytes, header_tenant: bytes | None, state: dict):
        self._request_id = request_id
        self._header_tenant = header_tenant
        self.state = state

    @property
    def request_id(self) -> str:
        return self._request_id.decode("latin-1")

    def tenant(self) -> str | None:
        principal = self.state.get("principal")
        tenant_id = getattr(principal, "tenant_id", None)
        if tenant_id is not None:
            return str(tenant_id)
        if self._header_tenant is None:
            return None
        try:
            return str(uuid.UUID(self._header_tenant.decode("latin-1")))
        except ValueError:
            return None


_request: ContextVar[RequestContext | None] = ContextVar("aether_log_request", default=None)


# Context for every line logged inside the block, in this thread or task: `with logs.bound(run_id=...)`.
bound = structlog.contextvars.bound_contextvars


def bind_request(ctx: RequestContext):
    """Bind for the current task (an ASGI request); pass the result to unbind_request."""
    return _request.set(ctx)


def unbind_request(token) -> None:
    _request.reset(token)


def add_request_context(_logger, _method, event_dict: dict) -> dict:
    ctx = _request.get()
    if ctx is not None:
        event_dict.setdefault("request_id", ctx.request_id)
        tenant = ctx.tenant()
        if tenant is not None:
            event_dict.setdefault("tenant", tenant)
    return event_dict


# ------------------------------------------------------------------------------------------ setup

def _settings(fmt: str | None, level: str | int | None) -> tuple[str, int]:
    fmt = (fmt or os.environ.get("AETHER_LOG_FORMAT") or "text").strip().lower()
    if fmt not in FORMATS:
        raise ValueError(f"AETHER_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if isinstance(level, int):
        return fmt, level
    name = (level or os.environ.get("AETHER_LOG_LEVEL") or "INFO").strip().upper()
    if name not in LEVELS:
        raise ValueError(f"AETHER_LOG_LEVEL must be one of {', '.join(LEVELS)}, not {name!r}")
    return fmt, logging.getLevelName(name)


def _pre_chain() -> list:
    # In this order the JSON line reads time, level, logger, then the context, and message last.
    return [
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.contextvars.merge_contextvars,
        add_request_context,
        structlog.stdlib.ExtraAdder(),
        lift_dagster_meta,
    ]


def formatter(fmt: str) -> structlog.stdlib.ProcessorFormatter:
    """The logging.Formatter for `fmt` ("json" or "text"); also usable from a dictConfig."""
    # Tracebacks become a plain string first, so that redaction sees them too.
    if fmt == "json":
        tail = [structlog.processors.EventRenamer("message"), redact, structlog.processors.JSONRenderer()]
    else:
        tail = [redact, structlog.dev.ConsoleRenderer(colors=False, timestamp_key="time")]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_pre_chain(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, *tail])


_active_format: str | None = None


def active_format() -> str | None:
    """The format configure() set in this process, or None if it was never called."""
    return _active_format


def configure(fmt: str | None = None, level: str | int | None = None) -> None:
    """Configure this process: one stderr handler on the root logger, uvicorn's and structlog's
    loggers routed through it. Idempotent. Arguments override AETHER_LOG_FORMAT / AETHER_LOG_LEVEL."""
    global _active_format
    fmt, level = _settings(fmt, level)
    _active_format = fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    # force: replace whatever an imported library installed, so every line has one format.
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # warnings.warn() would print bare to stderr: a line no log shipper could parse.
    logging.captureWarnings(True)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.disabled = True
    structlog.configure(
        # structlog's own loggers (few: Dagster uses one) skip the foreign chain: same steps here.
        processors=[structlog.stdlib.filter_by_level, *[p for p in _pre_chain()
                                                         if not isinstance(p, structlog.stdlib.ExtraAdder)
                                                         and p is not lift_dagster_meta],
                    structlog.stdlib.PositionalArgumentsFormatter(),
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def uvicorn_log_config(fmt: str | None = None, level: str | int | None = None) -> dict:
    """uvicorn's `log_config`: uvicorn applies it in every process it starts (the supervisor of
    --workers too) before it imports the app, so even its first lines have our format."""
    fmt, level = _settings(fmt, level)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"aether": {"()": formatter, "fmt": fmt}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "aether", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": logging.getLevelName(level)},
        "loggers": {"uvicorn": {"handlers": [], "propagate": True, "level": "NOTSET"},
                    "uvicorn.error": {"handlers": [], "propagate": True, "level": "NOTSET"},
                    # Its lines would carry raw query strings; never on.
                    "uvicorn.access": {"handlers": [], "propagate": False, "level": "CRITICAL"}},
    }
