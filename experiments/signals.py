"""The signals that stop a run, and what they do in each phase of it: never a silent death.

:func:`stop_signals` are SIGTERM (``kill``, a pre-emption, ``scancel``, ``scontrol requeue``), SIGINT
(Ctrl-C), SIGHUP (the terminal closed, an ssh connection dropped) and, under SLURM, SIGUSR2, the
warning ``sbatch --signal=USR2@<seconds>`` sends before the time limit. All of them stop a run the
same way; its exit status is 128 + the signal (143, 130, 129, 140).
While it trains, the trainer turns them into "checkpoint after this step and stop"
(:func:`stop_requested`). Before that (building the data and the model, loading a checkpoint) the
default action would end the process on the spot and leave the record's summary at ``running``;
:func:`stop_signals_raise` makes them an exception there instead (:class:`experiments.errors.Interrupted`),
which the runner records. While
the final summary is written, :func:`stop_signals_ignored` lets nothing cut it short.

Signal handlers belong to the main thread: elsewhere (a run started from a worker thread) all
three are no-ops and the signals keep whatever handling the process has.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .slurm import TIME_LIMIT_SIGNAL, SlurmJob

# SIGINT and SIGHUP would otherwise end the process at once (a KeyboardInterrupt traceback, or
# death without a word) and leave the record's summary at ``running``.
_ALWAYS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop a run: SIGTERM, SIGINT, SIGHUP, and under SLURM the time limit's
    SIGUSR2."""
    return (*_ALWAYS, TIME_LIMIT_SIGNAL) if SlurmJob.current() else _ALWAYS


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


@contextlib.contextmanager
def on_stop_signals(callback: Callable[[int], None]) -> Iterator[None]:
    """Within the body, a stop signal calls ``callback(signum)`` and nothing else."""
    with _handling(lambda signum, frame: callback(signum)):
        yield


@dataclass
class StopRequest:
    """The first stop signal received (0: none yet)."""

    signum: int = 0

    def note(self, signum: int) -> None:
        self.signum = self.signum or signum


@contextlib.contextmanager
def stop_requested() -> Iterator[StopRequest]:
    """Within the body, a stop signal is only noted in the :class:`StopRequest` yielded, for the
    body to act on when it can (the trainer: after the step in progress)."""
    request = StopRequest()
    with on_stop_signals(request.note):
        yield request


@contextlib.contextmanager
def stop_signals_raise(exception: Callable[[int], BaseException]) -> Iterator[None]:
    """Within the body, a stop signal raises ``exception(signum)`` wherever the main thread is."""

    def handler(signum: int, frame: Any) -> None:
        raise exception(signum)

    with _handling(handler):
        yield


@contextlib.contextmanager
def stop_signals_ignored() -> Iterator[None]:
    """Within the body, the stop signals are ignored."""
    with _handling(signal.SIG_IGN):
        yield


@contextlib.contextmanager
def _handling(handler: Any) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in stop_signals()}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
