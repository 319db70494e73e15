"""Writing the files of a run record so that no failure leaves half of one.

Every file is written to a temporary sibling (``.<name>.tmp``), flushed to the disk and renamed
into place: readers see the old version or the new one, never a torn one. A write that fails (a
full disk, a signal) removes its temporary file; one that a killed process left behind is removed
by :func:`remove_temporary_files` when the next process claims the directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMPORARY_SUFFIX = ".tmp"


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMPORARY_SUFFIX}")


def write_with(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file and rename it to ``path`` once it is on the disk."""
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers never see a
    half-written file, and a crash leaves the previous version."""
    write_with(path, lambda f: f.write(text.encode()))


def overwrite_in_place(path: Path, text: str) -> bool:
    """Replace the content of the existing file ``path`` with ``text`` without allocating space:
    the last resort when the disk is full. Only done when ``text`` fits in the file's current
    size; returns whether it was."""
    data = text.encode()
    try:
        if len(data) > path.stat().st_size:
            return False
        with open(path, "r+b") as f:
            f.write(data)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        return False
    return True


def remove_temporary_files(folder: Path) -> list[Path]:
    """Delete the temporary files that interrupted writes left in ``folder``; returns them.
    Call it only while holding the folder's claim: another writer's files look the same."""
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(TEMPORARY_SUFFIX)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
