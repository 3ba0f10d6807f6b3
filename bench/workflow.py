"""Workflow overhead: how long Snakemake itself takes to plan the LRA grid and to find nothing to do.

In temporary copies of the workflow (Snakefile, config.yaml, workflow/, profiles/, as tests/test_workflow.py does),
with this interpreter's bin directory first on PATH (jobs call ``python -m dssbt``):

* ``snakemake -n --configfile workflow/presets/lra.yaml``: dry run of the full LRA preset (462 jobs, no data);
* the tiny grid (tests/workflow/tiny.yaml) run for real once (~1 min, timed for information), then the no-op
  rerun ``snakemake --cores 2 --configfile tiny.yaml``, which must report nothing to be done.

Each figure is the wall time of the whole ``python -m snakemake`` command (interpreter start and imports included),
the dry run and the no-op rerun interleaved. Target: < 10 s each. ``--quick`` skips the tiny run (too long for the
test suite) and dry-runs the tiny grid instead.

SLURM trap: every snakemake start imports all installed executor plugins, and the SLURM plugin runs
``scontrol show config`` at import (to pick its status command; 10 s timeout). Where SLURM's client tools are
installed but no controller answers, that alone takes ~9 s. The script times ``scontrol show config`` and, where
``scontrol`` is on PATH, also measures both figures with a stand-in ``scontrol`` that fails at once (as on a machine
without SLURM): Snakemake's own overhead. ``--quick`` uses only the stand-in.

    python bench/workflow.py [--quick] [--repeats 5]
    python bench/workflow.py --profile      # cProfile of one LRA dry run (where the time goes)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, check, finish, fmt_s, header, interleaved, summary, time_line

TARGET_S = 10.0
LRA_JOBS = 462  # 6 tasks x 3 seeds x 4 orders, baseline + equal-budget control + bt and transplant, + data jobs (one extract_lra)
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, dest / name)
    for name in ("workflow", "profiles"):
        shutil.copytree(ROOT / name, dest / name)
    shutil.copy(ROOT / "tests" / "workflow" / "tiny.yaml", dest / "tiny.yaml")
    return dest


def snakemake(cwd: Path, *args: str, env: dict[str, str] = ENV) -> str:
    p = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"snakemake {' '.join(args)} failed in {cwd}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p.stdout + p.stderr


def total_jobs(out: str) -> int:
    """Jobs in the 'Job stats' table of a dry run, without the target rule 'all' (0 when nothing is to be done)."""
    if "Nothing to be done" in out:
        return 0
    m = re.search(r"^total\s+(\d+)", out, re.M)
    if not m:
        return -1
    n_all = re.search(r"^all\s+(\d+)", out, re.M)
    return int(m.group(1)) - (int(n_all.group(1)) if n_all else 0)


def fast_scontrol_env(tmp: Path) -> dict[str, str]:
    """ENV with a stand-in ``scontrol`` first on PATH that fails at once (the plugin then falls back to defaults)."""
    shim = tmp / "fast-scontrol"
    shim.mkdir()
    (shim / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    (shim / "scontrol").chmod(0o755)
    return {**ENV, "PATH": f"{shim}{os.pathsep}{ENV['PATH']}"}


def scontrol_time() -> float | None:
    """Wall time of ``scontrol show config`` as the SLURM plugin runs it (None where scontrol is not on PATH)."""
    if shutil.which("scontrol", path=ENV["PATH"]) is None:
        return None
    t = time.perf_counter()
    try:
        subprocess.run(["scontrol", "show", "config"], capture_output=True, timeout=10, env=ENV)
    except subprocess.TimeoutExpired:
        pass
    return time.perf_counter() - t


def target_line(name: str, ts: list[float]) -> None:
    lo, med = summary(ts)
    verdict = "met" if med < TARGET_S else f"MISSED by {med / TARGET_S:.2f}x"
    print(f"TARGET {name}: median {med:.2f} s (min {lo:.2f} s)  target < {TARGET_S:g} s: {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one repeat, no tiny run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the temporary workflow copies")
    ap.add_argument("--profile", action="store_true", help="cProfile one LRA dry run instead of timing")
    a = ap.parse_args()
    if a.quick:
        a.repeats = 1
    tmp = Path(tempfile.mkdtemp(prefix="dssbt-bench-wf-"))
    try:
        lra = copy_workflow(tmp / "lra")
        if a.profile:
            prof = tmp / "dryrun.prof"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cProfile",
                    "-o",
                    str(prof),
                    "-m",
                    "snakemake",
                    "-n",
                    "--configfile",
                    "workflow/presets/lra.yaml",
                ],
                cwd=lra,
                env=ENV,
                capture_output=True,
                check=True,
            )
            import pstats

            pstats.Stats(str(prof)).sort_stats("cumulative").print_stats(25)
            return
        header(
            "Workflow overhead: snakemake dry run of the LRA preset, no-op rerun after a tiny run",
            repeats=a.repeats,
            cores=a.cores,
            python=Path(sys.executable).parent,
        )
        st = None if a.quick else scontrol_time()
        fast = fast_scontrol_env(tmp)
        if a.quick:
            pass
        elif st is None:
            print("   scontrol is not on PATH: the SLURM plugin's import-time query costs nothing here")
        else:
            print(f"   'scontrol show config' (run by the SLURM executor plugin at every snakemake start): {fmt_s(st)}")
        # Variants: (name, environment); the stand-in variants only where they differ from the real environment.
        envs = {"": fast} if a.quick else {"": ENV} if st is None else {"": ENV, " (stand-in scontrol)": fast}
        if a.quick:
            print("   --quick: every run uses the stand-in scontrol (fails at once)")
        lra_args = ("-n", "--configfile", "workflow/presets/lra.yaml")
        t = time.perf_counter()
        out = snakemake(lra, *lra_args, env=envs[""])
        first = time.perf_counter() - t
        n = total_jobs(out)
        check("workflow LRA dry run plans the full grid", n == LRA_JOBS, f"{n} jobs (expected {LRA_JOBS})")
        print(f"   first LRA dry run (fresh copy, creates .snakemake/): {fmt_s(first)}")

        tiny = copy_workflow(tmp / "tiny")
        variants = {}
        for suffix, env in envs.items():
            variants["lra_dry_run" + suffix] = lambda env=env: snakemake(lra, *lra_args, env=env)
        if a.quick:
            print("SKIP workflow no-op rerun: --quick does not run the tiny grid (~1 min); dry-running it instead")
            out = snakemake(tiny, "-n", "--configfile", "tiny.yaml", env=fast)
            check("workflow tiny dry run plans jobs", total_jobs(out) > 0, f"{total_jobs(out)} jobs")
        else:
            run_args = ("--cores", str(a.cores), "--configfile", "tiny.yaml")
            t = time.perf_counter()
            snakemake(tiny, *run_args)
            print(
                f"TIME workflow tiny grid, complete run ({a.cores} cores): {fmt_s(time.perf_counter() - t)}  "
                "(information: real training jobs)"
            )
            out = snakemake(tiny, *run_args)
            check(
                "workflow no-op rerun has nothing to do",
                "Nothing to be done" in out,
                "'Nothing to be done' in the output" if "Nothing to be done" in out else out[-500:],
            )
            for suffix, env in envs.items():
                variants["noop_rerun" + suffix] = lambda env=env: snakemake(tiny, *run_args, env=env)
        times = interleaved(variants, a.repeats, warmup=0)
        for suffix in envs:
            label = suffix or (" (stand-in scontrol)" if a.quick else "")
            time_line(f"workflow snakemake -n LRA preset ({LRA_JOBS} jobs){label}", times["lra_dry_run" + suffix])
            target_line(f"workflow LRA dry run{label}", times["lra_dry_run" + suffix])
            if "noop_rerun" + suffix in times:
                time_line(f"workflow no-op rerun after the tiny run{label}", times["noop_rerun" + suffix])
                target_line(f"workflow no-op rerun{label}", times["noop_rerun" + suffix])
        if not a.quick:
            for label, env in (("", ENV), (" with the stand-in scontrol", fast)):
                t = time.perf_counter()
                subprocess.run([sys.executable, "-c", "import snakemake.cli"], env=env, check=True)
                print(f"   for scale: 'import snakemake.cli'{label} takes {fmt_s(time.perf_counter() - t)} (one run)")
    finally:
        if a.keep:
            print(f"   kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
