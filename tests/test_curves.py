"""Training curves as TensorBoard event files (``dssbt train --tensorboard DIR``, ``dssbt.curves``): the events
read back equal history.csv and the metrics; the logger changes no result, is off by default and imports nothing
when off; without the ``log`` extra the flag fails before training, naming the extra."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_train import HP, history, make_task, run_cli, strip_time

from dssbt.curves import EXTRA, MissingExtra, TensorBoardLogger
from dssbt.stages import train_job
from dssbt.train import train

pytest.importorskip("tensorboard", reason=f"the log extra ({EXTRA})")
pytestmark = pytest.mark.xdist_group("test_curves")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("task"))


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in ``folder``: tag -> [(step, value)], as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def read_runs(logdir: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """The runs ``tensorboard --logdir logdir`` shows (every folder below it holding event files): run -> scalars."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer(size_guidance={"scalars": 0})
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    return {
        run: {tag: [(e.step, e.value) for e in mux.Scalars(run, tag)] for tag in tags["scalars"]}
        for run, tags in mux.Runs().items()
    }


def rows(path: Path) -> list[dict[str, float]]:
    with open(path) as fh:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def f32(x: float) -> float:
    return float(np.float32(x))  # TensorBoard stores a scalar as float32


def test_events_read_back_equal_the_history_and_metrics_and_the_logger_changes_no_result(task, tmp_path):
    plain = train(task, HP, "skew_hippo", 2, tmp_path / "plain", log=lambda s: None)
    with TensorBoardLogger(tmp_path / "tb") as logger:
        logged = train(task, HP, "skew_hippo", 2, tmp_path / "logged", log=lambda s: None, logger=logger)
    assert strip_time(logged) == strip_time(plain)
    assert history(tmp_path / "logged" / "history.csv") == history(tmp_path / "plain" / "history.csv")
    hist = rows(tmp_path / "logged" / "history.csv")
    assert not list((tmp_path / "logged").glob("events*"))  # the events go to their own folder only

    got = read_scalars(tmp_path / "tb")
    epochs = [int(r["epoch"]) for r in hist]
    for tag, col in {
        "val/loss": "val_loss",
        "val/accuracy": "val_accuracy",
        "lr/lr": "lr",
        "lr/ssm_lr": "ssm_lr",
    }.items():
        assert got[tag] == [(e, f32(r[col])) for e, r in zip(epochs, hist)], tag
    for tag, col in {"train/loss": "train_loss", "train/accuracy": "train_accuracy"}.items():
        assert got[tag] == [(e, f32(r[col])) for e, r in zip(epochs[1:], hist[1:])], tag  # none before training
    assert got["time/elapsed_s"] == [(e, f32(r["seconds"])) for e, r in zip(epochs, hist)]
    want = [(e, f32(b["seconds"] - a["seconds"])) for e, a, b in zip(epochs[1:], hist, hist[1:])]
    assert got["time/epoch_s"] == pytest.approx(want, rel=1e-6)
    best = logged["best_epoch"]
    assert got["test/accuracy"] == [(0, f32(hist[0]["test_accuracy"])), (best, f32(logged["accuracy"]["test"]))]
    assert got["test/loss"] == [(best, f32(logged["loss"]["test"]))]
    assert "model/states" not in got  # in-training reduction off


def test_dssbt_train_tensorboard_flag_writes_the_events_and_is_off_by_default_without_importing_it(task, tmp_path):
    hp = json.dumps({**HP, "optim": {**HP["optim"], "epochs": 2}})
    args = ["train", "--data", str(task), "--hparams", hp, "--init", "skew_hippo", "--threads", "1"]
    tb = tmp_path / "tensorboard" / "tiny" / "seed0" / "pretrain"
    r = run_cli(*args, "--out", str(tmp_path / "on"), "--tensorboard", str(tb))
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "on" / "metrics.json").read_text())
    runs = read_runs(tmp_path / "tensorboard")  # one logdir above the jobs, as a grid is watched
    assert list(runs) == ["tiny/seed0/pretrain"]
    got = runs["tiny/seed0/pretrain"]
    assert [e for e, _ in got["val/accuracy"]] == [0, 1, 2]
    assert got["test/accuracy"][-1] == (metrics["best_epoch"], f32(metrics["accuracy"]["test"]))

    # off (the default): no event file anywhere, and nothing of tensorboard imported
    code = (
        "import sys; from dssbt.cli import main; rc = main(sys.argv[1:]); "
        "print(sorted(m for m in sys.modules if 'tensorboard' in m)); sys.exit(rc)"
    )
    off = subprocess.run(
        [sys.executable, "-c", code, *args, "--out", str(tmp_path / "off")], capture_output=True, text=True
    )
    assert off.returncode == 0, off.stderr
    assert off.stdout.strip().splitlines()[-1] == "[]"
    assert not list((tmp_path / "off").rglob("events*"))


def test_tensorboard_without_the_extra_fails_before_training_naming_it(task, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed: importing it raises ImportError
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    with pytest.raises(MissingExtra, match=r"--tensorboard needs the tensorboard package .*pip install -e '\.\[log\]'"):
        train_job(task, tmp_path / "out", "skew_hippo", hparams=json.dumps(HP), tensorboard=tmp_path / "tb")
    assert not (tmp_path / "out").exists() and not (tmp_path / "tb").exists()
    assert issubclass(MissingExtra, ValueError)  # the CLI reports it as an error, exit status 2


def test_a_resumed_job_continues_its_curves_in_the_same_folder(task, tmp_path):
    """Killed after epoch 1 and resumed: the folder holds every epoch once, equal to the resumed job's history."""
    from test_train import Interrupt

    def log(line: str) -> None:
        if line.startswith("epoch 2/"):
            raise Interrupt

    with pytest.raises(Interrupt), TensorBoardLogger(tmp_path / "tb") as logger:
        train(task, HP, "skew_hippo", 1, tmp_path / "out", log=log, logger=logger)
    assert [e for e, _ in read_scalars(tmp_path / "tb")["val/accuracy"]] == [0, 1]
    with TensorBoardLogger(tmp_path / "tb") as logger:
        m = train(task, HP, "skew_hippo", 1, tmp_path / "out", log=lambda s: None, logger=logger)
    hist = rows(tmp_path / "out" / "history.csv")
    got = read_scalars(tmp_path / "tb")
    assert got["val/accuracy"] == [(int(r["epoch"]), f32(r["val_accuracy"])) for r in hist]
    assert got["test/loss"] == [(m["best_epoch"], f32(m["loss"]["test"]))]
