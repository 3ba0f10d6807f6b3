"""The compact storage of prepared splits: lossless, smaller, and readable in the old int64 / float32 form."""

import numpy as np
import pytest
import torch

from dssbt.batches import batches
from dssbt.data.prepared import Split, _pixel_codes, code_table, load_split, pixel_codes_inplace, save_prepared


def roundtrip(tmp_path, split: Split) -> Split:
    save_prepared(tmp_path, {"train": split, "val": split, "test": split}, {"task": "t"})
    return load_split(tmp_path, "train")


def test_token_ids_are_stored_in_the_smallest_unsigned_type_and_decode_exactly(tmp_path):
    rng = np.random.default_rng(0)
    for top, dtype in ((255, np.uint8), (256, np.uint16), (70_000, np.uint32)):
        ids = rng.integers(0, top + 1, (7, 2, 30)).astype(np.int64)
        ids[0, 0, 0] = top
        stored = roundtrip(tmp_path, Split(ids, rng.integers(1, 31, (7, 2)), rng.integers(0, 3, 7)))
        assert stored.inputs.dtype == dtype and stored.table is None
        x = stored.batch_inputs(np.arange(7))
        assert x.dtype == np.int64 and np.array_equal(x, ids)
        assert stored.lengths.dtype == np.int64 and stored.labels.dtype == np.int64


def test_8bit_pixels_become_codes_with_a_table_and_decode_bit_for_bit(tmp_path):
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (200, 1024)).astype(np.uint8)
    x = ((raw.astype(np.float64) / 255.0 - 0.47) / 0.25).astype(np.float32)  # as the image readers normalise
    stored = roundtrip(tmp_path, Split(x, np.full(200, 1024), rng.integers(0, 10, 200)))
    assert stored.inputs.dtype == np.uint8 and stored.table.shape == (256,)
    decoded = stored.batch_inputs(np.arange(200))
    assert decoded.dtype == np.float32 and np.array_equal(decoded.view(np.uint32), x.view(np.uint32))
    assert (tmp_path / "train.npz").stat().st_size < x.nbytes / 3


def test_values_first_seen_in_a_later_chunk_keep_earlier_codes_valid():
    x = np.array([[3.0, 1.0], [1.0, 3.0], [0.5, 2.0], [-7.0, 3.0], [2.0, 0.5]], np.float32)
    codes, table = _pixel_codes(x, rows=2)  # new values appear in the second and third chunks
    assert np.array_equal(table[codes], x)
    wide = np.arange(300, dtype=np.float32).reshape(3, 100)
    assert _pixel_codes(wide, rows=1) is None


@pytest.mark.parametrize("rows, block", [(4096, 64), (3, 2), (5, 1), (7, 16)])
def test_uint8_codes_in_place_equal_the_float32_route(rows, block):
    """pixel_codes_inplace on uint8 pixels (the readers' fast path) against _pixel_codes on the normalised float32
    array (the route it replaces): same codes, same table, bit for bit, across chunk and block boundaries."""
    rng = np.random.default_rng(4)
    raw = rng.integers(0, 40, (23, 50)).astype(np.uint8)
    raw[9, 3], raw[17, 0], raw[22, 49] = 200, 255, 0  # values first met in later chunks
    f = lambda v: ((v.astype(np.float64) / 255.0 - 0.3) / 0.2).astype(np.float32)  # noqa: E731
    codes, table = _pixel_codes(f(raw), rows=rows)
    mine = raw.copy()
    values = pixel_codes_inplace(mine, rows=rows, block=block)
    assert mine.dtype == np.uint8 and np.array_equal(mine, codes)
    assert np.array_equal(code_table(values, f).view(np.uint32), table.view(np.uint32))
    with pytest.raises(ValueError, match="needs uint8"):
        pixel_codes_inplace(raw.astype(np.int64))


def test_continuous_inputs_are_kept_as_they_are(tmp_path):
    x = np.random.default_rng(2).normal(size=(5, 100)).astype(np.float32)
    stored = roundtrip(tmp_path, Split(x, np.full(5, 100), np.zeros(5, np.int64)))
    assert stored.table is None and stored.inputs.dtype == np.float32 and np.array_equal(stored.inputs, x)


def test_files_in_the_old_int64_float32_form_still_load(tmp_path):
    ids = np.array([[2, 3, 0], [4, 1, 5]], np.int64)
    with open(tmp_path / "train.npz", "wb") as fh:
        np.savez(fh, inputs=ids, lengths=np.array([2, 3], np.int64), labels=np.array([0, 1], np.int64))
    old = load_split(tmp_path, "train")
    assert old.table is None and np.array_equal(old.decoded().inputs, ids)


