"""docs/helm/values.yaml stays in step with the code location, the image and the dagster pin.
(No Helm here: the chart itself is not rendered.)"""
from __future__ import annotations

import re
import tomllib

import yaml

from tests.conftest import REPO

VALUES = REPO / "docs" / "helm" / "values.yaml"


def test_user_deployment_serves_the_workspace_module_as_the_image_user():
    values = yaml.safe_load(VALUES.read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    module = workspace["load_from"][0]["python_module"]["module_name"]
    args = deployment["dagsterApiGrpcArgs"]
    assert args[args.index("--module-name") + 1] == module
    assert args[args.index("--log-format") + 1] == "json"
    uid = re.search(r"^USER (\d+)", (REPO / "Dockerfile").read_text(), re.M).group(1)
    assert deployment["podSecurityContext"]["runAsUser"] == int(uid)
    assert values["postgresql"]["enabled"] is False


def test_chart_version_matches_the_dagster_pin():
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    [dagster] = [p.split("==")[1] for p in pins if p.startswith("dagster==")]
    for doc in (VALUES, REPO / "docs" / "deploy.md"):
        versions = set(re.findall(r"dagster/dagster --version (\S+)", doc.read_text()))
        assert versions == {dagster}, doc


def test_api_manifest_probes_liveness_on_livez_and_readiness_on_readyz():
    docs = list(yaml.safe_load_all((REPO / "docs" / "helm" / "api.yaml").read_text()))
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # /readyz waits up to 2 s for a database connection (api/routers/health.py).
    assert container["readinessProbe"]["timeoutSeconds"] > 2
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AETHER_LOG_FORMAT"] == "json"
    values = yaml.safe_load(VALUES.read_text())
    [deployment_values] = values["dagster-user-deployments"]["deployments"]
    assert [s["secretRef"]["name"] for s in container["envFrom"]] == [s["name"] for s in deployment_values["envSecrets"]]
    uid = re.search(r"^USER (\d+)", (REPO / "Dockerfile").read_text(), re.M).group(1)
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)
