"""Fused CPU kernels for a block's elementwise work: one compiled C pass where eager PyTorch takes several.

A training step streams its (B, L, H) activations through memory once per elementwise op; at the pipeline's sizes
(B*L = 51,200 rows of H = 32) each op is a pass over 6.5 MB, and these passes, not the FFTs and matmuls, dominate
the step. Four kernels, each one pass forward and one or two backward (x: (M, H) rows, M = B*L; z: (H, M)):

  layer norm to channel-major   z[h, m] = (x[m, h] - mu_m) rstd_m w_h + b_h
      mu_m and rstd_m = 1 / sqrt(var_m + eps): mean and biased variance of row m (two passes over the row).
      Replaces the layer norm and the transpose copy to the DSS layer's channel-major input (and both backwards):
      rows are read in tiles of 64, normalised and written out channel by channel. Backward, x_hat the normalised
      row, g_w = dL/dz w:  dx = rstd (g_w - mean_h(g_w) - x_hat mean_h(g_w x_hat)), dw = sum_m dL/dz x_hat,
      db = sum_m dL/dz.
  batch norm to channel-major   z[h, m] = (x[m, h] - mu_h) rstd_h w_h + b_h
      training: mu_h, var_h over all M rows (float64 sums; torch's float32 sums are less accurate, see
      bench/train_step.py), running statistics updated as torch's batch norm does (momentum, unbiased variance);
      eval: the running statistics. Backward (training mode): dx = w rstd (g - mean_m(g) - x_hat mean_m(g x_hat)).
  final layer norm + mean pool  pooled[b, h] = sum_{l < n_b} LN(x)[b, l, h] / max(len_b, 1),  n_b = min(len_b, L)
      the model's last norm and its masked mean pooling without the (B, L, H) normalised tensor; rows past a
      sequence's length get a zero gradient.
  GLU + residual                out = x + (a + b_a) sigmoid(b + b_b)
      a, b: the output map's two halves without their bias (``linear_from_channel_major(bias=False)``), so the
      bias add, the GLU and the residual add are one pass. Backward: da = g s, db = g (a + b_a) s^2 e^{-(b + b_b)}
      (g (a + b_a) s (1 - s) without the cancellation in 1 - s), the bias gradients their sums over rows.

Numerics. float64: libm's exp; the same results as the torch ops to rounding (``tests/test_fused.py`` compares
each kernel and ``tests/test_fast_step.py`` the whole step with the reference path, at 1e-12 / 1e-10). float32:
exp is a vectorisable range reduction + degree-7 Taylor polynomial (truncation < 1e-8 relative; the sigmoid is
within 2 float32 eps of the exact one down to -87, where exp's argument is clamped), sums run in a fixed order,
gradient sums over rows in float64. Results differ from torch's float32 ops by rounding only, but they differ:
a run with these kernels is not bit-equal to one without. Compiled with -std=c99 (no FMA contraction, no
fast-math), so one machine computes the same bits every time.

Which kernels run is ``optim.kernels`` (``kernels(mode)`` around a job): ``torch`` (the default: never), ``c``
(these, for CPU float32/float64 tensors, or an error saying why not) or ``auto`` (these where a C compiler works).
Measured (``bench/train_step.py``): 1.07-1.17x faster training steps in a process of its own; with two training jobs
at once on a 2-core machine, where both share the memory bandwidth these passes are bound by, no measurable
difference. So they are opt-in.
They are single-threaded: with more torch threads the rest of the step speeds up, these do not. CUDA tensors always
take the torch ops. The library is built on first use by ``dssbt.cbuild`` (about a second, then cached).
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

import torch
from torch import Tensor

from .cbuild import Library
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
/* nt <= TILE rows of x (each H long), gathered channel-major into xt (H, TILE); mu, rs: each row's mean and     \
   1 / sqrt(biased variance + eps) (two passes over the row) */                                                \
static void tile_moments_##SFX(long nt, long H, const T *restrict x, T eps, T *restrict xt, T *restrict mu,  \
                               T *restrict rs) {                                                               \
    for (long t = 0; t < nt; ++t)                                                                              \
        for (long h = 0; h < H; ++h) xt[h * TILE + t] = x[t * H + h];                                          \
    for (long t = 0; t < nt; ++t) mu[t] = 0;                                                                   \
    for (long h = 0; h < H; ++h)                                                                               \
        for (long t = 0; t < nt; ++t) mu[t] += xt[h * TILE + t];                                               \
    for (long t = 0; t < nt; ++t) { mu[t] = mu[t] / H; rs[t] = 0; }                                            \
    for (long h = 0; h < H; ++h)                                                                               \
        for (long t = 0; t < nt; ++t) { const T d = xt[h * TILE + t] - mu[t]; rs[t] += d * d; }               \
    for (long t = 0; t < nt; ++t) rs[t] = 1 / SQRT(rs[t] / H + eps);                                           \
}                                                                                                              \
/* x: (M, H) rows -> z: (H, M); mean, rstd: (M,) */                                                            \
int ln_cm_fwd_##SFX(long M, long H, const T *restrict x, const T *restrict w, const T *restrict b, T eps,    \
                    T *restrict z, T *restrict mean, T *restrict rstd) {                                      \
    T *xt = malloc(sizeof(T) * (H * TILE + 2 * TILE));                                                         \
    if (!xt) return 1;                                                                                         \
    T *mu = xt + H * TILE, *rs = mu + TILE;                                                                    \
    for (long m0 = 0; m0 < M; m0 += TILE) {                                                                    \
        const long nt = M - m0 < TILE ? M - m0 : TILE;                                                         \
        tile_moments_##SFX(nt, H, x + m0 * H, eps, xt, mu, rs);                                                \
        for (long t = 0; t < nt; ++t) {                                                                        \
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

#define BN_KERNELS(SFX, T)                                                                                     \
/* per channel of x (M, H): mean and biased variance, two passes, float64 sums */                              \
void bn_stats_##SFX(long M, long H, const T *restrict x, double *restrict mean, double *restrict var) {       \
    for (long h = 0; h < H; ++h) { mean[h] = 0; var[h] = 0; }                                                  \
    for (long m = 0; m < M; ++m)                                                                               \
        for (long h = 0; h < H; ++h) mean[h] += (double)x[m * H + h];                                          \
    for (long h = 0; h < H; ++h) mean[h] = mean[h] / M;                                                        \
    for (long m = 0; m < M; ++m)                                                                               \
        for (long h = 0; h < H; ++h) { const double d = (double)x[m * H + h] - mean[h]; var[h] += d * d; }     \
    for (long h = 0; h < H; ++h) var[h] = var[h] / M;                                                          \
}                                                                                                              \
/* x: (M, H) rows, per-channel mean, rstd, w, b (H,) -> z: (H, M) */                                           \
int bn_cm_fwd_##SFX(long M, long H, const T *restrict x, const T *restrict w, const T *restrict b,           \
                    const T *restrict mean, const T *restrict rstd, T *restrict z) {                           \
    T *xt = malloc(sizeof(T) * H * TILE);                                                                      \
    if (!xt) return 1;                                                                                         \
    for (long m0 = 0; m0 < M; m0 += TILE) {                                                                    \
        const long nt = M - m0 < TILE ? M - m0 : TILE;                                                         \
        for (long t = 0; t < nt; ++t)                                                                          \
            for (long h = 0; h < H; ++h) xt[h * TILE + t] = x[(m0 + t) * H + h];                               \
        for (long h = 0; h < H; ++h) {                                                                         \
            T *restrict zr = z + h * M + m0;                                                                   \
            const T mu = mean[h], rs = rstd[h], wh = w[h], bh = b[h];                                          \
            for (long t = 0; t < nt; ++t) zr[t] = (xt[h * TILE + t] - mu) * rs * wh + bh;                      \
        }                                                                                                      \
    }                                                                                                          \
    free(xt);                                                                                                  \
    return 0;                                                                                                  \
}                                                                                                              \
/* training-mode backward. g: dL/dz (H, M); x, mean, rstd as in the forward -> dx (M, H); dw, db (H,) float64.   \
   dx = w rstd (g - mean_m(g) - x_hat mean_m(g x_hat)) */                                                      \
int bn_cm_bwd_##SFX(long M, long H, const T *restrict g, const T *restrict x, const T *restrict w,          \
                    const T *restrict mean, const T *restrict rstd, T *restrict dx, double *restrict dw,       \
                    double *restrict db) {                                                                     \
    T *xt = malloc(sizeof(T) * (H * TILE + 3 * H));                                                            \
    double *acc = malloc(sizeof(double) * 2 * H * TILE);                                                       \
    if (!xt || !acc) { free(xt); free(acc); return 1; }                                                        \
    T *k1 = xt + H * TILE, *k2 = k1 + H, *c = k2 + H;                                                          \
    double *ag = acc, *agx = acc + H * TILE;                                                                   \
    for (long i = 0; i < 2 * H * TILE; ++i) acc[i] = 0;                                                        \
    for (long m0 = 0; m0 < M; m0 += TILE) {                                                                    \
        const long nt = M - m0 < TILE ? M - m0 : TILE;                                                         \
        for (long t = 0; t < nt; ++t)                                                                          \
            for (long h = 0; h < H; ++h) xt[h * TILE + t] = x[(m0 + t) * H + h];                               \
        for (long h = 0; h < H; ++h) {                                                                         \
            const T *restrict gr = g + h * M + m0, *restrict xr = xt + h * TILE;                               \
            double *restrict agr = ag + h * TILE, *restrict agxr = agx + h * TILE;                             \
            const T mu = mean[h], rs = rstd[h];                                                                \
            for (long t = 0; t < nt; ++t) {                                                                    \
                agr[t] += (double)gr[t];                                                                       \
                agxr[t] += (double)(gr[t] * ((xr[t] - mu) * rs));                                              \
            }                                                                                                  \
        }                                                                                                      \
    }                                                                                                          \
    for (long h = 0; h < H; ++h) {                                                                             \
        double sg = 0, sgx = 0;                                                                                \
        for (long t = 0; t < TILE; ++t) { sg += ag[h * TILE + t]; sgx += agx[h * TILE + t]; }                 \
        db[h] = sg;                                                                                            \
        dw[h] = sgx;                                                                                           \
        k1[h] = (T)(sg / M);                                                                                   \
        k2[h] = (T)(sgx / M);                                                                                  \
        c[h] = w[h] * rstd[h];                                                                                 \
    }                                                                                                          \
    for (long m0 = 0; m0 < M; m0 += TILE) {                                                                    \
        const long nt = M - m0 < TILE ? M - m0 : TILE;                                                         \
        for (long t = 0; t < nt; ++t)                                                                          \
            for (long h = 0; h < H; ++h) xt[h * TILE + t] = x[(m0 + t) * H + h];                               \
        for (long h = 0; h < H; ++h) {                                                                         \
            const T *restrict gr = g + h * M + m0;                                                             \
            T *restrict xr = xt + h * TILE;                                                                    \
            const T mu = mean[h], rs = rstd[h], a1 = k1[h], a2 = k2[h], ch = c[h];                             \
            for (long t = 0; t < nt; ++t) xr[t] = ch * (gr[t] - a1 - (xr[t] - mu) * rs * a2);                  \
        }                                                                                                      \
        for (long t = 0; t < nt; ++t)                                                                          \
            for (long h = 0; h < H; ++h) dx[(m0 + t) * H + h] = xt[h * TILE + t];                              \
    }                                                                                                          \
    free(xt);                                                                                                  \
    free(acc);                                                                                                 \
    return 0;                                                                                                  \
}
BN_KERNELS(f32, float)
BN_KERNELS(f64, double)

#define POOL_KERNELS(SFX, T)                                                                             \
/* layer norm of each row of x (B, L, H), then the mean over the first n_b = min(len_b, L) rows of sequence b,     \
   divided by max(len_b, 1) -> pooled (B, H); mean, rstd (B * L,) of the rows used (others untouched) */         \
int ln_pool_fwd_##SFX(long B, long L, long H, const T *restrict x, const long *restrict len,                \
                      const T *restrict w, const T *restrict b, T eps, T *restrict pooled, T *restrict mean,   \
                      T *restrict rstd) {                                                                      \
    T *xt = malloc(sizeof(T) * (H * TILE + 2 * TILE));                                                         \
    double *acc = malloc(sizeof(double) * H * TILE);                                                           \
    if (!xt || !acc) { free(xt); free(acc); return 1; }                                                        \
    T *mu = xt + H * TILE, *rs = mu + TILE;                                                                    \
    for (long s = 0; s < B; ++s) {                                                                             \
        const long n = len[s] < 0 ? 0 : len[s] > L ? L : len[s];                                               \
        for (long i = 0; i < H * TILE; ++i) acc[i] = 0;                                                        \
        for (long l0 = 0; l0 < n; l0 += TILE) {                                                                \
            const long nt = n - l0 < TILE ? n - l0 : TILE, r0 = s * L + l0;                                    \
            tile_moments_##SFX(nt, H, x + r0 * H, eps, xt, mu, rs);                                            \
            for (long t = 0; t < nt; ++t) {                                                                    \
                mean[r0 + t] = mu[t];                                                                          \
                rstd[r0 + t] = rs[t];                                                                          \
            }                                                                                                  \
            for (long h = 0; h < H; ++h) {                                                                     \
                double *restrict ar = acc + h * TILE;                                                          \
                const T wh = w[h], bh = b[h];                                                                  \
                for (long t = 0; t < nt; ++t) ar[t] += (double)((xt[h * TILE + t] - mu[t]) * rs[t] * wh + bh); \
            }                                                                                                  \
        }                                                                                                      \
        const double div = len[s] > 1 ? (double)len[s] : 1.0;                                                  \
        for (long h = 0; h < H; ++h) {                                                                         \
            double sum = 0;                                                                                    \
            for (long t = 0; t < TILE; ++t) sum += acc[h * TILE + t];                                          \
            pooled[s * H + h] = (T)(sum / div);                                                                \
        }                                                                                                      \
    }                                                                                                          \
    free(xt);                                                                                                  \
    free(acc);                                                                                                 \
    return 0;                                                                                                  \
}                                                                                                              \
/* g: dL/dpooled (B, H) -> dx (B, L, H) (0 on the rows not pooled); dw, db (H,) float64 */                       \
int ln_pool_bwd_##SFX(long B, long L, long H, const T *restrict g, const T *restrict x,                     \
                      const long *restrict len, const T *restrict w, const T *restrict mean,                   \
                      const T *restrict rstd, T *restrict dx, double *restrict dw, double *restrict db) {      \
    T *xh = malloc(sizeof(T) * (2 * H * TILE + 2 * H + TILE));                                                 \
    double *acc = malloc(sizeof(double) * H * TILE);                                                           \
    if (!xh || !acc) { free(xh); free(acc); return 1; }                                                        \
    T *dt = xh + H * TILE, *gr = dt + H * TILE, *q = gr + H, *c2 = q + H;                                      \
    for (long i = 0; i < H * TILE; ++i) acc[i] = 0;                                                            \
    for (long h = 0; h < H; ++h) db[h] = 0;                                                                    \
    for (long s = 0; s < B; ++s) {                                                                             \
        const long n = len[s] < 0 ? 0 : len[s] > L ? L : len[s];                                               \
        const T inv = (T)1 / (T)(len[s] > 1 ? len[s] : 1);                                                     \
        T c1 = 0;                                                                                              \
        for (long h = 0; h < H; ++h) {                                                                         \
            gr[h] = g[s * H + h] * inv;                                                                        \
            q[h] = gr[h] * w[h];                                                                               \
            c1 += q[h];                                                                                        \
            db[h] += (double)gr[h] * n;                                                                        \
        }                                                                                                      \
        c1 = c1 / H;                                                                                           \
        for (long i = n * H; i < L * H; ++i) dx[s * L * H + i] = 0;                                            \
        for (long l0 = 0; l0 < n; l0 += TILE) {                                                                \
            const long nt = n - l0 < TILE ? n - l0 : TILE, r0 = s * L + l0;                                    \
            const T *restrict mu = mean + r0, *restrict rs = rstd + r0;                                        \
            for (long t = 0; t < nt; ++t)                                                                      \
                for (long h = 0; h < H; ++h) xh[h * TILE + t] = x[(r0 + t) * H + h];                           \
            for (long t = 0; t < nt; ++t) c2[t] = 0;                                                           \
            for (long h = 0; h < H; ++h) {                                                                     \
                T *restrict xr = xh + h * TILE;                                                                \
                double *restrict ar = acc + h * TILE;                                                          \
                const T qh = q[h], gh = gr[h];                                                                 \
                for (long t = 0; t < nt; ++t) {                                                                \
                    const T xv = (xr[t] - mu[t]) * rs[t];                                                      \
                    xr[t] = xv;                                                                                \
                    c2[t] += qh * xv;                                                                          \
                    ar[t] += (double)(gh * xv);                                                                \
                }                                                                                              \
            }                                                                                                  \
            for (long t = 0; t < nt; ++t) c2[t] = c2[t] / H;                                                   \
            for (long h = 0; h < H; ++h) {                                                                     \
                const T qh = q[h];                                                                             \
                for (long t = 0; t < nt; ++t) dt[h * TILE + t] = rs[t] * (qh - c1 - xh[h * TILE + t] * c2[t]); \
            }                                                                                                  \
            for (long t = 0; t < nt; ++t)                                                                      \
                for (long h = 0; h < H; ++h) dx[(r0 + t) * H + h] = dt[h * TILE + t];                          \
        }                                                                                                      \
    }                                                                                                          \
    for (long h = 0; h < H; ++h) {                                                                             \
        double sw = 0;                                                                                         \
        for (long t = 0; t < TILE; ++t) sw += acc[h * TILE + t];                                               \
        dw[h] = sw;                                                                                            \
    }                                                                                                          \
    free(xh);                                                                                                  \
    free(acc);                                                                                                 \
    return 0;                                                                                                  \
}
POOL_KERNELS(f32, float)
POOL_KERNELS(f64, double)
"""
# -std=c99: no FMA contraction (gnu modes contract), so results do not depend on whether the CPU has FMA;
# -fno-math-errno / -fno-trapping-math let floorf and the clamps vectorise and change no result.
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-std=c99"]

