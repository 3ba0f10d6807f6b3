"""Post-training weight quantisation of an exported step: per-channel symmetric int8 / int16 linear maps.

Weight-only: the linear maps (encoder, each block's output linear, decoder) are stored as integers with one float32
scale per output channel (per row; for an embedding table, per token row)

    s_k = max_j |W_kj| / (2^(b-1) - 1)   (1 where the row is zero),   Q_kj = round(W_kj / s_k)  in [-(2^(b-1)-1), ...]

and the step computes with ``Q * s`` in float32 (activations stay float32, so no activation ranges are calibrated:
the calibration on the train split is the choice of precision for the SSM parameters and state, ``ssm_rounding``).
The diagonal systems' parameters (Lambda_bar, B_bar, C, D), the norms and the biases stay float32 unless
``ssm="fp16"``, which rounds Lambda_bar, B_bar, C and D to float16 (stored as float16 in the graph, cast back).

``WEIGHTS``: the weight precisions; ``model_bytes`` the bytes a deployed model stores (integers, scales and every
float parameter at its precision).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .stream import StepParams

WEIGHTS = {"fp32": None, "int16": 16, "int8": 8}
SSM_PRECISIONS = ("fp32", "fp16")


def check_precision(weights: str, ssm: str = "fp32") -> None:
    """ValueError naming the value unless ``weights`` is in WEIGHTS and ``ssm`` in SSM_PRECISIONS."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights precision {weights!r} is not one of {list(WEIGHTS)}")
    if ssm not in SSM_PRECISIONS:
        raise ValueError(f"SSM precision {ssm!r} is not one of {list(SSM_PRECISIONS)}")


