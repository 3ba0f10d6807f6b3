"""Initialisations of the diagonal state matrix Lambda of a DSS layer.

Every init returns N complex eigenvalues with negative real part (a stable system) and, for the structured
inits, positive imaginary part: the DSS channel outputs ``Re(C x)``, so each mode stands for itself and its
conjugate, and conjugate pairs would be redundant.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def skew_hippo(N: int) -> np.ndarray:
    """Skew-HiPPO init of DSS (Gupta et al. 2022).

    The 2N x 2N HiPPO-LegS matrix splits as ``A = -1/2 I + S - P P^T`` with S skew-symmetric
    (``S_nk = -1/2 sqrt((2n+1)(2k+1))`` for n > k). The eigenvalues of S are purely imaginary and come in
    conjugate pairs; we keep the N with positive imaginary part and set the real part to -1/2.

    Returns: complex128 array (N,), sorted by increasing imaginary part.
    """
    if N < 1:
        raise ValueError(f"skew_hippo: N must be >= 1, got {N}")
    M = 2 * N
    q = np.sqrt(2.0 * np.arange(M) + 1.0)
    S = -0.5 * np.tril(np.outer(q, q), -1)
    S = S - S.T  # (2N, 2N) skew-symmetric
    # i*S is Hermitian with real eigenvalues mu; the eigenvalues of S are -i*mu.
    mu = np.linalg.eigvalsh(1j * S)
    im = np.sort(-mu)[N:]  # the N positive ones (spectrum is symmetric about 0, no zero for even size)
    return -0.5 + 1j * im


def s4d_lin(N: int) -> np.ndarray:
    """S4D-Lin: ``Lambda_n = -1/2 + i pi n``. complex128 (N,)."""
    return -0.5 + 1j * np.pi * np.arange(N)


def s4d_inv(N: int) -> np.ndarray:
    """S4D-Inv: ``Lambda_n = -1/2 + i N/pi (N/(2n+1) - 1)``. complex128 (N,), sorted by imaginary part."""
    n = np.arange(N)
    return np.sort_complex(-0.5 + 1j * (N / np.pi) * (N / (2 * n + 1) - 1))


def random_init(N: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Random stable init: ``Re ~ -U(0.1, 1)``, ``Im ~ U(0, pi N)``. complex128 (N,)."""
    rng = rng if rng is not None else np.random.default_rng()
    re = -rng.uniform(0.1, 1.0, N)
    im = np.sort(rng.uniform(0.0, np.pi * N, N))
    return re + 1j * im


INITS: dict[str, Callable[..., np.ndarray]] = {
    "skew_hippo": skew_hippo,
    "s4d_lin": s4d_lin,
    "s4d_inv": s4d_inv,
    "random": random_init,
}


def init_lambda(name: str, N: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Lambda init selected by name (one of ``INITS``). complex128 (N,)."""
    if name not in INITS:
        raise ValueError(f"unknown Lambda init {name!r}; choose one of {sorted(INITS)}")
    if name == "random":
        return random_init(N, rng)
    return INITS[name](N)