_P, _L, _I = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
_SIGNATURES = {}
for _sfx, _real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
    _SIGNATURES |= {
        f"ln_cm_fwd_{_sfx}": ([_L, _L, _P, _P, _P, _real, _P, _P, _P], _I),
        f"ln_cm_bwd_{_sfx}": ([_L, _L] + [_P] * 8, _I),
        f"bn_stats_{_sfx}": ([_L, _L] + [_P] * 3, None),
        f"bn_cm_fwd_{_sfx}": ([_L, _L] + [_P] * 6, _I),
        f"bn_cm_bwd_{_sfx}": ([_L, _L] + [_P] * 8, _I),
        f"ln_pool_fwd_{_sfx}": ([_L, _L, _L, _P, _P, _P, _P, _real, _P, _P, _P], _I),
        f"ln_pool_bwd_{_sfx}": ([_L, _L, _L] + [_P] * 9, _I),
        f"glu_fwd_{_sfx}": ([_L, _L] + [_P] * 6, None),
        f"glu_bwd_{_sfx}": ([_L, _L] + [_P] * 9, None),
    }
LIBRARY = Library("dssbt_fused", SOURCE, FLAGS, _SIGNATURES)
_mode = "torch"


def load() -> ctypes.CDLL | None:
    """The compiled library (built on first use), or None when it cannot be built (``error()`` says why)."""
    return LIBRARY.load()


