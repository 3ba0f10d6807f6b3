"""Quantisation-aware training (optim.qat, dssbt.qat): the fake-quantised weights against the export's numpy
quantisation and a hand-written one, the straight-through gradient against autograd through a plain copy of the
dequantised weights, and a QAT job whose `dssbt export --weights int8` graph (onnxruntime) gives the logits of the
torch QAT model; model.pt keeps a float model's keys; bad values refused; off, the hyper-parameters unchanged."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from numerics import assert_same_class
from test_deploy import KINDS, random_model, sequences
from test_train import HP, make_task

from dssbt import grid, qat
from dssbt.checkpoint import load_model
from dssbt.cli import main
from dssbt.config_check import check_config
from dssbt.deploy.export import export_onnx
from dssbt.deploy.predict import OnnxStream
from dssbt.deploy.quant import dequantised
from dssbt.evaluate import load_predictions
from dssbt.hparams import parse_hparams
from dssbt.train import load_task, train

ROOT = Path(__file__).resolve().parents[1]
BITS = {"int8": 8, "int16": 16}


def by_hand(w: np.ndarray, bits: int) -> np.ndarray:
    """Per row: s = max|w| / (2^(b-1) - 1) (1 for a zero row) in float32, round(w / s) half to even, times s."""
    qmax = 2 ** (bits - 1) - 1
    out = np.zeros(w.shape, np.float32)
    for k, row in enumerate(w.astype(np.float64)):
        s = np.float32(np.abs(row).max() / qmax) if np.abs(row).max() > 0 else np.float32(1.0)
        q = np.clip(np.round(row / np.float64(s)), -qmax, qmax)  # np.round: half to even
        out[k] = q.astype(np.float32) * s
    return out


def weights_with_ties(bits: int, seed: int = 0) -> np.ndarray:
    """float32 (7, 11): random rows of several magnitudes, a zero row, and rows whose w / s hit x.5 exactly."""
    qmax = 2 ** (bits - 1) - 1
    rng = np.random.default_rng(seed)
    w = (rng.normal(size=(7, 11)) * rng.uniform(1e-3, 5.0, (7, 1))).astype(np.float32)
    w[2] = 0.0
    w[3] = 0.0  # s = 1: w / s = w
    w[3, :6] = [qmax, 0.5, 1.5, 2.5, -0.5, -2.5]
    w[4] = 0.0  # s = 0.25: w / s = 4 w
    w[4, :5] = [0.25 * qmax, 0.125, 0.375, -0.625, 0.875]
    return w


@pytest.mark.parametrize("weights", ["int8", "int16"])
def test_fake_quantised_weight_is_the_exports_dequantised_weight_bit_for_bit(weights):
    bits = BITS[weights]
    w = weights_with_ties(bits)
    got = qat.fake_quantise_rows(torch.from_numpy(w), bits)
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), dequantised(w, bits))  # what the exported graph multiplies with
    np.testing.assert_array_equal(got.numpy(), by_hand(w, bits))
    ste = qat.fake_quantised(torch.from_numpy(w).requires_grad_(), bits)
    np.testing.assert_array_equal(ste.detach().numpy(), by_hand(w, bits))
    # the ties, by hand: half to even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2), the zero row stays zero
    np.testing.assert_array_equal(got.numpy()[3, 1:6], [0.0, 2.0, 2.0, -0.0, -2.0])
    np.testing.assert_array_equal(got.numpy()[4, 1:5], [0.0, 0.5, -0.5, 1.0])
    assert not got.numpy()[2].any()
    big = np.random.default_rng(1).normal(size=(64, 300)).astype(np.float32)  # many rows: exact everywhere
    np.testing.assert_array_equal(qat.fake_quantise_rows(torch.from_numpy(big), bits).numpy(), dequantised(big, bits))


def test_straight_through_gradient_is_the_gradient_at_the_dequantised_weight():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(5, 7)).astype(np.float32)
    x, b = torch.from_numpy(rng.normal(size=(9, 7)).astype(np.float32)), torch.zeros(5)

    def loss(weight):
        return (torch.nn.functional.linear(x, weight, b).tanh() ** 2).sum()

    master = torch.from_numpy(w).requires_grad_()
    loss(qat.fake_quantised(master, 8)).backward()
    plain = torch.from_numpy(dequantised(w, 8)).requires_grad_()  # numpy's quantisation, an ordinary leaf
    loss(plain).backward()
    np.testing.assert_array_equal(master.grad.numpy(), plain.grad.numpy())
    assert not np.array_equal(master.grad.numpy(), _grad_at(w, loss))  # quantisation changed something


def _grad_at(w: np.ndarray, loss) -> np.ndarray:
    leaf = torch.from_numpy(w.copy()).requires_grad_()
    loss(leaf).backward()
    return leaf.grad.numpy()


@pytest.mark.parametrize("kind", list(KINDS))
def test_qat_model_trains_like_a_float_model_holding_the_dequantised_weights(kind):
    """Loss and every parameter's gradient of a QAT model equal those of a plain copy whose quantised weights were
    replaced by numpy's dequantised ones; the parameters stay the float masters, also after a failing call."""
    model = random_model(kind).train()
    masters = {n: p.detach().clone() for n, p in model.named_parameters()}
    plain = copy.deepcopy(model)
    with torch.no_grad():
        for name in ("encoder.weight", "decoder.weight", *(f"blocks.{i}.out.weight" for i in range(2))):
            p = plain.get_parameter(name)
            p.copy_(torch.from_numpy(dequantised(p.numpy(), 8)))
    qat.enable(model, "int8")
    x = sequences(model, 4, 20)
    y = torch.tensor([0, 1, 2, 3])
    la = torch.nn.functional.cross_entropy(model(x), y)
    lb = torch.nn.functional.cross_entropy(plain(x), y)
    la.backward()
    lb.backward()
    assert la.item() == lb.item()
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        assert isinstance(p, torch.nn.Parameter)
        torch.testing.assert_close(p, masters[name], rtol=0, atol=0)  # masters untouched
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)
    with pytest.raises(Exception):
        model(x[:, :, None, None])  # a bad input: the forward raises
    assert all(isinstance(p, torch.nn.Parameter) for p in model.parameters())
    assert model.state_dict().keys() == plain.state_dict().keys()


