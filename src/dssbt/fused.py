"""Fused CPU kernels for a block's elementwise work: two compiled C passes where eager PyTorch takes six or more.

A block's training step streams its (B, L, H) activations through memory once per elementwise op; at the
pipeline's sizes (B*L = 51,200 rows of H = 32) each op is a pass over 6.5 MB, and these passes, not the FFTs and
matmuls, dominate the step. Two kernels replace them, each a single pass in each direction:

  layer norm to channel-major   z[h, m] = (x[m, h] - mu_m) * rstd_m * w_h + b_h,   x: (M, H) rows, z: (H, M)
      mu_m, rstd_m = 1 / sqrt(var_m + eps): mean and biased variance of row m (two passes over the row, as
      torch's layer norm). Replaces the layer norm and the transpose copy to channel-major (and their backwards):
      rows are read in tiles of 64, normalised and written out channel by channel. Backward, with x_hat the
      normalised row and g_w = dL/dz * w:
          dx = rstd * (g_w - mean_h(g_w) - x_hat * mean_h(g_w * x_hat)),  dw = sum_m dL/dz x_hat,  db = sum_m dL/dz
  GLU + residual                out = x + (a + b_a) * sigmoid(b + b_b)
      a, b: the output map's two halves without their bias (``linear_from_channel_major(bias=False)``), so the
      bias add, the GLU and the residual add are one pass. Backward: da = g s, db = g (a + b_a) s^2 e^{-(b + b_b)}
      (that is g (a + b_a) s (1 - s) without the cancellation of 1 - s), the bias gradients their sums over rows.

Numerics. float64: libm's exp; the same results as the torch ops to rounding (tests compare both, and the whole
step against the reference path, at 1e-10). float32: exp is a vectorisable range reduction + degree-7 Taylor
polynomial (truncation error < 1e-8 relative, below float32's 6e-8 rounding), sums run in a fixed order; results
differ from torch's float32 ops by rounding only, but they do differ: a run with these kernels is not bit-equal to
one without. Compiled with -std=c99 (no FMA contraction, no fast-math), so a machine computes the same bits every
time; the gradient sums over rows accumulate in float64.

Which kernels run is ``optim.kernels`` (``kernels(mode)`` around a job): ``auto`` (the default: these where a C
compiler works, on CPU, float32/float64), ``c`` (these, or an error saying why not) or ``torch`` (never). They are
single-threaded: with more torch threads the rest of the step speeds up, these do not. CUDA tensors always take
the torch ops. The library is built on first use by ``dssbt.cbuild`` (about a second; cached).
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

import torch
from torch import Tensor

from .cbuild import build
from .hparams import KERNELS as MODES

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#define TILE 64

/* exp for float32, vectorisable: x = n ln2 + r, |r| <= ln2 / 2 (ln2 split in two for an exact n ln2_hi), exp(r)
   by its Taylor polynomial of degree 7 (truncation < 1e-8 relative), 2^n from the exponent bits. */
static inline float exp_f32(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float n = floorf(x * 1.44269504088896341f + 0.5f);
    const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { int32_t i; float f; } scale;  /* 2^n: n + 127 in the exponent bits */
    scale.i = ((int32_t)n + 127) << 23;
    return p * scale.f;
}
static inline double exp_f64(double x) { return exp(x); }

#define KERNELS(SFX, T, SQRT, EXP)                                                                             \
/* x: (M, H) rows -> z: (H, M); mean, rstd: (M,) */                                                            \
int ln_cm_fwd_##SFX(long M, long H, const T *restrict x, const T *restrict w, const T *restrict b, T eps,    \
                    T *restrict z, T *restrict mean, T *restrict rstd) {                                      \
    T *xt = malloc(sizeof(T) * (H * TILE + 2 * TILE));                                                         \
    if (!xt) return 1;                                                                                         \
    T *mu = xt + H * TILE, *rs = mu + TILE;                                                                    \
    for (long m0 = 0; m0 < M; m0 += TILE) {                                                                    \
        const long nt = M - m0 < TILE ? M - m0 : TILE;                                                         \
        for (long t = 0; t < nt; ++t)                                                                          \
            for (long h = 0; h < H; ++h) xt[h * TILE + t] = x[(m0 + t) * H + h];                               \
        for (long t = 0; t < nt; ++t) mu[t] = 0;                                                               \
        for (long h = 0; h < H; ++h)                                                                           \
            for (long t = 0; t < nt; ++t) mu[t] += xt[h * TILE + t];                                           \
        for (long t = 0; t < nt; ++t) { mu[t] = mu[t] / H; rs[t] = 0; }                                        \
        for (long h = 0; h < H; ++h)                                                                           \
            for (long t = 0; t < nt; ++t) { const T d = xt[h * TILE + t] - mu[t]; rs[t] += d * d; }           \
        for (long t = 0; t < nt; ++t) {                                                                        \
            rs[t] = 1 / SQRT(rs[t] / H + eps);                                                                 \
            mean[m0 + t] = mu[t];                                                                              \
            rstd[m0 + t] = rs[t];                                                                              \
        }                                                                                                      \
        for (long h = 0; h < H; ++h) {                                                                         \
            T *restrict zr = z + h * M + m0;                                                                   \
            const T wh = w[h], bh = b[h];                                                                      \
            for (long t = 0; t < nt; ++t) zr[t] = (xt[h * TILE + t] - mu[t]) * rs[t] * wh + bh;               \
        }                                                                                                      \
    }                                                                                                          \
    free(xt);                                                                                                  \
    return 0;                                                                                                  \
}                                                                                                              \
/* g: dL/dz (H, M); x, mean, rstd as saved -> dx (M, H); dw, db (H,) float64 */                                \
int ln_cm_bwd_##SFX(long M, long H, const T *restrict g, const T *restrict x, const T *restrict w,          \
                    const T *restrict mean, const T *restrict rstd, T *restrict dx, double *restrict dw,       \
                    double *restrict db) {                                                                     \
    T *xh = malloc(sizeof(T) * (2 * H * TILE + 2 * TILE));                                                     \
    double *acc = malloc(sizeof(double) * 2 * H * TILE);                                                       \
    if (!xh || !acc) { free(xh); free(acc); return 1; }                                                        \
    T *gw = xh + H * TILE, *c1 = gw + H * TILE, *c2 = c1 + TILE;                                               \
    double *aw = acc, *ab = acc + H * TILE;                                                                    \
    for (long i = 0; i < 2 * H * TILE; ++i) acc[i] = 0;                                                        \
    for (long m0 = 0; m0 < M; m0 += TILE) {                                                                    \
        const long nt = M - m0 < TILE ? M - m0 : TILE;                                                         \
        const T *restrict mu = mean + m0, *restrict rs = rstd + m0;                                            \
        for (long t = 0; t < nt; ++t)                                                                          \
            for (long h = 0; h < H; ++h) xh[h * TILE + t] = x[(m0 + t) * H + h];                               \
        for (long t = 0; t < nt; ++t) { c1[t] = 0; c2[t] = 0; }                                                \
        for (long h = 0; h < H; ++h) {                                                                         \
            const T *restrict gr = g + h * M + m0;                                                             \
            T *restrict xr = xh + h * TILE, *restrict qr = gw + h * TILE;                                      \
            double *restrict awr = aw + h * TILE, *restrict abr = ab + h * TILE;                               \
            const T wh = w[h];                                                                                 \
            for (long t = 0; t < nt; ++t) {                                                                    \
                const T xv = (xr[t] - mu[t]) * rs[t], gv = gr[t], q = gv * wh;                                 \
                xr[t] = xv;                                                                                    \
                qr[t] = q;                                                                                     \
                c1[t] += q;                                                                                    \
                c2[t] += q * xv;                                                                               \
                awr[t] += (double)(gv * xv);                                                                   \
                abr[t] += (double)gv;                                                                          \
            }                                                                                                  \
        }                                                                                                      \
        for (long t = 0; t < nt; ++t) { c1[t] = c1[t] / H; c2[t] = c2[t] / H; }                                \
        for (long h = 0; h < H; ++h)                                                                           \
            for (long t = 0; t < nt; ++t)                                                                      \
                gw[h * TILE + t] = rs[t] * (gw[h * TILE + t] - c1[t] - xh[h * TILE + t] * c2[t]);              \
        for (long t = 0; t < nt; ++t)                                                                          \
            for (long h = 0; h < H; ++h) dx[(m0 + t) * H + h] = gw[h * TILE + t];                              \
    }                                                                                                          \
    for (long h = 0; h < H; ++h) {                                                                             \
        double sw = 0, sb = 0;                                                                                 \
        for (long t = 0; t < TILE; ++t) { sw += aw[h * TILE + t]; sb += ab[h * TILE + t]; }                   \
        dw[h] = sw;                                                                                            \
        db[h] = sb;                                                                                            \
    }                                                                                                          \
    free(xh);                                                                                                  \
    free(acc);                                                                                                 \
    return 0;                                                                                                  \
}                                                                                                              \
/* a, b, x: (M, H); ba, bb: (H,) their biases -> out (M, H) */                                                \
void glu_fwd_##SFX(long M, long H, const T *restrict a, const T *restrict b, const T *restrict ba,           \
                   const T *restrict bb, const T *restrict x, T *restrict out) {                               \
    for (long m = 0; m < M; ++m) {                                                                             \
        const T *restrict ar = a + m * H, *restrict br = b + m * H, *restrict xr = x + m * H;                  \
        T *restrict o = out + m * H;                                                                           \
        for (long h = 0; h < H; ++h) {                                                                         \
            const T s = (T)1 / ((T)1 + EXP(-(br[h] + bb[h])));                                                 \
            o[h] = xr[h] + (ar[h] + ba[h]) * s;                                                                \
        }                                                                                                      \
    }                                                                                                          \
}                                                                                                              \
/* g: dL/dout (M, H) -> da, db (M, H); sa, sb (H,) float64: the gradients of ba, bb */                         \
void glu_bwd_##SFX(long M, long H, const T *restrict g, const T *restrict a, const T *restrict b,            \
                   const T *restrict ba, const T *restrict bb, T *restrict da, T *restrict db,                 \
                   double *restrict sa, double *restrict sb) {                                                 \
    for (long h = 0; h < H; ++h) { sa[h] = 0; sb[h] = 0; }                                                     \
    for (long m = 0; m < M; ++m) {                                                                             \
        const T *restrict gr = g + m * H, *restrict ar = a + m * H, *restrict br = b + m * H;                  \
        T *restrict dar = da + m * H, *restrict dbr = db + m * H;                                              \
        for (long h = 0; h < H; ++h) {                                                                         \
            const T e = EXP(-(br[h] + bb[h])), s = (T)1 / ((T)1 + e), gs = gr[h] * s;                                \
            const T dav = gs, dbv = gs * (ar[h] + ba[h]) * s * e;                                              \
            dar[h] = dav;                                                                                      \
            dbr[h] = dbv;                                                                                      \
            sa[h] += (double)dav;                                                                              \
            sb[h] += (double)dbv;                                                                              \
        }                                                                                                      \
    }                                                                                                          \
}
KERNELS(f32, float, sqrtf, exp_f32)
KERNELS(f64, double, sqrt, exp_f64)
"""
# -std=c99: no FMA contraction (gnu modes contract), so results do not depend on whether the CPU has FMA;
# -fno-math-errno / -fno-trapping-math let floorf and the clamps vectorise and change no result.
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-std=c99"]

