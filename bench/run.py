"""Run the benchmarks and print their figures: ``python bench/run.py [--quick] [NAME ...]``.

Names: layer (DSS layer fwd+bwd vs a textbook reference), train_step (one training step of each pipeline model
shape: fast vs reference path vs its FFT + matmul floor; the paper-size unit vs textbook and, with S4D_PATH, vs
state-spaces/s4's S4D), reduction (BT of a whole model vs per-channel library and scipy loops), inference
(recurrent and convolution-mode inference of full vs BT-reduced models), workflow (Snakemake dry run of the LRA
preset and no-op rerun), prepare_memory (peak RSS of `dssbt prepare` on each LRA task at its real size, synthetic
data). Default: all of them, in the order of NAMES. Each runs as its own
process (``python bench/<name>.py``), one after the other, never concurrently; its output is streamed, and a
summary of every RATIO / TARGET / CHECK line and the wall time of each benchmark is printed at the end.
``--quick``: tiny sizes, 1-2 repeats, no tiny workflow run -- keeps the scripts working (tests/test_bench.py);
its timings mean nothing. Exit status 1 if a benchmark failed or one of its checks failed.

reduce_model (BT core vs model-level reduction with its report), bt_route (continuous vs discrete Gramians on a
trained model; trains for minutes), plan_scale (planning time of generated grids up to ~10,000 jobs) and precision
(accuracy, bytes and per-token latency of fp32 / int16 / int8 exports of tiny trained models; needs onnx and
onnxruntime, in the benchmark extra, and a C compiler) run too. Needs the benchmark extra (``pip install -e '.[bench]'``: python-control
and slycot, the library oracles).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
NAMES = {
    "layer": "layer.py",
    "train_step": "train_step.py",
    "reduction": "reduction.py",
    "inference": "inference.py",
    "workflow": "workflow.py",
    "reduce_model": "reduce_model.py",
    "bt_route": "bt_route.py",
    "plan_scale": "plan_scale.py",
    "hsv_reg": "hsv_reg.py",
    "prepare_memory": "prepare_memory.py",
    "job_startup": "job_startup.py",
    "kernels_pair": "kernels_pair.py",
    "precision": "precision.py",
}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )


def run_one(name: str, quick: bool) -> tuple[int, float, list[str]]:
    cmd = [sys.executable, "-u", str(BENCH / NAMES[name])] + (["--quick"] if quick else [])
    print(f"\n######## {name}: {' '.join(cmd[2:])}", flush=True)
    t = time.perf_counter()
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=BENCH.parent) as p:
        for line in p.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
    return p.returncode, time.perf_counter() - t, lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1-2 repeats (for the test suite)")
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run, among {list(NAMES)}")
    a = ap.parse_args()
    names = a.names or list(NAMES)
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose among {list(NAMES)}")
    missing = [m for m in ("control", "slycot") if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(
            f"bench/run.py: the library oracles {missing} are not installed; install the benchmark extra: "
            "pip install -e '.[bench]'"
        )
    if "precision" in names and importlib.util.find_spec("onnxruntime") is None:
        sys.exit(
            "bench/run.py: precision needs onnx and onnxruntime; install the benchmark extra: pip install -e '.[bench]'"
        )
    print(f"machine: {machine()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results = {n: run_one(n, a.quick) for n in names}
    print("\n######## summary" + (" (--quick: tiny sizes, timings meaningless)" if a.quick else ""))
    failed = []
    for n, (rc, wall, lines) in results.items():
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        print(f"{n}: {status}, {wall:.1f} s wall")
        for line in lines:
            if line.startswith(("RATIO", "TARGET", "MEMORY")) or line.startswith("CHECK") and ": FAIL" in line:
                print(f"   {line}")
        n_ok = sum(1 for line in lines if line.startswith("CHECK") and ": ok" in line)
        n_checks = sum(1 for line in lines if line.startswith("CHECK"))
        print(f"   {n_ok}/{n_checks} checks ok")
        if rc != 0:
            failed.append(n)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
