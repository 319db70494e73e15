"""One run directory, one writer; a refused run leaves no trace.

A process claims the directory it is about to write a run record into with an exclusive,
non-blocking ``flock`` on ``<run dir>/.lock``. The kernel drops the lock when the process ends,
however it ends, so a killed run never blocks its own resume; a second process (a second start,
a resume of a run that is still going, two default runs that landed in the same timestamped
folder) finds the lock taken and refuses at once, touching nothing. ``flock`` works on local
file systems and on NFS (Linux emulates it with NFS locks).

While it holds the claim, the process checks the directory against the run it was asked to do
(:func:`check_record`): a run directory is new, empty, or a record of this harness, and a resume
needs the recorded config to compare with. Only then does it clear what interrupted writes left
(:func:`clear_interrupted_writes`): before, the temporary files might be someone else's. If it
refuses or fails before writing anything, the claim is undone: the lock file goes if this process
made it, and the directory goes if this process (or Hydra, for it) made it and it is empty again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .checkpoint import remove_unfinished_writes
from .errors import RunRefused
from .files import TEMPORARY_SUFFIX, remove_temporary_files
from .record import CHECKPOINTS, CONFIG, HYDRA_FILES, METRICS, RUN_LOG, SUMMARY, list_checkpoints
from .resume import describe_changes, trajectory_changes

LOCK = ".lock"
# What a run directory of this harness holds besides the record's files (wandb's own folder).
_OURS = {SUMMARY, CONFIG, METRICS, CHECKPOINTS, HYDRA_FILES, "wandb", LOCK, RUN_LOG}
_CLAIM_TRIES = 5  # a lock file replaced under us (a refused run removing its own) is retried

@dataclass
class Claim:
    """This process's hold on a run directory."""

    run_dir: Path
    own_dir: bool  # this process made the directory: remove it if the run writes nothing
    own_lock: bool  # this process made the lock file
    fd: int
    kept: bool = False

    def keep(self) -> None:
        """The run is about to write its record: from now on the directory is never removed."""
        self.kept = True

    def _undo(self) -> None:
        if self.own_lock:
            (self.run_dir / LOCK).unlink(missing_ok=True)  # while still locked: see _lock
        if self.own_dir:
            with contextlib.suppress(OSError):  # not empty: something else lives there now
                self.run_dir.rmdir()


@contextlib.contextmanager
def claimed(run_dir: Path, own_dir: bool = False) -> Iterator[Claim]:
    """Hold ``run_dir`` for the body (see the module's docstring). ``own_dir``: the caller made
    the directory for this run (Hydra does, before the run starts); one that does not exist yet
    is made here and counts as such too."""
    own_dir = own_dir or not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, own_lock = _lock(run_dir)
    claim = Claim(run_dir, own_dir, own_lock, fd)
    try:
        yield claim
    except BaseException:
        if not claim.kept:
            claim._undo()
        raise
    finally:
        os.close(fd)  # releases the lock


def _lock(run_dir: Path) -> tuple[int, bool]:
    """An open descriptor of ``run_dir/.lock`` with the lock held, and whether it was made here."""
    path = run_dir / LOCK
    for _ in range(_CLAIM_TRIES):
        try:
            fd, made = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL), True
        except FileExistsError:
            try:
                fd, made = os.open(path, os.O_RDWR), False
            except FileNotFoundError:
                continue  # removed in between by a refused run that had made it
        except FileNotFoundError:
            run_dir.mkdir(parents=True, exist_ok=True)  # the directory went with that run
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunRefused(
                f"{run_dir} is being written by {holder}: one run directory has one writer. Wait "
                "for it to end (then resume with trainer.resume=true), or choose another hydra.run.dir"
            ) from None
        # A run that was refused unlinks the lock file it made while holding it; whoever opened
        # that file before holds a lock on a name that no longer exists, so check and try again.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            return fd, made
        os.close(fd)
    raise RunRefused(f"{run_dir}: its lock file keeps being replaced; is another process starting there?")


