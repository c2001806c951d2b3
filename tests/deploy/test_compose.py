"""deploy/compose.yaml: parses with docker-compose, names what the README names, mounts files
that exist, takes every setting from deploy/.env.example, and wires Prometheus and Grafana to
the generated files. No Docker engine needed: `config` only reads."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, required_binary

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"


def _compose_cli() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    pytest.fail("docker-compose is missing: `devstack/bootstrap.sh --browser` installs Debian's docker-compose")


@pytest.fixture(scope="module")
def config() -> dict:
    r = subprocess.run([*_compose_cli(), "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config"],
                       cwd=DEPLOY, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def _env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def _bind_sources(service: dict) -> list[tuple[Path, str]]:
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        elif v.get("type") == "bind":
            source, target = v["source"], v["target"]
        else:
            continue
        if source.startswith(("/", ".")):
            out.append(((DEPLOY / source).resolve(), target))
    return out


def test_readme_services_are_in_compose(config):
    text = (REPO / "README.md").read_text()
    section = text.split("## Beyond one machine", 1)[1].split("\n## ", 1)[0]
    services_sentence = re.search(r"Services:(.*?)\.", section, re.DOTALL).group(1)
    named = re.findall(r"`([a-z-]+)`", services_sentence)
    assert {"postgres", "kafka", "prometheus", "grafana", "api", "dagster-webserver", "dagster-daemon"} <= set(named)
    assert set(named) <= set(config["services"])


def test_every_mounted_file_exists(config):
    mounts = [m for s in config["services"].values() for m in _bind_sources(s)]
    assert len(mounts) >= 6
    for source, target in mounts:
        assert source.exists(), f"{source} (mounted at {target}) does not exist"
    context = Path(config["services"]["api"]["build"]["context"])
    assert (context / config["services"]["api"]["build"]["dockerfile"]).is_file()


def test_secrets_are_files_kept_out_of_git(config):
    for name, secret in config["secrets"].items():
        path = Path(secret["file"])
        assert path.is_relative_to(DEPLOY / "secrets"), name
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO)
        assert ignored.returncode == 0, f"{path} is not git-ignored"


def test_env_example_covers_every_variable():
    text = COMPOSE.read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    example = _env_example()
    assert used - set(example) == set(), "used in compose.yaml, missing from .env.example"
    assert set(example) - used == set(), "in .env.example but unused"
    # Credentials in the example are placeholders, never something that looks deployable.
    for key, value in example.items():
        if "PASSWORD" in key:
            assert "CHANGE-ME" in value, key


def test_auth_is_on_with_a_mounted_token_file(config):
    api = config["services"]["api"]
    assert api["environment"]["AETHER_AUTH"] == "on"
    secrets = [s["source"] if isinstance(s, dict) else s for s in api["secrets"]]
    assert api["environment"]["AETHER_AUTH_TOKEN_FILE"] in {f"/run/secrets/{s}" for s in secrets}


def test_platform_services_share_the_image_and_start_after_init(config):
    services = config["services"]
    for name in ("api", "dagster-webserver", "dagster-daemon"):
        assert services[name]["image"] == services["init"]["image"]
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert "aether migrate up" in " ".join(services["init"]["command"])
    assert "aether topic provision" in " ".join(services["init"]["command"])
    for name in ("dagster-webserver", "dagster-daemon"):
        env = services[name]["environment"]
        assert "@postgres:5432/dagster?sslmode=" in env["DAGSTER_PG_URL"]
        assert (DEPLOY / "dagster.yaml").resolve() in [s for s, _ in _bind_sources(services[name])]


def test_grafana_is_provisioned_with_the_generated_files(config):
    grafana = config["services"]["grafana"]
    mounts = {target: source for source, target in _bind_sources(grafana)}
    generated = REPO / "dashboards_py" / "generated" / "grafana"
    assert mounts["/etc/grafana/provisioning/datasources"] == generated / "provisioning" / "datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == generated / "provisioning" / "dashboards"
    # The generated provider reads its folder from AETHER_GRAFANA_DASHBOARDS: the dashboard must be mounted there.
    dashboards = [t for t, s in mounts.items() if s.suffix == ".json"]
    assert [str(Path(t).parent) for t in dashboards] == [grafana["environment"]["AETHER_GRAFANA_DASHBOARDS"]]
    assert grafana["environment"]["PROMETHEUS_URL"] == "http://prometheus:9090"


def test_prometheus_config_is_valid_and_scrapes_the_api(config, tmp_path):
    prometheus = config["services"]["prometheus"]
    mounts = {target: source for source, target in _bind_sources(prometheus)}
    assert mounts["/etc/prometheus/rules"] == REPO / "dashboards_py" / "generated" / "prometheus"
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    [job] = prom["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["api:8080"]
    assert job["authorization"]["credentials_file"] == "/run/secrets/prometheus_scrape_token"

    promtool = required_binary("promtool")
    # The same file with the container paths pointed at the repo's rules and a dummy token.
    (tmp_path / "token").write_text("x")
    text = (DEPLOY / "prometheus.yml").read_text()
    text = text.replace("/etc/prometheus/rules", str(mounts["/etc/prometheus/rules"]))
    text = text.replace("/run/secrets/prometheus_scrape_token", str(tmp_path / "token"))
    (tmp_path / "prometheus.yml").write_text(text)
    r = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout and "rule files found" in r.stdout


def test_dagster_instance_config_is_valid(monkeypatch):
    from dagster._core.instance.config import dagster_instance_config

    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql://u:p@postgres:5432/dagster")
    cfg, _ = dagster_instance_config(str(DEPLOY))
    assert "postgres" in cfg["storage"]


def test_platform_services_take_every_kafka_client_setting_and_the_password_as_a_secret(config):
    from aether_platform.kafka_client import env_names

    for name in ("init", "api", "dagster-webserver", "dagster-daemon"):
        service = config["services"][name]
        env = service["environment"]
        assert set(env_names()) <= set(env), name
        secrets = [s["source"] if isinstance(s, dict) else s for s in service["secrets"]]
        assert "kafka_sasl_password" in secrets, name
        assert env["KAFKA_SASL_PASSWORD_FILE"] == "/run/secrets/kafka_sasl_password"
        assert env["AETHER_LOG_FORMAT"] == "json"
        assert "sslmode=" in env["DATABASE_URL"]


def test_api_health_is_readiness_on_readyz(config, api_server):
    test = config["services"]["api"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"] and "'http://127.0.0.1:8080/readyz'" in test[-1]
    command = [sys.executable, *test[2:-1], test[-1].replace("127.0.0.1:8080", f"127.0.0.1:{api_server.port}")]
    assert subprocess.run(command, capture_output=True).returncode == 0


def test_every_platform_process_logs_json(config):
    """Our processes follow the image's AETHER_LOG_FORMAT=json; Dagster's take their own flag."""
    services = config["services"]
    for name in ("dagster-webserver", "dagster-daemon"):
        command = services[name]["command"]
        assert command[command.index("--log-format") + 1] == "json", name
    assert services["init"]["environment"]["AETHER_LOG_FORMAT"] == "json"
