"""The API's documentation: the OpenAPI document as clients' tools need it, and Swagger UI served
by the application itself.

Why:
- FastAPI's /docs loads Swagger UI from a public CDN, so on a machine without internet (an
  air-gapped cluster, the reference machine) the page was blank. Its script and styles now come
  from the swagger-ui-py package (Swagger UI 5, which renders OpenAPI 3.1), served under
  /docs/assets; nothing is fetched from elsewhere. /redoc is gone: no maintained package ships it.
- With authentication on, /docs had no Authorize button: the document now declares the HTTP
  bearer scheme and applies it to every operation the Authentication middleware protects (its
  rule table, api.security, is the one definition).
- Nothing linked a create to its resource, so tooling (and Schemathesis' stateful phase) could
  not chain calls: each create's 202 links to the resource's GET, PATCH and DELETE with the new
  id ($response.body#/id), and each list's 200 links to its next page ($response.body#/nextCursor).
  Links are derived from the routes' paths and operationIds, which are stable (create_job,
  get_job, list_jobs, update_job, delete_job, ...).
"""
from __future__ import annotations

from pathlib import Path

import swagger_ui
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles

from api.security import Authentication

ASSETS = Path(swagger_ui.__file__).resolve().parent / "static"
BEARER = "bearerAuth"
ITEM = "/{item_id}"
TENANT = "header.X-Tenant-Id"  # resources are the tenant's: a link keeps the request's tenant


def install(app: FastAPI, settings) -> None:
    app.mount("/docs/assets", StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui_page():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js", swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
            # Keeps the token entered under Authorize across page reloads.
            swagger_ui_parameters={"persistAuthorization": True})

    generate = app.openapi
    # Which paths need a token: asked of the middleware's own rule table, never restated here.
    rules = Authentication(None, None, protect_metrics=settings.auth_protect_metrics,
                           protect_ops=settings.auth_protect_ops)

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = generate()
            _declare_bearer(document, rules if settings.auth else None)
            _add_links(document)
        return app.openapi_schema

    app.openapi = openapi


def _declare_bearer(document: dict, rules: Authentication | None) -> None:
    document.setdefault("components", {}).setdefault("securitySchemes", {})[BEARER] = {
        "type": "http", "scheme": "bearer",
        "description": "A tenant token (the CRM API, the event stream) or an operator token (/metrics, the "
                       "Command Center). Required when the server runs with AETHER_AUTH=on; the operations "
                       "that need it then list it under security.",
    }
    if rules is None:
        return
    for path, operations in document["paths"].items():
        if rules._rule(path) is not None:
            for operation in operations.values():
                operation["security"] = [{BEARER: []}]


def _add_links(document: dict) -> None:
    paths = document["paths"]
    for path, operations in paths.items():
        item = paths.get(path + ITEM, {})
        create = operations.get("post")
        if create and "202" in create["responses"] and item:
            create["responses"]["202"]["links"] = {
                op["operationId"]: {"operationId": op["operationId"], "parameters": {
                    "item_id": "$response.body#/id", TENANT: "$request.header.X-Tenant-Id"},
                                    "description": f"{method.upper()} the resource this request created"}
                for method, op in item.items() if method in ("get", "patch", "delete")}
        listing = operations.get("get")
        if listing and any(p["name"] == "cursor" for p in listing.get("parameters", [])):
            listing["responses"]["200"]["links"] = {"next_page": {
                "operationId": listing["operationId"], "parameters": {
                    "cursor": "$response.body#/nextCursor", TENANT: "$request.header.X-Tenant-Id"},
                "description": "The next page (absent when nextCursor is null)"}}
