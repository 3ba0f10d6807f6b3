"""One DSS layer, forward + backward on CPU: ``dssbt.dss.DSS`` vs a textbook reference written here.

The reference follows the formulas of DESIGN §4 literally: ZOH, then the complex Vandermonde kernel with one
complex ``exp`` per (channel, mode, step) -- a full (H, N, L) tensor -- then the FFT convolution (zero-padded to
2L) plus the skip term ``D u``. It reads the very same ``nn.Parameter`` tensors as our layer, so outputs and all
six parameter gradients can be compared one to one (float32 both; a float64 evaluation of the reference is the
ground truth both are also compared with).

Figures: time of one step (forward + backward of ``sum(y * g)`` with a fixed random g) per variant, interleaved,
min and median over repeats, the speed-up, and the peak memory of one step. Memory: tracemalloc does not see
torch's allocations, so each variant runs in a fresh subprocess that does one warm-up step, resets the kernel's
peak-RSS mark (``/proc/self/clear_refs``), runs the step again and reads the peak (VmHWM); the figure is that peak
minus the RSS just before the step. glibc is told to mmap every block >= 64 KiB (``common.PROBE_ENV``), so freed
temporaries leave the RSS at once and the high-water mark is the peak of live memory, not of a fragmented heap.

    python bench/layer.py [--quick] [--B 32] [--L 1024 4096] [--H 128] [--N 64] [--repeats 7] [--threads 2]
    python bench/layer.py --profile [--L 4096]      # torch.profiler table of both variants (where the time goes)
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
from pathlib import Path

import torch
from common import check, finish, header, interleaved, maxrss_mib, ratio, reset_peak_rss, rss_mib, run_probe, time_line

from dssbt.dss import DSS

TARGET = 3.0  # the target speed-up over the textbook reference
TOL = 1e-4  # outputs and gradients must agree to this relative (2-norm) difference


def textbook_forward(layer: DSS, u: torch.Tensor) -> torch.Tensor:
    """Reference DSS layer (unidirectional): u real (B, H, L) -> y real (B, H, L).

    K[h, l] = Re(sum_n C[h, n] B_bar[h, n] exp(dt[h] Lambda[h, n] l)), y = irfft(rfft(u) rfft(K))[:L] + D u.
    """
    L = u.shape[-1]
    Lambda = torch.complex(-torch.exp(layer.Lambda_log_neg_re[0]), layer.Lambda_im[0])  # (H, N)
    B = torch.view_as_complex(layer.B[0])  # (H, N)
    C = torch.view_as_complex(layer.C[0])
    dt = torch.exp(layer.log_dt)  # (H,)
    dtL = Lambda * dt[:, None]  # (H, N)
    B_bar = (torch.exp(dtL) - 1) / Lambda * B  # ZOH
    steps = torch.arange(L, dtype=layer.log_dt.dtype)
    V = torch.exp(dtL[:, :, None] * steps)  # (H, N, L): the full complex exp
    K = torch.einsum("hn,hnl->hl", C * B_bar, V).real  # (H, L)
    n = 2 * L
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(K, n=n), n=n)[..., :L]  # (B, H, L)
    return y + layer.D[:, None] * u


VARIANTS = {"ours": lambda layer, u: layer(u), "textbook": textbook_forward}


def train_step(layer: DSS, u: torch.Tensor, g: torch.Tensor, variant: str) -> torch.Tensor:
    """Forward + backward of the scalar sum(y * g); returns y (detached). Gradients accumulate into layer's .grad."""
    layer.zero_grad(set_to_none=True)
    y = VARIANTS[variant](layer, u)
    (y * g).sum().backward()
    return y.detach()


