"""Optimizer state of RVC ``G_*.pth`` / ``D_*.pth`` files, mapped by parameter name.

A torch optimizer state dict keys each parameter's state (Adam's ``exp_avg``, ``exp_avg_sq``, ``step``) by the
parameter's *position* in the optimizer, which is the order in which the model registered its parameters.
The RVC trainers disagree on that order for the NSF decoder:

- RVC-WebUI (and rvc-ray, ``model/decoder.py``) registers ``dec.m_source``, ``dec.noise_convs``, ``dec.conv_pre``,
  ``dec.ups``, ``dec.resblocks``, ...
- Applio registers ``dec.m_source``, ``dec.conv_pre``, ``dec.ups``, ``dec.noise_convs``, ``dec.resblocks``, ...

For the 40 kHz v2 generator 22 of 560 positions differ (``conv_pre``, ``ups.*``, ``noise_convs.*``); every other
generator position and the whole discriminator are the same in both. A file written by one trainer and read by
position in the other gives those 22 parameters another parameter's Adam moments, and the first step fails
("size of tensor a (7) must match the size of tensor b (32)").

rvc-ray therefore never reads or writes optimizer state by position alone:

- **reading** (:func:`optimizer_state_for`): the file's order is recognised from the shapes of its state
  tensors (exactly one of the two orders fits when the decoder's state is present), every state is mapped to
  its parameter name, and from there to the position in the optimizer being loaded;
- **writing** (:func:`portable_optimizer_state`): the ``"optimizer"`` entry holds, by position, only the state
  of parameters that sit at the same position in both orders, so RVC-WebUI and Applio both load it with their
  own ``optimizer.load_state_dict`` and step without error (the parameters left out start fresh Adam moments,
  as parameters without state do in torch); the state of the order-dependent parameters is stored by name
  under :data:`STATE_BY_NAME_KEY`, which rvc-ray reads back, so rvc-ray resumes with the full state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "STATE_BY_NAME_KEY",
    "applio_parameter_order",
    "optimizer_parameter_names",
    "optimizer_state_for",
    "portable_optimizer_state",
]

STATE_BY_NAME_KEY = "optimizer_state_by_name"
"""Top-level key of an rvc-ray ``G_/D_*.pth``: ``{parameter name: state}`` for the order-dependent parameters."""

_NOISE_CONVS = "dec.noise_convs."
_UPS = "dec.ups."


def _classic_name(name: str) -> str:
    """``…parametrizations.weight.original0/1`` -> ``…weight_g/v`` (the names RVC files use)."""
    return name.replace("parametrizations.weight.original0", "weight_g").replace(
        "parametrizations.weight.original1", "weight_v"
    )


def applio_parameter_order(names: Sequence[str]) -> list[str]:
    """The order Applio's model registers ``names`` in, given them in RVC-WebUI's (= rvc-ray's) order.

    Applio's NSF decoder registers ``noise_convs`` after ``ups`` instead of before ``conv_pre``; everything else
    (and every model without an NSF source) is in the same order.
    """
    noise = [n for n in names if n.startswith(_NOISE_CONVS)]
    rest = [n for n in names if not n.startswith(_NOISE_CONVS)]
    ups = [i for i, n in enumerate(rest) if n.startswith(_UPS)]
    if not noise or not ups:
        return list(names)
    return rest[: ups[-1] + 1] + noise + rest[ups[-1] + 1 :]


def optimizer_parameter_names(module: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Classic names (``weight_g``/``weight_v``) of the optimizer's parameters, in the optimizer's order."""
    name_of = {id(p): _classic_name(n) for n, p in module.named_parameters()}
    names = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            if id(param) not in name_of:
                raise ValueError("the optimizer holds a parameter that is not in the module")
            names.append(name_of[id(param)])
    return names


def _file_positions(state_dict: Mapping[str, Any]) -> list[int]:
    """The state ids of a torch optimizer state dict in parameter order (across its param groups)."""
    return [int(i) for group in state_dict["param_groups"] for i in group["params"]]


def _first_misfit(
    state: Mapping[Any, Mapping[str, Any]], ids: Sequence[int], names: Sequence[str], shapes: Mapping[str, torch.Size]
) -> str | None:
    """None when every state tensor has its parameter's shape under ``names``; else the first misfit, in words."""
    for position, state_id in enumerate(ids):
        entry = state.get(state_id)
        if entry is None:
            continue
        for key, value in entry.items():
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape != shapes[names[position]]:
                return (
                    f"state {key} of parameter {position} is {tuple(value.shape)} but "
                    f"{names[position]} is {tuple(shapes[names[position]])}"
                )
    return None


def optimizer_state_for(
    file_data: Mapping[str, Any], module: nn.Module, optimizer: torch.optim.Optimizer, file_name: str
) -> dict[str, Any]:
    """A state dict for ``optimizer.load_state_dict`` from an RVC file's ``"optimizer"`` (+ by-name state).

    The file may come from rvc-ray, RVC-WebUI or Applio; its parameter order is recognised from the shapes of
    its state tensors. Raises ``ValueError`` (with ``file_name``) when the state fits neither order.
    """
    saved = file_data["optimizer"]
    target_names = optimizer_parameter_names(module, optimizer)
    shapes = {_classic_name(n): p.shape for n, p in module.named_parameters()}
    module_names = [_classic_name(n) for n, _ in module.named_parameters()]
    ids = _file_positions(saved)
    if len(ids) != len(target_names):
        raise ValueError(
            f"{file_name}: the optimizer state is for {len(ids)} parameters but this model has {len(target_names)}"
        )
    if len(saved["param_groups"]) != len(optimizer.param_groups):
        raise ValueError(
            f"{file_name}: the optimizer state has {len(saved['param_groups'])} parameter groups, "
            f"the optimizer {len(optimizer.param_groups)}"
        )
    candidates = {"RVC-WebUI/rvc-ray": module_names, "Applio": applio_parameter_order(module_names)}
    misfits = {label: _first_misfit(saved["state"], ids, names, shapes) for label, names in candidates.items()}
    fitting = [label for label, misfit in misfits.items() if misfit is None]
    if not fitting:
        raise ValueError(
            f"{file_name}: the optimizer state fits neither RVC-WebUI's nor Applio's parameter order "
            f"({'; '.join(f'{label}: {m}' for label, m in misfits.items())})"
        )
    # when both fit, the two orders agree on every position that has state: either mapping is the same
    file_names = candidates[fitting[0]]
    by_name: dict[str, Any] = {
        file_names[position]: saved["state"][state_id]
        for position, state_id in enumerate(ids)
        if state_id in saved["state"]
    }
    for name, entry in file_data.get(STATE_BY_NAME_KEY, {}).items():
        by_name[_classic_name(name)] = entry
    groups, position = [], 0
    for saved_group, group in zip(saved["param_groups"], optimizer.param_groups, strict=True):
        if len(saved_group["params"]) != len(group["params"]):
            raise ValueError(f"{file_name}: the optimizer's parameter groups have other sizes than this model's")
        size = len(group["params"])
        hyper = {k: v for k, v in saved_group.items() if k not in ("params", "param_names")}
        groups.append({**hyper, "params": list(range(position, position + size))})
        position += size
    state = {i: by_name[name] for i, name in enumerate(target_names) if name in by_name}
    return {"state": state, "param_groups": groups}


def portable_optimizer_state(
    module: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(optimizer_state_dict, state_by_name)`` to write into a ``G_/D_*.pth`` that every RVC trainer loads.

    The first keeps, by position, the state of the parameters whose position is the same in RVC-WebUI's and
    Applio's order; the second holds the other parameters' state by classic name.
    """
    current = optimizer.state_dict()
    names = optimizer_parameter_names(module, optimizer)
    module_names = [_classic_name(n) for n, _ in module.named_parameters()]
    if names != module_names:
        raise ValueError("the optimizer's parameters are not the module's parameters in registration order")
    applio = applio_parameter_order(module_names)
    ids = _file_positions(current)
    kept: dict[int, Any] = {}
    by_name: dict[str, Any] = {}
    for position, state_id in enumerate(ids):
        if state_id not in current["state"]:
            continue
        if applio[position] == module_names[position]:
            kept[state_id] = current["state"][state_id]
        else:
            by_name[module_names[position]] = current["state"][state_id]
    return {"state": kept, "param_groups": current["param_groups"]}, by_name
