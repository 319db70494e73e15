"""The errors that end a run, and the exit status ``main.py`` gives each: one table.

=============================================  ==============  ==========================================
error                                          exit status     what was written
=============================================  ==============  ==========================================
:class:`ConfigError` (:class:`RunRefused`),     2 (BAD_INPUT)   nothing (a resume refused once its data was
``FileNotFoundError`` (missing data)                            built puts the record back as it was)
:class:`TrainingDiverged`                      3 (DIVERGED)    the record: ``failed``, ``diverged: true``
:class:`Interrupted` (a stop signal)           128 + signal    the record: ``interrupted`` or ``requeued``
anything else                                  1 (FAILED)      the record: ``failed``, with the error
=============================================  ==============  ==========================================

A multirun goes through all its runs and exits with 1 (FAILED) when any did not finish. This
module imports only the standard library: the run record, the sweep's supervisor and the scripts
name these errors without importing torch, Hydra or the optimizers.
"""

from __future__ import annotations

import signal

FAILED = 1
BAD_INPUT = 2
DIVERGED = 3


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what to do."""


class RunRefused(ConfigError):
    """The run directory's state forbids the run (another writer, a record it would overwrite or
    mix with); nothing was written."""


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class Interrupted(RuntimeError):
    """A stop signal ended the run (after writing a checkpoint, once training had begun)."""

    def __init__(self, message: str, signum: int = signal.SIGTERM) -> None:
        super().__init__(message)
        self.signum = signum
        self.requeued = False  # the run's SLURM job was put back into the queue (experiments/runner.py)

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by the signal: 143 for SIGTERM, 130 for SIGINT,
        129 for SIGHUP, 140 for SIGUSR2."""
        return 128 + self.signum


class RecordError(Exception):
    """Run records that cannot be read: the message says which and why."""


# The errors of a single run, in the order they are matched (a FileNotFoundError is an OSError).
EXIT_STATUS: tuple[tuple[tuple[type[BaseException], ...], int], ...] = (
    ((ConfigError, FileNotFoundError), BAD_INPUT),
    ((TrainingDiverged,), DIVERGED),
)


def exit_status(error: BaseException) -> int:
    """The exit status of a single run that ``error`` ended (see the module's table)."""
    if isinstance(error, Interrupted):
        return error.exit_code
    return next((status for kinds, status in EXIT_STATUS if isinstance(error, kinds)), FAILED)
