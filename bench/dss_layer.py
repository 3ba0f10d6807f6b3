"""Train-step throughput of one DSS layer on CPU: factored-Vandermonde kernel vs the naive full-exp kernel.

A step = forward (kernel + FFT convolution) + backward of a scalar loss, for one layer of shape
(B, H, L) with N complex modes. Both variants run interleaved in one process, so the ratio is fair on a noisy box.

    python bench/dss_layer.py [--B 32] [--L 1024] [--H 128] [--N 64] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dssbt.dss import DSS


def step(layer: DSS, u: torch.Tensor, naive: bool) -> None:
    L = u.shape[-1]
    if naive:
        # Same layer with the kernel computed by the reference path.
        k = layer.kernel(L, naive=True)[0]
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]
        y = y + layer.D.unsqueeze(-1) * u
    else:
        y = layer(u)
    y.square().mean().backward()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--L", type=int, default=1024)
    ap.add_argument("--H", type=int, default=128)
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    layer = DSS(a.H, a.N)
    u = torch.randn(a.B, a.H, a.L)
    with torch.no_grad():
        ref = layer.kernel(a.L, naive=True)
        err = ((layer.kernel(a.L) - ref).norm() / ref.norm()).item()
    times: dict[bool, list[float]] = {False: [], True: []}
    for naive in (False, True):  # warm-up
        step(layer, u, naive)
    for _ in range(a.repeats):
        for naive in (False, True):
            layer.zero_grad()
            t = time.perf_counter()
            step(layer, u, naive)
            times[naive].append(time.perf_counter() - t)
    fast, slow = statistics.median(times[False]), statistics.median(times[True])
    print(f"DSS layer fwd+bwd, B={a.B} L={a.L} H={a.H} N={a.N}, {a.threads} threads, {a.repeats} repeats")
    print(f"  relative kernel difference fast vs naive: {err:.2e}")
    for name, ts in (("fast (factored Vandermonde)", times[False]), ("naive (full complex exp)", times[True])):
        print(
            f"  {name:28s} min {min(ts) * 1e3:8.1f} ms  median {statistics.median(ts) * 1e3:8.1f} ms  "
            f"-> {a.B / statistics.median(ts):7.1f} sequences/s"
        )
    print(f"  speed-up (median naive / median fast): {slow / fast:.2f}x")


if __name__ == "__main__":
    main()
