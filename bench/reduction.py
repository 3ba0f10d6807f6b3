"""Balanced truncation of every channel of a whole model: ours (batched, closed-form Gramians) vs per-channel loops.

Model: a freshly initialised S4Model (default 6 layers x H=256, N=64: 1,536 DSS channels), every channel reduced
to every order r in {4, 8, 16, 32} through the continuous route. Variants, timed interleaved in one process:

* ours: ``dssbt.reduction.balance`` once on the (layers, H, N) arrays, then ``truncate`` at each order
  (Gramians in closed form, one batched SVD per channel, re-diagonalised DSS parameters out);
* library loop: per channel, python-control's ``balred(sys, 2r, method="truncate")`` (slycot AB09AD) on the real
  2-input 2-output realization of order 2N (its BT at order 2r equals our complex BT at order r), once per order --
  a library call cannot reuse the factorization across orders;
* scipy loop: per channel, ``scipy.linalg.solve_continuous_lyapunov`` for P and Q of the complex N-mode system,
  square-root BT (eigh square roots, one SVD) truncated at every order (dense reduced matrices, no eig).

The library loop is slow (~32 ms per channel for four orders), so it runs on an evenly spread subset of channels
(48 by default; the scipy loop on 192) and its time is extrapolated per channel to the whole model (said in the
output). Per-channel loops run with BLAS pinned to one
thread (threadpoolctl): the 64x64 and 128x128 problems are far too small for threads, and two BLAS threads on this
2-core machine made the loops ~30x slower. Ours is timed at the default BLAS threads and at one thread.

Agreement, checked on each loop's channels: HSVs to 1e-8 relative with an absolute floor of 1e-10 * hsv[0] (slycot's
smallest HSVs carry absolute errors ~1e-11 * hsv[0], as in tests/test_reduction.py); reduced transfer functions
at sample points to 1e-6 relative to the largest entry.

    python bench/reduction.py [--quick] [--layers 6] [--H 256] [--N 64] [--orders 4 8 16 32] [--lib-channels 48]
                             [--scipy-channels 192] [--repeats 5]
    python bench/reduction.py --profile     # cProfile of ours and of the library loop (where the time goes)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics

import numpy as np
import torch
from common import check, finish, header, interleaved, ratio, time_line
from scipy.linalg import eigh, solve_continuous_lyapunov, svd
from threadpoolctl import threadpool_info, threadpool_limits

from dssbt.model import ModelConfig, S4Model
from dssbt.oracles import embed, real_mimo, transfer
from dssbt.reduction import balance, truncate

TARGET = 100.0  # the target speed-up over the library loop
HSV_RTOL, HSV_FLOOR, TF_RTOL = 1e-8, 1e-10, 1e-6


def model_arrays(layers: int, H: int, N: int, seed: int = 0):
    """SSM parameters of a fresh model: Lambda, B, C complex (layers, H, N), dt real (layers, H)."""
    torch.manual_seed(seed)
    model = S4Model(ModelConfig(d_input=1, d_output=10, d_model=H, d_state=N, n_layers=layers))
    ss = [layer.ss_params() for layer in model.dss_layers()]  # (1, H, N) each: unidirectional
    Lambda, B, C = (torch.cat([s[k] for s in ss]).numpy() for k in ("Lambda", "B", "C"))
    dt = torch.stack([s["dt"] for s in ss]).numpy()
    return Lambda, B, C, dt


# ----- ours --------------------------------------------------------------------------------------------------------


def ours(Lambda, B, C, orders, dt=None):
    f = balance(Lambda, B, C, dt=dt)
    return f, {r: truncate(f, r) for r in orders}


# ----- python-control + slycot, one channel at a time ----------------------------------------------------------------


def library_loop(control, Lambda, B, C, orders):
    """Flattened channels (n, N) -> per channel {r: reduced StateSpace of order 2r}."""
    out = []
    for ch in range(Lambda.shape[0]):
        sys = real_mimo(Lambda[ch], B[ch], C[ch])
        out.append({r: control.balred(sys, 2 * r, method="truncate") for r in orders})
    return out


# ----- scipy Lyapunov solvers + square-root BT, one channel at a time -------------------------------------------------


def scipy_loop(Lambda, B, C, orders):
    """Flattened channels (n, N) -> per channel (hsv (N,), {r: (Ar (r, r), Br (r,), Cr (r,))}), complex N-mode form."""
    out = []
    for ch in range(Lambda.shape[0]):
        A = np.diag(Lambda[ch])
        b, c = B[ch][:, None], C[ch][None, :]
        P = solve_continuous_lyapunov(A, -b @ b.conj().T)  # A P + P A^H + b b^H = 0
        Q = solve_continuous_lyapunov(A.conj().T, -c.conj().T @ c)  # A^H Q + Q A + c^H c = 0
        Lp, Lq = (_sqrt_psd(M) for M in (P, Q))  # P = Lp Lp^H (eigh: survives rank deficiency)
        Z, hsv, YH = svd(Lq.conj().T @ Lp)
        red = {}
        for r in orders:
            s = 1.0 / np.sqrt(hsv[:r])
            T = (Lp @ YH[:r].conj().T) * s  # (N, r)
            Ti = s[:, None] * (Z[:, :r].conj().T @ Lq.conj().T)  # (r, N)
            red[r] = (Ti @ A @ T, (Ti @ b)[:, 0], (c @ T)[0])
        out.append((hsv, red))
    return out


def _sqrt_psd(M):
    M = 0.5 * (M + M.conj().T)
    w, U = eigh(M)
    return U * np.sqrt(np.clip(w, 0.0, None))


# ----- agreement ------------------------------------------------------------------------------------------------------


def sample_points(Lambda):
    """Points where the transfer functions are compared: near 0, a few on the imaginary axis near poles, off-axis."""
    im = np.sort(np.abs(Lambda.imag).ravel())
    return np.array([0.0, 0.7j, -2.3j, 0.2 + 1.1j, 1j * im[len(im) // 2], -1j * im[-1], 0.5 + 1j * im[len(im) // 4]])


def hsv_error(ref, hsv):
    """Largest violation ratio of |ref - hsv| <= rtol*|hsv| + floor*hsv[0] (<= 1 means within tolerance)."""
    return float(np.max(np.abs(ref - hsv) / (HSV_RTOL * np.abs(hsv) + HSV_FLOOR * hsv[0])))


def compare(control, flat, f, res, lib, lib_subset, sci, sci_subset, orders):
    """Print and check HSV and transfer-function agreement of ours with each loop, on the loop's channels."""
    Lambda, B, C = flat
    hsv = f.hsv.reshape(-1, f.hsv.shape[-1])
    red = {r: tuple(a.reshape(-1, r) for a in (res[r].Lambda, res[r].B, res[r].C)) for r in orders}
    pts = sample_points(Lambda)
    worst = dict.fromkeys(("lib hsv", "sci hsv", "lib tf", "sci tf", "lib hsv rel", "sci hsv rel"), 0.0)
    for k, ch in enumerate(lib_subset):
        h_lib = np.real(control.hsvd(real_mimo(Lambda[ch], B[ch], C[ch])))  # each HSV twice
        worst["lib hsv"] = max(worst["lib hsv"], hsv_error(h_lib[::2], hsv[ch]), hsv_error(h_lib[1::2], hsv[ch]))
        worst["lib hsv rel"] = max(
            worst["lib hsv rel"],
            np.max(np.abs(h_lib[::2] - hsv[ch]) / hsv[ch]),
            np.max(np.abs(h_lib[1::2] - hsv[ch]) / hsv[ch]),
        )
        for r in orders:
            Lr, Br, Cr = (a[ch] for a in red[r])
            for s in pts:
                ref = lib[k][r](s)  # 2x2 complex
                worst["lib tf"] = max(worst["lib tf"], np.abs(embed(Lr, Br, Cr, s) - ref).max() / np.abs(ref).max())
    for k, ch in enumerate(sci_subset):
        worst["sci hsv"] = max(worst["sci hsv"], hsv_error(sci[k][0], hsv[ch]))
        worst["sci hsv rel"] = max(worst["sci hsv rel"], np.max(np.abs(sci[k][0] - hsv[ch]) / hsv[ch]))
        for r in orders:
            Lr, Br, Cr = (a[ch] for a in red[r])
            Ar, Bs, Cs = sci[k][1][r]
            G_sci = np.array([Cs @ np.linalg.solve(s * np.eye(r) - Ar, Bs) for s in pts])
            G_ours = transfer(Lr, Br, Cr, pts)
            worst["sci tf"] = max(worst["sci tf"], np.abs(G_ours - G_sci).max() / np.abs(G_sci).max())
    n_lib, n_sci, n_pts = len(lib_subset), len(sci_subset), len(pts)
    check(
        "reduction HSVs equal python-control/slycot",
        worst["lib hsv"] <= 1,
        f"{n_lib} channels; worst |diff| / (1e-8 |hsv| + 1e-10 hsv[0]) = {worst['lib hsv']:.2g} (<= 1 passes); "
        f"worst plain relative difference {worst['lib hsv rel']:.1e}",
    )
    check(
        "reduction HSVs equal scipy-Lyapunov BT",
        worst["sci hsv"] <= 1,
        f"{n_sci} channels; worst |diff| / (1e-8 |hsv| + 1e-10 hsv[0]) = {worst['sci hsv']:.2g} (<= 1 passes); "
        f"worst plain relative difference {worst['sci hsv rel']:.1e}",
    )
    check(
        "reduction transfer functions equal python-control/slycot",
        worst["lib tf"] <= TF_RTOL,
        f"{n_lib} channels x {len(orders)} orders x {n_pts} points; worst rel. diff {worst['lib tf']:.1e} (tol 1e-6)",
    )
    check(
        "reduction transfer functions equal scipy-Lyapunov BT",
        worst["sci tf"] <= TF_RTOL,
        f"{n_sci} channels x {len(orders)} orders x {n_pts} points; worst rel. diff {worst['sci tf']:.1e} (tol 1e-6)",
    )


