"""The prepared form every task is turned into, whatever its source (real LRA or the embedded generators).

A prepared task is a folder holding ``train.npz``, ``val.npz``, ``test.npz`` and ``meta.json``:

- each ``{split}.npz`` has ``inputs``, ``lengths``, ``labels``:
    token tasks (encoder "embedding"): inputs int64 (n, L), ids into the vocabulary, 0 = padding;
    pixel tasks (encoder "linear"):    inputs float32 (n, L), normalised intensities, lengths all L;
    two-document tasks (dual = true):  inputs int64 (n, 2, L), lengths int64 (n, 2);
    lengths int64 (n,) otherwise: the number of valid positions; labels int64 (n,) in [0, d_output).
- ``meta.json``: task, source, encoder, d_input (vocabulary size incl. padding/unknown, or features per step),
  d_output (classes), l_max (L), dual, vocab (list of tokens, index = id; null for pixel tasks), sizes per split,
  majority_baseline (test accuracy of always predicting the most frequent train label), preprocessing (free-form).

Vocabulary convention: id 0 = ``<pad>``, id 1 = ``<unk>``, then tokens of the train split.
``meta.json`` is written last, so a folder with a meta.json is complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_path, write_json

SPLITS = ("train", "val", "test")
PAD, UNK = "<pad>", "<unk>"


@dataclass
class Split:
    inputs: np.ndarray  # int64 (n, L) | float32 (n, L) | int64 (n, 2, L)
    lengths: np.ndarray  # int64 (n,) | (n, 2)
    labels: np.ndarray  # int64 (n,)

    def __len__(self) -> int:
        return len(self.labels)


def save_prepared(folder: str | os.PathLike, splits: dict[str, Split], meta: dict[str, Any]) -> None:
    """Write the three splits and then ``meta.json`` (atomically each; meta last marks completeness)."""
    folder = Path(folder)
    if set(splits) != set(SPLITS):
        raise ValueError(f"prepared data needs splits {SPLITS}, got {sorted(splits)}")
    (folder / "meta.json").unlink(missing_ok=True)
    for name, s in splits.items():
        if not (len(s.inputs) == len(s.lengths) == len(s.labels)):
            raise ValueError(f"{name}: inputs, lengths, labels differ in length")
        with atomic_path(folder / f"{name}.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, inputs=s.inputs, lengths=s.lengths.astype(np.int64), labels=s.labels.astype(np.int64))
    meta = dict(meta, sizes={k: len(v) for k, v in splits.items()})
    write_json(folder / "meta.json", meta)


def load_meta(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / "meta.json"
    if not path.exists():
        raise ValueError(f"{path}: missing; the task in {folder} is not prepared (or was cut off)")
    return json.loads(path.read_text())


def load_split(folder: str | os.PathLike, split: str) -> Split:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    with np.load(Path(folder) / f"{split}.npz") as z:
        return Split(inputs=z["inputs"], lengths=z["lengths"], labels=z["labels"])
