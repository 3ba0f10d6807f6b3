"""Text (IMDb sentiment, characters): aclImdb ``{train,test}/{pos,neg}/*.txt`` -> prepared character ids.

Label: ``pos`` = 1, ``neg`` = 0. Files are taken in name order within each folder (neg first, then pos).
Preprocessing (S4 reference): the raw text as characters, cut at ``l_max`` (4096); vocabulary from the (cut) train
split, characters seen at least ``min_count`` (15) times, rarer ones -> ``<unk>``. No BOS/EOS token.
Validation: as in LRA the test set is also the validation set (``val_fraction = 0``); with ``val_fraction > 0``
a class-stratified, seeded part of train is held out instead (and the vocabulary comes from what is left).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .common import (DataError, char_counts, encode_chars, find_unique, sorted_vocab, split_stats,
                     stratified_split)
from .prepared import SPLITS, Split

D_OUTPUT = 2
CLASSES = {"neg": 0, "pos": 1}


def read_folder(split_dir: str | os.PathLike) -> tuple[list[str], np.ndarray, list[Path]]:
    """``<split_dir>/{neg,pos}/*.txt`` -> (texts, labels int64 (n,), paths). Undecodable file: DataError."""
    split_dir = Path(split_dir)
    texts, labels, paths = [], [], []
    for cls, y in CLASSES.items():
        folder = split_dir / cls
        if not folder.is_dir():
            raise ValueError(f"{folder}: missing (aclImdb layout is {{train,test}}/{{pos,neg}}/*.txt)")
        for p in sorted(folder.glob("*.txt")):
            data = p.read_bytes()
            try:
                texts.append(data.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise DataError(p, f"not valid UTF-8 ({e.reason} at byte {e.start})",
                                data[: e.start].count(b"\n") + 1) from None
            labels.append(y)
            paths.append(p)
    if not texts:
        raise ValueError(f"{split_dir}: no reviews found in neg/ and pos/")
    return texts, np.array(labels, dtype=np.int64), paths


def prepare_text(root: str | os.PathLike, *, l_max: int = 4096, min_count: int = 15, val_fraction: float = 0.0,
                 seed: int = 0) -> tuple[dict[str, Split], dict[str, Any]]:
    """Read ``aclImdb`` found under ``root``; returns (splits, meta) with inputs int64 (n, L), L <= l_max."""
    if l_max < 1:
        raise ValueError(f"l_max must be >= 1, got {l_max}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    base = find_unique(root, "aclImdb", dirs=True)
    train_texts, train_y, _ = read_folder(base / "train")
    test_texts, test_y, _ = read_folder(base / "test")
    train_texts = [t[:l_max] for t in train_texts]
    test_texts = [t[:l_max] for t in test_texts]
    if val_fraction > 0:
        parts = stratified_split(train_y, {"val": int(round(val_fraction * len(train_y)))}, seed)
        raw = {"train": ([train_texts[i] for i in parts["train"]], train_y[parts["train"]]),
               "val": ([train_texts[i] for i in parts["val"]], train_y[parts["val"]])}
    else:
        raw = {"train": (train_texts, train_y), "val": (test_texts, test_y)}
    raw["test"] = (test_texts, test_y)
    vocab = sorted_vocab(char_counts(raw["train"][0]), min_count)
    L = max(max((len(t) for t in raw[s][0]), default=1) for s in SPLITS)
    splits: dict[str, Split] = {}
    for s in SPLITS:
        if s == "val" and val_fraction == 0:
            continue  # the test set, encoded once below
        ids, lengths = encode_chars(raw[s][0], vocab, L)  # (n, L), (n,)
        splits[s] = Split(inputs=ids, lengths=lengths, labels=raw[s][1])
    splits.setdefault("val", splits["test"])
    meta = {
        "task": "text", "encoder": "embedding", "d_input": len(vocab), "d_output": D_OUTPUT, "l_max": int(L),
        "dual": False, "vocab": vocab, "files": str(base.resolve()),
        "preprocessing": {"tokenizer": "characters", "cut": int(l_max), "min_count": int(min_count),
                          "vocab": "train split, by decreasing count then character", "bos_eos": False,
                          "labels": CLASSES,
                          "val": "test set (as in LRA)" if val_fraction == 0 else
                          f"stratified {val_fraction:g} of train, seed {seed}"},
        **split_stats(splits, D_OUTPUT),
    }
    return splits, meta