def blas_threads() -> int:
    return max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=1)


def profile(a, control, arrays, flat, subset) -> None:
    Lambda, B, C, dt = arrays
    for name, fn in (
        ("ours (default BLAS threads)", lambda: ours(Lambda, B, C, a.orders)),
        ("library loop, 1 BLAS thread", lambda: library_loop(control, *(x[subset] for x in flat), a.orders)),
    ):
        with threadpool_limits(1 if "loop" in name else None):
            pr = cProfile.Profile()
            pr.enable()
            fn()
            pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(12)
        print(f"== cProfile: {name}")
        print("\n".join(s.getvalue().splitlines()[:30]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat (keeps the script working in tests)")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--orders", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--lib-channels", type=int, default=48, help="channels the library loop runs on (extrapolated)")
    ap.add_argument("--scipy-channels", type=int, default=192, help="channels the scipy loop runs on (extrapolated)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="print cProfile tables instead of timing")
    a = ap.parse_args()
    if a.quick:
        a.layers, a.H, a.N, a.orders, a.lib_channels, a.scipy_channels, a.repeats = 2, 8, 16, [2, 4], 4, 16, 1
    # python-control with slycot (the test extra). Import slycot now: threadpoolctl pins only the BLAS libraries
    # already loaded, and python-control would load slycot's own OpenBLAS lazily, inside the first timed call.
    import control
    import slycot  # noqa: F401

    arrays = model_arrays(a.layers, a.H, a.N)
    Lambda, B, C, dt = arrays
    n_ch = Lambda.shape[0] * Lambda.shape[1]
    flat = tuple(x.reshape(n_ch, a.N) for x in (Lambda, B, C))
    subset = np.unique(np.linspace(0, n_ch - 1, min(a.lib_channels, n_ch)).round().astype(int))
    sci_subset = np.unique(np.linspace(0, n_ch - 1, min(a.scipy_channels, n_ch)).round().astype(int))
    if a.profile:
        return profile(a, control, arrays, flat, subset)
    nthreads = blas_threads()
    header(
        "Balanced truncation of a whole model: ours (batched) vs per-channel python-control/slycot and scipy loops",
        layers=a.layers,
        H=a.H,
        N=a.N,
        channels=n_ch,
        orders=a.orders,
        route="continuous",
        repeats=a.repeats,
        blas_threads_ours=nthreads,
        blas_threads_loops=1,
    )
    print(
        f"   library loop measured on {len(subset)} of {n_ch} channels, scipy loop on {len(sci_subset)}; "
        f"their times are extrapolated per channel to all {n_ch} channels (x{n_ch / len(subset):.1f}, "
        f"x{n_ch / len(sci_subset):.1f}). pymor BTReductor: not installed here, not measured."
    )

    # Agreement first (also warms every code path up).
    f, res = ours(Lambda, B, C, a.orders)
    with threadpool_limits(1):
        lib = library_loop(control, *(x[subset] for x in flat), a.orders)
        sci = scipy_loop(*(x[sci_subset] for x in flat), a.orders)
        compare(control, flat, f, res, lib, subset, sci, sci_subset, a.orders)

    def pinned(fn):
        def run():
            with threadpool_limits(1):
                fn()

        return run

    variants = {
        "ours": lambda: ours(Lambda, B, C, a.orders),
        "ours_1thread": pinned(lambda: ours(Lambda, B, C, a.orders)),
        "ours_discrete": lambda: ours(Lambda, B, C, a.orders, dt=dt),
        "library": pinned(lambda: library_loop(control, *(x[subset] for x in flat), a.orders)),
        "scipy": pinned(lambda: scipy_loop(*(x[sci_subset] for x in flat), a.orders)),
    }
    times = interleaved(variants, a.repeats, warmup=0)
    lib_all = [t * n_ch / len(subset) for t in times["library"]]
    sci_all = [t * n_ch / len(sci_subset) for t in times["scipy"]]
    time_line(f"reduction ours, {n_ch} channels, {nthreads} BLAS threads", times["ours"])
    time_line(f"reduction ours, {n_ch} channels, 1 BLAS thread", times["ours_1thread"])
    time_line(f"reduction ours, discrete route, {n_ch} channels, {nthreads} BLAS threads", times["ours_discrete"])
    time_line("reduction library loop per channel (python-control balred x orders)", times["library"], len(subset))
    time_line(f"reduction library loop extrapolated to {n_ch} channels", lib_all)
    time_line("reduction scipy loop per channel (2 Lyapunov solves + square-root BT)", times["scipy"], len(sci_subset))
    time_line(f"reduction scipy loop extrapolated to {n_ch} channels", sci_all)
    ratio("reduction speed-up ours vs library loop", lib_all, times["ours"], TARGET)
    ratio("reduction speed-up ours (1 thread) vs library loop (1 thread)", lib_all, times["ours_1thread"], TARGET)
    ratio("reduction speed-up ours vs scipy loop", sci_all, times["ours"])
    ratio("reduction speed-up ours (1 thread) vs scipy loop (1 thread)", sci_all, times["ours_1thread"])
    per_ch = statistics.median(times["ours"]) / n_ch
    print(f"   ours per channel: {per_ch * 1e3:.2f} ms (median) for the HSVs and all {len(a.orders)} orders")
    finish()


if __name__ == "__main__":
    main()
