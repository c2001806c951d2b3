"""make bench: run every benchmark module, then rewrite BENCHMARKS.md from their results."""
from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
import time
from pathlib import Path

from bench.report import RESULTS, machine

HERE = Path(__file__).resolve().parent
SKIP = {"__main__", "report"}
KEEP_MARKER = "<!-- make bench keeps what follows -->"


def modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name not in SKIP and not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    # `python -m bench soak --minutes 30`: options after the names go to the selected benchmarks.
    options = argv[next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv)):]
    selected = argv[:len(argv) - len(options)] or modules()
    failed = []
    for i, name in enumerate(selected, 1):
        print(f"[bench] ({i}/{len(selected)}) {name} …", flush=True)
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", f"bench.{name}", *options], cwd=HERE.parent)
        print(f"[bench] ({i}/{len(selected)}) {name} finished in {time.monotonic() - t0:.0f}s (exit {r.returncode})",
              flush=True)
        if r.returncode != 0:
            failed.append(name)
    write_markdown()
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def write_markdown() -> None:
    lines = ["# Benchmarks", "",
             "Written by `make bench`. Each figure comes with a baseline measured in the same run on the same",
             "machine, because a 2-core machine is noisy; the ratio is what to compare across runs.", "",
             f"Machine of the latest run: {machine()}", ""]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        lines += [f"## {data['title']}", "", f"Reproduce: `{data['command']}` (git {data['git']}; {data['machine']})", "",
                  "| figure | value | baseline | ratio | goal |", "|---|---|---|---|---|"]
        for f in data["figures"]:
            base = f"{f['baseline']:,.2f} ({f['baseline_name']})" if f["baseline"] is not None else "–"
            ratio = f"{f['ratio']:.3f}" if f["ratio"] is not None else "–"
            goal = f"{f['goal']}: {'met' if f['met'] else 'not met'}" if f["goal"] else "–"
            lines.append(f"| {f['name']} | {f['value']:,.2f} {f['unit']} | {base} | {ratio} | {goal} |")
        if data.get("notes"):
            lines += ["", data["notes"]]
        lines.append("")
    # Hand-written analysis below the marker (e.g. the outbox growth calculation) survives a rewrite.
    target = HERE.parent / "BENCHMARKS.md"
    kept = target.read_text().partition(KEEP_MARKER)[2] if target.exists() else ""
    target.write_text("\n".join(lines) + (KEEP_MARKER + kept if kept else ""))
    print(f"[bench] wrote {HERE.parent / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
