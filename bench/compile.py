"""``optim.compile`` measured: a training step compiled (torch.compile, inductor) vs eager, side by side in one
process, and the compile time with a cold and a warm inductor cache; from them, a whole training job.

For each shape (``--shapes``; the default study's image and pathfinder shapes of bench/train_step.py, ``image_r4``
/ ``_r8`` / ``_r16`` the image model at d_state r, ``lra_image`` the LRA preset's model at the image task's
length) two fresh interpreters run (``--child``) with one ``TORCHINDUCTOR_CACHE_DIR``, new for the first (cold)
and reused by the second (warm). Each builds the eager model and a compiled copy with the same weights, times the
compiled model's first training step and first evaluation forward against the eager model's (the difference is
the compile time of the job's two graphs), then times ``--repeats`` training steps (zero_grad, forward,
cross-entropy, backward, AdamW step) of each, interleaved, and, where they build, of the eager path with the C
kernels (``optim.kernels: c``). A check compares the first step's losses of the two models (float32, relative 1e-4).

Whole job = the compile time (warm) + ``--job-steps`` training steps (default 2,700: the default image job, 45,000
training images / batch 50 x 3 epochs), against the eager job's steps; evaluation (a forward pass, no backward) is
left out of both. Printed per shape: TIME lines, RATIO compiled vs eager per step and per whole job (target 1.3x).

    python bench/compile.py [--shapes image pathfinder image_r4 ...] [--repeats 5] [--job-steps 2700] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from common import check, finish, header, ratio, time_line
from train_step import BASE, JOB_ENV, SHAPES, batch

from dssbt import fused
from dssbt.eager import AdamW
from dssbt.model import ModelConfig, S4Model

JOB_TARGET = 1.3
LRA = dict(d_model=256, d_state=64, n_layers=6, norm="batch", prenorm=True, output="glu", pool="mean")
VARIANTS = {  # name -> (shape of train_step.SHAPES, overrides of the model config, batch size)
    "image": ("image", {}, 50),
    "pathfinder": ("pathfinder", {}, 50),
    "image_r4": ("image", {"d_state": 4}, 50),
    "image_r8": ("image", {"d_state": 8}, 50),
    "image_r16": ("image", {"d_state": 16}, 50),
    "lra_image": ("image", {**LRA, "bidirectional": True}, 32),
}


def child(name: str, repeats: int, threads: int) -> dict:
    """Time one variant in this process (see the module docstring); returns the timings as a dict."""
    torch.set_num_threads(threads)
    shape_name, over, B = VARIANTS[name]
    shape = SHAPES[shape_name]
    cfg = ModelConfig.from_dict({**BASE, **shape["cfg"], **over})
    x, lengths, y = batch(shape, B, shape["L"])
    torch.manual_seed(0)
    models = {"eager": S4Model(cfg)}
    models["compiled"] = S4Model(cfg)
    models["compiled"].load_state_dict(models["eager"].state_dict())
    models["compiled"].compile()
    c_ok = fused.load() is not None  # built on first use; None where no C compiler works
    if c_ok:
        models["c"] = S4Model(cfg)
        models["c"].load_state_dict(models["eager"].state_dict())
    opts = {k: AdamW(m.parameters(), lr=1e-3) for k, m in models.items()}

    def train_step(k: str) -> float:
        m, o = models[k], opts[k]
        m.train()
        with fused.kernels("c" if k == "c" else "torch"):
            o.zero_grad(set_to_none=True)
            loss = F.cross_entropy(m(x, lengths), y)
            loss.backward()
            o.step()
        return float(loss)

    def eval_forward(k: str) -> None:
        models[k].eval()
        with torch.no_grad():
            models[k](x, lengths)

    first = {}
    for k in ("eager", "compiled"):  # first step and first evaluation: the compiled model compiles here
        t = time.perf_counter()
        first[k] = (train_step(k), time.perf_counter() - t)
        t = time.perf_counter()
        eval_forward(k)
        first[k] += (time.perf_counter() - t,)
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(repeats):
        for k in list(models) if i % 2 == 0 else reversed(list(models)):
            t = time.perf_counter()
            train_step(k)
            times[k].append(time.perf_counter() - t)
    compile_s = (first["compiled"][1] + first["compiled"][2]) - (first["eager"][1] + first["eager"][2])
    return {
        "loss_eager": first["eager"][0],
        "loss_compiled": first["compiled"][0],
        "compile_s": compile_s,
        "times": times,
    }


def run_child(name: str, cache: str, a: argparse.Namespace) -> dict:
    env = {**os.environ, **JOB_ENV, "TORCHINDUCTOR_CACHE_DIR": cache}
    args = [sys.executable, __file__, "--child", name, "--repeats", str(a.repeats), "--threads", str(a.threads)]
    p = subprocess.run(args, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"bench/compile.py --child {name} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["image", "pathfinder", "image_r8"], choices=list(VARIANTS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a training job's: 1)")
    ap.add_argument("--job-steps", type=int, default=2700, help="training steps of the whole job compared")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.repeats, a.threads)))
        return
    header(
        "optim.compile: compiled vs eager training step, compile time cold and warm, whole job",
        threads=a.threads,
        repeats=a.repeats,
        job_steps=a.job_steps,
        torch=torch.__version__,
    )
    for name in a.shapes:
        with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
            cold = run_child(name, cache, a)
            warm = run_child(name, cache, a)
        rel = abs(cold["loss_compiled"] - cold["loss_eager"]) / abs(cold["loss_eager"])
        check(f"{name}: compiled loss = eager loss", rel < 1e-4, f"relative {rel:.1e}")
        print(f"TIME {name} compile (train + eval graphs), cold cache: {cold['compile_s']:.1f} s")
        print(f"TIME {name} compile (train + eval graphs), warm cache: {warm['compile_s']:.1f} s")
        times = {k: cold["times"][k] + warm["times"][k] for k in cold["times"]}
        for k, ts in times.items():
            time_line(f"{name} step {k}", ts)
        ratio(f"{name} step: compiled vs eager", times["eager"], times["compiled"])
        if "c" in times:
            ratio(f"{name} step: C kernels vs compiled", times["compiled"], times["c"])
        med = {k: sorted(ts)[len(ts) // 2] for k, ts in times.items()}
        for label, comp in (("warm", warm["compile_s"]), ("cold", cold["compile_s"])):
            job_eager, job_comp = a.job_steps * med["eager"], comp + a.job_steps * med["compiled"]
            r = job_eager / job_comp
            verdict = "met" if r >= JOB_TARGET else f"MISSED by {JOB_TARGET / r:.2f}x"
            print(
                f"RATIO {name} whole job ({a.job_steps} steps, {label} cache): {r:.2f}x  (eager {job_eager:.0f} s, "
                f"compiled {job_comp:.0f} s)  target >= {JOB_TARGET:g}x: {verdict}"
            )
    finish()


if __name__ == "__main__":
    main()
