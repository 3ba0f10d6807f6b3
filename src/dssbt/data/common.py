"""Helpers shared by the readers: errors that name file and line, vocabularies, encoding, splits, label stats."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .prepared import PAD, UNK, Split


class DataError(ValueError):
    """Malformed input data. The message starts with ``file:line:`` (or ``file:``) so the user can find it."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path, self.line = str(path), line


def read_text_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a UTF-8 text file, split on ``\\n`` only (a trailing ``\\r`` is dropped; no final empty line).

    ``str.splitlines`` is not used on purpose: it also splits on characters such as ``\\x0b`` or ``\\x1c``
    that may occur inside a document.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(path, f"not valid UTF-8 ({e.reason} at byte {e.start})", line) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def find_unique(root: str | os.PathLike, pattern: str, *, dirs: bool = False) -> Path:
    """The one path under ``root`` matching the glob ``pattern`` (searched recursively; nesting may vary).

    Raises ValueError when there is none or more than one.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    hits = sorted(p for p in root.rglob(pattern) if (p.is_dir() if dirs else p.is_file()))
    if not hits:
        kind = "folder" if dirs else "file"
        raise ValueError(f"{root}: no {kind} matching {pattern!r} found (searched all subfolders)")
    if len(hits) > 1:
        listed = ", ".join(str(h) for h in hits[:5])
        raise ValueError(f"{root}: {len(hits)} paths match {pattern!r}, expected one: {listed}")
    return hits[0]


def sorted_vocab(counts: Counter, min_count: int = 1) -> list[str]:
    """``[<pad>, <unk>]`` then the tokens with count >= ``min_count``, by decreasing count, ties by token.

    This is the ordering of torchtext's ``build_vocab_from_iterator`` used by the S4 reference.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    kept = [(tok, c) for tok, c in counts.items() if c >= min_count and tok not in (PAD, UNK)]
    kept.sort(key=lambda tc: (-tc[1], tc[0]))
    return [PAD, UNK] + [tok for tok, _ in kept]


def build_vocab(token_lists: Iterable[Sequence[str]], min_count: int = 1) -> list[str]:
    """Vocabulary (list, index = id) from token sequences; see :func:`sorted_vocab` for the order."""
    counts: Counter = Counter()
    for toks in token_lists:
        counts.update(toks)
    return sorted_vocab(counts, min_count)


def encode_tokens(token_lists: Sequence[Sequence[str]], vocab: Sequence[str], l_max: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Token sequences -> (ids int64 (n, L), lengths int64 (n,)), cut at ``l_max``, padded with 0; unknown -> 1.

    L is the longest (cut) sequence, so a short data set is not padded to ``l_max``.
    """
    index = {tok: i for i, tok in enumerate(vocab)}
    lengths = np.array([min(len(t), l_max) for t in token_lists], dtype=np.int64)  # (n,)
    L = int(lengths.max(initial=1))
    ids = np.zeros((len(token_lists), L), dtype=np.int64)  # (n, L)
    for i, toks in enumerate(token_lists):
        n = lengths[i]
        ids[i, :n] = [index.get(t, 1) for t in toks[:n]]
    return ids, lengths


def codepoints(text: str) -> np.ndarray:
    """Unicode code points of ``text``: uint32 (len(text),)."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def char_counts(texts: Iterable[str]) -> Counter:
    """Character counts over ``texts`` (vectorised per text)."""
    counts: Counter = Counter()
    for t in texts:
        u, c = np.unique(codepoints(t), return_counts=True)
        counts.update({chr(int(k)): int(v) for k, v in zip(u, c)})
    return counts


def encode_chars(texts: Sequence[str], vocab: Sequence[str], L: int) -> tuple[np.ndarray, np.ndarray]:
    """Character-level encoding: (ids int64 (n, L), lengths int64 (n,)). Texts must already be cut to <= L.

    Unknown characters get id 1; padding is 0.
    """
    chars = [(ord(tok), i) for i, tok in enumerate(vocab) if i > 1 and len(tok) == 1]
    keys = np.array(sorted(c for c, _ in chars), dtype=np.uint32)  # (V',)
    vals = np.array([i for _, i in sorted(chars)], dtype=np.int64)  # (V',)
    ids = np.zeros((len(texts), L), dtype=np.int64)  # (n, L)
    lengths = np.zeros(len(texts), dtype=np.int64)  # (n,)
    for i, t in enumerate(texts):
        cp = codepoints(t)
        if len(cp) > L:
            raise ValueError(f"text {i} has {len(cp)} characters, more than L={L}")
        if len(keys):
            pos = np.minimum(np.searchsorted(keys, cp), len(keys) - 1)
            ids[i, : len(cp)] = np.where(keys[pos] == cp, vals[pos], 1)
        else:
            ids[i, : len(cp)] = 1
        lengths[i] = len(cp)
    return ids, lengths


def label_counts(labels: np.ndarray, d_output: int) -> list[int]:
    """Examples per class: list of ``d_output`` ints."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=d_output).tolist()


def majority_baseline(train_labels: np.ndarray, test_labels: np.ndarray, d_output: int) -> float:
    """Test accuracy of always predicting the most frequent train label (ties: the smallest label)."""
    if len(test_labels) == 0:
        return 0.0
    top = int(np.argmax(np.bincount(train_labels, minlength=d_output)))
    return float(np.mean(np.asarray(test_labels) == top))


def stratified_split(labels: np.ndarray, sizes: dict[str, int], seed: int, rest: str = "train"
                     ) -> dict[str, np.ndarray]:
    """Split example indices into ``sizes`` (name -> count) plus ``rest`` (everything left), by class.

    Each class contributes to each named split in proportion to its frequency (largest remainders fill the
    exact totals), drawn at random with ``seed``. Returns name -> sorted int64 indices. Same seed -> same split.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if any(s < 0 for s in sizes.values()) or sum(sizes.values()) > n:
        raise ValueError(f"split sizes {sizes} do not fit {n} examples")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    pools = {int(c): rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    taken = {int(c): 0 for c in classes}
    out: dict[str, list[np.ndarray]] = {name: [] for name in [*sizes, rest]}
    for name, size in sizes.items():
        ideal = counts * size / n  # (C,) float
        alloc = np.floor(ideal).astype(np.int64)
        order = np.argsort(-(ideal - alloc), kind="stable")
        alloc[order[: size - int(alloc.sum())]] += 1
        for c, k in zip(classes, alloc):
            c = int(c)
            k = min(int(k), len(pools[c]) - taken[c])
            out[name].append(pools[c][taken[c]: taken[c] + k])
            taken[c] += k
    for c in pools:
        out[rest].append(pools[c][taken[c]:])
    return {name: np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64) for name, parts in out.items()}


def take(split: Split, idx: np.ndarray) -> Split:
    """The examples ``idx`` of ``split``."""
    return Split(inputs=split.inputs[idx], lengths=split.lengths[idx], labels=split.labels[idx])


def split_stats(splits: dict[str, Split], d_output: int) -> dict:
    """Meta fields common to every task: label counts per split and the majority baseline."""
    return {
        "label_counts": {k: label_counts(s.labels, d_output) for k, s in splits.items()},
        "majority_baseline": majority_baseline(splits["train"].labels, splits["test"].labels, d_output),
    }
