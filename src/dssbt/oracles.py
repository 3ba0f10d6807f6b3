"""Slow, independent references shared by the tests and the benchmarks: dense real realizations simulated with
scipy's expm, transfer functions evaluated pointwise, and the real 2-input 2-output view a control library takes of a
complex channel. Nothing here is used by the pipeline itself."""

from __future__ import annotations

import numpy as np
from scipy.linalg import expm


def real_realization(Lambda: np.ndarray, B: np.ndarray, C: np.ndarray):
    """Real 2N-state realization of ``y = Re(C x)``, ``x' = diag(Lambda) x + B u`` (u real). Returns A, b, c."""
    Lr, Li = np.diag(Lambda.real), np.diag(Lambda.imag)
    A = np.block([[Lr, -Li], [Li, Lr]])
    b = np.concatenate([B.real, B.imag])
    c = np.concatenate([C.real, -C.imag])
    return A, b, c


def simulate_dense(Lambda, B, C, D, dt, u: np.ndarray) -> np.ndarray:
    """One channel, causal: ZOH of the dense real realization by expm, then the recurrence. u (L,) -> y (L,)."""
    A, b, c = real_realization(np.asarray(Lambda), np.asarray(B), np.asarray(C))
    n = A.shape[0]
    M = np.zeros((n + 1, n + 1))
    M[:n, :n], M[:n, n] = A, b
    E = expm(M * dt)
    Ad, bd = E[:n, :n], E[:n, n]
    x = np.zeros(n)
    y = np.empty(len(u))
    for t, ut in enumerate(u):
        x = Ad @ x + bd * ut
        y[t] = c @ x + D * ut
    return y


def transfer(Lambda: np.ndarray, B: np.ndarray, C: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``G(s) = sum_n C_n B_n / (s - Lambda_n)`` for systems (..., N) at points s (S,). Returns (..., S)."""
    return (C[..., None, :] * B[..., None, :] / (s[:, None] - Lambda[..., None, :])).sum(-1)


def real_mimo(Lambda: np.ndarray, B: np.ndarray, C: np.ndarray):
    """The complex SISO channel (N,) as a real 2-input 2-output python-control system of order 2N:
    [Re y, Im y] from [Re u, Im u] (the library's view of it). Needs python-control (the bench/test extra)."""
    import control

    Lr, Li = np.diag(Lambda.real), np.diag(Lambda.imag)
    A = np.block([[Lr, -Li], [Li, Lr]])
    BR = np.block([[B.real[:, None], -B.imag[:, None]], [B.imag[:, None], B.real[:, None]]])
    CR = np.block([[C.real[None], -C.imag[None]], [C.imag[None], C.real[None]]])
    return control.ss(A, BR, CR, np.zeros((2, 2)))


def embed(Lambda: np.ndarray, B: np.ndarray, C: np.ndarray, s: complex) -> np.ndarray:
    """2x2 real embedding of one channel's G at s, [[Gr, -Gi], [Gi, Gr]] with Gr = (G + G~)/2, Gi = (G - G~)/2i
    (what the real MIMO system of ``real_mimo`` computes)."""
    G = transfer(Lambda, B, C, np.array([s]))[0]
    Gt = np.conj(transfer(Lambda, B, C, np.array([np.conj(s)]))[0])
    Gr, Gi = (G + Gt) / 2, (G - Gt) / 2j
    return np.array([[Gr, -Gi], [Gi, Gr]])


def random_stable(rng: np.random.Generator, shape: tuple[int, ...], N: int, im_scale: float = 5.0):
    """Random stable diagonal systems (..., N): Re Lambda in [-1, -0.05], Im in [-im_scale, im_scale]."""
    Lambda = -rng.uniform(0.05, 1.0, shape + (N,)) + 1j * rng.uniform(-im_scale, im_scale, shape + (N,))
    B = rng.normal(size=shape + (N,)) + 1j * rng.normal(size=shape + (N,))
    C = rng.normal(size=shape + (N,)) + 1j * rng.normal(size=shape + (N,))
    return Lambda, B, C


def trained_like_channel(N: int = 64):
    """One channel (1, N) whose HSVs decay over ~14 decades, as after training: slow to fast poles, output weights
    from 1 down to 1e-14. Returns Lambda, B, C."""
    rng = np.random.default_rng(7)
    Lambda = -np.logspace(-3, 1, N) + 1j * rng.uniform(0, 50, N)
    B = np.ones(N, complex)
    C = np.logspace(0, -14, N) * np.exp(1j * rng.uniform(0, 2 * np.pi, N))
    return Lambda[None], B[None], C[None]


def run_recording_dss_io(model, x):
    """``model(x)`` without gradients, recording each DSS layer's input and output (B, H, L), keyed by layer index.
    Returns (logits, inputs, outputs)."""
    import torch

    inputs, outputs = {}, {}

    def keep(k):
        def hook(module, args, out):
            inputs[k], outputs[k] = args[0], out

        return hook

    hooks = [layer.register_forward_hook(keep(k)) for k, layer in enumerate(model.dss_layers())]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return logits, inputs, outputs
