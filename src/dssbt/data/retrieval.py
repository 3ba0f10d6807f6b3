"""Retrieval (AAN citation pairs, characters): ``new_aan_pairs.{train,eval,test}.tsv`` -> prepared id pairs.

File format (LRA release, ``tsv_data/``): no header; five tab-separated columns per line: label as float text
(``1.0`` / ``0.0``), id of document 1, id of document 2, text 1, text 2. Splits: train, eval (= val), test.
Preprocessing (S4 reference): characters, each document cut at ``l_max`` (4000); vocabulary from both documents
of the train split; no BOS/EOS token. Prepared inputs are int64 (n, 2, L), lengths int64 (n, 2).
Lines are split on tabs only (no CSV quoting: a quote character is text).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .common import DataError, char_counts, encode_chars, find_unique, read_text_lines, sorted_vocab, split_stats
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


def read_tsv(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """One ``new_aan_pairs.*.tsv`` -> (texts 1, texts 2, labels int64 (n,)). Wrong column count: DataError."""
    first, second, labels = [], [], []
    for no, line in enumerate(read_text_lines(path), start=1):
        cols = line.split("\t")
        if len(cols) != N_COLUMNS:
            raise DataError(path, f"expected {N_COLUMNS} tab-separated columns (label, id1, id2, text1, text2), "
                                  f"got {len(cols)}", no)
        labels.append(parse_label(cols[0], path, no))
        first.append(cols[3])
        second.append(cols[4])
    return first, second, np.array(labels, dtype=np.int64)


def prepare_retrieval(root: str | os.PathLike, *, l_max: int = 4000, min_count: int = 1
                      ) -> tuple[dict[str, Split], dict[str, Any]]:
    """Read the three files found under ``root``; returns (splits, meta), inputs int64 (n, 2, L), L <= l_max."""
    if l_max < 1:
        raise ValueError(f"l_max must be >= 1, got {l_max}")
    paths = {s: find_unique(root, FILES[s]) for s in SPLITS}
    docs = {}
    for s in SPLITS:
        a, b, y = read_tsv(paths[s])
        docs[s] = ([t[:l_max] for t in a], [t[:l_max] for t in b], y)
    vocab = sorted_vocab(char_counts(docs["train"][0] + docs["train"][1]), min_count)
    L = max(max((len(t) for t in docs[s][0] + docs[s][1]), default=1) for s in SPLITS)
    splits = {}
    for s in SPLITS:
        a, b, y = docs[s]
        ids_a, len_a = encode_chars(a, vocab, L)  # (n, L), (n,)
        ids_b, len_b = encode_chars(b, vocab, L)
        splits[s] = Split(inputs=np.stack([ids_a, ids_b], axis=1),  # (n, 2, L)
                          lengths=np.stack([len_a, len_b], axis=1), labels=y)  # (n, 2)
    meta = {
        "task": "retrieval", "encoder": "embedding", "d_input": len(vocab), "d_output": D_OUTPUT, "l_max": int(L),
        "dual": True, "vocab": vocab,
        "files": {s: str(Path(paths[s]).resolve()) for s in SPLITS},
        "preprocessing": {"tokenizer": "characters", "cut": int(l_max), "min_count": int(min_count),
                          "vocab": "both documents of the train split, by decreasing count then character",
                          "bos_eos": False, "val": "new_aan_pairs.eval.tsv"},
        **split_stats(splits, D_OUTPUT),
    }
    return splits, meta