def made_for_this_process(run_dir: Path, since: float) -> bool:
    """Whether ``run_dir`` is an empty directory that appeared after ``since`` (a time stamp
    taken before Hydra made any directory): Hydra made it for this process. Checked before
    anything is written into it; an older or non-empty directory is someone else's."""
    try:
        empty = not any(run_dir.iterdir())
        return empty and run_dir.stat().st_ctime >= since
    except FileNotFoundError:
        return False


def remove_empty_parents(run_dir: Path, since: float) -> None:
    """After a refused run removed its directory, remove the parents made for it that are empty
    now (``outputs/<name>/`` of ``outputs/<name>/<time>/``), from the innermost up: only inside
    the working directory, only while empty, and only those changed after ``since`` (a time stamp
    taken before Hydra made any directory), so that nobody else's directory goes."""
    cwd = Path.cwd().resolve()
    for parent in run_dir.resolve().parents:
        if parent == cwd or cwd not in parent.parents:
            return
        try:
            if parent.stat().st_ctime < since:
                return
            parent.rmdir()  # fails on a directory that holds something: it stays, and so do its parents
        except OSError:
            return


def check_record(run_dir: Path, cfg: DictConfig) -> None:
    """Refuse a run that would overwrite or mix with what ``run_dir`` holds: files that are not a
    run record, a record a fresh run would overwrite, a record whose config is lost, or a resume
    whose config alters the recorded run's trajectory."""
    record = [name for name in (SUMMARY, CONFIG, METRICS) if (run_dir / name).exists()]
    if list_checkpoints(run_dir):
        record.append(CHECKPOINTS)
    foreign = sorted(path.name for path in run_dir.iterdir() if not _ours(path.name))
    if foreign and not record:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise RunRefused(
            f"{run_dir} holds files that are not a run record ({shown}): a run directory is new, "
            "empty or a record of this harness; choose another hydra.run.dir"
        )
    if not cfg.trainer.resume:
        if record:
            raise RunRefused(
                f"{run_dir} already holds a run record ({', '.join(record)}); pass trainer.resume=true "
                "to continue it, or choose another hydra.run.dir"
            )
        return
    if not ({METRICS, CHECKPOINTS} & set(record)):
        return  # no step to continue (at most a summary): the resume starts over at step 0
    changes = trajectory_changes(_recorded_config(run_dir), cfg)
    if changes:
        raise RunRefused(f"trainer.resume=true refused: {run_dir} {describe_changes(changes)}")


def _ours(name: str) -> bool:
    return name in _OURS or (name.startswith(".") and name.endswith(TEMPORARY_SUFFIX))


def _recorded_config(run_dir: Path) -> dict:
    """The config the record was made with: ``config.yaml``, or its second copy in ``.hydra/``;
    without either a resume cannot be checked, and is refused."""
    for path in (run_dir / CONFIG, run_dir / HYDRA_FILES / CONFIG):
        if not path.exists():
            continue
        try:
            recorded = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        except (OSError, ValueError, OmegaConfBaseException) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise RunRefused(f"trainer.resume=true refused: {path} does not read as a config ({reason}); "
                             "the record is left as it was") from error
        if isinstance(recorded, dict):
            return recorded
    raise RunRefused(
        f"trainer.resume=true refused: {run_dir} holds a record but neither {CONFIG} nor "
        f"{HYDRA_FILES}/{CONFIG}, so nothing says which run it is and a resume cannot be checked; "
        "put the run's config back, or start a new run in another directory"
    )


def clear_interrupted_writes(run_dir: Path) -> None:
    """Remove what interrupted writes left (temporary files, a digest without its checkpoint);
    call it once :func:`check_record` has found the directory to be this harness's."""
    remove_temporary_files(run_dir)
    remove_unfinished_writes(run_dir)


def refuse_unusable_checkpoints(run_dir: Path) -> None:
    """Called when no checkpoint loads: refuse when there were some (a resume from zero would cut
    the record of the steps they held), and say what to do."""
    found = list_checkpoints(run_dir)
    if found:
        raise RunRefused(
            f"trainer.resume=true refused: none of the {len(found)} checkpoints in "
            f"{run_dir / CHECKPOINTS} is usable (see the warnings above); the record is left as it "
            "was. Move that folder away to start the run over from step 0, or start a new run in "
            "another directory"
        )
