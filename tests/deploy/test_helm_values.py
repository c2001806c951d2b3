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
    uid = re.search(r"^USER (\d+)", (REPO / "Dockerfile").read_text(), re.M).group(1)
    assert deployment["podSecurityContext"]["runAsUser"] == int(uid)
    assert values["postgresql"]["enabled"] is False


def test_chart_version_matches_the_dagster_pin():
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    [dagster] = [p.split("==")[1] for p in pins if p.startswith("dagster==")]
    for doc in (VALUES, REPO / "docs" / "deploy.md"):
        versions = set(re.findall(r"dagster/dagster --version (\S+)", doc.read_text()))
        assert versions == {dagster}, doc
