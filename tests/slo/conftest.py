"""A database of the SLO tests' own: the rows they plant (relay status, outbox events) must not
meet another test's relay, and another relay's rows must not change what these tests measure."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from aether_platform.db_url import libpq_url
from tests.conftest import RUN_ID, drop_database, migrated_database, required_binary


@pytest.fixture(scope="package")
def slo_db(base_database_url):
    name = f"aether_slo_{RUN_ID}"
    yield migrated_database(base_database_url, name)
    drop_database(base_database_url, name)


@pytest.fixture
def slo_conn(slo_db):
    with psycopg.connect(libpq_url(slo_db), autocommit=True) as conn:
        yield conn

# Where a Prometheus started on port 0 says it listens, e.g. msg="Listening on" address=127.0.0.1:36739
PROMETHEUS_LISTENING = re.compile(r'msg="Listening on" address=[^\s]*:(\d+)')


class OwnPrometheus:
    """A Prometheus of the test's own in `tmp`, on port 0: its log says which port it got, so no
    port is chosen by one process and bound by another. start() returns once it is ready.
    Restartable on the same data."""

    def __init__(self, tmp: Path, config: dict, *flags: str):
        self.tmp, self.flags, self.proc, self.url = tmp, flags, None, None
        (tmp / "prometheus.yml").write_text(json.dumps(config))   # JSON is YAML

    def start(self, timeout: float = 60) -> "OwnPrometheus":
        log_path = self.tmp / "prometheus.log"
        log_path.write_bytes(b"")
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [required_binary("prometheus"), f"--config.file={self.tmp / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.tmp / 'data'}", "--web.listen-address=127.0.0.1:0", *self.flags],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while not (listening := PROMETHEUS_LISTENING.search(log_path.read_text())):
                assert self.proc.poll() is None, f"prometheus exited; see {log_path}"
                assert time.monotonic() < deadline, f"prometheus never said where it listens; see {log_path}"
                time.sleep(0.1)
        except BaseException:
            self.proc.kill()
            raise
        self.url = f"http://127.0.0.1:{listening.group(1)}"
        while not self._ready():  # listening is not ready: it may still be replaying its WAL
            assert self.proc.poll() is None, f"prometheus exited; see {log_path}"
            assert time.monotonic() < deadline, f"prometheus did not become ready; see {log_path}"
            time.sleep(0.3)
        return self

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