def setup(B: int, L: int, H: int, N: int, seed: int = 0) -> tuple[DSS, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    layer = DSS(H, N)
    u = torch.randn(B, H, L)
    g = torch.randn(B, H, L) / (B * H * L) ** 0.5
    return layer, u, g


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative 2-norm difference of a from b (computed in float64)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def agreement(layer: DSS, u: torch.Tensor, g: torch.Tensor) -> dict[str, dict[str, float]]:
    """Relative differences of y and of every parameter gradient: ours vs textbook (float32), each vs float64 truth."""
    res = {}
    for v in VARIANTS:
        y = train_step(layer, u, g, v)
        res[v] = {"y": y, **{n: p.grad.clone() for n, p in layer.named_parameters()}}
    l64 = copy.deepcopy(layer).double()
    y64 = train_step(l64, u.double(), g.double(), "textbook")
    res["float64"] = {"y": y64, **{n: p.grad.clone() for n, p in l64.named_parameters()}}
    layer.zero_grad(set_to_none=True)
    return {
        "ours vs textbook": {k: rel(res["ours"][k], res["textbook"][k]) for k in res["ours"]},
        "ours vs float64": {k: rel(res["ours"][k], res["float64"][k]) for k in res["ours"]},
        "textbook vs float64": {k: rel(res["textbook"][k], res["float64"][k]) for k in res["ours"]},
    }


def probe(a: argparse.Namespace) -> None:
    """In a fresh process: RSS before and peak RSS during one training step of one variant (JSON, last line).

    The step runs once as a warm-up, then the peak-RSS mark is reset to the current RSS and the step runs again.
    """
    torch.set_num_threads(a.threads)
    layer, u, g = setup(a.B, a.probe_L, a.H, a.N)
    train_step(layer, u, g, a.probe)  # warm-up: lazily loaded kernels and FFT plans are not the step's memory
    gc.collect()
    reset = reset_peak_rss()
    base = rss_mib()
    train_step(layer, u, g, a.probe)
    print(json.dumps({"base_mib": base, "peak_mib": maxrss_mib(), "reset": reset}))


def profile(a: argparse.Namespace) -> None:
    """torch.profiler tables (self CPU time per op) of one step of each variant at every L."""
    torch.set_num_threads(a.threads)
    for L in a.L:
        layer, u, g = setup(a.B, L, a.H, a.N)
        for v in VARIANTS:
            train_step(layer, u, g, v)  # warm-up
            with torch.profiler.profile() as prof:
                train_step(layer, u, g, v)
            print(f"== profile: {v}, B={a.B} L={L} H={a.H} N={a.N}, {a.threads} threads")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats (keeps the script working in tests)")
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--L", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--H", type=int, default=128)
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler tables instead of timing")
    ap.add_argument("--probe", choices=list(VARIANTS), help=argparse.SUPPRESS)
    ap.add_argument("--probe-L", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.B, a.L, a.H, a.N, a.repeats, a.threads = 2, [256, 512], 16, 16, 2, 1
    if a.probe:
        return probe(a)
    if a.profile:
        return profile(a)
    torch.set_num_threads(a.threads)
    header(
        "DSS layer forward+backward: dssbt.dss.DSS vs textbook (full complex exp over (H, N, L), FFT conv)",
        B=a.B,
        L=a.L,
        H=a.H,
        N=a.N,
        threads=a.threads,
        repeats=a.repeats,
        dtype="float32",
    )
    for L in a.L:
        layer, u, g = setup(a.B, L, a.H, a.N)
        print(f"-- L={L}")
        diffs = agreement(layer, u, g)
        for what, d in diffs.items():
            print(f"   rel. diff {what:20s} " + "  ".join(f"{k} {v:.1e}" for k, v in d.items()))
        d = diffs["ours vs textbook"]
        check(
            f"layer L={L} outputs agree",
            d["y"] <= TOL,
            f"relative difference of y, ours vs textbook {d['y']:.1e} (tolerance {TOL:g})",
        )
        # Gradients: equal to TOL, or (where float32 round-off of the reference itself exceeds TOL, e.g. the log_dt
        # gradient, a sum with cancellation) as close to the float64 truth as the textbook is, within a factor 1.5.
        bad = [
            k
            for k in d
            if k != "y" and d[k] > TOL and diffs["ours vs float64"][k] > 1.5 * diffs["textbook vs float64"][k]
        ]
        loose = [k for k in d if k != "y" and d[k] > TOL and k not in bad]
        check(
            f"layer L={L} gradients agree",
            not bad,
            f"max relative difference ours vs textbook {max(v for k, v in d.items() if k != 'y'):.1e}"
            + (f"; above {TOL:g} but as close to float64 as the textbook (within 1.5x): {loose}" if loose else "")
            + (f"; WRONG: {bad}" if bad else ""),
        )
        times = interleaved(
            {v: (lambda v=v, lay=layer, u=u, g=g: train_step(lay, u, g, v)) for v in VARIANTS}, a.repeats
        )
        for v, ts in times.items():
            time_line(f"layer L={L} {v}", ts, extra=f"  -> {a.B / min(ts):.1f} sequences/s at min")
        ratio(f"layer L={L} speed-up ours vs textbook", times["textbook"], times["ours"], TARGET)
        del layer, u, g
        gc.collect()
        if a.no_memory:
            continue
        mem = {}
        for v in VARIANTS:
            mem[v] = run_probe(
                Path(__file__),
                [
                    "--probe",
                    v,
                    "--probe-L",
                    str(L),
                    "--B",
                    str(a.B),
                    "--H",
                    str(a.H),
                    "--N",
                    str(a.N),
                    "--threads",
                    str(a.threads),
                ],
            )
            m = mem[v]
            note = "" if m["reset"] else " (peak-RSS reset not permitted: includes import peaks)"
            print(
                f"MEMORY layer L={L} {v}: peak RSS {m['peak_mib']:.0f} MiB; one step adds "
                f"{m['peak_mib'] - m['base_mib']:.1f} MiB to the {m['base_mib']:.0f} MiB after setup{note}"
            )
        inc = {v: mem[v]["peak_mib"] - mem[v]["base_mib"] for v in VARIANTS}
        print(
            f"RATIO layer L={L} step memory textbook / ours: {inc['textbook'] / max(inc['ours'], 1e-9):.2f}x  "
            "no target: info"
        )
    finish()


if __name__ == "__main__":
    main()
