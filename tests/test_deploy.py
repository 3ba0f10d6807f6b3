"""Deployment: the exported ONNX step against the model's convolution mode on every prefix, the fused step against
DSS.step and convolution mode, predict against the model's own forward on the same input, deploy-measure rows."""

import json
import re

import numpy as np
import pytest
import torch
from needs import missing
from numerics import assert_same_class

from dssbt.checkpoint import save_model
from dssbt.cli import main
from dssbt.data.prepared import Split, save_prepared
from dssbt.deploy import ckernel
from dssbt.deploy.export import export_onnx, load_description
from dssbt.deploy.predict import OnnxStream, encode_input
from dssbt.deploy.stream import FusedStream, real_step_params
from dssbt.model import ModelConfig, S4Model
from dssbt.reduction.apply import reduce_model

VOCAB = ["<pad>", "<unk>", "X", "[MAX", "[MIN", "[MED", "[SM"] + [str(d) for d in range(10)]

KINDS = {
    # listops-like: token ids, layer norm, mean pooling, GLU
    "embedding_layer_mean": dict(d_input=len(VOCAB), encoder="embedding", norm="layer", pool="mean", output="glu"),
    # image-like: pixels, batch norm, mean pooling
    "linear_batch_mean": dict(d_input=1, encoder="linear", norm="batch", pool="mean", output="glu"),
    # postnorm, last pooling, linear output map
    "linear_layer_last_postnorm": dict(
        d_input=1, encoder="linear", norm="layer", pool="last", output="linear", prenorm=False
    ),
    "embedding_batch_last": dict(d_input=len(VOCAB), encoder="embedding", norm="batch", pool="last", output="glu"),
}


def random_model(kind: str, seed: int = 0, N: int = 8, H: int = 12, layers: int = 2) -> S4Model:
    torch.manual_seed(seed)
    m = S4Model(ModelConfig(d_output=5, d_model=H, d_state=N, n_layers=layers, **KINDS[kind]))
    with torch.no_grad():
        for mod in m.modules():  # trained-looking norms: batch statistics and affine weights away from 0/1
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.normal_(0, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
            if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.LayerNorm)):
                mod.weight.normal_(1.0, 0.2)
                mod.bias.normal_(0.0, 0.2)
        for layer in m.dss_layers():  # a spread of time scales, as after training
            layer.log_dt.copy_(torch.linspace(np.log(0.01), np.log(0.5), H))
    return m.eval()


def sequences(model: S4Model, B: int, L: int, seed: int = 1) -> torch.Tensor:
    """Real-looking inputs: ListOps-like token ids, or smooth pixel rows with edges (normalised)."""
    g = torch.Generator().manual_seed(seed)
    if model.cfg.encoder == "embedding":
        return torch.randint(2, len(VOCAB), (B, L), generator=g)
    t = torch.arange(L, dtype=torch.float32)
    rows = torch.sin(t[None] * torch.rand(B, 1, generator=g) * 0.5) > 0.3
    return (rows.float() - 0.3) / 0.45 + 0.05 * torch.randn(B, L, generator=g)


def variants(kind: str) -> dict[str, S4Model]:
    full = random_model(kind)
    return {
        "full": full,
        "reduced_r3": reduce_model(full, 3, kernel_length=64)[0].eval(),
        "reduced_layers_5_2": reduce_model(full, [5, 2], kernel_length=64)[0].eval(),
    }


@pytest.mark.parametrize("kind", list(KINDS))
def test_onnx_step_equals_convolution_mode_on_every_prefix(kind, tmp_path):
    for name, model in variants(kind).items():
        path = tmp_path / f"{name}.onnx"
        info = export_onnx(model, path, {"task": "synthetic"})
        assert info["layer_orders"] == model.cfg.orders_by_layer()
        B, L = 3, 40
        x = sequences(model, B, L)
        stream = OnnxStream(path)
        stream.reset(B)
        worst = 0.0
        for t in range(L):
            logits = stream.step(x[:, t].numpy())
            with torch.no_grad():
                ref = model(x[:, : t + 1]).numpy()
            worst = max(worst, np.linalg.norm(logits - ref) / np.linalg.norm(ref))
            assert_same_class(logits.argmax(-1), ref)  # argmax of another implementation: up to ties
        assert worst <= 1e-5, (kind, name, worst)


