"""Reductions other than balanced truncation, on the same batched diagonal systems (..., N).

- ``modal``: keep the r modes with the largest dominance ``|C_n B_n| / |Re Lambda_n|`` (the H-infinity norm of the
  mode; discrete route: ``|C_n B_bar_n| / (1 - |Lambda_bar_n|)``); the kept modes are unchanged.
- ``bsp``: balanced singular perturbation (continuous route): the balanced realization is partitioned after r
  states and the fast part is set to steady state, ``A_r = A11 - A12 A22^-1 A21`` etc. The reduced system matches
  the DC gain G(0) exactly and has a feedthrough ``-C2 A22^-1 B2``: its real part is added to the layer's D.
- ``h2``: IRKA (``h2.py``) started from the BT poles; channels where it does not converge, or returns an unstable
  system, keep the BT result (with a warning).
"""

from __future__ import annotations

import numpy as np

from .balanced import BalancedFactors, ReducedSystem, balance, check_system, truncate
from .gramians import zoh
from .h2 import irka, warn_unconverged


def modal_truncation(Lambda, B, C, r: int, dt: np.ndarray | None = None) -> ReducedSystem:
    """Keep the r most dominant modes of each system unchanged (see the module docstring)."""
    N = Lambda.shape[-1]
    if not (isinstance(r, (int, np.integer)) and 1 <= r <= N):
        raise ValueError(f"reduced order r must be an integer in [1, N={N}], got {r!r}")
    if dt is None:
        dominance = np.abs(C * B) / -Lambda.real
    else:
        Lb, Bb = zoh(Lambda, B, np.broadcast_to(dt, Lambda.shape[:-1]))
        dominance = np.abs(C * Bb) / (1.0 - np.abs(Lb))
    keep = np.sort(np.argsort(-dominance, axis=-1, kind="stable")[..., :r], axis=-1)  # (..., r), original order
    pick = lambda a: np.take_along_axis(a, keep, -1)  # noqa: E731
    discarded = np.sort(dominance, axis=-1)[..., : N - r].sum(-1)
    return ReducedSystem(
        Lambda=pick(Lambda), B=pick(B), C=pick(C), hsv=np.full(Lambda.shape, np.nan), bound=discarded,
        rank=np.full(Lambda.shape[:-1], r), n_clamped=np.zeros(Lambda.shape[:-1], int), r=r, method="modal",
        route="continuous" if dt is None else "discrete", kept=keep,
    )


