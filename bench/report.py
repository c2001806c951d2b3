"""What every benchmark writes: its figures, each with the baseline measured in the same run and
the ratio, plus the machine and the command to reproduce it."""
from __future__ import annotations

import json
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


def emit(name: str, title: str, command: str, figures: list[Figure], notes: str = "") -> None:
    """Print the figures and write bench/results/<name>.json."""
    print(f"\n== {title}")
    for f in figures:
        line = f"  {f.name}: {f.value:,.2f} {f.unit}"
        if f.baseline is not None:
            line += f"   (baseline {f.baseline_name}: {f.baseline:,.2f}; ratio {f.ratio:.3f})"
        if f.goal:
            line += f"   goal {f.goal}: {'met' if f.met else 'NOT met'}"
        print(line)
    if notes:
        print(f"  note: {notes}")
    RESULTS.mkdir(exist_ok=True)
    data = {"name": name, "title": title, "command": command, "machine": machine(), "git": git_rev(),
            "notes": notes, "figures": [{**asdict(f), "ratio": f.ratio} for f in figures]}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))


def progress(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)
