"""Text (IMDb sentiment, characters): aclImdb ``{train,test}/{pos,neg}/*.txt`` -> prepared character ids.

Label: ``pos`` = 1, ``neg`` = 0. Files are taken in name order within each folder (neg first, then pos).
Preprocessing (S4 reference, ``IMDB``: ``level: char``, ``min_freq: 15``, ``l_max: 4096``): the raw text as
characters (code points), vocabulary from the (cut) train split, characters seen at least ``min_count`` (15) times,
rarer ones -> ``<unk>``, by decreasing count then character. End of sequence: the reference (``append_eos:
True``) cuts each review at ``l_max - 1`` characters and appends ``<eos>`` (id 2, after ``<pad>`` 0 and ``<unk>``
1; option ``eos``, set by the LRA preset). Without it reviews are cut at ``l_max`` and nothing is added.
The reference reads the HuggingFace ``imdb`` copy of the same aclImdb reviews (train/test, 25,000 each).
Validation: as in LRA the test set is also the validation set (``val_fraction = 0``, the reference's default);
with ``val_fraction > 0`` a class-stratified, seeded part of train is held out instead (and the vocabulary comes
from what is left; the reference would use HuggingFace's ``train_test_split``, not reproduced here).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    DataError,
    char_counts,
    encode_into,
    find_unique,
    keep_length,
    sorted_vocab,
    split_stats,
    stratified_split,
)
from .prepared import SPLITS, Split

D_OUTPUT = 2
CLASSES = {"neg": 0, "pos": 1}


def read_folder(split_dir: str | os.PathLike, keep: int | None = None) -> tuple[list[str], np.ndarray, list[Path]]:
    """``<split_dir>/{neg,pos}/*.txt`` -> (texts cut to their first ``keep`` characters (None: whole), labels int64
    (n,), paths). Undecodable file: DataError."""
    split_dir = Path(split_dir)
    texts, labels, paths = [], [], []
    for cls, y in CLASSES.items():
        folder = split_dir / cls
        if not folder.is_dir():
            raise ValueError(f"{folder}: missing (aclImdb layout is {{train,test}}/{{pos,neg}}/*.txt)")
        for p in sorted(folder.glob("*.txt")):
            data = p.read_bytes()
            try:
                texts.append(data.decode("utf-8")[:keep])
            except UnicodeDecodeError as e:
                raise DataError(
                    p, f"not valid UTF-8 ({e.reason} at byte {e.start})", data[: e.start].count(b"\n") + 1
                ) from None
            labels.append(y)
            paths.append(p)
    if not texts:
        raise ValueError(f"{split_dir}: no reviews found in neg/ and pos/")
    return texts, np.array(labels, dtype=np.int64), paths


def prepare_text(
    root: str | os.PathLike,
    *,
    l_max: int = 4096,
    min_count: int = 15,
    val_fraction: float = 0.0,
    seed: int = 0,
    eos: bool = False,
) -> tuple[dict[str, Split], dict[str, Any]]:
    """Read ``aclImdb`` found under ``root``; returns (splits, meta) with inputs (n, L) ids in the smallest
    unsigned type, L <= l_max (``<eos>`` included), lengths (n,), labels int64 (n,). The cut reviews are held as
    text (about the size of the ids) and encoded straight into the compact arrays."""
    if l_max < 1:
        raise ValueError(f"l_max must be >= 1, got {l_max}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    keep = keep_length(l_max, eos)
    base = find_unique(root, "aclImdb", dirs=True)
    train_texts, train_y, _ = read_folder(base / "train", keep)
    test_texts, test_y, _ = read_folder(base / "test", keep)
    if val_fraction > 0:
        parts = stratified_split(train_y, {"val": int(round(val_fraction * len(train_y)))}, seed)
        raw = {
            "train": ([train_texts[i] for i in parts["train"]], train_y[parts["train"]]),
            "val": ([train_texts[i] for i in parts["val"]], train_y[parts["val"]]),
        }
    else:
        raw = {"train": (train_texts, train_y), "val": (test_texts, test_y)}
    raw["test"] = (test_texts, test_y)
    vocab = sorted_vocab(char_counts(raw["train"][0]), min_count, eos)
    L = max(max((len(t) for t in raw[s][0]), default=1) for s in SPLITS) + int(eos)
    splits: dict[str, Split] = {}
    for s in SPLITS:
        if s == "val" and val_fraction == 0:
            continue  # the test set, encoded once below
        texts = raw[s][0]
        ids, lengths = encode_into(((t,) for t in texts), len(texts), 1, L, vocab, eos, what=f"{base}/{s}")
        splits[s] = Split(inputs=ids, lengths=lengths, labels=raw[s][1])
    splits.setdefault("val", splits["test"])
    pre = {
        "tokenizer": "characters",
        "cut": int(l_max),
        "min_count": int(min_count),
        "vocab": "train split, by decreasing count then character",
        "bos_eos": False,
        "labels": CLASSES,
        "val": "test set (as in LRA)" if val_fraction == 0 else f"stratified {val_fraction:g} of train, seed {seed}",
    }
    if eos:
        pre.update(
            bos_eos="eos",
            cut=int(keep),
            eos="<eos> (id 2) appended after the characters cut at l_max - 1, as the S4 reference (append_eos)",
        )
    meta = {
        "task": "text",
        "encoder": "embedding",
        "d_input": len(vocab),
        "d_output": D_OUTPUT,
        "l_max": int(L),
        "dual": False,
        "vocab": vocab,
        "files": str(base.resolve()),
        "preprocessing": pre,
        **split_stats(splits, D_OUTPUT),
    }
    return splits, meta
