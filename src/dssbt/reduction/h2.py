"""H2 norms of diagonal systems in closed form, and H2-optimal reduction by IRKA, batched over channels.

For ``G(s) = sum_n C_n B_n / (s - Lambda_n)`` (complex, stable) the H2 norm is ``||G||^2 = C P C^H`` with the
closed-form controllability Gramian, i.e. ``sum_ij C_i B_i conj(C_j B_j) / -(Lambda_i + conj(Lambda_j))``. The
error ``G - G_r`` is again diagonal (the two systems side by side, the reduced output negated).

Discrete (ZOH, step dt): ``G1(z) = sum_n C_n B_bar_n / (z - Lambda_bar_n)`` has Markov parameters
``C Lambda_bar^l B_bar = K_c[l]`` (l >= 0, the complex kernel of the layer), so ``||G1||_H2^2 = C P_d C^H
= sum_l |K_c[l]|^2`` with the discrete Gramian ``P_d``: the l2 energy of the kernel. H2-optimal interpolation points
are then the reduced poles reflected across the unit circle, ``sigma_i = 1 / conj(Lambda_bar_r,i)``.
"""

from __future__ import annotations

import warnings

import numpy as np

from .gramians import gramians_continuous, gramians_discrete, zoh


def h2_norm(Lambda: np.ndarray, B: np.ndarray, C: np.ndarray, dt: np.ndarray | None = None) -> np.ndarray:
    """H2 norm of each diagonal system (..., N), given in continuous DSS form. Returns real (...,).

    ``dt=None``: of the continuous system G(s). ``dt`` real (...,): of its ZOH discretisation ``G1(z)``, i.e.
    ``sqrt(C P_d C^H) = sqrt(sum_{l>=0} |K_c[l]|^2)`` (see the module docstring); ``1 - Lambda_bar_i
    conj(Lambda_bar_j)`` is evaluated as ``-expm1(dt (Lambda_i + conj(Lambda_j)))`` for poles near the unit circle.
    """
    Lambda, B, C = (np.asarray(a, dtype=np.complex128) for a in (Lambda, B, C))
    if dt is None:
        P, _ = gramians_continuous(Lambda, B, C)  # (..., N, N)
    else:
        dt = np.broadcast_to(np.asarray(dt, dtype=np.float64), Lambda.shape[:-1])
        Lambda_bar, B_bar = zoh(Lambda, B, dt)
        P, _ = gramians_discrete(Lambda_bar, B_bar, C, dtLambda=dt[..., None] * Lambda)
    val = np.einsum("...i,...ij,...j->...", C, P, C.conj()).real
    return np.sqrt(np.maximum(val, 0.0))


def h2_error(Lambda, B, C, Lambda_r, B_r, C_r, dt: np.ndarray | None = None) -> np.ndarray:
    """``||G - G_r||_H2`` of diagonal systems (..., N) and (..., r) in continuous DSS form. Returns real (...,).

    ``dt`` (...,): the discrete error ``||G1 - G1_r||_H2``, the l2 norm of the kernel difference (one shared step
    per system; a feedthrough is not included).
    """
    return h2_norm(
        np.concatenate([Lambda, Lambda_r], -1), np.concatenate([B, B_r], -1), np.concatenate([C, -C_r], -1), dt=dt
    )


class IRKAResult:
    """Reduced diagonal systems from IRKA plus convergence information."""

    def __init__(self, Lambda, B, C, converged, iterations):
        self.Lambda, self.B, self.C = Lambda, B, C  # (..., r)
        self.converged = converged  # bool (...,)
        self.iterations = iterations  # int (...,)


