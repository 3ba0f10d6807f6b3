"""ListOps: the reader on hand-made files in the official format (ids worked out by hand), malformed files, and
the embedded generator (determinism, balance, values checked by an independent evaluator)."""

from pathlib import Path

import numpy as np
import pytest

from dssbt.data.common import DataError
from dssbt.data.generate import ListOpsConfig, generate_listops
from dssbt.data.listops import prepare_listops, tokenize
from dssbt.data.prepare import prepare_task
from dssbt.data.prepared import load_meta, load_split

HEADER = "Source\tTarget\n"
TRAIN = HEADER + "( ( ( [MAX 2 ) 9 ) ] )\t9\n( ( ( ( [MIN 4 ) ( ( ( [SM 3 ) 5 ) ] ) ) 1 ) ] )\t1\n"
VAL = HEADER + "( ( ( [MED 7 ) 0 ) ] )\t3\n"
TEST = HEADER + "( ( ( [SM 9 ) 9 ) ] )\t8\n"

# train tokens: [MAX 2 9 X | [MIN 4 [SM 3 5 X 1 X  -> X three times, the rest once (ties by string order, and
# '[' sorts after the digits): <pad> <unk> X 1 2 3 4 5 9 [MAX [MIN [SM
VOCAB = ["<pad>", "<unk>", "X", "1", "2", "3", "4", "5", "9", "[MAX", "[MIN", "[SM"]


def write_listops(folder: Path, train=TRAIN, val=VAL, test=TEST) -> Path:
    """The three official files, nested as in the LRA release (lra_release/listops-1000/)."""
    d = folder / "lra_release" / "listops-1000"
    d.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("val", val), ("test", test)):
        (d / f"basic_{name}.tsv").write_text(text)
    return folder


def check_listops_prepared(splits, meta):
    """The hand-computed expectation for TRAIN/VAL/TEST above (used by the CLI tests too)."""
    assert meta["vocab"] == VOCAB and meta["d_input"] == 12 and meta["d_output"] == 10
    assert meta["encoder"] == "embedding" and meta["dual"] is False and meta["l_max"] == 8
    np.testing.assert_array_equal(splits["train"].inputs, [[9, 4, 8, 2, 0, 0, 0, 0], [10, 6, 11, 5, 7, 2, 3, 2]])
    np.testing.assert_array_equal(splits["train"].lengths, [4, 8])
    np.testing.assert_array_equal(splits["train"].labels, [9, 1])
    np.testing.assert_array_equal(splits["val"].inputs, [[1, 1, 1, 2, 0, 0, 0, 0]])  # MED, 7, 0 unseen in train
    np.testing.assert_array_equal(splits["val"].labels, [3])
    np.testing.assert_array_equal(splits["test"].inputs, [[11, 8, 8, 2, 0, 0, 0, 0]])
    np.testing.assert_array_equal(splits["test"].lengths, [4])
    np.testing.assert_array_equal(splits["test"].labels, [8])
    assert np.issubdtype(splits["train"].inputs.dtype, np.integer)
    # train labels 9 and 1 tie -> the smaller, 1; the test label is 8
    assert meta["majority_baseline"] == 0.0


# The S4 reference (ListOps: append_eos True): tokens cut at l_max - 1, then <eos>; torchtext's vocabulary with
# specials ["<pad>", "<unk>", "<eos>"] first, then the train tokens by decreasing count, ties by string.
VOCAB_EOS = ["<pad>", "<unk>", "<eos>", "X", "1", "2", "3", "4", "5", "9", "[MAX", "[MIN", "[SM"]


def check_listops_eos_prepared(splits, meta):
    """Hand expectation of the reference's reading of TRAIN/VAL/TEST (l_max 2048: nothing is cut)."""
    assert meta["vocab"] == VOCAB_EOS and meta["d_input"] == 13  # the model's vocabulary counts <eos>
    assert meta["l_max"] == 9 and meta["preprocessing"]["bos_eos"] == "eos"
    # [MAX 2 9 X <eos> | [MIN 4 [SM 3 5 X 1 X <eos>
    np.testing.assert_array_equal(splits["train"].inputs, [[10, 5, 9, 3, 2, 0, 0, 0, 0], [11, 7, 12, 6, 8, 3, 4, 3, 2]])
    np.testing.assert_array_equal(splits["train"].lengths, [5, 9])  # <eos> counted
    np.testing.assert_array_equal(splits["val"].inputs, [[1, 1, 1, 3, 2, 0, 0, 0, 0]])
    np.testing.assert_array_equal(splits["val"].lengths, [5])
    np.testing.assert_array_equal(splits["test"].inputs, [[12, 9, 9, 3, 2, 0, 0, 0, 0]])
    assert [splits[s].labels.tolist() for s in ("train", "val", "test")] == [[9, 1], [3], [8]]


