"""The fused C kernels (``optim.kernels: c``) against torch's ops where the pipeline runs them: two single-threaded
training processes at once on the 2-core machine (``snakemake --cores all``'s setting), both sharing the memory
bandwidth that these elementwise passes are bound by.

Each round starts two fresh interpreters together, each building the default image model (seeds 0 and 1) and
timing ``--steps`` training steps (after 2 warm-up steps) with one kernel choice; rounds alternate between the
choices. Printed: the median step of each process, per choice (TIME), and torch / c (RATIO).

    python bench/kernels_pair.py [--quick] [--rounds 4] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import textwrap

from common import ROOT, check, finish, header, ratio, time_line

PROBE = textwrap.dedent("""
    import statistics, sys, time
    import torch
    import torch.nn.functional as F
    from dssbt import fused
    from dssbt.model import ModelConfig, S4Model
    mode, seed, steps, L = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    cfg = ModelConfig(d_input=1, d_output=10, d_model=32, d_state=32, n_layers=2, encoder="linear")
    model = S4Model(cfg).train()
    x, y = torch.randn(50, L, 1), torch.randint(0, 10, (50,))
    ts = []
    with fused.kernels(mode):
        for i in range(steps + 2):
            t = time.perf_counter()
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            ts.append(time.perf_counter() - t)
        print("used", fused.used())
    print("median", statistics.median(ts[2:]))
""")
JOB_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "10000000000"}  # workflow/rules/common.smk TRAIN_ENV


def pair(mode: str, steps: int, L: int) -> tuple[list[float], set[str]]:
    """Two processes started together; each one's median step (s) and what kernels they used."""
    env = {**os.environ, **JOB_ENV}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROBE, mode, str(seed), str(steps), str(L)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (0, 1)
    ]
    medians, used = [], set()
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"kernels_pair: the {mode} probe failed:\n{err[-2000:]}")
        lines = dict(line.split(" ", 1) for line in out.splitlines())
        medians.append(float(lines["median"]))
        used.add(lines["used"])
    return medians, used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 2 steps at L = 64 (keeps the script working)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    rounds, steps, L = (2, 2, 64) if a.quick else (a.rounds, a.steps, 1024)
    from dssbt import fused

    if fused.load() is None:
        print(f"-- no C kernels on this machine ({fused.error()}): nothing to compare")
        finish()
        return
    header(
        "two training processes at once: fused C kernels vs torch ops (default image model)",
        rounds=rounds,
        steps=steps,
        L=L,
    )
    times: dict[str, list[float]] = {"c": [], "torch": []}
    used: dict[str, set[str]] = {"c": set(), "torch": set()}
    for i in range(rounds):  # interleaved, the order alternating
        for mode in ("c", "torch") if i % 2 == 0 else ("torch", "c"):
            medians, u = pair(mode, steps, L)
            times[mode] += medians
            used[mode] |= u
    check("kernels_pair each variant ran the kernels it names", used == {"c": {"c"}, "torch": {"torch"}}, str(used))
    for mode, ts in times.items():
        time_line(f"kernels_pair step, two processes at once, {mode}", ts)
    ratio("kernels_pair step speed-up c vs torch, two processes at once", times["torch"], times["c"])
    print(
        f"-- medians over {len(times['c'])} process-rounds each: c {statistics.median(times['c']) * 1e3:.1f} ms, "
        f"torch {statistics.median(times['torch']) * 1e3:.1f} ms"
    )
    finish()


if __name__ == "__main__":
    main()
