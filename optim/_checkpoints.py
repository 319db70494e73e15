"""Reading the state dicts that version 0.1.0 of this package wrote.

0.1.0 kept the search's state (step size, moving averages, counters) as a plain dict under a
string key of ``state`` (``"line_search"``; L4: ``"l4"``), where ``torch.optim`` and
``torch.distributed.checkpoint`` expect parameters only, and searched with the hyperparameters
its constructor was given, some of which its param groups did not record. Both now live in the
param groups.
"""

from __future__ import annotations

from typing import Any

# Hyperparameters added after state dicts were written without them, with the value that
# continues such a run as it ran: until ``fused`` existed the searches ran foreach ops only, and
# a resumed run continues bit for bit on them (set the groups' ``fused`` to change path).
SETTINGS_ADDED = {"fused": False}


def with_settings_added_since(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` with each entry of :data:`SETTINGS_ADDED` its param groups lack."""
    groups = state_dict["param_groups"]
    if all(SETTINGS_ADDED.keys() <= group.keys() for group in groups):
        return state_dict
    return {**state_dict, "param_groups": [{**SETTINGS_ADDED, **group} for group in groups]}


def from_release_0_1_0(
    state_dict: dict[str, Any], key: str, groups: list[dict[str, Any]]
) -> dict[str, Any]:
    """``state_dict`` in the current layout, for an optimizer whose param groups are ``groups``.

    The entries of ``state[key]`` become entries of every saved group. A hyperparameter the
    saved groups lack (SaLSA's ``init_step_size``, ``accept_ties``, ``skipped_growth`` and
    ``forced_searches``; SLS's ``init_step_size``) is taken from the loading optimizer's group:
    0.1.0 took it from the constructor, which these groups were built from. A state dict without
    ``state[key]`` (the current layout) is returned as it is, as is one whose number of groups
    does not match (``torch.optim.Optimizer.load_state_dict`` then says so).
    """
    state = state_dict["state"]
    saved_groups = state_dict["param_groups"]
    if key not in state or len(saved_groups) != len(groups):
        return state_dict
    search_state = state[key]
    converted_groups = [
        {**{k: v for k, v in current.items() if k != "params"}, **saved, **search_state}
        for current, saved in zip(groups, saved_groups)
    ]
    converted_state = {k: v for k, v in state.items() if k != key}
    return {**state_dict, "state": converted_state, "param_groups": converted_groups}
