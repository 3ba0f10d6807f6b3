"""What a training job pays before and around its first optimiser step: a fresh interpreter that imports the
``dssbt train`` command's modules, builds the default image model and its AdamW, takes one step and reads the
optimiser's state dict (what every epoch's resume file holds) -- with the optimiser the jobs use
(``dssbt.eager``: no torch._dynamo import) against plain ``torch.optim.AdamW`` (which imports it), interleaved.

    python bench/job_startup.py [--quick] [--repeats 7]

Prints the wall time of each variant (min, median), their difference per job and whether torch._dynamo was
imported in each (CHECK lines: eager never, plain always, so the comparison measures what it says).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import textwrap
import time

from common import ROOT, check, finish, header, time_line

PROBE = textwrap.dedent("""
    import sys
    import torch
    import torch.nn.functional as F
    import dssbt.cli, dssbt.train
    from dssbt.model import ModelConfig, S4Model
    from dssbt.train import optimizer
    from dssbt.hparams import parse_hparams
    eager = sys.argv[1] == "eager"
    if eager:
        from dssbt.eager import skip_dynamo_import
        skip_dynamo_import()  # what the train command does first
    torch.set_num_threads(1)
    L = int(sys.argv[2])
    cfg = ModelConfig(d_input=1, d_output=10, d_model=32, d_state=32, n_layers=2, encoder="linear")
    model = S4Model(cfg)
    hp = parse_hparams({})
    opt = optimizer(model, hp)  # the jobs' two parameter groups
    if not eager:  # the same groups in torch's own AdamW
        opt = torch.optim.AdamW(opt.param_groups)
    x, y = torch.randn(50, L, 1), torch.randint(0, 10, (50,))
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.state_dict()
    print("dynamo", "torch._dynamo" in sys.modules)
""")


def run(variant: str, L: int) -> tuple[float, bool]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", PROBE, variant, str(L)], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"job_startup: the {variant} probe failed:\n{p.stderr[-2000:]}")
    return wall, "dynamo True" in p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 repeats, short sequences (keeps the script working)")
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    repeats, L = (2, 64) if a.quick else (a.repeats, 1024)
    header(
        "training job start-up: dssbt.eager's AdamW vs torch.optim.AdamW, fresh interpreter each", repeats=repeats, L=L
    )
    times: dict[str, list[float]] = {"eager": [], "plain": []}
    dynamo: dict[str, set[bool]] = {"eager": set(), "plain": set()}
    for i in range(repeats):  # interleaved, the order alternating
        for v in ("eager", "plain") if i % 2 == 0 else ("plain", "eager"):
            wall, imported = run(v, L)
            times[v].append(wall)
            dynamo[v].add(imported)
    check("job_startup eager never imports torch._dynamo", dynamo["eager"] == {False}, str(dynamo["eager"]))
    check("job_startup plain torch.optim imports torch._dynamo", dynamo["plain"] == {True}, str(dynamo["plain"]))
    for v in times:
        time_line(f"job_startup {v}", times[v])
    saved = statistics.median(times["plain"]) - statistics.median(times["eager"])
    saved_min = min(times["plain"]) - min(times["eager"])
    print(f"SAVED job_startup per training job: median {saved:.2f} s  (min/min {saved_min:.2f} s)")
    finish()


if __name__ == "__main__":
    main()
