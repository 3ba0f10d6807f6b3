"""Text (aclImdb characters): the reader on a tiny aclImdb tree, ids worked out by hand."""

from pathlib import Path

import numpy as np
import pytest

from dssbt.data.common import DataError
from dssbt.data.prepare import prepare_task
from dssbt.data.text import prepare_text

REVIEWS = {  # split/class/file -> text
    "train/neg/0_2.txt": "abc!",
    "train/pos/0_9.txt": "aab",
    "test/neg/0_1.txt": "zz",
    "test/pos/0_8.txt": "bad",
}


def write_imdb(folder: Path, reviews=REVIEWS) -> Path:
    base = folder / "aclImdb"
    for rel, text in reviews.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    (base / "train" / "unsup").mkdir(exist_ok=True)  # present in the real archive, never read
    (base / "train" / "unsup" / "0_0.txt").write_text("unlabelled")
    return folder


def check_text_prepared(splits, meta):
    """Hand expectation for REVIEWS with min_count=2: train counts a 3, b 2, c 1, ! 1 -> vocab <pad> <unk> a b."""
    assert meta["vocab"] == ["<pad>", "<unk>", "a", "b"] and meta["d_input"] == 4 and meta["d_output"] == 2
    assert meta["l_max"] == 4 and meta["encoder"] == "embedding" and meta["dual"] is False
    # neg is read before pos
    np.testing.assert_array_equal(splits["train"].inputs, [[2, 3, 1, 1], [2, 2, 3, 0]])
    np.testing.assert_array_equal(splits["train"].lengths, [4, 3])
    np.testing.assert_array_equal(splits["train"].labels, [0, 1])
    np.testing.assert_array_equal(splits["test"].inputs, [[1, 1, 0, 0], [3, 2, 1, 0]])
    np.testing.assert_array_equal(splits["test"].lengths, [2, 3])
    np.testing.assert_array_equal(splits["test"].labels, [0, 1])
    for f in ("inputs", "lengths", "labels"):  # validation = test, as in LRA
        np.testing.assert_array_equal(getattr(splits["val"], f), getattr(splits["test"], f))


def test_reader_by_hand(tmp_path):
    splits, meta = prepare_text(write_imdb(tmp_path), min_count=2)
    check_text_prepared(splits, meta)
    assert splits["train"].inputs.dtype == np.uint8  # built compact, no int64 copy


def check_text_eos_prepared(splits, meta):
    """The S4 reference (IMDB, append_eos), min_count 2: <pad> <unk> <eos> a b; every review ends in <eos> 2."""
    assert meta["vocab"] == ["<pad>", "<unk>", "<eos>", "a", "b"] and meta["d_input"] == 5
    assert meta["l_max"] == 5
    np.testing.assert_array_equal(splits["train"].inputs, [[3, 4, 1, 1, 2], [3, 3, 4, 2, 0]])  # abc! | aab
    np.testing.assert_array_equal(splits["train"].lengths, [5, 4])
    np.testing.assert_array_equal(splits["test"].inputs, [[1, 1, 2, 0, 0], [4, 3, 1, 2, 0]])  # zz | bad
    np.testing.assert_array_equal(splits["test"].lengths, [3, 4])
    np.testing.assert_array_equal(splits["val"].inputs, splits["test"].inputs)


def test_reference_eos_by_hand(tmp_path):
    splits, meta = prepare_text(write_imdb(tmp_path), min_count=2, eos=True)
    check_text_eos_prepared(splits, meta)


def test_reference_cut_at_l_max_minus_one_before_the_vocabulary(tmp_path):
    splits, meta = prepare_text(write_imdb(tmp_path), l_max=3, min_count=2, eos=True)
    # kept "ab", "aa": a 3, b 1 -> only a survives min_count 2
    assert meta["vocab"] == ["<pad>", "<unk>", "<eos>", "a"] and meta["l_max"] == 3
    np.testing.assert_array_equal(splits["train"].inputs, [[3, 1, 2], [3, 3, 2]])
    np.testing.assert_array_equal(splits["test"].inputs, [[1, 1, 2], [1, 3, 2]])  # "zz", "ba"


