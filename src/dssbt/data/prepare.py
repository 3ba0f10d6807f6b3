"""``prepare``: any task, any source -> the prepared form of :mod:`dssbt.data.prepared`.

``input`` is a folder (extracted LRA data, or a generator's output: searched for the official file names) or,
for ``source = "lra"``, an archive (``lra_release.gz``, ``aclImdb_v1.tar.gz``, ``cifar-10-python.tar.gz``), of
which only the members the task needs are extracted (into ``extract_dir``; by default
``<archive folder>/<archive name>.extracted/<task>``, see :func:`default_extract_dir`). The workflow instead
extracts every requested task of ``lra_release.gz`` in one pass (``dssbt extract``, rule ``extract_lra``) and
passes the folders. Everything is read and checked before the first prepared file is written, so malformed input
leaves no prepared file behind.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from . import tasks
from .download import extract_task
from .prepared import save_prepared

SOURCES = ("lra", "embedded")


def __getattr__(name: str):
    """``LRA_TASKS`` (every registered task) and ``EMBEDDED_TASKS`` (those with a generator), read from the task
    registry (:mod:`dssbt.data.tasks`) when asked for, so that a task registered at run time is listed too."""
    if name == "LRA_TASKS":
        return tasks.names()
    if name == "EMBEDDED_TASKS":
        return tasks.embedded()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_extract_dir(task: str, archive: str | os.PathLike, out: str | os.PathLike) -> Path:
    """``<archive folder>/<archive name>.extracted/<task>``; if that folder is not writable (a shared, read-only
    copy of the archive), ``<folder of out>/<archive name>.extracted/<task>`` instead."""
    archive = Path(archive)
    beside = archive.parent if os.access(archive.parent, os.W_OK) else Path(out).parent
    return beside / f"{archive.name}.extracted" / task


def resolve_input(
    task: str,
    path: str | os.PathLike,
    extract_dir: str | os.PathLike | None = None,
    out: str | os.PathLike = ".",
    log=print,
) -> Path:
    """A folder to read ``task`` from: ``path`` itself if it is a folder, else the extracted archive."""
    path = Path(path)
    if path.is_dir():
        return path
    if not path.exists():
        raise ValueError(f"{path}: input not found")
    dest = Path(extract_dir) if extract_dir is not None else default_extract_dir(task, path, out)
    return extract_task(path, task, dest, log=log)


def read_task(task: str, folder: str | os.PathLike, **opts: Any):
    """Run the reader of ``task`` (:mod:`dssbt.data.tasks`) on ``folder``; returns (splits, meta). ``opts`` go to
    the reader."""
    return tasks.get(task).reader(folder, **opts)


def prepare_task(
    task: str,
    source: str,
    input: str | os.PathLike,
    out: str | os.PathLike,
    *,
    extract_dir: str | os.PathLike | None = None,
    log=print,
    **opts: Any,
) -> dict[str, Any]:
    """Prepare ``task`` from ``input`` into the folder ``out``; returns the metadata written to meta.json.

    ``opts`` are the reader's settings (e.g. ``l_max``, ``min_count``, ``val_size``, ``seed``, and the S4
    reference's conventions ``eos``, ``normalise``, ``split``, ``pixels``); None values are dropped so the
    reader's defaults apply. Keys of generator.json that the task's generator names in ``reader_defaults`` are
    defaults too (the embedded image task: ``val_size``, the generator's).
    """
    spec = tasks.get(task)
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {SOURCES}")
    if source == "embedded" and spec.generator is None:
        raise ValueError(f"task {task!r} has no embedded source (embedded tasks: {tasks.embedded()}); use source lra")
    opts = {k: v for k, v in opts.items() if v is not None}
    t0 = time.perf_counter()
    if source == "embedded":
        folder = Path(input)
        if not folder.is_dir():
            raise ValueError(
                f"{folder}: not a folder; generate the embedded data first (dssbt generate {task} --out {folder})"
            )
    else:
        folder = resolve_input(task, input, extract_dir, out=out, log=log)
    generator = None
    gen_file = folder / "generator.json"
    if gen_file.is_file():
        generator = json.loads(gen_file.read_text())
        if generator.get("task") != task:
            raise ValueError(f"{gen_file}: generated for task {generator.get('task')!r}, not {task!r}")
        for key in spec.generator.reader_defaults if spec.generator is not None else ():
            if key not in opts and key in generator:  # e.g. image: the generator's val_size
                opts[key] = generator[key]
    elif source == "embedded":
        raise ValueError(f"{folder}: no generator.json; not a folder written by `dssbt generate {task}`")
    splits, meta = spec.reader(folder, **opts)
    meta = {**meta, "source": source, "input": str(Path(input).resolve()), "options": opts}
    if generator is not None:
        meta["generator"] = generator
    save_prepared(out, splits, meta)
    meta["sizes"] = {k: len(v) for k, v in splits.items()}
    if log:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
        log(
            f"prepared {task} ({source}) from {input} into {out}: {sizes}; L={meta['l_max']}, "
            f"d_input={meta['d_input']}, d_output={meta['d_output']} ({time.perf_counter() - t0:.1f} s)"
        )
    return meta
