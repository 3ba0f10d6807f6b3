"""Model-level reduction: every DSS channel of a pretrained model reduced to order r, every other weight copied."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..dss import DSS, ss_kernel
from ..model import S4Model
from . import METHODS, reduce
from .balanced import balance

ROUTES = ("continuous", "discrete")


def reduce_model(
    model: S4Model,
    r: int,
    method: str = "bt",
    route: str = "continuous",
    kernel_length: int = 1024,
) -> tuple[S4Model, dict[str, Any]]:
    """Order-r copy of ``model`` and a per-layer report.

    The copy has the architecture of a fresh order-r model (``cfg.d_state = r``); its DSS parameters
    (Lambda, B, C) come from the reduction of each channel, D and dt are kept, and every non-SSM weight is copied.
    The report holds, per layer, the HSVs (n_dir, H, N), the error bound and the measured relative kernel error
    ``||K - K_r||_2 / ||K||_2`` over ``kernel_length`` steps (n_dir, H), computed from the weights actually stored.
    """
    N = model.cfg.d_state
    if not (isinstance(r, int) and 1 <= r < N):
        raise ValueError(f"reduced order must be an integer with 1 <= r < N = {N}, got r={r!r}")
    if method not in METHODS:
        raise ValueError(f"unknown reduction method {method!r}; choose one of {list(METHODS)}")
    if route not in ROUTES:
        raise ValueError(f"unknown Gramian route {route!r}; choose one of {list(ROUTES)}")
    reduced = S4Model(model.cfg.replace(d_state=r))
    reduced.train(model.training)
    ssm_names = {f"blocks.{i}.dss.{p}" for i in range(model.cfg.n_layers) for p in ("Lambda_log_neg_re", "Lambda_im", "B", "C")}
    state = {k: v for k, v in model.state_dict().items() if k not in ssm_names}
    missing, unexpected = reduced.load_state_dict(state, strict=False)
    assert set(missing) == ssm_names and not unexpected, (missing, unexpected)

    layers = []
    for i, (full, red) in enumerate(zip(model.dss_layers(), reduced.dss_layers())):
        ss = {k: v.numpy() for k, v in full.ss_params().items()}  # Lambda, B, C (n_dir, H, N); D, dt (H,)
        dt = np.broadcast_to(ss["dt"], ss["Lambda"].shape[:-1]) if route == "discrete" else None
        try:
            res = reduce(ss["Lambda"], ss["B"], ss["C"], r, method=method, dt=dt)
        except ValueError as e:
            raise ValueError(f"layer {i} (index = direction, channel): {e}") from None
        red.load_ss_params(res.Lambda, res.B, res.C, where=f"reduced layer {i}")
        layers.append(
            {
                "layer": i,
                "hsv": res.hsv.tolist(),
                "bound": res.bound.tolist(),
                "rank": res.rank.tolist(),
                "n_clamped": res.n_clamped.tolist(),
                "rel_kernel_error": relative_kernel_error(full, red, kernel_length).tolist(),
            }
        )
    report = {
        "method": method,
        "route": route,
        "N": N,
        "r": r,
        "kernel_length": kernel_length,
        "layers": layers,
    }
    return reduced, report


def hankel_singular_values(model: S4Model, route: str = "continuous") -> list[np.ndarray]:
    """HSVs of every channel, one array (n_dir, H, N) per layer."""
    out = []
    for layer in model.dss_layers():
        ss = {k: v.numpy() for k, v in layer.ss_params().items()}
        dt = np.broadcast_to(ss["dt"], ss["Lambda"].shape[:-1]) if route == "discrete" else None
        out.append(balance(ss["Lambda"], ss["B"], ss["C"], dt=dt).hsv)
    return out


def relative_kernel_error(full: DSS, reduced: DSS, L: int) -> np.ndarray:
    """``||K_full - K_red|| / ||K_full||`` per channel over L steps, in float64. Returns (n_dir, H)."""
    K = []
    for layer in (full, reduced):
        ss = layer.ss_params()  # complex128 / float64
        K.append(ss_kernel(ss["Lambda"], ss["B"], ss["C"], ss["dt"], L))  # (n_dir, H, L)
    return (torch.linalg.vector_norm(K[0] - K[1], dim=-1) / torch.linalg.vector_norm(K[0], dim=-1)).numpy()


__all__ = ["ROUTES", "hankel_singular_values", "reduce_model", "relative_kernel_error"]