def test_reference_eos_ids_lengths_by_hand(tmp_path):
    splits, meta = prepare_listops(write_listops(tmp_path), eos=True)
    check_listops_eos_prepared(splits, meta)
    assert splits["train"].inputs.dtype == np.uint8 and splits["train"].lengths.dtype == np.uint8  # compact


def test_reference_cut_is_l_max_minus_one_before_the_vocabulary(tmp_path):
    splits, meta = prepare_listops(write_listops(tmp_path), l_max=4, eos=True)
    # 3 tokens kept: [MAX 2 9 | [MIN 4 [SM, once each -> by string: 2 4 9 [MAX [MIN [SM after the specials
    assert meta["vocab"] == ["<pad>", "<unk>", "<eos>", "2", "4", "9", "[MAX", "[MIN", "[SM"]
    assert meta["l_max"] == 4 and meta["preprocessing"]["cut"] == 3
    np.testing.assert_array_equal(splits["train"].inputs, [[6, 3, 5, 2], [7, 4, 8, 2]])
    np.testing.assert_array_equal(splits["train"].lengths, [4, 4])
    np.testing.assert_array_equal(splits["test"].inputs, [[8, 5, 5, 2]])  # [SM 9 9 <eos>
    with pytest.raises(ValueError, match="l_max must be >= 2"):
        prepare_listops(tmp_path, l_max=1, eos=True)


def test_tokenizer_maps_bracket_to_x_and_drops_parentheses():
    assert tokenize("( ( ( [MAX 2 ) 9 ) ] )") == ["[MAX", "2", "9", "X"]
    assert tokenize("( [SM 1 ( [MIN 4 ] ) ] )") == ["[SM", "1", "[MIN", "4", "X", "X"]


def test_reader_ids_lengths_labels_by_hand(tmp_path):
    splits, meta = prepare_listops(write_listops(tmp_path))
    check_listops_prepared(splits, meta)
    assert splits["train"].inputs.dtype == np.uint8  # built compact, no int64 copy
    assert meta["preprocessing"]["bos_eos"] is False


def test_cut_at_l_max(tmp_path):
    splits, meta = prepare_listops(write_listops(tmp_path), l_max=3)
    # the vocabulary comes from the cut train tokens ([MAX 2 9 | [MIN 4 [SM, once each, by string order):
    assert meta["vocab"] == ["<pad>", "<unk>", "2", "4", "9", "[MAX", "[MIN", "[SM"]
    assert meta["l_max"] == 3
    np.testing.assert_array_equal(splits["train"].inputs, [[5, 2, 4], [6, 3, 7]])
    np.testing.assert_array_equal(splits["train"].lengths, [3, 3])


@pytest.mark.parametrize(
    "bad, line, message",
    [
        ("Src\tTarget\n( [MAX 2 ] )\t2\n", 1, "header"),
        (HEADER + "( ( [MAX 2 ) ] )\t2\n( ( [MAX 2 ) ] )\t2\textra\n", 3, "expected 2 tab-separated columns"),
        (HEADER + "( ( [MAX 2 ) ] )\n", 2, "got 1"),
        (HEADER + "( ( [MAX 2 ) ] )\t2\n( ( [MAX 2 ) ] )\ttwo\n", 3, "'two' is not an integer"),
        (HEADER + "( ( [MAX 2 ) ] )\t2.0\n", 2, "is not an integer"),
        (HEADER + "( ( [MAX 2 ) ] )\t10\n", 2, "outside 0..9"),
    ],
)
def test_malformed_file_names_file_and_line_and_writes_nothing(tmp_path, bad, line, message):
    root = write_listops(tmp_path / "in", train=bad)
    out = tmp_path / "prepared"
    with pytest.raises(DataError, match=message) as e:
        prepare_task("listops", "lra", root, out, log=None)
    assert f"basic_train.tsv:{line}:" in str(e.value)
    assert not out.exists() or not any(out.iterdir())


def test_invalid_utf8_is_reported_with_line(tmp_path):
    root = write_listops(tmp_path)
    p = root / "lra_release" / "listops-1000" / "basic_test.tsv"
    p.write_bytes(HEADER.encode() + b"( ( [MAX 2 ) ] )\t2\n( ( [MAX \xff ) ] )\t2\n")
    with pytest.raises(DataError, match=r"basic_test.tsv:3: not valid UTF-8"):
        prepare_listops(root)


