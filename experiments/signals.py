"""SIGTERM outside the training loop: recorded, never a silent death.

While it trains, the trainer turns SIGTERM into "checkpoint after this step and stop". Before
that (building the data and the model, loading a checkpoint) the default action would end the
process on the spot and leave the record's summary at ``running``; :func:`sigterm_raises` makes
the signal an exception there instead, which the runner records as ``interrupted``. While the
final summary is written, :func:`sigterm_ignored` lets nothing cut it short.

Signal handlers belong to the main thread: elsewhere (a run started from a worker thread) both
are no-ops and SIGTERM keeps whatever handling the process has.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def sigterm_raises(exception: Callable[[], BaseException]) -> Iterator[None]:
    """Within the body, SIGTERM raises ``exception()`` wherever the main thread is."""

    def handler(signum: int, frame: Any) -> None:
        raise exception()

    with _sigterm_handler(handler):
        yield


@contextlib.contextmanager
def sigterm_ignored() -> Iterator[None]:
    """Within the body, SIGTERM is ignored."""
    with _sigterm_handler(signal.SIG_IGN):
        yield


@contextlib.contextmanager
def _sigterm_handler(handler: Any) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
