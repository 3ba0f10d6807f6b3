"""Export a unidirectional model's recurrent step as one self-contained C99 source and header (``model.c``, ``model.h``).

The same step as the ONNX graph (``dssbt.deploy.export``; parameters from ``real_step_params``, float32), written
as plain C: every parameter a ``static const`` array (flash), the state one caller-owned float array (RAM), scratch
on the stack (a few arrays of H or 2H floats), no allocation, no library beyond libm (``expf``, ``tanhf``, ``erff``,
``sqrtf``). The API (``model.h``):

    #define DSSBT_STATE_FLOATS ...       floats of state per sequence
    void dssbt_reset(float *state);                                  zero state
    int  dssbt_step(float *state, long token, float *logits);        token tasks: 0, or -1 for an id out of range
    int  dssbt_step(float *state, const float *x, float *logits);    pixel tasks: x has DSSBT_D_INPUT floats

State layout: per layer i, the real parts (H, N_i) then the imaginary parts (H, N_i) of the complex modes, row-major
as in the ONNX graph; then, for mean pooling, the running sum (H) and the count (1).

Linear maps in ``weights="int8"`` / ``"int16"`` are stored as integers with one float scale per output row
(``dssbt.deploy.quant.quantise_rows``) and computed as ``(sum_j Q_kj x_j) s_k + b_k`` with a float accumulator.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..model import S4Model
from .quant import WEIGHTS, check_precision, quantise_rows
from .stream import NormParams, StepParams, real_step_params

CTYPES = {np.float32: "float", np.int8: "int8_t", np.int16: "int16_t"}


class _Source:
    """Collects const arrays (and their bytes) and the body lines."""

    def __init__(self) -> None:
        self.arrays: list[str] = []
        self.flash = 0

    def array(self, name: str, a: np.ndarray, dtype: type = np.float32) -> str:
        a = np.ascontiguousarray(np.asarray(a), dtype=dtype).ravel()
        if dtype is np.float32:
            vals = [f"{float(v):.9e}f" for v in a]
        else:
            vals = [str(int(v)) for v in a]
        rows = [", ".join(vals[k : k + 8]) for k in range(0, len(vals), 8)]
        body = ",\n    ".join(rows)
        self.arrays.append(f"static const {CTYPES[dtype]} {name}[{max(len(vals), 1)}] = {{\n    {body}\n}};")
        self.flash += a.nbytes
        return name


def _linear(src: _Source, name: str, w: np.ndarray, b: np.ndarray | None, weights: str) -> str:
    """Arrays of one linear map and the C expression that applies it: ``linear_*(..., x, y)``."""
    K, J = w.shape
    bias = src.array(f"{name}_b", b) if b is not None else "0"
    bits = WEIGHTS[weights]
    if bits is None:
        wn = src.array(f"{name}_w", w)
        return f"linear_f32({wn}, {bias}, {K}, {J}"
    q, s = quantise_rows(w, bits)
    wn = src.array(f"{name}_q", q, q.dtype.type)
    sn = src.array(f"{name}_s", s)
    return f"linear_i{bits}({wn}, {sn}, {bias}, {K}, {J}"


def _norm(src: _Source, name: str, n: NormParams, H: int) -> str:
    w, b = src.array(f"{name}_w", n.weight), src.array(f"{name}_b", n.bias)
    if n.kind == "layer":
        return f"layer_norm(h, {w}, {b}, {float(n.eps):.9e}f, {H});"
    return f"affine(h, {w}, {b}, {H});"


HELPERS = r"""
static void linear_f32(const float *w, const float *b, int K, int J, const float *x, float *y) {
    for (int k = 0; k < K; ++k) {
        float acc = 0.0f;
        for (int j = 0; j < J; ++j) acc += w[k * J + j] * x[j];
        y[k] = acc + (b ? b[k] : 0.0f);
    }
}
@@
static void linear_i8(const int8_t *q, const float *s, const float *b, int K, int J, const float *x, float *y) {
    for (int k = 0; k < K; ++k) {
        float acc = 0.0f;
        for (int j = 0; j < J; ++j) acc += (float)q[k * J + j] * x[j];
        y[k] = acc * s[k] + (b ? b[k] : 0.0f);
    }
}
@@
static void linear_i16(const int16_t *q, const float *s, const float *b, int K, int J, const float *x, float *y) {
    for (int k = 0; k < K; ++k) {
        float acc = 0.0f;
        for (int j = 0; j < J; ++j) acc += (float)q[k * J + j] * x[j];
        y[k] = acc * s[k] + (b ? b[k] : 0.0f);
    }
}
@@
static void layer_norm(float *x, const float *w, const float *b, float eps, int H) {
    float mean = 0.0f, var = 0.0f;
    for (int k = 0; k < H; ++k) mean += x[k];
    mean /= (float)H;
    for (int k = 0; k < H; ++k) var += (x[k] - mean) * (x[k] - mean);
    var /= (float)H;
    const float inv = 1.0f / sqrtf(var + eps);
    for (int k = 0; k < H; ++k) x[k] = (x[k] - mean) * inv * w[k] + b[k];
}
@@
static void affine(float *x, const float *w, const float *b, int H) {
    for (int k = 0; k < H; ++k) x[k] = x[k] * w[k] + b[k];
}
@@
static float act(float x) {
#ifdef DSSBT_GELU_TANH
    return 0.5f * x * (1.0f + tanhf(0.7978845608f * (x + 0.044715f * x * x * x)));
#else
    return 0.5f * x * (1.0f + erff(x * 0.70710678118f));
#endif
}

