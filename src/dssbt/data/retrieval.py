"""Retrieval (AAN citation pairs, characters): ``new_aan_pairs.{train,eval,test}.tsv`` -> prepared id pairs.

File format (LRA release, ``tsv_data/``): no header; five tab-separated columns per line: label as float text
(``1.0`` / ``0.0``), id of document 1, id of document 2, text 1, text 2. Splits: train, eval (= val), test.
Preprocessing (S4 reference, ``AAN``: ``l_max: 4000``): characters, vocabulary from both documents of the (cut)
train split, every character kept, by decreasing count then character. End of sequence: the reference
(``append_eos: True``) cuts each document at ``l_max - 1`` characters and appends ``<eos>`` (id 2, after
``<pad>`` 0 and ``<unk>`` 1; option ``eos``, set by the LRA preset); without it documents are cut at ``l_max``.
Prepared inputs are (n, 2, L) ids in the smallest unsigned type, lengths (n, 2).
Lines are split on tabs only (no CSV quoting: a quote character is text; the reference reads the files with
HuggingFace's csv loader, which would treat a field that starts with a double quote as quoted).

Memory: each file is read twice, one line at a time (counts and lengths, then ids straight into the uint8
arrays), so preparing the full task (147,086 train pairs of 2 x 4000 characters, 1.2 GB of uint8 ids) holds the
compact output and one line, never an int64 copy (which would be 9.4 GB for train alone).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    CharCounter,
    DataError,
    encode_into,
    find_unique,
    iter_text_lines,
    keep_length,
    sorted_vocab,
    split_stats,
)
from .prepared import SPLITS, Split

FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv", "test": "new_aan_pairs.test.tsv"}
N_COLUMNS = 5
D_OUTPUT = 2


def parse_label(text: str, path: str | os.PathLike, line: int) -> int:
    """``"1.0"`` -> 1: a float text whose value is exactly 0 or 1; anything else is a DataError."""
    try:
        value = float(text)
    except ValueError:
        raise DataError(path, f"label {text!r} is not a number", line) from None
    if not math.isfinite(value) or value != int(value) or not 0 <= value < D_OUTPUT:
        raise DataError(path, f"label {text!r} is not 0 or 1", line)
    return int(value)


def iter_tsv(path: str | os.PathLike) -> Iterator[tuple[str, str, int]]:
    """One ``new_aan_pairs.*.tsv`` -> (text 1, text 2, label) per line, one line at a time.

    Wrong column count or label: DataError naming file and line."""
    for no, line in iter_text_lines(path):
        cols = line.split("\t")
        if len(cols) != N_COLUMNS:
            raise DataError(
                path, f"expected {N_COLUMNS} tab-separated columns (label, id1, id2, text1, text2), got {len(cols)}", no
            )
        yield cols[3], cols[4], parse_label(cols[0], path, no)


def read_tsv(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """One ``new_aan_pairs.*.tsv`` -> (texts 1, texts 2, labels int64 (n,)); errors as :func:`iter_tsv`."""
    rows = list(iter_tsv(path))
    return [a for a, _, _ in rows], [b for _, b, _ in rows], np.array([y for _, _, y in rows], dtype=np.int64)


def prepare_retrieval(
    root: str | os.PathLike, *, l_max: int = 4000, min_count: int = 1, eos: bool = False
) -> tuple[dict[str, Split], dict[str, Any]]:
    """Read the three files found under ``root``; returns (splits, meta): inputs (n, 2, L) ids in the smallest
    unsigned type, L <= l_max (``<eos>`` included), lengths (n, 2), labels int64 (n,)."""
    if l_max < 1:
        raise ValueError(f"l_max must be >= 1, got {l_max}")
    keep = keep_length(l_max, eos)
    paths = {s: find_unique(root, FILES[s]) for s in SPLITS}
    counts = CharCounter()
    labels, longest = {}, 0
    for s in SPLITS:  # pass 1: check every line, count train characters, measure lengths
        ys = []
        for a, b, y in iter_tsv(paths[s]):
            a, b = a[:keep], b[:keep]
            if s == "train":
                counts.add(a)
                counts.add(b)
            longest = max(longest, len(a), len(b))
            ys.append(y)
        labels[s] = np.array(ys, dtype=np.int64)
    vocab = sorted_vocab(counts.counter(), min_count, eos)
    L = max(longest, 1) + int(eos)
    splits = {}
    for s in SPLITS:  # pass 2: ids straight into the compact arrays
        pairs = ((a[:keep], b[:keep]) for a, b, _ in iter_tsv(paths[s]))
        ids, lengths = encode_into(pairs, len(labels[s]), 2, L, vocab, eos, what=str(paths[s]))
        splits[s] = Split(inputs=ids, lengths=lengths, labels=labels[s])  # (n, 2, L), (n, 2)
    pre = {
        "tokenizer": "characters",
        "cut": int(l_max),
        "min_count": int(min_count),
        "vocab": "both documents of the train split, by decreasing count then character",
        "bos_eos": False,
        "val": "new_aan_pairs.eval.tsv",
    }
    if eos:
        pre.update(
            bos_eos="eos",
            cut=int(keep),
            eos="<eos> (id 2) appended to each document after its characters "
            "cut at l_max - 1, as the S4 reference (append_eos)",
        )
    meta = {
        "task": "retrieval",
        "encoder": "embedding",
        "d_input": len(vocab),
        "d_output": D_OUTPUT,
        "l_max": int(L),
        "dual": True,
        "vocab": vocab,
        "files": {s: str(Path(paths[s]).resolve()) for s in SPLITS},
        "preprocessing": pre,
        **split_stats(splits, D_OUTPUT),
    }
    return splits, meta
