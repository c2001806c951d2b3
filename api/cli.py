"""`aether`: the project's one command-line entry point, a thin shell over the core.

It lives beside the API, not in `aether_platform/`, because the core imports no tooling. The
operational commands (`migrate`, `topic`, `outbox`, `auth`, `dashboards`) run anywhere the image
runs; the development ones (`stack`, `bench`) need a checkout, since `devstack/` and `bench/` are
not part of the production image. Run it as `aether …` or `python -m api.cli …`.

A command that fails on a common mistake (a server that is down, a bad argument, a missing file)
prints ONE line on stderr, saying what failed, the likely cause and what to run, and exits
non-zero. Commands raise; `main()` is the one place that turns known exception families into those
lines (`explain`), so no command needs its own try/except. `--debug` shows the traceback instead.
Destructive commands (`migrate down`, `outbox requeue --all`) need an explicit target or `--yes`.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger("aether")


class CliError(Exception):
    """A mistake the command detected itself; the message is the whole line shown to the user."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (argparse prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _uuid_arg(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a UUID (like 6f1c7a52-8d2e-4c1b-9a43-2f0d5e7b9c11)") from None


def _tenant_arg(value: str) -> str:
    from aether_platform.auth import OPERATOR

    return value if value == OPERATOR else _uuid_arg(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _database_url() -> str:
    try:
        from aether_platform.db_url import redact
        from aether_platform.settings import get_settings

        return redact(get_settings().database_url)
    except Exception:  # noqa: BLE001 - only decorates the message
        return "DATABASE_URL"


def _kafka_bootstrap() -> str:
    try:
        from aether_platform.settings import get_settings

        return get_settings().kafka_bootstrap_servers
    except Exception:  # noqa: BLE001 - only decorates the message
        return "KAFKA_BOOTSTRAP_SERVERS"


def explain(exc: BaseException) -> str | None:
    """The one line for a known failure, or None for an unexpected one."""
    if isinstance(exc, CliError):
        return str(exc)
    try:
        import pydantic

        if isinstance(exc, pydantic.ValidationError):
            bad = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            return f"invalid setting ({bad}); see docs/settings.md for each variable's type and default"
    except ImportError:
        pass
    try:
        import psycopg
        import sqlalchemy.exc

        cause = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None else exc
        if isinstance(cause, psycopg.OperationalError):
            return (f"cannot use PostgreSQL at {_database_url()}: {_first_line(cause)}. Is it running? "
                    "`make up` starts the local stack (`aether stack status` shows it); "
                    "or set DATABASE_URL to your server")
        if isinstance(cause, psycopg.errors.UndefinedTable):
            return (f"PostgreSQL at {_database_url()}: {_first_line(cause)}: the schema is missing or old; "
                    "run `aether migrate up`")
        if isinstance(cause, psycopg.Error):
            return f"PostgreSQL at {_database_url()} refused: {_first_line(cause)}"
    except ImportError:
        pass
    try:
        from confluent_kafka import KafkaException

        if isinstance(exc, KafkaException):
            err = exc.args[0] if exc.args else None
            what = err.str() if hasattr(err, "str") else _first_line(exc)
            return (f"cannot use Kafka at {_kafka_bootstrap()}: {what}. Is it running? "
                    "`make up` starts the local stack (`aether stack status` shows it); "
                    "or set KAFKA_BOOTSTRAP_SERVERS to your cluster")
    except ImportError:
        pass
    try:
        from alembic.util import CommandError

        if isinstance(exc, CommandError):
            return f"migration failed: {_first_line(exc)} (revisions: `.venv/bin/alembic history`)"
    except ImportError:
        pass
    import urllib.error

    if isinstance(exc, urllib.error.URLError):
        return f"cannot reach {getattr(exc, 'url', None) or 'the server'}: {exc.reason}. Is it running, and is the URL right?"
    if isinstance(exc, FileNotFoundError):
        return f"no such file: {exc.filename or _first_line(exc)}"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or _first_line(exc)}"
    if isinstance(exc, TimeoutError):
        return (f"timed out waiting for a server: {_first_line(exc)}. Is it running? "
                "`aether stack status` shows the local stack")
    if isinstance(exc, ConnectionError):
        return f"connection failed: {_first_line(exc)}. Is the server running? `aether stack status` shows the stack"
    return None


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
    if args.direction == "down" and not args.revision:
        if not args.yes:
            raise CliError("`aether migrate down` needs a target: --revision REV (e.g. -1, one step back), "
                           "or --yes to go down to base, which drops every table and its data")
        args.revision = "base"
    # In-process, so that --log-format covers alembic's lines too: migrations/env.py leaves logging
    # alone when AETHER_ALEMBIC_QUIET is set, and alembic's INFO lines (one per revision) go through ours.
    # Its plugin registry logs a line per plugin on import: not news to anyone.
    os.environ["AETHER_ALEMBIC_QUIET"] = "1"
    logging.getLogger("alembic.runtime.migration").setLevel(logging.INFO)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    from alembic import command
    from alembic.config import Config

    config = Config(str(REPO / "alembic.ini"))
    if args.direction == "up":
        command.upgrade(config, args.revision or "head")
    else:
        command.downgrade(config, args.revision)
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
        result = ensure_topic(kafka, spec, timeout=args.timeout)
        print(f"{spec.name}: {result.action}, {result.partitions} partitions")
    problems = drift(spec, describe_topic(kafka, spec.name, timeout=args.timeout))
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
    known = sorted(p.stem for p in (REPO / "bench").glob("*.py") if not p.stem.startswith("_") and p.stem != "report")
    if args.list:
        if args.names:
            print("aether bench: --list lists every benchmark; it takes no names", file=sys.stderr)
            return 2
        print("\n".join(known))
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:  # before running anything: a run rewrites BENCHMARKS.md
        raise CliError(f"no benchmark named {', '.join(unknown)}; `aether bench --list` lists them")
    return subprocess.call([sys.executable, "-m", "bench", *args.names], cwd=REPO)


