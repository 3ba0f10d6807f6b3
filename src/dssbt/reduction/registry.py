"""The reduction methods by name: the one list from which the CLI choices, the workflow's ``{method}`` wildcard,
the hyper-parameter options (``reduction.<method>``) and the table labels are derived.

A method is called as ``run(factors, system, r, **options)``: ``system`` is the batch of channels
``(Lambda, B, C, dt)`` (complex128 (..., N), dt None or (...,)), ``factors`` its ``BalancedFactors`` when the method
``uses_balance`` (computed once per layer and shared by every order and every such method), else None.

A *control* (``Method.control``) is not a reduction but a check of what BT's parameters are worth; it flows
through the same reduce -> retrain chain (run folders ``{name}_r{order}``, ``{name}_init_r{order}``) and is selected
by the config's ``controls`` list, not by ``methods``. A control acts on the stored parameters of a layer, so what
it keeps is bit-identical to its source: ``run(ControlInput, r) -> ControlResult``.

    transplant    Lambda, B, C of a fresh order-r Skew-HiPPO model of the run's seed (built exactly as the
                  baseline of that seed is, ``train.train``); D, dt and every non-SSM weight from the pretrained
                  model. Whatever BT-init gains beyond this is due to the reduced Lambda, B, C.
    random_modes  r modes of each pretrained channel, picked uniformly at random (a generator seeded by the run's
                  seed and the layer index only) and kept unchanged: the reduction without any selection.
    top_energy_modes  the r modes of each pretrained channel of largest H2 energy (AIRE-Prune's score; the
                  reduction ``top_energy``'s choice, ``methods.mode_energy`` on the reducer's route) kept unchanged,
                  bit-identical: a selection by a per-mode score instead of BT's joint one.

One entry cannot be both: ``control`` decides the config list (``methods`` or ``controls``), the call
(``run(factors, system, r)`` or ``run(ControlInput, r)``) and, with the name, the run folders; so the score has two
entries, ``top_energy`` (a reduction: arrays in, reported like modal, stored through ``load_ss_params``) and
``top_energy_modes`` (a control: the stored parameters of the same modes copied exactly).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:  # torch is imported where a control runs: the Snakefile imports this registry, and torch
    import torch  # costs ~1 s of every snakemake call

from .balanced import BalancedFactors, ReducedSystem, truncate
from .methods import (
    h2_reduction,
    last_truncation,
    modal_singular_perturbation,
    modal_truncation,
    mode_energy,
    mode_hinf,
    singular_perturbation,
    top_energy_modes,
    top_energy_truncation,
)

ROUTES = ("continuous", "discrete")


class System(NamedTuple):
    """A batch of diagonal channels: Lambda, B, C complex128 (..., N); dt None (continuous route) or (...,)."""

    Lambda: np.ndarray
    B: np.ndarray
    C: np.ndarray
    dt: np.ndarray | None


# the stored DSS parameters a control replaces (D and log_dt are always the pretrained model's)
CONTROL_PARAMS = ("Lambda_log_neg_re", "Lambda_im", "B", "C")


class ControlInput(NamedTuple):
    """What a control sees of one layer. ``params``: the pretrained layer's stored parameters (CONTROL_PARAMS:
    Lambda_log_neg_re, Lambda_im float32 (n_dir, H, N); B, C float32 (n_dir, H, N, 2), real views of complex);
    ``fresh``: the same of the layer of a fresh order-r Skew-HiPPO model of the run's seed (r modes; None unless
    the method ``uses_fresh_model``); ``rng``: a generator seeded by (seed, layer index); ``system``: the same
    pretrained channels as the reductions see them (``System``, complex128, dt per the reducer's route), for a control
    that scores modes."""

    params: dict[str, torch.Tensor]
    fresh: dict[str, torch.Tensor] | None
    rng: np.random.Generator
    system: System | None = None


class ControlResult(NamedTuple):
    """The layer's new stored parameters (CONTROL_PARAMS, r modes) and, where modes were kept, their indices into
    the pretrained channel (int64 (n_dir, H, r), ascending), else None."""

    params: dict[str, torch.Tensor]
    kept: np.ndarray | None


@dataclass(frozen=True)
class Method:
    name: str  # the config / CLI / run folder name
    label: str  # the name in tables and plots
    uses_balance: bool  # starts from the balanced factorisation (shared across orders and methods)
    run: Callable[..., ReducedSystem] | Callable[[ControlInput, int], ControlResult]
    options: dict[str, type] = field(default_factory=dict)  # reduction.<name> keys and their types
    control: bool = False  # a control (config `controls`, run(ControlInput, r)), not a reduction (`methods`)
    uses_fresh_model: bool = False  # a control that needs the fresh order-r Skew-HiPPO model of the run's seed
    # how a global state budget (budget:<f>) is split over layers: "hsv" (least discarded HSV energy,
    # budget.allocate_budget), "last" (LAST: per-mode H-infinity norms normalised per layer, global threshold,
    # budget.allocate_last) or "h2energy" (AIRE-Prune: per-mode H2 energies, global top-k, budget.allocate_budget)
    allocation: str = "hsv"

    def check_options(self, options: dict[str, Any]) -> None:
        """ValueError naming any option this method does not take."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(
                f"reduction method {self.name!r} has no option(s) {unknown}; known: {sorted(self.options)}"
            )


