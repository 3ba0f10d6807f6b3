"""H2 norms of diagonal systems in closed form, and H2-optimal reduction by IRKA, batched over channels.

For ``G(s) = sum_n C_n B_n / (s - Lambda_n)`` (complex, stable) the H2 norm is ``||G||^2 = C P C^H`` with the
closed-form controllability Gramian, i.e. ``sum_ij C_i B_i conj(C_j B_j) / -(Lambda_i + conj(Lambda_j))``. The
error ``G - G_r`` is again diagonal (the two systems side by side, the reduced output negated).
"""

from __future__ import annotations

import warnings

import numpy as np

from .gramians import gramians_continuous


def h2_norm(Lambda: np.ndarray, B: np.ndarray, C: np.ndarray) -> np.ndarray:
    """H2 norm of each continuous diagonal system (..., N). Returns real (...,)."""
    P, _ = gramians_continuous(Lambda, B, C)
    val = np.einsum("...i,...ij,...j->...", C, P, C.conj()).real
    return np.sqrt(np.maximum(val, 0.0))


def h2_error(Lambda, B, C, Lambda_r, B_r, C_r) -> np.ndarray:
    """``||G - G_r||_H2`` of diagonal systems (..., N) and (..., r). Returns real (...,)."""
    return h2_norm(
        np.concatenate([Lambda, Lambda_r], -1), np.concatenate([B, B_r], -1), np.concatenate([C, -C_r], -1)
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
) -> IRKAResult:
    """Iterative rational Krylov algorithm for complex SISO diagonal systems (..., N) -> (..., r).

    Interpolation points ``sigma = -conj(Lambda_r)`` (the mirrored reduced poles) are updated until their relative
    change is below ``tol``. With a diagonal A the Krylov bases are Cauchy matrices:
    ``V[n, i] = B_n / (sigma_i - Lambda_n)``, ``W^H[i, n] = C_n / (sigma_i - Lambda_n)``, and the reduced system is
    the Petrov-Galerkin projection ``((W^H V)^-1 W^H A V, (W^H V)^-1 W^H B, C V)``, re-diagonalised.
    ``Lambda_init`` (..., r): the starting poles (e.g. those of BT). Channels are iterated together; a channel stops
    changing once converged.
    """
    sigma = -np.conj(Lambda_init)  # (..., r)
    shape = Lambda.shape[:-1]
    converged = np.zeros(shape, bool)
    iterations = np.zeros(shape, int)
    lam_r = Br = Cr = None
    for it in range(max_iter):
        den = sigma[..., None, :] - Lambda[..., :, None]  # (..., N, r)
        V = B[..., :, None] / den  # (..., N, r)
        WH = np.swapaxes(C[..., :, None] / den, -1, -2)  # (..., r, N)
        E = WH @ V  # (..., r, r)
        Ar = np.linalg.solve(E, (WH * Lambda[..., None, :]) @ V)
        br = np.linalg.solve(E, (WH @ B[..., :, None]))[..., 0]
        cr = (C[..., None, :] @ V)[..., 0, :]
        lam, U = np.linalg.eig(Ar)
        new_Br = np.linalg.solve(U, br[..., None])[..., 0]
        new_Cr = (cr[..., None, :] @ U)[..., 0, :]
        order = np.argsort(lam.imag, axis=-1, kind="stable")
        lam, new_Br, new_Cr = (np.take_along_axis(a, order, -1) for a in (lam, new_Br, new_Cr))
        new_sigma = -np.conj(lam)
        change = _matched_change(sigma, new_sigma)
        active = ~converged
        if lam_r is None:
            lam_r, Br, Cr = lam, new_Br, new_Cr
        else:
            lam_r = np.where(active[..., None], lam, lam_r)
            Br = np.where(active[..., None], new_Br, Br)
            Cr = np.where(active[..., None], new_Cr, Cr)
        iterations = np.where(active, it + 1, iterations)
        converged |= change < tol
        sigma = np.where(converged[..., None], sigma, new_sigma)
        if converged.all():
            break
    return IRKAResult(lam_r, Br, Cr, converged, iterations)


def _matched_change(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Relative change between two sets of shifts (each sorted the same way), max over the set. (...,)"""
    o = np.sort_complex(old)
    n = np.sort_complex(new)
    return np.max(np.abs(o - n), -1) / np.maximum(np.max(np.abs(n), -1), 1e-300)


def warn_unconverged(res: IRKAResult, where: str = "") -> None:
    n = int((~res.converged).sum())
    if n:
        warnings.warn(f"IRKA did not converge for {n} of {res.converged.size} channels{where}; "
                      "those channels keep the balanced-truncation result", RuntimeWarning, stacklevel=3)