def error() -> str | None:
    return LIBRARY.error()


@contextlib.contextmanager
def kernels(mode: str) -> Iterator[None]:
    """Within the block: ``mode`` chooses the kernels of every model forward (see the module docstring)."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"optim.kernels: {mode!r} is not one of {list(MODES)}")
    if mode == "c" and load() is None:
        raise RuntimeError(
            f"optim.kernels: c, but the fused C kernels cannot be built: {error()}. "
            "Install a C compiler (or set $CC), or set optim.kernels: auto or torch"
        )
    before, _mode = _mode, mode
    try:
        yield
    finally:
        _mode = before


def used() -> str:
    """What a CPU float32 forward runs under the current mode: ``c`` or ``torch`` (recorded in metrics)."""
    return "c" if _mode != "torch" and load() is not None else "torch"


def applies(x: Tensor) -> bool:
    """Whether a forward on ``x`` takes the fused kernels: ``used()``, and a CPU float32/float64 tensor."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and used() == "c"


def _kernel(name: str, t: Tensor):
    """The C function ``name`` for t's dtype (float32 or float64)."""
    lib = load()
    if lib is None:
        raise RuntimeError(f"the fused C kernels cannot be built: {error()}")
    if t.dtype not in (torch.float32, torch.float64) or t.device.type != "cpu":
        raise ValueError(f"fused {name}: CPU float32/float64 tensors only, got {t.dtype} on {t.device}")
    return getattr(lib, f"{name}_{'f32' if t.dtype == torch.float32 else 'f64'}")


