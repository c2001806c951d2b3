"""RFC 9457 problem details: every error the API returns is application/problem+json, and a 5xx
never carries a stack trace."""
from __future__ import annotations

import logging

import orjson
import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from api.db import DatabaseUnreachable

log = logging.getLogger("aether.api")

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(self, status: int, title: str, detail: str | None = None, *, type_: str = "about:blank",
                 headers: dict[str, str] | None = None, **extra):
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_
        self.headers = headers or {}
        self.extra = extra


def problem_response(status: int, title: str, detail: str | None = None, *, type_: str = "about:blank",
                     instance: str | None = None, headers: dict[str, str] | None = None, **extra) -> Response:
    body = {"type": type_, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extra)
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


# The database is down or restarting: tell the client to come back, never a 500. The pool
# reconnects by itself once the server answers again.
DATABASE_UNAVAILABLE = (psycopg.OperationalError, PoolTimeout, DatabaseUnreachable)


def database_unavailable(method: str, path: str, exc: Exception) -> Response:
    log.warning("database unavailable on %s %s: %s", method, path, type(exc).__name__)
    return problem_response(503, "Service Unavailable", "The database is unavailable; retry shortly.",
                            instance=path, headers={"Retry-After": "2"})


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        return problem_response(exc.status, exc.title, exc.detail, type_=exc.type, instance=request.url.path,
                                headers=exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        bad_headers = sorted({str(e["loc"][1]) for e in errors if len(e["loc"]) > 1 and e["loc"][0] == "header"
                              and str(e["loc"][1]).lower() in ("x-tenant-id", "idempotency-key")})
        if bad_headers:
            return problem_response(400, "Missing or malformed header",
                                    f"{' and '.join(bad_headers)}: required; see the API documentation for the format.",
                                    instance=request.url.path, errors=errors)
        return problem_response(422, "Request validation failed", "The request did not match the documented schema.",
                                instance=request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": allowed_methods(request.app, request.scope)}
        return problem_response(exc.status_code, _reason(exc.status_code), str(exc.detail) if exc.detail else None,
                                instance=request.url.path, headers=headers)

    async def _unavailable(request: Request, exc: Exception):
        return database_unavailable(request.method, request.url.path, exc)

    for exc_type in DATABASE_UNAVAILABLE:
        app.add_exception_handler(exc_type, _unavailable)

    @app.exception_handler(orjson.JSONDecodeError)
    async def _bad_json(request: Request, exc: Exception):
        return problem_response(400, "Malformed JSON", "The request body is not valid JSON.", instance=request.url.path)

    # Last: outermost of our middlewares, so that it sees every escaped exception.
    app.add_middleware(UnhandledErrors)


class UnhandledErrors:
    """Any exception that escapes the app becomes a logged 500 problem without a stack trace.

    Pure ASGI rather than an `Exception` handler: Starlette's ServerErrorMiddleware re-raises
    after answering, and uvicorn then drops the connection; here the answer is sent and the
    exception ends with the log line."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                response = problem_response(500, "Internal Server Error", "The error was logged; retry later.",
                                            instance=scope.get("path"))
                await response(scope, receive, send)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


def allowed_methods(app, scope) -> str:
    """Every method the app's routes serve at the request's path, for a 405's Allow header.

    Why: Starlette answers 405 from the first route whose path matches and lists only that
    route's methods (`Allow: POST` on /api/crm/jobs, which serves GET too); RFC 9110 §15.5.6 wants
    them all. Derived from the routes, the one definition (api.fast_create serves only requests
    its POST routes would accept), by asking each route whether it fully matches the path with
    each method: included routers are opaque, but they answer matches()."""
    from starlette.routing import Match

    def served(method: str) -> bool:
        probe = {**scope, "method": method}
        return any(route.matches(probe)[0] is Match.FULL for route in app.routes)

    return ", ".join(m for m in _METHODS if served(m))


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
