"""Issue 17: in the production profile every log line the profile writes parses as JSON, and no
token or secret value appears in any log file.

Runs after every other test against the same `production_stack` (conftest sorts this module
last), so it reads the logs of the whole session: starts, restarts, authenticated requests, jobs.
The logs read: every file under the profile's logs dir (the API, relay, Dagster, Kafka,
PostgreSQL's collector, Prometheus) and the OIDC provider's log beside its state.
"""
from __future__ import annotations

import json

from devstack import stack
from tests.production.conftest import OIDC_CLIENTS


def _log_files(prod) -> list:
    files = [p for p in prod.logs_dir.rglob("*") if p.is_file()]
    provider_log = prod.state_dir / "oidc" / "provider.log"
    if provider_log.exists():
        files.append(provider_log)
    return files


def _secrets(prod) -> dict[str, str]:
    """name -> value of every credential the profile and the fixture made."""
    values = {"operator token": prod.operator_token}
    values.update({f"issued token #{i}": t for i, t in enumerate(prod.issued_tokens)})
    values.update({f"OIDC client secret of {c['client_id']}": c["client_secret"] for c in OIDC_CLIENTS})
    for f in stack.secrets_dir(prod.cfg).iterdir():
        if f.is_file() and f.name != "tokens":  # tokens holds hashes, not secrets
            values[f"secret file {f.name}"] = f.read_text().strip()
    return {k: v for k, v in values.items() if len(v) >= 8}


def test_every_log_line_is_json_and_no_token_is_in_any_log(production_stack):
    prod = production_stack
    files = _log_files(prod)
    names = {p.name for p in files}
    # The pieces that must have logged: a missing file would make the check below vacuous.
    assert {"api.log", "kafka.log", "prometheus.log", "postgres.json", "dagster-daemon.log"} <= names, names
    secrets = _secrets(prod)
    assert "operator token" in secrets and any(k.startswith("issued token") for k in secrets)
    not_json, leaked = [], []
    for path in files:
        text = path.read_text(errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                ok = isinstance(json.loads(line), dict)
            except ValueError:
                ok = False
            if not ok:
                not_json.append(f"{path.name}:{n}: {line[:200]}")
        leaked += [f"{name} in {path.name}" for name, value in secrets.items() if value in text]
    assert not leaked, leaked
    per_file = {f: sum(line.startswith(f + ":") for line in not_json) for f in names}
    assert not not_json, (f"{len(not_json)} non-JSON log lines ({ {f: n for f, n in per_file.items() if n} }), "
                          "first ones:\n" + "\n".join(not_json[:30]))