def quantise_rows(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric quantisation. w: (K, J) float -> (Q (K, J) int8 | int16, scale float32 (K,))."""
    qmax = 2 ** (bits - 1) - 1
    w = np.asarray(w, np.float64)
    amax = np.abs(w).max(axis=1)  # (K,)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)  # (K,)
    q = np.clip(np.rint(w / scale[:, None].astype(np.float64)), -qmax, qmax)  # (K, J)
    return q.astype(np.int8 if bits == 8 else np.int16), scale


def dequantised(w: np.ndarray, bits: int | None) -> np.ndarray:
    """What the quantised step multiplies with: float32 ``Q * s`` (K, J), or ``w`` in float32 when bits is None."""
    if bits is None:
        return np.asarray(w, np.float32)
    q, s = quantise_rows(w, bits)
    return q.astype(np.float32) * s[:, None]


def ssm_rounding(p: StepParams, ssm: str) -> StepParams:
    """``p`` with each layer's Lambda_bar, B_bar, C (real and imaginary parts) and D rounded to ``ssm`` precision."""
    if ssm == "fp32":
        return p

    def r(a: np.ndarray) -> np.ndarray:
        if np.iscomplexobj(a):
            return a.real.astype(np.float16).astype(np.float64) + 1j * a.imag.astype(np.float16).astype(np.float64)
        return a.astype(np.float16).astype(np.float64)

    layers = [
        replace(lay, Lambda_bar=r(lay.Lambda_bar), B_bar=r(lay.B_bar), C=r(lay.C), D=r(lay.D)) for lay in p.layers
    ]
    return replace(p, layers=layers)


def model_bytes(p: StepParams, weights: str, ssm: str = "fp32") -> int:
    """Bytes of the deployed parameters: quantised linear maps (integers + float32 scale per row, float32 biases),
    SSM parameters at ``ssm`` precision (Lambda_bar, B_bar, C as real pairs, D), norms in float32."""
    check_precision(weights, ssm)
    bits = WEIGHTS[weights]
    wb = 4 if bits is None else bits // 8

    def lin(w: np.ndarray, b: np.ndarray | None) -> int:
        n = w.size * wb + (0 if bits is None else 4 * w.shape[0])
        return n + (0 if b is None else 4 * b.size)

    sb = 4 if ssm == "fp32" else 2
    total = lin(p.enc_weight, p.enc_bias) + lin(p.dec_weight, p.dec_bias)
    for lay in p.layers:
        total += lin(lay.out_weight, lay.out_bias)
        total += sb * (6 * lay.Lambda_bar.size + lay.D.size) + 4 * (lay.norm.weight.size + lay.norm.bias.size)
    if p.final_norm is not None:
        total += 4 * (p.final_norm.weight.size + p.final_norm.bias.size)
    return int(total)


STATE_PRECISIONS = ("fp32", "fp16", "int16")


def _round_state(x: np.ndarray, state: str, scale: np.ndarray | None) -> np.ndarray:
    """x complex (B, H, N) rounded to ``state``: fp16 parts, or int16 parts on the calibrated ``scale`` (H, N),
    saturating beyond it."""
    if state == "fp32":
        return x
    if state == "fp16":
        return x.real.astype(np.float16).astype(np.float64) + 1j * x.imag.astype(np.float16).astype(np.float64)

    def q(a: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(a / scale), -32767, 32767) * scale

    return q(x.real) + 1j * q(x.imag)


def simulate(
    p: StepParams,
    x: np.ndarray,
    lengths: np.ndarray | None = None,
    weights: str = "fp32",
    ssm: str = "fp32",
    state: str = "fp32",
    state_scales: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run the step over whole sequences in numpy with the linear maps at ``weights``, the SSM parameters at ``ssm``
    and the state rounded to ``state`` after every update (int16: per-mode scales ``state_scales[i]`` (H, N_i),
    from ``state_calibration`` on the train split). The measurement tool for precisions that the exported graph does
    not store (fp16 / int16 state). x: (B, L) ids or (B, L) pixels (d_input 1) or (B, L, d_input).
    Returns (logits after each sequence's last step (B, d_output), per layer the largest |Re|, |Im| of the state
    over batch and time (H, N_i))."""
    check_precision(weights, ssm)
    if state not in STATE_PRECISIONS:
        raise ValueError(f"state precision {state!r} is not one of {list(STATE_PRECISIONS)}")
    if state == "int16" and state_scales is None:
        raise ValueError("state precision int16 needs state_scales (state_calibration on the train split)")
    from scipy.special import erf

    bits = WEIGHTS[weights]
    p = ssm_rounding(p, ssm)
    B, L = x.shape[:2]
    lengths = np.full(B, L) if lengths is None else np.asarray(lengths)
    enc = dequantised(p.enc_weight, bits).astype(np.float64)  # (V, H) | (H, d_input)
    outs = [dequantised(lay.out_weight, bits).astype(np.float64) for lay in p.layers]
    dec = dequantised(p.dec_weight, bits).astype(np.float64)
    xs = [np.zeros((B, p.H, lay.N), complex) for lay in p.layers]
    peak = [np.zeros((p.H, lay.N)) for lay in p.layers]
    pool = np.zeros((B, p.H))
    final = np.zeros((B, p.d_output))

    def norm(n, h):
        if n.kind == "layer":
            mu = h.mean(-1, keepdims=True)
            return (h - mu) / np.sqrt(((h - mu) ** 2).mean(-1, keepdims=True) + n.eps) * n.weight + n.bias
        return h * n.weight + n.bias

    for t in range(int(lengths.max())):
        if p.encoder == "embedding":
            h = enc[x[:, t]]  # (B, H)
        else:
            h = np.asarray(x[:, t], np.float64).reshape(B, -1) @ enc.T + p.enc_bias
        for i, lay in enumerate(p.layers):
            z = norm(lay.norm, h) if p.prenorm else h
            xs[i] = lay.Lambda_bar * xs[i] + lay.B_bar * z[..., None]  # (B, H, N)
            live = (t < lengths)[:, None, None]
            peak[i] = np.maximum(peak[i], np.where(live, np.maximum(abs(xs[i].real), abs(xs[i].imag)), 0).max(0))
            xs[i] = _round_state(xs[i], state, None if state_scales is None else state_scales[i])
            y = (lay.C * xs[i]).real.sum(-1) + lay.D * z  # (B, H)
            if p.activation == "gelu_tanh":
                y = 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y**3)))
            else:
                y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
            o = y @ outs[i].T + lay.out_bias
            h = h + (o[:, : p.H] / (1 + np.exp(-o[:, p.H :])) if lay.glu else o)
            if not p.prenorm:
                h = norm(lay.norm, h)
        if p.final_norm is not None:
            h = norm(p.final_norm, h)
        if p.pool == "mean":
            pool += h
            h = pool / (t + 1)
        logits = h @ dec.T + p.dec_bias
        done = lengths == t + 1
        final[done] = logits[done]
    return final, peak


def state_calibration(p: StepParams, x: np.ndarray, lengths: np.ndarray | None = None, **kw) -> list[np.ndarray]:
    """Per layer the int16 state scale (H, N_i): the largest |Re| or |Im| of each mode over the (train) sequences
    ``x`` divided by 32767 (1 where the mode never moves)."""
    _, peak = simulate(p, x, lengths, **kw)
    return [np.where(m > 0, m / 32767, 1.0) for m in peak]