def irka(
    Lambda: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    r: int,
    Lambda_init: np.ndarray,
    tol: float = 1e-8,
    max_iter: int = 100,
    discrete: bool = False,
) -> IRKAResult:
    """Iterative rational Krylov algorithm for complex SISO diagonal systems (..., N) -> (..., r).

    Interpolation points ``sigma = -conj(Lambda_r)`` (the mirrored reduced poles) are updated until their relative
    change is below ``tol``. With a diagonal A the Krylov bases are Cauchy matrices:
    ``V[n, i] = B_n / (sigma_i - Lambda_n)``, ``W^H[i, n] = C_n / (sigma_i - Lambda_n)``, and the reduced system is
    the Petrov-Galerkin projection ``((W^H V)^-1 W^H A V, (W^H V)^-1 W^H B, C V)``, re-diagonalised.
    ``Lambda_init`` (..., r): the starting poles (e.g. those of BT). Channels are iterated together; a channel stops
    changing once converged.

    ``discrete=True``: ``(Lambda, B, C)`` is a discrete system ``(Lambda_bar, B_bar, C)`` (|Lambda_bar| < 1), as
    are ``Lambda_init`` and the result; the points are the reduced poles reflected across the unit circle,
    ``sigma = 1 / conj(Lambda_bar_r)``, and the bases are the same Cauchy matrices with ``(Lambda_bar, B_bar)``.

    A channel whose projection breaks down (singular ``W^H V``, e.g. a dead channel C = 0 or fewer than r
    controllable modes, or a non-finite iterate such as a discrete reduced pole at 0) is frozen and reported as not
    converged; the other channels carry on.
    """
    mirror = (lambda lam: 1.0 / np.conj(lam)) if discrete else (lambda lam: -np.conj(lam))  # noqa: E731
    shape = Lambda.shape[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = mirror(Lambda_init)  # (..., r)
    failed = ~np.all(np.isfinite(sigma), -1)  # (...,) frozen, never converged
    sigma = np.where(failed[..., None], 0.0, sigma)  # finite placeholder; the channel's result is discarded
    converged = np.zeros(shape, bool)
    iterations = np.zeros(shape, int)
    lam_r = Br = Cr = None
    for it in range(max_iter):
        with np.errstate(divide="ignore", invalid="ignore"):
            den = sigma[..., None, :] - Lambda[..., :, None]  # (..., N, r)
            V = B[..., :, None] / den  # (..., N, r)
            WH = np.swapaxes(C[..., :, None] / den, -1, -2)  # (..., r, N)
            E = WH @ V  # (..., r, r)
            rhs = np.concatenate([(WH * Lambda[..., None, :]) @ V, WH @ B[..., :, None]], -1)  # (..., r, r + 1)
        X = solve_or_nan(E, rhs)  # (..., r, r + 1), NaN where E is singular
        Ar, br = X[..., :r], X[..., r]
        ok = np.all(np.isfinite(X), (-2, -1))
        lam, U = np.linalg.eig(np.where(ok[..., None, None], Ar, 0.0))  # (..., r), (..., r, r)
        new_Br = solve_or_nan(U, br[..., None])[..., 0]
        cr = (C[..., None, :] @ np.where(ok[..., None, None], V, 0.0))[..., 0, :]
        new_Cr = (cr[..., None, :] @ U)[..., 0, :]
        perm = np.argsort(lam.imag, axis=-1, kind="stable")
        lam, new_Br, new_Cr = (np.take_along_axis(a, perm, -1) for a in (lam, new_Br, new_Cr))
        with np.errstate(divide="ignore", invalid="ignore"):
            new_sigma = mirror(lam)
        ok &= np.all(np.isfinite(new_sigma) & np.isfinite(new_Br) & np.isfinite(new_Cr), -1)
        active = ~converged & ~failed
        if lam_r is None:
            lam_r, Br, Cr = lam, new_Br, new_Cr
        else:
            lam_r = np.where(active[..., None], lam, lam_r)
            Br = np.where(active[..., None], new_Br, Br)
            Cr = np.where(active[..., None], new_Cr, Cr)
        iterations = np.where(active, it + 1, iterations)
        failed |= active & ~ok
        converged |= ~failed & (_matched_change(sigma, np.where(ok[..., None], new_sigma, 0.0)) < tol)
        sigma = np.where((converged | failed)[..., None], sigma, new_sigma)
        if (converged | failed).all():
            break
    return IRKAResult(lam_r, Br, Cr, converged, iterations)


def solve_or_nan(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.linalg.solve(A, b)`` over a batch, A (..., n, n), b (..., n, k): NaN for the singular or non-finite
    systems instead of an error for the whole batch."""
    ok = np.all(np.isfinite(A), (-2, -1)) & np.all(np.isfinite(b), (-2, -1))  # (...,)
    A = np.where(ok[..., None, None], A, np.eye(A.shape[-1]))
    b = np.where(ok[..., None, None], b, 0.0)
    try:
        x = np.linalg.solve(A, b)
    except np.linalg.LinAlgError:  # rare: solve one system at a time to find the singular ones
        x = np.empty(np.broadcast_shapes(A.shape[:-2], b.shape[:-2]) + b.shape[-2:], np.result_type(A, b))
        for i in np.ndindex(x.shape[:-2]):
            try:
                x[i] = np.linalg.solve(A[i], b[i])
            except np.linalg.LinAlgError:
                x[i] = np.nan
    return np.where(ok[..., None, None], x, np.nan)


def _matched_change(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Relative change between two sets of shifts (each sorted the same way), max over the set. (...,)"""
    o = np.sort_complex(old)
    n = np.sort_complex(new)
    return np.max(np.abs(o - n), -1) / np.maximum(np.max(np.abs(n), -1), 1e-300)


def warn_unconverged(res: IRKAResult, where: str = "") -> None:
    n = int((~res.converged).sum())
    if n:
        warnings.warn(
            f"IRKA did not converge for {n} of {res.converged.size} channels{where}; "
            "those channels keep the balanced-truncation result",
            RuntimeWarning,
            stacklevel=3,
        )
