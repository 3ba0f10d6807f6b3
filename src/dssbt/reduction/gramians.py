"""Closed-form Gramians of diagonal systems, batched over leading dims (layers, channels).

For ``x' = diag(l) x + b u, y = c x`` (complex) the Lyapunov equations ``A P + P A^H + b b^H = 0`` and
``A^H Q + Q A + c^H c = 0`` are solved entrywise because A is diagonal (Cauchy-like matrices):

    P_ij = -b_i conj(b_j) / (l_i + conj(l_j)),       Q_ij = -conj(c_i) c_j / (conj(l_i) + l_j).

The discrete (Stein) equations ``P = A P A^H + b b^H``, ``Q = A^H Q A + c^H c`` for ``x+ = diag(lb) x + bb u`` give

    P_ij = bb_i conj(bb_j) / (1 - lb_i conj(lb_j)),  Q_ij = conj(c_i) c_j / (1 - conj(lb_i) lb_j).
"""

from __future__ import annotations

import numpy as np


def zoh(Lambda: np.ndarray, B: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-order hold: ``Lambda_bar = exp(dt Lambda)``, ``B_bar = (Lambda_bar - 1) / Lambda * B``.

    Lambda, B: complex (..., N); dt: real (...,). Returns complex128 (..., N) twice.
    """
    dtL = np.asarray(dt, dtype=np.float64)[..., None] * Lambda
    return np.exp(dtL), np.expm1(dtL) / Lambda * B


def from_zoh(Lambda_bar: np.ndarray, B_bar: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of ``zoh``: continuous ``(Lambda, B)`` of discrete modes (..., r) with step dt (...,).

    ``Lambda = log(Lambda_bar) / dt`` on the principal branch (``|Im(dt Lambda)| <= pi``; any branch gives the same
    discrete system), ``B = B_bar * Lambda / expm1(dt Lambda)``. Returns complex128 (..., r) twice.
    """
    dt = np.asarray(dt, dtype=np.float64)[..., None]
    Lambda = np.log(Lambda_bar) / dt
    return Lambda, B_bar * Lambda / np.expm1(dt * Lambda)


def gramians_continuous(Lambda: np.ndarray, B: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Controllability P and observability Q Gramians, complex128 (..., N, N), of a stable diagonal system."""
    Lambda, B, C = (np.asarray(a, dtype=np.complex128) for a in (Lambda, B, C))
    den = Lambda[..., :, None] + Lambda.conj()[..., None, :]  # l_i + conj(l_j), (..., N, N)
    P = -(B[..., :, None] * B.conj()[..., None, :]) / den
    Q = -(C.conj()[..., :, None] * C[..., None, :]) / den.conj()
    return P, Q


def gramians_discrete(
    Lambda_bar: np.ndarray, B_bar: np.ndarray, C: np.ndarray, dtLambda: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Gramians of the discrete diagonal system (|Lambda_bar| < 1), complex128 (..., N, N).

    Pass ``dtLambda`` (= log Lambda_bar, e.g. dt * Lambda for a ZOH system) where poles may lie near the unit
    circle: ``1 - lb_i conj(lb_j) = -expm1(dtL_i + conj(dtL_j))`` then keeps full relative accuracy.
    """
    Lambda_bar, B_bar, C = (np.asarray(a, dtype=np.complex128) for a in (Lambda_bar, B_bar, C))
    if dtLambda is None:
        den = 1.0 - Lambda_bar[..., :, None] * Lambda_bar.conj()[..., None, :]  # 1 - lb_i conj(lb_j)
    else:
        dtLambda = np.asarray(dtLambda, dtype=np.complex128)
        den = -np.expm1(dtLambda[..., :, None] + dtLambda.conj()[..., None, :])
    P = (B_bar[..., :, None] * B_bar.conj()[..., None, :]) / den
    Q = (C.conj()[..., :, None] * C[..., None, :]) / den.conj()
    return P, Q
