"""`python -m dashboards_py [build]`, `--check`, or `push --url … [--token …] [--folder-uid …]`."""
from __future__ import annotations

import argparse
import json
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Shared with `aether dashboards` in api/cli.py."""
    parser.add_argument("action", nargs="?", choices=["build", "check", "push"], default="build")
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed outputs are stale")
    parser.add_argument("--url", help="Grafana base URL (push; default: env GRAFANA_URL)")
    parser.add_argument("--token", help="service-account token, sent as Bearer (push; default: env GRAFANA_TOKEN)")
    parser.add_argument("--folder-uid", help="Grafana folder uid (push; default: General)")


def run(args: argparse.Namespace) -> int:
    from dashboards_py import build

    # Every option honoured or refused: the push options mean nothing to build or check.
    if args.check and args.action not in ("build", "check"):
        print(f"dashboards_py: --check cannot be combined with {args.action}", file=sys.stderr)
        return 2
    action = "check" if args.check else args.action
    given = [flag for flag, value in (("--url", args.url), ("--token", args.token), ("--folder-uid", args.folder_uid))
             if value is not None]
    if given and action != "push":
        print(f"dashboards_py: {', '.join(given)} only apply to push", file=sys.stderr)
        return 2
    if action == "check":
        problems = build.stale()
        for p in problems:
            print(f"dashboards_py: {p}", file=sys.stderr)
        if problems:
            print("dashboards_py: run `python -m dashboards_py` and commit dashboards_py/generated/", file=sys.stderr)
            return 1
        print("dashboards_py: generated outputs are up to date")
        return 0
    if action == "push":
        return _push(args)
    for path in build.write():
        print(f"wrote {path.relative_to(build.GENERATED.parent.parent)}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from dashboards_py import build
    from dashboards_py.push import PushError, push

    url = args.url or os.environ.get("GRAFANA_URL")
    if not url:
        print("dashboards_py push: --url (or GRAFANA_URL) is required", file=sys.stderr)
        return 2
    dashboard = json.loads(build.outputs()[build.DASHBOARD])
    try:
        answer = push(url, dashboard, token=args.token or os.environ.get("GRAFANA_TOKEN"),
                      folder_uid=args.folder_uid)
    except PushError as exc:
        print(f"dashboards_py push: {exc}", file=sys.stderr)
        return 1
    print(f"pushed {dashboard['uid']}: {answer.get('status', 'ok')} {answer.get('url', '')}".rstrip())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards_py", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
