"""Wall time of balanced truncation of every channel of a whole model, to several orders at once.

    python bench/reduce_model.py [--layers 6] [--H 256] [--N 64] [--orders 4 8 16 32] [--repeats 3] [--quick]

Prints (min / median over repeats): the batched BT core on the parameter arrays (Gramians, factors, SVD once per
channel, truncation and re-diagonalisation at each order), and the model-level reduction that also builds the
order-r models and measures every channel's kernel error for the report.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import check, finish

from dssbt.model import ModelConfig, S4Model
from dssbt.reduction import balance, truncate
from dssbt.reduction.apply import ModelReducer


def timed(fn, repeats: int) -> list[float]:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return ts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--orders", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--L", type=int, default=1024, help="kernel length of the report's error measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny model, one repeat (keeps the script working)")
    a = ap.parse_args()
    if a.quick:
        a.layers, a.H, a.N, a.orders, a.L, a.repeats = 2, 8, 8, [2, 4], 64, 1
    torch.manual_seed(0)
    model = S4Model(ModelConfig(d_input=1, d_output=10, d_model=a.H, d_state=a.N, n_layers=a.layers))
    ss = [layer.ss_params() for layer in model.dss_layers()]
    Lambda, B, C = (torch.cat([s[k] for s in ss]).numpy() for k in ("Lambda", "B", "C"))  # (layers, H, N)
    dt = torch.cat([s["dt"][None] for s in ss]).numpy()  # (layers, H)
    n_ch = Lambda.shape[0] * Lambda.shape[1]
    print(
        f"{a.layers} layers x H={a.H} = {n_ch} channels, N={a.N}, orders {a.orders}, {torch.get_num_threads()} threads"
    )
    for route, d in (("continuous", None), ("discrete", dt)):
        core = timed(lambda: [truncate(f, r) for f in [balance(Lambda, B, C, dt=d)] for r in a.orders], a.repeats)

        def model_level():
            reducer = ModelReducer(model, route, kernel_length=a.L)  # factors each layer once for every order
            return [reducer.reduce("bt", r) for r in a.orders]

        full = timed(model_level, a.repeats)
        sizes = [red.cfg.d_state for red, _ in model_level()]
        check(f"reduce_model {route} reduced models have the asked orders", sizes == a.orders, str(sizes))
        print(f"  {route:10s} BT core on arrays   min {min(core):6.2f} s  median {statistics.median(core):6.2f} s")
        print(f"  {route:10s} model-level + report min {min(full):6.2f} s  median {statistics.median(full):6.2f} s")
    finish()


if __name__ == "__main__":
    main()
