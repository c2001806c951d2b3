"""Grafana provisioning files: a Prometheus datasource and a file provider for the dashboard.

Copy (or mount) generated/grafana/provisioning/{datasources,dashboards} into Grafana's
provisioning directory. Both files read the environment when Grafana starts, so nothing
machine-specific is committed:
- PROMETHEUS_URL (as `make env` prints it), e.g. http://127.0.0.1:9090
- AETHER_GRAFANA_DASHBOARDS: the folder holding aether-slos.json, e.g. <repo>/dashboards_py/generated/grafana
"""
from __future__ import annotations

FOLDER = "Aether"
DATASOURCE_FILE = "datasources/aether-prometheus.yml"
PROVIDER_FILE = "dashboards/aether-dashboards.yml"


def datasource() -> dict:
    return {"apiVersion": 1, "datasources": [{
        "name": "Prometheus (Aether)", "uid": "aether-prometheus", "type": "prometheus", "access": "proxy",
        "url": "${PROMETHEUS_URL}", "isDefault": True, "editable": False,
        # The stack scrapes every 5 s; Grafana's default 15 s step would hide short spikes.
        "jsonData": {"timeInterval": "5s"},
    }]}


def dashboard_provider() -> dict:
    return {"apiVersion": 1, "providers": [{
        "name": "aether", "folder": FOLDER, "type": "file", "disableDeletion": False,
        "allowUiUpdates": False, "updateIntervalSeconds": 30,
        "options": {"path": "${AETHER_GRAFANA_DASHBOARDS}", "foldersFromFilesStructure": False},
    }]}