def test_onnx_run_with_lengths_equals_forward_with_lengths(tmp_path):
    model = random_model("embedding_layer_mean")
    export_onnx(model, tmp_path / "m.onnx")
    x = sequences(model, 4, 30)
    lengths = torch.tensor([30, 7, 19, 1])
    x[torch.arange(30)[None] >= lengths[:, None]] = 0  # padding after each sequence
    got = OnnxStream(tmp_path / "m.onnx").run(x.numpy(), lengths.numpy())
    with torch.no_grad():
        ref = model(x, lengths).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_fused_step_equals_unfused_step_and_convolution_mode_float64(kind, backend):
    if backend == "c" and not ckernel.available():
        missing(f"the C step does not build here: {ckernel.error()}")
    for name, model in variants(kind).items():
        model = model.double()
        B, L = 2, 30
        x = sequences(model, B, L)
        x = x if model.cfg.encoder == "embedding" else x.double()
        fused = FusedStream(real_step_params(model), dtype=torch.float64, backend=backend)
        assert fused.backend == backend
        fs, us = fused.init_state(B), model.init_state(B)
        us["sum"] = us["sum"].double()  # S4Model.init_state makes the pooling sum float32 whatever the model's dtype
        for t in range(L):
            got = fused.step(x[:, t], fs)
            unfused = model.step(x[:, t], us)
            with torch.no_grad():
                ref = model(x[:, : t + 1])
            scale = ref.abs().max()
            assert (got - ref).abs().max() <= 1e-10 * scale, (kind, name, t)
            assert (unfused - ref).abs().max() <= 1e-10 * scale, (kind, name, t)


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_fused_step_float32_is_close_to_convolution_mode(backend):
    if backend == "c" and not ckernel.available():
        missing(f"the C step does not build here: {ckernel.error()}")
    model = random_model("linear_batch_mean")
    x = sequences(model, 1, 50)
    fused = FusedStream(real_step_params(model), backend=backend)
    st = fused.init_state(1)
    for t in range(50):
        got = fused.step(x[:, t], st)
    with torch.no_grad():
        ref = model(x)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize(
    "cfg_change, message",
    [
        (dict(bidirectional=True), r"bidirectional.*needs the inputs after t \(the future"),
        (dict(dual=True), r"dual .*two whole documents"),
    ],
)
def test_bidirectional_and_dual_models_are_refused_saying_why(cfg_change, message, tmp_path):
    model = S4Model(
        ModelConfig(d_input=5, d_output=2, encoder="embedding", d_model=8, d_state=4, n_layers=1, **cfg_change)
    )
    with pytest.raises(ValueError, match=message):
        export_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    save_model(tmp_path / "m.pt", model, {"task": "x"})
    assert main(["export", "--model", str(tmp_path / "m.pt"), "--out", str(tmp_path / "m.onnx")]) == 2


# ----- predict on saved test inputs -------------------------------------------------------------------------------


def prepared_listops(folder, n=6, L=25):
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, L + 1, n)
    ids = np.zeros((n, L), np.int64)
    for i, ln in enumerate(lengths):
        ids[i, :ln] = rng.integers(2, len(VOCAB), ln)
    split = Split(inputs=ids, lengths=lengths.astype(np.int64), labels=rng.integers(0, 5, n))
    meta = {
        "task": "listops",
        "encoder": "embedding",
        "d_input": len(VOCAB),
        "d_output": 5,
        "l_max": L,
        "dual": False,
        "vocab": VOCAB,
    }
    save_prepared(folder, {"train": split, "val": split, "test": split}, meta)
    return split


def prepared_image(folder, n=4, side=8):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (n, side * side)).astype(np.uint8)
    mean, std = 0.4, 0.3
    x = ((gray.astype(np.float64) / 255.0 - mean) / std).astype(np.float32)
    split = Split(inputs=x, lengths=np.full(n, side * side), labels=rng.integers(0, 5, n))
    meta = {
        "task": "image",
        "encoder": "linear",
        "d_input": 1,
        "d_output": 5,
        "l_max": side * side,
        "dual": False,
        "vocab": None,
        "normalisation": {"mean": mean, "std": std, "scale": 255.0},
    }
    save_prepared(folder, {"train": split, "val": split, "test": split}, meta)
    return split, gray


