"""Retrieval (AAN pairs): the reader on five-column TSV files, ids worked out by hand; malformed rows."""

from pathlib import Path

import numpy as np
import pytest

from dssbt.data.common import DataError
from dssbt.data.prepare import prepare_task
from dssbt.data.retrieval import prepare_retrieval

TRAIN = "1.0\taan/1\taan/2\tab\tba\n0.0\taan/3\taan/4\tcc\ta\n"
EVAL = "1.0\tx\ty\tab\td\n"
TEST = "0\tp\tq\tc\tab\n"


def write_aan(folder: Path, train=TRAIN, eval=EVAL, test=TEST) -> Path:
    d = folder / "lra_release" / "tsv_data"
    d.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("eval", eval), ("test", test)):
        (d / f"new_aan_pairs.{name}.tsv").write_text(text)
    return folder


def check_retrieval_prepared(splits, meta):
    """Train characters of both documents: a 3, b 2, c 2 -> <pad> <unk> a b c (b, c tie: by character)."""
    assert meta["vocab"] == ["<pad>", "<unk>", "a", "b", "c"] and meta["d_input"] == 5
    assert meta["dual"] is True and meta["l_max"] == 2 and meta["d_output"] == 2
    np.testing.assert_array_equal(splits["train"].inputs, [[[2, 3], [3, 2]], [[4, 4], [2, 0]]])
    np.testing.assert_array_equal(splits["train"].lengths, [[2, 2], [2, 1]])
    np.testing.assert_array_equal(splits["train"].labels, [1, 0])
    np.testing.assert_array_equal(splits["val"].inputs, [[[2, 3], [1, 0]]])  # 'd' unseen in train
    np.testing.assert_array_equal(splits["val"].lengths, [[2, 1]])
    np.testing.assert_array_equal(splits["test"].inputs, [[[4, 0], [2, 3]]])
    np.testing.assert_array_equal(splits["test"].labels, [0])
    assert splits["train"].inputs.shape == (2, 2, 2) and np.issubdtype(splits["train"].inputs.dtype, np.integer)


def check_retrieval_eos_prepared(splits, meta):
    """The S4 reference (AAN, append_eos): <pad> <unk> <eos> then a 3, b 2, c 2; every document ends in <eos> 2."""
    assert meta["vocab"] == ["<pad>", "<unk>", "<eos>", "a", "b", "c"] and meta["d_input"] == 6
    assert meta["l_max"] == 3 and meta["dual"] is True
    np.testing.assert_array_equal(splits["train"].inputs, [[[3, 4, 2], [4, 3, 2]], [[5, 5, 2], [3, 2, 0]]])
    np.testing.assert_array_equal(splits["train"].lengths, [[3, 3], [3, 2]])
    np.testing.assert_array_equal(splits["val"].inputs, [[[3, 4, 2], [1, 2, 0]]])
    np.testing.assert_array_equal(splits["val"].lengths, [[3, 2]])
    np.testing.assert_array_equal(splits["test"].inputs, [[[5, 2, 0], [3, 4, 2]]])
    np.testing.assert_array_equal(splits["test"].lengths, [[2, 3]])
    np.testing.assert_array_equal(splits["train"].labels, [1, 0])


def test_reader_by_hand(tmp_path):
    splits, meta = prepare_retrieval(write_aan(tmp_path))
    check_retrieval_prepared(splits, meta)
    assert splits["train"].inputs.dtype == np.uint8  # built compact, no int64 copy


def test_reference_eos_by_hand(tmp_path):
    splits, meta = prepare_retrieval(write_aan(tmp_path), eos=True)
    check_retrieval_eos_prepared(splits, meta)
    assert splits["train"].inputs.dtype == np.uint8 and splits["train"].lengths.dtype == np.uint8


def test_reference_cut_at_l_max_minus_one(tmp_path):
    splits, meta = prepare_retrieval(write_aan(tmp_path, train="1.0\ta\tb\tabcabc\tcba\n"), l_max=4, eos=True)
    # kept "abc", "cba": a 2, b 2, c 2 -> by character
    assert meta["vocab"] == ["<pad>", "<unk>", "<eos>", "a", "b", "c"] and meta["l_max"] == 4
    np.testing.assert_array_equal(splits["train"].inputs, [[[3, 4, 5, 2], [5, 4, 3, 2]]])
    np.testing.assert_array_equal(splits["train"].lengths, [[4, 4]])


def test_each_document_is_cut_to_l_max(tmp_path):
    splits, meta = prepare_retrieval(write_aan(tmp_path, train="1.0\ta\tb\tabcabc\tcba\n"), l_max=4)
    # cut train documents "abca", "cba": a 3, b 2, c 2
    assert meta["vocab"] == ["<pad>", "<unk>", "a", "b", "c"] and meta["l_max"] == 4
    np.testing.assert_array_equal(splits["train"].inputs, [[[2, 3, 4, 2], [4, 3, 2, 0]]])
    np.testing.assert_array_equal(splits["train"].lengths, [[4, 3]])


def test_quotes_are_text_not_csv_quoting(tmp_path):
    splits, meta = prepare_retrieval(write_aan(tmp_path, train='1.0\ta\tb\t"a\tb"\n'))
    assert meta["vocab"] == ["<pad>", "<unk>", '"', "a", "b"]
    np.testing.assert_array_equal(splits["train"].inputs, [[[2, 3], [4, 2]]])


@pytest.mark.parametrize(
    "row, message",
    [
        ("1.0\tx\ty\tab", "expected 5 tab-separated columns .* got 4"),
        ("1.0\tx\ty\tab\tba\textra", "got 6"),
        ("one\tx\ty\tab\tba", "label 'one' is not a number"),
        ("0.5\tx\ty\tab\tba", "label '0.5' is not 0 or 1"),
        ("2.0\tx\ty\tab\tba", "label '2.0' is not 0 or 1"),
        ("nan\tx\ty\tab\tba", "label 'nan' is not 0 or 1"),
    ],
)
def test_malformed_row_names_file_and_line_and_writes_nothing(tmp_path, row, message):
    root = write_aan(tmp_path / "in", eval=EVAL + row + "\n")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=message) as e:
        prepare_task("retrieval", "lra", root, out, log=None)
    assert "new_aan_pairs.eval.tsv:2:" in str(e.value)
    assert not out.exists()
