"""The production profile, started once per test session in a state dir of its own.

`production_stack` runs `aether stack up --profile production` (the command the README gives)
with every port left to the stack to pick (AETHER_*_PORT=0: it binds port 0 and retries on a bind
conflict), in `.stack/test-stacks/<id>/production`, so the developer's stack and the suite's shared
servers are never touched; it stops everything and deletes the directory at the end.

What a test gets (`ProductionStack`):
    api_url, database_url (verify-full, sslrootcert = the profile's CA), kafka (librdkafka config
    dict: SASL_SSL, SCRAM-SHA-512, password read from its file), env (every variable the
    platform processes got), token_file, operator_token, add_token(tenant) -> a new bearer token,
    oidc (the devstack.oidc OidcProvider, or None while it is not in the tree) with oidc_token(client_id)
    for the clients of OIDC_CLIENTS (tenant ids in OIDC_TENANTS), issued_tokens, state_dir, logs_dir,
    stop_service(name) / start_service(name) for postgres, kafka, api, dagster-webserver,
    dagster-daemon, prometheus; start_service returns once the service is ready again.
Tests that stop a service start it again before they end, so the stack is whole for the next one.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devstack import stack
from tests.conftest import CLI, REPO


# postgres and kafka in the profile's TLS/SASL configuration, the API with auth on, Dagster (its
# storage over TLS, the relay over SASL_SSL) and Prometheus scraping /metrics with a token.
SERVICES = "postgres,kafka,prometheus,api,dagster-webserver,dagster-daemon"
PORT_VARS = ("AETHER_PG_PORT", "AETHER_KAFKA_PORT", "AETHER_KAFKA_CONTROLLER_PORT", "AETHER_PROMETHEUS_PORT",
             "AETHER_API_PORT", "AETHER_DAGSTER_PORT")


def _clean_env(base: Path) -> dict[str, str]:
    """The caller's environment less anything that points at another stack (the suite's session
    database and topic, a shell's `make env` exports), plus the profile's own switches."""
    drop = ("DATABASE_URL", "DAGSTER_PG_URL", "DAGSTER_HOME", "AETHER_TOPIC", "AETHER_PROFILE", "AETHER_STACK_DIR")
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith(("KAFKA_", "AETHER_AUTH", "PROMETHEUS_"))}
    env.update({"AETHER_STACK_DIR": str(base), "AETHER_PROFILE": "production", "AETHER_API_WORKERS": "1",
                "PYTHONPATH": str(REPO), **{v: "0" for v in PORT_VARS}})
    return env


@dataclass
class ProductionStack:
    base: Path
    env_for_cli: dict[str, str]
    oidc: object | None = None
    _added_tokens: list[str] = field(default_factory=list)

    @property
    def cfg(self) -> stack.Config:
        """Read afresh each time: a restarted server may have had to pick another port."""
        return stack.Config(state_dir=self.base, profile="production", external_database_url=None,
                            external_kafka=None, api_workers=1, **{a: 0 for a in stack._PORT_ENV})

    # ---- what tests read -------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.cfg.state_dir

    @property
    def logs_dir(self) -> Path:
        return self.cfg.logs

    @property
    def api_url(self) -> str:
        return self.cfg.api_url

    @property
    def database_url(self) -> str:
        return self.cfg.database_url

    @property
    def ca_file(self) -> Path:
        return stack.tls_dir(self.cfg) / "ca.crt"

    @property
    def kafka(self) -> dict:
        return self.cfg.kafka_client_config()

    @property
    def env(self) -> dict[str, str]:
        return {**self.cfg.env(), **self.cfg.kafka_env()}

    @property
    def token_file(self) -> Path:
        return stack.secrets_dir(self.cfg) / "tokens"

    @property
    def operator_token(self) -> str:
        return (stack.secrets_dir(self.cfg) / "operator.token").read_text().strip()

    def oidc_token(self, client_id: str) -> str:
        """A provider-issued JWT for one of OIDC_CLIENTS (operator, tenant-a, tenant-b)."""
        assert self.oidc is not None, "devstack/oidc.py is not in the tree"
        [client] = [c for c in OIDC_CLIENTS if c["client_id"] == client_id]
        token = self.oidc.token(client_id, client["client_secret"])
        self._added_tokens.append(token)
        return token

    @property
    def issued_tokens(self) -> list[str]:
        """Every bearer token the fixture handed out (add_token, oidc_token): none may reach a log."""
        return list(self._added_tokens)

    def add_token(self, tenant: str, label: str = "test") -> str:
        """A new bearer token bound to `tenant` (a UUID, or "operator"); the API re-reads the file."""
        from aether_platform.auth import hash_token

        token = secrets.token_urlsafe(24)
        with self.token_file.open("a") as f:
            f.write(f"{hash_token(token)} {tenant} {label}\n")
        self._added_tokens.append(token)
        return token

    # ---- stopping and starting one piece ---------------------------------------------------
    def stop_service(self, name: str) -> None:
        """`stack down --services NAME`: the others keep running."""
        self.cli("stack", "down", "--services", name)

    def start_service(self, name: str) -> None:
        """`stack up --services NAME`: starts it if it is not running and waits until it is ready."""
        self.cli("stack", "up", "--services", name)

    def cli(self, *args: str, timeout: float = 300, platform_env: bool = False) -> subprocess.CompletedProcess:
        """`aether ARGS`; platform_env: with the platform processes' environment (DATABASE_URL, KAFKA_*)."""
        env = {**self.env_for_cli, **self.env} if platform_env else self.env_for_cli
        r = subprocess.run([*CLI, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"aether {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
        return r


# The provider's clients: one operator and two tenants (tenant ids in OIDC_TENANTS); secrets random.
OIDC_TENANTS = {"tenant-a": str(uuid.uuid4()), "tenant-b": str(uuid.uuid4())}
OIDC_CLIENTS = [{"client_id": "operator", "client_secret": secrets.token_urlsafe(24), "role": "operator"},
                *({"client_id": cid, "client_secret": secrets.token_urlsafe(24), "tenant_id": tid}
                  for cid, tid in OIDC_TENANTS.items())]


def _start_oidc(state: Path) -> object | None:
    """The real OpenID Provider of devstack/oidc.py, when it is in the tree: its issuer and JWKS
    go into the profile's oidc.json, which the stack hands to the API as AETHER_AUTH_OIDC_*."""
    try:
        from devstack.oidc import OidcProvider  # noqa: PLC0415 - optional until it is merged
    except ImportError:
        return None
    provider = OidcProvider(OIDC_CLIENTS)
    issuer, jwks_url = provider.start(state / "oidc")
    (state / "oidc.json").write_text(json.dumps({"AETHER_AUTH_OIDC_ISSUER": issuer,
                                                 "AETHER_AUTH_OIDC_AUDIENCE": provider.audience,
                                                 "AETHER_AUTH_OIDC_JWKS_URL": jwks_url}))
    return provider


def pytest_collection_modifyitems(items):
    """test_logs.py reads what every other test made the profile log: it runs last."""
    items.sort(key=lambda item: item.path.name == "test_logs.py")


@pytest.fixture(scope="session")
def production_stack():
    base = REPO / ".stack" / "test-stacks" / f"production-{uuid.uuid4().hex[:8]}"
    base.mkdir(parents=True)
    env = _clean_env(base)
    (base / "production").mkdir()
    oidc = _start_oidc(base / "production")
    r = subprocess.run([*CLI, "stack", "up", "--services", SERVICES], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    prod = ProductionStack(base=base, env_for_cli=env, oidc=oidc)
    try:
        assert r.returncode == 0, f"stack up --profile production failed:\n{r.stdout}\n{r.stderr}"
        yield prod
    finally:
        subprocess.run([*CLI, "stack", "down"], cwd=REPO, env=env, capture_output=True, timeout=300)
        if oidc is not None:
            oidc.stop()
        pg = (base / "production" / "pg").resolve()
        if pg != base / "production" / "pg":  # the cluster lived under /var/lib (see stack._ensure_pg_dir_usable)
            shutil.rmtree(pg.parent, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