_lib: ctypes.CDLL | None = None
_error: str | None = None
_mode = "auto"
_P, _L = ctypes.c_void_p, ctypes.c_long


def load() -> ctypes.CDLL | None:
    """The compiled library (built on first use), or None when it cannot be built (``error()`` says why)."""
    global _lib, _error
    if _lib is not None or _error is not None:
        return _lib
    lib, _error = build("dssbt_fused", SOURCE, FLAGS)
    if lib is None:
        return None
    for sfx, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        getattr(lib, f"ln_cm_fwd_{sfx}").argtypes = [_L, _L, _P, _P, _P, real, _P, _P, _P]
        getattr(lib, f"ln_cm_fwd_{sfx}").restype = ctypes.c_int
        getattr(lib, f"ln_cm_bwd_{sfx}").argtypes = [_L, _L] + [_P] * 8
        getattr(lib, f"ln_cm_bwd_{sfx}").restype = ctypes.c_int
        getattr(lib, f"glu_fwd_{sfx}").argtypes = [_L, _L] + [_P] * 6
        getattr(lib, f"glu_bwd_{sfx}").argtypes = [_L, _L] + [_P] * 9
    _lib = lib
    return lib


def error() -> str | None:
    load()
    return _error


@contextlib.contextmanager
def kernels(mode: str) -> Iterator[None]:
    """Within the block: ``mode`` chooses the kernels of every model forward (see the module docstring)."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"optim.kernels: {mode!r} is not one of {list(MODES)}")
    if mode == "c" and load() is None:
        raise RuntimeError(f"optim.kernels: c, but the fused C kernels cannot be built: {_error}. "
                           "Install a C compiler (or set $CC), or set optim.kernels: auto or torch")
    before, _mode = _mode, mode
    try:
        yield
    finally:
        _mode = before


def mode() -> str:
    return _mode


def applies(x: Tensor) -> bool:
    """Whether a forward on ``x`` takes the fused kernels: mode, device, dtype and a built library."""
    return (_mode != "torch" and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and load() is not None)


def used() -> str:
    """What a CPU float32 forward runs under the current mode: ``c`` or ``torch`` (recorded in metrics)."""
    return "c" if _mode != "torch" and load() is not None else "torch"


def _kernel(name: str, t: Tensor):
    """The C function ``name`` for t's dtype (float32 or float64)."""
    lib = load()
    if lib is None:
        raise RuntimeError(f"the fused C kernels cannot be built: {_error}")
    if t.dtype not in (torch.float32, torch.float64) or t.device.type != "cpu":
        raise ValueError(f"fused {name}: CPU float32/float64 tensors only, got {t.dtype} on {t.device}")
    return getattr(lib, f"{name}_{'f32' if t.dtype == torch.float32 else 'f64'}")