def test_min_count_one_orders_ties_by_character(tmp_path):
    splits, meta = prepare_text(write_imdb(tmp_path), min_count=1)
    assert meta["vocab"] == ["<pad>", "<unk>", "a", "b", "!", "c"]  # a 3, b 2, then '!' < 'c'
    np.testing.assert_array_equal(splits["train"].inputs[0], [2, 3, 5, 4])


def test_cut_applies_before_the_vocabulary(tmp_path):
    splits, meta = prepare_text(write_imdb(tmp_path), l_max=2, min_count=2)
    # cut train texts "ab", "aa": a 3, b 1 -> only a survives min_count 2
    assert meta["vocab"] == ["<pad>", "<unk>", "a"] and meta["l_max"] == 2
    np.testing.assert_array_equal(splits["train"].inputs, [[2, 1], [2, 2]])
    np.testing.assert_array_equal(splits["test"].inputs, [[1, 1], [1, 2]])


def test_non_ascii_characters_are_tokens(tmp_path):
    reviews = dict(REVIEWS, **{"train/pos/0_9.txt": "ééa", "test/pos/0_8.txt": "é€"})
    splits, meta = prepare_text(write_imdb(tmp_path, reviews), min_count=2)
    assert meta["vocab"] == ["<pad>", "<unk>", "a", "é"]  # a 2, é 2 (b, c, ! once)
    np.testing.assert_array_equal(splits["test"].inputs[1], [3, 1, 0, 0])


def test_seeded_validation_split_of_train(tmp_path):
    reviews = {f"train/{c}/{i}_1.txt": f"{c}{i}" for c in ("neg", "pos") for i in range(4)}
    reviews.update({"test/neg/0_1.txt": "x", "test/pos/0_9.txt": "y"})
    root = write_imdb(tmp_path, reviews)
    a, meta = prepare_text(root, min_count=1, val_fraction=0.25, seed=1)
    b, _ = prepare_text(root, min_count=1, val_fraction=0.25, seed=1)
    assert len(a["train"]) == 6 and len(a["val"]) == 2 and len(a["test"]) == 2
    np.testing.assert_array_equal(np.sort(a["val"].labels), [0, 1])  # one per class
    np.testing.assert_array_equal(a["val"].inputs, b["val"].inputs)  # same seed, same split
    vocab = meta["vocab"]

    def decode(split):
        return {"".join(vocab[i] for i in row[:n]) for row, n in zip(split.inputs, split.lengths)}

    assert decode(a["train"]) | decode(a["val"]) == {f"{c}{i}" for c in ("neg", "pos") for i in range(4)}
    assert not decode(a["train"]) & decode(a["val"])


def test_undecodable_review_names_file_and_line(tmp_path):
    root = write_imdb(tmp_path, dict(REVIEWS, **{"test/pos/0_8.txt": b"fine\nbroken \xc3("}))
    with pytest.raises(DataError, match=r"0_8\.txt:2: not valid UTF-8") as e:
        prepare_task("text", "lra", root, tmp_path / "out", log=None)
    assert "test/pos/0_8.txt" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_missing_class_folder(tmp_path):
    root = write_imdb(tmp_path, {k: v for k, v in REVIEWS.items() if not k.startswith("test/pos")})
    with pytest.raises(ValueError, match=r"test/pos: missing"):
        prepare_text(root)


def test_fast_character_counting_and_encoding_equal_plain_python():
    """CharCounter (batched bincount) against collections.Counter, and Encoder's code-point table against a dict
    lookup, on random text with non-ASCII and non-BMP characters, across batch boundaries."""
    from collections import Counter

    from dssbt.data.common import CharCounter, Encoder, sorted_vocab

    rng = np.random.default_rng(5)
    alphabet = list("abc xyz!") + ["é", "€", "\u4e2d", "\U0001f600", "\t"]
    texts = ["".join(rng.choice(alphabet, int(rng.integers(0, 40)))) for _ in range(60)]
    fast = CharCounter(batch=7)
    for t in texts:
        fast.add(t)
    slow = Counter(ch for t in texts for ch in t)
    assert fast.counter() == slow
    vocab = sorted_vocab(Counter(ch for t in texts[:30] for ch in t), min_count=3, eos=True)
    index = {tok: i for i, tok in enumerate(vocab)}
    enc = Encoder(vocab, eos=True)
    for t in texts:
        assert enc.ids(t).tolist() == [index.get(ch, 1) for ch in t]
    assert enc.eos == 2 == index["<eos>"]
