"""Pathfinder (32x32) and Path-X (128x128): PNGs + metadata -> prepared pixel sequences.

Layout (LRA release): ``pathfinder{32,128}/curv_contour_length_14/metadata/<k>.npy`` -- text files despite the
name, one image per line, whitespace-separated: ``imgs/<k> sample_<j>.png <index> <label> ...`` (field 0 the
folder, field 1 the file, field 3 the label 0/1; more fields follow). Images under
``curv_contour_length_14/imgs/<k>/sample_<j>.png``. Metadata files are read in numeric order of their stem.
Preprocessing (S4 reference): grayscale, ``x/255``, normalised as ``(x - 0.5) / 0.5`` to [-1, 1], flattened
row-major (1024 or 16384 steps). Split 80/10/10: val and test get ``int(0.1 n)`` each, train the rest, drawn
with ``seed`` and stratified by class (the reference uses an unstratified random split of the same sizes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .common import DataError, read_text_lines, split_stats, stratified_split
from .prepared import SPLITS, Split

D_OUTPUT = 2
DIFFICULTY = "curv_contour_length_14"
RESOLUTION = {"pathfinder": 32, "pathx": 128}


def find_contour_dir(root: str | os.PathLike, resolution: int, difficulty: str = DIFFICULTY) -> Path:
    """The ``pathfinder<res>/<difficulty>`` folder under ``root`` (nesting may vary)."""
    root = Path(root)
    hits = sorted(p for p in root.rglob(difficulty) if p.is_dir() and p.parent.name == f"pathfinder{resolution}")
    if root.name == difficulty and root.parent.name == f"pathfinder{resolution}":
        hits = [root]
    if len(hits) != 1:
        what = "no" if not hits else f"{len(hits)}"
        raise ValueError(f"{root}: {what} folder pathfinder{resolution}/{difficulty} found (expected exactly one)")
    return hits[0]


def read_metadata(contour_dir: str | os.PathLike) -> list[tuple[Path, int, Path, int]]:
    """All metadata lines -> [(image path, label, metadata file, line number)], in file and line order.

    DataError (naming metadata file and line) for a line with fewer than 4 fields, a label other than 0/1,
    or an image that does not exist.
    """
    contour_dir = Path(contour_dir)
    meta_dir = contour_dir / "metadata"
    files = [p for p in meta_dir.glob("*.npy") if p.is_file()] if meta_dir.is_dir() else []
    if not files:
        raise ValueError(f"{meta_dir}: no metadata/*.npy files")
    for p in files:
        if not p.stem.isdigit():
            raise DataError(p, "metadata file name must be <integer>.npy")
    samples = []
    for mfile in sorted(files, key=lambda p: int(p.stem)):
        for no, line in enumerate(read_text_lines(mfile), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 4:
                raise DataError(mfile, f"expected at least 4 fields (folder, file, index, label), got {len(fields)}",
                                no)
            if fields[3] not in ("0", "1"):
                raise DataError(mfile, f"label {fields[3]!r} is not 0 or 1", no)
            image = contour_dir / fields[0] / fields[1]
            if not image.is_file():
                raise DataError(mfile, f"names image {fields[0]}/{fields[1]}, which does not exist ({image})", no)
            samples.append((image, int(fields[3]), mfile, no))
    return samples


def load_png(path: Path, resolution: int, mfile: str | os.PathLike, line: int) -> np.ndarray:
    """A grayscale PNG -> uint8 (res, res). Unreadable or wrong size: DataError naming the metadata line."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            gray = np.asarray(im.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(mfile, f"image {path} is unreadable ({type(e).__name__}: {e})", line) from None
    if gray.shape != (resolution, resolution):
        raise DataError(mfile, f"image {path} is {gray.shape[1]}x{gray.shape[0]}, expected "
                               f"{resolution}x{resolution}", line)
    return gray


def prepare_pathfinder(root: str | os.PathLike, *, resolution: int = 32, seed: int = 0, val_fraction: float = 0.1,
                       test_fraction: float = 0.1, task: str | None = None) -> tuple[dict[str, Split], dict[str, Any]]:
    """Read ``pathfinder<res>/curv_contour_length_14`` under ``root``; returns (splits, meta).

    inputs float32 (n, res*res) in [-1, 1], lengths all res*res, labels int64 (n,).
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) "
                         f"with a sum below 1")
    contour = find_contour_dir(root, resolution)
    samples = read_metadata(contour)
    n, L = len(samples), resolution * resolution
    labels = np.array([y for _, y, _, _ in samples], dtype=np.int64)  # (n,)
    idx = stratified_split(labels, {"val": int(val_fraction * n), "test": int(test_fraction * n)}, seed)
    splits = {}
    for s in SPLITS:  # images go straight into their split's array: one copy of the pixels in memory
        x = np.empty((len(idx[s]), L), dtype=np.float32)  # (n_s, L)
        for row, i in enumerate(idx[s]):
            image, _, mfile, no = samples[i]
            x[row] = (load_png(image, resolution, mfile, no).reshape(-1).astype(np.float32) / 255.0 - 0.5) / 0.5
        splits[s] = Split(inputs=x, lengths=np.full(len(x), L, dtype=np.int64), labels=labels[idx[s]])
    task = task or ("pathfinder" if resolution == 32 else "pathx" if resolution == 128 else f"pathfinder{resolution}")
    meta = {
        "task": task, "encoder": "linear", "d_input": 1, "d_output": D_OUTPUT, "l_max": L, "dual": False,
        "vocab": None, "resolution": resolution, "files": str(contour.resolve()),
        "normalisation": {"mean": 0.5, "std": 0.5, "scale": 255.0},
        "preprocessing": {"grayscale": "PIL convert('L')", "normalise": "(x/255 - 0.5)/0.5", "order": "row-major",
                          "split": f"val int({val_fraction:g} n), test int({test_fraction:g} n), train the rest; "
                                   f"class-stratified, seed {seed}",
                          "index": "position in metadata order (files by number, then lines)"},
        **split_stats(splits, D_OUTPUT),
    }
    return splits, meta
