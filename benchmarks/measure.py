"""Timing and memory: interleaved repetitions, and peak RSS of one run in a fresh process.

``tracemalloc`` does not see torch's allocations, so memory is the process's peak resident set.
The peak is reset right before the measured run by writing ``5`` to ``/proc/self/clear_refs``
(Linux) and read back as ``VmHWM`` from ``/proc/self/status``, so it covers the run only, not
the imports and the model construction. ``getrusage``'s ``ru_maxrss`` is only the fallback: a
child process inherits its parent's peak through ``fork``/``exec``, and the reset does not
lower it.
"""

import gc
import resource
import statistics
import time
from collections.abc import Callable


def interleaved_times(
    runs: dict[str, Callable[[], object]], repeats: int
) -> dict[str, list[float]]:
    """Wall-clock seconds of each callable, ``repeats`` times, the order reversed every round.

    Alternating the order (A B, B A, ...) spreads a drifting machine load (another job on a
    shared machine) evenly over the contenders.
    """
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            gc.collect()
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    """The median (the statistic every table reports)."""
    return statistics.median(values)


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS to its current RSS; ``False`` where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def current_rss() -> int:
    """Resident set size now, in bytes (``/proc/self/statm``)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """Peak resident set size since the start (or the last reset), in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
