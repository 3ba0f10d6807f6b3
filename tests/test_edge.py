"""The edge model: int8 / int16 weight export against a plain numpy reference of the same arithmetic, the C step
(compiled with the system compiler) against onnxruntime, and the precision bookkeeping."""

import shutil
import subprocess

import numpy as np
import onnx
import pytest
from numerics import assert_same_class
from onnx import numpy_helper
from test_deploy import KINDS, random_model, sequences

from dssbt.checkpoint import save_model
from dssbt.cli import main
from dssbt.deploy.cexport import export_c
from dssbt.deploy.export import export_onnx
from dssbt.deploy.predict import OnnxStream
from dssbt.deploy.quant import model_bytes, quantise_rows
from dssbt.deploy.stream import real_step_params
from dssbt.reduction.apply import reduce_model

# ----- a plain numpy reference of the quantised step (own quantisation, own arithmetic) ----------------------------


def ref_quant(w, bits):
    """Per-row symmetric: q = round(w / s), s = max|w_row| / (2^(b-1) - 1)."""
    qmax = {8: 127, 16: 32767}[bits]
    s = np.abs(w).max(1) / qmax
    s[s == 0] = 1.0
    s = s.astype(np.float32)
    return np.round(w / s[:, None].astype(np.float64)).astype(np.int64), s


def ref_weight(w, bits):
    if bits is None:
        return w.astype(np.float32)
    q, s = ref_quant(w, bits)
    return q.astype(np.float32) * s[:, None]


def ref_norm(n, x):
    if n.kind == "layer":
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + n.eps) * n.weight + n.bias
    return x * n.weight + n.bias


def ref_run(p, x, bits, fp16_ssm=False):
    """Logits after the last step (float64 arithmetic on float32-stored parameters). x (B, L) ids or pixels."""
    from scipy.special import erf

    f32 = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731
    r16 = lambda a: a.astype(np.float16).astype(np.float64) if fp16_ssm else f32(a)  # noqa: E731
    B, L = x.shape[:2]
    enc = ref_weight(p.enc_weight, bits).astype(np.float64)
    states = [np.zeros((B, lay.N), complex)[:, None].repeat(p.H, 1) for lay in p.layers]
    pool = np.zeros((B, p.H))
    for t in range(L):
        h = enc[x[:, t]] if p.encoder == "embedding" else x[:, t, None] @ enc.T + f32(p.enc_bias)
        for i, lay in enumerate(p.layers):
            z = ref_norm(lay.norm, h) if p.prenorm else h
            lam = r16(lay.Lambda_bar.real) + 1j * r16(lay.Lambda_bar.imag)
            bb = r16(lay.B_bar.real) + 1j * r16(lay.B_bar.imag)
            cc = r16(lay.C.real) + 1j * r16(lay.C.imag)
            states[i] = lam * states[i] + bb * z[..., None]
            y = (cc * states[i]).real.sum(-1) + r16(lay.D) * z
            if p.activation == "gelu_tanh":
                y = 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y**3)))
            else:
                y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
            o = y @ ref_weight(lay.out_weight, bits).astype(np.float64).T + f32(lay.out_bias)
            if lay.glu:
                o = o[:, : p.H] / (1 + np.exp(-o[:, p.H :]))
            h = h + o
            if not p.prenorm:
                h = ref_norm(lay.norm, h)
        if p.final_norm is not None:
            h = ref_norm(p.final_norm, h)
        if p.pool == "mean":
            pool += h
            h = pool / (t + 1)
    return h @ ref_weight(p.dec_weight, bits).astype(np.float64).T + f32(p.dec_bias)


def test_quantise_rows_against_the_definition():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 9)) * rng.uniform(0.01, 3, (6, 1))
    w[2] = 0.0
    for bits, qmax in ((8, 127), (16, 32767)):
        q, s = quantise_rows(w, bits)
        assert q.dtype == (np.int8 if bits == 8 else np.int16) and s.dtype == np.float32
        rq, rs = ref_quant(w, bits)
        np.testing.assert_array_equal(q, rq)
        np.testing.assert_array_equal(s, rs)
        nz = np.abs(w).max(1) > 0
        assert np.all(np.abs(q[nz]).max(1) == qmax)  # every nonzero row uses the full range
        assert np.all(np.abs(w - q * s[:, None].astype(np.float64)) <= s[:, None] / 2 * (1 + 1e-6))
        assert s[2] == 1.0 and not q[2].any()


