"""Model-level reduction: every DSS channel of a pretrained model reduced, every other weight copied.

``ModelReducer(model, route)`` reads each layer's channels once and balances them once (for the methods that start
from the balanced factorisation); HSVs, per-layer orders and every method at every order are served from that.
``reduce_model`` is the one-call form.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from ..dss import DSS, ss_kernel
from ..model import S4Model
from ..orders import OrderSpec
from .balanced import BalancedFactors, ReducedSystem, balance
from .registry import CONTROL_PARAMS, ControlInput, Method, System, check_route, get_method


class ModelReducer:
    """Reductions of one model on one Gramian route.

    ``route="discrete"`` (default) balances the ZOH system each channel actually runs; on a trained
    sequential-MNIST model it gave lower kernel errors and higher accuracy without retraining than the continuous
    route at every order tried (bench/bt_route.py, docs/methods.md).
    """

    def __init__(self, model: S4Model, route: str = "discrete", kernel_length: int = 1024) -> None:
        self.model, self.route, self.kernel_length = model, check_route(route), int(kernel_length)
        self.sizes = model.cfg.orders_by_layer()
        self._systems: dict[int, tuple[System, np.ndarray]] = {}
        self._factors: dict[int, BalancedFactors] = {}

    def system(self, i: int) -> tuple[System, np.ndarray]:
        """Channels of layer i as (Lambda, B, C (n_dir, H, N), dt (n_dir, H) or None) and the layer's D (H,)."""
        if i not in self._systems:
            ss = {k: v.numpy() for k, v in self.model.dss_layers()[i].ss_params().items()}
            dt = np.broadcast_to(ss["dt"], ss["Lambda"].shape[:-1]) if self.route == "discrete" else None
            self._systems[i] = (System(ss["Lambda"], ss["B"], ss["C"], dt), ss["D"])
        return self._systems[i]

    def factors(self, i: int) -> BalancedFactors:
        """The balanced factorisation of layer i's channels (computed on first use)."""
        if i not in self._factors:
            s, _ = self.system(i)
            try:
                self._factors[i] = balance(s.Lambda, s.B, s.C, dt=s.dt)
            except ValueError as e:
                raise ValueError(f"layer {i} (index = direction, channel): {e}") from None
        return self._factors[i]

    def hsv(self) -> list[np.ndarray]:
        """HSVs of every channel, one array (n_dir, H, N) per layer."""
        return [self.factors(i).hsv for i in range(len(self.sizes))]

    def choose_orders(self, spec: OrderSpec, allocation: str = "hsv") -> dict[str, Any]:
        """Per-layer orders of a per-layer spec (``tol:<x>``); returns {"order_spec", "route", "layer_orders",
        "discarded_energy" (per layer, at its order), "N" (per layer)} and, for tol, "tol".

        tol: per layer i, over all its channels and directions h, ``r_i = min { r >= 1 : sum_h sum_{k>r} hsv_hk^2
        <= tol * sum_h sum_k hsv_hk^2 }`` (HSVs of the route's balanced realization). ``sum_k hsv_k^2`` is the
        squared Frobenius norm of a channel's Hankel operator, so tol is the share of that energy dropped; the
        H-infinity bound of each channel at the chosen order is in the reduce report.

        budget: ``round(f * sum_i N_i)`` states in total (``reduction.budget.budget_states``: half up, at least one
        per layer), allocated to minimise ``sum_i sum_h sum_{k > r_i} hsv_ihk^2`` (greedy on the per-layer marginal
        energies, exact because each layer's are non-increasing); the result also carries "budget" and "kept".
        """
        hsvs = self.hsv()
        if spec.kind == "tol":
            orders = []
            for hsv in hsvs:
                frac = discarded_energy_share(hsv)  # (N + 1,)
                orders.append(int(np.argmax(frac[1:] <= spec.value)) + 1)  # frac[N] = 0: some r in [1, N] qualifies
            extra = {"tol": spec.value}
        elif spec.kind == "budget":
            from .budget import allocate_budget, allocate_last, budget_states
            from .registry import allocation_scores

            scores = [
                allocation_scores(allocation, self.system(i)[0], lambda h=h: h) for i, h in enumerate(hsvs)
            ]  # per layer (n_dir, H, N_i)
            rule = allocate_last if allocation == "last" else allocate_budget
            orders = [int(r) for r in rule(scores, spec.value)]
            extra = {"budget": spec.value, "kept": budget_states(self.sizes, spec.value), "allocation": allocation}
        else:
            raise ValueError(f"order {spec.label}: no per-layer orders to choose for this kind")
        fractions = [float(discarded_energy_share(hsv)[r]) for hsv, r in zip(hsvs, orders)]
        return {
            "order_spec": spec.label,
            "route": self.route,
            "layer_orders": orders,
            "discarded_energy": fractions,
            "N": self.sizes,
            **extra,
        }

    def reduce(
        self, method: str, orders: int | list[int], options: dict[str, Any] | None = None, seed: int | None = None
    ) -> tuple[S4Model, dict[str, Any]]:
        """The model with every layer reduced by ``method`` to ``orders`` (one r for all layers, 1 <= r < N, or one
        order per layer, 1 <= r_i <= N_i; a layer whose order equals its size is copied unchanged), and its report.

        The copy has the architecture of a fresh model of those orders; its DSS parameters (Lambda, B, C) come from
        the reduction of each channel, dt is kept, D is kept (bsp adds the real part of its reduced feedthrough),
        and every non-SSM weight is copied. Report entries per layer: hsv (NaN for modal), bound (BT-based methods:
        2 * discarded HSVs; modal: the sum of the discarded modes' dominance), rank, n_clamped, rel_kernel_error
        ``||K - K_r||_2 / ||K||_2`` over ``kernel_length`` steps (n_dir, H) computed from the weights actually
        stored, and for h2 the converged flags.

        A control (``registry.Method.control``: transplant, random_modes) needs the run's ``seed`` and replaces the
        stored Lambda, B, C of every layer (also one whose order equals its size) with what it returns; its report
        has per layer ``control: true``, the indices of the modes it ``kept`` (random_modes) and the kernel error.
        """
        m = get_method(method)
        options = dict(options or {})
        m.check_options(options)
        layer_orders = self._check_orders(orders)
        model = self.model
        ssm_names = {
            f"blocks.{i}.dss.{p}" for i in range(len(self.sizes)) for p in ("Lambda_log_neg_re", "Lambda_im", "B", "C")
        }
        reduced = S4Model(model.cfg.with_layer_orders(layer_orders))
        reduced.train(model.training)
        missing, unexpected = reduced.load_state_dict(
            {k: v for k, v in model.state_dict().items() if k not in ssm_names}, strict=False
        )
        assert set(missing) == ssm_names and not unexpected, (missing, unexpected)
        report = {
            "method": method,
            "route": self.route,
            "N": model.cfg.d_state,
            "r": orders if isinstance(orders, int) else None,
            "layer_orders": layer_orders,
            "kernel_length": self.kernel_length,
            "options": options,
            "layers": [],
        }
        if m.control:
            return self._control(m, reduced, layer_orders, seed, report)
        for i, (full, red, r) in enumerate(zip(model.dss_layers(), reduced.dss_layers(), layer_orders)):
            if r == self.sizes[i]:  # nothing to remove in this layer: copy it
                red.load_state_dict(full.state_dict())
                report["layers"].append({"layer": i, "r": r, "unchanged": True})
                continue
            s, D = self.system(i)
            f = self.factors(i) if m.uses_balance else None
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", RuntimeWarning)
                    res = m.run(f, s, r, **options)
            except ValueError as e:
                raise ValueError(f"layer {i} (index = direction, channel): {e}") from None
            for w in caught:  # IRKA fallbacks: name the layer and the order
                warnings.warn(f"layer {i}, r={r}: {w.message}", w.category, stacklevel=2)
            # a reduced feedthrough (bsp) adds to D; a bidirectional layer has one D for both directions
            red.load_ss_params(
                res.Lambda,
                res.B,
                res.C,
                D=D + (0.0 if res.D is None else res.D.real.sum(0)),
                where=f"reduced layer {i}",
            )
            abs_err, rel_err = kernel_errors(full.ss_params(), red.ss_params(), self.kernel_length)
            report["layers"].append({"layer": i, "r": r, **channel_report(res, abs_err, rel_err)})
        return reduced, report

    def _control(
        self, m: Method, reduced: S4Model, layer_orders: list[int], seed: int | None, report: dict[str, Any]
    ) -> tuple[S4Model, dict[str, Any]]:
        """Every layer's Lambda, B, C from the control ``m`` (see ``reduce``); D, dt and the rest are copied."""
        if seed is None or isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(
                f"control {m.name!r} needs the run's seed (an integer, from the checkpoint metadata), got {seed!r}"
            )
        fresh = fresh_skew_hippo(reduced.cfg, int(seed)) if m.uses_fresh_model else None
        report["seed"] = int(seed)
        for i, (full, red, r) in enumerate(zip(self.model.dss_layers(), reduced.dss_layers(), layer_orders)):
            params = {k: getattr(full, k).detach() for k in CONTROL_PARAMS}
            fresh_i = None if fresh is None else {k: getattr(fresh.dss_layers()[i], k).detach() for k in CONTROL_PARAMS}
            system = self.system(i)[0]  # the channels as the reductions see them (route's dt), for a scoring control
            res = m.run(ControlInput(params, fresh_i, np.random.default_rng([int(seed), i]), system), r)
            with torch.no_grad():
                for k in CONTROL_PARAMS:
                    target = getattr(red, k)
                    if tuple(res.params[k].shape) != tuple(target.shape):
                        raise ValueError(
                            f"control {m.name!r}, layer {i}: {k} has shape {tuple(res.params[k].shape)}, "
                            f"the order-{r} layer needs {tuple(target.shape)}"
                        )
                    target.copy_(res.params[k])
            report["layers"].append(
                {
                    "layer": i,
                    "r": r,
                    "control": True,
                    **({} if res.kept is None else {"kept": res.kept.tolist()}),
                    "rel_kernel_error": relative_kernel_error(full, red, self.kernel_length).tolist(),
                }
            )
        return reduced, report

    def _check_orders(self, orders: int | list[int]) -> list[int]:
        def is_int(r: Any) -> bool:
            return isinstance(r, (int, np.integer)) and not isinstance(r, bool)

        if is_int(orders):
            N = min(self.sizes)
            if not 1 <= orders < N:
                where = (
                    ""
                    if len(set(self.sizes)) == 1
                    else (
                        f" (the smallest layer of this model: its layer orders are {self.sizes}, e.g. after a reduction "
                        "during pretraining, optim.reduce_during; a per-layer order such as tol:<x> or budget:<f> fits "
                        "every layer)"
                    )
                )
                raise ValueError(f"reduced order must be an integer with 1 <= r < N = {N}{where}, got r={orders!r}")
            return [int(orders)] * len(self.sizes)
        if not (
            isinstance(orders, (list, tuple))
            and len(orders) == len(self.sizes)
            and all(is_int(r) and 1 <= r <= n for r, n in zip(orders, self.sizes))
        ):
            raise ValueError(
                f"layer orders must be {len(self.sizes)} integers with 1 <= r_i <= N_i = {self.sizes}, got {orders!r}"
            )
        return [int(r) for r in orders]


