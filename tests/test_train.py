import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dssbt.data.prepared import Split, save_prepared
from dssbt.hparams import parse_hparams
from dssbt.train import train

HP = {
    "model": {"d_model": 8, "d_state": 8, "n_layers": 1, "dropout": 0.1, "norm": "layer"},
    "optim": {"epochs": 4, "batch_size": 20, "lr": 0.01, "ssm_lr": 0.005, "warmup_epochs": 0.5, "grad_clip": 1.0},
}


def make_task(folder: Path, n=(200, 60, 60), L=32, seed=0) -> Path:
    """A tiny pixel task: label = 1 if the sequence mean is positive."""
    rng = np.random.default_rng(seed)
    splits = {}
    for name, size in zip(("train", "val", "test"), n):
        x = rng.normal(size=(size, L)).astype(np.float32) + rng.choice([-0.3, 0.3], size=(size, 1)).astype(np.float32)
        splits[name] = Split(x, np.full(size, L), (x.mean(1) > 0).astype(np.int64))
    meta = {"task": "tiny", "source": "test", "encoder": "linear", "d_input": 1, "d_output": 2, "l_max": L,
            "dual": False, "vocab": None}
    save_prepared(folder, splits, meta)
    return folder


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "dssbt", *args], capture_output=True, text=True, **kw)


def strip_time(m: dict) -> dict:
    return {k: v for k, v in m.items() if k not in ("wall_time_s",)}


def history(path: Path) -> list[dict]:
    with open(path) as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("task"))