def predicted(out: str) -> str:
    return re.search(r"predicted class: (\S+)", out).group(1)


def probabilities(out: str) -> np.ndarray:
    line = next(ln for ln in out.splitlines() if ln.startswith("probabilities:"))
    return np.array([float(p.split(": ")[1]) for p in line.split(": ", 1)[1].split(", ")])


def test_predict_listops_expression_prints_the_class_of_the_models_forward(tmp_path, capsys):
    split = prepared_listops(tmp_path / "data")
    model = random_model("embedding_layer_mean")
    save_model(tmp_path / "m.pt", model, {"task": "listops", "l_max": 25})
    assert (
        main(
            [
                "export",
                "--model",
                str(tmp_path / "m.pt"),
                "--out",
                str(tmp_path / "m.onnx"),
                "--data",
                str(tmp_path / "data"),
            ]
        )
        == 0
    )
    for i in range(len(split)):
        ln = int(split.lengths[i])
        expr = " ".join(VOCAB[t] for t in split.inputs[i, :ln]).replace("X", "]")  # the raw LRA form
        (tmp_path / "x.txt").write_text(expr + "\n")
        capsys.readouterr()
        assert (
            main(["predict", "--onnx", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "x.txt"), "--every", "5"])
            == 0
        )
        out = capsys.readouterr().out
        with torch.no_grad():
            logits = model(torch.from_numpy(split.inputs[i : i + 1]), torch.tensor([ln]))
        assert_same_class(int(predicted(out)), logits.numpy())
        np.testing.assert_allclose(probabilities(out), torch.softmax(logits, -1)[0].numpy(), atol=2e-4)
        assert len(re.findall(r"after \d+ tokens: class", out)) == (ln - 1) // 5
    # the expression given on the command line is the same input
    assert main(["predict", "--onnx", str(tmp_path / "m.onnx"), "--input", expr]) == 0
    assert_same_class(int(predicted(capsys.readouterr().out)), logits.numpy())


def test_predict_image_file_prints_the_class_of_the_models_forward(tmp_path, capsys):
    from PIL import Image

    split, gray = prepared_image(tmp_path / "data")
    model = random_model("linear_batch_mean")
    save_model(tmp_path / "m.pt", model, {"task": "image", "l_max": 64})
    assert (
        main(
            [
                "export",
                "--model",
                str(tmp_path / "m.pt"),
                "--out",
                str(tmp_path / "m.onnx"),
                "--data",
                str(tmp_path / "data"),
            ]
        )
        == 0
    )
    for i in range(len(split)):
        Image.fromarray(gray[i].reshape(8, 8)).save(tmp_path / "x.png")
        np.testing.assert_array_equal(
            encode_input(load_description(tmp_path / "m.onnx"), str(tmp_path / "x.png"))[:, 0], split.inputs[i]
        )
        capsys.readouterr()
        assert main(["predict", "--onnx", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "x.png")]) == 0
        with torch.no_grad():
            logits = model(torch.from_numpy(split.inputs[i : i + 1]))
        assert_same_class(int(predicted(capsys.readouterr().out)), logits.numpy())
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "bad.png")
    assert main(["predict", "--onnx", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "bad.png")]) == 2
    assert "is 9x9, task image reads 8x8" in capsys.readouterr().err


def test_export_json_describes_inputs_states_and_pooling(tmp_path):
    prepared_listops(tmp_path / "data")
    model = reduce_model(random_model("embedding_layer_mean"), [5, 2], kernel_length=32)[0]
    save_model(tmp_path / "m.pt", model, {"task": "listops", "l_max": 25})
    assert (
        main(
            [
                "export",
                "--model",
                str(tmp_path / "m.pt"),
                "--out",
                str(tmp_path / "m.onnx"),
                "--data",
                str(tmp_path / "data"),
            ]
        )
        == 0
    )
    info = json.loads((tmp_path / "m.json").read_text())
    assert info["task"] == "listops" and info["pool"] == "mean" and info["input"]["kind"] == "token_ids"
    assert info["input"]["vocab"] == VOCAB and info["classes"] == ["0", "1", "2", "3", "4"]
    shapes = {s["name"]: s["shape"] for s in info["state"]}
    assert shapes == {
        "state0_re": ["batch", 12, 5],
        "state0_im": ["batch", 12, 5],
        "state1_re": ["batch", 12, 2],
        "state1_im": ["batch", 12, 2],
        "pool_sum": ["batch", 12],
        "pool_count": ["batch", 1],
    }
    assert info["state_bytes_per_sequence"] == 4 * (2 * 12 * 7 + 12 + 1)


