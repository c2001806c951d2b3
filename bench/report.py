"""What every benchmark writes: its figures, each with the baseline measured in the same run and
the ratio, plus the machine and the command to reproduce it, and every error it counted.

A goal is a bound on a figure's value or on its ratio to the baseline (at_most / at_least,
on="value" or "ratio"), so that `make bench` can judge it again on the median of its rounds
(bench/__main__.py). A run that counted any error (an HTTP status, a socket error, a timeout,
an exception, an event lost) meets no goal: a figure measured around failures flatters the code.

Where results go: $AETHER_BENCH_OUT if set (make bench gives each round its own directory, so
that nothing from an earlier run can be reported), else bench/results/."""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline_name: str | None = None
    baseline: float | None = None
    goal: str | None = None
    met: bool | None = None
    # The goal as a bound, judged by judge(): value (or ratio, with on="ratio") <= at_most / >= at_least.
    at_most: float | None = None
    at_least: float | None = None
    on: str = "value"

    def judge(self, value: float | None = None, ratio: float | None = None) -> bool | None:
        """Whether the bound holds for these figures (default: this figure's own); None when the
        figure has no bound. A missing or non-finite measurement never meets a goal."""
        if self.at_most is None and self.at_least is None:
            return self.met
        x = (self.ratio if ratio is None else ratio) if self.on == "ratio" else (self.value if value is None else value)
        if x is None or not math.isfinite(x):
            return False
        return (self.at_most is None or x <= self.at_most) and (self.at_least is None or x >= self.at_least)

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline


def machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem:.0f} GiB, {cpu}, {platform.system()} {platform.release()}"


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def git_dirty() -> list[str]:
    """Paths with uncommitted changes, outside what make bench itself writes: a report from a
    dirty tree did not measure the commit it names."""
    try:
        out = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout
    except OSError:
        return []
    paths = [line[3:] for line in out.splitlines() if line[3:]]
    return [p for p in paths if not (p.startswith("bench/results") or p == "BENCHMARKS.md")]


def results_dir() -> Path:
    return Path(os.environ.get("AETHER_BENCH_OUT") or RESULTS)


def emit(name: str, title: str, command: str, figures: list[Figure], notes: str = "",
         errors: dict[str, int] | None = None) -> None:
    """Print the figures and write <results dir>/<name>.json.

    `errors` counts every failure the run saw, by kind (e.g. {"non-202 answers": 0, "socket
    errors": 0}); any non-zero count fails every goal of the run."""
    errors = {k: int(v) for k, v in (errors or {}).items()}
    clean = not any(errors.values())
    for f in figures:
        if f.goal:
            judged = f.judge()
            f.met = bool(judged) and clean
    print(f"\n== {title}")
    if errors:
        print("  errors: " + ", ".join(f"{k} {v}" for k, v in errors.items()) + ("" if clean else "  (goals fail)"))
    for f in figures:
        line = f"  {f.name}: {f.value:,.2f} {f.unit}"
        if f.baseline is not None:
            ratio = "n/a" if f.ratio is None else f"{f.ratio:.3f}"
            line += f"   (baseline {f.baseline_name}: {f.baseline:,.2f}; ratio {ratio})"
        if f.goal:
            line += f"   goal {f.goal}: {'met' if f.met else 'NOT met'}"
        print(line)
    if notes:
        print(f"  note: {notes}")
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    data = {"name": name, "title": title, "command": command, "machine": machine(), "git": git_rev(),
            "dirty": git_dirty(), "notes": notes, "errors": errors,
            "figures": [{**asdict(f), "ratio": f.ratio} for f in figures]}
    (out / f"{name}.json").write_text(json.dumps(data, indent=2))


def progress(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def same_round(name: str) -> dict | None:
    """Another benchmark's result from this round (make bench runs api_write first), or None
    when this benchmark runs on its own."""
    path = results_dir() / f"{name}.json"
    if not os.environ.get("AETHER_BENCH_OUT") or not path.exists():
        return None
    return json.loads(path.read_text())


CAPACITY_FIGURE = "API throughput, 50 clients"


def load_rates(fixed: float = 500, fractions: tuple[float, ...] = (0.25,)) -> list[tuple[str, float, bool]]:
    """The offered rates a latency benchmark runs at: (label, events/s, judged against goals).

    Goals are judged at fractions of the API capacity measured in this round (api_write), so a
    slower machine is loaded as hard as a faster one; the fixed rate stays as an extra row, for
    comparison with older reports, never judged. AETHER_BENCH_API_CAPACITY (req/s) stands in
    for api_write when a benchmark runs on its own; without either, only the fixed rate runs,
    and it is judged."""
    capacity = None
    api = same_round("api_write")
    if api:
        capacity = next((f["value"] for f in api["figures"] if f["name"] == CAPACITY_FIGURE), None)
    if capacity is None and os.environ.get("AETHER_BENCH_API_CAPACITY"):
        capacity = float(os.environ["AETHER_BENCH_API_CAPACITY"])
    if not capacity or not math.isfinite(capacity):
        return [(f"{fixed:,.0f}/s", fixed, True)]
    # Labels name the fraction, not the rate: make bench matches figures by name across rounds.
    return [(f"{p * 100:.0f} % of API capacity", p * capacity, True) for p in fractions] + \
        [(f"fixed {fixed:,.0f}/s", fixed, False)]
