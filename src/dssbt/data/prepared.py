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

    def decoded(self) -> Split:
        """The whole split in the form a reader produces (int64 ids or float32 pixels, int64 lengths and labels)."""
        return Split(
            inputs=self.batch_inputs(np.arange(len(self))),
            lengths=self.lengths.astype(np.int64),
            labels=self.labels.astype(np.int64),
        )


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


class PreparedDataError(ValueError):
    """A prepared split that does not match its meta.json (or the model). The message names the file, the key and
    the bad value."""


def _first(mask: np.ndarray) -> int:
    """The index of the first example (along axis 0) where ``mask`` is true anywhere."""
    return int(np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))[0])


def check_split(
    s: Split,
    meta: dict[str, Any],
    path: str | os.PathLike,
    split: str | None = None,
    l_max: int | None = None,
    dtypes: dict[str, np.dtype] | None = None,
) -> None:
    """Refuse a split that a model could not take as its meta.json describes it: PreparedDataError naming ``path``,
    the key and the first bad value. Vectorised (a few min/max passes over the arrays). Only what meta.json states
    is checked (a meta without d_output has no label range).

    Checked: shapes (inputs (n, L) or, dual, (n, 2, L); lengths inputs.shape[:-1]; labels (n,); n = meta's size of
    ``split``), dtypes (``dtypes``: the stored ones; integer labels, lengths and token ids, float or uint8 codes with
    a (256,) table for pixel tasks), labels in [0, d_output), lengths in [0, min(L, l_max)] with l_max meta's and,
    where given, the model's ``l_max``, L <= l_max, token ids in [0, d_input).
    """

    def bad(key: str, message: str) -> PreparedDataError:
        return PreparedDataError(f"{path}: {key}: {message}")

    dtypes = dtypes or {"inputs": s.inputs.dtype, "lengths": s.lengths.dtype, "labels": s.labels.dtype}
    n = len(s.labels)
    dual = meta.get("dual")  # None: meta.json does not say; either form
    want = "(n, 2, L)" if dual else "(n, L)" if dual is not None else "(n, L) or (n, 2, L)"
    two = s.inputs.ndim == 3 and s.inputs.shape[1] == 2
    if s.labels.ndim != 1:
        raise bad("labels", f"shape {s.labels.shape}, expected (n,)")
    form_ok = two if dual else s.inputs.ndim == 2 if dual is not None else two or s.inputs.ndim == 2
    if len(s.inputs) != n or not form_ok:
        raise bad(
            "inputs",
            f"shape {s.inputs.shape}, expected {want} with n = {n} (the labels), as meta.json's "
            f"dual = {json.dumps(dual)} says",
        )
    if s.lengths.shape != s.inputs.shape[:-1]:
        raise bad("lengths", f"shape {s.lengths.shape}, expected {s.inputs.shape[:-1]} (one per sequence)")
    size = (meta.get("sizes") or {}).get(split) if split else None
    if size is not None and size != n:
        raise bad("labels", f"{n} examples, but meta.json sizes.{split} = {size}")
    for key in ("labels", "lengths"):
        if dtypes[key].kind not in "iu":
            raise bad(key, f"dtype {dtypes[key]}, expected integers")
    encoder = meta.get("encoder")
    if encoder == "embedding" and dtypes["inputs"].kind not in "iu":
        raise bad("inputs", f"dtype {dtypes['inputs']}, expected integer token ids (meta.json encoder = embedding)")
    if encoder == "linear":
        if s.table is not None and (dtypes["inputs"] != np.uint8 or s.table.shape != (256,)):
            raise bad(
                "table",
                f"uint8 codes with a (256,) table expected, got {dtypes['inputs']} codes and a table "
                f"of shape {s.table.shape}",
            )
        if s.table is None and dtypes["inputs"].kind != "f":
            raise bad(
                "inputs",
                f"dtype {dtypes['inputs']}, expected float pixels or uint8 codes with a table "
                f"(meta.json encoder = linear)",
            )
    if n == 0:
        return
    d_output = meta.get("d_output")
    if d_output is not None and (s.labels.min() < 0 or s.labels.max() >= d_output):
        i = _first((s.labels < 0) | (s.labels >= d_output))
        raise bad("labels", f"{int(s.labels[i])} at example {i}, outside [0, {d_output}) (meta.json d_output)")
    limits = [
        (int(v), which) for v, which in ((meta.get("l_max"), "meta.json l_max"), (l_max, "the model's l_max")) if v
    ]
    limit, which = min(limits) if limits else (s.inputs.shape[-1], "the stored positions")
    longest = int(s.lengths.max())
    if longest > limit or s.lengths.min() < 0:
        i = _first((s.lengths > limit) | (s.lengths < 0))
        raise bad(
            "lengths",
            f"{int(s.lengths[i].max() if s.lengths[i].max() > limit else s.lengths[i].min())} at "
            f"example {i}, outside [0, {limit}] ({which})",
        )
    L = s.inputs.shape[-1]
    if L > limit:
        raise bad("inputs", f"{L} positions per sequence, more than {limit} ({which})")
    if longest > L:
        i = _first(s.lengths > L)
        raise bad("lengths", f"{int(s.lengths[i].max())} at example {i}, more than the {L} stored positions")
    d_input = meta.get("d_input")
    if encoder == "embedding" and d_input is not None:
        if s.inputs.max() >= d_input or s.inputs.min() < 0:
            i = _first((s.inputs >= d_input) | (s.inputs < 0))
            raise bad(
                "inputs",
                f"token id {int(s.inputs[i].max())} at example {i}, outside [0, {d_input}) (meta.json d_input)",
            )


def load_split(
    folder: str | os.PathLike, split: str, meta: dict[str, Any] | None = None, l_max: int | None = None
) -> Split:
    """One split of a prepared folder, checked against its meta.json (``meta``, else the folder's meta.json where
    it has one) and, where given, the model's ``l_max`` (:func:`check_split`): a bad file is a PreparedDataError
    naming it, before any training or evaluation starts."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    path = Path(folder) / f"{split}.npz"
    with np.load(path) as z:
        missing = [k for k in ("inputs", "lengths", "labels") if k not in z.files]
        if missing:
            raise PreparedDataError(f"{path}: {missing[0]}: missing (the file holds {sorted(z.files)})")
        inputs, labels, lengths = z["inputs"], z["labels"], z["lengths"]  # each access reads the array: once
        dtypes = {"inputs": inputs.dtype, "lengths": lengths.dtype, "labels": labels.dtype}
        s = Split(
            inputs=inputs,
            lengths=lengths.astype(np.int64),
            labels=labels.astype(np.int64),
            table=z["table"] if "table" in z.files else None,
        )
    if meta is None and (Path(folder) / "meta.json").exists():
        meta = load_meta(folder)
    if meta is not None:
        check_split(s, meta, path, split, l_max, dtypes)
    return s
