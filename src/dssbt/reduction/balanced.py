"""Square-root balanced truncation of diagonal complex SISO systems, batched over leading dims.

The system of one channel is ``G(s) = sum_n C_n B_n / (s - Lambda_n)`` (continuous route) or its zero-order-hold
discretisation with step dt (discrete route: Gramians of ``(Lambda_bar, B_bar, C)``). Steps, all in complex128:

1. closed-form Gramians P, Q (``gramians.py``);
2. square-root factors ``P = Lp Lp^H``, ``Q = Lq Lq^H`` from Hermitian eigendecompositions with negative
   round-off eigenvalues clipped to 0 -- unlike Cholesky this survives the numerically rank-deficient Gramians of
   trained models;
3. SVD ``Lq^H Lp = Z diag(hsv) Y^H``: the Hankel singular values, computed once and truncated at every order;
4. projection ``T = Lp Y_r hsv_r^-1/2``, ``Ti = hsv_r^-1/2 Z_r^H Lq^H``, reduced ``(Ti A T, Ti B, C T)``;
5. re-diagonalisation of the dense reduced A by ``eig``, back to DSS form ``(Lambda_r, B_r, C_r)``.

Rank deficiency: states whose HSV is below ``rank_rtol * hsv[0]`` are never divided by. If the order r exceeds
that numerical rank, the missing states are filled with *padding modes*: poles of the full system (the most
dominant ones by ``|C_n B_n| / |Re Lambda_n|``), input weight B of that mode and output weight C = 0. They leave the
transfer function unchanged but remain trainable when the reduced model is retrained. The error bound is then
``2 * sum(hsv[rank:])``, the bound of the system actually returned.

The bound ``||G - G_r||_inf <= 2 * sum of discarded HSVs`` holds for the complex system (on the imaginary axis for
the continuous route, on the unit circle for the discrete one); a DSS channel outputs ``Re(.)`` of it, which
cannot increase the error.

Discrete route: the reduced discrete poles are mapped back by the principal logarithm,
``Lambda_r = log(Lambda_bar_r) / dt`` with ``|Im(dt Lambda_r)| <= pi``. Any branch gives the same kernel (the same
discrete system); the principal one is the slowest continuous mode consistent with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .gramians import from_zoh, gramians_continuous, gramians_discrete, zoh


@dataclass
class BalancedFactors:
    """Everything needed to truncate one batch of systems at any order (computed once)."""

    A: np.ndarray  # (..., N) diagonal of the state matrix the Gramians belong to (Lambda, or Lambda_bar)
    B: np.ndarray  # (..., N) input vector of that system (B, or B_bar)
    C: np.ndarray  # (..., N)
    Lp: np.ndarray  # (..., N, N) P = Lp Lp^H
    LqH: np.ndarray  # (..., N, N) Q = Lq Lq^H, stored as Lq^H
    Z: np.ndarray  # (..., N, N) left singular vectors of Lq^H Lp
    Y: np.ndarray  # (..., N, N) right singular vectors
    hsv: np.ndarray  # (..., N) Hankel singular values, descending
    pad_perm: np.ndarray  # (..., N) mode indices of the full system by decreasing dominance (for padding)
    dt: np.ndarray | None  # (...,) for the discrete route, None for the continuous one
    rank_rtol: float


@dataclass
class ReducedSystem:
    """A reduced batch of DSS channels in continuous form (same leading dims as the input)."""

    Lambda: np.ndarray  # (..., r) complex, Re < 0
    B: np.ndarray  # (..., r) complex
    C: np.ndarray  # (..., r) complex
    hsv: np.ndarray  # (..., N) Hankel singular values of the full system, descending
    bound: np.ndarray  # (...,) 2 * sum of the discarded HSVs (H-infinity error bound)
    rank: np.ndarray  # (...,) states taken from BT; r - rank are padding modes (C = 0)
    n_clamped: np.ndarray  # (...,) reduced poles moved off the stability boundary (round-off only)
    r: int
    method: str
    route: str  # "continuous" or "discrete"
    D: np.ndarray | None = (
        None  # (...,) complex feedthrough of the reduced system (bsp); its real part adds to the layer D
    )
    kept: np.ndarray | None = None  # (..., r) indices of the modes kept unchanged (modal)
    converged: np.ndarray | None = None  # (...,) bool (h2: False where the BT result was kept)


def check_system(Lambda: np.ndarray, B: np.ndarray, C: np.ndarray, dt: np.ndarray | None = None) -> None:
    """Raise ValueError naming the first (leading-index, mode) with a bad value: shapes, non-finite, Re Lambda >= 0."""
    if not (Lambda.shape == B.shape == C.shape) or Lambda.ndim < 1:
        raise ValueError(f"Lambda, B, C must have one shape (..., N); got {Lambda.shape}, {B.shape}, {C.shape}")
    for name, v in (("Lambda", Lambda), ("B", B), ("C", C)):
        bad = ~np.isfinite(v)
        if bad.any():
            raise ValueError(f"{name} is not finite at index {_first_index(bad)}")
    unstable = ~(Lambda.real < 0)
    if unstable.any():
        i = _first_index(unstable)
        raise ValueError(f"Lambda has Re >= 0 (unstable) at index {i}: {Lambda[i]}; balanced truncation needs Re < 0")
    if dt is not None:
        if dt.shape != Lambda.shape[:-1]:
            raise ValueError(f"dt must have shape {Lambda.shape[:-1]} (one step per system), got {dt.shape}")
        bad = ~(np.isfinite(dt) & (dt > 0))
        if bad.any():
            raise ValueError(f"dt must be finite and > 0; bad at index {_first_index(bad)}: {dt[_first_index(bad)]}")


def balance(
    Lambda: np.ndarray, B: np.ndarray, C: np.ndarray, dt: np.ndarray | None = None, rank_rtol: float = 1e-10
) -> BalancedFactors:
    """Gramians, square-root factors and HSVs of every system of the batch.

    Lambda, B, C: complex (..., N); dt: None (continuous Gramians) or real (...,) (discrete ZOH Gramians).
    """
    Lambda, B, C = (np.asarray(a, dtype=np.complex128) for a in (Lambda, B, C))
    if dt is not None:
        dt = np.broadcast_to(np.asarray(dt, dtype=np.float64), Lambda.shape[:-1])
    check_system(Lambda, B, C, dt)
    if dt is None:
        A, Bs = Lambda, B
        P, Q = gramians_continuous(Lambda, B, C)
        dominance = np.abs(C * B) / -Lambda.real
    else:
        A, Bs = zoh(Lambda, B, dt)
        P, Q = gramians_discrete(A, Bs, C, dtLambda=dt[..., None] * Lambda)
        dominance = np.abs(C * Bs) / (1.0 - np.abs(A))
    Lp = _psd_sqrt(P)  # (..., N, N)
    LqH = np.swapaxes(_psd_sqrt(Q), -1, -2).conj()
    Z, hsv, YH = np.linalg.svd(LqH @ Lp)  # Z (..., N, N), hsv (..., N), YH (..., N, N)
    return BalancedFactors(
        A=A,
        B=Bs,
        C=C,
        Lp=Lp,
        LqH=LqH,
        Z=Z,
        Y=np.swapaxes(YH, -1, -2).conj(),
        hsv=hsv,
        pad_perm=np.argsort(-dominance, axis=-1, kind="stable"),
        dt=dt,
        rank_rtol=rank_rtol,
    )


def truncate(f: BalancedFactors, r: int, max_cond: float = 1e12) -> ReducedSystem:
    """Balanced truncation to order r (1 <= r <= N) of every system in ``f``, re-diagonalised to DSS form."""
    N = f.hsv.shape[-1]
    if not (isinstance(r, (int, np.integer)) and 1 <= r <= N):
        raise ValueError(f"reduced order r must be an integer in [1, N={N}], got {r!r}")
    s = f.hsv[..., :r]  # (..., r)
    keep = s > f.rank_rtol * f.hsv[..., :1]  # prefix of True: the numerically nonzero HSVs
    rank = keep.sum(-1)
    scale = np.where(keep, 1.0 / np.sqrt(np.where(keep, s, 1.0)), 0.0)  # hsv^-1/2, 0 where not kept
    T = (f.Lp @ f.Y[..., :, :r]) * scale[..., None, :]  # (..., N, r)
    Ti = scale[..., :, None] * (np.swapaxes(f.Z[..., :, :r], -1, -2).conj() @ f.LqH)  # (..., r, N)
    Ar = (Ti * f.A[..., None, :]) @ T  # (..., r, r)
    Br = (Ti @ f.B[..., None])[..., 0]  # (..., r)
    Cr = (f.C[..., None, :] @ T)[..., 0, :]  # (..., r)
    # Padding states (not kept): decoupled diagonal entries with a full-system pole, its B, and C = 0.
    pad_idx = f.pad_perm[..., :r]
    pad_A = np.take_along_axis(f.A, pad_idx, -1)
    pad_B = np.take_along_axis(f.B, pad_idx, -1)
    diag = np.arange(r)
    Ar[..., diag, diag] = np.where(keep, Ar[..., diag, diag], pad_A)
    Br = np.where(keep, Br, pad_B)

    lam, V = np.linalg.eig(Ar)  # (..., r), (..., r, r)
    cond = np.linalg.cond(V)
    bad = ~(cond < max_cond)
    if bad.any():
        i = _first_index(bad)
        raise ValueError(
            f"reduced state matrix at index {i} is not diagonalisable (eigenvector condition {cond[i]:.3g}); "
            f"try another order than r={r}"
        )
    Bd = np.linalg.solve(V, Br[..., None])[..., 0]  # (..., r)
    Cd = (Cr[..., None, :] @ V)[..., 0, :]  # (..., r)

    if f.dt is None:
        floor = 1e-12 * np.abs(f.A).max(-1, keepdims=True)
        clamped = lam.real > -floor
        lam = np.where(clamped, -floor + 1j * lam.imag, lam)
        Lambda_r, B_r = lam, Bd
    else:
        radius = np.abs(lam)
        clamped = radius >= 1.0 - 1e-12
        lam = np.where(clamped, lam / np.maximum(radius, 1e-300) * (1.0 - 1e-12), lam)
        Lambda_r, B_r = from_zoh(lam, Bd, f.dt)  # principal branch, see module docstring

    B_r, C_r = split_gains(B_r, Cd)

    perm = np.argsort(Lambda_r.imag, axis=-1, kind="stable")
    Lambda_r, B_r, C_r = (np.take_along_axis(a, perm, -1) for a in (Lambda_r, B_r, C_r))
    for name, v in (("Lambda", Lambda_r), ("B", B_r), ("C", C_r)):
        bad = ~np.isfinite(v)
        if bad.any():
            raise ValueError(f"balanced truncation produced non-finite {name} at index {_first_index(bad)}")
    bound = 2.0 * np.where(np.arange(N) >= rank[..., None], f.hsv, 0.0).sum(-1)
    return ReducedSystem(
        Lambda=Lambda_r,
        B=B_r,
        C=C_r,
        hsv=f.hsv,
        bound=bound,
        rank=rank,
        n_clamped=clamped.sum(-1),
        r=int(r),
        method="bt",
        route="continuous" if f.dt is None else "discrete",
    )


def balanced_truncation(
    Lambda: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    r: int,
    dt: np.ndarray | None = None,
    rank_rtol: float = 1e-10,
) -> ReducedSystem:
    """Balanced truncation of diagonal systems (..., N) to order r. See the module docstring."""
    return truncate(balance(Lambda, B, C, dt=dt, rank_rtol=rank_rtol), r)


def split_gains(B: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rescale each mode so that ``|B_n| = |C_n|`` with ``C_n B_n`` unchanged (..., r).

    A re-diagonalised reduced system has eigenvectors of arbitrary length, so its B and C carry arbitrary scales; the
    transfer function does not see them, gradient descent does. Every reduction hands the retraining the same
    convention (modes with B = 0 or C = 0, e.g. padding modes, are left as they are).
    """
    mag_B, mag_C = np.abs(B), np.abs(C)
    both = (mag_B > 0) & (mag_C > 0)
    alpha = np.sqrt(np.where(both, mag_C, 1.0) / np.where(both, mag_B, 1.0))
    return B * alpha, C / alpha


def _psd_sqrt(P: np.ndarray) -> np.ndarray:
    """A factor L with ``P = L L^H`` for Hermitian PSD P (..., N, N), robust to round-off negative eigenvalues."""
    P = 0.5 * (P + np.swapaxes(P, -1, -2).conj())
    w, U = np.linalg.eigh(P)
    return U * np.sqrt(np.clip(w, 0.0, None))[..., None, :]


def _first_index(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])
