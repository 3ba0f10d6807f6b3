"""The precision table: test accuracy, model bytes, state bytes and per-token latency of fp32 / int16 / int8 weights
(and fp16 SSM parameters, fp16 / int16 state, simulated), for tiny models trained here on two synthetic tasks.

    python bench/precision.py [--quick] [--steps 300] [--qat-steps 200] [--out precision.md]

``--quick`` (bench/run.py --quick, tests/test_bench.py): 5 training steps and short latency loops; keeps the script
working, its accuracies and timings mean nothing. Needs onnx and onnxruntime (the deploy extra) and a C compiler.
Prints CHECK lines (every variant scored the whole test split; int8 weights make a smaller model than fp32) and
one RATIO line per task (int8 / fp32 model bytes).

Tasks (generated in this script, seeds fixed; train 2,000 / test 1,000 sequences):

- tokens: 48 tokens from {2..9}; the class is which of the tokens 2, 3, 4, 5 occurs most often (4 classes; ties go to
  the smallest) - embedding encoder, layer norm, mean pooling, GLU;
- pixels: 64 samples of sin(2 pi f t / 64 + phase) + 2 N(0, 1) noise, f in {4, 5, 6, 7} (4 classes) - linear encoder, batch
  norm, mean pooling, GLU.

Accuracy: the exported ONNX graph run by onnxruntime (weights fp32 / int16 / int8, SSM parameters fp32 and fp16)
and ``dssbt.deploy.quant.simulate`` (state fp16, and int16 with per-mode scales calibrated on the train split). Latency:
batch 1, one thread, per token, onnxruntime and the exported C step (gcc -O2), median of repeats.

QAT table (quantisation-aware retraining, ``dssbt.qat``, at equal budget): the trained model is trained
``--qat-steps`` more steps twice from the same optimizer state and on the same batches, in fp32 (exported fp32, and
int8: post-training quantisation, PTQ) and through fake-quantised int8 weights (exported int8: QAT); test accuracy of
each exported graph. CHECK: the QAT model's int8 graph gives the torch QAT model's logits (1e-4 of the largest).
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import check  # noqa: E402

from dssbt.deploy.cexport import export_c  # noqa: E402
from dssbt.deploy.export import export_onnx  # noqa: E402
from dssbt.deploy.predict import OnnxStream  # noqa: E402
from dssbt.deploy.quant import simulate, state_calibration  # noqa: E402
from dssbt.deploy.stream import real_step_params  # noqa: E402
from dssbt.model import ModelConfig, S4Model  # noqa: E402
from dssbt.qat import enable as enable_qat  # noqa: E402


def tokens_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(2, 10, (n, 48))  # (n, 48)
    counts = np.stack([(x == k).sum(1) for k in (2, 3, 4, 5)], 1)  # (n, 4)
    return x, counts.argmax(1)


def pixels_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    f = np.array([4, 5, 6, 7])[y]
    t = np.arange(64)
    x = np.sin(2 * np.pi * f[:, None] * t / 64 + rng.uniform(0, 2 * np.pi, (n, 1))) + 2.0 * rng.normal(size=(n, 64))
    return x.astype(np.float32), y


TASKS = {
    "tokens": (tokens_task, dict(d_input=10, encoder="embedding", norm="layer")),
    "pixels": (pixels_task, dict(d_input=1, encoder="linear", norm="batch")),
}


def fit(model: S4Model, opt: torch.optim.Optimizer, train_set: tuple, steps: int, seed: int) -> S4Model:
    """``steps`` AdamW steps on random batches of 64 (drawn from ``seed``); returns the model in eval mode."""
    x, y = torch.from_numpy(train_set[0]), torch.from_numpy(train_set[1])
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def train(task: str, steps: int) -> tuple[S4Model, torch.optim.Optimizer, tuple, tuple]:
    make, kw = TASKS[task]
    train_set, test_set = make(2000, 0), make(1000, 1)
    torch.manual_seed(0)
    model = S4Model(ModelConfig(d_output=4, d_model=32, d_state=16, n_layers=2, pool="mean", output="glu", **kw))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    return fit(model, opt, train_set, steps, seed=0), opt, train_set, test_set


def retrain(model: S4Model, opt: torch.optim.Optimizer, train_set: tuple, steps: int, qat: str) -> S4Model:
    """A copy of the trained ``model`` trained ``steps`` more steps with its optimizer's state, in float32
    (``qat="none"``: the PTQ arm) or through fake-quantised weights (``dssbt.qat``); both arms see the same batches."""
    model = copy.deepcopy(model)
    more = torch.optim.AdamW(model.parameters(), lr=3e-3)
    more.load_state_dict(opt.state_dict())
    return fit(enable_qat(model, qat), more, train_set, steps, seed=1)


DRIVER = r"""#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <time.h>
#include "model.h"
int main(void) {
    static float state[DSSBT_STATE_FLOATS];
    float logits[DSSBT_N_CLASSES];
    double best = 1e30;
    for (int r = 0; r < 7; ++r) {
        struct timespec a, b;
        dssbt_reset(state);
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (int t = 0; t < 20000; ++t) {
#if DSSBT_TOKENS
            dssbt_step(state, 2 + t % 8, logits);
#else
            float x[1] = {(float)(t % 7) * 0.1f};
            dssbt_step(state, x, logits);
#endif
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        double us = ((b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) * 1e-3) / 20000;
        if (us < best) best = us;
    }
    printf("%.3f %.6f\n", best, logits[0]);
    return 0;
}
"""


def c_latency(model: S4Model, weights: str, folder: Path) -> tuple[float, int, int]:
    info = export_c(model, folder, weights)
    (folder / "driver.c").write_text(DRIVER)
    cc = shutil.which("cc") or "gcc"
    exe = folder / "driver"
    subprocess.run([cc, "-std=c99", "-O2", "-o", str(exe), str(folder / "driver.c"), info["c"], "-lm"], check=True)
    us = float(subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()[0])
    return us, info["flash_bytes"], info["ram_bytes"]


def ort_latency(path: Path, x: np.ndarray, repeats: int = 5, steps: int = 300) -> float:
    s = OnnxStream(path, threads=1)
    out = []
    for _ in range(repeats + 1):
        s.reset(1)
        t0 = time.perf_counter()
        for t in range(steps):
            s.step(x[t % len(x)][None])
        out.append((time.perf_counter() - t0) / steps)
    return 1e6 * statistics.median(out[1:])


def qat_arms(task: str, model: S4Model, opt, train_set: tuple, test_set: tuple, steps: int, folder: Path) -> dict:
    """Test accuracy of the exported graph: the trained model retrained ``steps`` more in fp32 (exported fp32 and
    int8: PTQ) and in int8 QAT (exported int8); and the int8 graph's largest deviation from the torch QAT model's
    logits, relative to its largest logit."""
    xte, yte = test_set

    def acc(m: S4Model, weights: str, name: str) -> tuple[float, np.ndarray]:
        path = folder / f"{name}.onnx"
        export_onnx(m, path, weights=weights)
        logits = OnnxStream(path).run(xte)
        return float((logits.argmax(-1) == yte).mean()), logits

    ptq = retrain(model, opt, train_set, steps, "none")
    qat = retrain(model, opt, train_set, steps, "int8")
    row = dict(task=task, before=acc(model, "int8", "before")[0], fp32=acc(ptq, "fp32", "ptq_fp32")[0])
    row["ptq_int8"] = acc(ptq, "int8", "ptq_int8")[0]
    row["qat_int8"], logits = acc(qat, "int8", "qat_int8")
    with torch.no_grad():
        want = qat(torch.from_numpy(xte)).numpy()  # eval mode, fake-quantised weights
    row["qat_graph_error"] = float(np.abs(logits - want).max() / np.abs(want).max())
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--qat-steps", type=int, default=200, help="extra steps of both arms of the QAT table")
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="5 training steps, short latency loops (for the tests)")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.qat_steps = min(args.steps, 5), min(args.qat_steps, 5)
    ort_kw = dict(repeats=1, steps=30) if args.quick else {}
    torch.set_num_threads(1)
    rows, qat_rows = [], []
    for task in TASKS:
        t0 = time.time()
        model, opt, train_set, (xte, yte) = train(task, args.steps)
        xtr = train_set[0]
        p = real_step_params(model)
        print(f"{task}: trained {args.steps} steps in {time.time() - t0:.0f} s", flush=True)
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            for weights in ("fp32", "int16", "int8"):
                for ssm in ("fp32", "fp16"):
                    path = d / f"{weights}_{ssm}.onnx"
                    info = export_onnx(model, path, weights=weights, ssm=ssm)
                    logits = OnnxStream(path).run(xte)
                    acc = float((logits.argmax(-1) == yte).mean())
                    c_us = flash = ram = None
                    if ssm == "fp32":
                        c_us, flash, ram = c_latency(model, weights, d / f"c_{weights}")
                    rows.append(
                        dict(
                            task=task,
                            weights=weights,
                            ssm=ssm,
                            state="fp32",
                            acc=acc,
                            model_bytes=info["model_bytes"],
                            state_bytes=info["state_bytes_per_sequence"],
                            ort_us=ort_latency(path, xte[0], **ort_kw) if ssm == "fp32" else None,
                            c_us=c_us,
                            flash=flash,
                            ram=ram,
                        )
                    )
                    print(rows[-1], flush=True)
            int8_bytes = next(r["model_bytes"] for r in rows if r["task"] == task and r["weights"] == "int8")
            scales = state_calibration(p, xtr[:500])  # the train split calibrates the int16 state
            state_floats = rows[-1]["state_bytes"] // 4
            pool = p.H + 1
            for state in ("fp16", "int16"):
                logits, _ = simulate(p, xte, weights="int8", state=state, state_scales=scales)
                modes = state_floats - pool
                rows.append(
                    dict(
                        task=task,
                        weights="int8",
                        ssm="fp32",
                        state=state + " (simulated)",
                        acc=float((logits.argmax(-1) == yte).mean()),
                        model_bytes=int8_bytes,
                        state_bytes=2 * modes + 4 * pool,
                        ort_us=None,
                        c_us=None,
                        flash=None,
                        ram=None,
                    )
                )
                print(rows[-1], flush=True)
            qat_rows.append(qat_arms(task, model, opt, train_set, (xte, yte), args.qat_steps, d))
            print(qat_rows[-1], flush=True)
    head = "| task | weights | SSM params | state | test accuracy | model bytes | state bytes | µs/token onnxruntime | µs/token C |"
    lines = [head, "|" + "---|" * 9]
    f = lambda v, fmt: "—" if v is None else format(v, fmt)  # noqa: E731
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['weights']} | {r['ssm']} | {r['state']} | {r['acc']:.3f} | {r['model_bytes']} | "
            f"{r['state_bytes']} | {f(r['ort_us'], '.1f')} | {f(r['c_us'], '.2f')} |"
        )
    lines += [
        "",
        f"QAT at equal budget: {args.steps} fp32 steps, then {args.qat_steps} more steps in fp32 (fp32, int8 PTQ: that "
        "model, exported fp32 / int8) or through fake-quantised int8 weights (int8 QAT: exported int8); test accuracy "
        "of the exported graph (onnxruntime)",
        "",
        "| task | fp32 | int8 PTQ | int8 QAT | int8 PTQ before the extra steps |",
        "|---|---|---|---|---|",
    ]
    for r in qat_rows:
        lines.append(
            f"| {r['task']} | {r['fp32']:.3f} | {r['ptq_int8']:.3f} | {r['qat_int8']:.3f} | {r['before']:.3f} |"
        )
    text = "\n".join(lines)
    print(text)
    check(
        "precision QAT int8 graph gives the torch QAT model's logits",
        all(r["qat_graph_error"] <= 1e-4 for r in qat_rows),
        str([f"{r['qat_graph_error']:.1e}" for r in qat_rows]),
    )
    n_test = 1000
    check(
        "precision every variant scored the whole test split",
        len(rows) == 8 * len(TASKS) and all(0 <= r["acc"] <= 1 and (r["acc"] * n_test).is_integer() for r in rows),
        f"{len(rows)} rows",
    )
    by = {(r["task"], r["weights"], r["ssm"], r["state"]): r for r in rows}
    smaller = [
        by[(t, "int8", "fp32", "fp32")]["model_bytes"] < by[(t, "fp32", "fp32", "fp32")]["model_bytes"] for t in TASKS
    ]
    check("precision int8 weights make a smaller model than fp32", all(smaller))
    for t in TASKS:
        ratio = by[(t, "int8", "fp32", "fp32")]["model_bytes"] / by[(t, "fp32", "fp32", "fp32")]["model_bytes"]
        print(f"RATIO precision {t} model bytes int8 / fp32: {ratio:.2f}x  info")
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
