"""How many torch threads to use: the cores that are actually free when a verb starts.

On a 2-core machine with another CPU-bound process, torch's default (one thread per core) makes its threads spin
against that process: the demo ran 9x slower instead of ~2-3x, with 4x the CPU-seconds. Sampling /proc/stat for a
moment tells how many cores other processes keep busy; we take the rest, at least one.
"""

from __future__ import annotations

import os
import time


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs from /proc/stat, or None where there is no /proc."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields[:8]]
    idle = values[3] + values[4]          # idle + iowait
    return sum(values) - idle, sum(values)


def busy_cores(sample_s: float = 0.25) -> float | None:
    """Cores kept busy by all processes during a short sample (None where it cannot be measured)."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(sample_s)
    second = _cpu_times()
    total = second[1] - first[1]
    if total <= 0:
        return None
    return (os.cpu_count() or 1) * (second[0] - first[0]) / total


def usable_cores() -> int:
    """CPUs this process may run on (affinity / cgroup-limited sets included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def free_threads(sample_s: float = 0.25) -> int:
    """Threads for torch: the usable cores not kept busy by other processes, at least 1."""
    cores = usable_cores()
    busy = busy_cores(sample_s)
    if busy is None:
        return cores
    return max(1, min(cores, round(cores - busy)))
