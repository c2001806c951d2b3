"""make bench: run every benchmark module in AETHER_BENCH_REPEATS interleaved rounds (default 3),
then rewrite BENCHMARKS.md from this run's results only.

Why rounds, interleaved: a shared 2-core machine drifts by 20-30 % within minutes, so one run of
a benchmark measures the minute as much as the code. Every benchmark runs once per round, in
turn, so a slow spell lands on one round of several benchmarks rather than on every run of one.
The report gives each figure's median and range (min–max) over the rounds, and a goal counts as
met on the median only, and only if no round counted an error.

Why only this run: each round writes into its own fresh directory under bench/results/run-*/,
and the report reads exactly those. A benchmark that failed in this run shows as failed; a result
from an older commit can never be merged in. The report names the commit, and flags a dirty tree.

Usage: python -m bench [module ...] [--options for them]   (default: every module in bench/)
Hand-written text below KEEP_MARKER in BENCHMARKS.md survives a rewrite.
"""
from __future__ import annotations

import json
import math
import os
import pkgutil
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.report import RESULTS, Figure, git_dirty, git_rev, machine

HERE = Path(__file__).resolve().parent
SKIP = {"__main__", "report"}
REPEATS = int(os.environ.get("AETHER_BENCH_REPEATS", 3))
KEEP_MARKER = "<!-- make bench keeps what follows -->"


def modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name not in SKIP and not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    # `python -m bench soak --minutes 30`: options after the names go to the selected benchmarks.
    options = argv[next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv)):]
    selected = argv[:len(argv) - len(options)] or modules()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = RESULTS / f"run-{stamp}"
    # Earlier runs' directories are removed, so nothing but this run can ever be read.
    if RESULTS.exists():
        for old in RESULTS.glob("run-*"):
            shutil.rmtree(old, ignore_errors=True)
    failed: dict[str, list[int]] = {}
    for r in range(1, REPEATS + 1):
        out = run_dir / f"round-{r}"
        out.mkdir(parents=True)
        for i, name in enumerate(selected, 1):
            tag = f"round {r}/{REPEATS}, ({i}/{len(selected)}) {name}"
            print(f"[bench] {tag} …", flush=True)
            t0 = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", f"bench.{name}", *options], cwd=HERE.parent,
                                  env={**os.environ, "AETHER_BENCH_OUT": str(out)})
            print(f"[bench] {tag} finished in {time.monotonic() - t0:.0f}s (exit {proc.returncode})", flush=True)
            if proc.returncode != 0 or not (out / f"{name}.json").exists():
                failed.setdefault(name, []).append(r)
    write_markdown(run_dir, selected, failed)
    if failed:
        print("[bench] failed: " + ", ".join(f"{n} (rounds {', '.join(map(str, rs))})" for n, rs in failed.items()),
              file=sys.stderr)
    return 1 if failed else 0


def median_and_range(values: list[float]) -> tuple[float, float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(finite) < len(values) or not finite:
        # A round without a measurement (NaN: nothing arrived) makes the figure unmeasured.
        return float("nan"), float("nan"), float("nan")
    return statistics.median(finite), min(finite), max(finite)


def aggregate(rounds: list[dict]) -> list[dict]:
    """One row per figure name (in the first round's order): medians, ranges, and the goal
    judged again on the medians, failed if any round counted an error."""
    errors_total = sum(sum(r.get("errors", {}).values()) for r in rounds)
    rows = []
    for f0 in rounds[0]["figures"]:
        per = [next((f for f in r["figures"] if f["name"] == f0["name"]), None) for r in rounds]
        per = [f for f in per if f is not None]
        value = median_and_range([f["value"] for f in per])
        base = [f["baseline"] for f in per]
        baseline = median_and_range(base) if all(b is not None for b in base) else None
        ratio_values = [f["ratio"] for f in per]
        ratio = median_and_range(ratio_values) if all(x is not None for x in ratio_values) else None
        fig = Figure(**{k: f0[k] for k in ("name", "unit", "baseline_name", "goal", "at_most", "at_least", "on")},
                     value=value[0])
        met = None
        if f0["goal"]:
            if fig.at_most is None and fig.at_least is None:
                # A goal without a bound: met on the majority of rounds (the median of booleans).
                met = sum(bool(f["met"]) for f in per) * 2 > len(rounds)
            else:
                met = bool(fig.judge(value=value[0], ratio=ratio[0] if ratio else None))
            met = met and errors_total == 0 and len(per) == len(rounds)
        rows.append({"name": f0["name"], "unit": f0["unit"], "value": value, "baseline_name": f0["baseline_name"],
                     "baseline": baseline, "ratio": ratio, "goal": f0["goal"], "met": met})
    return rows


def fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:,.{digits}f}"