def test_training_learns_and_writes_outputs(task, tmp_path):
    hp = json.loads(json.dumps(HP))
    hp["optim"]["epochs"] = 8
    m = train(task, hp, "skew_hippo", 0, tmp_path, log=lambda s: None)
    assert {p.name for p in tmp_path.iterdir()} == {"model.pt", "metrics.json", "history.csv"}
    assert json.loads((tmp_path / "metrics.json").read_text())["accuracy"] == m["accuracy"]
    assert m["accuracy"]["test"] > 0.8 > m["initial"]["accuracy"]["test"] - 0.2  # learned something real
    rows = history(tmp_path / "history.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(9))
    assert m["epochs_run"] == 8 and m["order"] == 8 and m["N"] == 8 and m["seed"] == 0
    # parameter counts, by hand: encoder 1*8+8; block: SSM 8*8*6 + 8 + 8, layer norm 16, GLU linear 8*16+16;
    # final norm 16; decoder 8*2+2
    ssm = 8 * 8 * 6 + 16
    assert m["params"] == {"ssm": ssm, "total": 16 + ssm + 16 + 144 + 16 + 18}
    assert m["hparams"] == parse_hparams(hp).to_dict()


def test_same_seed_same_metrics_other_seed_other_metrics(task, tmp_path):
    a = train(task, HP, "skew_hippo", 3, tmp_path / "a", log=lambda s: None)
    b = train(task, HP, "skew_hippo", 3, tmp_path / "b", log=lambda s: None)
    c = train(task, HP, "skew_hippo", 4, tmp_path / "c", log=lambda s: None)
    assert strip_time(a) == strip_time(b)
    assert history(tmp_path / "a" / "history.csv") == history(tmp_path / "b" / "history.csv")
    assert a["loss"] != c["loss"]


def test_killed_job_resumes_to_the_same_result(task, tmp_path):
    hp = json.loads(json.dumps(HP))
    hp["optim"]["epochs"] = 40
    args = ["train", "--data", str(task), "--hparams", json.dumps(hp), "--init", "skew_hippo", "--seed", "1"]
    ref = run_cli(*args, "--out-dir", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "dssbt", *args, "--out-dir", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "train_state.pt").exists():  # wait for the first completed epoch
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists() and not (out / "model.pt").exists()
    assert not list(out.glob(".*.tmp"))  # no temporary left looking like an output

    again = run_cli(*args, "--out-dir", str(out))
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout
    m_ref = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    m_res = json.loads((out / "metrics.json").read_text())
    assert strip_time(m_res) == strip_time(m_ref)
    assert history(out / "history.csv") == history(tmp_path / "ref" / "history.csv")
    assert not (out / "train_state.pt").exists()


def test_bt_initialised_model_starts_at_the_reduced_accuracy(task, tmp_path):
    hp = json.loads(json.dumps(HP))
    hp["optim"]["epochs"] = 3
    train(task, hp, "skew_hippo", 0, tmp_path / "pre", log=lambda s: None)
    r = run_cli("reduce", "--checkpoint", str(tmp_path / "pre" / "model.pt"), "--order", "3", "--data", str(task),
                "--hparams", json.dumps(hp), "--out", str(tmp_path / "r3.pt"), "--report", str(tmp_path / "r3.json"),
                "--metrics", str(tmp_path / "r3_metrics.json"))
    assert r.returncode == 0, r.stderr
    reduced = json.loads((tmp_path / "r3_metrics.json").read_text())
    assert reduced["init"] == "bt_no_retrain" and reduced["order"] == 3 and reduced["N"] == 8
    m = train(task, hp, "from_reduced", 0, tmp_path / "re", order=3, reduced=tmp_path / "r3.pt", log=lambda s: None)
    assert m["initial"]["accuracy"] == {"val": reduced["accuracy"]["val"], "test": reduced["accuracy"]["test"]}
    # and the reduced model differs from a fresh order-3 model, so the equality is not a coincidence of inits
    fresh = train(task, hp, "skew_hippo", 0, tmp_path / "fresh", order=3, log=lambda s: None)
    assert fresh["initial"] != m["initial"]
    assert m["params"] == fresh["params"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model": {"d_hidden": 4}}, "unknown key model.d_hidden"),
        ({"optim": {"lr": "fast"}}, "optim.lr must be float, got 'fast'"),
        ({"optim": {"epochs": 2.5}}, "optim.epochs must be int, got 2.5"),
        ({"trainer": {}}, r"unknown section\(s\) \['trainer'\]"),
        ({"optim": {"schedule": "step"}}, "optim.schedule='step' is not one of"),
    ],
)
def test_bad_hyper_parameters_fail_before_training(task, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        train(task, change, "skew_hippo", 0, tmp_path / "out", log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_bad_orders_inits_and_foreign_checkpoints_fail_before_training(task, tmp_path):
    with pytest.raises(ValueError, match=r"order r=8 must satisfy 1 <= r < N=8"):
        train(task, HP, "skew_hippo", 0, tmp_path / "o", order=8, log=lambda s: None)
    with pytest.raises(ValueError, match="unknown init 'hippo'"):
        train(task, HP, "hippo", 0, tmp_path / "o", log=lambda s: None)
    hp = json.loads(json.dumps(HP))
    hp["optim"]["epochs"] = 1
    train(task, hp, "skew_hippo", 0, tmp_path / "pre", log=lambda s: None)
    other = json.loads(json.dumps(hp))
    other["model"]["d_model"] = 6
    with pytest.raises(ValueError, match=r"model.pt: architecture differs .*'d_model': \(8, 6\)"):
        train(task, other, "from_reduced", 0, tmp_path / "x", order=7, reduced=tmp_path / "pre" / "model.pt",
              log=lambda s: None)
    assert not (tmp_path / "o").exists() and not (tmp_path / "x").exists()
    p = run_cli("train", "--data", str(task), "--init", "skew_hippo", "--hparams", '{"optim": {"epochs": 0}}',
                "--out-dir", str(tmp_path / "cli"))
    assert p.returncode == 2 and "optim.epochs must be >= 1, got 0" in p.stderr


def test_evaluate_command_matches_training_metrics(task, tmp_path):
    hp = json.loads(json.dumps(HP))
    hp["optim"]["epochs"] = 2
    m = train(task, hp, "skew_hippo", 0, tmp_path / "t", log=lambda s: None)
    p = run_cli("evaluate", "--checkpoint", str(tmp_path / "t" / "model.pt"), "--data", str(task),
                "--hparams", json.dumps(hp), "--out", str(tmp_path / "e.json"))
    assert p.returncode == 0, p.stderr
    e = json.loads((tmp_path / "e.json").read_text())
    assert {k: e["accuracy"][k] for k in ("val", "test")} == {k: m["accuracy"][k] for k in ("val", "test")}
    assert e["params"] == m["params"] and 0 <= e["accuracy"]["train"] <= 1


def test_hsv_regularised_pretraining_ends_with_a_smaller_hankel_nuclear_norm(task, tmp_path):
    """optim.hsv_reg > 0 adds the sum of every channel's HSVs to the loss: the trained model's sum is smaller than
    the unregularised one's (same seed, same data order), measured by the numpy BT (an independent path)."""
    from dssbt.checkpoint import load_model
    from dssbt.reduction.apply import ModelReducer

    hp = json.loads(json.dumps(HP))
    hp["optim"]["epochs"] = 3
    sums = {}
    for lam in (0.0, 0.5):
        hp["optim"]["hsv_reg"] = lam
        train(task, hp, "skew_hippo", 0, tmp_path / str(lam), log=lambda s: None)
        model, _ = load_model(tmp_path / str(lam) / "model.pt")
        sums[lam] = float(sum(h.sum() for h in ModelReducer(model).hsv()))
    assert sums[0.5] < 0.8 * sums[0.0], sums


def test_equal_budget_hyper_parameters_add_the_retraining_epochs_and_keep_the_rest():
    from dssbt.hparams import equal_budget_hparams

    train_hp = {"model": {"d_state": 8}, "optim": {"epochs": 3, "lr": 0.01, "warmup_epochs": 0.5}}
    got = json.loads(equal_budget_hparams(json.dumps(train_hp), {"optim": {"epochs": 4, "lr": 0.5}}))
    assert got == {"model": {"d_state": 8}, "optim": {"epochs": 7, "lr": 0.01, "warmup_epochs": 0.5}}
    # epochs left to the default (OptimHparams: 10) count as such on either side
    assert json.loads(equal_budget_hparams({}, {"optim": {"epochs": 2}}))["optim"]["epochs"] == 12
    with pytest.raises(ValueError, match="optim.epochs must be int"):
        equal_budget_hparams({}, {"optim": {"epochs": "2"}})


def test_equal_budget_run_is_named_by_its_method_and_trains_the_total_epochs(task, tmp_path):
    """--method skew_hippo_equal names the run (folder name skew_hippo_equal_r4) and changes nothing else: same
    weights as the plain baseline of the same seed and hyper-parameters."""
    hp = json.loads(json.dumps(HP)) | {"optim": {**HP["optim"], "epochs": 2}}
    plain = train(task, hp, "skew_hippo", 0, tmp_path / "a", order=4, log=lambda s: None)
    equal = train(task, hp, "skew_hippo", 0, tmp_path / "b", order=4, log=lambda s: None, method="skew_hippo_equal")
    assert (equal["stage"], equal["method"], equal["run"]) == ("baseline", "skew_hippo_equal", "skew_hippo_equal_r4")
    assert (plain["stage"], plain["method"], plain["run"]) == ("baseline", "skew_hippo", "skew_hippo_r4")
    assert equal["epochs_run"] == 2 and equal["accuracy"] == plain["accuracy"]
    p = run_cli("train", "--data", str(task), "--init", "skew_hippo", "--method", "skew_hippo_equal",
                "--out-dir", str(tmp_path / "c"), "--hparams", json.dumps(hp))
    assert p.returncode == 2 and "only a baseline of order r" in p.stderr, p.stderr  # the full-N pretraining
    assert not (tmp_path / "c" / "metrics.json").exists()


def test_full_continued_trains_the_pretrained_model_further(task, tmp_path):
    """--init from_pretrained starts from the pretrained full-N model itself (epoch 0 = its accuracy) and is named
    stage continue, method full, run full_continued; it takes no order."""
    hp = json.loads(json.dumps(HP)) | {"optim": {**HP["optim"], "epochs": 2}}
    pre = train(task, hp, "skew_hippo", 0, tmp_path / "pre", log=lambda s: None)
    cont = train(task, hp, "from_pretrained", 0, tmp_path / "cont", reduced=tmp_path / "pre" / "model.pt",
                 log=lambda s: None)
    assert (cont["stage"], cont["method"], cont["run"]) == ("continue", "full", "full_continued")
    assert cont["initial"]["accuracy"]["val"] == pre["accuracy"]["val"]
    assert cont["initial"]["accuracy"]["test"] == pre["accuracy"]["test"]
    assert cont["epochs_run"] == 2 and cont["order"] == pre["order"] == 8
    with pytest.raises(ValueError, match="from_pretrained continues the full-N model"):
        train(task, hp, "from_pretrained", 0, tmp_path / "x", order=4, reduced=tmp_path / "pre" / "model.pt")
    with pytest.raises(ValueError, match="needs --reduced"):
        train(task, hp, "from_pretrained", 0, tmp_path / "x")


def test_a_snapshot_is_the_pretraining_stopped_after_its_epoch(task, tmp_path):
    """--stop-after e: the same run as the pretraining (same schedule over optim.epochs, same RNG streams) up to
    epoch e, named stage snapshot, run pretrain_e{e}."""
    hp = json.loads(json.dumps(HP)) | {"optim": {**HP["optim"], "epochs": 3}}
    train(task, hp, "skew_hippo", 0, tmp_path / "full", log=lambda s: None)
    snap = train(task, hp, "skew_hippo", 0, tmp_path / "snap", stop_after=2, log=lambda s: None)
    assert (snap["stage"], snap["run"], snap["epochs_run"]) == ("snapshot", "pretrain_e2", 2)
    assert history(tmp_path / "snap" / "history.csv") == history(tmp_path / "full" / "history.csv")[:3]
    for bad in (0, 3):
        with pytest.raises(ValueError, match="--stop-after"):
            train(task, hp, "skew_hippo", 0, tmp_path / "x", stop_after=bad)
    with pytest.raises(ValueError, match="--stop-after"):
        train(task, hp, "skew_hippo", 0, tmp_path / "x", order=4, stop_after=1)
