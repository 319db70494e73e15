"""The CPU kernels of :mod:`optim._fused`: ``csrc/fused_search.cpp``, compiled on first use.

Why a C++ extension: the passes are bound by memory bandwidth, and only code that does a step's
arithmetic in one loop over each tensor gets near fused Adam (torch.compile of the same maths
came within 12-20 % and costs ~44 s of compilation in every new process; foreach ops cost ~40 %).
The source ships in the package and is built with ``torch.utils.cpp_extension.load`` (-O3, no
-march=native: the source multi-versions itself for AVX2 and AVX-512, so one build serves every
x86-64 node of a cluster sharing a home directory). It takes about 20-50 s once per machine.

The build lands in ``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) under a name
that hashes the source, the flags and the versions of torch and Python, so a build is never
loaded by a torch it was not built for, and a later process loads it in milliseconds without
calling the compiler or ninja. Processes that start together (DDP ranks, pytest workers) build it
once: they queue on an advisory lock (``fcntl.flock``, which the kernel releases if its holder
dies), and a build counts only once its marker file is written after it loaded, so a build
killed half-way is redone rather than loaded.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal

import torch
from torch import Tensor

SOURCE = Path(__file__).parent / "csrc" / "fused_search.cpp"
# -fno-math-errno lets sqrt vectorise (nothing reads errno); no -ffast-math, which would reorder
# the sums and change how NaN and inf propagate.
CFLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math") if os.name != "nt" else ("/O2",)
logger = logging.getLogger(__name__)
_DOTS = {("grad", "grad"): 1, ("grad", "exp_avg"): 2, ("exp_avg", "grad"): 2, ("exp_avg", "exp_avg"): 3}


@dataclass(frozen=True)
class Build:
    """The loaded extension: where its library is, and what loading it cost in this process."""

    module: ModuleType
    library: Path
    compiled: bool  # built by this process (else loaded from an earlier build)
    seconds: float  # to build (or wait for another process's build) and load


def ready() -> None:
    """Build or load the extension now (raises when it cannot be had)."""
    build()


def first_pass(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    decays: list[float],
    beta1: float,
    beta2: float,
    eps_hat: float,
    alpha_grad: float,
    alpha_avg: float,
    dot: tuple[Literal["grad", "exp_avg"], Literal["grad", "exp_avg"]] | None,
) -> Tensor | None:
    """See :func:`optim._fused.first_pass`."""
    return build().module.first_pass(
        params, grads, exp_avgs, exp_avg_sqs, decays, beta1, beta2, eps_hat, alpha_grad, alpha_avg,
        0 if dot is None else _DOTS[dot],
    )


def move(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    eps_hat: float,
    alpha_grad: float,
    alpha_avg: float,
) -> None:
    """See :func:`optim._fused.move`."""
    build().module.move(params, grads, exp_avgs, exp_avg_sqs, eps_hat, alpha_grad, alpha_avg)


@functools.cache
def build() -> Build:
    """The extension, built if no build of this source, flags and torch is there yet."""
    start = time.perf_counter()
    name = extension_name()
    directory = extensions_root() / name
    library = directory / f"{name}{'.pyd' if os.name == 'nt' else '.so'}"
    done = directory / "built"  # written once the library has loaded
    compiled = False
    if not done.exists():
        directory.mkdir(parents=True, exist_ok=True)
        with _exclusive(directory.parent / f"{name}.lock"):
            if not done.exists():  # another process may have built it while this one waited
                logger.info("optim: compiling the fused CPU kernel into %s (once per machine)", directory)
                _compile(name, directory)
                _import(name, library)
                done.touch()
                compiled = True
                logger.info("optim: compiled the fused CPU kernel in %.0f s", time.perf_counter() - start)
    return Build(_import(name, library), library, compiled, time.perf_counter() - start)


def extension_name() -> str:
    """``optim_fused_search_<hash>``: the hash of everything that makes a build different."""
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), repr(CFLAGS).encode(), torch.__version__.encode(),
                 f"{sys.implementation.cache_tag}-{sys.platform}".encode()):
        digest.update(part)
    return f"optim_fused_search_{digest.hexdigest()[:16]}"


def extensions_root() -> Path:
    """``$TORCH_EXTENSIONS_DIR``, else torch's default cache (``~/.cache/torch_extensions``)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "torch_extensions"


def _compile(name: str, directory: Path) -> None:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler ({compiler} not found: install one, or set CXX)")
    if shutil.which("ninja") is None:
        raise RuntimeError("torch builds extensions with ninja, which is not on PATH (pip install ninja)")
    # torch's own warnings while it builds (where CUDA is, which compiler it prefers) concern
    # neither this CPU kernel nor its user, who hears of a failed build in one line instead.
    torch_logger = logging.getLogger("torch.utils.cpp_extension")
    level = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        _build_with_torch(name, directory)
    finally:
        torch_logger.setLevel(level)


def _build_with_torch(name: str, directory: Path) -> None:
    from torch.utils import cpp_extension  # only to build: importing it costs time

    if "FileBaton" in vars(cpp_extension):
        # A torch whose build waits on a lock *file* (FileBaton; later ones take an OS lock): a
        # builder killed while holding it leaves it behind, and every later build would wait
        # forever. Under our lock nobody else is building, so a file there is such a leftover.
        with contextlib.suppress(FileNotFoundError):
            (directory / "lock").unlink()
    cpp_extension.load(
        name, [str(SOURCE)], extra_cflags=list(CFLAGS), build_directory=str(directory), verbose=False
    )


def _import(name: str, library: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, library)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {library}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An advisory lock on ``path`` across processes; released by the kernel if the holder dies."""
    try:
        import fcntl
    except ImportError:  # Windows: torch's own lock around the build alone
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