def fmt_range(t: tuple[float, float, float] | None, digits: int = 2) -> str:
    if t is None:
        return "–"
    med, lo, hi = t
    return f"{fmt(med, digits)} ({fmt(lo, digits)}–{fmt(hi, digits)})" if lo != hi else fmt(med, digits)


def write_markdown(run_dir: Path, selected: list[str], failed: dict[str, list[int]]) -> None:
    dirty = git_dirty()
    lines = ["# Benchmarks", "",
             f"Written by `make bench` in one run at git {git_rev()}"
             + (f" **with uncommitted changes** ({', '.join(dirty[:8])}{' …' if len(dirty) > 8 else ''})" if dirty else "")
             + f", {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, on {machine()}.", "",
             f"Each benchmark ran {REPEATS} times, in interleaved rounds. Every figure is the median of the rounds, "
             "with their range (min–max) in brackets; a baseline is measured in the same round on the same machine, "
             "and the ratio is the median of the rounds' ratios. A goal is met on the median only, and only if no "
             "round counted an error (HTTP status, socket error, timeout, exception, event lost). Load is given as "
             "a fraction of the capacity measured in the same round, so that goals compare code, not machines.", ""]
    for name in selected:
        rounds = []
        for r in range(1, REPEATS + 1):
            path = run_dir / f"round-{r}" / f"{name}.json"
            if path.exists():
                rounds.append(json.loads(path.read_text()))
        if not rounds:
            lines += [f"## {name}", "", f"**Failed in every round: no result.** Reproduce: `python -m bench {name}`.", ""]
            continue
        last = rounds[-1]
        lines += [f"## {last['title']}", "", f"Reproduce: `{last['command']}`", ""]
        if name in failed:
            lines += [f"**Failed in round(s) {', '.join(map(str, failed[name]))}**: "
                      f"{len(rounds)} of {REPEATS} rounds reported; no goal is met.", ""]
        errors: dict[str, int] = {}
        for r in rounds:
            for k, v in r.get("errors", {}).items():
                errors[k] = errors.get(k, 0) + v
        lines += ["| figure | median (range) | baseline | ratio | goal |", "|---|---|---|---|---|"]
        for row in aggregate(rounds):
            base = f"{fmt_range(row['baseline'])} ({row['baseline_name']})" if row["baseline"] else "–"
            ratio = fmt_range(row["ratio"], 3)
            goal = "–"
            if row["goal"]:
                goal = f"{row['goal']}: {'met' if row['met'] and name not in failed else 'not met'}"
            lines.append(f"| {row['name']} | {fmt_range(row['value'])} {row['unit']} | {base} | {ratio} | {goal} |")
        if errors:
            lines += ["", "Errors over all rounds: " + ", ".join(f"{k}: {v:,}" for k, v in errors.items()) + "."]
        if last.get("notes"):
            lines += ["", f"Last round: {last['notes']}"]
        lines.append("")
    # Hand-written analysis below the marker (e.g. the outbox growth calculation) survives a rewrite.
    target = HERE.parent / "BENCHMARKS.md"
    kept = target.read_text().partition(KEEP_MARKER)[2] if target.exists() else ""
    target.write_text("\n".join(lines) + (KEEP_MARKER + kept if kept else ""))
    print(f"[bench] wrote {target} from {run_dir}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
