"""Writes docs/settings.md, the reference of every environment variable the project reads.

Generated, so that it cannot drift: the fields of the settings models give their variable,
type, default and description; the variables read elsewhere (the local stack, the benchmarks,
a few process-level switches) are described in `ELSEWHERE` below. `--check` fails
when the committed file is stale, or when the source reads an `AETHER_*` variable documented
nowhere; the test suite runs it, like the dashboards' check.

    python -m aether_platform.settings_doc           # rewrite docs/settings.md
    python -m aether_platform.settings_doc --check   # exit 1 if stale or incomplete

Only pydantic and the standard library: it imports the models, and reads the rest of the source
as text.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "docs" / "settings.md"
# Where variables are read; tests set variables but define none.
SOURCES = ("aether_platform", "api", "devstack", "dashboards_py", "migrations", "bench")

# Variables read outside the settings models: (where, default, meaning). Most are the local
# stack's or the benchmarks', which never run in production.
ELSEWHERE: dict[str, tuple[str, str, str]] = {
    # the local stack (devstack/stack.py, `make run` / `aether stack`)
    "AETHER_STACK_DIR": ("devstack/stack.py", "`.stack` in the checkout",
                         "State directory of the local stack: data, logs, pid files."),
    "AETHER_STACK_SERVICES": ("api/cli.py", "all",
                              "Default of `aether stack up --services`: a comma list, `infra` or `all`."),
    "AETHER_PG_PORT": ("devstack/stack.py", "55432", "Port of the stack's PostgreSQL."),
    "AETHER_KAFKA_PORT": ("devstack/stack.py", "9092", "Port of the stack's Kafka broker."),
    "AETHER_KAFKA_CONTROLLER_PORT": ("devstack/stack.py", "9093", "Port of the stack's KRaft controller."),
    "AETHER_PROMETHEUS_PORT": ("devstack/stack.py", "9090", "Port of the stack's Prometheus."),
    "AETHER_API_PORT": ("devstack/stack.py", "8080", "Port of the stack's API."),
    "AETHER_API_WORKERS": ("devstack/stack.py", "cores − 1 (at least 1)", "uvicorn workers of the stack's API."),
    "AETHER_DAGSTER_PORT": ("devstack/stack.py", "3000", "Port of the stack's Dagster webserver."),
    "AETHER_PG_BIN": ("devstack/stack.py", "/usr/lib/postgresql/15/bin",
                      "Directory of the PostgreSQL server binaries (initdb, pg_ctl)."),
    "AETHER_CACHE_DIR": ("devstack/stack.py", "~/.cache/aether", "Where the Kafka jars are fetched once."),
    "AETHER_EXTERNAL_DATABASE_URL": ("devstack/stack.py", "(unset)",
                                     "Use this PostgreSQL (libpq URL) instead of starting one."),
    "AETHER_EXTERNAL_KAFKA_BOOTSTRAP_SERVERS": ("devstack/stack.py", "(unset)",
                                                "Use this Kafka cluster instead of starting one."),
    "AETHER_EXTERNAL_WAIT_SECONDS": ("devstack/stack.py", "60", "How long `up` waits for an external server."),
    "AETHER_PROFILE": ("devstack/stack.py", "development",
                       "The local stack's profile: `development` (plaintext, auth off) or `production` "
                       "(TLS, SASL_SSL Kafka, auth on); same as `--profile`."),
    # processes
    "AETHER_LOG_FORMAT": ("aether_platform/logs.py, api/cli.py", "text",
                          "Log lines on stderr as `text` or `json`."),
    "AETHER_LOG_LEVEL": ("aether_platform/logs.py", "INFO", "Least level of the log lines written."),
    "AETHER_ALEMBIC_QUIET": ("migrations/env.py", "(unset)",
                             "Set by the CLI and the stack: Alembic leaves the caller's logging alone."),
    "AETHER_GRAFANA_DASHBOARDS": ("dashboards_py/provisioning.py", "(none)",
                                  "Folder of the generated dashboard JSON, for Grafana's file provisioning."),
    "DAGSTER_PG_URL": ("devstack/stack.py, Dagster", "the `dagster` database beside DATABASE_URL",
                       "Dagster's run and event storage (dagster-postgres)."),
    "DAGSTER_HOME": ("Dagster", "`.stack/dagster` under the stack", "Dagster's instance directory (dagster.yaml)."),
    "WEB_CONCURRENCY": ("api/__main__.py", "1", "API worker processes of `python -m api` (uvicorn's convention)."),
    "PROMETHEUS_MULTIPROC_DIR": ("api/metrics.py", "(unset)",
                                 "With several API workers: where prometheus_client aggregates their metrics."),
    "PROMETHEUS_URL": ("dashboards_py, tests", "http://127.0.0.1:9090", "The Prometheus that `make env` prints."),
    "GRAFANA_URL": ("dashboards_py", "(none)", "Grafana base URL for `aether dashboards push`."),
    "GRAFANA_TOKEN": ("dashboards_py", "(none)", "Grafana service-account token for `aether dashboards push`."),
    # benchmarks (bench/)
    "AETHER_BENCH_SECONDS": ("bench/", "15", "Measuring time per benchmark side."),
    "AETHER_BENCH_ROUNDS": ("bench/api_write.py", "10", "Alternating rounds of the API write benchmark."),
    "AETHER_BENCH_EVENTS": ("bench/relay_throughput.py", "1000000", "Outbox rows of the relay benchmark."),
    "AETHER_BENCH_LATENCY_SECONDS": ("bench/relay_latency.py", "20", "How long the relay latency benchmark writes."),
    "AETHER_BENCH_GROWTH_ROWS": ("bench/outbox_growth.py", "1000000", "Outbox sizes measured, a comma list."),
    "AETHER_BENCH_GROWTH_PARTITIONED_AT": ("bench/outbox_growth.py", "the first size from 1,000,000",
                                           "The size at which the partitioned table is measured too."),
    "AETHER_BENCH_SOAK_MINUTES": ("bench/soak.py", "3", "Length of the soak run."),
    "AETHER_BENCH_REPEATS": ("bench/__main__.py", "3", "Interleaved rounds per benchmark; the report takes medians."),
    "AETHER_BENCH_OUT": ("bench/__main__.py, bench/report.py", "bench/results",
                         "Set by `python -m bench` for each benchmark: where its results go."),
    "AETHER_BENCH_PGBENCH_CLIENTS": ("bench/api_write.py", "10,25,50,100", "pgbench client counts of the baseline."),
    "AETHER_BENCH_API_POOLS": ("bench/api_write.py", "5,10,20,30",
                               "API database pool sizes swept for the API's capacity, as pgbench's clients are."),
    "AETHER_BENCH_IDLE_SECONDS": ("bench/relay_idle.py", "60", "How long the idle relay's CPU is measured."),
    "AETHER_BENCH_API_CAPACITY": ("bench/report.py", "(measured)", "The API capacity that load levels are judged against, "
                                  "when not measured in the run."),
    "AETHER_BENCH_BROKER_WARM_UP_SECONDS": ("bench/e2e_latency.py", "30",
                                            "Load on a fresh broker before the end-to-end benchmark measures."),
}

_VAR = re.compile(r"""["'](AETHER_[A-Z0-9_]*[A-Z0-9])["']""")


def _models():
    from aether_platform.relay import RelaySettings
    from aether_platform.retention import RetentionSettings
    from aether_platform.settings import Settings

    return [("Settings", "aether_platform/settings.py", Settings,
             "Read by every process (API, relay, CLI) through `get_settings()`."),
            ("Relay", "aether_platform/relay.py", RelaySettings,
             "The relay's and its Dagster sensor's settings (`RelaySettings`, also shown as the `relay` "
             "resource in the Dagster UI); its connection and topic come from the settings above."),
            ("Outbox retention", "aether_platform/retention.py", RetentionSettings,
             "The scheduled deletion of published outbox rows (`RetentionSettings`).")]


def _type(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _default(value) -> str:
    if value == "":
        return "(empty)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int) and value >= 10_000:
        return f"{value} ({value:_})".replace("_", ",")
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def documented() -> set[str]:
    names = set(ELSEWHERE)
    for _, _, model, _ in _models():
        names |= {f.alias for f in model.model_fields.values() if f.alias}
    return names


def read_in_source() -> dict[str, str]:
    """Every AETHER_* name quoted in the source, with the first file that quotes it."""
    found: dict[str, str] = {}
    for top in SOURCES:
        for path in sorted((REPO / top).rglob("*.py")):
            for name in _VAR.findall(path.read_text(encoding="utf-8")):
                found.setdefault(name, str(path.relative_to(REPO)))
    return found


def undocumented() -> dict[str, str]:
    known = documented()
    return {name: where for name, where in read_in_source().items() if name not in known}


def undescribed() -> list[str]:
    return [f.alias or name for _, _, model, _ in _models() for name, f in model.model_fields.items()
            if f.alias and not (f.description or "").strip()]


def render() -> str:
    out = ["# Settings reference", "",
           "Every environment variable the project reads, with its type, default and meaning. Generated",
           "from the settings models by `python -m aether_platform.settings_doc`; do not edit by hand",
           "(the suite fails when this file is stale). Booleans take `1/0`, `true/false`, `on/off`.", ""]
    for title, where, model, about in _models():
        out += [f"## {title} (`{where}`)", "", about, "", "| variable | type | default | meaning |", "|---|---|---|---|"]
        for name, f in model.model_fields.items():
            if not f.alias:
                continue
            out.append(f"| `{f.alias}` | {_cell(_type(f.annotation))} | {_cell(_default(f.default))} | "
                       f"{_cell(f.description or '')} |")
        out.append("")
    out += ["## Read elsewhere", "",
            "The local stack's, the benchmarks' and a few process-level switches.", "",
            "| variable | read in | default | meaning |", "|---|---|---|---|"]
    for name, (where, default, meaning) in ELSEWHERE.items():
        out.append(f"| `{name}` | `{where}` | {_cell(default)} | {_cell(meaning)} |")
    out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aether_platform.settings_doc", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/settings.md is stale or incomplete")
    args = parser.parse_args(argv)
    problems = [f"{name} (read in {where}) is documented nowhere: describe it in a settings model or in "
                f"ELSEWHERE of aether_platform/settings_doc.py" for name, where in undocumented().items()]
    problems += [f"{name} has no description: add Field(description=...)" for name in undescribed()]
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            problems.append(f"{OUTPUT} is stale: run `python -m aether_platform.settings_doc`")
    else:
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUTPUT}", file=sys.stderr)
    for p in problems:
        print(f"settings_doc: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
