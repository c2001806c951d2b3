"""`aether slo export [--out FILE]` and `aether slo import FILE [--rules-out FILE]`: the SLO spec as
OpenSLO v1 documents, and OpenSLO v1 documents into the spec the generator reads (the mapping is
aether_platform/openslo.py; what is accepted and refused: docs/openslo.md)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="slo_action", required=True)
    p = sub.add_parser("export", help="write the SLOs as OpenSLO v1 YAML documents (stdout by default)")
    p.add_argument("--out", type=Path, help="write to this file instead of stdout")
    p = sub.add_parser("import", help="read OpenSLO v1 documents, validate them, and generate Prometheus rules")
    p.add_argument("file", type=Path, help="a YAML file of OpenSLO v1 documents")
    p.add_argument("--rules-out", type=Path, help="write the Prometheus rules generated from FILE here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aether_platform import openslo

    if args.slo_action == "export":
        text = openslo.to_yaml(openslo.export_documents())
        if args.out:
            try:
                args.out.write_text(text)
            except OSError as exc:
                print(f"aether slo export: {args.out}: {exc.strerror}", file=sys.stderr)
                return 1
            print(f"wrote {args.out}")
        else:
            sys.stdout.write(text)
        return 0
    try:
        imported = openslo.read_file(args.file)
    except openslo.OpenSLOError as exc:
        print(f"aether slo import: {exc}", file=sys.stderr)
        return 1
    for s in imported.slos:
        print(f"{s.id} {s.slug}: objective {s.objective:g}, team {s.team}")
    print(f"burn tiers: {', '.join(f'{t.alert} {t.factor:g}x {t.long_window}/{t.short_window}' for t in imported.tiers)}")
    if args.rules_out:
        from dashboards_py import build, rules
        try:
            args.rules_out.write_text(build.yaml_text(rules.rule_groups(imported.slos, imported.tiers)))
        except OSError as exc:
            print(f"aether slo import: {args.rules_out}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"wrote {args.rules_out}")
    return 0