@pytest.mark.parametrize("weights, bits", [("int8", 8), ("int16", 16), ("fp32", None)])
@pytest.mark.parametrize("kind", list(KINDS))
def test_quantised_onnx_equals_numpy_reference(kind, weights, bits, tmp_path):
    model = reduce_model(random_model(kind), [5, 2], kernel_length=64)[0].eval()
    p = real_step_params(model)
    info = export_onnx(model, tmp_path / "m.onnx", weights=weights)
    x = sequences(model, 3, 25).numpy()
    got = OnnxStream(tmp_path / "m.onnx").run(x)
    ref = ref_run(p, x, bits)
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= 2e-5 * scale, (kind, weights, np.abs(got - ref).max() / scale)
    assert_same_class(got.argmax(-1), ref)
    if bits is not None:  # the graph stores the reference's integers and scales
        inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(tmp_path / "m.onnx").graph.initializer}
        q, s = ref_quant(p.dec_weight, bits)
        np.testing.assert_array_equal(inits["decoder.weight"], q)
        assert inits["decoder.weight"].dtype == (np.int8 if bits == 8 else np.int16)
        np.testing.assert_array_equal(inits["decoder.weight.scale"][:, 0], s)
        # the quantisation error is real (int8) but small next to the logits
        full = ref_run(p, x, None)
        err = np.abs(ref - full).max() / np.abs(full).max()
        assert err > 0 and err < (0.1 if bits == 8 else 1e-3)
    # bytes: integers + a float scale per row for the linear maps, float32 for the rest, counted directly
    nbytes = {None: 4, 16: 2, 8: 1}[bits]
    lin = [(p.enc_weight, p.enc_bias), (p.dec_weight, p.dec_bias)] + [(la.out_weight, la.out_bias) for la in p.layers]
    expect = sum(
        w.size * nbytes + (0 if bits is None else 4 * w.shape[0]) + (0 if b is None else 4 * b.size) for w, b in lin
    )
    for la in p.layers:
        expect += 4 * (6 * la.N * p.H + p.H + 2 * p.H)
    if p.final_norm is not None:
        expect += 8 * p.H
    assert info["model_bytes"] == expect == model_bytes(p, weights)


def test_fp16_ssm_parameters_equal_numpy_reference(tmp_path):
    model = random_model("embedding_layer_mean")
    p = real_step_params(model)
    info = export_onnx(model, tmp_path / "m.onnx", weights="int8", ssm="fp16")
    assert info["ssm_precision"] == "fp16"
    x = sequences(model, 3, 25).numpy()
    got = OnnxStream(tmp_path / "m.onnx").run(x)
    ref = ref_run(p, x, 8, fp16_ssm=True)
    assert np.abs(got - ref).max() <= 2e-5 * np.abs(ref).max()
    assert np.abs(ref - ref_run(p, x, 8)).max() > 0  # the rounding changes the logits


def test_bad_precision_is_refused_naming_it(tmp_path):
    with pytest.raises(ValueError, match="'int4' is not one of"):
        export_onnx(random_model("embedding_layer_mean"), tmp_path / "m.onnx", weights="int4")
    with pytest.raises(ValueError, match="SSM precision 'bf16'"):
        export_onnx(random_model("embedding_layer_mean"), tmp_path / "m.onnx", ssm="bf16")


# ----- the C step against onnxruntime -----------------------------------------------------------------------------

DRIVER = r"""
#include <stdio.h>
#include "model.h"
/* stdin: per sequence its length L, then L inputs (token ids, or DSSBT_D_INPUT floats each); stdout: final logits */
int main(void) {
    static float state[DSSBT_STATE_FLOATS];
    float logits[DSSBT_N_CLASSES];
    long L;
    while (scanf("%ld", &L) == 1) {
        dssbt_reset(state);
        for (long t = 0; t < L; ++t) {
#if DSSBT_TOKENS
            long tok;
            if (scanf("%ld", &tok) != 1 || dssbt_step(state, tok, logits) != 0) return 3;
#else
            float x[DSSBT_D_INPUT];
            for (int j = 0; j < DSSBT_D_INPUT; ++j) if (scanf("%f", &x[j]) != 1) return 4;
            if (dssbt_step(state, x, logits) != 0) return 3;
#endif
        }
        for (int k = 0; k < DSSBT_N_CLASSES; ++k) printf("%.9e%c", logits[k], k + 1 < DSSBT_N_CLASSES ? ' ' : '\n');
    }
    return 0;
}
"""


