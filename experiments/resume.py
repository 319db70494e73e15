"""What a resume may change.

``trainer.resume=true`` continues the recorded run along the same trajectory, so the new config
must equal the recorded one (the run's ``config.yaml``) except in keys that leave every step as it
was: how long the run goes, how often it logs and checkpoints, where and on how many threads it
runs, where it reports. Those are listed in :data:`RESUMABLE`; every other key, including keys
that the schema gains later, is protected, and a change to one is refused, naming it.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Mapping
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from .config import RunConfig, dataclass_of

# Keys, or whole subtrees, that a resume may change. Not trainer.eval_interval: every evaluation
# draws a seed from the global torch RNG (DataLoader), so evaluating at other steps shifts the
# dropout and augmentation draws of all later steps. Not trainer.num_workers: workers draw the
# augmentations from their own seeds instead of the global RNG.
RESUMABLE = (
    "trainer.epochs", "trainer.max_steps", "trainer.log_interval", "trainer.checkpoint_interval",
    "trainer.checkpoint_minutes", "trainer.keep_checkpoints", "trainer.max_bad_steps", "trainer.eval_batch_size",
    "trainer.progress", "trainer.threads", "trainer.device", "trainer.resume", "data_dir", "logger",
)
# These set the length of the run, and with it the length of a learning-rate schedule.
LENGTH = ("trainer.epochs", "trainer.max_steps")
_SHOWN = 6  # changes named in the message; the rest are counted


@dataclasses.dataclass(frozen=True)
class Change:
    key: str
    recorded: Any
    requested: Any
    why: str = ""

    def __str__(self) -> str:
        return f"{self.key} {self.recorded!r} -> {self.requested!r}{self.why}"


def trajectory_changes(recorded: Mapping[str, Any], cfg: DictConfig) -> list[Change]:
    """The differences between the recorded config and ``cfg`` that a resume must not make."""
    old = _flatten(recorded)
    new = _flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    defaults = _schema_defaults(RunConfig)
    has_schedule = cfg.optimizer.schedule is not None
    changes = []
    for key in sorted(old.keys() | new.keys()):
        # A key the record predates holds its default there: the run was made with that.
        before, after = old.get(key, defaults.get(key, _ABSENT)), new.get(key, _ABSENT)
        if before == after:
            continue
        if key in LENGTH and has_schedule:
            changes.append(Change(key, before, after, " (the length of optimizer.schedule)"))
        elif not _resumable(key):
            changes.append(Change(key, before, after))
    return changes


def describe_changes(changes: list[Change]) -> str:
    """One sentence for the refusal: what changed, and what a resume may change."""
    shown = ", ".join(map(str, changes[:_SHOWN]))
    more = f" and {len(changes) - _SHOWN} more" if len(changes) > _SHOWN else ""
    return (
        f"was recorded with another config, and these changes alter its trajectory: {shown}{more}. "
        f"A resume may change only {', '.join(RESUMABLE)} (not the length of a run with a schedule); "
        "resume with the recorded values, or start a new run in another directory"
    )


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def _resumable(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RESUMABLE)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values; lists are leaves (their order matters as a whole)."""
    if not isinstance(tree, Mapping) or not tree:
        return {prefix.rstrip("."): tree} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def _schema_defaults(cls: type, prefix: str = "") -> dict[str, Any]:
    """The schema's default of every key that has one (enums by name, as in a config.yaml)."""
    defaults: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        nested, value = dataclass_of(hints[field.name]), field.default
        if nested is not None and (value is dataclasses.MISSING or value == MISSING):
            defaults.update(_schema_defaults(nested, f"{prefix}{field.name}."))
        elif value is not dataclasses.MISSING and value != MISSING:
            defaults[prefix + field.name] = value.name if isinstance(value, enum.Enum) else value
    return defaults
