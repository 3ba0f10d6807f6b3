"""Differentiable Hankel singular values of DSS channels in torch (the Hankel nuclear-norm regulariser).

A channel is the diagonal SISO system ``(Lambda, B, C)`` (continuous route) or its zero-order hold
``(Lambda_bar, B_bar, C)`` with step dt (discrete route). Both Gramians are diagonal scalings of ONE Hermitian
Cauchy matrix G that depends on the poles only:

    discrete:    G_ij = 1 / (1 - x_i conj(x_j)),  x = Lambda_bar;   P = diag(B_bar) G diag(B_bar)^H,
                 Q = diag(conj C) conj(G) diag(C)
    continuous:  G_ij = -1 / (Lambda_i + conj(Lambda_j));           P = diag(B) G diag(B)^H, Q likewise with C

(the closed forms of ``gramians.py``). G is the Gram matrix of the Szego (resp. Cauchy) kernels of the poles, and
its Cholesky factor is known in closed form -- the Takenaka-Malmquist orthonormal basis evaluated at the poles:

    discrete:    L_ik = sqrt(1 - |x_k|^2) / (1 - conj(x_k) x_i) * prod_{j<k} (x_i - x_j) / (1 - conj(x_j) x_i)
    continuous:  L_ik = sqrt(-2 Re Lambda_k) / -(Lambda_i + conj(Lambda_k)) * prod_{j<k} (Lambda_i - Lambda_j)
                        / (Lambda_i + conj(Lambda_j))

(lower triangular: the factor j = i vanishes for k > i), so ``G = L L^H`` exactly. With ``Lp = diag(B_bar) L`` and
``Lq = diag(conj C) conj(L)`` the Hankel singular values are

    hsv = svdvals(Lq^H Lp) = svdvals(L^T diag(w) L),   w = C * B_bar (discrete) or C * B (continuous),

i.e. they depend on the poles and the residues w only. Why this route and not a numerical factorisation:

- no Cholesky of an ill-conditioned (often numerically singular) Gramian, hence no jitter and no bias: the values
  match scipy's Lyapunov/Stein solutions to round-off, also when HSVs decay over many decades;
- no ``eigh``, whose backward divides by eigenvalue gaps (infinite for the clustered zero eigenvalues of trained
  Gramians). L is a product of smooth factors, finite and differentiable also at repeated poles (L then has
  exactly zero columns) and for dead channels (B = 0 or C = 0 only make w zero);
- the only non-smooth step is ``svdvals``, whose backward for a function of the singular values alone is
  ``U diag(dS) V^H`` -- no division by singular-value gaps, finite for repeated and zero singular values. The
  nuclear norm sum(hsv) has gradient ``U V^H``, a subgradient where singular values are zero (the norm is not
  differentiable there, like |x| at 0).

Cost per channel: O(N^2) for L, one complex N x N matmul and one N x N SVD (with U, V when gradients are needed).
The SVD dominates; everything is batched over all channels of a layer.

Accuracy notes: ``1 - conj(x_j) x_i = -expm1(dtL_i + conj(dtL_j))`` and ``x_i - x_j = x_j expm1(dtL_i - dtL_j)``
(dtL = dt * Lambda; the complex expm1 is built from real expm1, cos and sin) keep full relative accuracy for
poles near the unit circle and for close poles.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

ROUTES = ("continuous", "discrete")


def cauchy_factor(Lambda: Tensor, dt: Tensor | None = None) -> Tensor:
    """Closed-form lower-triangular L with ``G = L L^H`` (G: the route's Cauchy matrix, module docstring).

    Lambda: complex (..., N) with Re < 0; dt: None (continuous G) or real (...,) (discrete G of exp(dt Lambda)).
    Returns complex (..., N, N), same dtype as Lambda; differentiable w.r.t. Lambda and dt.
    """
    if dt is None:
        # a = -Lambda in the right half plane: G_ik = 1 / (a_i + conj(a_k))
        invS = -1.0 / (Lambda.unsqueeze(-1) + Lambda.conj().unsqueeze(-2))  # (..., i, k): 1 / (a_i + conj(a_k))
        R = (Lambda.unsqueeze(-2) - Lambda.unsqueeze(-1)) * invS  # (..., i, j): (a_i - a_j) / (a_i + conj(a_j))
        F = torch.sqrt(-2.0 * Lambda.real).to(Lambda.dtype).unsqueeze(-2) * invS  # (..., i, k)
    else:
        z = Lambda * dt.unsqueeze(-1)  # dt Lambda = log x, (..., N)
        re, im = z.real, z.imag
        # expm1(a + ib) = (expm1(a) cos b - 2 sin(b/2)^2) + i exp(a) sin b, with b = Im(z_i - z_j) shared by
        # 1 - x_i conj(x_j) = -expm1(z_i + conj z_j) and x_i - x_j = x_j expm1(z_i - z_j)
        b = im.unsqueeze(-1) - im.unsqueeze(-2)  # (..., i, j)
        cos_b, sin_b, half = torch.cos(b), torch.sin(b), 2.0 * torch.sin(0.5 * b) ** 2
        a_sum = re.unsqueeze(-1) + re.unsqueeze(-2)
        a_diff = re.unsqueeze(-1) - re.unsqueeze(-2)
        invS = 1.0 / torch.complex(half - torch.expm1(a_sum) * cos_b, -torch.exp(a_sum) * sin_b)
        x_minus = torch.exp(z).unsqueeze(-2) * torch.complex(
            torch.expm1(a_diff) * cos_b - half, torch.exp(a_diff) * sin_b
        )  # x_i - x_j
        R = x_minus * invS
        F = torch.sqrt(-torch.expm1(2.0 * re)).to(Lambda.dtype).unsqueeze(-2) * invS
    return F * _exclusive_cumprod(R)


def _expm1(a: Tensor, b: Tensor) -> Tensor:
    """``expm1(a + ib)`` to full relative accuracy from real functions (torch's complex expm1 is ~30x slower here):
    ``Re = expm1(a) cos b - 2 sin(b/2)^2``, ``Im = exp(a) sin b``."""
    return torch.complex(torch.expm1(a) * torch.cos(b) - 2.0 * torch.sin(0.5 * b) ** 2, torch.exp(a) * torch.sin(b))


def _exclusive_cumprod(R: Tensor) -> Tensor:
    """``out[..., k] = prod_{j<k} R[..., j]`` by a log2(N)-step doubling scan of plain products.

    Not ``torch.cumprod``: its backward special-cases zero factors (exact zeros occur at repeated poles) with a slow
    masked path that dominated the regulariser's cost; products of products differentiate without any special case.
    """
    out = torch.cat([torch.ones_like(R[..., :1]), R[..., :-1]], dim=-1)
    d = 1
    while d < out.shape[-1]:
        out = torch.cat([out[..., :d], out[..., d:] * out[..., :-d]], dim=-1)
        d *= 2
    return out


def hankel_singular_values_torch(Lambda: Tensor, B: Tensor, C: Tensor, dt: Tensor | None = None) -> Tensor:
    """HSVs of every channel, descending, differentiable (module docstring).

    Lambda, B, C: complex (..., N), Re Lambda < 0; dt: None (continuous route) or real (...,) (discrete ZOH route).
    Returns real (..., N) in the real dtype matching Lambda's (float32 for complex64, float64 for complex128).
    """
    if not (Lambda.shape == B.shape == C.shape) or Lambda.ndim < 1:
        raise ValueError(
            f"Lambda, B, C must have one shape (..., N); got {tuple(Lambda.shape)}, {tuple(B.shape)}, {tuple(C.shape)}"
        )
    if dt is None:
        w = C * B
    else:
        dt = torch.as_tensor(dt, device=Lambda.device).to(Lambda.real.dtype).expand(Lambda.shape[:-1])
        z = Lambda * dt.unsqueeze(-1)
        w = C * (_expm1(z.real, z.imag) / Lambda * B)  # C * B_bar
    L = cauchy_factor(Lambda, dt)  # (..., N, N)
    M = (L.mT * w.unsqueeze(-2)) @ L  # L^T diag(w) L, complex symmetric (..., N, N)
    return torch.linalg.svdvals(M)


def layer_params(layer, route: str = "discrete", dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """Differentiable ``Lambda, B, C`` (n_dir, H, N) and ``dt`` (n_dir, H) (None on the continuous route) of a DSS
    layer, built from its parameters (not the detached ``ss_params``). ``dtype``: torch.float64 computes in
    complex128, None keeps the parameters' precision."""
    if route not in ROUTES:
        raise ValueError(f"unknown Gramian route {route!r}; choose one of {list(ROUTES)}")
    real = dtype or layer.Lambda_im.dtype
    Lambda = torch.complex(-torch.exp(layer.Lambda_log_neg_re.to(real)), layer.Lambda_im.to(real))
    B = torch.view_as_complex(layer.B.to(real).contiguous())
    C = torch.view_as_complex(layer.C.to(real).contiguous())
    dt = None if route == "continuous" else torch.exp(layer.log_dt.to(real)).expand(Lambda.shape[:-1])
    return {"Lambda": Lambda, "B": B, "C": C, "dt": dt}


def hsv_sum(layer_or_params, route: str = "discrete", dtype: torch.dtype | None = None) -> Tensor:
    """The Hankel nuclear norm: sum of the HSVs of every channel (and direction) of every layer. Scalar tensor.

    ``layer_or_params``: an ``S4Model`` (all its DSS layers), a ``DSS`` layer, or a mapping with complex tensors
    Lambda, B, C (..., N) and, for the discrete route, real dt (...,). ``route``: "discrete" (the ZOH system the
    layer runs) or "continuous". ``dtype``: see ``layer_params``. The regulariser is ``weight * hsv_sum(model)``;
    use ``hankel_penalty`` to skip the computation when the weight is 0.
    """
    if route not in ROUTES:
        raise ValueError(f"unknown Gramian route {route!r}; choose one of {list(ROUTES)}")
    if isinstance(layer_or_params, Mapping):
        p = layer_or_params
        missing = [k for k in ("Lambda", "B", "C") + (("dt",) if route == "discrete" else ()) if p.get(k) is None]
        if missing:
            raise ValueError(f"hsv_sum: parameters lack {missing} (route {route!r})")
        dt = None if route == "continuous" else torch.as_tensor(p["dt"])
        return hankel_singular_values_torch(p["Lambda"], p["B"], p["C"], dt).sum()
    layers = layer_or_params.dss_layers() if hasattr(layer_or_params, "dss_layers") else [layer_or_params]
    total = None
    for layer in layers:
        s = hsv_sum(layer_params(layer, route, dtype), route)
        total = s if total is None else total + s
    return total


def hankel_penalty(model, weight: float, route: str = "discrete", dtype: torch.dtype | None = None) -> Tensor:
    """``weight * hsv_sum(model)``; for weight == 0 an exact zero without a graph (no cost, no gradient at all).

    The result has the real dtype of the parameters (the sum is cast back when ``dtype`` differs), so adding it to a
    float32 loss keeps the loss float32.
    """
    if not (isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight >= 0):
        raise ValueError(f"Hankel penalty weight must be a number >= 0, got {weight!r}")
    p = next(iter(model.parameters()))
    if weight == 0:
        return torch.zeros((), dtype=p.dtype, device=p.device)
    with torch.autocast(device_type=p.device.type, enabled=False):  # no reduced precision for the SVDs under amp
        return (weight * hsv_sum(model, route, dtype)).to(p.dtype)


__all__ = ["ROUTES", "cauchy_factor", "hankel_singular_values_torch", "layer_params", "hsv_sum", "hankel_penalty"]