def _same_dtype(*ts: Tensor) -> None:
    if len({t.dtype for t in ts}) != 1:
        raise ValueError(f"fused kernels: operands of one dtype only, got {[t.dtype for t in ts]}")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise MemoryError(f"fused {what}: the C kernel could not allocate its tile buffers")


class _LayerNormChannelMajor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        x = x.contiguous()
        Bsz, L, H = x.shape
        M = Bsz * L
        z = x.new_empty(H, Bsz, L)
        mean, rstd = x.new_empty(M), x.new_empty(M)
        w, b = weight.detach().contiguous(), bias.detach().contiguous()
        _same_dtype(x, w, b)
        _check(_kernel("ln_cm_fwd", x)(M, H, x.data_ptr(), w.data_ptr(), b.data_ptr(), eps, z.data_ptr(),
                                       mean.data_ptr(), rstd.data_ptr()), "layer norm")
        ctx.save_for_backward(x, w, mean, rstd)
        return z  # (H, B, L)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, w, mean, rstd = ctx.saved_tensors
        g = g.contiguous()  # (H, B, L)
        Bsz, L, H = x.shape
        dx = torch.empty_like(x)
        dw = torch.empty(H, dtype=torch.float64)
        db = torch.empty(H, dtype=torch.float64)
        _same_dtype(x, g)
        _check(_kernel("ln_cm_bwd", x)(Bsz * L, H, g.data_ptr(), x.data_ptr(), w.data_ptr(), mean.data_ptr(),
                                       rstd.data_ptr(), dx.data_ptr(), dw.data_ptr(), db.data_ptr()),
               "layer norm backward")
        return dx, dw.to(x.dtype), db.to(x.dtype), None


