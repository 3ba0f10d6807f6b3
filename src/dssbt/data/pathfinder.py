"""Pathfinder (32x32) and Path-X (128x128): PNGs + metadata -> prepared pixel sequences.

Layout (LRA release): ``pathfinder{32,128}/curv_contour_length_14/metadata/<k>.npy`` -- text files despite the
name, one image per line, whitespace-separated: ``imgs/<k> sample_<j>.png <index> <label> ...`` (field 0 the
folder, field 1 the file, field 3 the label 0/1; more fields follow). Images under
``curv_contour_length_14/imgs/<k>/sample_<j>.png``. Metadata files are read in numeric order of their stem.
Preprocessing (S4 reference, ``PathFinder``): grayscale (PIL ``convert("L")``), ``ToTensor`` (``x/255``), flattened
row-major (1024 or 16384 steps), then (option ``pixels``):

- ``centered`` (default): ``Normalize(0.5, 0.5)``, i.e. ``(x/255 - 0.5) / 0.5`` in [-1, 1] -- the loader's own
  default (``center: True``) and what the DSS fork of S4 always does;
- ``unit``: ``x/255`` in [0, 1] -- what state-spaces/s4 actually runs: its ``configs/dataset/pathfinder.yaml``
  sets ``center: False`` for Pathfinder and Path-X.

Split 80/10/10: val and test get ``int(0.1 n)`` each, train the rest (option ``split``):

- ``reference``: the S4 reference's ``random_split(dataset, [train, val, test],
  generator=torch.Generator().manual_seed(seed))``, seed 42 there: unstratified, train first, each split in the
  permutation's order;
- ``stratified`` (default, kept for the embedded task): class-stratified, drawn with numpy and ``seed``,
  indices sorted.

The full data: 200,000 images per difficulty (160,000 / 20,000 / 20,000). Pixels are decoded one image at a
time straight into the uint8 array of its split and stored as codes + table (:mod:`.prepared`): Path-X's 3.3 GB of
uint8 pixels are never a 13 GB float32 array.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .common import DataError, random_split, read_text_lines, split_stats, stratified_split
from .prepared import SPLITS, Split, code_table, pixel_codes_inplace

D_OUTPUT = 2
DIFFICULTY = "curv_contour_length_14"
PIXELS = ("centered", "unit")
SPLIT = ("stratified", "reference")


def normalise(values: np.ndarray, pixels: str) -> np.ndarray:
    """uint8 pixel values -> float32 as ``ToTensor()`` (then ``Normalize(0.5, 0.5)`` if ``centered``), in float32."""
    x = values.astype(np.float32) / np.float32(255.0)
    return (x - np.float32(0.5)) / np.float32(0.5) if pixels == "centered" else x


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
                raise DataError(
                    mfile, f"expected at least 4 fields (folder, file, index, label), got {len(fields)}", no
                )
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
        raise DataError(
            mfile, f"image {path} is {gray.shape[1]}x{gray.shape[0]}, expected {resolution}x{resolution}", line
        )
    return gray


def prepare_pathfinder(
    root: str | os.PathLike,
    *,
    resolution: int = 32,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    task: str | None = None,
    pixels: str = "centered",
    split: str = "stratified",
) -> tuple[dict[str, Split], dict[str, Any]]:
    """Read ``pathfinder<res>/curv_contour_length_14`` under ``root``; returns (splits, meta).

    inputs uint8 codes (n, res*res) with ``table`` (float32 (256,): the value of each code, in [-1, 1] or [0, 1]),
    lengths all res*res, labels int64 (n,).
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) with a sum below 1"
        )
    if pixels not in PIXELS:
        raise ValueError(f"pixels must be one of {PIXELS}, got {pixels!r}")
    if split not in SPLIT:
        raise ValueError(f"split must be one of {SPLIT}, got {split!r}")
    contour = find_contour_dir(root, resolution)
    samples = read_metadata(contour)
    n, L = len(samples), resolution * resolution
    labels = np.array([y for _, y, _, _ in samples], dtype=np.int64)  # (n,)
    n_val, n_test = int(val_fraction * n), int(test_fraction * n)
    if split == "reference":
        idx = random_split(n, {"train": n - n_val - n_test, "val": n_val, "test": n_test}, seed)
    else:
        idx = stratified_split(labels, {"val": n_val, "test": n_test}, seed)
    splits = {}
    for s in SPLITS:  # images go straight into their split's uint8 array: one compact copy of the pixels
        x = np.empty((len(idx[s]), L), dtype=np.uint8)  # (n_s, L)
        for row, i in enumerate(idx[s]):
            image, _, mfile, no = samples[i]
            x[row] = load_png(image, resolution, mfile, no).reshape(-1)
        table = code_table(pixel_codes_inplace(x), lambda v: normalise(v, pixels))
        splits[s] = Split(inputs=x, lengths=np.full(len(x), L, dtype=np.int64), labels=labels[idx[s]], table=table)
    task = task or ("pathfinder" if resolution == 32 else "pathx" if resolution == 128 else f"pathfinder{resolution}")
    if split == "reference":
        split_text = (
            f"torch random_split into [train, val int({val_fraction:g} n), test int({test_fraction:g} n)], "
            f"generator seed {seed}, unstratified (S4 reference)"
        )
    else:
        split_text = (
            f"val int({val_fraction:g} n), test int({test_fraction:g} n), train the rest; class-stratified, seed {seed}"
        )
    mean, std = (0.5, 0.5) if pixels == "centered" else (0.0, 1.0)
    meta = {
        "task": task,
        "encoder": "linear",
        "d_input": 1,
        "d_output": D_OUTPUT,
        "l_max": L,
        "dual": False,
        "vocab": None,
        "resolution": resolution,
        "files": str(contour.resolve()),
        "normalisation": {"mean": mean, "std": std, "scale": 255.0},
        "preprocessing": {
            "grayscale": "PIL convert('L')",
            "normalise": "(x/255 - 0.5)/0.5" if pixels == "centered" else "x/255 (S4 center: False)",
            "order": "row-major",
            "split": split_text,
            "index": "position in metadata order (files by number, then lines)",
        },
        **split_stats(splits, D_OUTPUT),
    }
    return splits, meta
