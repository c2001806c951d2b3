"""The API's documentation as its users meet it: /docs renders every operation in Debian's headless
Chromium with nothing fetched from outside the API (an air-gapped machine), and the OpenAPI
document carries the bearer scheme and the links that chain a create to its resource."""
from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from playwright.sync_api import sync_playwright
from tests.conftest import launch_chromium



def test_docs_render_every_operation_with_no_network_beyond_the_api(api_server):
    api = urlsplit(api_server.url).netloc
    elsewhere: list[str] = []

    def only_the_api(route):
        if urlsplit(route.request.url).netloc == api:
            return route.continue_()
        elsewhere.append(route.request.url)
        return route.abort("internetdisconnected")

    operations = len([op for ops in __import__("httpx").get(f"{api_server.url}/openapi.json").json()["paths"].values()
                      for op in ops])
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page()
            page.route("**/*", only_the_api)
            page.goto(f"{api_server.url}/docs")
            page.locator(".opblock").first.wait_for(timeout=30_000)
            assert page.locator(".opblock").count() == operations
            assert page.locator(".opblock-summary-path", has_text="/api/crm/jobs/{item_id}").count() == 3
            assert page.get_by_role("button", name="Authorize").count() == 1
        finally:
            browser.close()
    assert elsewhere == []


def test_openapi_links_each_create_to_its_resource_and_each_list_to_its_next_page(client):
    doc = client.get("/openapi.json").json()
    ops = {op["operationId"]: op for path in doc["paths"].values() for op in path.values()}
    for noun, plural in (("job", "jobs"), ("account", "accounts"), ("contact", "contacts")):
        links = ops[f"create_{noun}"]["responses"]["202"]["links"]
        assert {link["operationId"] for link in links.values()} == {f"get_{noun}", f"update_{noun}", f"delete_{noun}"}
        assert all(link["parameters"]["item_id"] == "$response.body#/id" for link in links.values())
        assert all(link["operationId"] in ops for link in links.values())
        page = ops[f"list_{plural}"]["responses"]["200"]["links"]["next_page"]
        assert page["operationId"] == f"list_{plural}" and page["parameters"]["cursor"] == "$response.body#/nextCursor"
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        **doc["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer"}
    # Authentication is off on this server: no operation demands a token.
    assert not any("security" in op for op in ops.values())


@pytest.mark.parametrize("path", ["/redoc", "/docs/oauth2-redirect"])
def test_no_page_left_that_would_load_from_a_cdn(client, path):
    assert client.get(path).status_code == 404