def layer_norm_channel_major(x: Tensor, norm: torch.nn.LayerNorm) -> Tensor:
    """``norm`` on (B, L, H) rows, written channel-major: contiguous (H, B, L). Needs ``applies(x)``."""
    if norm.weight is None or norm.bias is None or tuple(norm.normalized_shape) != (x.shape[-1],):
        raise ValueError("fused layer norm: an affine LayerNorm over the last dimension only")
    return _LayerNormChannelMajor.apply(x, norm.weight, norm.bias, norm.eps)


def layer_norm_channel_major_reference(x: Tensor, norm: torch.nn.LayerNorm) -> Tensor:
    """The same with torch ops: the layer norm, then the transpose copy."""
    Bsz, L, H = x.shape
    return norm(x).reshape(Bsz * L, H).t().contiguous().view(H, Bsz, L)


class _GLUResidual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: Tensor, bias: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        y, x = y.contiguous(), x.contiguous()
        _, Bsz, L, H = y.shape
        if y.shape != (2, *x.shape) or bias.shape != (2 * H,):
            raise ValueError(f"fused GLU: y (2, B, L, H), bias (2H,), x (B, L, H); got {tuple(y.shape)}, "
                             f"{tuple(bias.shape)}, {tuple(x.shape)}")
        out = torch.empty_like(x)
        b = bias.detach().contiguous()
        _same_dtype(y, b, x)
        _kernel("glu_fwd", x)(Bsz * L, H, y[0].data_ptr(), y[1].data_ptr(), b[:H].data_ptr(), b[H:].data_ptr(),
                              x.data_ptr(), out.data_ptr())
        ctx.save_for_backward(y, b)
        return out  # (B, L, H)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        y, b = ctx.saved_tensors
        g = g.contiguous()
        _, Bsz, L, H = y.shape
        dy = torch.empty_like(y)
        dbias = torch.empty(2 * H, dtype=torch.float64)
        _same_dtype(y, g)
        _kernel("glu_bwd", y)(Bsz * L, H, g.data_ptr(), y[0].data_ptr(), y[1].data_ptr(), b[:H].data_ptr(),
                              b[H:].data_ptr(), dy[0].data_ptr(), dy[1].data_ptr(), dbias[:H].data_ptr(),
                              dbias[H:].data_ptr())
        return dy, dbias.to(y.dtype), g


def glu_residual(y: Tensor, bias: Tensor, x: Tensor) -> Tensor:
    """``x + GLU(y + bias)``: y (2, B, L, H), the halves a, b of the output map without its bias (2H,); x (B, L, H)
    the block's input. Returns (B, L, H). Needs ``applies(x)``."""
    return _GLUResidual.apply(y, bias, x)


def glu_residual_reference(y: Tensor, bias: Tensor, x: Tensor) -> Tensor:
    """The same with torch ops."""
    H = x.shape[-1]
    return x + torch.nn.functional.glu(y + bias.view(2, 1, 1, H), dim=0).squeeze(0)
