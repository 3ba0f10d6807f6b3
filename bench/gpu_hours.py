"""An ESTIMATE of the GPU-hours the LRA preset needs: floating-point work per training job, from the jobs the
workflow plans, divided by an assumed sustained GPU throughput. No GPU was measured: every figure it prints is
labelled an estimate, with its assumptions.

    python bench/gpu_hours.py [--preset workflow/presets/lra.yaml] [--tflops 10 40]

Per training job (read from ``snakemake -n -p``: its task, its model and optim sections): optimizer steps =
ceil(train examples / batch size) x epochs, with the official LRA split sizes below (the preset reads the real data);
each epoch also evaluates the validation split. Work of one example through one DSS block (H channels, length L,
N modes, d = 2 directions if bidirectional), forward, counted in floating-point operations:

    output linear     2 L H (2H)           (GLU: H -> 2H; ``linear``: H -> H, half of it)
    FFT convolution   2 x 2.5 (2L) log2(2L) H   (rfft of the input and irfft of the product, real length 2L)
                      + 6 (L + 1) H        (the complex product)
    elementwise       ~20 L H              (norm, D skip, GELU, GLU, residual)

plus, once per step and layer, the kernel: 8 d H N L (complex Vandermonde product) + 2.5 (2L) log2(2L) d H (its FFT).
A training step costs ~3 forward passes (the backward ~2), evaluation one. ``flops_matmul`` is checked against torch's
own FLOP counter (tests/test_bench.py).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# official LRA split sizes the preset trains and validates on (examples): train, validation
SPLITS = {
    "listops": (96_000, 2_000),
    "text": (25_000, 25_000),  # LRA validates Text on its test set
    "retrieval": (147_086, 18_090),
    "image": (45_000, 5_000),  # CIFAR-10's 50,000 training images, 45,000 / 5,000 (split reference)
    "pathfinder": (160_000, 20_000),  # 200,000 images, 80/10/10
    "pathx": (160_000, 20_000),
}
# sequence length of one input of each task (Retrieval: two documents of 4000), as the preset prepares them
LENGTHS = {"listops": 2048, "text": 4096, "retrieval": 4000, "image": 1024, "pathfinder": 1024, "pathx": 16384}
DOCUMENTS = {"retrieval": 2}


def flops_matmul(L: int, H: int, n_layers: int, output: str = "glu") -> float:
    """Forward floating-point operations of the blocks' output linears for one example of length L."""
    width = 2 * H if output == "glu" else H
    return n_layers * 2.0 * L * H * width


def flops_forward(L: int, H: int, N: int, n_layers: int, bidirectional: bool, output: str = "glu") -> float:
    """Forward work of one example (per-example terms only)."""
    fft = 2 * 2.5 * (2 * L) * math.log2(2 * L) * H + 6.0 * (L + 1) * H
    return flops_matmul(L, H, n_layers, output) + n_layers * (fft + 20.0 * L * H)


def flops_kernel(L: int, H: int, N: int, n_layers: int, bidirectional: bool) -> float:
    """Work of the convolution kernels, once per step (forward)."""
    d = 2 if bidirectional else 1
    return n_layers * (8.0 * d * H * N * L + 2.5 * (2 * L) * math.log2(2 * L) * d * H)


def planned_training_jobs(preset: Path) -> list[dict]:
    """(task, model, optim) of every training job the preset plans, from a dry run in a copy of the workflow."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("Snakefile", "config.yaml"):
            shutil.copy(ROOT / name, Path(tmp) / name)
        for name in ("workflow", "profiles"):
            shutil.copytree(ROOT / name, Path(tmp) / name)
        p = subprocess.run(
            [sys.executable, "-m", "snakemake", "-n", "-p", "--configfile", str(preset.resolve())],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
    if p.returncode != 0:
        raise SystemExit(f"snakemake -n failed:\n{p.stderr[-2000:]}")
    jobs = []
    for line in p.stdout.splitlines():
        if "python -m dssbt train" not in line:
            continue
        argv = shlex.split(line[line.index("python -m dssbt train") :].split(" > ")[0])
        args = {flag: value for flag, value in zip(argv, argv[1:]) if flag.startswith("--")}
        task = Path(args["--data"]).name
        hp = json.loads(args["--hparams"])
        jobs.append({"task": task, "model": hp.get("model", {}), "optim": hp.get("optim", {})})
    return jobs


def job_flops(job: dict) -> tuple[float, int]:
    """(floating-point operations, optimizer steps) of one training job."""
    m, o, task = job["model"], job["optim"], job["task"]
    L = LENGTHS[task]
    H, N, layers = m.get("d_model", 64), m.get("d_state", 64), m.get("n_layers", 4)
    bidir, output = m.get("bidirectional", False), m.get("output", "glu")
    n_train, n_val = SPLITS[task]
    docs = DOCUMENTS.get(task, 1)
    steps = math.ceil(n_train / o.get("batch_size", 32)) * o.get("epochs", 10)
    per_example = docs * flops_forward(L, H, N, layers, bidir, output)
    train = steps * (3 * o.get("batch_size", 32) * per_example + 3 * flops_kernel(L, H, N, layers, bidir))
    evaluate = o.get("epochs", 10) * n_val * per_example
    return train + evaluate, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", type=Path, default=ROOT / "workflow" / "presets" / "lra.yaml")
    ap.add_argument("--tflops", type=float, nargs="+", default=[10.0, 40.0], help="assumed sustained TFLOP/s")
    args = ap.parse_args()
    jobs = planned_training_jobs(args.preset)
    by_task: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0])
    for job in jobs:
        f, steps = job_flops(job)
        row = by_task[job["task"]]
        row[0] += 1
        row[1] += f
        row[2] += steps
    print(f"ESTIMATE (no GPU measured) of the training work of {args.preset.name}: {len(jobs)} training jobs")
    head = " | ".join(f"GPU-h at {t:g} TFLOP/s" for t in args.tflops)
    print(f"| task | jobs | optimizer steps | PFLOP | {head} |")
    total = 0.0
    for task, (n, f, steps) in sorted(by_task.items()):
        total += f
        hours = " | ".join(f"{f / (t * 1e12) / 3600:,.0f}" for t in args.tflops)
        print(f"| {task} | {n} | {steps:,} | {f / 1e15:,.0f} | {hours} |")
    hours = " | ".join(f"{total / (t * 1e12) / 3600:,.0f}" for t in args.tflops)
    print(f"| total | {len(jobs)} | | {total / 1e15:,.0f} | {hours} |")
    print(
        "assumptions: official LRA split sizes; work counted as in this script's docstring (output linears, FFT "
        "convolutions, kernels, elementwise; backward = 2 x forward); the throughput a GPU sustains on this model "
        "is assumed, not measured (float32 matmuls and FFTs; reduce jobs and data preparation not counted)"
    )


if __name__ == "__main__":
    main()
