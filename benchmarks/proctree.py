"""CPU time and peak memory of a command and every process below it (a local Ray's GCS, raylet, workers), from /proc.

Used by ``pipeline_overhead.py`` and ``million.py``: run ``command`` as a child, and every ``interval`` seconds
find the processes descended from it (by parent pid) and read each one's ``utime + stime`` and ``RssAnon``
(private memory: the object store's shared pages are not in it). A process's CPU is its last sample, so a
process's last < ``interval`` s before it exits is missed (Ray's shutdown, mostly), for the command
itself too (a ``wait4`` of it would also count the Ray processes it reaped, twice).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    title: str
    cpu_s: float = 0.0
    peak_anon_mib: float = 0.0


@dataclass
class TreeUsage:
    wall_s: float
    returncode: int
    root_cpu_s: float
    root_peak_anon_mib: float
    procs: dict[tuple[int, int], Proc] = field(default_factory=dict)
    """(pid, start time) -> what was seen of it; the root is not in it."""

    @property
    def cpu_s(self) -> float:
        return self.root_cpu_s + sum(p.cpu_s for p in self.procs.values())

    def by_kind(self) -> dict[str, dict[str, float]]:
        """CPU seconds and peak private MiB per kind: Ray workers (``ray::...`` titles), others by name."""
        kinds: dict[str, dict[str, float]] = {}
        for p in self.procs.values():
            kind = "ray workers" if p.title.startswith("ray::") else os.path.basename(p.title.split()[0]) if p.title else "?"
            k = kinds.setdefault(kind, {"processes": 0, "cpu_s": 0.0, "peak_anon_mib": 0.0})
            k["processes"] += 1
            k["cpu_s"] = round(k["cpu_s"] + p.cpu_s, 2)
            k["peak_anon_mib"] = round(max(k["peak_anon_mib"], p.peak_anon_mib), 1)
        return kinds


def _stat(pid: int) -> tuple[int, int, float] | None:
    """(ppid, start time, CPU seconds) of ``pid``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / TICKS


def _anon_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def run_measured(command: list[str], interval: float = 0.5, **popen) -> TreeUsage:
    """Run ``command`` to its end, sampling its process tree; the usage of the whole tree."""
    started = time.perf_counter()
    child = subprocess.Popen(command, **popen)
    seen: dict[tuple[int, int], Proc] = {}
    root = Proc("root")
    while child.poll() is None:
        stats = {}
        for name in os.listdir("/proc"):
            if name.isdigit() and (s := _stat(int(name))) is not None:
                stats[int(name)] = s
        if child.pid in stats:
            root.cpu_s = max(root.cpu_s, stats[child.pid][2])
            root.peak_anon_mib = max(root.peak_anon_mib, _anon_mib(child.pid))
        below, frontier = set(), {child.pid}
        while frontier:
            frontier = {pid for pid, (ppid, _, _) in stats.items() if ppid in frontier and pid not in below}
            below |= frontier
        for pid in below:
            _, start, cpu = stats[pid]
            p = seen.setdefault((pid, start), Proc(""))
            p.cpu_s = max(p.cpu_s, cpu)
            p.peak_anon_mib = max(p.peak_anon_mib, _anon_mib(pid))
            title = _title(pid)
            if title and (not p.title or not title.startswith("ray::IDLE")):
                p.title = title
        time.sleep(interval)
    return TreeUsage(time.perf_counter() - started, child.returncode, root.cpu_s, root.peak_anon_mib, seen)