def compile_driver(folder):
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc is not None, "no C compiler on PATH (cc / gcc): the C export test needs one"
    (folder / "driver.c").write_text(DRIVER)
    exe = folder / "driver"
    flags = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic"]
    subprocess.run([cc, *flags, "-o", str(exe), str(folder / "driver.c"), str(folder / "model.c"), "-lm"], check=True)
    return exe


def c_run(exe, x, lengths):
    lines = []
    for i in range(len(x)):
        vals = x[i, : lengths[i]]
        fmt = (lambda v: str(int(v))) if vals.dtype.kind == "i" else (lambda v: f"{float(v):.9e}")
        lines.append(f"{lengths[i]} " + " ".join(fmt(v) for v in vals.ravel()))
    out = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True).stdout
    return np.array([[float(v) for v in ln.split()] for ln in out.strip().splitlines()])


@pytest.mark.parametrize("weights", ["fp32", "int8"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_c_step_equals_onnxruntime_over_a_test_split(kind, weights, tmp_path):
    model = reduce_model(random_model(kind), [5, 2], kernel_length=64)[0].eval()
    info = export_c(model, tmp_path, weights)
    export_onnx(model, tmp_path / "m.onnx", weights=weights)
    exe = compile_driver(tmp_path)
    x = sequences(model, 16, 40).numpy()
    lengths = np.random.default_rng(3).integers(1, 41, 16)
    got = c_run(exe, x, lengths)
    ref = OnnxStream(tmp_path / "m.onnx").run(x, lengths)
    # bound: float32 arithmetic in another order, 40 steps: 1e-5 of the largest logit
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max(), np.abs(got - ref).max() / np.abs(ref).max()
    assert_same_class(got.argmax(-1), ref)
    H, orders = model.cfg.d_model, [5, 2]
    assert info["ram_bytes"] == 4 * (2 * H * sum(orders) + (H + 1 if model.cfg.pool == "mean" else 0))
    assert info["flash_bytes"] == model_bytes(real_step_params(model), weights)


def test_c_step_refuses_a_token_out_of_range(tmp_path):
    model = random_model("embedding_layer_mean")
    export_c(model, tmp_path)
    exe = compile_driver(tmp_path)
    r = subprocess.run([str(exe)], input=f"2 3 {model.cfg.d_input}\n", capture_output=True, text=True)
    assert r.returncode == 3


def test_cli_export_format_c_prints_flash_and_ram(tmp_path, capsys):
    model = random_model("linear_batch_mean")
    save_model(tmp_path / "m.pt", model, {"task": "image", "l_max": 64})
    rc = main(
        [
            "export",
            "--model",
            str(tmp_path / "m.pt"),
            "--format",
            "c",
            "--weights",
            "int8",
            "--out",
            str(tmp_path / "c"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    H, N = model.cfg.d_model, model.cfg.d_state
    assert f"RAM {4 * (2 * H * N * 2 + H + 1)} bytes" in out
    assert f"flash {model_bytes(real_step_params(model), 'int8')} bytes" in out
    assert (tmp_path / "c" / "model.c").exists() and (tmp_path / "c" / "model.h").exists()
    src = (tmp_path / "c" / "model.c").read_text()
    assert "malloc" not in src and "static const int8_t" in src


def test_simulate_equals_the_numpy_reference_and_state_rounding_is_calibrated():
    from dssbt.deploy.quant import simulate, state_calibration

    model = random_model("linear_layer_last_postnorm")
    p = real_step_params(model)
    x = sequences(model, 4, 30).numpy()
    for weights, bits in (("fp32", None), ("int8", 8)):
        got, _ = simulate(p, x, weights=weights)
        ref = ref_run(p, x, bits)
        assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    got16, _ = simulate(p, x, ssm="fp16")
    np.testing.assert_allclose(got16, ref_run(p, x, None, fp16_ssm=True), rtol=1e-5, atol=1e-5)
    scales = state_calibration(p, x)
    # the scale is the largest |part| of each mode over the calibration run divided by 32767: a direct recomputation
    lam, bb = p.layers[0].Lambda_bar, p.layers[0].B_bar
    h = x[:, :, None] @ p.enc_weight.T[None] + p.enc_bias  # (B, L, H): layer 0's input (postnorm: no norm before)
    s = np.zeros((4,) + lam.shape, complex)
    peak = np.zeros(lam.shape)
    for t in range(30):
        s = lam * s + bb * h[:, t, :, None]
        peak = np.maximum(peak, np.maximum(abs(s.real), abs(s.imag)).max(0))
    np.testing.assert_allclose(scales[0], peak / 32767, rtol=1e-9)
    full, _ = simulate(p, x)
    i16, _ = simulate(p, x, state="int16", state_scales=scales)
    f16, _ = simulate(p, x, state="fp16")
    e16 = np.abs(i16 - full).max() / np.abs(full).max()
    assert 0 < e16 < 1e-3 and np.abs(f16 - full).max() > 0
    with pytest.raises(ValueError, match="needs state_scales"):
        simulate(p, x, state="int16")


# ----- the frontier's scores: LAST and top-energy budget allocations against a direct computation ---------------


def direct_mode_scores(model, which):
    """Per layer (H, N) the modes' H-infinity norms (last) or H2 energies (h2) of the ZOH system, computed here."""
    out = []
    for layer in model.dss_layers():
        ss = {k: v.numpy() for k, v in layer.ss_params().items()}
        lam, b, c, dt = ss["Lambda"][0], ss["B"][0], ss["C"][0], ss["dt"][:, None]
        lb = np.exp(dt * lam)
        bb = (lb - 1) / lam * b
        if which == "last":
            out.append(np.abs(c * bb) / (1 - np.abs(lb)))
        else:
            out.append(np.abs(c) ** 2 * np.abs(bb) ** 2 / (1 - np.abs(lb) ** 2))
    return out


def direct_allocation(scores, fraction, normalise):
    """Sort each channel's scores descending, sum the k-th over channels (energies: squared norms for LAST), LAST's
    s_k = e_k / sum_{j<=k} e_j if ``normalise``, then one state per layer plus the globally largest others."""
    energies = []
    for s in scores:
        e = (-np.sort(-s, axis=-1)) ** (2 if normalise else 1)
        e = e.sum(0)  # (N,)
        energies.append(e / np.cumsum(e) if normalise else e)
    total = sum(len(e) for e in energies)
    R = max(len(energies), int(np.floor(fraction * total + 0.5)))
    cand = sorted((-e[k], i, k) for i, e in enumerate(energies) for k in range(1, len(e)))
    orders = [1] * len(energies)
    for _, i, _ in cand[: R - len(energies)]:
        orders[i] += 1
    return orders


def scaled_model():
    """Three layers whose output scales differ by 100x (LAST's per-layer normalisation then matters)."""
    import torch

    model = random_model("embedding_layer_mean", layers=3, N=8, H=6)
    with torch.no_grad():
        model.dss_layers()[1].C.mul_(10.0)
        model.dss_layers()[2].C.mul_(0.1)
    return model


@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.1])
def test_last_and_top_energy_allocations_equal_a_direct_computation(fraction):
    from dssbt.orders import parse_order
    from dssbt.reduction.apply import ModelReducer

    model = scaled_model()
    red = ModelReducer(model, "discrete")
    spec = parse_order(f"budget:{fraction}")
    last = red.choose_orders(spec, "last")
    assert last["layer_orders"] == direct_allocation(direct_mode_scores(model, "last"), fraction, True)
    assert last["allocation"] == "last" and sum(last["layer_orders"]) == last["kept"]
    h2 = red.choose_orders(spec, "h2energy")["layer_orders"]
    assert h2 == direct_allocation(direct_mode_scores(model, "h2"), fraction, False)
    assert red.choose_orders(spec)["allocation"] == "hsv"


def test_last_normalisation_differs_from_the_plain_energy_ranking():
    """The per-layer normalisation is what makes LAST LAST: on layers of very different scale the plain global
    ranking of the same H-infinity energies starves the small layer, LAST does not."""
    model = scaled_model()
    scores = direct_mode_scores(model, "last")
    plain = direct_allocation(scores, 0.25, False)
    from dssbt.orders import parse_order
    from dssbt.reduction.apply import ModelReducer

    last = ModelReducer(model, "discrete").choose_orders(parse_order("budget:0.25"), "last")["layer_orders"]
    assert last != plain and last[2] > plain[2]


def test_last_reduction_keeps_each_channels_modes_of_largest_hinf_norm():
    from dssbt.reduction.apply import reduce_model

    model = scaled_model()
    reduced, report = reduce_model(model, [3, 5, 2], method="last", kernel_length=32)
    scores = direct_mode_scores(model, "last")
    for i, (layer, r) in enumerate(zip(reduced.dss_layers(), [3, 5, 2])):
        kept = np.sort(np.argsort(-scores[i], axis=-1)[:, :r], axis=-1)  # (H, r)
        full = model.dss_layers()[i].ss_params()["Lambda"].numpy()[0]
        np.testing.assert_allclose(
            layer.ss_params()["Lambda"].numpy()[0], np.take_along_axis(full, kept, -1), rtol=1e-6
        )


def test_allocation_other_than_hsv_needs_a_budget(tmp_path):
    model = scaled_model()
    save_model(tmp_path / "m.pt", model, {"task": "x"})
    out = str(tmp_path / "o.json")
    assert (
        main(["orders", "--model", str(tmp_path / "m.pt"), "--spec", "tol:0.1", "--allocation", "last", "--out", out])
        == 2
    )
    assert (
        main(
            ["orders", "--model", str(tmp_path / "m.pt"), "--spec", "budget:0.5", "--allocation", "last", "--out", out]
        )
        == 0
    )
    import json

    assert json.loads((tmp_path / "o.json").read_text())["allocation"] == "last"


def test_compress_table_with_several_methods_pairs_each_with_bt_by_seed():
    import pandas as pd
    from scipy import stats

    from dssbt.compress import markdown, table

    rng = np.random.default_rng(0)
    rows = []
    for seed in range(5):
        rows.append(
            dict(
                task="image",
                seed=seed,
                variant="plain",
                method="bt",
                keep=1.0,
                kind="pretrained",
                accuracy=90.0,
                states=100,
                epochs=3,
            )
        )
        for method in ("bt", "last"):
            for kind in ("reduced", "retrained"):
                rows.append(
                    dict(
                        task="image",
                        seed=seed,
                        variant="plain",
                        method=method,
                        keep=0.25,
                        kind=kind,
                        accuracy=float(rng.uniform(50, 90)),
                        states=25,
                        epochs=4,
                    )
                )
    pts = pd.DataFrame(rows)
    tab = table(pts)
    assert list(tab["method"]) == ["bt", "last"]
    r = tab[tab.method == "last"].iloc[0]
    for kind, prefix in (("retrained", "vs_bt"), ("reduced", "vs_bt_reduced")):
        a = pts[(pts.method == "last") & (pts.kind == kind)].sort_values("seed")["accuracy"].to_numpy()
        b = pts[(pts.method == "bt") & (pts.kind == kind)].sort_values("seed")["accuracy"].to_numpy()
        d = a - b
        lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        assert r[f"{prefix}_diff"] == pytest.approx(d.mean()) and r[f"{prefix}_n_pairs"] == 5
        assert (r[f"{prefix}_ci_low"], r[f"{prefix}_ci_high"]) == pytest.approx((lo, hi))
    assert np.isnan(tab[tab.method == "bt"].iloc[0]["vs_bt_diff"])
    assert "| last |" in markdown(tab)


def test_deploy_measure_of_an_int8_graph_reports_its_own_accuracy_and_bytes(tmp_path):
    import json

    from test_deploy import prepared_listops

    from dssbt.deploy.table import read_rows

    split = prepared_listops(tmp_path / "data")
    model = random_model("embedding_layer_mean")
    save_model(tmp_path / "m.pt", model, {"task": "listops", "l_max": 25, "seed": 0, "init": "skew_hippo"})
    (tmp_path / "metrics.json").write_text(json.dumps({"accuracy": {"test": 0.25}, "init": "skew_hippo"}))
    onnx_path = str(tmp_path / "m_int8.onnx")
    assert main(["export", "--model", str(tmp_path / "m.pt"), "--out", onnx_path, "--weights", "int8"]) == 0
    args = ["deploy-measure", "--model", str(tmp_path / "m.pt"), "--onnx", onnx_path, "--data", str(tmp_path / "data")]
    args += ["--metrics", str(tmp_path / "metrics.json"), "--run", "pretrain", "--subset", "2", "--steps", "5"]
    assert main([*args, "--repeats", "1", "--out", str(tmp_path / "row.json")]) == 0
    row = json.loads((tmp_path / "row.json").read_text())
    # the int8 graph's accuracy over the whole test split (6 sequences), from the numpy reference's predictions
    ref = np.stack(
        [ref_run(real_step_params(model), split.inputs[i : i + 1, :ln], 8)[0] for i, ln in enumerate(split.lengths)]
    )
    assert row["subset"] == 6 and row["accuracy_test"] == pytest.approx(float((ref.argmax(-1) == split.labels).mean()))
    assert row["weights"] == "int8" and row["model_bytes"] == model_bytes(real_step_params(model), "int8")
    (tmp_path / "run").mkdir()
    df = read_rows([tmp_path / "row.json"])
    assert list(df["weights"]) == ["int8"] and list(df["model_bytes"]) == [row["model_bytes"]]
