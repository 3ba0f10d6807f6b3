"""The diagonal-system step as one compiled C call (optional; needs a C compiler, else ``available()`` is False).

One call per layer does, for every sequence b and channel h, in a single pass over the modes:

    x_re <- a_r x_re - a_i x_im + b_r u,   x_im <- a_i x_re + a_r x_im + b_i u,   y = sum_n (c_r x_re - c_i x_im) + D u

with the state and parameters as separate real and imaginary arrays laid out mode-major (state (B, N, H), parameters
(N, H)): the inner loop runs over the H channels, contiguous and independent, so it vectorises whatever N is (also
for r = 4), and y accumulates over n in order (no reassociation, no fast-math).
The library is built once per source, flags and CPU by ``dssbt.cbuild`` and loaded with ctypes; a layer's pointers
are packed into one struct, so a step is one foreign call with three arguments.
"""

from __future__ import annotations

import ctypes

import numpy as np

from ..cbuild import Library

SOURCE = r"""
#define STEP(NAME, T)                                                                                  \
typedef struct { long B, H, N; const T *ar, *ai, *br, *bi, *cr, *ci, *D; T *xr, *xi; } NAME##_layer;    \
void NAME(const NAME##_layer *L, const T *u, T *y) {                                                   \
    const long H = L->H, N = L->N;                                                                     \
    for (long b = 0; b < L->B; ++b) {                                                                  \
        const T *ub = u + b * H;                                                                       \
        T *yb = y + b * H;                                                                             \
        for (long h = 0; h < H; ++h) yb[h] = L->D[h] * ub[h];                                          \
        for (long n = 0; n < N; ++n) {                                                                 \
            const T *ar = L->ar + n * H, *ai = L->ai + n * H, *br = L->br + n * H, *bi = L->bi + n * H; \
            const T *cr = L->cr + n * H, *ci = L->ci + n * H;                                          \
            T *xr = L->xr + (b * N + n) * H, *xi = L->xi + (b * N + n) * H;                            \
            _Pragma("omp simd")                                                                        \
            for (long h = 0; h < H; ++h) {                                                             \
                const T r = ar[h] * xr[h] - ai[h] * xi[h] + br[h] * ub[h];                             \
                const T i = ai[h] * xr[h] + ar[h] * xi[h] + bi[h] * ub[h];                             \
                xr[h] = r;                                                                             \
                xi[h] = i;                                                                             \
                yb[h] += cr[h] * r - ci[h] * i;                                                        \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
}
STEP(dss_step_f32, float)
STEP(dss_step_f64, double)
"""
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fPIC", "-shared", "-std=c99"]


def _struct(real: type) -> type:
    ptr = ctypes.POINTER(real)
    fields = [("B", ctypes.c_long), ("H", ctypes.c_long), ("N", ctypes.c_long)]
    fields += [(k, ptr) for k in ("ar", "ai", "br", "bi", "cr", "ci", "D", "xr", "xi")]
    return type(f"Layer_{real.__name__}", (ctypes.Structure,), {"_fields_": fields})


LAYER = {np.float32: _struct(ctypes.c_float), np.float64: _struct(ctypes.c_double)}
LIBRARY = Library(
    "dss_step", SOURCE, FLAGS, {name: ([ctypes.c_void_p] * 3, None) for name in ("dss_step_f32", "dss_step_f64")}
)


def load() -> ctypes.CDLL | None:
    """The compiled library (built on first use), or None when no compiler works (``error()`` says why)."""
    return LIBRARY.load()


def available() -> bool:
    return load() is not None


def error() -> str | None:
    return LIBRARY.error()


class CLayer:
    """One layer's diagonal systems for ``batch`` sequences: parameters (kept alive here, mode-major), state
    (xr, xi: (B, N, H)) and the packed struct. ``step(u_ptr, y_ptr)``: u, y real contiguous (B, H) of the layer's dtype, given by address."""

    def __init__(
        self,
        Lambda_bar: np.ndarray,
        B_bar: np.ndarray,
        C: np.ndarray,
        D: np.ndarray,
        batch: int,
        real: type = np.float32,
    ) -> None:
        lib = load()
        if lib is None:
            raise ValueError(f"the C step is unavailable: {error()}")
        H, N = Lambda_bar.shape
        arr = lambda a: np.ascontiguousarray(a, dtype=real)  # noqa: E731
        T = lambda a: arr(np.asarray(a).T)  # noqa: E731  (H, N) -> mode-major (N, H)
        self.params = {
            "ar": T(Lambda_bar.real),
            "ai": T(Lambda_bar.imag),
            "br": T(B_bar.real),
            "bi": T(B_bar.imag),
            "cr": T(C.real),
            "ci": T(C.imag),
            "D": arr(D),
        }
        self.xr = np.zeros((batch, N, H), real)
        self.xi = np.zeros((batch, N, H), real)
        ptr_t = ctypes.POINTER(ctypes.c_float if real == np.float32 else ctypes.c_double)
        ptr = lambda a: a.ctypes.data_as(ptr_t)  # noqa: E731
        self.struct = LAYER[real](
            batch,
            H,
            N,
            *(ptr(self.params[k]) for k in ("ar", "ai", "br", "bi", "cr", "ci", "D")),
            ptr(self.xr),
            ptr(self.xi),
        )
        self.addr = ctypes.addressof(self.struct)
        self.fn = lib.dss_step_f32 if real == np.float32 else lib.dss_step_f64

    def step(self, u_ptr: int, y_ptr: int) -> None:
        self.fn(self.addr, u_ptr, y_ptr)

    def state(self) -> np.ndarray:
        """The complex state (B, H, N), a copy."""
        return (self.xr + 1j * self.xi).transpose(0, 2, 1)
