"""The create endpoints' fast path: FastCreateRoute, the route class of POST
/api/crm/{accounts,contacts,jobs}, which solves a create's inputs without FastAPI's dependency
machinery and body handling.

Why: profiled under load, FastAPI's request handling cost more CPU than the write itself, and a
create is the API's hot path.

What it keeps from the route, so that a create has one definition:
- Routing, the middlewares and the exception handlers are untouched: FastAPI routes the request to
  this route as to any other, so the metrics label is the route's own and authentication, limits
  and problem answers apply alike.
- The inputs come from the route itself (`route.dependant`): one JSON body model, the request, and
  dependencies that are all in api.deps.HEADER_RULES, whose rule functions are the ones FastAPI's
  dependencies call. A route with any other input (another dependency, a query, path or cookie
  parameter) is served by FastAPI alone, and says so in the log at startup: a check added to the
  create route is never skipped.
- What it solves, it hands to the route's own endpoint: what a create does is written once.
- A request that any rule or the body model refuses goes to FastAPI's handler with its body
  untouched (cached on the Request), and gets FastAPI's answer: errors and OpenAPI have one
  definition. tests/api/test_fast_create.py compares servers with and without it, answer for answer.

AETHER_API_FAST_CREATE=off turns it off.
"""
from __future__ import annotations

import logging

import orjson
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from api.deps import HEADER_RULES
from api.problems import Problem

log = logging.getLogger("aether.api.fast_create")

_JSON = "application/json"


class FastCreateRoute(APIRoute):
    def get_route_handler(self):
        routed = super().get_route_handler()
        plan = _plan(self)
        if plan is None:
            log.warning("%s %s: inputs the fast path cannot solve; FastAPI serves every request",
                        ",".join(sorted(self.methods)), self.path)
            return routed
        endpoint = self.endpoint

        async def handler(request):
            if request.app.state.settings.api_fast_create:
                inputs = await plan.solve(request)
                if inputs is not None:
                    return await endpoint(**inputs)
            return await routed(request)

        return handler


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