def _outbox(args) -> int:
    import psycopg

    from aether_platform.db_url import libpq_url
    from aether_platform.relay import requeue
    from aether_platform.settings import get_settings

    if args.all and not args.yes:
        raise CliError("`aether outbox requeue --all` requeues every dead-lettered event: add --yes to confirm, "
                       "or name them with --event-id UUID")
    with psycopg.connect(libpq_url(get_settings().database_url), connect_timeout=10) as conn:
        count = requeue(conn, None if args.all else args.event_id)
    log.info("requeued %d dead-lettered event(s)", count)
    print(f"requeued {count}")
    return 0


def _auth(args) -> int:
    """Print a token-file line for a new token; the token itself is shown once and never stored."""
    import secrets

    from aether_platform.auth import hash_token

    token = args.token or secrets.token_urlsafe(32)
    print(f"{hash_token(token)} {args.tenant} {args.label or ''}".rstrip())
    if not args.token:
        print(f"# token (give it to the client; it is not stored anywhere): {token}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from aether_platform import logs

    parser = _Parser(prog="aether", description="Aether platform command line.")
    parser.add_argument("--debug", action="store_true", help="on failure, show the traceback, not just one line")
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
    p.add_argument("--revision", help="target revision (default: head for up; down needs one, e.g. -1)")
    p.add_argument("--yes", action="store_true", help="confirm `down` with no --revision: down to base, every table dropped")
    p.set_defaults(func=_migrate)

    p = sub.add_parser("topic", help="provision or check the Kafka topic against its declared spec")
    p.add_argument("action", choices=["provision", "check"])
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="give up on an unanswering Kafka after this long (default: 5)")
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
    which.add_argument("--event-id", action="append", metavar="UUID", type=_uuid_arg,
                       help="an event to requeue (repeatable)")
    which.add_argument("--all", action="store_true", help="every dead-lettered event (with --yes)")
    p.add_argument("--yes", action="store_true", help="confirm --all")
    p.set_defaults(func=_outbox)

    p = sub.add_parser("auth", help="manage API tokens (AETHER_AUTH_TOKEN_FILE holds only their hashes)")
    auth = p.add_subparsers(dest="auth_action", required=True)
    p = auth.add_parser("hash-token", help="print a token-file line for a new (or the given) token",
                        description="Append the printed line to the token file; the API re-reads it on change.")
    p.add_argument("tenant", type=_tenant_arg, help="the tenant UUID the token is bound to, or 'operator'")
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
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        hint = "; `make down` stops what has started" if args.command == "stack" else ""
        print(f"aether {args.command}: interrupted{hint}", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        line = explain(exc)
        if line is None:
            line = f"unexpected {type(exc).__name__}: {_first_line(exc)} (run again with --debug for the traceback)"
        print(f"aether {args.command}: {line}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
