"""ListOps: the official ``basic_{train,val,test}.tsv`` files -> prepared token ids.

File format (LRA release, ``listops-1000/``): a header ``Source\\tTarget``, then one example per line, the
expression and its value 0..9, e.g. ``( ( ( [MAX 2 ) 9 ) ] )\\t9``.
Preprocessing (S4 reference, after the LRA tokenizer): ``]`` -> ``X``, parentheses dropped, whitespace tokens;
vocabulary from the train split; sequences cut at ``l_max`` (2048). No BOS/EOS token is added.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .common import DataError, build_vocab, encode_tokens, find_unique, read_text_lines, split_stats
from .prepared import SPLITS, Split

FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}
HEADER = ["Source", "Target"]
D_OUTPUT = 10
_TRANSLATE = {ord("]"): "X", ord("("): None, ord(")"): None}


def tokenize(source: str) -> list[str]:
    """LRA ListOps tokens: ``]`` becomes ``X``, parentheses vanish, split on whitespace."""
    return source.translate(_TRANSLATE).split()


def read_tsv(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """One ``basic_*.tsv`` file -> (sources, labels int64 (n,)).

    Raises DataError naming file and line for a missing header, a row without exactly two tab-separated
    columns, or a target that is not an integer in 0..9.
    """
    lines = read_text_lines(path)
    if not lines or lines[0].split("\t") != HEADER:
        raise DataError(path, f"expected the header {chr(9).join(HEADER)!r}, got {lines[0] if lines else ''!r}", 1)
    sources, labels = [], []
    for no, line in enumerate(lines[1:], start=2):
        cols = line.split("\t")
        if len(cols) != 2:
            raise DataError(path, f"expected 2 tab-separated columns (Source, Target), got {len(cols)}", no)
        try:
            y = int(cols[1].strip())
        except ValueError:
            raise DataError(path, f"target {cols[1]!r} is not an integer", no) from None
        if not 0 <= y < D_OUTPUT:
            raise DataError(path, f"target {y} outside 0..{D_OUTPUT - 1}", no)
        sources.append(cols[0])
        labels.append(y)
    return sources, np.array(labels, dtype=np.int64)


def prepare_listops(root: str | os.PathLike, *, l_max: int = 2048) -> tuple[dict[str, Split], dict[str, Any]]:
    """Read the three files found under ``root`` and encode them.

    Returns (splits, meta): inputs int64 (n, L) with L = the longest cut sequence (<= l_max), lengths int64
    (n,), labels int64 (n,).
    """
    if l_max < 1:
        raise ValueError(f"l_max must be >= 1, got {l_max}")
    paths = {s: find_unique(root, FILES[s]) for s in SPLITS}
    tokens, labels = {}, {}
    for s in SPLITS:
        sources, labels[s] = read_tsv(paths[s])
        tokens[s] = [tokenize(src)[:l_max] for src in sources]
    vocab = build_vocab(tokens["train"])
    encoded = {s: encode_tokens(tokens[s], vocab, l_max) for s in SPLITS}
    L = max(ids.shape[1] for ids, _ in encoded.values())
    splits = {}
    for s in SPLITS:
        ids, lengths = encoded[s]
        ids = np.pad(ids, ((0, 0), (0, L - ids.shape[1])))  # (n, L)
        splits[s] = Split(inputs=ids, lengths=lengths, labels=labels[s])
    meta = {
        "task": "listops", "encoder": "embedding", "d_input": len(vocab), "d_output": D_OUTPUT, "l_max": int(L),
        "dual": False, "vocab": vocab,
        "files": {s: str(Path(paths[s]).resolve()) for s in SPLITS},
        "preprocessing": {"tokenizer": "']'->'X', parentheses dropped, whitespace split", "vocab": "train split, "
                          "by decreasing count then token", "cut": int(l_max), "bos_eos": False},
        **split_stats(splits, D_OUTPUT),
    }
    return splits, meta
