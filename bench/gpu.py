"""The GPU benchmark: the paper-size layer against state-spaces/s4's S4D, a training step at every LRA preset shape
with AMP and compile on and off, and balanced truncation of a paper-size model held on the GPU against the CPU.

Without a CUDA device it prints that and exits 0. With one it runs in about 5 minutes (``--budget-s``, default 280:
a variant that would start after it is printed as skipped, not run):

  layer   B=32, H=128, N=64 complex modes, L=1024 and 4096: forward + backward of the unit of bench/train_step.py
          (DSS + GELU + GLU output map): ours vs the textbook layer and, with S4D_PATH (a copy of
          state-spaces/s4's models/s4/s4d.py; einops installed), S4D with the same function (checked); target >= 3x.
  steps   per task of workflow/presets/lra.yaml (model + task_settings; the prepared lengths: listops 2,048, text
          4,096, retrieval 4,000 x 2 documents, image 1,024, pathfinder 1,024, path-x 16,384), its batch size: the
          training step of a job (zero_grad, forward under optim.amp's autocast, cross-entropy, backward, AdamW)
          with amp none / bf16 and compile off / on: steps per second (after 3 warm-up steps; the compile time is
          printed apart) and the peak GPU memory of the step.
  bt      the LRA image model (6 layers, H=512, N=64, bidirectional) balanced-truncated to r=16 by
          ``shrink.shrink_model`` (what ``optim.reduce_during`` runs) with the model on the GPU and on the CPU. BT's
          Gramians and SVDs run in numpy on the host in both cases: the GPU case adds the copies.

    python bench/gpu.py [--budget-s 280] [--steps 10] [--tasks image listops ...]
    S4D_PATH=/path/to/s4/models/s4/s4d.py python bench/gpu.py
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from common import ROOT, check, finish, header, ratio

LENGTHS = {"listops": 2048, "text": 4096, "retrieval": 4000, "image": 1024, "pathfinder": 1024, "pathx": 16384}
TASK_HEADS = {  # encoder, d_input (vocabulary incl. padding / pixels), d_output, dual
    "listops": ("embedding", 20, 10, False),
    "text": ("embedding", 256, 2, False),
    "retrieval": ("embedding", 256, 2, True),
    "image": ("linear", 1, 10, False),
    "pathfinder": ("linear", 1, 2, False),
    "pathx": ("linear", 1, 2, False),
}
LAYER_TARGET = 3.0


def cuda_timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall times of ``repeats`` calls of ``fn``, each ended by a device synchronisation."""
    out = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def bench_layer(dev: torch.device, budget: Budget, repeats: int) -> None:
    from train_step import Unit, load_s4d

    S4D, why = load_s4d()
    B, H, N = 32, 128, 64
    print(f"-- paper-size unit (DSS + GELU + GLU): B={B} H={H} N={N} complex modes, forward + backward; S4D: {why}")
    for L in (1024, 4096):
        if budget.left() < 0:
            print(f"layer L={L}: skipped (time budget spent)")
            continue
        torch.manual_seed(0)
        unit = Unit(H, N)
        s4d = unit.to_s4d(S4D).to(dev) if S4D is not None else None
        unit = unit.to(dev)
        u = torch.randn(B, H, L, device=dev)
        g = torch.randn(B, H, L, device=dev) / (B * H * L) ** 0.5
        u_blh, g_blh = u.transpose(1, 2).contiguous(), g.transpose(1, 2).contiguous()
        variants = {
            "ours": (lambda: unit.ours(u_blh), unit, g_blh, True),
            "textbook": (lambda: unit.textbook(u), unit, g, False),
        }
        if s4d is not None:
            variants["s4d"] = (lambda: s4d(u)[0], s4d, g, False)

        def run(v: str) -> torch.Tensor:
            fn, module, grad, blh = variants[v]
            module.zero_grad(set_to_none=True)
            y = fn()
            (y * grad).sum().backward()
            return (y.transpose(1, 2) if blh else y).detach()

        outs = {v: run(v) for v in variants}
        for v in outs:
            if v != "textbook":
                d = ((outs[v].double() - outs["textbook"].double()).norm() / outs["textbook"].double().norm()).item()
                check(f"unit L={L} {v} equals textbook", d <= 1e-4, f"relative difference {d:.1e} (float32, tol 1e-4)")
        times: dict[str, list[float]] = {v: [] for v in variants}
        for i in range(repeats):  # interleaved, the order reversed every other repeat
            for v in list(variants) if i % 2 == 0 else reversed(list(variants)):
                times[v] += cuda_timed(lambda v=v: run(v), 1)
        for v, ts in times.items():
            print(f"TIME unit L={L} {v}: min {min(ts) * 1e3:.2f} ms  median {sorted(ts)[len(ts) // 2] * 1e3:.2f} ms")
        ratio(f"unit L={L} ours vs textbook", times["textbook"], times["ours"])
        if s4d is not None:
            ratio(f"unit L={L} ours vs S4D", times["s4d"], times["ours"], LAYER_TARGET)
        else:
            print(f"RATIO unit L={L} ours vs S4D: skipped ({why})")


