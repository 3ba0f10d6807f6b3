"""How planning time grows with the size of the grid: ``snakemake -n`` of generated grids of three sizes.

Snakemake runs in an interpreter that sees every installed package except snakemake-executor-plugin-slurm, as after
the plain ``pip install -e .`` (importing the plugin costs seconds where SLURM's client tools are installed but no
controller answers, and says nothing about this workflow). Each grid is the LRA preset (six real tasks, so there is no data to generate and the archives are download jobs)
with more seeds, orders and methods; every size is planned in a fresh process in a temporary copy of the workflow,
and its CPU time (user + sys; wall time is printed too, but on a shared machine it measures the load) and peak memory (the child's ru_maxrss) are printed with the fitted growth exponent
``d log(time) / d log(jobs)`` between consecutive sizes (1 = linear).

    python bench/plan_scale.py [--sizes 5 20 40] [--repeats 1]    # seeds per grid (jobs grow linearly with seeds)
    python bench/plan_scale.py --quick
"""

from __future__ import annotations

import argparse
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from common import ROOT, check, finish, header

GRID = """\
seeds: {seeds}
orders: [4, 8, 16, 32, 48, "tol:0.1", "tol:0.3"]
methods: [bt, bsp, modal, h2]
"""


def without_slurm_plugin(tmp: Path) -> dict[str, str]:
    """Environment of an interpreter run with -S that sees the installed packages except the SLURM plugin."""
    site = Path(sysconfig.get_paths()["purelib"])
    shadow = tmp / "site"
    shadow.mkdir()
    for entry in site.iterdir():
        if not entry.name.startswith("snakemake_executor_plugin_slurm"):
            (shadow / entry.name).symlink_to(entry)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), str(ROOT / "src")])}


def plan(wf: Path, seeds: int | None, env: dict[str, str]) -> tuple[int, float, float]:
    """(jobs planned, CPU seconds, peak RSS MiB) of one dry run with ``seeds`` seeds (None: the LRA preset)."""
    extra = []
    if seeds is not None:
        (wf / "grid.yaml").write_text(GRID.format(seeds=list(range(seeds))))
        extra = ["grid.yaml"]
    cmd = [
        sys.executable,
        "-S",
        "-m",
        "snakemake",
        "-n",
        "--quiet",
        "rules",
        "--configfile",
        "workflow/presets/lra.yaml",
        *extra,
    ]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=wf, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    before, peak = r0.ru_maxrss, r1.ru_maxrss
    if p.returncode != 0:
        raise RuntimeError(f"snakemake -n failed ({seeds} seeds):\n{p.stderr[-3000:]}")
    m = re.search(r"^total\s+(\d+)", p.stdout + p.stderr, re.M)
    jobs = int(m.group(1)) if m else -1
    # ru_maxrss of children is the largest child so far: a size smaller than an earlier one reports the earlier peak
    print(
        f"   {jobs} jobs: wall {wall:.2f} s, CPU {cpu:.2f} s (on a loaded machine the CPU time is the figure to read)"
    )
    return jobs, cpu, max(peak, before) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5, 20, 40], help="seeds of each grid (ascending)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.repeats = [1, 2], 1
    header("planning time vs grid size", sizes=a.sizes, repeats=a.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        wf = Path(tmp) / "wf"
        wf.mkdir()
        for name in ("Snakefile", "config.yaml"):
            shutil.copy(ROOT / name, wf / name)
        for name in ("workflow", "profiles"):
            shutil.copytree(ROOT / name, wf / name)
        env = without_slurm_plugin(Path(tmp))
        jobs, cpu, rss = min((plan(wf, None, env) for _ in range(max(a.repeats, 1))), key=lambda r: r[1])
        print(
            f"TARGET plan LRA preset, {jobs} jobs, no SLURM plugin: CPU {cpu:.2f} s (target < 2 s: "
            f"{'met' if cpu < 2 else 'MISSED'}), peak RSS {rss:.0f} MiB"
        )
        rows = []
        for seeds in a.sizes:
            best = None
            for _ in range(a.repeats):
                jobs, cpu, rss = plan(wf, seeds, env)
                best = (jobs, cpu, rss) if best is None or cpu < best[1] else best
            rows.append(best)
            print(
                f"TIME plan {best[0]} jobs ({seeds} seeds): CPU {best[1]:.2f} s, peak RSS {best[2]:.0f} MiB, "
                f"{1e3 * best[1] / max(best[0], 1):.2f} ms per job"
            )
    check(
        "plan_scale job counts grow with the grid",
        all(b[0] > a_[0] > 0 for a_, b in zip(rows, rows[1:])),
        str([r[0] for r in rows]),
    )
    for (j0, t0, _), (j1, t1, _) in zip(rows, rows[1:]):
        print(
            f"RATIO plan growth exponent {j0} -> {j1} jobs: {math.log(t1 / t0) / math.log(j1 / j0):.2f}x "
            "(1 = linear)  no target: info"
        )
    finish()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