def _bt(f: BalancedFactors, s: System, r: int) -> ReducedSystem:
    return truncate(f, r)


def _bsp(f: BalancedFactors, s: System, r: int) -> ReducedSystem:
    return singular_perturbation(f, r)


def _modal(f: None, s: System, r: int) -> ReducedSystem:
    return modal_truncation(s.Lambda, s.B, s.C, r, s.dt)


def _msp(f: None, s: System, r: int) -> ReducedSystem:
    return modal_singular_perturbation(s.Lambda, s.B, s.C, r, s.dt)


def _h2(f: BalancedFactors, s: System, r: int, **options: Any) -> ReducedSystem:
    return h2_reduction(f, s.Lambda, s.B, s.C, r, **options)


def _transplant(inp: ControlInput, r: int) -> ControlResult:
    return ControlResult({k: inp.fresh[k].detach().clone() for k in CONTROL_PARAMS}, None)


def _top_energy(f: None, s: System, r: int) -> ReducedSystem:
    return top_energy_truncation(s.Lambda, s.B, s.C, r, s.dt)


def _last(f: None, s: System, r: int) -> ReducedSystem:
    return last_truncation(s.Lambda, s.B, s.C, r, s.dt)


ALLOCATIONS = ("hsv", "last", "h2energy")


def allocation_scores(allocation: str, s: System, hsv: Callable[[], np.ndarray]) -> np.ndarray:
    """The per-mode scores (..., N) a global budget ranks for one layer's channels ``s``: the HSVs (``hsv()``, computed
    only here), the modes' H-infinity norms (last), or the square roots of their H2 energies (h2energy; squared
    again by ``budget.layer_energies``)."""
    if allocation == "hsv":
        return hsv()
    if allocation == "last":
        return mode_hinf(s.Lambda, s.B, s.C, s.dt)
    if allocation == "h2energy":
        return np.sqrt(mode_energy(s.Lambda, s.B, s.C, s.dt))
    raise ValueError(f"unknown budget allocation {allocation!r}; choose one of {list(ALLOCATIONS)}")


def _random_modes(inp: ControlInput, r: int) -> ControlResult:
    shape = tuple(inp.params["Lambda_im"].shape)  # (n_dir, H, N)
    if not 1 <= r <= shape[-1]:
        raise ValueError(f"random_modes: order r={r} must lie in [1, N={shape[-1]}]")
    # one permutation per channel, its first r entries kept: the draw does not depend on r, so the modes kept at
    # a smaller order are among those kept at a larger one
    perm = inp.rng.permuted(np.broadcast_to(np.arange(shape[-1]), shape), axis=-1)
    return _keep_modes(inp, np.sort(perm[..., :r], axis=-1))


