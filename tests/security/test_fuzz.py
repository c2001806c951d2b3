"""Schemathesis against the live API with every check and the examples, coverage, fuzzing and
stateful phases: no failure allowed. Run through its command line, as an operator would run it,
with tests/security/schemathesis_hooks.py making generated requests follow the API's contract
(a fresh Idempotency-Key per request, cursors only from real list responses) and the links in the
OpenAPI document chaining creates to their resources' reads, changes and deletes.

Bounded by SCHEMATHESIS_MAX_EXAMPLES (examples per operation and phase) so that `make test` stays
fast; the seed is fixed so that a failure reproduces (set SCHEMATHESIS_SEED to explore others)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, ApiServer

pytestmark = pytest.mark.slow

MAX_EXAMPLES = os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "10")
SEED = os.environ.get("SCHEMATHESIS_SEED", "23")


@pytest.fixture(scope="module")
def fuzz_api(platform_env, tmp_path_factory):
    # No per-tenant write limit: the fuzzer writes faster than a client may, and a 429 is tested elsewhere.
    server = ApiServer({**platform_env, "AETHER_WRITE_RATE_PER_TENANT": "0"},
                       tmp_path_factory.mktemp("fuzz-api")).start()
    yield server
    server.stop()


def test_schemathesis_every_check_every_phase(fuzz_api, tmp_path):
    report = tmp_path / "schemathesis.ndjson"
    argv = [str(Path(sys.executable).with_name("schemathesis")),
            "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
            "run", f"{fuzz_api.url}/openapi.json",
            "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
            "--max-examples", MAX_EXAMPLES, "--seed", SEED, "--generation-database", "none",
            "--workers", "1", "--continue-on-failure", "--no-color",
            # The stream never ends by design and the page is HTML: both have tests of their own.
            "--exclude-path-regex", "^/(crm-events|ops/)",
            "--report", "ndjson", "--report-ndjson-path", str(report)]
    run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.security.schemathesis_hooks",
                              "PYTHONPATH": str(REPO)})
    print(run.stdout[-6000:])  # the summary: phases, operations reached, warnings (pytest -s shows it)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-3000:]
