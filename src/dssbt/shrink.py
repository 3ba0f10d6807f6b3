"""In-training reduction: balanced truncation of a live model's DSS layers, with its optimizer carried over.

``shrink_model(model, optimizer, layer_orders)`` returns the BT-reduced model (exactly what
``dssbt.reduction.apply.reduce_model(model, layer_orders, "bt", route)`` returns, moved to the model's device
and dtype; that function builds float32 models, so for a float64 model the unchanged weights are re-copied exactly
and only the reduced Lambda, B, C carry float32 rounding) and an optimizer of the same class with the same param
groups (every group setting, including the current, possibly scheduled, ``lr`` and the schedulers' ``initial_lr``),
pointing at the new parameters.

Optimizer state:

- every parameter whose value the reduction does not change -- all non-SSM weights, D and log_dt of every layer,
  and Lambda, B, C of layers kept at full order -- keeps its state, copied (Adam's step, exp_avg, exp_avg_sq);
- Lambda_log_neg_re, Lambda_im, B, C of a reduced layer live in a new basis: BT mixes all N modes of a channel into
  each of the r new ones and re-diagonalises, so no moment of an old coordinate belongs to a new one. Two choices:

  ``ssm_moments="reset"`` (default): the state of a fresh parameter -- for Adam/AdamW ``step = 0`` and zero moments,
  materialised with the new shapes (identical to the lazily created state of a new parameter); for other
  optimizers no state (created lazily). Adam's bias correction then makes the first update of these parameters a
  plain ``lr * sign(g)``-sized step, as at the start of training, instead of the ~3x larger steps that zero moments
  with the old step count would give (``(1 - beta1) / sqrt(1 - beta2)`` with the defaults).

  ``ssm_moments="mean"`` (Adam-family only): keep the step count, zero first moments, and set the second moment of
  every new mode to the mean of the old ones over the modes of its channel (per direction, channel and real/imag
  part). This keeps each channel's effective step size continuous across the reduction, the best one can say of a
  per-coordinate scale when the coordinates themselves change.

The global torch RNG is left untouched (building the reduced model draws fresh initial values that are
overwritten; ``torch.random.fork_rng`` keeps them from shifting the training's data order and dropout).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .model import S4Model
from .orders import parse_order
from .reduction.apply import ModelReducer, reduce_model
from .reduction.budget import allocate_budget, allocate_last

BASIS_PARAMS = ("Lambda_log_neg_re", "Lambda_im", "B", "C")  # the parameters BT replaces by a new basis
MOMENT_CHOICES = ("reset", "mean")
_ADAM_FAMILY = (torch.optim.Adam, torch.optim.AdamW)


def shrink_model(
    model: S4Model,
    optimizer: torch.optim.Optimizer,
    layer_orders: list[int],
    route: str = "discrete",
    ssm_moments: str = "reset",
    kernel_length: int = 1024,
) -> tuple[S4Model, torch.optim.Optimizer, dict[str, Any]]:
    """BT-reduce ``model`` to ``layer_orders`` (one order per layer, ``1 <= r_i <= N_i``) and carry ``optimizer``
    over (module docstring). Returns (new model, new optimizer, report); the report is ``reduce_model``'
    (per-layer HSVs, bounds, kernel errors over ``kernel_length``) plus ``ssm_moments`` and ``new_basis_params``
    (the parameter names whose state was reset or averaged).

    Raises ValueError for an unknown ``ssm_moments``, "mean" with a non-Adam optimizer, or an optimizer holding a
    parameter that is not the model's.
    """
    if ssm_moments not in MOMENT_CHOICES:
        raise ValueError(f"ssm_moments must be one of {list(MOMENT_CHOICES)}, got {ssm_moments!r}")
    adam = isinstance(optimizer, _ADAM_FAMILY)
    if ssm_moments == "mean" and not adam:
        raise ValueError(f"ssm_moments='mean' needs Adam or AdamW, got {type(optimizer).__name__}")
    names = {id(p): n for n, p in model.named_parameters()}
    for g in optimizer.param_groups:
        for p in g["params"]:
            if id(p) not in names:
                raise ValueError(f"the optimizer holds a parameter of shape {tuple(p.shape)} that is not the model's")
    first = next(iter(model.parameters()))
    device, dtype = first.device, first.dtype

    with torch.random.fork_rng(devices=[]):
        reduced, report = reduce_model(_on_cpu(model), list(layer_orders), "bt", route, kernel_length)
    sizes = model.cfg.orders_by_layer()
    new_basis = {
        f"blocks.{i}.dss.{p}" for i, (r, n) in enumerate(zip(layer_orders, sizes)) if r < n for p in BASIS_PARAMS
    }
    reduced = reduced.to(device=device, dtype=dtype)
    if dtype != torch.float32:  # reduce_model builds float32 models: take the unchanged weights exactly
        reduced.load_state_dict({k: v for k, v in model.state_dict().items() if k not in new_basis}, strict=False)
    new_params = dict(reduced.named_parameters())
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [new_params[names[id(p)]] for p in g["params"]]}
        for g in optimizer.param_groups
    ]
    new_opt = type(optimizer)(groups)
    new_opt.defaults = dict(optimizer.defaults)

    for p, state in optimizer.state.items():
        name = names[id(p)]
        q = new_params[name]
        if name not in new_basis:
            new_opt.state[q] = {k: v.clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in state.items()}
        elif adam and state:
            new_opt.state[q] = _new_basis_state(state, q, ssm_moments)
        # else: another optimizer's state for a new basis is created lazily at its next step
    report = {**report, "ssm_moments": ssm_moments, "new_basis_params": sorted(new_basis)}
    return reduced, new_opt, report


def _on_cpu(model: S4Model) -> S4Model:
    """The model itself on the CPU, else a CPU copy (the reductions and HSVs of ``apply`` run in numpy)."""
    return model if next(iter(model.parameters())).device.type == "cpu" else copy.deepcopy(model).cpu()


def _new_basis_state(state: dict[str, Any], q: torch.Tensor, mode: str) -> dict[str, Any]:
    """Adam state for a parameter q (n_dir, H, r[, 2]) in a new basis, from the old state (n_dir, H, N[, 2])."""
    out: dict[str, Any] = {}
    for k, v in state.items():
        if k == "step":
            out[k] = v.clone() if mode == "mean" else torch.zeros_like(v)
        elif k == "exp_avg" or mode == "reset":
            out[k] = torch.zeros_like(q, memory_format=torch.preserve_format)
        else:  # exp_avg_sq, max_exp_avg_sq: mean over the old modes of each channel (dim 2)
            out[k] = v.mean(dim=2, keepdim=True).expand_as(q).clone()
    return out


def move_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer) -> None:
    """Point an existing LR scheduler at the optimizer ``shrink_model`` returned (its schedule, step count and base
    lrs continue unchanged; the new param groups already carry the current lrs)."""
    if len(scheduler.optimizer.param_groups) != len(optimizer.param_groups):
        raise ValueError(
            f"the scheduler drives {len(scheduler.optimizer.param_groups)} param groups, the new "
            f"optimizer has {len(optimizer.param_groups)}"
        )
    scheduler.optimizer = optimizer


def orders_by_tol(model: S4Model, tol: float, route: str = "discrete") -> list[int]:
    """Per-layer orders dropping at most ``tol`` of each layer's HSV energy (``apply.ModelReducer.choose_orders``)."""
    return ModelReducer(_on_cpu(model), route).choose_orders(parse_order(f"tol:{tol}"))["layer_orders"]


def orders_by_budget(model: S4Model, fraction: float, route: str = "discrete", rule: str = "energy") -> list[int]:
    """Per-layer orders keeping ``fraction`` of all states: ``rule="energy"`` (``budget.allocate_budget``, least
    discarded HSV energy) or ``"last"`` (``budget.allocate_last``)."""
    rules = {"energy": allocate_budget, "last": allocate_last}
    if rule not in rules:
        raise ValueError(f"budget rule must be one of {list(rules)}, got {rule!r}")
    return rules[rule](ModelReducer(_on_cpu(model), route).hsv(), fraction)


__all__ = ["BASIS_PARAMS", "MOMENT_CHOICES", "move_scheduler", "orders_by_budget", "orders_by_tol", "shrink_model"]
