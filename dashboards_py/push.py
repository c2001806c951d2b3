"""Imports the dashboard through Grafana's HTTP API: POST /api/dashboards/db with overwrite.

stdlib only (urllib), so pushing needs nothing beyond the runtime dependencies.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request

API_PATH = "/api/dashboards/db"


def request_body(dashboard: dict, folder_uid: str | None = None, message: str = "") -> dict:
    # id null: Grafana matches on uid, so the same dashboard is updated wherever it was created.
    body = {"dashboard": {**dashboard, "id": None}, "overwrite": True,
            "message": message or "pushed by `python -m dashboards_py push`"}
    if folder_uid:
        body["folderUid"] = folder_uid
    return body


def push(url: str, dashboard: dict, token: str | None = None, folder_uid: str | None = None,
         timeout: float = 10.0) -> dict:
    """Returns Grafana's answer ({"uid", "url", "version", "status", …}); raises PushError."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url.rstrip("/") + API_PATH, method="POST", headers=headers,
                                 data=json.dumps(request_body(dashboard, folder_uid)).encode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise PushError(f"Grafana answered {exc.code}: {exc.read()[:500].decode(errors='replace')}") from exc
    except (urllib.error.URLError, TimeoutError) as exc:
        raise PushError(f"cannot reach Grafana at {url}: {exc}") from exc


class PushError(RuntimeError):
    pass