def _top_energy_modes(inp: ControlInput, r: int) -> ControlResult:
    s = inp.system
    return _keep_modes(inp, top_energy_modes(mode_energy(s.Lambda, s.B, s.C, s.dt), r))


def _keep_modes(inp: ControlInput, kept: np.ndarray) -> ControlResult:
    """The stored parameters of the modes ``kept`` (int64 (n_dir, H, r), ascending) of every channel, copied."""
    import torch  # here, not at the top: see the import block

    index = torch.from_numpy(np.ascontiguousarray(kept, dtype=np.int64))
    out = {}
    for k in CONTROL_PARAMS:
        p = inp.params[k].detach()
        idx = index if p.dim() == 3 else index[..., None].expand(*index.shape, p.shape[-1])
        out[k] = torch.gather(p, 2, idx).clone()
    return ControlResult(out, kept)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("bt", "BT", True, _bt),
        Method("bsp", "BSP", True, _bsp),
        Method("modal", "Modal", False, _modal),
        Method("h2", "H2 (IRKA)", True, _h2, options={"tol": float, "max_iter": int}),
        Method("msp", "Modal SP", False, _msp),
        Method("transplant", "Transplant", False, _transplant, control=True, uses_fresh_model=True),
        Method("random_modes", "Random modes", False, _random_modes, control=True),
        Method("top_energy", "Top energy", False, _top_energy, allocation="h2energy"),
        Method("last", "LAST", False, _last, allocation="last"),
        Method("top_energy_modes", "Top-energy modes", False, _top_energy_modes, control=True),
    )
}
# the reductions compared (config `methods`) and the controls among the methods (config `controls`)
REDUCTIONS = tuple(name for name, m in METHODS.items() if not m.control)
CONTROL_METHODS = tuple(name for name, m in METHODS.items() if m.control)


def get_method(name: str) -> Method:
    """The method called ``name``; ValueError listing the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown reduction method {name!r}; choose one of {list(METHODS)}")
    return METHODS[name]


def check_reduction_options(reduction: dict[str, Any]) -> None:
    """ValueError naming the first bad entry of a job's hyper-parameters section ``reduction`` ({method: options},
    ``dssbt.hparams.Hparams.reduction``): a method without options, an option it does not take, a value of the
    wrong type or not > 0. Here, not in ``hparams``: the registry knows its methods' options."""
    known = {name: m.options for name, m in METHODS.items() if m.options}
    for method, options in reduction.items():
        if method not in known:
            raise ValueError(f"hyper-parameters: unknown key reduction.{method}; known: {sorted(known)}")
        for k, v in options.items():
            if k not in known[method]:
                raise ValueError(
                    f"hyper-parameters: unknown key reduction.{method}.{k}; known: {sorted(known[method])}"
                )
            want = known[method][k]
            ok = isinstance(v, want) or (want is float and isinstance(v, int))
            if not ok or isinstance(v, bool):
                raise ValueError(f"hyper-parameters: reduction.{method}.{k} must be {want.__name__}, got {v!r}")
            if not v > 0:
                raise ValueError(f"hyper-parameters: reduction.{method}.{k} must be > 0, got {v}")


def check_route(route: str) -> str:
    if route not in ROUTES:
        raise ValueError(f"unknown Gramian route {route!r}; choose one of {list(ROUTES)}")
    return route


__all__ = [
    "ALLOCATIONS",
    "CONTROL_METHODS",
    "CONTROL_PARAMS",
    "ControlInput",
    "ControlResult",
    "METHODS",
    "Method",
    "REDUCTIONS",
    "ROUTES",
    "System",
    "check_reduction_options",
    "allocation_scores",
    "check_route",
    "get_method",
]
