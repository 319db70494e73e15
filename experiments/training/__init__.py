"""The training loop (``loop.py``) and its parts, one module each: the step plan, the batches, the
task, the loss, the step adapter of each optimizer kind, the evaluation, the schedule, the
callbacks. ``build_trainer`` puts them together as a run needs them; docs/architecture.md says
which module a change touches."""

from .build import build_trainer
from .callbacks import Callback
from .loop import Trainer

__all__ = ["Callback", "Trainer", "build_trainer"]