def test_deploy_measure_writes_a_row(tmp_path):
    prepared_listops(tmp_path / "data")
    model = random_model("embedding_layer_mean")
    save_model(tmp_path / "m.pt", model, {"task": "listops", "l_max": 25, "seed": 0, "init": "skew_hippo"})
    (tmp_path / "metrics.json").write_text(json.dumps({"accuracy": {"test": 0.25}, "init": "skew_hippo"}))
    assert main(["export", "--model", str(tmp_path / "m.pt"), "--out", str(tmp_path / "m.onnx")]) == 0
    assert (
        main(
            [
                "deploy-measure",
                "--model",
                str(tmp_path / "m.pt"),
                "--onnx",
                str(tmp_path / "m.onnx"),
                "--data",
                str(tmp_path / "data"),
                "--metrics",
                str(tmp_path / "metrics.json"),
                "--run",
                "pretrain",
                "--steps",
                "20",
                "--repeats",
                "2",
                "--out",
                str(tmp_path / "row.json"),
            ]
        )
        == 0
    )
    row = json.loads((tmp_path / "row.json").read_text())
    assert row["accuracy_test"] == 0.25 and row["subset"] == 6 and row["onnx_torch_agreement"] == 1.0
    assert row["onnx_accuracy_subset"] == row["torch_accuracy_subset"]
    assert all(v > 0 for v in row["latency_us"].values()) and set(row["latency_us"]) == {
        "onnxruntime",
        "torch_fused",
        "torch_step",
    }
    assert row["onnx_bytes"] == (tmp_path / "m.onnx").stat().st_size and row["run"] == "pretrain"


# ----- the deploy stage of the workflow ----------------------------------------------------------------------------


@pytest.mark.slow
def test_deploy_stage_on_the_tiny_grid_has_one_row_per_exported_model(tmp_path):
    import csv

    from test_workflow import TINY, copy_workflow, job_counts, snakemake

    wf = copy_workflow(tmp_path)
    (wf / "tiny.yaml").write_text(TINY.read_text())
    (wf / "deploy.yaml").write_text("deploy: {enabled: true, subset: 10, steps: 20, repeats: 1}\n")
    # a bidirectional task (pathfinder, bidirectional in config.yaml's task_settings) is left out by design
    (wf / "bidir.yaml").write_text("tasks: [listops, image, pathfinder]\n")
    counts = job_counts(wf, "deploy", "--configfile", "tiny.yaml", "deploy.yaml", "bidir.yaml")
    assert counts["export_onnx"] == counts["deploy_measure"] == 2 * 3  # 2 unidirectional tasks x (N, r=2 x 2 inits)
    dry = snakemake(wf, "-n", "deploy", "--configfile", "tiny.yaml", "deploy.yaml", "bidir.yaml").stdout
    assert "results/deploy/pathfinder" not in dry and "results/runs/pathfinder/seed0/pretrain/model.pt" not in dry
    assert "results/deploy/image/seed0/bt_init_r2/model.onnx" in dry
    # disabled (the default): `all` schedules no deploy job
    assert "export_onnx" not in job_counts(wf, "--configfile", "tiny.yaml")

    snakemake(wf, "deploy", "--cores", "2", "--configfile", "tiny.yaml", "deploy.yaml")
    rows = list(csv.DictReader((wf / "results/tables/deploy.csv").open()))
    exported = sorted(
        p.parent.relative_to(wf / "results/deploy").as_posix() for p in (wf / "results/deploy").rglob("model.onnx")
    )
    assert len(rows) == len(exported) == 6
    assert sorted(f"{r['task']}/seed{r['seed']}/{r['run']}" for r in rows) == exported
    for r in rows:
        assert float(r["onnx_torch_agreement"]) == 1.0 and float(r["latency_onnxruntime_us"]) > 0
        assert 0 <= float(r["accuracy_test"]) <= 1
    assert (wf / "results/plots/deploy_pareto.png").stat().st_size > 0
    md = (wf / "results/tables/deploy.md").read_text()
    assert md.count("\n") == 2 + 6 and "| listops | 0 | BT-init | 2 |" in md