def lra_shapes() -> dict[str, tuple[dict, int]]:
    """task -> (ModelConfig dict, batch size) of workflow/presets/lra.yaml."""
    import yaml

    preset = yaml.safe_load((ROOT / "workflow" / "presets" / "lra.yaml").read_text())
    out = {}
    for task, (encoder, d_input, d_output, dual) in TASK_HEADS.items():
        ts = preset.get("task_settings", {}).get(task, {})
        model = {**preset["model"], **ts.get("model", {})}
        model.update(encoder=encoder, d_input=d_input, d_output=d_output, dual=dual)
        out[task] = (model, {**preset["optim"], **ts.get("optim", {})}["batch_size"])
    return out


def bench_steps(dev: torch.device, budget: Budget, tasks: list[str], steps: int) -> None:
    from train_step import batch

    from dssbt.eager import AdamW
    from dssbt.evaluate import autocast
    from dssbt.model import ModelConfig, S4Model

    print(f"-- LRA preset training steps on {torch.cuda.get_device_name(dev)}: steps/s after 3 warm-up steps")
    shapes = lra_shapes()
    # eager variants of every task first (cheap), then the compiled ones (each compiles for tens of seconds)
    order = [(t, amp, c) for c in (False, True) for t in tasks for amp in ("none", "bf16")]
    rates: dict[tuple[str, str, bool], float] = {}
    for task, amp, comp in order:
        name = f"{task} amp={amp} compile={'on' if comp else 'off'}"
        if budget.left() < (60 if comp else 10):
            print(f"STEP {name}: skipped (time budget: {budget.left():.0f} s left)")
            continue
        cfg_d, B = shapes[task]
        L = LENGTHS[task]
        torch.manual_seed(0)
        model = S4Model(ModelConfig.from_dict(cfg_d)).to(dev)
        if comp:
            model.compile()
        opt = AdamW(model.parameters(), lr=1e-3)
        x, lengths, y = (t.to(dev) for t in batch({"cfg": cfg_d}, B, L))
        model.train()

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast(dev, amp):
                logits = model(x, lengths).float()
            F.cross_entropy(logits, y).backward()
            opt.step()

        try:
            t0 = time.perf_counter()
            cuda_timed(step, 1)
            first = time.perf_counter() - t0
            cuda_timed(step, 2)
            torch.cuda.reset_peak_memory_stats(dev)
            ts = cuda_timed(step, steps)
        except torch.cuda.OutOfMemoryError:
            print(f"STEP {name}: out of GPU memory at batch {B}, L={L}")
            continue
        finally:
            torch.cuda.empty_cache()
        rate = steps / sum(ts)
        rates[(task, amp, comp)] = rate
        peak = torch.cuda.max_memory_allocated(dev) / 2**30
        extra = f", first step {first:.1f} s (compile)" if comp else ""
        print(f"STEP {name}: {rate:.2f} steps/s ({sum(ts) / steps * 1e3:.1f} ms/step), peak {peak:.2f} GiB{extra}")
        model = opt = None  # freed before the next variant's model is built
    for task in tasks:
        base = rates.get((task, "none", False))
        for amp, comp in (("bf16", False), ("none", True), ("bf16", True)):
            r = rates.get((task, amp, comp))
            if base and r:
                print(f"RATIO {task} amp={amp} compile={'on' if comp else 'off'} vs float32 eager: {r / base:.2f}x")


def bench_bt(dev: torch.device, budget: Budget) -> None:
    from dssbt.eager import AdamW
    from dssbt.model import ModelConfig, S4Model
    from dssbt.shrink import shrink_model

    if budget.left() < 20:
        print("BT: skipped (time budget spent)")
        return
    cfg_d, _ = lra_shapes()["image"]
    torch.manual_seed(0)
    cpu_model = S4Model(ModelConfig.from_dict(cfg_d))
    gpu_model = copy.deepcopy(cpu_model).to(dev)
    times = {}
    for where, model in (("cpu", cpu_model), ("cuda", gpu_model)):
        opt = AdamW(model.parameters(), lr=1e-3)
        torch.cuda.synchronize()
        t = time.perf_counter()
        reduced, _, _ = shrink_model(model, opt, [16] * model.cfg.n_layers)
        torch.cuda.synchronize()
        times[where] = time.perf_counter() - t
        print(f"TIME BT of the LRA image model (6 x H=512, N=64 -> 16), model on {where}: {times[where]:.2f} s")
    print(
        f"RATIO BT model on cpu vs on cuda: {times['cpu'] / times['cuda']:.2f}x (BT itself runs in numpy on the host)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=280.0, help="stop starting variants after this many seconds")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    ap.add_argument("--repeats", type=int, default=10, help="timed repeats of the layer")
    ap.add_argument("--tasks", nargs="+", default=list(LENGTHS), choices=list(LENGTHS))
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device (torch.cuda.is_available() is False): nothing measured")
        return
    dev = torch.device("cuda")
    header(
        "GPU: paper-size layer vs S4D, LRA training steps (AMP, compile), BT on GPU vs CPU",
        device=torch.cuda.get_device_name(dev),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        budget_s=a.budget_s,
    )
    budget = Budget(a.budget_s)
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 (the pipeline's setting)
    bench_layer(dev, budget, a.repeats)
    bench_steps(dev, budget, a.tasks, a.steps)
    bench_bt(dev, budget)
    finish()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