def test_missing_file_is_named(tmp_path):
    root = write_listops(tmp_path)
    (root / "lra_release" / "listops-1000" / "basic_val.tsv").unlink()
    with pytest.raises(ValueError, match="basic_val.tsv"):
        prepare_listops(root)


# ----------------------------------------------------------------------------------------------- the generator


def independent_value(source: str) -> tuple[int, int]:
    """Evaluate an expression in the official text form with a stack (own code, not the generator's);
    returns (value, number of tokens after the LRA tokenizer)."""
    stack: list[list] = []
    n_tokens = 0
    value = None
    for tok in source.split():
        if tok in "()":
            continue
        n_tokens += 1
        if tok.startswith("["):
            stack.append([tok[1:]])
        elif tok == "]":
            op, *args = stack.pop()
            v = {"MIN": min(args), "MAX": max(args), "MED": int(np.median(args)), "SM": sum(args) % 10}[op]
            if stack:
                stack[-1].append(v)
            else:
                value = v
        else:
            stack[-1].append(int(tok))
    assert not stack and value is not None
    return value, n_tokens


def read_rows(path: Path) -> list[tuple[str, int]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "Source\tTarget"
    return [(s, int(t)) for s, t in (ln.split("\t") for ln in lines[1:])]


def test_generator_writes_official_format_with_correct_balanced_values(tmp_path):
    cfg = ListOpsConfig(max_depth=4, max_args=4, p_op=0.4, min_length=8, max_length=60)
    generate_listops(tmp_path / "g", n_train=103, n_val=20, n_test=30, seed=3, config=cfg)
    seen = set()
    for split, n in (("train", 103), ("val", 20), ("test", 30)):
        rows = read_rows(tmp_path / "g" / f"basic_{split}.tsv")
        assert len(rows) == n
        counts = np.bincount([y for _, y in rows], minlength=10)
        assert counts.max() - counts.min() <= 1  # balanced
        for src, y in rows:
            value, n_tokens = independent_value(src)
            assert value == y
            assert 8 <= n_tokens <= 60
            assert src not in seen
            seen.add(src)
        ops = {tok for src, _ in rows for tok in src.split() if tok.startswith("[")}
        assert ops <= {"[MIN", "[MAX", "[MED", "[SM"}
    assert ops == {"[MIN", "[MAX", "[MED", "[SM"}


def test_generator_is_deterministic(tmp_path):
    cfg = ListOpsConfig(max_depth=4, max_args=4, p_op=0.4, min_length=8, max_length=60)
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate_listops(tmp_path / name, n_train=50, n_val=10, n_test=10, seed=seed, config=cfg)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["basic_test.tsv", "basic_train.tsv", "basic_val.tsv", "generator.json"]
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert (tmp_path / "a" / "basic_train.tsv").read_bytes() != (tmp_path / "c" / "basic_train.tsv").read_bytes()


def test_generated_data_goes_through_the_real_reader(tmp_path):
    cfg = ListOpsConfig(max_depth=4, max_args=4, p_op=0.4, min_length=8, max_length=60)
    generate_listops(tmp_path / "g", n_train=40, n_val=10, n_test=10, seed=0, config=cfg)
    meta = prepare_task("listops", "embedded", tmp_path / "g", tmp_path / "p", log=None)
    assert meta["generator"]["params"]["max_length"] == 60 and meta["source"] == "embedded"
    on_disk = load_meta(tmp_path / "p")
    assert on_disk["sizes"] == {"train": 40, "val": 10, "test": 10}
    train = load_split(tmp_path / "p", "train").decoded()
    rows = read_rows(tmp_path / "g" / "basic_train.tsv")
    vocab = on_disk["vocab"]
    for (src, y), ids, n, label in zip(rows, train.inputs, train.lengths, train.labels):
        toks = [vocab[i] for i in ids[:n]]
        assert toks == src.replace("]", "X").replace("(", "").replace(")", "").split()
        assert label == y and (ids[n:] == 0).all()


def test_generator_rejects_impossible_settings(tmp_path):
    with pytest.raises(ValueError, match="min_length"):
        generate_listops(tmp_path / "g", config=ListOpsConfig(min_length=100, max_length=50))
    with pytest.raises(ValueError, match="could not fill"):  # depth 1, 2 args: always 4 tokens, never 5
        generate_listops(
            tmp_path / "g",
            n_train=10,
            n_val=1,
            n_test=1,
            config=ListOpsConfig(max_depth=1, max_args=2, min_length=5, max_length=5),
        )
    assert not (tmp_path / "g").exists()
