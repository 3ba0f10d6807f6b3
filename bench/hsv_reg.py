"""Cost of the Hankel nuclear-norm regulariser (dssbt.reduction.hankel) beside a training step, and the global
budget rules (dssbt.reduction.budget) compared: ``python bench/hsv_reg.py [--quick] [--threads T]``.

1. CHECKs: hsv_sum of a layer against the numpy/eigh HSVs of ``balance`` (float32 and float64 paths).
2. Default image model (2 layers, H=32, N=32, B=50, L=1024): one AdamW step (forward, backward, update) without
   and with ``hankel_penalty`` (float32 and float64 HSV paths), interleaved; RATIO of with/without, target <= 1.5.
3. Paper size (6 layers x H=256 x N=64, B=32, L=1024): the penalty's forward+backward for ONE layer and the
   training step of a ONE-layer model of that width, both timed here and scaled by 6 (printed as such): a six-layer
   step of that size does not fit the time this shared machine allows.
4. Budget: discarded HSV energy and measured model-level kernel error of the energy-optimal allocation against
   LAST's normalised ranking, at several budget fractions, on synthetic multi-layer HSV profiles and a model.

``--quick``: tiny sizes, 1 repeat (keeps the script working; its timings mean nothing). Threads default to 1:
with OpenMP on a shared, oversubscribed machine, 2 threads made small elementwise ops ~1000x slower here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import check, finish, header, interleaved, summary, time_line  # noqa: E402

from dssbt.model import ModelConfig, S4Model  # noqa: E402
from dssbt.reduction import balance  # noqa: E402
from dssbt.reduction.apply import ModelReducer, reduce_model  # noqa: E402
from dssbt.reduction.budget import allocate_budget, allocate_last, discarded_energy  # noqa: E402
from dssbt.reduction.hankel import hankel_penalty, hsv_sum, layer_params  # noqa: E402


def model_of(H: int, N: int, n_layers: int, seed: int = 0) -> S4Model:
    torch.manual_seed(seed)
    return S4Model(ModelConfig(d_input=1, d_output=10, d_model=H, d_state=N, n_layers=n_layers))


def accuracy_checks() -> None:
    model = model_of(16, 16, 1)
    layer = model.dss_layers()[0]
    with torch.no_grad():  # the float64 values of the float32 parameters, as hsv_sum(dtype=float64) builds them
        ss = {k: v.numpy() for k, v in layer_params(layer, "discrete", torch.float64).items()}
    ref = balance(ss["Lambda"], ss["B"], ss["C"], dt=ss["dt"]).hsv.sum()
    for dtype, tol in ((None, 1e-5), (torch.float64, 1e-10)):
        got = hsv_sum(layer, dtype=dtype).item()
        check(
            f"hsv_sum_{'f64' if dtype else 'f32'}_vs_balance",
            abs(got - ref) <= tol * ref,
            f"rel diff {abs(got - ref) / ref:.2e} (tol {tol:g})",
        )


def step_fn(model: S4Model, x, y, weight: float, dtype):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + hankel_penalty(model, weight, dtype=dtype)
        loss.backward()
        opt.step()

    return step


def penalty_fn(model: S4Model, dtype):
    def run():
        model.zero_grad()
        hsv_sum(model, dtype=dtype).backward()

    return run


def step_cost(H, N, n_layers, B, L, repeats, title, scale=1, target=None):
    header(title, H=H, N=N, layers=n_layers, B=B, L=L, threads=torch.get_num_threads())
    model = model_of(H, N, n_layers)
    x, y = torch.randn(B, L), torch.randint(0, 10, (B,))
    variants = {
        "step": step_fn(model, x, y, 0.0, None),
        "step+hsv_f32": step_fn(model, x, y, 1e-6, None),
        "step+hsv_f64": step_fn(model, x, y, 1e-6, torch.float64),
        "hsv_f32": penalty_fn(model, None),
        "hsv_f64": penalty_fn(model, torch.float64),
    }
    ts = interleaved(variants, repeats)
    extra = f"  (x{scale} = {scale} layers)" if scale != 1 else ""
    for name, t in ts.items():
        time_line(f"{title}:{name}", [v * scale for v in t], extra=extra)
    base = summary(ts["step"])
    for name in ("hsv_f32", "hsv_f64"):
        med = summary(ts[name])[1] / base[1]
        mn = summary(ts[name])[0] / base[0]
        verdict = "info" if target is None else ("met" if 1 + med <= target else "MISSED")
        tgt = "no target" if target is None else f"target step+hsv <= {target:g}x step"
        print(f"RATIO {title}:{name}/step: {med:.3f}x (min/min {mn:.3f}x)  {tgt}: {verdict}")
    for name in ("step+hsv_f32", "step+hsv_f64"):
        print(
            f"RATIO {title}:{name}/step (measured together): {summary(ts[name])[1] / base[1]:.3f}x "
            f"(min/min {summary(ts[name])[0] / base[0]:.3f}x)  info"
        )


def synthetic_hsvs(rng, sizes, H):
    """Layers with different HSV scales and decay rates (as after training: early layers often slower decay)."""
    out = []
    for i, N in enumerate(sizes):
        scale = 10.0 ** rng.uniform(-1, 1)
        decay = rng.uniform(0.1, 1.5)
        out.append(scale * np.exp(-decay * np.arange(N))[None] * rng.uniform(0.3, 1.0, (H, 1)))
    return out


def budget_comparison(quick: bool) -> None:
    header("budget: energy-optimal greedy vs LAST normalised ranking")
    fractions = (0.1, 0.25, 0.5)
    rng = np.random.default_rng(0)
    cases = {f"synthetic{s}": synthetic_hsvs(rng, [16] * 4, 8) for s in range(3)}
    for name, hsvs in cases.items():
        for f in fractions:
            g, last = allocate_budget(hsvs, f), allocate_last(hsvs, f)
            eg, el = discarded_energy(hsvs, g), discarded_energy(hsvs, last)
            total = sum((h**2).sum() for h in hsvs)
            check(f"budget_greedy_not_worse:{name}:{f}", eg <= el * (1 + 1e-12))
            print(
                f"   {name} fraction {f}: greedy {g} drops {eg / total:.3e} of the energy; LAST {last} drops "
                f"{el / total:.3e}"
            )
    # a model: 3 layers whose channels were pushed apart by a few steps of the Hankel penalty on the middle layer
    H, N = (8, 8) if quick else (32, 32)
    model = model_of(H, N, 3, seed=1)
    opt = torch.optim.AdamW(model.dss_layers()[1].parameters(), lr=2e-2)
    for _ in range(3 if quick else 40):
        opt.zero_grad()
        hsv_sum(model.dss_layers()[1]).backward()
        opt.step()
    hsvs = ModelReducer(model).hsv()
    total = sum((h**2).sum() for h in hsvs)
    for f in fractions:
        line = []
        for rule, alloc in (("greedy", allocate_budget), ("LAST", allocate_last)):
            orders = alloc(hsvs, f)
            _, rep = reduce_model(model, orders, "bt", "discrete", kernel_length=256 if quick else 1024)
            errs = [np.max(layer["rel_kernel_error"]) for layer in rep["layers"] if "rel_kernel_error" in layer]
            line.append(
                f"{rule} {orders} drops {discarded_energy(hsvs, orders) / total:.3e}, worst rel kernel "
                f"error {max(errs) if errs else 0.0:.3e}"
            )
        print(f"   model (3 layers, middle penalised) fraction {f}: " + "; ".join(line))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    accuracy_checks()
    if args.quick:
        step_cost(8, 8, 2, 2, 64, 1, "default-image(quick)")
        step_cost(16, 16, 1, 2, 64, 1, "paper-size(quick)", scale=6)
    else:
        step_cost(32, 32, 2, 50, 1024, 5, "default-image", target=1.5)
        step_cost(256, 64, 1, 32, 1024, 3, "paper-size", scale=6)
    budget_comparison(args.quick)
    finish()


if __name__ == "__main__":
    main()
