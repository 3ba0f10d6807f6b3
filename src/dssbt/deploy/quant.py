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
