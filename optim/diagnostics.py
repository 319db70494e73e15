"""What an optimizer of this package reports about its steps: :class:`Diagnostics`.

``opt.diagnostics`` is a frozen snapshot, read from the search's state in the param groups when
asked for. Read it by attribute (``opt.diagnostics.step_size``); it is also a read-only mapping
(``dict(opt.diagnostics)``, ``opt.diagnostics["n_forwards"]``), which is what loggers iterate.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Diagnostics(Mapping[str, float]):
    """The counters and the step size that every optimizer of this package reports.

    Attributes:
        step_size: eta, the step size the last step moved with (a line search: the one it
            stored, where the next search starts from; NaN for L4 before its first step).
        loss: L0 of the last step, averaged over the ranks (NaN before the first step).
        n_steps: steps taken; skipped ones are not counted.
        n_forwards: loss evaluations: the first evaluation of every step plus every trial.
        n_backwards: backward passes (one per step: trials run without gradients).
        n_backtracks: rejected trials (eta multiplied by the backtracking factor).
        n_searches: searches run (the speed-up rule and the guards let steps go without one;
            L4 never searches).
        n_failed_searches: searches whose every trial was rejected.
        n_skipped: steps skipped with parameters unchanged: a non-finite L0, gradient or step.
    """

    step_size: float
    loss: float
    n_steps: int
    n_forwards: int
    n_backwards: int
    n_backtracks: int
    n_searches: int
    n_failed_searches: int
    n_skipped: int

    def __getitem__(self, key: str) -> float:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)


@dataclass(frozen=True)
class SearchDiagnostics(Diagnostics):
    """:class:`Diagnostics` of SaLSA and SLS, with the state of the test.

    Attributes:
        search_interval: the speed-up rule's interval: a search runs once the steps since the
            last one reach it.
        grad_term: the (smoothed) gradient term of the last test, :math:`\\bar G`.
        avg_decrease: the smoothed decrease :math:`\\bar D` (0 for the plain Armijo test).
    """

    search_interval: float
    grad_term: float
    avg_decrease: float


@dataclass(frozen=True)
class L4Diagnostics(Diagnostics):
    """:class:`Diagnostics` of L4, with its loss target.

    Attributes:
        min_loss: :math:`L_{\\min}`, relaxed for the next step (NaN before the first step).
    """

    min_loss: float