@pytest.mark.parametrize("kind", ["tokens", "pixels"])
def test_training_batches_are_those_of_the_uncompressed_split(tmp_path, kind):
    rng = np.random.default_rng(3)
    if kind == "tokens":
        x = rng.integers(0, 40, (11, 25)).astype(np.int64)
    else:
        x = (rng.integers(0, 256, (11, 25)) / 255.0 - 0.5).astype(np.float32)
    split = Split(x, rng.integers(5, 26, 11), rng.integers(0, 4, 11))
    stored = roundtrip(tmp_path, split)
    index = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    for (a, la, ya), (b, lb, yb) in zip(
        batches(split, index, 4, torch.device("cpu")), batches(stored, index, 4, torch.device("cpu"))
    ):
        assert a.dtype == b.dtype and torch.equal(a, b) and torch.equal(la, lb) and torch.equal(ya, yb)


# ----- prepared data checked when loaded (data.prepared.check_split) ------------------------------------------------


def token_task(folder, n: int = 24, L: int = 16, d_output: int = 10) -> None:
    """A small valid prepared token task: ids in [2, 12), labels in [0, d_output), lengths in [1, L]."""
    rng = np.random.default_rng(0)
    splits = {
        s: Split(rng.integers(2, 12, (n, L)), rng.integers(1, L + 1, n), np.arange(n) % d_output)
        for s in ("train", "val", "test")
    }
    meta = {"task": "toy", "encoder": "embedding", "d_input": 12, "d_output": d_output, "l_max": L, "dual": False}
    save_prepared(folder, splits, meta)


def rewrite(path, **arrays) -> None:
    """Replace some arrays of a prepared .npz file (the others kept as stored)."""
    with np.load(path) as z:
        stored = {k: z[k] for k in z.files}
    with open(path, "wb") as fh:
        np.savez(fh, **(stored | arrays))


def corrupt(path, kind: str) -> None:
    with np.load(path) as z:
        inputs, lengths, labels = z["inputs"], z["lengths"], z["labels"]
    if kind == "label":
        labels = labels.copy()
        labels[5] = 99
        rewrite(path, labels=labels)
    elif kind == "long":  # a sequence of 20 positions in a task of l_max 16
        wide = np.zeros((len(inputs), 20), inputs.dtype)
        wide[:, :16] = inputs
        wide[3, 16:] = 7
        lengths = lengths.astype(np.uint8)
        lengths[3] = 20
        rewrite(path, inputs=wide, lengths=lengths)
    elif kind == "id":
        inputs = inputs.copy()
        inputs[2, 0] = 40
        rewrite(path, inputs=inputs)
    elif kind == "float_labels":
        rewrite(path, labels=labels.astype(np.float32) + 0.5)
    elif kind == "shape":
        rewrite(path, lengths=lengths[:-1])


@pytest.mark.parametrize(
    "kind, message",
    [
        ("label", "labels: 99 at example 5, outside [0, 10)"),
        ("long", "lengths: 20 at example 3, outside [0, 16] (meta.json l_max)"),
        ("id", "inputs: token id 40 at example 2, outside [0, 12)"),
        ("float_labels", "labels: dtype float32, expected integers"),
        ("shape", "lengths: shape (23,), expected (24,)"),
    ],
)
def test_a_bad_prepared_file_is_refused_with_file_key_and_value(tmp_path, kind, message):
    from dssbt.data.prepared import PreparedDataError
    from dssbt.train import load_task

    token_task(tmp_path)
    corrupt(tmp_path / "val.npz", kind)
    load_split(tmp_path, "train")  # the others still load
    with pytest.raises(PreparedDataError) as e:
        load_task(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'val.npz'}: {message}"), str(e.value)


def test_the_model_l_max_bounds_the_lengths_too(tmp_path):
    from dssbt.data.prepared import PreparedDataError
    from dssbt.train import load_task

    token_task(tmp_path)
    load_task(tmp_path, l_max=16)
    with pytest.raises(PreparedDataError, match=r"train.npz: (lengths|inputs): .*the model's l_max"):
        load_task(tmp_path, l_max=8)


@pytest.mark.parametrize("kind, key, value", [("label", "labels", "99"), ("long", "lengths", "20")])
def test_dssbt_train_refuses_a_bad_file_naming_it_and_writes_nothing(tmp_path, kind, key, value):
    import os
    import subprocess
    import sys

    data, out = tmp_path / "prepared", tmp_path / "run"
    token_task(data)
    corrupt(data / "train.npz", kind)
    hp = '{"model": {"d_model": 4, "d_state": 4, "n_layers": 1}, "optim": {"epochs": 1, "batch_size": 8}}'
    argv = ["train", "--data", str(data), "--init", "skew_hippo", "--hparams", hp, "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "dssbt", *argv], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith(f"dssbt train: error: {data / 'train.npz'}: {key}: {value} at example "), p.stderr
    assert "Traceback" not in p.stderr
    assert not out.exists()
