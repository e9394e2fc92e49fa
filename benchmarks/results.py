"""Writes one benchmark's figures into its own section of benchmarks/RESULTS.md,
stamped with the machine and time, leaving the other sections as they are; and its ratios
against peers run in the same process (or back to back on the same input) into the table
RESULTS.md leads with (kept in ratios.json beside it: each benchmark's last RUNS_KEPT runs, so a
figure measured twice shows both runs and their loads).

A section's hand-written findings survive its rewrite: text between `<!-- NAME:notes:start -->`
and `<!-- NAME:notes:end -->` inside section NAME is carried into the new section, after the new
figures (the ratio table's section is named "ratios")."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
RATIOS = Path(__file__).with_name("ratios.json")
HEADER = "# Benchmark results\n\nEach section is rewritten by its benchmark (`python -m benchmarks.NAME`).\n"
RUNS_KEPT = 2
RATIO_INTRO = """\
Absolute figures depend on the machine (the same code took 2.5x the CPU time on an AMD EPYC as on an
Intel Xeon, both 2 cores); a ratio against a peer doing the same work in the same run does not, so
this table leads. CPU-seconds are `time.process_time()` / `getrusage` (all threads, user + system);
"x" below is the peer's CPU-seconds over ours for the same work (higher: we use less CPU)."""


@dataclass(frozen=True)
class Ratio:
    """One comparison against a peer on the same input in the same run."""

    ours: str  # what we measured, e.g. "batch scoring, LSTM"
    peer: str  # what it was compared with
    ours_figure: str  # e.g. "212,000 sessions/CPU-s"
    peer_figure: str
    ratio: float  # peer CPU-seconds / ours for the same work: > 1 means we use less CPU
    target: float | None = None  # the least ratio we aim for


class CpuClock:
    """Wall and CPU seconds (all threads of this process, user + system) since it was made."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def elapsed(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def load_average() -> float:
    """The 1-minute load average: on a shared 2-core machine, anything above ~2 slows wall times."""
    return os.getloadavg()[0]


def machine() -> str:
    """One line naming the machine: CPU model, cores, memory, GPU if torch sees one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GiB RAM{gpu}, Python {platform.python_version()}"


def record(name: str, body: str, ratios: list[Ratio] | None = None, *, quick: bool = False) -> None:
    """Replace section `name` of RESULTS.md with `body` (markdown), stamped with machine and date,
    and, when `ratios` are given, this benchmark's rows of the leading ratio table. A --quick run
    (reduced scale) writes to RESULTS-quick.md instead, so the full-scale figures stay."""
    results = RESULTS.with_name("RESULTS-quick.md") if quick else RESULTS
    text = results.read_text() if results.exists() else HEADER
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if ratios is not None:
        text = _with_ratios(text, name, ratios, stamp, results.with_suffix(".ratios.json") if quick else RATIOS)
    text = _replace_section(text, name, f"## {name}\n\n_Run {stamp} on {machine()}._\n\n{body.strip()}")
    results.write_text(text)


def _replace_section(text: str, name: str, content: str, *, first: bool = False) -> str:
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    old = pattern.search(text)
    notes = (
        re.search(rf"<!-- {re.escape(name)}:notes:start -->.*?<!-- {re.escape(name)}:notes:end -->", old.group(0), re.S)
        if old
        else None
    )
    if notes:
        content = f"{content.strip()}\n\n{notes.group(0)}"
    section = f"<!-- {name}:start -->\n{content.strip()}\n<!-- {name}:end -->"
    if old:
        return pattern.sub(lambda _: section, text)
    if first:  # right after the header
        return text.replace(HEADER, f"{HEADER}\n{section}\n", 1) if HEADER in text else f"{section}\n\n{text}"
    return f"{text.rstrip()}\n\n{section}\n"


def _with_ratios(text: str, name: str, ratios: list[Ratio], stamp: str, store: Path) -> str:
    table = json.loads(store.read_text()) if store.exists() else {}
    run = {"stamp": stamp, "machine": machine(), "load": round(load_average(), 1), "rows": [asdict(r) for r in ratios]}
    table[name] = [run, *_as_runs(table.get(name, []))][:RUNS_KEPT]  # newest first
    store.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    lines = [
        "## Ratios against peers (same run, same input)",
        "",
        RATIO_INTRO,
        "",
        "| benchmark | ours | peer | ours | peer | x (peer CPU / ours) | target | run (1-min load) |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    runs = [(bench, entry) for bench, entries in table.items() for entry in _as_runs(entries)]
    for bench, entry in runs:
        for row in entry["rows"]:
            target = row["target"]
            verdict = "" if target is None else f"{target:g}x: {'met' if row['ratio'] >= target else 'NOT met'}"
            lines.append(
                f"| {bench} | {row['ours']} | {row['peer']} | {row['ours_figure']} | {row['peer_figure']} "
                f"| **{row['ratio']:.2f}x** | {verdict} | {entry['stamp']} ({entry['load']}) |"
            )
    machines = sorted({entry["machine"] for _, entry in runs})
    lines += ["", "Machines: " + "; ".join(machines) + "."]
    return _replace_section(text, "ratios", "\n".join(lines), first=True)


def _as_runs(entries: list[dict] | dict) -> list[dict]:
    """A benchmark's runs in ratios.json, newest first (a single dict: one run, as once stored)."""
    return entries if isinstance(entries, list) else [entries]


def peak_rss_gb() -> float:
    """Peak resident memory of this process and its finished children, GiB."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 2**20