def _check_layer_norm(norm: torch.nn.LayerNorm, x: Tensor) -> None:
    if norm.weight is None or norm.bias is None or tuple(norm.normalized_shape) != (x.shape[-1],):
        raise ValueError("fused layer norm: an affine LayerNorm over the last dimension only")


def _same_dtype(*ts: Tensor) -> None:
    if len({t.dtype for t in ts}) != 1:
        raise ValueError(f"fused kernels: operands of one dtype only, got {[t.dtype for t in ts]}")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise MemoryError(f"fused {what}: the C kernel could not allocate its tile buffers")


def _norm_backward(name: str, ctx, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """dx (B, L, H), dw, db (H,) of a channel-major norm (kernel ``name``) from g = dL/dz (H, B, L) and what its
    forward saved: x, w, mean, rstd."""
    x, w, mean, rstd = ctx.saved_tensors
    g = g.contiguous()  # (H, B, L)
    Bsz, L, H = x.shape
    dx = torch.empty_like(x)
    dw = torch.empty(H, dtype=torch.float64)
    db = torch.empty(H, dtype=torch.float64)
    _same_dtype(x, g)
    _check(
        _kernel(name, x)(
            Bsz * L,
            H,
            g.data_ptr(),
            x.data_ptr(),
            w.data_ptr(),
            mean.data_ptr(),
            rstd.data_ptr(),
            dx.data_ptr(),
            dw.data_ptr(),
            db.data_ptr(),
        ),
        f"{name} (backward)",
    )
    return dx, dw.to(x.dtype), db.to(x.dtype)


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
        _check(
            _kernel("ln_cm_fwd", x)(
                M, H, x.data_ptr(), w.data_ptr(), b.data_ptr(), eps, z.data_ptr(), mean.data_ptr(), rstd.data_ptr()
            ),
            "layer norm",
        )
        ctx.save_for_backward(x, w, mean, rstd)
        return z  # (H, B, L)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        return (*_norm_backward("ln_cm_bwd", ctx, g), None)


def layer_norm_channel_major(x: Tensor, norm: torch.nn.LayerNorm) -> Tensor:
    """``norm`` on (B, L, H) rows, written channel-major: contiguous (H, B, L). Needs ``applies(x)``."""
    _check_layer_norm(norm, x)
    return _LayerNormChannelMajor.apply(x, norm.weight, norm.bias, norm.eps)


def layer_norm_channel_major_reference(x: Tensor, norm: torch.nn.LayerNorm) -> Tensor:
    """The same with torch ops: the layer norm, then the transpose copy."""
    Bsz, L, H = x.shape
    return norm(x).reshape(Bsz * L, H).t().contiguous().view(H, Bsz, L)


class _BatchNormChannelMajor(torch.autograd.Function):
    """Normalisation by given per-channel statistics, written channel-major; the backward is batch norm's in
    training mode (the statistics are the batch's own, so their dependence on x is in the gradient)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, rstd: Tensor) -> Tensor:  # type: ignore[override]
        Bsz, L, H = x.shape
        z = x.new_empty(H, Bsz, L)
        w, b = weight.detach().contiguous(), bias.detach().contiguous()
        _same_dtype(x, w, b, mean, rstd)
        _check(
            _kernel("bn_cm_fwd", x)(
                Bsz * L, H, x.data_ptr(), w.data_ptr(), b.data_ptr(), mean.data_ptr(), rstd.data_ptr(), z.data_ptr()
            ),
            "batch norm",
        )
        ctx.save_for_backward(x, w, mean, rstd)
        return z  # (H, B, L)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        return (*_norm_backward("bn_cm_bwd", ctx, g), None, None)


def batch_norm_applies(norm: torch.nn.BatchNorm1d) -> bool:
    """What ``batch_norm_channel_major`` covers: affine, running statistics tracked with a momentum, and in
    eval mode only without gradients (its backward is the training-mode one)."""
    return (
        norm.affine
        and norm.track_running_stats
        and norm.momentum is not None
        and (norm.training or not torch.is_grad_enabled())
    )


def batch_norm_channel_major(x: Tensor, norm: torch.nn.BatchNorm1d) -> Tensor:
    """``norm`` (BatchNorm1d over H channels) on (B, L, H) rows, statistics over all B*L rows, written
    channel-major: contiguous (H, B, L). In training mode the running statistics are updated as torch's batch norm
    does (momentum, unbiased variance). Needs ``applies(x)`` and ``batch_norm_applies(norm)``."""
    if not batch_norm_applies(norm):
        raise ValueError(
            "fused batch norm: affine, tracked running statistics with a momentum, and no gradients in eval mode"
        )
    x = x.contiguous()
    Bsz, L, H = x.shape
    M = Bsz * L
    if norm.training and M < 2:
        return batch_norm_channel_major_reference(x, norm)  # torch's error: one value per channel
    if norm.training:
        mean64, var64 = torch.empty(H, dtype=torch.float64), torch.empty(H, dtype=torch.float64)
        _kernel("bn_stats", x)(M, H, x.data_ptr(), mean64.data_ptr(), var64.data_ptr())
        with torch.no_grad():
            norm.num_batches_tracked.add_(1)
            m = norm.momentum
            norm.running_mean.mul_(1 - m).add_(mean64.to(x.dtype), alpha=m)
            norm.running_var.mul_(1 - m).add_((var64 * (M / max(M - 1, 1))).to(x.dtype), alpha=m)
        mean, rstd = mean64.to(x.dtype), (var64 + norm.eps).rsqrt().to(x.dtype)
    else:
        mean, rstd = norm.running_mean, (norm.running_var + norm.eps).rsqrt()
    return _BatchNormChannelMajor.apply(x, norm.weight, norm.bias, mean, rstd)


def batch_norm_channel_major_reference(x: Tensor, norm: torch.nn.BatchNorm1d) -> Tensor:
    """The same with torch ops: batch norm on the (B*L, H) rows, then the transpose copy."""
    Bsz, L, H = x.shape
    return norm(x.reshape(Bsz * L, H)).t().contiguous().view(H, Bsz, L)


class _LayerNormMeanPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lengths: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        x = x.contiguous()
        Bsz, L, H = x.shape
        n = lengths.to(torch.int64).contiguous()
        pooled = x.new_empty(Bsz, H)
        mean, rstd = x.new_empty(Bsz * L), x.new_empty(Bsz * L)
        w, b = weight.detach().contiguous(), bias.detach().contiguous()
        _same_dtype(x, w, b)
        _check(
            _kernel("ln_pool_fwd", x)(
                Bsz,
                L,
                H,
                x.data_ptr(),
                n.data_ptr(),
                w.data_ptr(),
                b.data_ptr(),
                eps,
                pooled.data_ptr(),
                mean.data_ptr(),
                rstd.data_ptr(),
            ),
            "layer norm + pool",
        )
        ctx.save_for_backward(x, n, w, mean, rstd)
        return pooled  # (B, H)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, n, w, mean, rstd = ctx.saved_tensors
        g = g.contiguous()  # (B, H)
        Bsz, L, H = x.shape
        dx = torch.empty_like(x)
        dw = torch.empty(H, dtype=torch.float64)
        db = torch.empty(H, dtype=torch.float64)
        _same_dtype(x, g)
        _check(
            _kernel("ln_pool_bwd", x)(
                Bsz,
                L,
                H,
                g.data_ptr(),
                x.data_ptr(),
                n.data_ptr(),
                w.data_ptr(),
                mean.data_ptr(),
                rstd.data_ptr(),
                dx.data_ptr(),
                dw.data_ptr(),
                db.data_ptr(),
            ),
            "layer norm + pool backward",
        )
        return dx, None, dw.to(x.dtype), db.to(x.dtype), None


def layer_norm_mean_pool(x: Tensor, lengths: Tensor, norm: torch.nn.LayerNorm) -> Tensor:
    """``norm`` on every row of x (B, L, H), then the mean of each sequence's first lengths[b] rows (B, H):
    the model's final norm and mean pooling in one pass (no (B, L, H) output). Needs ``applies(x)``."""
    _check_layer_norm(norm, x)
    if lengths.shape != x.shape[:1]:
        raise ValueError(f"fused pool: lengths (B,) for x (B, L, H), got {tuple(lengths.shape)}, {tuple(x.shape)}")
    return _LayerNormMeanPool.apply(x, lengths, norm.weight, norm.bias, norm.eps)


def layer_norm_mean_pool_reference(x: Tensor, lengths: Tensor, norm: torch.nn.LayerNorm) -> Tensor:
    """The same with torch ops: the layer norm, the masked sum, the division by max(length, 1)."""
    h = norm(x)
    mask = (torch.arange(x.shape[1]) < lengths.unsqueeze(-1)).to(h.dtype)  # (B, L)
    return (h * mask.unsqueeze(-1)).sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(h.dtype)


class _GLUResidual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: Tensor, bias: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        y, x = y.contiguous(), x.contiguous()
        _, Bsz, L, H = y.shape
        if y.shape != (2, *x.shape) or bias.shape != (2 * H,):
            raise ValueError(
                f"fused GLU: y (2, B, L, H), bias (2H,), x (B, L, H); got {tuple(y.shape)}, "
                f"{tuple(bias.shape)}, {tuple(x.shape)}"
            )
        out = torch.empty_like(x)
        b = bias.detach().contiguous()
        _same_dtype(y, b, x)
        _kernel("glu_fwd", x)(
            Bsz * L,
            H,
            y[0].data_ptr(),
            y[1].data_ptr(),
            b[:H].data_ptr(),
            b[H:].data_ptr(),
            x.data_ptr(),
            out.data_ptr(),
        )
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
        _kernel("glu_bwd", y)(
            Bsz * L,
            H,
            g.data_ptr(),
            y[0].data_ptr(),
            y[1].data_ptr(),
            b[:H].data_ptr(),
            b[H:].data_ptr(),
            dy[0].data_ptr(),
            dy[1].data_ptr(),
            dbias[:H].data_ptr(),
            dbias[H:].data_ptr(),
        )
        return dy, dbias.to(y.dtype), g


def glu_residual(y: Tensor, bias: Tensor, x: Tensor) -> Tensor:
    """``x + GLU(y + bias)``: y (2, B, L, H), the halves a, b of the output map without its bias (2H,); x (B, L, H)
    the block's input. Returns (B, L, H). Needs ``applies(x)``."""
    return _GLUResidual.apply(y, bias, x)


def glu_residual_reference(y: Tensor, bias: Tensor, x: Tensor) -> Tensor:
    """The same with torch ops."""
    H = x.shape[-1]
    return x + torch.nn.functional.glu(y + bias.view(2, 1, 1, H), dim=0).squeeze(0)
