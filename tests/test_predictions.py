"""Item-level predictions (``predictions.npz``) of every evaluated run: training, reduce and evaluate jobs. The
reference is the prepared data itself (labels read with ``load_split``) and the accuracy in the metrics file."""

import json
from pathlib import Path

import numpy as np
import pytest

from dssbt.data.prepared import Split, load_meta, load_split, save_prepared
from dssbt.evaluate import load_predictions, predictions_path, save_predictions
from dssbt.stages import evaluate_job, reduce_job
from dssbt.train import train

HP = {
    "model": {"d_model": 8, "d_state": 8, "n_layers": 1, "norm": "layer"},
    "optim": {"epochs": 2, "batch_size": 20, "lr": 0.01, "ssm_lr": 0.005, "warmup_epochs": 0.5},
}


def make_task(folder: Path, n=(100, 37, 41), L=16, seed=0) -> Path:
    """A tiny 3-class pixel task (odd split sizes: the last batch is partial)."""
    rng = np.random.default_rng(seed)
    splits = {}
    for name, size in zip(("train", "val", "test"), n):
        y = rng.integers(0, 3, size)
        x = (rng.normal(size=(size, L)) + (y[:, None] - 1.0)).astype(np.float32)
        splits[name] = Split(x, np.full(size, L), y.astype(np.int64))
    meta = {"task": "tiny", "source": "test", "encoder": "linear", "d_input": 1, "d_output": 3, "l_max": L}
    save_prepared(folder, splits, meta | {"dual": False, "vocab": None})
    return folder


def check(metrics_file: Path, task: Path, splits=("val", "test")) -> dict:
    """The predictions beside ``metrics_file`` score exactly the metrics' accuracy against the prepared labels."""
    m = json.loads(metrics_file.read_text())
    pred = load_predictions(predictions_path(metrics_file))
    assert set(pred) == set(splits)
    meta = load_meta(task)
    for split in splits:
        labels = load_split(task, split, meta).labels  # the prepared labels, read independently
        p, stored_labels = pred[split]
        assert p.dtype == np.uint8 and stored_labels.dtype == np.uint8 and p.shape == labels.shape
        np.testing.assert_array_equal(stored_labels, labels)
        assert np.mean(p == labels) == m["accuracy"][split]
    return pred


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("task"))


def test_predictions_round_trip_in_the_smallest_dtype(tmp_path):
    data = {"val": Split(np.zeros((3, 2)), np.full(3, 2), np.array([0, 299, 5]))}
    path = save_predictions(tmp_path / "predictions.npz", {"val": np.array([7, 299, 0])}, data, d_output=300)
    got = load_predictions(path)
    assert got["val"][0].dtype == np.uint16  # 299 does not fit uint8
    np.testing.assert_array_equal(got["val"][0], [7, 299, 0])
    np.testing.assert_array_equal(got["val"][1], [0, 299, 5])
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temporary left
    with pytest.raises(ValueError, match="2 predictions for 3 examples"):
        save_predictions(tmp_path / "bad.npz", {"val": np.array([1, 2])}, data, d_output=300)
    with pytest.raises(ValueError, match="outside"):
        save_predictions(tmp_path / "bad.npz", {"val": np.array([1, 2, 300])}, data, d_output=300)
    assert not (tmp_path / "bad.npz").exists()


def test_predictions_path_sits_beside_the_metrics():
    assert predictions_path("r/seed0/bt_r4/metrics.json") == Path("r/seed0/bt_r4/predictions.npz")
    assert predictions_path("x/r3_metrics.json") == Path("x/r3_metrics.predictions.npz")


def test_training_reduce_and_evaluate_jobs_store_predictions_that_score_their_metrics(task, tmp_path):
    train(task, HP, "skew_hippo", 0, tmp_path / "pre", log=lambda s: None)
    pre = check(tmp_path / "pre" / "metrics.json", task)
    reduce_job(
        tmp_path / "pre" / "model.pt",
        tmp_path / "bt_r3" / "model.pt",
        tmp_path / "bt_r3" / "report.json",
        order=3,
        data=task,
        metrics_out=tmp_path / "bt_r3" / "metrics.json",
        hparams=json.dumps(HP),
    )
    check(tmp_path / "bt_r3" / "metrics.json", task)
    m = train(task, HP, "from_reduced", 0, tmp_path / "re", order=3, start=tmp_path / "bt_r3" / "model.pt", log=print)
    check(tmp_path / "re" / "metrics.json", task)
    assert m["accuracy"]["test"] > 1 / 3  # a learnt model, so its predictions are not one constant class
    evaluate_job(tmp_path / "pre" / "model.pt", task, tmp_path / "eval" / "pre.json", hparams=json.dumps(HP))
    again = check(tmp_path / "eval" / "pre.json", task)
    for split in ("val", "test"):  # the evaluate command predicts what the training job stored
        np.testing.assert_array_equal(again[split][0], pre[split][0])