@pytest.mark.parametrize("weights", ["int8", "int16"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_exported_graph_equals_the_qat_models_logits(kind, weights, tmp_path):
    model = random_model(kind)
    float_logits = model(sequences(model, 3, 25)).detach().numpy()
    qat.enable(model, weights)
    x = sequences(model, 3, 25)
    with torch.no_grad():
        want = model(x).numpy()  # convolution mode, fake-quantised weights
    export_onnx(model, tmp_path / "m.onnx", weights=weights)
    got = OnnxStream(tmp_path / "m.onnx").run(x.numpy())
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-4 * scale, np.abs(got - want).max() / scale
    if weights == "int8":  # not vacuous: the float model is further from the graph than that
        assert np.abs(got - float_logits).max() > 1e-3 * scale


# ----- a QAT job: dssbt train with optim.qat, then dssbt export --weights int8 ---------------------------------------


def _hp(**optim) -> dict:
    hp = json.loads(json.dumps(HP))
    hp["optim"].update(epochs=3, **optim)
    return hp


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny pixel task, a float training of it, and that model trained further with optim.qat = int8."""
    root = tmp_path_factory.mktemp("qat")
    task = make_task(root / "task")
    quiet = dict(log=lambda s: None)
    fm = train(task, _hp(), "skew_hippo", 0, root / "float", **quiet)
    qm = train(task, _hp(qat="int8"), "from_pretrained", 0, root / "qat", start=root / "float" / "model.pt", **quiet)
    return task, root, fm, qm


def test_qat_jobs_int8_export_gives_the_logits_and_the_metrics_the_job_reported(runs, tmp_path):
    task, root, _, metrics = runs
    onnx_path = str(tmp_path / "m.onnx")
    assert main(["export", "--model", str(root / "qat" / "model.pt"), "--out", onnx_path, "--weights", "int8"]) == 0
    _, data = load_task(task)
    model, _ = load_model(root / "qat" / "model.pt")
    x, lengths = torch.from_numpy(data["test"].inputs), torch.from_numpy(data["test"].lengths)
    with torch.no_grad():
        float_logits = model.eval()(x, lengths).numpy()
        want = qat.enable(model, "int8")(x, lengths).numpy()  # the torch QAT model in eval mode
    got = OnnxStream(onnx_path).run(x.numpy(), lengths.numpy())
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-4 * scale, np.abs(got - want).max() / scale
    assert np.abs(got - float_logits).max() > 1e-3 * scale  # the float model is not what was exported
    # the job's test predictions and accuracy are the exported graph's
    pred, labels = load_predictions(root / "qat" / "predictions.npz")["test"]
    assert_same_class(pred, got)
    assert metrics["accuracy"]["test"] == np.mean(pred == labels)

    def cross_entropy(logits):
        return torch.nn.functional.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(labels).long())

    loss_q, loss_f = cross_entropy(want).item(), cross_entropy(float_logits).item()
    assert abs(metrics["loss"]["test"] - loss_q) < 0.05 * abs(loss_f - loss_q)  # the quantised model's loss
    # validation ran quantised: the chosen checkpoint's recorded val accuracy is the quantised model's
    val = torch.from_numpy(data["val"].inputs), torch.from_numpy(data["val"].lengths)
    with torch.no_grad():
        val_acc = (model(*val).argmax(-1).numpy() == data["val"].labels).mean()
    assert metrics["accuracy"]["val"] == val_acc
    assert metrics["hparams"]["optim"]["qat"] == "int8" and metrics["stage"] == "continue"


def test_qat_model_file_has_a_float_models_keys_and_float_weights(runs):
    _, root, _, _ = runs
    a = torch.load(root / "float" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(root / "qat" / "model.pt", weights_only=True)["state_dict"]
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
    w = b["decoder.weight"].numpy()
    assert not np.array_equal(w, dequantised(w, 8))  # the float masters, not their quantised values


def test_off_leaves_the_recorded_hyper_parameters_unchanged(runs):
    _, _, float_metrics, _ = runs
    assert "qat" not in float_metrics["hparams"]["optim"]
    assert "qat" not in parse_hparams({}).to_dict()["optim"]
    assert parse_hparams({"optim": {"qat": "none"}}).to_dict() == parse_hparams({}).to_dict()
    assert parse_hparams({"optim": {"qat": "int16"}}).to_dict()["optim"]["qat"] == "int16"
    c = yaml.safe_load((ROOT / "config.yaml").read_text())
    plan = grid.Plan(c)
    assert all("qat" not in json.loads(plan.hparams(t, h))["optim"] for t in c["tasks"] for h in ("train", "retrain"))


@pytest.mark.parametrize("value", ["int4", "INT8", "fp16", 8, True])
def test_bad_qat_value_is_refused_naming_key_and_value(value):
    with pytest.raises(ValueError, match=rf"optim\.qat.*{value!r}"):
        parse_hparams({"optim": {"qat": value}})
    c = yaml.safe_load((ROOT / "config.yaml").read_text())
    c["retrain"]["optim"]["qat"] = value
    with pytest.raises(ValueError, match=rf"retraining.*optim\.qat.*{value!r}"):
        check_config(c, grid.Plan(c))
    with pytest.raises(ValueError, match=rf"optim\.qat={value!r}"):
        qat.enable(random_model("linear_batch_mean"), value)
