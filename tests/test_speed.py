"""Issue 29: ``optim.compile`` (torch.compile of the model) and the training loop that reads nothing back per step.

References: compiled = the eager fast path (itself tested against the reference path in test_model / test_fast_step),
at every model shape the pipeline trains, in float64; the device loop (``train.SYNC_FREE_DEVICES``, CUDA's loop)
run on CPU = the per-step loop that every CPU job runs (exact equality: the same float64 sums in the same order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from numerics import same_threads
from test_train import HP, InjectNaN, history, make_task, strip_time

import dssbt.train
from dssbt.hparams import parse_hparams
from dssbt.model import ModelConfig, S4Model
from dssbt.train import train

# its own module fixture: a group of its own, free to go to another worker than test_train
pytestmark = pytest.mark.xdist_group("test_speed")

# config.yaml's model and task_settings, and lra.yaml's dual head (as bench/train_step.py's SHAPES), at small batch
BASE = dict(d_model=32, d_state=32, n_layers=2, norm="layer", prenorm=True, output="glu", pool="mean", dropout=0.0)
PIPELINE_SHAPES = {
    "image": dict(L=1024, cfg=dict(encoder="linear", d_input=1, d_output=10)),
    "listops": dict(L=120, cfg=dict(encoder="embedding", d_input=20, d_output=10)),
    "pathfinder": dict(L=1024, cfg=dict(encoder="linear", d_input=1, d_output=2, norm="batch", bidirectional=True)),
    "retrieval": dict(L=256, cfg=dict(encoder="embedding", d_input=100, d_output=2, dual=True, norm="batch")),
}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("task"))


def _inputs(shape: dict, B: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, lengths (each example a different length, the longest = L), y of one batch of ``shape``."""
    g = torch.Generator().manual_seed(0)
    L, cfg = shape["L"], shape["cfg"]
    lengths = torch.tensor([L - 7 * i for i in range(B)])  # (B,)
    if cfg.get("dual"):
        lengths = torch.stack([lengths, lengths.flip(0)], dim=1)  # (B, 2)
    if cfg["encoder"] == "embedding":
        x = torch.randint(1, cfg["d_input"], (B, 2, L) if cfg.get("dual") else (B, L), generator=g)
    else:
        x = torch.randn(B, L, generator=g, dtype=torch.float64)
    return x, lengths, torch.randint(0, cfg["d_output"], (B,), generator=g)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PIPELINE_SHAPES))
def test_compiled_model_equals_eager_at_every_pipeline_shape(name):
    """Logits (training and eval mode) and every parameter gradient of the compiled model (``train.compile_model``,
    inductor) equal the eager fast path's in float64 (relative 1e-10); batch-norm running statistics too."""
    shape = PIPELINE_SHAPES[name]
    torch.manual_seed(0)
    eager = S4Model(ModelConfig.from_dict({**BASE, **shape["cfg"]})).double()
    compiled = S4Model(eager.cfg).double()
    compiled.load_state_dict(eager.state_dict())
    dssbt.train.compile_model(compiled, parse_hparams({"optim": {"compile": True}}))
    x, lengths, y = _inputs(shape)
    grads, logits = [], []
    for model in (eager, compiled):
        model.train()
        out = model(x, lengths)
        F.cross_entropy(out, y).backward()
        model.eval()
        with torch.no_grad():
            logits.append((out.detach(), model(x, lengths)))
        grads.append({k: p.grad for k, p in model.named_parameters()})
    for a, b in zip(*logits):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-10, atol=1e-12, msg=lambda m, k=k: f"{k}: {m}")
    for k, v in eager.state_dict().items():  # running mean / var of batch norm updated by the training forward
        torch.testing.assert_close(compiled.state_dict()[k], v, rtol=1e-10, atol=1e-12)


def _compile_hp(epochs: int = 3) -> dict:
    hp = json.loads(json.dumps(HP))
    hp["optim"].update(compile=True, epochs=epochs)
    return hp


@pytest.mark.slow
def test_compiled_training_is_deterministic_close_to_eager_and_resumes_to_the_same_result(task, tmp_path):
    """optim.compile: same seed -> identical metrics and history; the metrics near the eager run's (float32
    rounding over 3 epochs: accuracies within 2 test examples, losses within 1e-3 relative); a run interrupted in
    epoch 2 resumes from its state to the uninterrupted run's result; the key is recorded in the hyper-parameters."""

    class Interrupt(Exception):
        pass

    def stop_in_epoch_2(line: str) -> None:
        if line.startswith("epoch 2/"):
            raise Interrupt

    with same_threads(1):
        a = train(task, _compile_hp(), "skew_hippo", 1, tmp_path / "a", log=lambda s: None)
        b = train(task, _compile_hp(), "skew_hippo", 1, tmp_path / "b", log=lambda s: None)
        with pytest.raises(Interrupt):
            train(task, _compile_hp(), "skew_hippo", 1, tmp_path / "r", log=stop_in_epoch_2)
        lines = []
        r = train(task, _compile_hp(), "skew_hippo", 1, tmp_path / "r", log=lines.append)
        e = train(task, HP | {"optim": HP["optim"] | {"epochs": 3}}, "skew_hippo", 1, tmp_path / "e", log=print)
    assert strip_time(a) == strip_time(b)
    assert history(tmp_path / "a" / "history.csv") == history(tmp_path / "b" / "history.csv")
    assert any(s.startswith("resuming from") for s in lines), lines
    assert strip_time(r) == strip_time(a)
    assert history(tmp_path / "r" / "history.csv") == history(tmp_path / "a" / "history.csv")
    assert a["hparams"]["optim"]["compile"] is True and "compile" not in e["hparams"]["optim"]
    for key in ("accuracy", "loss"):
        for split in ("train", "val", "test"):
            if key == "accuracy":
                assert abs(a[key][split] - e[key][split]) <= 2 / 60 + 1e-12, (key, split)
            else:
                assert a[key][split] == pytest.approx(e[key][split], rel=1e-3), (key, split)