def test_tanh_gelu_models_export_the_tanh_approximation():
    """A model whose config says activation "gelu_tanh" (a field other code may add) gets the tanh form in both
    the ONNX graph and the fused step; torch's F.gelu(approximate="tanh") is the reference."""
    import types

    import onnxruntime as ort

    from dssbt.deploy.export import build_graph
    from dssbt.deploy.stream import activation_name

    assert activation_name(types.SimpleNamespace()) == "gelu"
    assert activation_name(types.SimpleNamespace(activation="gelu_tanh")) == "gelu_tanh"
    with pytest.raises(ValueError, match="activation 'relu' is not one of"):
        activation_name(types.SimpleNamespace(activation="relu"))
    model = random_model("linear_layer_last_postnorm")
    p = real_step_params(model)
    p.activation = "gelu_tanh"
    sess = ort.InferenceSession(build_graph(p).SerializeToString(), providers=["CPUExecutionProvider"])
    x = sequences(model, 2, 12)
    feed = {i.name: np.zeros([2 if d == "batch" else d for d in i.shape], np.float32) for i in sess.get_inputs()}
    # reference: the torch model with its GELU replaced by the tanh form, in convolution mode
    orig = torch.nn.functional.gelu
    try:
        torch.nn.functional.gelu = lambda v, approximate="none": orig(v, approximate="tanh")
        with torch.no_grad():
            ref = model(x).numpy()
    finally:
        torch.nn.functional.gelu = orig
    for t in range(12):
        feed["x"] = x[:, t : t + 1].numpy()
        out = sess.run(None, feed)
        feed.update({o.name[: -len("_out")]: v for o, v in zip(sess.get_outputs()[1:], out[1:])})
    np.testing.assert_allclose(out[0], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    fused = FusedStream(p)
    st = fused.init_state(2)
    for t in range(12):
        got = fused.step(x[:, t], st)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_predict_text_reads_characters_and_cuts_at_the_tasks_cut(tmp_path, capsys):
    chars = ["<pad>", "<unk>"] + list("etaoinshrdlu .,!")[: len(VOCAB) - 2]
    text = "the sun shines, hello there! a quiet day."  # 'q', 'y', 'w' ... are not in the vocabulary -> <unk>
    cut = 30
    ids = np.array([[chars.index(c) if c in chars else 1 for c in text[:cut]]], np.int64)
    split = Split(inputs=ids, lengths=np.array([cut]), labels=np.array([1]))
    meta = {
        "task": "text",
        "encoder": "embedding",
        "d_input": len(chars),
        "d_output": 5,
        "l_max": cut,
        "dual": False,
        "vocab": chars,
        "preprocessing": {"cut": cut},
    }
    save_prepared(tmp_path / "data", {"train": split, "val": split, "test": split}, meta)
    model = random_model("embedding_layer_mean")
    save_model(tmp_path / "m.pt", model, {"task": "text", "l_max": cut})
    assert (
        main(
            [
                "export",
                "--model",
                str(tmp_path / "m.pt"),
                "--out",
                str(tmp_path / "m.onnx"),
                "--data",
                str(tmp_path / "data"),
            ]
        )
        == 0
    )
    (tmp_path / "review.txt").write_text(text)
    encoded = encode_input(load_description(tmp_path / "m.onnx"), str(tmp_path / "review.txt"))
    np.testing.assert_array_equal(encoded, ids[0])
    capsys.readouterr()
    assert main(["predict", "--onnx", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "review.txt")]) == 0
    with torch.no_grad():
        logits = model(torch.from_numpy(ids))
    out = capsys.readouterr().out
    assert_same_class(int(predicted(out)), logits.numpy())
    assert f"{cut} tokens in" in out
