"""Whether a CPU run was far slower than its model and data need, and what would have helped.

On a machine whose few cores are busy with other work, torch's threads wait for each other: the
default run took 42.6 s with two threads and 2.1 s with one on a loaded 2-core machine, and
nothing in its record said so. After a CPU run long enough to matter, the runner times one forward
and backward of the trained model on a training batch with the run's thread count and with the
other sensible one (1, or every core when the run used 1), and compares the run's own time per
step with what a step needs at the faster count. A run whose steps took ``FAR`` times longer gets
a note in its summary, which ``main.py`` prints.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence

import torch

MIN_TRAIN_SECONDS = 10.0  # shorter runs lose too little to be worth the probe's time
MAX_PROBE_SECONDS = 1.0  # a step slower than this (a large model) is not probed: it would cost too much
FAR = 3.0  # steps this many times what they need are "far slower"
REPEATS = 5


def available_cores() -> int:
    """The cores this process may run on (its affinity, which a SLURM job or taskset narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def other_thread_count(used: int, cores: int) -> int | None:
    """The thread count to compare with: 1 after a run with more, every core after a run with 1
    (None on a single core: there is nothing to compare)."""
    if used > 1:
        return 1
    return cores if cores > 1 else None


def _time_once(work: Callable[[], object], threads: int) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        work()
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)


def probe(work: Callable[[], object], thread_counts: Sequence[int], repeats: int = REPEATS) -> dict[int, float]:
    """The median time of ``work`` at each thread count. The counts take turns, so that a change in
    the machine's load reaches all of them; the median, not the best, because threads that wait for
    each other are slow most of the time, not every time."""
    times: dict[int, list[float]] = {threads: [] for threads in thread_counts}
    for _ in range(repeats):
        for threads in thread_counts:
            times[threads].append(_time_once(work, threads))
    return {threads: statistics.median(seconds) for threads, seconds in times.items()}


def slowness_note(step_seconds: float, forwards_per_step: float, timings: dict[int, float],
                  used: int) -> str | None:
    """A note when ``step_seconds`` (the run's mean time per step) is ``FAR`` times what a step
    needs, else None. A step needs at most a forward and backward per forward it made (the trials
    of a line search are forwards alone, so this overstates the need: no false alarms from it)."""
    fastest = min(timings, key=timings.__getitem__)
    need = timings[fastest] * max(forwards_per_step, 1.0)
    if step_seconds < FAR * need:
        return None
    measured = ", ".join(f"{1e3 * timings[t]:.3g} ms with {t} thread{'s' * (t > 1)}" for t in sorted(timings))
    advice = (f"trainer.threads={fastest} would have been faster" if fastest != used
              else "other work kept the cores busy")
    return (f"this run was slow: {1e3 * step_seconds:.3g} ms a step, {step_seconds / need:.0f}x the "
            f"{1e3 * need:.3g} ms its model and data need here (a forward and backward: {measured}); {advice}")


def check(work: Callable[[], object], *, train_seconds: float, steps: int, forwards: int,
          used: int | None = None, cores: int | None = None) -> tuple[dict[int, float], str | None] | None:
    """Probe ``work`` (one forward and backward) after a run of ``steps`` steps and ``forwards``
    forwards that trained for ``train_seconds``: the timings per thread count and the note (None
    when the run was not far slower). None when the run is too short or its step too long to probe,
    or there is no other thread count to try."""
    used = torch.get_num_threads() if used is None else used
    other = other_thread_count(used, available_cores() if cores is None else cores)
    if other is None or steps == 0 or train_seconds < MIN_TRAIN_SECONDS:
        return None
    step_seconds = train_seconds / steps
    if step_seconds > MAX_PROBE_SECONDS:
        return None
    timings = probe(work, (used, other))
    return timings, slowness_note(step_seconds, forwards / steps, timings, used)