def singular_perturbation(f: BalancedFactors, r: int) -> ReducedSystem:
    """Balanced singular perturbation to order r (continuous factors only)."""
    if f.dt is not None:
        raise ValueError("method bsp is implemented for the continuous route only (dt=None)")
    N = f.hsv.shape[-1]
    bt = truncate(f, r)
    if r == N:
        return bt
    keep = f.hsv > f.rank_rtol * f.hsv[..., :1]  # (..., N)
    scale = np.where(keep, 1.0 / np.sqrt(np.where(keep, f.hsv, 1.0)), 0.0)
    T = (f.Lp @ f.Y) * scale[..., None, :]  # (..., N, N) balancing transformation (zero columns: no state)
    Ti = scale[..., :, None] * (np.swapaxes(f.Z, -1, -2).conj() @ f.LqH)
    A = (Ti * f.A[..., None, :]) @ T
    Bb = (Ti @ f.B[..., None])[..., 0]
    Cb = (f.C[..., None, :] @ T)[..., 0, :]
    idx = np.arange(N)
    # States beyond the numerical rank are decoupled (zero rows/columns, B = C = 0); a stable placeholder on the
    # diagonal keeps A22 invertible without changing anything.
    A[..., idx, idx] = np.where(keep, A[..., idx, idx], -1.0)
    A11, A12, A21, A22 = A[..., :r, :r], A[..., :r, r:], A[..., r:, :r], A[..., r:, r:]
    X = np.linalg.solve(A22, np.concatenate([A21, Bb[..., r:, None]], -1))  # A22^-1 [A21, B2]
    Ar = A11 - A12 @ X[..., :-1]
    Br = Bb[..., :r] - (A12 @ X[..., -1:])[..., 0]
    Cr = Cb[..., :r] - (Cb[..., None, r:] @ X[..., :-1])[..., 0, :]
    Dr = -(Cb[..., None, r:] @ X[..., -1:])[..., 0, 0]
    lam, V = np.linalg.eig(Ar)
    Bd = np.linalg.solve(V, Br[..., None])[..., 0]
    Cd = (Cr[..., None, :] @ V)[..., 0, :]
    order = np.argsort(lam.imag, axis=-1, kind="stable")
    lam, Bd, Cd = (np.take_along_axis(a, order, -1) for a in (lam, Bd, Cd))
    # Where r reaches the numerical rank, SPA and BT coincide up to the discarded (zero) part: keep BT there.
    use_bt = (bt.rank < r) | ~np.all(lam.real < 0, -1) | ~np.all(np.isfinite(Bd) & np.isfinite(Cd), -1)
    sel = lambda a, b: np.where(use_bt[..., None], a, b)  # noqa: E731
    return ReducedSystem(
        Lambda=sel(bt.Lambda, lam), B=sel(bt.B, Bd), C=sel(bt.C, Cd), hsv=f.hsv, bound=bt.bound, rank=bt.rank,
        n_clamped=bt.n_clamped, r=r, method="bsp", route="continuous", D=np.where(use_bt, 0.0, Dr),
    )


def h2_reduction(f: BalancedFactors, Lambda, B, C, r: int, tol: float = 1e-8, max_iter: int = 100) -> ReducedSystem:
    """IRKA from the BT poles; falls back to BT per channel (with a warning) where it fails."""
    if f.dt is not None:
        raise ValueError("method h2 is implemented for the continuous route only (dt=None)")
    bt = truncate(f, r)
    res = irka(Lambda, B, C, r, bt.Lambda, tol=tol, max_iter=max_iter)
    ok = res.converged & np.all(res.Lambda.real < 0, -1) & np.all(np.isfinite(res.B) & np.isfinite(res.C), -1)
    res.converged = ok
    warn_unconverged(res)
    sel = lambda a, b: np.where(ok[..., None], b, a)  # noqa: E731
    return ReducedSystem(
        Lambda=sel(bt.Lambda, res.Lambda), B=sel(bt.B, res.B), C=sel(bt.C, res.C), hsv=f.hsv, bound=bt.bound,
        rank=bt.rank, n_clamped=bt.n_clamped, r=r, method="h2", route="continuous", converged=ok,
    )


def reduce_with(method: str, Lambda, B, C, r: int, dt=None, **options) -> ReducedSystem:
    """Dispatch used by ``dssbt.reduction.reduce``."""
    if method == "modal":
        Lambda, B, C = (np.asarray(a, dtype=np.complex128) for a in (Lambda, B, C))
        check_system(Lambda, B, C, None if dt is None else np.broadcast_to(np.asarray(dt, float), Lambda.shape[:-1]))
        return modal_truncation(Lambda, B, C, r, dt)
    f = balance(Lambda, B, C, dt=dt, **{k: v for k, v in options.items() if k == "rank_rtol"})
    if method == "bt":
        return truncate(f, r)
    if method == "bsp":
        return singular_perturbation(f, r)
    if method == "h2":
        return h2_reduction(f, np.asarray(Lambda, np.complex128), np.asarray(B, np.complex128),
                            np.asarray(C, np.complex128), r, **{k: v for k, v in options.items() if k != "rank_rtol"})
    raise ValueError(f"unknown reduction method {method!r}")


__all__ = ["modal_truncation", "singular_perturbation", "h2_reduction", "reduce_with"]
