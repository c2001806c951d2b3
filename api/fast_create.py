"""The create endpoints' fast path: POST /api/crm/{accounts,contacts,jobs} served without
FastAPI's routing machinery, dependency solving and body handling.

Why: profiled under load, those layers cost more CPU than the write itself, and a create is the
API's hot path. Measured: serving it from inside the route (only dependency solving and body
handling skipped) still cost about 30 % more API CPU per create than skipping routing too.

What keeps a create to one definition:
- The route decides what may be served fast. FastCreateRoute (the create routes' class) derives a
  plan from its own dependant: one JSON body model, the request, and dependencies that are all in
  api.deps.HEADER_RULES, whose rule functions FastAPI's dependencies call too. A route with any
  other input (another dependency, a query, path or cookie parameter) has no plan, and says so in
  the log at startup: a check added to the create route is never skipped.
- The router chooses the route: a path is served fast once FastAPI's router has routed a POST to
  it to a create route with a plan (the first such request goes through FastAPI); the route's own
  `matches()` then fills the scope, so `scope["route"]`, the metrics label, is the route itself.
- What the plan solves goes to the route's own endpoint, and an exception it raises goes to the
  app's own exception handlers: what a create does and how its errors answer are written once.
- A request that any rule or the body model refuses goes on to routing with its body untouched,
  and gets FastAPI's answer. tests/api/test_fast_create.py compares servers with and without it.
- It must be the innermost middleware (checked at startup): nothing may sit between it and
  routing that a fast create would skip.

AETHER_API_FAST_CREATE=off leaves every request to FastAPI.
"""
from __future__ import annotations

import inspect
import logging

import orjson
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.routing import Match

from api.deps import HEADER_RULES
from api.limits import replay_body
from api.problems import Problem

log = logging.getLogger("aether.api.fast_create")

_JSON = "application/json"


class FastCreateRoute(APIRoute):
    """A create route; `fast_plan` is how FastCreate may solve its inputs, or None."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fast_plan = _plan(self)
        if self.fast_plan is None:
            log.warning("%s %s: inputs the fast path cannot solve; FastAPI serves every request",
                        ",".join(sorted(self.methods)), self.path)


class FastCreate:
    """The middleware that serves what the create routes' plans solve."""

    def __init__(self, app):
        if not isinstance(app, ExceptionMiddleware):
            raise RuntimeError("FastCreate must be the innermost middleware (added first), so that no "
                               f"middleware sits between it and routing; it wraps {type(app).__name__}")
        self.app = app
        # Path -> the create route FastAPI's router chose for a POST to it, learnt from the first
        # such request it routed: the router stays the one definition of which route serves a path.
        self.routes: dict[str, FastCreateRoute] = {}

    async def __call__(self, scope, receive, send):
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            chosen = scope.get("route")
            if isinstance(chosen, FastCreateRoute) and chosen.fast_plan is not None and scope.get("method") == "POST":
                self.routes[scope["path"]] = chosen
            return
        match, child_scope = route.matches(scope)
        if match is not Match.FULL:
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        body = await request.body()
        inputs = await route.fast_plan.solve(request)
        if inputs is None:
            return await self.app(scope, replay_body(body, receive), send)
        scope.update(child_scope)  # what routing to this route sets: the route itself, its endpoint
        try:
            response = await route.endpoint(**inputs)
        except Exception as exc:
            handler = _exception_handler(scope["app"].exception_handlers, exc)
            if handler is None:
                raise
            response = handler(request, exc)
            if inspect.isawaitable(response):
                response = await response
        await response(scope, receive, send)


def _exception_handler(handlers: dict, exc: Exception):
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None


class _Plan:
    """How to solve one route's inputs: (parameter, header, rule) per dependency, the body's
    parameter and model, and the request's parameter."""

    def __init__(self, rules, body_name: str, model: type[BaseModel], request_name: str | None):
        self.rules = rules
        self.body_name = body_name
        self.model = model
        self.request_name = request_name
        self.wanted = {header for _, header, _ in rules} | {b"content-type"}

    async def solve(self, request) -> dict | None:
        """The endpoint's arguments, or None when FastAPI must answer."""
        scope = request.scope
        raw: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in self.wanted and name not in raw:  # the first of repeated headers, as Starlette reads them
                raw[name] = value.decode("latin-1")
        if raw.get(b"content-type", "").partition(";")[0].strip().lower() != _JSON:
            return None
        inputs = {}
        try:
            for param, header, rule in self.rules:
                inputs[param] = rule(raw.get(header), scope)
            inputs[self.body_name] = self.model.model_validate(orjson.loads(await request.body()))
        except (Problem, ValueError, ValidationError):  # orjson's and pydantic's errors are ValueErrors too
            return None
        if self.request_name:
            inputs[self.request_name] = request
        return inputs


def _plan(route: APIRoute) -> _Plan | None:
    d = route.dependant
    if (d.path_params or d.query_params or d.header_params or d.cookie_params or len(d.body_params) != 1
            or d.http_connection_param_name or d.websocket_param_name or d.response_param_name
            or d.background_tasks_param_name or d.security_scopes_param_name):
        return None
    body = d.body_params[0]
    model = body.field_info.annotation
    if getattr(body.field_info, "embed", False) or not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    rules = []
    for dep in d.dependencies:
        if dep.call not in HEADER_RULES or dep.name is None:
            return None
        rules.append((dep.name, *HEADER_RULES[dep.call]))
    return _Plan(rules, body.name, model, d.request_param_name)
