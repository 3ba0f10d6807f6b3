"""Where a result came from: the code, the packages, the machine and the device, recorded in every metrics file.

Results are deterministic on one machine with the same code, thread count and kernels, and only there: another CPU
(AVX-512 against AVX2 kernels), another torch or another thread count rounds float32 sums differently, and a
training trajectory can part ways. ``provenance`` records what is needed to tell why two runs differ;
``mixed_provenance`` says when one table holds runs that differ in any of it.

    code      commit of the checkout the package runs from (None where it is not a git checkout, e.g. a wheel),
              ``dirty``: sha256 of ``git diff HEAD -- src`` (the package's uncommitted changes; None where clean),
              the package version
    packages  torch, numpy, scipy, snakemake versions (None where not installed)
    machine   CPU model, the vector extensions the CPU reports, torch's CPU kernel capability (the one ATen picks:
              AVX512, AVX2, ...), OS and Python
    device    the device the job computed on (with the GPU's name on CUDA) and its torch thread count
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform
import subprocess
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from . import __version__

PACKAGES = ("torch", "numpy", "scipy", "snakemake")
# the CPU flags that decide which kernels a library runs (x86 vector extensions, Arm's SIMD)
VECTOR_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_bf16",
    "amx_tile",
    "asimd",
    "sve",
)
# the fields whose difference makes runs of one table not comparable bit for bit
COMPARED = {
    "commit": ("code", "commit"),
    "uncommitted changes": ("code", "dirty"),
    "torch": ("packages", "torch"),
    "CPU kernels": ("machine", "cpu_capability"),
    "CPU": ("machine", "cpu"),
    "device": ("device", "name"),
    "threads": ("device", "threads"),
}


def _git(root: Path, *args: str) -> bytes | None:
    try:
        p = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


@functools.cache
def code() -> dict[str, Any]:
    """Commit and uncommitted-change hash of the checkout holding this package (src layout: two folders up)."""
    root = Path(__file__).resolve().parents[2]
    commit = _git(root, "rev-parse", "HEAD") if (root / ".git").exists() else None
    diff = _git(root, "diff", "HEAD", "--", "src") if commit else None
    return {
        "commit": commit.decode().strip() if commit else None,
        "dirty": hashlib.sha256(diff).hexdigest()[:16] if diff else None,
        "version": __version__,
    }


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache  # the installed versions do not change within a process: read them once, like code() and machine()
def packages() -> dict[str, str | None]:
    return {name: _version(name) for name in PACKAGES}


@functools.cache
def machine() -> dict[str, Any]:
    """CPU model, vector extensions (from /proc/cpuinfo where there is one), torch's CPU kernel capability."""
    cpu, flags = platform.processor() or None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Hardware") and cpu in (None, "", platform.machine()):
                cpu = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "cpu": cpu,
        "vector_extensions": [f for f in VECTOR_FLAGS if f in flags],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def provenance(device: torch.device | str) -> dict[str, Any]:
    """The provenance block of a metrics file for a job computing on ``device`` with the current torch threads."""
    dev = torch.device(device)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    return {
        "code": code(),
        "packages": packages(),
        "machine": machine(),
        "device": {"name": str(dev), "gpu": gpu, "threads": torch.get_num_threads()},
    }


def mixed_provenance(metrics: Iterable[dict[str, Any]]) -> str | None:
    """A warning naming every provenance field in which the runs differ, with the count of runs per value; None
    when they agree. Runs written before provenance was recorded count as "unrecorded"."""
    seen: dict[str, Counter] = {label: Counter() for label in COMPARED}
    for m in metrics:
        prov = m.get("provenance") or {}
        for label, (section, key) in COMPARED.items():
            value = (prov.get(section) or {}).get(key, "unrecorded") if prov else "unrecorded"
            seen[label][str(value)[:12] if label == "commit" else str(value)] += 1
    parts = [
        f"{label} " + ", ".join(f"{value} ({n} runs)" for value, n in counts.most_common())
        for label, counts in seen.items()
        if len(counts) > 1
    ]
    if not parts:
        return None
    return "these runs differ in code or machine, so their figures are not comparable bit for bit: " + "; ".join(parts)
