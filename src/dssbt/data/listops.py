"""ListOps: the official ``basic_{train,val,test}.tsv`` files -> prepared token ids.

File format (LRA release, ``listops-1000/``): a header ``Source\\tTarget``, then one example per line, the
expression and its value 0..9, e.g. ``( ( ( [MAX 2 ) 9 ) ] )\\t9``.
Preprocessing (S4 reference, after the LRA tokenizer): ``]`` -> ``X``, parentheses dropped, whitespace tokens;
vocabulary from the (cut) train split, every token kept (no min_freq), by decreasing count then token.
End of sequence: the S4 reference (``ListOps``, ``append_eos: True``, ``l_max: 2048``) cuts each sequence at
``l_max - 1`` tokens and appends ``<eos>``, whose id 2 follows ``<pad>`` 0 and ``<unk>`` 1 (option ``eos``; the
LRA preset sets it). Without it (the default, kept for the embedded task) sequences are cut at ``l_max`` and
nothing is added.

The files are read twice, one line at a time (counts and lengths, then ids): memory is the compact output.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .common import DataError, encode_into, find_unique, iter_text_lines, keep_length, sorted_vocab, split_stats
from .prepared import SPLITS, Split

FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}
HEADER = ["Source", "Target"]
D_OUTPUT = 10
_TRANSLATE = {ord("]"): "X", ord("("): None, ord(")"): None}


def tokenize(source: str) -> list[str]:
    """LRA ListOps tokens: ``]`` becomes ``X``, parentheses vanish, split on whitespace."""
    return source.translate(_TRANSLATE).split()


def iter_tsv(path: str | os.PathLike) -> Iterator[tuple[str, int]]:
    """One ``basic_*.tsv`` file -> (source, target) per example, one line at a time.

    Raises DataError naming file and line for a missing header, a row without exactly two tab-separated
    columns, or a target that is not an integer in 0..9.
    """
    lines = iter_text_lines(path)
    first = next(lines, (1, None))[1]
    if first is None or first.split("\t") != HEADER:
        raise DataError(path, f"expected the header {chr(9).join(HEADER)!r}, got {first or ''!r}", 1)
    for no, line in lines:
        cols = line.split("\t")
        if len(cols) != 2:
            raise DataError(path, f"expected 2 tab-separated columns (Source, Target), got {len(cols)}", no)
        try:
            y = int(cols[1].strip())
        except ValueError:
            raise DataError(path, f"target {cols[1]!r} is not an integer", no) from None
        if not 0 <= y < D_OUTPUT:
            raise DataError(path, f"target {y} outside 0..{D_OUTPUT - 1}", no)
        yield cols[0], y


def read_tsv(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """One ``basic_*.tsv`` file -> (sources, labels int64 (n,)); errors as :func:`iter_tsv`."""
    rows = list(iter_tsv(path))
    return [s for s, _ in rows], np.array([y for _, y in rows], dtype=np.int64)


def prepare_listops(
    root: str | os.PathLike, *, l_max: int = 2048, eos: bool = False
) -> tuple[dict[str, Split], dict[str, Any]]:
    """Read the three files found under ``root`` and encode them.

    Returns (splits, meta): inputs (n, L) ids in the smallest unsigned type, L = the longest sequence (with its
    ``<eos>``) <= l_max, lengths (n,) (``<eos>`` counted), labels int64 (n,).
    """
    if l_max < 1:
        raise ValueError(f"l_max must be >= 1, got {l_max}")
    keep = keep_length(l_max, eos)
    paths = {s: find_unique(root, FILES[s]) for s in SPLITS}
    counts: Counter = Counter()
    labels, longest = {}, 0
    for s in SPLITS:  # pass 1: check every line, count train tokens, measure lengths
        ys = []
        for source, y in iter_tsv(paths[s]):
            toks = tokenize(source)[:keep]
            if s == "train":
                counts.update(toks)
            longest = max(longest, len(toks))
            ys.append(y)
        labels[s] = np.array(ys, dtype=np.int64)
    vocab = sorted_vocab(counts, 1, eos)
    L = max(longest + int(eos), 1)
    splits = {}
    for s in SPLITS:  # pass 2: ids straight into the compact arrays
        docs = ((tokenize(source)[:keep],) for source, _ in iter_tsv(paths[s]))
        ids, lengths = encode_into(docs, len(labels[s]), 1, L, vocab, eos, what=str(paths[s]))
        splits[s] = Split(inputs=ids, lengths=lengths, labels=labels[s])
    pre = {
        "tokenizer": "']'->'X', parentheses dropped, whitespace split",
        "vocab": "train split, by decreasing count then token",
        "cut": int(l_max),
        "bos_eos": False,
    }
    if eos:
        pre.update(
            bos_eos="eos",
            cut=int(keep),
            eos="<eos> (id 2) appended after the tokens cut at l_max - 1, as the S4 reference (append_eos)",
        )
    meta = {
        "task": "listops",
        "encoder": "embedding",
        "d_input": len(vocab),
        "d_output": D_OUTPUT,
        "l_max": int(L),
        "dual": False,
        "vocab": vocab,
        "files": {s: str(Path(paths[s]).resolve()) for s in SPLITS},
        "preprocessing": pre,
        **split_stats(splits, D_OUTPUT),
    }
    return splits, meta
