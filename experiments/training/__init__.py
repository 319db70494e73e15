"""The training loop and its parts, one job per module:

* ``build.py``: a run's trainer from its parts (the step plan first);
* ``loop.py``: the loop (:class:`Trainer`): steps, metrics rows, evaluations and checkpoints when
  due, a stop signal after the step in progress;
* ``plan.py``: steps per epoch and in all, and whether a checkpoint's place still holds;
* ``state.py``: the counters a checkpoint saves;
* ``batches.py``: the micro-batches of each step, on the device, weighted by their targets;
* ``tasks.py``: each kind of task's loss, target count, metrics and their directions;
* ``objective.py``: the loss under the run's precision, its gradient accumulated and clipped;
* ``step_adapters.py``: how each kind of optimizer takes a step;
* ``evaluation.py``: the metrics on the validation split;
* ``schedule.py``: the baselines' learning-rate schedule;
* ``callbacks.py``: hooks into the loop (the progress bar; tests and fault injections);
* ``stopwatch.py``: where the wall time goes.
"""

from .build import build_trainer
from .callbacks import Callback
from .loop import Trainer, TrainingDiverged

__all__ = ["Callback", "Trainer", "TrainingDiverged", "build_trainer"]
