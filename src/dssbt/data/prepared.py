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

Vocabulary convention: id 0 = ``<pad>``, id 1 = ``<unk>``, then (with the reference's end-of-sequence token,
option ``eos``) id 2 = ``<eos>``, then tokens of the train split. ``d_input`` counts every id, ``<eos>`` included.
``meta.json`` is written last, so a folder with a meta.json is complete.

Storage: the values above are what a training batch sees (``Split.batch_inputs``, ``Split.decoded``); readers,
files on disk and the training process keep them compact, losslessly. Token ids, lengths and labels are stored in the smallest unsigned
integer type that holds them (uint8 for LRA's byte-level vocabularies, uint16 for lengths up to 65,535); pixel
inputs that take at most 256 distinct values (every LRA image task: 8-bit pixels under an affine normalisation) are
stored as uint8 codes plus ``table`` (float32 (256,), the value of each code). ``Split.batch_inputs`` decodes a
batch back to int64 / float32. Files written before this (int64 / float32, no table) load unchanged.
The readers build these compact arrays directly (:func:`compact_zeros`, :func:`pixel_codes_inplace`): no whole
split ever exists as int64 ids or float32 pixels while preparing.
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
PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"


@dataclass
class Split:
    inputs: np.ndarray  # ids, any integer dtype (n, L) | (n, 2, L) | float32 (n, L) | uint8 codes (n, L) with table
    lengths: np.ndarray  # integer (n,) | (n, 2)
    labels: np.ndarray  # integer (n,)
    table: np.ndarray | None = None  # float32 (256,): pixel value of each uint8 code in inputs (compact storage)

    def __len__(self) -> int:
        return len(self.labels)

    def batch_inputs(self, idx: np.ndarray, length: int | None = None) -> np.ndarray:
        """The inputs of examples ``idx``, cut to their first ``length`` positions (default: all), as a model takes
        them: int64 ids or float32 pixels, (b, ..., length). Cut before decoding: padding is never converted."""
        x = self.inputs[idx][..., :length]
        if self.table is not None:
            return self.table[x]  # (b, L) float32
        return x if x.dtype.kind == "f" else x.astype(np.int64)

    def decoded(self) -> "Split":
        """The whole split in the form a reader produces (int64 ids or float32 pixels, int64 lengths and labels)."""
        return Split(inputs=self.batch_inputs(np.arange(len(self))), lengths=self.lengths.astype(np.int64),
                     labels=self.labels.astype(np.int64))


def smallest_uint_dtype(top: int) -> type:
    """The smallest of uint8 / uint16 / uint32 / uint64 that holds the non-negative integer ``top``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return dtype
    return np.uint64


def compact_zeros(shape: tuple[int, ...], top: int) -> np.ndarray:
    """Zeros of ``shape`` in the smallest unsigned type holding values up to ``top`` (ids, lengths)."""
    return np.zeros(shape, dtype=smallest_uint_dtype(top))


def _smallest_uint(a: np.ndarray) -> np.ndarray:
    """``a`` (non-negative integers) in uint8 / uint16 / uint32 when its values fit, else unchanged.

    No copy when ``a`` already has that type (a prepared Retrieval train split is 1.2 GB of uint8)."""
    if a.size == 0 or a.min() < 0:
        return a
    top = int(a.max())
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return a.astype(dtype, copy=False)
    return a


def pixel_codes_inplace(pixels: np.ndarray, rows: int = 4096, block: int = 64) -> np.ndarray:
    """Overwrite uint8 pixel values (n, L) with the codes :func:`_pixel_codes` would give them; returns the
    pixel value of each code, uint8 (k,), k <= 256.

    For a strictly increasing normalisation f, ``_pixel_codes(f(pixels), rows)`` gives these same codes and the
    table ``f(values)``: so an image reader can keep its pixels as uint8 and never build the float32 split (the
    prepared files are byte-for-byte those of the float32 route). The codes depend on the chunks of ``rows`` rows
    (values new in a chunk get the next codes, in increasing order); the work goes ``block`` rows at a time, so
    the temporaries are a few blocks of uint8 (Path-X: 1 MiB each), whatever ``rows``.
    """
    if pixels.dtype != np.uint8:
        raise ValueError(f"pixel_codes_inplace needs uint8 pixels, got {pixels.dtype}")
    values = np.zeros(0, np.uint8)  # code -> pixel value, in order of first appearance (sorted within a chunk)
    lut = np.zeros(256, np.uint8)  # pixel value -> code
    n = len(pixels)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        present = np.zeros(256, bool)
        for b in range(start, stop, block):
            present[np.unique(pixels[b : min(b + block, stop)])] = True
        present[values] = False
        new = np.flatnonzero(present).astype(np.uint8)  # = np.setdiff1d(np.unique(chunk), values), sorted
        lut[new] = np.arange(len(values), len(values) + len(new))
        values = np.concatenate([values, new])
        for b in range(start, stop, block):
            blk = pixels[b : min(b + block, stop)]
            blk[...] = lut[blk]
    return values


def code_table(values: np.ndarray, normalise) -> np.ndarray:
    """float32 (256,): ``normalise(values)`` (float32 (k,)) in the first k entries, zeros after."""
    table = np.zeros(256, np.float32)
    table[: len(values)] = normalise(values)
    return table


def _pixel_codes(x: np.ndarray, rows: int = 4096) -> tuple[np.ndarray, np.ndarray] | None:
    """(uint8 codes, float32 table (256,)) with ``table[codes] == x`` exactly, or None if x has > 256 values.

    Works through x a chunk of rows at a time (memory: one chunk). A value first met in a later chunk is appended
    to the table, so the codes already written keep their meaning.
    """
    values = np.zeros(0, x.dtype)  # the table so far, in order of first appearance
    codes = np.empty(x.shape, np.uint8)
    for start in range(0, len(x), rows):
        chunk = x[start : start + rows]
        new = np.setdiff1d(np.unique(chunk), values)
        if len(values) + len(new) > 256:
            return None
        values = np.concatenate([values, new])
        order = np.argsort(values, kind="stable")
        codes[start : start + rows] = order[np.searchsorted(values[order], chunk)]
    table = np.zeros(256, np.float32)
    table[: len(values)] = values
    return codes, table


def save_prepared(folder: str | os.PathLike, splits: dict[str, Split], meta: dict[str, Any]) -> None:
    """Write the three splits and then ``meta.json`` (atomically each; meta last marks completeness)."""
    folder = Path(folder)
    if set(splits) != set(SPLITS):
        raise ValueError(f"prepared data needs splits {SPLITS}, got {sorted(splits)}")
    (folder / "meta.json").unlink(missing_ok=True)
    for name, s in splits.items():
        if not (len(s.inputs) == len(s.lengths) == len(s.labels)):
            raise ValueError(f"{name}: inputs, lengths, labels differ in length")
        arrays = {"lengths": _smallest_uint(s.lengths), "labels": _smallest_uint(s.labels)}
        if s.table is not None:
            arrays.update(inputs=s.inputs, table=s.table)
        elif s.inputs.dtype.kind == "f":
            coded = _pixel_codes(s.inputs)  # None: more than 256 distinct values, kept as they are
            arrays.update({"inputs": s.inputs} if coded is None else {"inputs": coded[0], "table": coded[1]})
        else:
            arrays.update(inputs=_smallest_uint(s.inputs))
        with atomic_path(folder / f"{name}.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
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
        return Split(inputs=z["inputs"], lengths=z["lengths"].astype(np.int64), labels=z["labels"].astype(np.int64),
                     table=z["table"] if "table" in z.files else None)
