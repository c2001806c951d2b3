"""`aether`: the project's one command-line entry point."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _stack(args) -> int:
    from devstack import stack

    cfg = stack.Config()
    try:
        if args.action == "up":
            services = stack.parse_services(args.services)
            if args.foreground:
                return stack.foreground(cfg, services)
            stack.up(cfg, services)
            stack.print_urls(cfg, services)
        elif args.action == "down":
            stack.down(cfg)
        elif args.action == "status":
            for name, state in stack.status(cfg).items():
                print(f"{name:<18} {state}")
        elif args.action == "env":
            for key, value in cfg.env().items():
                print(f"export {key}={_shell_quote(value)}")
    except stack.StackError as exc:
        print(f"[stack] ERROR: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


def _migrate(args) -> int:
    argv = [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini")]
    argv += ["upgrade", args.revision or "head"] if args.direction == "up" else ["downgrade", args.revision or "base"]
    return subprocess.call(argv, cwd=REPO, env=os.environ.copy())


def _topic(args) -> int:
    from aether_platform.settings import get_settings
    from aether_platform.topics import declared_topic, describe_topic, drift, ensure_topic

    bootstrap = get_settings().kafka_bootstrap_servers
    spec = declared_topic()
    if args.action == "provision":
        result = ensure_topic(bootstrap, spec)
        print(f"{spec.name}: {result.action}, {result.partitions} partitions")
    problems = drift(spec, describe_topic(bootstrap, spec.name))
    for p in problems:
        print(f"drift: {p}")
    return 1 if problems else 0


def _dashboards_arguments(p: argparse.ArgumentParser) -> None:
    from dashboards_py.__main__ import add_arguments, run

    add_arguments(p)
    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aether", description="Aether platform command line.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stack", help="start, stop and inspect the local stack",
                       description="Local stack: PostgreSQL, Kafka, Prometheus, the API and Dagster.")
    p.add_argument("action", choices=["up", "down", "status", "env"])
    p.add_argument("--services", help="comma list of services, or 'infra' (postgres,kafka,prometheus) or 'all'")
    p.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops everything started")
    p.set_defaults(func=_stack)

    p = sub.add_parser("migrate", help="apply or revert database migrations (Alembic)")
    p.add_argument("direction", choices=["up", "down"], nargs="?", default="up")
    p.add_argument("--revision", help="target revision (default: head for up, base for down)")
    p.set_defaults(func=_migrate)

    p = sub.add_parser("topic", help="provision or check the Kafka topic against its declared spec")
    p.add_argument("action", choices=["provision", "check"])
    p.set_defaults(func=_topic)

    p = sub.add_parser("dashboards", help="build, check or push the SLO dashboard, rules and promtool tests",
                       description="SLOs as code (dashboards_py): same as `python -m dashboards_py`.")
    _dashboards_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
