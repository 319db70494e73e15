"""What every closure-driven optimizer of this package shares: hyperparameters and the search's
state as param-group entries, per-parameter state created with the parameter, the first
evaluation with its finiteness check, decoupled weight decay and the ``lr`` mirror."""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ._checks import check_positive
from ._checkpoints import from_release_0_1_0, with_settings_added_since
from ._evaluation import LossEvaluator, default_process_group, host_floats
from ._sharding import check_sharding, local
from .diagnostics import Diagnostics
from .directions import StepTensors, inner, init_moments


class ClosureOptimizer(torch.optim.Optimizer):
    """Base of SaLSA, SLS and L4, keeping everything where ``torch.optim`` keeps it.

    * **Hyperparameters** are entries of every param group, read from the groups at each step as
      ``torch.optim.Adam`` does: a value changed in the groups takes effect at the next step, and
      ``load_state_dict`` restores them (the checkpoint's values win). The step builds its typed
      view of them (:meth:`_configure`, e.g. a :class:`~optim.SearchRule`) whenever they change.
      One loss decides one step size for all parameters, so every entry except ``weight_decay``
      (and the ``lr`` mirror) must be the same in all groups; a step refuses groups that differ.
    * **The search's state** (step size, moving averages, counters: :meth:`_initial_state`) is
      kept as group entries too, as Prodigy keeps ``d`` and Schedule-Free ``k``: group 0 holds
      the value read, and every group is written after each step. ``state_dict()`` and
      ``torch.distributed.checkpoint`` therefore carry it with the hyperparameters.
    * **Per-parameter tensors** (Adam's moments) live in ``state[p]``, created (zeros, as the
      first step would) when the parameter joins the optimizer: ``torch.distributed.checkpoint``
      loads into the state it finds, and would otherwise try to create it with a step without a
      closure, which a line search cannot take. Along the gradient (SGD) the entry stays empty.

    Parameters sharded by FSDP2 (``fully_shard``) are worked on shard by shard: the moments are
    ``DTensor``s like the parameters (the distributed checkpoint saves each rank's shard), and
    inner products are summed over the ranks while losses are averaged, so every rank accepts the
    same step.
    """

    # Entries that may differ between groups: the rest configures the one search of all groups.
    per_group_keys = frozenset({"params", "param_names", "weight_decay", "lr"})
    # Where version 0.1.0 kept the search's state in ``state`` (see ``_checkpoints``).
    release_0_1_0_key = "scalars"

    def __init__(
        self, params: Any, defaults: dict[str, Any], process_group: dist.ProcessGroup | None
    ) -> None:
        self.process_group = process_group
        self._setting_keys = tuple(k for k in defaults if k not in self.per_group_keys)
        self._settings_of = operator.itemgetter(*self._setting_keys)
        self._state_keys: tuple[str, ...] = ()
        self._configured: tuple[Any, Any, Any] | None = None  # (settings, rule, direction)
        super().__init__(params, defaults)

    # -- what a subclass defines ----------------------------------------------------------------

    def _configure(self, group: dict[str, Any]) -> tuple[Any, Any]:
        """The typed view of a group's settings: ``(rule, direction)``, validated (``ValueError``)."""
        raise NotImplementedError

    def _initial_state(self, group: dict[str, Any]) -> dict[str, Any]:
        """The search's state before the first step: the counters every subclass keeps, to which
        it adds its own entries."""
        return {
            "step_size": math.nan, "step": 0, "n_forwards": 0, "n_backwards": 0, "n_skipped": 0,
            "last_loss": math.nan,
        }

    @property
    def diagnostics(self) -> Diagnostics:
        raise NotImplementedError

    # -- param groups ---------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, its missing hyperparameters filled from the constructor's (torch's rule).
        Its settings must be those of the groups already there; it takes on their search state."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._configured = None  # the direction is chosen for the parameters' devices too
        try:
            self._check_dtypes(group)
            check_positive("weight_decay", group["weight_decay"], zero=True)
            if len(self.param_groups) > 1:
                self._check_agreement(group, self._setting_keys)
            _, direction = self._configuration(group)
        except (ValueError, RuntimeError):  # RuntimeError: fused=True where no kernel can be had
            self.param_groups.pop()
            self._configured = None
            raise
        if len(self.param_groups) == 1:
            state = self._initial_state(group)
            self._state_keys = tuple(state)
        else:
            state = {key: self.param_groups[0][key] for key in self._state_keys}
        group.update(state)
        self._init_param_states(group["params"], direction)
        self.sharded = check_sharding(
            (p for group in self.param_groups for p in group["params"]), self.process_group
        )

    def _check_dtypes(self, group: dict[str, Any]) -> None:
        """Refuse float16 and complex parameters (``ValueError`` naming the dtype), which would
        otherwise turn into NaN or fail mid-run. bfloat16 has float32's range and is accepted."""
        for i, p in enumerate(group["params"]):
            where = f"{type(self).__name__}: parameter {i} of param group {len(self.param_groups) - 1}"
            if p.dtype == torch.float16:
                raise ValueError(
                    f"{where} is torch.float16, which is not supported: Adam's eps (1e-8) and the "
                    "squared gradients underflow to 0 (0/0 = NaN), and a step size above 65504 does "
                    "not fit. Keep the parameters in float32 and run the forward in float16 under "
                    "torch.autocast (with a GradScaler), or use bfloat16 parameters"
                )
            if p.is_complex():
                raise ValueError(
                    f"{where} is {p.dtype}, which is not supported: the Armijo test compares real "
                    "numbers; hold the parameter as real and imaginary parts (torch.view_as_real)"
                )

    def _check_agreement(self, group: dict[str, Any], keys: tuple[str, ...]) -> None:
        first = self.param_groups[0]
        for key in keys:
            if not _same(group[key], first[key]):
                index = next(i for i, g in enumerate(self.param_groups) if g is group)
                raise ValueError(
                    f"param_groups[{index}][{key!r}] = {group[key]!r} differs from "
                    f"param_groups[0][{key!r}] = {first[key]!r}: one loss decides one step size for "
                    f"all parameters, so only {sorted(self.per_group_keys - {'params', 'param_names'})} "
                    f"may differ between groups; set {key!r} to the same value in every group"
                )

    def _shared_group(self) -> dict[str, Any]:
        """Group 0, whose settings and search state the step reads and writes, after checking
        that every other group agrees with it and that every ``weight_decay`` is valid."""
        groups = self.param_groups
        for group in groups[1:]:
            self._check_agreement(group, self._setting_keys + self._state_keys)
        for group in groups:  # the one per-group number, which the settings' check does not see
            check_positive("weight_decay", group["weight_decay"], zero=True)
        return groups[0]

    def _publish(self, first: dict[str, Any]) -> None:
        """Copy the search state of group 0 (written by the step) into the other groups."""
        if len(self.param_groups) > 1:
            state = {key: first[key] for key in self._state_keys}
            for group in self.param_groups[1:]:
                group.update(state)

    def _configuration(self, group: dict[str, Any]) -> tuple[Any, Any]:
        """``(rule, direction)`` of the group's settings, rebuilt only when they changed."""
        settings = self._settings_of(group)
        if self._configured is None or self._configured[0] != settings:
            rule, direction = self._configure(group)
            self._configured = (settings, rule, direction)
            # A direction with moments may follow one without (a group's "direction" changed).
            self._init_param_states((p for g in self.param_groups for p in g["params"]), direction)
        return self._configured[1], self._configured[2]

    @property
    def direction(self) -> Any:
        """The direction object of the current settings (the foreach one's scratch buffer included)."""
        return self._configuration(self.param_groups[0])[1]

    def _device_types(self) -> set[str]:
        """The device types of the parameters (of their shards, for FSDP2), which decide where a
        fused path can run."""
        return {p.device.type for group in self.param_groups for p in group["params"]}

    def _init_param_states(self, params: Any, direction: Any) -> None:
        for p in params:
            state = self.state[p]  # an entry per parameter, also where it stays empty
            if direction.keeps_moments:
                init_moments(p, state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict`` (the checkpoint's hyperparameters and state win); reads the
        layout of version 0.1.0 as well (see :func:`~optim._checkpoints.from_release_0_1_0`), and
        state dicts written before ``fused`` existed continue on the foreach ops they ran on
        (see :func:`~optim._checkpoints.with_settings_added_since`).

        Refuses (``ValueError``, nothing loaded) a state dict of another optimizer class (its
        groups' entries are not this class's), one whose hyperparameters this class rejects, and
        one whose per-parameter tensors do not have the shapes of the parameters they would
        belong to (another model): each would otherwise fail only at the next step."""
        state_dict = with_settings_added_since(state_dict)
        state_dict = from_release_0_1_0(state_dict, self.release_0_1_0_key, self.param_groups)
        self._check_loadable(state_dict)
        super().load_state_dict(state_dict)
        self._configured = None  # the settings are the checkpoint's now
        self._configuration(self.param_groups[0])  # validates them; per-parameter entries

    def _check_loadable(self, state_dict: dict[str, Any]) -> None:
        name = f"{type(self).__name__}.load_state_dict"
        saved_groups = state_dict["param_groups"]
        # Entries others add (a scheduler's "initial_lr") may come and go; ours must all be there.
        expected = {*self._setting_keys, *self._state_keys, "weight_decay"}
        for i, saved in enumerate(saved_groups):
            keys = set(saved) - {"params", "param_names", "lr"}
            if not expected <= keys:
                raise ValueError(
                    f"{name}: param_groups[{i}] of the state dict lacks {sorted(expected - keys)} and "
                    f"has {sorted(keys - expected)}: it is not a state dict of {type(self).__name__} "
                    "(one of another optimizer class?)"
                )
            check_positive("weight_decay", saved["weight_decay"], zero=True)
        if saved_groups:
            self._configure(saved_groups[0])  # the checkpoint's settings, validated before use
        if self.sharded or len(saved_groups) != len(self.param_groups):
            return  # shards carry their own layout; torch refuses a mismatch of groups itself
        for saved, group in zip(saved_groups, self.param_groups):
            if len(saved["params"]) != len(group["params"]):
                return  # torch refuses it, naming the groups
            for index, param in zip(saved["params"], group["params"]):
                for key, value in state_dict["state"].get(index, {}).items():
                    if isinstance(value, Tensor) and value.dim() > 0 and value.shape != param.shape:
                        raise ValueError(
                            f"{name}: state[{index}][{key!r}] has shape {tuple(value.shape)} but the "
                            f"parameter it would belong to has {tuple(param.shape)}: a state dict of "
                            "another model?"
                        )

    # -- the step's shared parts ----------------------------------------------------------------

    def _summed_over_shards(self, local_inner: Tensor) -> Tensor:
        """An inner product over this rank's shards, scaled so that the average over ranks (the
        reduction of every decision) gives the inner product over the whole parameters: times the
        number of ranks when the parameters are FSDP2 shards, else unchanged."""
        group = self.group_for_decisions
        if self.sharded and group is not None:
            return local_inner * float(dist.get_world_size(group))
        return local_inner

    def _step_tensors(self, step: int) -> StepTensors:
        with_grad = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if any(p.grad.is_sparse for p in with_grad):
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        states = [self.state[p] for p in with_grad]
        weight_decays = [group["weight_decay"] for group in self.param_groups for p in group["params"]
                         if p.grad is not None]
        if self.sharded:
            params, grads = [local(p) for p in with_grad], [local(p.grad) for p in with_grad]
            # This rank's shards of the moments: writing to them writes the DTensors.
            states = [{key: local(value) for key, value in state.items()} for state in states]
            return StepTensors(params, grads, states, step, weight_decays)
        return StepTensors(with_grad, [p.grad for p in with_grad], states, step, weight_decays)

    def _first_evaluation(
        self, search: dict[str, Any], evaluate: LossEvaluator, grad_scaler: torch.amp.GradScaler | None
    ) -> tuple[Tensor, float, Tensor, float, StepTensors] | tuple[Tensor, None, None, None, None]:
        """L0 with its backward; returns (loss, L0, ||g||^2 as a tensor and as a float, tensors), or
        (loss, None, None, None, None) when L0 or the gradient is not finite (the step is then
        skipped and counted in ``search``, the shared group). A first evaluation the caller ran
        (``loss=``) counts as one forward and one backward."""
        loss = evaluate.first(grad_scaler)
        search["n_forwards"] += 1
        search["n_backwards"] += 1
        if grad_scaler is not None:
            grad_scaler.unscale_(self)
        tensors = self._step_tensors(search["step"] + 1)
        grad_sq = inner(tensors.grads, tensors.grads)
        # The one sync of the first evaluation: L0 and ||g||^2, which is finite iff g is.
        values = [loss, self._summed_over_shards(grad_sq)]
        loss0, grad_sq_value = host_floats(values, self.group_for_decisions)
        search["last_loss"] = loss0
        if not (math.isfinite(loss0) and math.isfinite(grad_sq_value)):
            search["n_skipped"] += 1
            return loss, None, None, None, None
        search["step"] = tensors.step
        return loss, loss0, grad_sq, grad_sq_value, tensors

    @property
    def group_for_decisions(self) -> dist.ProcessGroup | None:
        """The process group whose ranks must agree (``None`` on a single rank)."""
        return default_process_group(self.process_group)

    def _set_lr(self, step_size: float) -> None:
        """Mirror the current step size into every group's ``lr`` for LR monitors (read by nothing
        here: the search's step size is the group entry ``step_size``)."""
        for group in self.param_groups:
            group["lr"] = step_size

    @staticmethod
    def _counters(group: dict[str, Any]) -> dict[str, Any]:
        """The :class:`Diagnostics` fields every subclass keeps, from the shared group."""
        return dict(
            step_size=group["step_size"], loss=group["last_loss"], n_steps=group["step"],
            n_forwards=group["n_forwards"], n_backwards=group["n_backwards"], n_skipped=group["n_skipped"],
        )


def _same(a: Any, b: Any) -> bool:
    """Equal, NaN counting as equal to NaN (a state entry before the first step) and a list as
    equal to the tuple of its items (``betas`` set from a config)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
