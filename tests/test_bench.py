"""The benchmark scripts keep working: ``python bench/run.py --quick`` runs every one of them at tiny sizes.

Timings at tiny sizes mean nothing and are not asserted; what is asserted is that every script ran, that every
correctness check it prints passed (layer outputs and gradients equal a textbook reference; HSVs and reduced
transfer functions equal python-control/slycot and scipy; recurrent equals convolution mode; the fast training
step equals the reference step on every pipeline shape; the LRA dry run plans its full grid; each task's prepared
sizes are the generated ones), and that each printed its figures.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from needs import need_module

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

EXPECTED_CHECKS = {
    "layer L=256 outputs agree",
    "layer L=256 gradients agree",
    "layer L=512 outputs agree",
    "layer L=512 gradients agree",
    "step image fast equals reference",
    "step listops fast equals reference",
    "step pathfinder fast equals reference",
    "step retrieval fast equals reference",
    "unit L=128 ours equals textbook",
    "unit L=256 ours equals textbook",
    "reduction HSVs equal python-control/slycot",
    "reduction HSVs equal scipy-Lyapunov BT",
    "reduction transfer functions equal python-control/slycot",
    "reduction transfer functions equal scipy-Lyapunov BT",
    "inference recurrent step equals convolution mode",
    "inference reduced models have state size r",
    "workflow LRA dry run plans the full grid",
    "workflow tiny dry run plans jobs",
    "reduce_model continuous reduced models have the asked orders",
    "reduce_model discrete reduced models have the asked orders",
    "bt_route discrete r=2 kernel errors finite and below 1.5",
    "bt_route continuous r=4 kernel errors finite and below 1.5",
    "plan_scale job counts grow with the grid",
    "job_startup eager never imports torch._dynamo",
    "job_startup plain torch.optim imports torch._dynamo",
    "precision every variant scored the whole test split",
    "precision int8 weights make a smaller model than fp32",
} | {
    f"prepare_memory {t} sizes are the generated ones"
    for t in ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
}
EXPECTED_FIGURES = [
    r"^RATIO layer L=\d+ speed-up ours vs textbook: [\d.]+x",
    r"^MEMORY layer L=\d+ ours: peak RSS \d+ MiB",
    r"^RATIO step image speed-up fast vs reference: [\d.]+x",
    r"^RATIO step image fast / floor: [\d.]+x",
    r"^RATIO unit L=\d+ speed-up ours vs textbook: [\d.]+x",
    r"^RATIO unit L=\d+ speed-up ours vs S4D: ([\d.]+x|skipped)",
    r"^RATIO reduction speed-up ours vs library loop: [\d.]+x",
    r"^RATIO reduction speed-up ours vs scipy loop: [\d.]+x",
    r"^RATIO inference DSS\.step speed-up N=\d+ vs r=\d+, batch \d+: [\d.]+x",
    r"^RATIO inference whole-model step speed-up",
    r"^RATIO inference convolution-mode speed-up",
    r"^MEMORY inference r=\d+: weights",
    r"^TARGET workflow LRA dry run.*: median [\d.]+ s",
    r"^SAVED job_startup per training job: median -?[\d.]+ s",
    r"^RATIO precision tokens model bytes int8 / fp32: [\d.]+x",
] + [
    rf"^MEMORY prepare {t}: peak RSS \d+ MiB" for t in ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
]
# where the fused C kernels build (dssbt.fused; CI has a compiler): their checks and figures too
EXPECTED_C_CHECKS = {
    "kernels_pair each variant ran the kernels it names",
    "step image fast with C kernels equals reference",
    "step image C kernels as accurate as torch ops in float32",
}
EXPECTED_C_FIGURES = [
    r"^RATIO step image speed-up fast-c-kernels \(optim.kernels: c\) vs reference: [\d.]+x",
    r"^RATIO kernels_pair step speed-up c vs torch, two processes at once: [\d.]+x",
]


@pytest.mark.slow
def test_quick_benchmarks_run_and_every_check_passes():
    need_module("control", "the reduction benchmark compares with python-control (test extra)")
    need_module("slycot", "python-control's balred needs slycot (test extra)")
    need_module("onnxruntime", "the precision benchmark runs the exported graphs (test extra)")
    p = subprocess.run(
        [sys.executable, "bench/run.py", "--quick"], cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=900
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    checks = dict(re.findall(r"^CHECK (.+?): (ok|FAIL)", p.stdout, re.M))
    from dssbt import fused

    c = fused.load() is not None or bool(os.environ.get("CI"))  # under CI a missing compiler fails here
    expected = EXPECTED_CHECKS | (EXPECTED_C_CHECKS if c else set())
    assert expected <= set(checks), sorted(expected - set(checks))
    assert all(v == "ok" for v in checks.values()), {k: v for k, v in checks.items() if v != "ok"}
    for pattern in EXPECTED_FIGURES + (EXPECTED_C_FIGURES if c else []):
        assert re.search(pattern, p.stdout, re.M), pattern
    for name in (
        "layer",
        "train_step",
        "reduction",
        "inference",
        "workflow",
        "reduce_model",
        "bt_route",
        "plan_scale",
        "hsv_reg",
        "prepare_memory",
        "job_startup",
        "kernels_pair",
        "precision",
    ):
        assert re.search(rf"^{name}: ok, [\d.]+ s wall$", p.stdout, re.M), name


def test_run_rejects_an_unknown_benchmark_name():
    p = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "nosuch"], cwd=ROOT, capture_output=True, text=True, env=ENV
    )
    assert p.returncode != 0 and "unknown benchmark" in p.stderr


def test_gpu_hours_matmul_work_equals_torchs_flop_counter():
    """bench/gpu_hours.py counts the output linears' work by formula; torch's FLOP counter, run on the model itself,
    counts the same matmuls (forward, per block) exactly."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dssbt.model import ModelConfig, S4Model

    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_hours import flops_matmul, job_flops

    B, L, H, N = 4, 256, 16, 4
    for output in ("glu", "linear"):
        model = S4Model(ModelConfig(d_input=1, d_output=10, d_model=H, d_state=N, n_layers=2, output=output))
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.randn(B, L, 1))
        counts = counter.get_flop_counts()
        blocks = sum(
            sum(counts[f"S4Model.blocks.{i}"].values()) - sum(counts[f"S4Model.blocks.{i}.dss"].values())
            for i in range(2)
        )
        assert blocks == B * flops_matmul(L, H, 2, output), output
    # a job's steps: ceil(train examples / batch) x epochs
    _, steps = job_flops({"task": "listops", "model": {}, "optim": {"batch_size": 50, "epochs": 2}})
    assert steps == 2 * 1920
