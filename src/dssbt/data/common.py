"""Helpers shared by the readers: errors that name file and line, vocabularies, encoding, splits, label stats.

Conventions of the S4 reference (state-spaces/s4, ``src/dataloaders/lra.py`` and ``base.py``) that the readers can
follow (options ``eos`` and ``split``): token sequences are cut at ``l_max - 1`` and get ``<eos>`` appended, with
the specials ``<pad>`` 0, ``<unk>`` 1, ``<eos>`` 2 first in the vocabulary (:func:`sorted_vocab`,
:func:`keep_length`); splits drawn from one data set are ``torch.utils.data.random_split`` with a generator seeded
42, unstratified (:func:`random_split`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .prepared import EOS, PAD, UNK, Split, compact_zeros


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


def iter_text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) of a UTF-8 text file, read one line at a time (memory: one line).

    The lines of :func:`read_text_lines`: split on ``\\n`` only, a trailing ``\\r`` dropped, no final empty line.
    An undecodable line is a DataError naming file and line.
    """
    path = Path(path)
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise DataError(path, f"cannot read ({e.strerror or e})") from None
    with fh:
        for no, raw in enumerate(fh, start=1):  # binary iteration splits on b"\n" only
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, f"not valid UTF-8 ({e.reason} at byte {e.start} of the line)", no) from None
            if line.endswith("\n"):
                line = line[:-1]
            yield no, line[:-1] if line.endswith("\r") else line


def sorted_vocab(counts: Counter, min_count: int = 1, eos: bool = False) -> list[str]:
    """``[<pad>, <unk>]`` (then ``<eos>`` if ``eos``), then the tokens with count >= ``min_count``, by decreasing
    count, ties by token (code point order).

    This is what the S4 reference gets from torchtext's ``build_vocab_from_iterator(tokens, min_freq=min_count,
    specials=["<pad>", "<unk>"] + ["<eos>"])``: specials first in that order, then the counter sorted by
    (-count, token); tokens equal to a special are not listed twice.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    specials = [PAD, UNK] + ([EOS] if eos else [])
    kept = [(tok, c) for tok, c in counts.items() if c >= min_count and tok not in specials]
    kept.sort(key=lambda tc: (-tc[1], tc[0]))
    return specials + [tok for tok, _ in kept]


def codepoints(text: str) -> np.ndarray:
    """Unicode code points of ``text``: uint32 (len(text),)."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


class CharCounter:
    """Character counts over many texts, vectorised: code points are gathered into batches of ~260,000 and
    counted with one ``np.bincount`` per batch (memory: one batch)."""

    def __init__(self, batch: int = 1 << 18):
        self.counts = np.zeros(0, np.int64)  # (max code point + 1,)
        self.pending: list[np.ndarray] = []
        self.n_pending, self.batch = 0, batch

    def add(self, text: str) -> None:
        cp = codepoints(text)
        self.pending.append(cp)
        self.n_pending += len(cp)
        if self.n_pending >= self.batch:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            c = np.bincount(np.concatenate(self.pending))
            if len(c) > len(self.counts):
                self.counts = np.concatenate([self.counts, np.zeros(len(c) - len(self.counts), np.int64)])
            self.counts[: len(c)] += c
            self.pending, self.n_pending = [], 0

    def counter(self) -> Counter:
        """The counts so far: character -> count (characters that occur only)."""
        self._flush()
        return Counter({chr(int(k)): int(self.counts[k]) for k in np.flatnonzero(self.counts)})


def char_counts(texts: Iterable[str]) -> Counter:
    """Character counts over ``texts`` (see :class:`CharCounter`)."""
    counter = CharCounter()
    for t in texts:
        counter.add(t)
    return counter.counter()


def keep_length(l_max: int, eos: bool) -> int:
    """Tokens kept of each sequence: ``l_max``, or ``l_max - 1`` when ``<eos>`` is appended (the S4 reference cuts
    at ``l_max - int(append_bos) - int(append_eos)``, so a sequence with its ``<eos>`` is at most ``l_max`` long)."""
    keep = l_max - int(eos)
    if keep < 1:
        raise ValueError(f"l_max must be >= {1 + int(eos)} (with eos {eos}), got {l_max}")
    return keep


