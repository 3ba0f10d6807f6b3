"""Shared helpers of the benchmark scripts: interleaved timing, min/median, checks, ratios, peak-RSS probes.

Every script prints three kinds of machine-readable lines besides its tables (``bench/run.py`` and
``tests/test_bench.py`` read them):

    CHECK <name>: ok|FAIL  <detail>        a correctness check (outputs agree, ...); any FAIL makes the script exit 1
    RATIO <name>: <median ratio>x (min <min ratio>x)  target >= <t>x: met|MISSED|info
    TIME <name>: min <s> s  median <s> s   a plain timing

The machine is shared and noisy, so variants are always timed side by side in one process, interleaved repeat by
repeat (the order alternates), and both the minimum (least disturbed) and the median are reported.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

_failed: list[str] = []


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall time (s) of each variant, ``repeats`` times, interleaved; the order is reversed every other repeat.

    Each variant is called ``warmup`` times first (not timed).
    """
    names = list(variants)
    for _ in range(warmup):
        for n in names:
            variants[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(repeats):
        for n in names if i % 2 == 0 else reversed(names):
            t = time.perf_counter()
            variants[n]()
            times[n].append(time.perf_counter() - t)
    return times


def summary(ts: list[float]) -> tuple[float, float]:
    return min(ts), statistics.median(ts)


def fmt_s(s: float) -> str:
    """Seconds with a unit that keeps 3 significant digits readable."""
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.1f} us"


def time_line(name: str, ts: list[float], per: float = 1.0, extra: str = "") -> None:
    """Print ``TIME name: min .. median ..`` for timings ``ts`` divided by ``per`` (e.g. steps per timed block)."""
    lo, med = summary([t / per for t in ts])
    print(f"TIME {name}: min {fmt_s(lo)}  median {fmt_s(med)}  ({len(ts)} repeats){extra}")


def ratio(name: str, slow: list[float], fast: list[float], target: float | None = None) -> tuple[float, float]:
    """Print the speed-up slow/fast as median/median and min/min; compare the median ratio with ``target``."""
    r_med = statistics.median(slow) / statistics.median(fast)
    r_min = min(slow) / min(fast)
    if target is None:
        verdict = "info"
        tgt = "no target"
    else:
        verdict = "met" if r_med >= target else f"MISSED by {target / r_med:.2f}x"
        tgt = f"target >= {target:g}x"
    print(f"RATIO {name}: {r_med:.2f}x (min/min {r_min:.2f}x)  {tgt}: {verdict}")
    return r_med, r_min


def check(name: str, ok: bool, detail: str = "") -> bool:
    """Print a CHECK line; a failed check makes ``finish()`` exit with status 1."""
    print(f"CHECK {name}: {'ok' if ok else 'FAIL'}  {detail}".rstrip())
    if not ok:
        _failed.append(name)
    return ok


def finish() -> None:
    if _failed:
        print(f"FAILED CHECKS: {', '.join(_failed)}")
        sys.exit(1)


def header(title: str, **facts: object) -> None:
    print(f"== {title}")
    if facts:
        print("   " + ", ".join(f"{k}={v}" for k, v in facts.items()))


def maxrss_mib() -> float:
    """Peak resident set size of this process (since the last ``reset_peak_rss``), MiB: VmHWM of /proc/self/status.

    Not getrusage's ru_maxrss: Linux carries the RSS of the parent at fork time into a child's ru_maxrss (the
    pre-exec memory image counts), so a probe launched by a big parent would report the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def rss_mib() -> float:
    """Current resident set size of this process, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> bool:
    """Reset the peak-RSS high-water mark to the current RSS (Linux ``clear_refs`` 5); False where not permitted.

    Without it, the transient peak of importing torch (~250 MiB) would hide the peak of a small measured step.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# Every allocation of 64 KiB or more gets its own mmap and is unmapped when freed, so the process's RSS follows the
# bytes actually alive (no heap fragmentation, no kept free lists) and its high-water mark is the real peak.
PROBE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_TOP_PAD_": "0"}


def run_probe(script: Path, args: list[str], threads: int | None = None) -> dict:
    """Run ``python script --probe ...args`` in a fresh interpreter; it prints one JSON line last, which is returned.

    Used for peak memory: a fresh process per variant, so one variant's peak cannot hide another's.
    """
    env = {**os.environ, **PROBE_ENV}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    p = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"probe {script.name} {' '.join(args)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])
