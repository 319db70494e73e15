"""Where a run's wall time goes: the loop's phases, summed across resumes."""

from __future__ import annotations

import time


class Stopwatch:
    """Adds the wall time since the last lap to the phase each lap names, in ``totals``
    (``TrainState.timing``: data, step, bookkeeping, eval)."""

    def __init__(self, totals: dict[str, float]) -> None:
        self.totals = totals
        self._mark = time.perf_counter()

    def lap(self, phase: str) -> float:
        """The seconds since the last lap, added to ``phase``."""
        now = time.perf_counter()
        seconds, self._mark = now - self._mark, now
        self.totals[phase] += seconds
        return seconds