class Encoder:
    """Token sequences (list of str) or texts (str, one token per character) -> ids into ``vocab``.

    Unknown tokens -> 1 (``<unk>``); with ``eos``, ``self.eos`` is the id of ``<eos>`` (2).
    """

    def __init__(self, vocab: Sequence[str], eos: bool = False):
        self.index = {tok: i for i, tok in enumerate(vocab)}
        if eos and EOS not in self.index:
            raise ValueError("eos requested but <eos> is not in the vocabulary")
        self.eos = self.index[EOS] if eos else None
        # characters: a lookup table by code point (ids < 2**16 as uint16: one small table, fast gathers)
        chars = {ord(tok): i for tok, i in self.index.items() if i > 1 and len(tok) == 1}
        top = max(chars, default=0)
        self.lut = np.ones(top + 2, dtype=np.int64)  # (max code point + 2,); the last entry: beyond the table
        for c, i in chars.items():
            self.lut[c] = i

    def ids(self, doc: str | Sequence[str]) -> np.ndarray:
        """int64 (len(doc),): the ids of ``doc`` (without ``<eos>``: :func:`encode_into` writes it after them)."""
        if isinstance(doc, str):
            cp = codepoints(doc)
            return self.lut[np.minimum(cp, len(self.lut) - 1)]  # unknown characters -> 1
        return np.array([self.index.get(t, 1) for t in doc], dtype=np.int64)


def encode_into(
    examples: Iterable[Sequence[str | Sequence[str]]],
    n: int,
    n_docs: int,
    L: int,
    vocab: Sequence[str],
    eos: bool = False,
    what: str = "input",
) -> tuple[np.ndarray, np.ndarray]:
    """Encode ``n`` examples of ``n_docs`` documents each (already cut) straight into compact arrays.

    Returns (ids, lengths): ids in the smallest unsigned type holding ``len(vocab) - 1``, (n, L) for one
    document or (n, n_docs, L), padded with 0; lengths (n,) or (n, n_docs) in the smallest type holding L.
    Memory: the output plus one document; no int64 copy of the split. ``examples`` yielding a different count
    than ``n`` or a document longer than L (e.g. the file changed between two passes) is a ValueError.
    """
    ids = compact_zeros((n, n_docs, L), len(vocab) - 1)  # (n, n_docs, L)
    lengths = compact_zeros((n, n_docs), L)
    enc = Encoder(vocab, eos)
    i = -1
    for i, docs in enumerate(examples):
        if i >= n:
            raise ValueError(f"{what}: more than the {n} examples counted in the first pass (changed meanwhile?)")
        for j, doc in enumerate(docs):
            x = enc.ids(doc)
            k = len(x) + int(eos)
            if k > L:
                raise ValueError(f"{what}: example {i} has {k} tokens, more than L={L}")
            ids[i, j, : len(x)] = x
            if eos:
                ids[i, j, len(x)] = enc.eos
            lengths[i, j] = k
    if i + 1 != n:
        raise ValueError(f"{what}: {i + 1} examples, but {n} were counted in the first pass (changed meanwhile?)")
    if n_docs == 1:
        return ids[:, 0], lengths[:, 0]
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


def stratified_split(
    labels: np.ndarray, sizes: dict[str, int], seed: int, rest: str = "train"
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
            out[name].append(pools[c][taken[c] : taken[c] + k])
            taken[c] += k
    for c in pools:
        out[rest].append(pools[c][taken[c] :])
    return {name: np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64) for name, parts in out.items()}


def random_split(n: int, lengths: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """The split of the S4 reference: ``torch.utils.data.random_split(range(n), lengths.values(),
    generator=torch.Generator().manual_seed(seed))`` -- one ``torch.randperm(n)`` cut into consecutive pieces in
    the order of ``lengths`` (name -> count, summing to n). Unstratified. Returns name -> int64 indices, in the
    permutation's order (the order of the reference's Subset).
    """
    import torch

    if any(v < 0 for v in lengths.values()) or sum(lengths.values()) != n:
        raise ValueError(f"split sizes {lengths} do not add up to {n} examples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()  # int64 (n,)
    out, start = {}, 0
    for name, k in lengths.items():
        out[name] = perm[start : start + k].astype(np.int64)
        start += k
    return out


def take(split: Split, idx: np.ndarray) -> Split:
    """The examples ``idx`` of ``split``."""
    return Split(inputs=split.inputs[idx], lengths=split.lengths[idx], labels=split.labels[idx])


def split_stats(splits: dict[str, Split], d_output: int) -> dict:
    """Meta fields common to every task: label counts per split and the majority baseline."""
    return {
        "label_counts": {k: label_counts(s.labels, d_output) for k, s in splits.items()},
        "majority_baseline": majority_baseline(splits["train"].labels, splits["test"].labels, d_output),
    }