def test_compile_refuses_the_c_kernels_and_a_non_boolean():
    with pytest.raises(ValueError, match=r"optim.compile=true and optim.kernels='c' exclude each other"):
        parse_hparams({"optim": {"compile": True, "kernels": "c"}})
    with pytest.raises(ValueError, match=r"optim.compile must be bool, got 'yes'"):
        parse_hparams({"optim": {"compile": "yes"}})
    assert "compile" not in parse_hparams({}).to_dict()["optim"]  # off: the recorded hyper-parameters unchanged


def test_a_job_with_compile_off_imports_no_dynamo(task, tmp_path):
    """Compile off (the default, through the CLI as the workflow runs it): ``dssbt train`` leaves torch._dynamo
    unimported (test_eager checks the same through the library)."""
    code = (
        "import sys, json; from dssbt.cli import main\n"
        "sys.argv = ['dssbt', 'train', '--data', sys.argv[1], '--hparams', sys.argv[2], '--init', 'skew_hippo',"
        " '--seed', '0', '--out', sys.argv[3], '--threads', '1']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e\n"
        "print('dynamo imported:', 'torch._dynamo' in sys.modules)\n"
    )
    hp = json.loads(json.dumps(HP))
    hp["optim"]["epochs"] = 1
    p = subprocess.run(
        [sys.executable, "-c", code, str(task), json.dumps(hp), str(tmp_path / "off")], capture_output=True, text=True
    )
    assert p.returncode == 0 and "dynamo imported: False" in p.stdout, p.stderr[-3000:]


def test_device_loop_on_cpu_equals_the_per_step_loop(task, tmp_path, monkeypatch):
    """The CUDA loop (device-side sums read every DEVICE_CHECK_STEPS = 3 steps and at the epoch's end) run on CPU:
    metrics and history identical to the per-step loop's, evaluation included."""
    with same_threads(1):
        ref = train(task, HP, "skew_hippo", 5, tmp_path / "ref", log=lambda s: None)
        monkeypatch.setattr(dssbt.train, "SYNC_FREE_DEVICES", ("cuda", "cpu"))
        monkeypatch.setattr(dssbt.train, "DEVICE_CHECK_STEPS", 3)
        dev = train(task, HP, "skew_hippo", 5, tmp_path / "dev", log=lambda s: None)
    assert strip_time(dev) == strip_time(ref)
    assert history(tmp_path / "dev" / "history.csv") == history(tmp_path / "ref" / "history.csv")


@pytest.mark.parametrize("grad", [False, True], ids=["nan_loss", "inf_gradient"])
def test_device_loop_reports_the_first_diverged_step_as_the_per_step_loop(task, tmp_path, monkeypatch, grad):
    """A NaN loss / infinite gradient injected at epoch 2, step 5 (between two reads, every 4 steps): the device
    loop names the same epoch, step, quantity and learning rates, and keep_best gives the same metrics."""
    hp = json.loads(json.dumps(HP))
    hp["optim"].update(on_divergence="keep_best", epochs=3)
    out = {}
    with same_threads(1):
        for name, devices in (("step", ("cuda",)), ("device", ("cuda", "cpu"))):
            monkeypatch.setattr(dssbt.train, "SYNC_FREE_DEVICES", devices)
            monkeypatch.setattr(dssbt.train, "DEVICE_CHECK_STEPS", 4)
            monkeypatch.setattr(dssbt.train.F, "cross_entropy", InjectNaN(at=10 + 5, grad=grad))
            lines = []
            out[name] = (train(task, hp, "skew_hippo", 0, tmp_path / name, log=lines.append), lines)
            monkeypatch.undo()
    (a, la), (b, lb) = out["step"], out["device"]
    assert a["diverged_at"]["epoch"] == 2 and a["diverged_at"]["step"] == 5
    assert strip_time(b) == strip_time(a)
    warn = [s for s in la if s.startswith("warning: training diverged")]
    assert warn and warn == [s for s in lb if s.startswith("warning: training diverged")]


def test_gpu_benchmark_without_cuda_says_so_and_exits_0():
    """bench/gpu.py on a machine where torch sees no CUDA device (CUDA hidden from it: CUDA_VISIBLE_DEVICES='')."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run([sys.executable, "bench/gpu.py"], cwd=root, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "no CUDA device (torch.cuda.is_available() is False): nothing measured" in p.stdout
