"""Process-wide settings a verb applies before its work starts (today: torch's CPU thread count)."""

from __future__ import annotations

import os

from .errors import DepthpruneError


def set_threads(threads: int | None) -> None:
    """Run torch on ``threads`` CPU threads; None leaves torch's own default.

    On a busy machine two threads were measured far slower than one (they wait on each other), so the count is a
    user choice. The inter-op pool can only be sized before torch first uses it, so it follows when that is still
    possible and is left alone otherwise.
    """
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise DepthpruneError(f"--threads must be a whole number of at least 1 (got {threads!r}); leave it out for "
                              "torch's default")
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:   # already sized, or parallel work has started: torch allows it only once, early
        pass


def set_default_threads(sample_s: float = 0.2) -> int | None:
    """When neither ``--threads`` nor ``OMP_NUM_THREADS`` chose, run torch on the cores other processes leave free.

    Beside one CPU-bound process on a 2-core machine, torch's default of one thread per core made its threads wait
    on each other and spin: bench/bench_threads.py measured the cost. Returns the count chosen, or None when the
    user's choice stands.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    from .threads import free_threads

    threads = free_threads(sample_s)
    set_threads(threads)
    return threads
