"""Reductions other than balanced truncation, on the same batched diagonal systems (..., N).

- ``modal``: keep the r modes with the largest dominance ``|C_n B_n| / |Re Lambda_n|`` (the H-infinity norm of the
  mode; discrete route: ``|C_n B_bar_n| / (1 - |Lambda_bar_n|)``); the kept modes are unchanged.
- ``top_energy`` (AIRE-Prune's score, ``top_energy_truncation``): keep the r modes with the largest H2 energy,
  the squared l2 norm of the mode's impulse response: discrete route ``|C_n|^2 |B_bar_n|^2 / (1 - |Lambda_bar_n|^2)``
  (``Lambda_bar = exp(dt Lambda)``, ``B_bar = (Lambda_bar - 1) / Lambda * B``), continuous route
  ``|C_n|^2 |B_n|^2 / (-2 Re Lambda_n)``; the kept modes are unchanged.
- ``msp`` (modal singular perturbation, ``modal_singular_perturbation``): modal's kept modes, and the discarded
  modes' DC gain as a feedthrough D, so the DC gain is exact (not in the method registry yet).
- ``bsp``: balanced singular perturbation. The balanced realization is partitioned after r states and the fast part
  is set to steady state at the point where the reduced system must match exactly: s0 = 0 (continuous route) or
  z0 = 1 (discrete route), i.e. ``A_r = A11 + A12 (s0 I - A22)^-1 A21`` etc. The reduced system matches the DC gain
  exactly and has a feedthrough D_r: its real part is added to the layer's D.

  Continuous route: SPA of ``G(s) = sum C B / (s - Lambda)``, ``D_r = -C2 A22^-1 B2``.

  Discrete route: mind the one-step shift. BT balances ``G1(z) = C (zI - Lambda_bar)^-1 B_bar`` whose Markov
  parameters are ``h1[l + 1] = C Lambda_bar^l B_bar = K_c[l]`` (K_c: the complex kernel of the layer,
  ``K = Re K_c``); SPA of G1 would put a feedthrough at ``h1[0] = K[-1]``, one step in the future, which a layer
  cannot represent. SPA is therefore applied to the realization whose transfer function is exactly the kernel's,

      G2(z) = sum_l K_c[l] z^-l = z G1(z) = (C Lambda_bar) (zI - Lambda_bar)^-1 B_bar + sum C B_bar,

  i.e. ``(A, B, C', D') = (Lambda_bar, B_bar, C Lambda_bar, sum C B_bar)`` (its Gramians: P that of G1,
  ``Q' = diag(conj Lambda_bar) Q diag(Lambda_bar)``). After SPA, ``(A_r, B_r, C'_r, D'_r)`` is re-diagonalised to
  ``(lambda_bar_r, B_bar_r, C'_r)`` and mapped back to DSS form: ``C_r = C'_r / lambda_bar_r`` (so that
  ``C_r lambda_bar_r^l B_bar_r`` is the reduced kernel for l >= 1), the lag-0 remainder
  ``D_r = D'_r - sum C_r B_bar_r`` is the feedthrough, ``Lambda_r = log(lambda_bar_r) / dt`` (principal branch)
  and ``B_r`` inverts the ZOH. ``hsv`` and ``bound`` (``2 * sum`` of the discarded HSVs, bounding
  ``sup_|z|=1 |G2 - G2_r|``) are those of G2's balanced realization. G2's Hankel matrix is G1's without its first
  row, so its HSVs are never larger than BT's; and for a reduced system without feedthrough ``|G2 - G2_r| =
  |G1 - G1_r|`` on the unit circle, so BT's bound (kept on fallback channels) bounds the same error.

  Per channel, where r reaches the numerical rank of the balanced realization, or the result is unstable, not
  diagonalisable, not finite or (discrete) has a reduced pole ``|lambda_bar_r| < 1e-8`` (C_r = C'_r /
  lambda_bar_r and D_r would cancel catastrophically), the BT result is kept instead, with D = 0 and BT's bound.
- ``h2``: IRKA (``h2.py``) started from the BT poles; channels where it does not converge, or returns an unstable
  system, keep the BT result (with a warning). Discrete route: IRKA of ``G1`` with ``(A, B) = (Lambda_bar,
  B_bar)``, started from ``exp(dt Lambda_r)`` of BT, with points ``1 / conj(lambda_bar_r)`` (H2-optimal for the
  kernel's l2 error, ``||G1 - G1_r||_H2 = ||K_c - K_c,r||_2``); the result is mapped back like bsp's (no D).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .balanced import BalancedFactors, ReducedSystem, split_gains, truncate
from .gramians import from_zoh, zoh
from .h2 import irka, solve_or_nan, warn_unconverged

_MIN_RADIUS = 1e-8  # discrete bsp: smallest |lambda_bar_r| mapped back (C_r = C'_r / lambda_bar_r)


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
        Lambda=pick(Lambda),
        B=pick(B),
        C=pick(C),
        hsv=np.full(Lambda.shape, np.nan),
        bound=discarded,
        rank=np.full(Lambda.shape[:-1], r),
        n_clamped=np.zeros(Lambda.shape[:-1], int),
        r=r,
        method="modal",
        route="continuous" if dt is None else "discrete",
        kept=keep,
    )


def mode_energy(Lambda, B, C, dt: np.ndarray | None = None) -> np.ndarray:
    """H2 energy of every mode (the squared H2 norm of ``C_n B_n / (s - Lambda_n)``, or of its ZOH discretisation
    ``C_n B_bar_n / (z - Lambda_bar_n)`` with dt): continuous ``|C|^2 |B|^2 / (-2 Re Lambda)``, discrete
    ``|C|^2 |B_bar|^2 / (1 - |Lambda_bar|^2)``. Lambda, B, C: complex (..., N); dt: None or real (...,). Returns
    float64 (..., N)."""
    if dt is None:
        return np.abs(C) ** 2 * np.abs(B) ** 2 / (-2.0 * Lambda.real)
    Lb, Bb = zoh(Lambda, B, np.broadcast_to(dt, Lambda.shape[:-1]))
    return np.abs(C) ** 2 * np.abs(Bb) ** 2 / -np.expm1(2.0 * np.asarray(dt)[..., None] * Lambda.real)  # 1 - |Lb|^2


def mode_hinf(Lambda, B, C, dt: np.ndarray | None = None) -> np.ndarray:
    """H-infinity norm of every mode (LAST's per-state score, and modal's dominance): continuous
    ``|C_n B_n| / |Re Lambda_n|`` (the peak of ``|C_n B_n / (i w - Lambda_n)|``), discrete
    ``|C_n B_bar_n| / (1 - |Lambda_bar_n|)`` (the peak over the unit circle). Lambda, B, C complex (..., N); dt None
    or real (...,). Returns float64 (..., N)."""
    if dt is None:
        return np.abs(C * B) / -Lambda.real
    Lb, Bb = zoh(Lambda, B, np.broadcast_to(dt, Lambda.shape[:-1]))
    return np.abs(C * Bb) / (1.0 - np.abs(Lb))


def last_truncation(Lambda, B, C, r: int, dt: np.ndarray | None = None) -> ReducedSystem:
    """LAST within a channel: keep the r modes of largest H-infinity norm (``mode_hinf``) unchanged. The same modes
    as modal truncation; LAST differs from modal in how a global budget is split over layers (``Method.allocation``
    "last": ``budget.allocate_last`` on these norms)."""
    red = modal_truncation(Lambda, B, C, r, dt)
    return dataclasses.replace(red, method="last")


def top_energy_modes(energy: np.ndarray, r: int) -> np.ndarray:
    """Indices (..., r) of the r modes of largest ``energy`` (..., N) per channel, ascending (the modes' order);
    ties go to the lower index."""
    N = energy.shape[-1]
    if not (isinstance(r, (int, np.integer)) and 1 <= r <= N):
        raise ValueError(f"reduced order r must be an integer in [1, N={N}], got {r!r}")
    return np.sort(np.argsort(-energy, axis=-1, kind="stable")[..., :r], axis=-1)


def top_energy_truncation(Lambda, B, C, r: int, dt: np.ndarray | None = None) -> ReducedSystem:
    """Keep the r modes of largest H2 energy (``mode_energy``) of each system unchanged. ``bound``: the sum of the
    discarded modes' dominance (as modal's: each mode's H-infinity norm, so their sum bounds the H-infinity error
    by the triangle inequality); ``hsv`` NaN. Lambda, B, C complex (..., N); dt None (continuous) or (...,)."""
    keep = top_energy_modes(mode_energy(Lambda, B, C, dt), r)
    if dt is None:
        dominance = np.abs(C * B) / -Lambda.real
    else:
        Lb, Bb = zoh(Lambda, B, np.broadcast_to(dt, Lambda.shape[:-1]))
        dominance = np.abs(C * Bb) / (1.0 - np.abs(Lb))
    pick = lambda a: np.take_along_axis(a, keep, -1)  # noqa: E731
    discarded = dominance.sum(-1) - pick(dominance).sum(-1)
    return ReducedSystem(
        Lambda=pick(Lambda),
        B=pick(B),
        C=pick(C),
        hsv=np.full(Lambda.shape, np.nan),
        bound=discarded,
        rank=np.full(Lambda.shape[:-1], r),
        n_clamped=np.zeros(Lambda.shape[:-1], int),
        r=r,
        method="top_energy",
        route="continuous" if dt is None else "discrete",
        kept=keep,
    )


def modal_singular_perturbation(Lambda, B, C, r: int, dt: np.ndarray | None = None) -> ReducedSystem:
    """Modal truncation whose discarded modes are set to steady state: the DC gain of every channel stays exact.

    Keeps the same r modes as ``modal_truncation`` (same dominance, per route), unchanged, and returns the
    discarded modes' DC gain as the feedthrough ``D`` (complex (...,); the layer adds its real part to its D):

        continuous:  D = sum_{n discarded} -C_n B_n / Lambda_n            (G_n(0) of each discarded mode)
        discrete:    D = sum_{n discarded} C_n B_bar_n / (1 - Lambda_bar_n) (sum_l of the mode's kernel, K_c)

    Under ZOH the two coincide, ``B_bar / (1 - Lambda_bar) = -B / Lambda``; the continuous expression is the one
    evaluated (no cancellation in ``1 - Lambda_bar`` for slow modes). The routes differ only in which modes are
    discarded. ``bound`` is modal's (sum of the discarded dominances, an H-infinity bound of the modal error at
    all frequencies; the steady-state term makes the error exact at s = 0 / z = 1, not smaller everywhere).

    Lambda, B, C: complex (..., N); dt: None or real (...,). Returns a ReducedSystem with ``kept`` and ``D`` set.
    """
    Lambda, B, C = (np.asarray(a, dtype=np.complex128) for a in (Lambda, B, C))
    res = modal_truncation(Lambda, B, C, r, dt)
    dropped = np.ones(Lambda.shape, bool)
    np.put_along_axis(dropped, res.kept, False, -1)
    D = np.where(dropped, -C * B / Lambda, 0.0).sum(-1)  # (...,)
    return dataclasses.replace(res, D=D, method="msp")


def shifted_factors(f: BalancedFactors) -> BalancedFactors:
    """Balanced factors of the kernel realization G2 = (Lambda_bar, B_bar, C Lambda_bar, .) from those of G1.

    ``f``: discrete-route factors of ``(Lambda_bar, B_bar, C)`` (from ``balance(..., dt=dt)``). P is unchanged and
    ``Q' = diag(conj Lambda_bar) Q diag(Lambda_bar)``, so ``Lq'^H = Lq^H diag(Lambda_bar)``: no new Gramian, only a
    new SVD. The same as ``balance(Lambda, B, C * exp(dt Lambda), dt)`` up to round-off.
    """
    if f.dt is None:
        raise ValueError("shifted_factors needs discrete-route factors (balance(..., dt=dt))")
    LqH = f.LqH * f.A[..., None, :]  # (..., N, N)
    Z, hsv, YH = np.linalg.svd(LqH @ f.Lp)
    C = f.C * f.A  # (..., N) C' = C Lambda_bar
    dominance = np.abs(C * f.B) / (1.0 - np.abs(f.A))
    return dataclasses.replace(
        f,
        C=C,
        LqH=LqH,
        Z=Z,
        Y=np.swapaxes(YH, -1, -2).conj(),
        hsv=hsv,
        pad_perm=np.argsort(-dominance, axis=-1, kind="stable"),
    )


def singular_perturbation(f: BalancedFactors, r: int, max_cond: float = 1e12) -> ReducedSystem:
    """Balanced singular perturbation to order r (see the module docstring).

    ``f``: the factors ``balance`` returns for the layer's system, either route (on the discrete route those of G1;
    the kernel realization G2 is derived here). Channels that cannot use SPA keep BT's result (``truncate(f, r)``).
    """
    N = f.hsv.shape[-1]
    bt = truncate(f, r)
    shape = f.hsv.shape[:-1]
    if r == N:
        return dataclasses.replace(bt, method="bsp", D=np.zeros(shape, np.complex128))
    discrete = f.dt is not None
    if discrete:
        g, s0, D0 = shifted_factors(f), 1.0, (f.C * f.B).sum(-1)  # G2: D' = sum C B_bar
    else:
        g, s0, D0 = f, 0.0, np.zeros(shape, np.complex128)
    Ar, Br, Cr, Dr, rank = _spa(g, r, s0, D0)
    spa_ok = np.all(np.isfinite(Ar), (-2, -1)) & np.isfinite(Dr)  # False where A22 - s0 I was singular

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lam, V = np.linalg.eig(np.where(spa_ok[..., None, None], Ar, 0.0))  # (..., r), (..., r, r)
        cond = np.linalg.cond(V)
        Bd = np.linalg.solve(np.where((cond < max_cond)[..., None, None], V, np.eye(r)), Br[..., None])[..., 0]
        Cd = (Cr[..., None, :] @ V)[..., 0, :]
        if discrete:
            radius = np.abs(lam)
            stable = (radius < 1.0) & (radius > _MIN_RADIUS)
            C_r = Cd / lam  # C'_r = C_r lambda_bar_r
            D = Dr - (C_r * Bd).sum(-1)  # lag-0 remainder
            Lambda_r, B_r = from_zoh(lam, Bd, f.dt)
        else:
            stable = lam.real < 0
            Lambda_r, B_r, C_r, D = lam, Bd, Cd, Dr
    with np.errstate(invalid="ignore", over="ignore"):
        B_r, C_r = split_gains(B_r, C_r)  # |B_n| = |C_n|, as BT returns them
    finite = np.all(np.isfinite(Lambda_r) & np.isfinite(B_r) & np.isfinite(C_r), -1) & np.isfinite(D)
    # Where r reaches the numerical rank, SPA and BT coincide up to the discarded (zero) part: keep BT there.
    use_bt = ~spa_ok | (rank < r) | (bt.rank < r) | ~np.all(stable, -1) | ~finite | ~(cond < max_cond)
    perm = np.argsort(Lambda_r.imag, axis=-1, kind="stable")
    Lambda_r, B_r, C_r = (np.take_along_axis(a, perm, -1) for a in (Lambda_r, B_r, C_r))
    sel = lambda a, b: np.where(use_bt[..., None], a, b)  # noqa: E731
    spa_bound = 2.0 * g.hsv[..., r:].sum(-1)
    return ReducedSystem(
        Lambda=sel(bt.Lambda, Lambda_r),
        B=sel(bt.B, B_r),
        C=sel(bt.C, C_r),
        hsv=g.hsv,
        bound=np.where(use_bt, bt.bound, spa_bound),
        rank=np.where(use_bt, bt.rank, r),
        n_clamped=np.where(use_bt, bt.n_clamped, 0),
        r=r,
        method="bsp",
        route=bt.route,
        D=np.where(use_bt, 0.0, D),
    )


def _spa(g: BalancedFactors, r: int, s0: float, D0: np.ndarray):
    """Singular perturbation of the balanced realization of ``(g.A, g.B, g.C, D0)`` at the point s0.

    With ``M = A22 - s0 I``: ``A_r = A11 - A12 M^-1 A21``, ``B_r = B1 - A12 M^-1 B2``, ``C_r = C1 - C2 M^-1 A21``,
    ``D_r = D0 - C2 M^-1 B2`` (s0 = 0: continuous, s0 = 1: discrete). Returns A_r (..., r, r), B_r, C_r (..., r),
    D_r (...,) (NaN where M is singular) and the numerical rank within the first r states (...,).
    """
    N = g.hsv.shape[-1]
    keep = g.hsv > g.rank_rtol * g.hsv[..., :1]  # (..., N)
    rank = keep[..., :r].sum(-1)
    scale = np.where(keep, 1.0 / np.sqrt(np.where(keep, g.hsv, 1.0)), 0.0)
    T = (g.Lp @ g.Y) * scale[..., None, :]  # (..., N, N) balancing transformation (zero columns: no state)
    Ti = scale[..., :, None] * (np.swapaxes(g.Z, -1, -2).conj() @ g.LqH)
    A = (Ti * g.A[..., None, :]) @ T
    Bb = (Ti @ g.B[..., None])[..., 0]
    Cb = (g.C[..., None, :] @ T)[..., 0, :]
    idx = np.arange(N)
    # States beyond the numerical rank are decoupled (zero rows/columns, B = C = 0); a placeholder s0 - 1 on the
    # diagonal (stable on either route) keeps A22 - s0 I invertible without changing anything.
    A[..., idx, idx] = np.where(keep, A[..., idx, idx], s0 - 1.0)
    A11, A12, A21, A22 = A[..., :r, :r], A[..., :r, r:], A[..., r:, :r], A[..., r:, r:]
    M = A22 - s0 * np.eye(N - r)
    X = solve_or_nan(M, np.concatenate([A21, Bb[..., r:, None]], -1))  # M^-1 [A21, B2], NaN where M is singular
    Ar = A11 - A12 @ X[..., :-1]
    Br = Bb[..., :r] - (A12 @ X[..., -1:])[..., 0]
    Cr = Cb[..., :r] - (Cb[..., None, r:] @ X[..., :-1])[..., 0, :]
    Dr = D0 - (Cb[..., None, r:] @ X[..., -1:])[..., 0, 0]
    return Ar, Br, Cr, Dr, rank


def h2_reduction(f: BalancedFactors, Lambda, B, C, r: int, tol: float = 1e-8, max_iter: int = 100) -> ReducedSystem:
    """IRKA from the BT poles; falls back to BT per channel (with a warning) where it fails.

    ``f``: the factors of ``(Lambda, B, C)`` from ``balance`` (either route; the discrete route runs IRKA on the
    ZOH system ``(f.A, f.B, C) = (Lambda_bar, B_bar, C)``, see the module docstring).
    """
    bt = truncate(f, r)
    if f.dt is None:
        res = irka(Lambda, B, C, r, bt.Lambda, tol=tol, max_iter=max_iter)
        Lambda_r, B_r, C_r = res.Lambda, res.B, res.C
        stable = np.all(Lambda_r.real < 0, -1)
    else:
        start = np.exp(f.dt[..., None] * bt.Lambda)  # BT's discrete poles
        res = irka(f.A, f.B, C, r, start, tol=tol, max_iter=max_iter, discrete=True)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            stable = np.all(np.abs(res.Lambda) < 1.0, -1)
            Lambda_r, B_r = from_zoh(res.Lambda, res.B, f.dt)
        C_r = res.C
        perm = np.argsort(Lambda_r.imag, axis=-1, kind="stable")
        Lambda_r, B_r, C_r = (np.take_along_axis(a, perm, -1) for a in (Lambda_r, B_r, C_r))
    with np.errstate(invalid="ignore", over="ignore"):
        B_r, C_r = split_gains(B_r, C_r)  # |B_n| = |C_n|, as BT returns them
    ok = res.converged & stable & np.all(np.isfinite(Lambda_r) & np.isfinite(B_r) & np.isfinite(C_r), -1)
    if f.dt is not None:
        ok &= np.all(Lambda_r.real < 0, -1)  # |lambda_bar| < 1 up to the log's round-off
    res.converged = ok
    warn_unconverged(res)
    sel = lambda a, b: np.where(ok[..., None], b, a)  # noqa: E731
    return ReducedSystem(
        Lambda=sel(bt.Lambda, Lambda_r),
        B=sel(bt.B, B_r),
        C=sel(bt.C, C_r),
        hsv=f.hsv,
        bound=bt.bound,
        rank=bt.rank,
        n_clamped=bt.n_clamped,
        r=r,
        method="h2",
        route=bt.route,
        converged=ok,
    )


__all__ = [
    "mode_energy",
    "modal_truncation",
    "top_energy_modes",
    "top_energy_truncation",
    "modal_singular_perturbation",
    "shifted_factors",
    "singular_perturbation",
    "h2_reduction",
]
