"""Per-layer orders under one global state budget, from the Hankel singular values of every channel.

Input: one array of HSVs per layer, shape (..., N_i) (e.g. (n_dir, H, N_i) from
``dssbt.reduction.apply.ModelReducer.hsv``); every channel of layer i is reduced to the same order r_i.

Budget: ``R = round(fraction * sum_i N_i)`` states in total, rounded half up (``floor(x + 1/2)``, not Python's
round-half-to-even), and at least one state per layer (``R = max(R, n_layers)``).

``allocate_budget`` (exact): minimise the discarded HSV energy ``sum_i sum_h sum_{k > r_i} hsv_ihk^2`` subject to
``sum_i r_i = R``, ``1 <= r_i <= N_i``. With each channel's HSVs sorted descending, the marginal energy of the k-th
state of layer i, ``e_ik = sum_h hsv_ihk^2``, is non-increasing in k, so each layer's kept energy is concave in
r_i and the greedy choice -- one state per layer, then the R - n_layers largest remaining e_ik over all layers --
is optimal (an exchange argument; ties broken by layer, then state index). ``sum_k hsv_k^2`` is the squared
Frobenius norm of a channel's Hankel operator, the same energy ``ModelReducer.choose_orders`` uses for its tolerance.

``allocate_last``: the global ranking of LAST (Gwak et al., NeurIPS 2024), adapted. LAST scores the k-th state of a
layer (states sorted by decreasing importance e_k) by its energy normalised by the energy of the layer's states kept
with it, ``s_k = e_k / sum_{j <= k} e_j`` (s_1 = 1), and keeps the R highest scores over all layers. LAST's e_k
is the squared H-infinity norm of each diagonal mode (modal truncation); here e_k is the layer's k-th HSV energy
as above, so both functions rank the same states and differ only in the criterion. s_k is non-increasing in k,
so the top scores form a prefix in every layer. The normalisation makes layers of different output scale
comparable, which the plain energy criterion deliberately does not do.
"""

from __future__ import annotations

import math

import numpy as np


def budget_states(sizes: list[int], fraction: float) -> int:
    """Total kept states ``max(n_layers, floor(fraction * sum(sizes) + 1/2))`` (see the module docstring)."""
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0.0 < fraction <= 1.0):
        raise ValueError(f"state budget fraction must be a number in (0, 1], got {fraction!r}")
    return max(len(sizes), int(math.floor(fraction * sum(sizes) + 0.5)))


def layer_energies(hsvs_per_layer: list[np.ndarray]) -> list[np.ndarray]:
    """``e_ik = sum_h hsv_ihk^2`` (N_i,) per layer, each channel's HSVs sorted descending first.

    Raises ValueError naming the layer for an empty, non-finite or negative HSV array.
    """
    if not hsvs_per_layer:
        raise ValueError("HSVs: need at least one layer")
    out = []
    for i, h in enumerate(hsvs_per_layer):
        h = np.asarray(h, dtype=np.float64)
        if h.ndim < 1 or h.shape[-1] < 1:
            raise ValueError(f"HSVs of layer {i}: need shape (..., N) with N >= 1, got {h.shape}")
        if not np.all(np.isfinite(h)) or np.any(h < 0):
            raise ValueError(f"HSVs of layer {i}: must be finite and >= 0")
        h = -np.sort(-h.reshape(-1, h.shape[-1]), axis=-1)  # (channels, N_i) descending
        out.append((h**2).sum(0))
    return out


def _top_prefixes(scores: list[np.ndarray], R: int) -> list[int]:
    """Keep the first state of every layer and the R - n_layers highest other scores (each layer's scores must be
    non-increasing, so the kept states are prefixes). Ties: lower layer index, then lower state index."""
    cand = [(-float(s[k]), i, k) for i, s in enumerate(scores) for k in range(1, len(s))]
    cand.sort()
    orders = [1] * len(scores)
    for _, i, _ in cand[: R - len(scores)]:
        orders[i] += 1
    return orders


def allocate_budget(hsvs_per_layer: list[np.ndarray], fraction: float) -> list[int]:
    """Per-layer orders keeping ``budget_states`` states in total with the least discarded HSV energy (exact).

    hsvs_per_layer: one float array (..., N_i) per layer. Returns one int per layer, ``1 <= r_i <= N_i``.
    """
    e = layer_energies(hsvs_per_layer)
    return _top_prefixes(e, budget_states([len(x) for x in e], fraction))


def last_scores(energies: np.ndarray) -> np.ndarray:
    """LAST's normalised scores ``s_k = e_k / sum_{j <= k} e_j`` of one layer's sorted energies (N,); 0 where the
    layer's energy so far is 0."""
    cum = np.cumsum(energies)
    return np.where(cum > 0, energies / np.where(cum > 0, cum, 1.0), 0.0)


def allocate_last(hsvs_per_layer: list[np.ndarray], fraction: float) -> list[int]:
    """Per-layer orders from LAST's global ranking of normalised scores (module docstring); same budget and
    arguments as ``allocate_budget``."""
    e = layer_energies(hsvs_per_layer)
    return _top_prefixes([last_scores(x) for x in e], budget_states([len(x) for x in e], fraction))


def discarded_energy(hsvs_per_layer: list[np.ndarray], orders: list[int]) -> float:
    """``sum_i sum_h sum_{k > r_i} hsv_ihk^2``: the HSV energy the orders drop over the whole model."""
    e = layer_energies(hsvs_per_layer)
    if len(orders) != len(e) or not all(1 <= r <= len(x) for r, x in zip(orders, e)):
        raise ValueError(f"orders {orders!r} must hold one order in [1, N_i] per layer (N = {[len(x) for x in e]})")
    return float(sum(x[r:].sum() for x, r in zip(e, orders)))


__all__ = ["allocate_budget", "allocate_last", "budget_states", "discarded_energy", "last_scores", "layer_energies"]
