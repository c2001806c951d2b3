"""`aether`: the project's one command-line entry point, a thin shell over the core.

It lives beside the API, not in `aether_platform/`, because the core imports no tooling. The
operational commands (`migrate`, `topic`, `outbox`, `auth`, `dashboards`) run anywhere the image
runs; the development ones (`stack`, `bench`) need a checkout, since `devstack/` and `bench/` are
not part of the production image. Run it as `aether …` or `python -m api.cli …`.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger("aether")


def _checkout_missing(package: str) -> SystemExit:
    """devstack/ and bench/ ship only in a development checkout, never in the production image."""
    return SystemExit(f"aether: this command needs a development checkout ({package}/ is not here, "
                      "as in the production image)")


def _stack(args) -> int:
    try:
        from devstack import stack
    except ModuleNotFoundError as exc:
        if exc.name != "devstack":
            raise
        raise _checkout_missing("devstack") from None

    try:
        cfg = stack.Config(**({"profile": args.profile} if args.profile else {}))
        services = _stack_services(args, stack)
        if args.action == "up":
            if args.foreground:
                return stack.foreground(cfg, services)
            stack.up(cfg, services)
            stack.print_urls(cfg, services)
        elif args.action == "down":
            stack.down(cfg, services)
            # Without --profile, `down` stops whichever profile runs: production lives under the same state dir.
            if not args.profile and not cfg.production and (cfg.state_dir / "production" / "pids").is_dir():
                stack.down(stack.Config(profile="production"), services)
        elif args.action == "restart":
            stack.restart(cfg, services)
            stack.print_urls(cfg, services)
        elif args.action == "status":
            for name, state in stack.status(cfg).items():
                if name in services:
                    print(f"{name:<18} {state}")
        elif args.action == "env":
            for key, value in cfg.env().items():
                print(f"export {key}={_shell_quote(value)}")
    except stack.StackError as exc:
        print(f"[stack] ERROR: {exc}", file=sys.stderr, flush=True)
        return 1
    except _Refused as exc:
        print(f"aether stack {args.action}: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


class _Refused(Exception):
    """An option the action cannot honour: refused with one line, never silently ignored."""


def _stack_services(args, stack) -> tuple[str, ...]:
    """The services an action applies to, from `--services` or the positional names. Every
    combination is either honoured or refused: `env` prints settings, not services; only `up`
    can stay in the foreground; `restart` needs to be told what to restart."""
    if args.foreground and args.action != "up":
        raise _Refused("--foreground applies only to `up`")
    if args.names and args.services:
        raise _Refused("name the services either as arguments or with --services, not both")
    spec = ",".join(args.names) if args.names else args.services
    if not spec and args.action == "up":
        spec = os.environ.get("AETHER_STACK_SERVICES")
    if args.action == "env" and spec:
        raise _Refused("`env` prints the whole stack's settings; it takes no services")
    if args.action == "restart" and not spec:
        raise _Refused("name what to restart, e.g. `aether stack restart kafka` (or `all`)")
    return stack.parse_services(spec)


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


def _migrate(args) -> int:
    from alembic.config import main as alembic_main

    argv = ["-c", str(REPO / "alembic.ini")]
    argv += ["upgrade", args.revision or "head"] if args.direction == "up" else ["downgrade", args.revision or "base"]
    # In-process, so that --log-format covers alembic's lines too: migrations/env.py leaves logging
    # alone when AETHER_ALEMBIC_QUIET is set, and alembic's INFO lines (one per revision) go through ours.
    os.environ["AETHER_ALEMBIC_QUIET"] = "1"
    logging.getLogger("alembic").setLevel(logging.INFO)
    try:
        alembic_main(argv=argv)
    except SystemExit as exc:  # alembic exits on its own errors (bad revision, …)
        return exc.code if isinstance(exc.code, int) else 1
    except Exception:
        log.exception("migration %s failed", args.direction)
        return 1
    return 0


def _topic(args) -> int:
    from aether_platform.kafka_client import KafkaConfigError, client_config
    from aether_platform.topics import declared_topic, describe_topic, drift, ensure_topic

    try:
        kafka = client_config()
    except KafkaConfigError as exc:
        print(f"aether topic: {exc}", file=sys.stderr)
        return 2
    spec = declared_topic()
    if args.action == "provision":
        log.info("provisioning topic %s on %s", spec.name, kafka["bootstrap.servers"])
        result = ensure_topic(kafka, spec)
        print(f"{spec.name}: {result.action}, {result.partitions} partitions")
    problems = drift(spec, describe_topic(kafka, spec.name))
    for p in problems:
        print(f"drift: {p}")
    return 1 if problems else 0


def _dashboards_arguments(p: argparse.ArgumentParser) -> None:
    from dashboards_py.__main__ import add_arguments, run

    add_arguments(p)
    p.set_defaults(func=run)


def _slo_arguments(p: argparse.ArgumentParser) -> None:
    from dashboards_py.openslo_cli import add_arguments

    add_arguments(p)


def _bench(args) -> int:
    # bench/ lives in the checkout, not in the installed package: run it from there.
    if not (REPO / "bench").is_dir():
        raise _checkout_missing("bench")
    if args.list:
        if args.names:
            print("aether bench: --list lists every benchmark; it takes no names", file=sys.stderr)
            return 2
        print("\n".join(sorted(p.stem for p in (REPO / "bench").glob("*.py")
                               if not p.stem.startswith("_") and p.stem != "report")))
        return 0
    return subprocess.call([sys.executable, "-m", "bench", *args.names], cwd=REPO)


def _outbox(args) -> int:
    import psycopg

    from aether_platform.db_url import libpq_url
    from aether_platform.relay import requeue
    from aether_platform.settings import get_settings

    with psycopg.connect(libpq_url(get_settings().database_url)) as conn:
        count = requeue(conn, None if args.all else args.event_id)
    log.info("requeued %d dead-lettered event(s)", count)
    print(f"requeued {count}")
    return 0


def _auth(args) -> int:
    """Print a token-file line for a new token; the token itself is shown once and never stored."""
    import secrets
    import uuid

    from aether_platform.auth import OPERATOR, hash_token

    if args.tenant != OPERATOR:
        uuid.UUID(args.tenant)
    token = args.token or secrets.token_urlsafe(32)
    print(f"{hash_token(token)} {args.tenant} {args.label or ''}".rstrip())
    if not args.token:
        print(f"# token (give it to the client; it is not stored anywhere): {token}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from aether_platform import logs

    parser = argparse.ArgumentParser(prog="aether", description="Aether platform command line.")
    parser.add_argument("--log-format", choices=logs.FORMATS, default=os.environ.get("AETHER_LOG_FORMAT", "text"),
                        help="log lines on stderr as text or JSON (default: $AETHER_LOG_FORMAT or text)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stack", help="start, stop and inspect the local stack",
                       description="Local stack: PostgreSQL, Kafka, Prometheus, the API and Dagster.")
    p.add_argument("action", choices=["up", "down", "restart", "status", "env"],
                   help="up/down/restart/status act on the named services (default: all; restart needs one)")
    p.add_argument("names", nargs="*", metavar="SERVICE",
                   help="services to act on, e.g. `restart kafka`; same as --services")
    p.add_argument("--services", help="comma list of services, or 'infra' (postgres,kafka,prometheus) or 'all' "
                                      "(`up` defaults to $AETHER_STACK_SERVICES, else all)")
    p.add_argument("--foreground", action="store_true", help="(up only) stay attached; Ctrl-C stops everything started")
    p.add_argument("--profile", choices=["development", "production"],
                   help="development (default; $AETHER_PROFILE) or production: TLS, Kafka SASL_SSL, auth on, "
                        "JSON logs (docs/deploy.md)")
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

    p = sub.add_parser("slo", help="export the SLOs as OpenSLO v1, or import OpenSLO v1 documents",
                       description="OpenSLO v1 in and out (docs/openslo.md).")
    _slo_arguments(p)

    p = sub.add_parser("bench", help="run benchmarks (all, or the named ones) and rewrite BENCHMARKS.md",
                       description="Same as `python -m bench [names…]`; needs the stack (`aether stack up --services infra`).")
    p.add_argument("names", nargs="*", help="benchmark modules of bench/ (default: all)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.set_defaults(func=_bench)

    p = sub.add_parser("outbox", help="operate on the outbox (requeue dead-lettered events)")
    outbox = p.add_subparsers(dest="outbox_action", required=True)
    p = outbox.add_parser("requeue", help="give dead-lettered events a fresh set of relay attempts",
                          description="Run once the cause of the dead-lettering is fixed; the relay publishes "
                                      "them in order with their key's later events.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--event-id", action="append", metavar="UUID", help="an event to requeue (repeatable)")
    which.add_argument("--all", action="store_true", help="every dead-lettered event")
    p.set_defaults(func=_outbox)

    p = sub.add_parser("auth", help="manage API tokens (AETHER_AUTH_TOKEN_FILE holds only their hashes)")
    auth = p.add_subparsers(dest="auth_action", required=True)
    p = auth.add_parser("hash-token", help="print a token-file line for a new (or the given) token",
                        description="Append the printed line to the token file; the API re-reads it on change.")
    p.add_argument("tenant", help="the tenant UUID the token is bound to, or 'operator'")
    p.add_argument("--label", help="a name for logs, e.g. the client's")
    p.add_argument("--token", help="hash this token instead of generating one")
    p.set_defaults(func=_auth)
    return parser


def main(argv: list[str] | None = None) -> int:
    from aether_platform import logs

    args = build_parser().parse_args(argv)
    logs.configure(args.log_format)
    # The processes a command starts (the stack's API and Dagster, alembic) log the same way.
    os.environ["AETHER_LOG_FORMAT"] = args.log_format
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