/* one layer's diagonal systems: x <- Lambda_bar x + B_bar u, y = sum_n Re(C_n x_n) + D u, per channel */
static void ssm(float *xr, float *xi, const float *ar, const float *ai, const float *br, const float *bi,
                const float *cr, const float *ci, const float *D, int H, int N, const float *u, float *y) {
    for (int h = 0; h < H; ++h) {
        float acc = 0.0f;
        for (int n = 0; n < N; ++n) {
            const int k = h * N + n;
            const float r = ar[k] * xr[k] - ai[k] * xi[k] + br[k] * u[h];
            const float i = ai[k] * xr[k] + ar[k] * xi[k] + bi[k] * u[h];
            xr[k] = r;
            xi[k] = i;
            acc += cr[k] * r - ci[k] * i;
        }
        y[h] = act(acc + D[h] * u[h]);
    }
}
"""


def _used_helpers(body: str) -> list[str]:
    """The pieces of HELPERS (split at ``@@``) whose function the body calls (ssm and act always)."""
    out = []
    for piece in HELPERS.split("@@"):
        name = piece.split("static void ", 1)[1].split("(", 1)[0] if "static void " in piece else None
        if name in (None, "ssm") or f"{name}(" in body:
            out.append(piece)
    return out


def c_sources(p: StepParams, weights: str = "fp32", header_name: str = "model.h") -> tuple[str, str, dict[str, Any]]:
    """(model.c, model.h, info) for the step ``p``; info: flash_bytes (const arrays), ram_bytes (state per sequence),
    stack_bytes (scratch floats of one step), state_floats, layer_orders."""
    check_precision(weights)
    H, src, body = p.H, _Source(), []
    tokens = p.encoder == "embedding"
    if tokens:
        V = p.enc_weight.shape[0]
        bits = WEIGHTS[weights]
        body.append(f"    if (token < 0 || token >= {V}) return -1;")
        if bits is None:
            e = src.array("enc_w", p.enc_weight)
            body.append(f"    for (int k = 0; k < {H}; ++k) h[k] = {e}[token * {H} + k];")
        else:
            q, s = quantise_rows(p.enc_weight, bits)
            e, es = src.array("enc_q", q, q.dtype.type), src.array("enc_s", s)
            body.append(f"    for (int k = 0; k < {H}; ++k) h[k] = (float){e}[token * {H} + k] * {es}[token];")
    else:
        call = _linear(src, "enc", p.enc_weight, p.enc_bias, weights)
        body.append(f"    {call}, x, h);")
    off = 0
    for i, lay in enumerate(p.layers):
        N, pre = lay.N, f"l{i}"
        body.append(f"    /* layer {i}: {N} complex modes per channel */")
        body.append(f"    for (int k = 0; k < {H}; ++k) z[k] = h[k];")
        if p.prenorm:
            body.append("    " + _norm(src, f"{pre}_norm", lay.norm, H).replace("(h,", "(z,"))
        names = []
        for part, a in (
            ("ar", lay.Lambda_bar.real),
            ("ai", lay.Lambda_bar.imag),
            ("br", lay.B_bar.real),
            ("bi", lay.B_bar.imag),
            ("cr", lay.C.real),
            ("ci", lay.C.imag),
        ):
            names.append(src.array(f"{pre}_{part}", a))
        d = src.array(f"{pre}_D", lay.D)
        body.append(f"    ssm(state + {off}, state + {off + H * N}, {', '.join(names)}, {d}, {H}, {N}, z, y);")
        off += 2 * H * N
        call = _linear(src, f"{pre}_out", lay.out_weight, lay.out_bias, weights)
        body.append(f"    {call}, y, o);")
        if lay.glu:
            body.append(f"    for (int k = 0; k < {H}; ++k) h[k] += o[k] / (1.0f + expf(-o[k + {H}]));")
        else:
            body.append(f"    for (int k = 0; k < {H}; ++k) h[k] += o[k];")
        if not p.prenorm:
            body.append("    " + _norm(src, f"{pre}_norm", lay.norm, H))
    if p.final_norm is not None:
        body.append("    " + _norm(src, "final_norm", p.final_norm, H))
    if p.pool == "mean":
        body.append(f"    float *sum = state + {off}, *count = state + {off + H};")
        body.append("    *count += 1.0f;")
        body.append(f"    for (int k = 0; k < {H}; ++k) {{ sum[k] += h[k]; h[k] = sum[k] / *count; }}")
        off += H + 1
    call = _linear(src, "dec", p.dec_weight, p.dec_bias, weights)
    body.append(f"    {call}, h, logits);")
    body.append("    return 0;")
    state_floats = off
    h_out = max(lay.out_weight.shape[0] for lay in p.layers) if p.layers else H
    sig = "long token" if tokens else "const float *x"
    guard = "DSSBT_MODEL_H"
    header = "\n".join(
        [
            "/* generated by dssbt export --format c: one recurrent step of an S4 model with DSS layers (C99, libm) */",
            f"#ifndef {guard}",
            f"#define {guard}",
            f"#define DSSBT_H {H}",
            f"#define DSSBT_N_LAYERS {len(p.layers)}",
            f"#define DSSBT_STATE_FLOATS {state_floats}",
            f"#define DSSBT_N_CLASSES {p.d_output}",
            f"#define DSSBT_D_INPUT {p.d_input}",
            f"#define DSSBT_TOKENS {1 if tokens else 0}",
            f"#define DSSBT_FLASH_BYTES {src.flash}",
            "/* zero the state of one sequence (DSSBT_STATE_FLOATS floats, owned by the caller) */",
            "void dssbt_reset(float *state);",
            "/* one step: update the state with one input, write DSSBT_N_CLASSES logits; 0, or -1 for a bad token */",
            f"int dssbt_step(float *state, {sig}, float *logits);",
            "#endif",
            "",
        ]
    )
    gelu = "#define DSSBT_GELU_TANH\n" if p.activation == "gelu_tanh" else ""
    source = "\n".join(
        [
            "/* generated by dssbt export --format c (weights: " + weights + "); do not edit */",
            "#include <math.h>",
            "#include <stdint.h>",
            f'#include "{header_name}"',
            gelu,
            *src.arrays,
            *_used_helpers("\n".join(body)),
            "void dssbt_reset(float *state) {",
            f"    for (int k = 0; k < {state_floats}; ++k) state[k] = 0.0f;",
            "}",
            "",
            f"int dssbt_step(float *state, {sig}, float *logits) {{",
            f"    float h[{H}], z[{H}], y[{H}], o[{h_out}];",
            *body,
            "}",
            "",
        ]
    )
    info = {
        "flash_bytes": src.flash,
        "ram_bytes": 4 * state_floats,
        "stack_bytes": 4 * (3 * H + h_out),
        "state_floats": state_floats,
        "layer_orders": p.orders_by_layer(),
        "weights": weights,
    }
    return source, header, info


def export_c(model: S4Model, out_dir: str | os.PathLike, weights: str = "fp32") -> dict[str, Any]:
    """Write ``out_dir/model.c`` and ``out_dir/model.h`` (see the module docstring). Returns the info of
    ``c_sources`` plus the paths. ValueError for a bidirectional or dual model (``real_step_params``)."""
    check_precision(weights)
    p = real_step_params(model.eval())
    source, header, info = c_sources(p, weights)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.h").write_text(header)
    (out / "model.c").write_text(source)
    info.update(c=str(out / "model.c"), h=str(out / "model.h"))
    return info