def reduce_model(
    model: S4Model,
    orders: int | list[int],
    method: str = "bt",
    route: str = "discrete",
    kernel_length: int = 1024,
    options: dict[str, Any] | None = None,
    seed: int | None = None,
) -> tuple[S4Model, dict[str, Any]]:
    """``ModelReducer(model, route, kernel_length).reduce(method, orders, options, seed)``: see there."""
    return ModelReducer(model, route, kernel_length).reduce(method, orders, options, seed)


def fresh_skew_hippo(cfg, seed: int) -> S4Model:
    """The order-r model a baseline of this seed starts from: ``torch.manual_seed(seed); S4Model(cfg)`` with the
    Skew-HiPPO init, as ``train.train`` builds it (so its Lambda, B, C are bit-identical to that baseline's at
    epoch 0). ``cfg``: the order-r architecture (``ModelConfig``). Torch's global RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return S4Model(cfg.replace(init="skew_hippo"))


def discarded_energy_share(hsv: np.ndarray) -> np.ndarray:
    """Share of a layer's HSV energy dropped when every channel keeps r states, for r = 0..N.

    hsv: (..., N) HSVs of the layer's channels (descending). Returns (N + 1,): ``frac[r] = sum_h sum_{k >= r}
    hsv_hk^2 / sum_h sum_k hsv_hk^2`` (0-based k; frac[0] = 1, frac[N] = 0).
    """
    energy = (hsv.reshape(-1, hsv.shape[-1]) ** 2).sum(0)  # (N,) summed over channels
    tail = np.concatenate([np.cumsum(energy[::-1])[::-1], [0.0]])  # tail[r] = sum_{k >= r}
    return tail / max(tail[0], np.finfo(float).tiny)


def kernel_errors(full: dict[str, Any], reduced: dict[str, Any], L: int) -> tuple[np.ndarray, np.ndarray]:
    """``||K_full - K_red||_2`` and ``||K_full - K_red||_2 / ||K_full||_2`` per channel over L steps, in float64.

    ``full``, ``reduced``: DSS parameters (``DSS.ss_params()``: Lambda, B, C complex (n_dir, H, N) or (H, N);
    dt (..., H); D (H,)), torch tensors or arrays. Returns two arrays of the leading shape ((n_dir, H) or (H,)).
    A change of the feedthrough D (bsp adds its reduced feedthrough there) counts as an error at lag 0 of the
    forward direction: the layer's response to an impulse is ``K[0] + D`` at lag 0. On the discrete route the
    absolute error is at most BT's bound: ``||k||_2 <= ||G||_H2 <= ||G||_Hinf`` for a discrete-time system.
    """
    K, D = [], []
    for ss in (full, reduced):
        t = {k: torch.as_tensor(np.asarray(ss[k])) for k in ("Lambda", "B", "C", "dt", "D")}
        cplx = [t[k].to(torch.complex128) for k in ("Lambda", "B", "C")]
        K.append(ss_kernel(*cplx, t["dt"].double(), L))  # (..., H, L)
        D.append(t["D"].double())  # (H,)
    diff = K[0] - K[1]
    first = diff[0] if diff.dim() == 3 else diff  # the forward direction (H, L)
    first[:, 0] += D[0] - D[1]
    err = torch.linalg.vector_norm(diff, dim=-1)
    return err.numpy(), (err / torch.linalg.vector_norm(K[0], dim=-1)).numpy()


def relative_kernel_error(full: DSS, reduced: DSS, L: int) -> np.ndarray:
    """``||K_full - K_red|| / ||K_full||`` per channel over L steps, in float64. Returns (n_dir, H). See
    ``kernel_errors``."""
    return kernel_errors(full.ss_params(), reduced.ss_params(), L)[1]


def channel_report(res: ReducedSystem, kernel_error: np.ndarray, rel_kernel_error: np.ndarray) -> dict[str, Any]:
    """The per-channel entries of a reduction report (``dssbt reduce`` and ``dssbt reduce-s4d``): hsv (..., N),
    bound (...,), rank, n_clamped, kernel_error (absolute l2 over the kernel length), rel_kernel_error, and for h2
    the converged flags; every array as nested lists of the channels' leading shape."""
    return {
        "hsv": res.hsv.tolist(),
        "bound": res.bound.tolist(),
        "rank": res.rank.tolist(),
        "n_clamped": res.n_clamped.tolist(),
        "kernel_error": np.asarray(kernel_error).tolist(),
        "rel_kernel_error": np.asarray(rel_kernel_error).tolist(),
        **({} if res.converged is None else {"converged": res.converged.tolist()}),
    }


__all__ = [
    "ModelReducer",
    "channel_report",
    "discarded_energy_share",
    "fresh_skew_hippo",
    "kernel_errors",
    "reduce_model",
    "relative_kernel_error",
]
