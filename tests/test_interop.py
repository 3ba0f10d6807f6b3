"""S4D (state-spaces/s4) <-> dssbt: kernels against S4D's own formula written out here, exact round trips, the
reduced state dict within BT's bound, and clear errors for the options that are not supported."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dssbt.cli import main
from dssbt.dss import DSS
from dssbt.interop import S4DOptions, dss_to_s4d, find_s4d_kernels, reduce_s4d_state_dict, s4d_to_dss

H, M = 4, 10


# ----- S4D's kernel, written out independently of dssbt (models/s4/s4d.py and SSMKernelDiag, disc zoh) -------------


def s4d_transform(x, name):
    """state-spaces/s4 param_transform."""
    return {
        "none": lambda v: v,
        "exp": np.exp,
        "relu": lambda v: np.maximum(v, 0) + 1e-4,
        "softplus": lambda v: np.log1p(np.exp(v)),
    }[name](x)


def s4d_minimal_kernel(sd, p, L):
    """K = 2 Re(sum_n C (exp(dtA) - 1) / A exp(dtA l)), A = -exp(log_A_real) + i A_imag (S4DKernel.forward)."""
    dt = np.exp(sd[p + "kernel.log_dt"].double().numpy())
    A = -np.exp(sd[p + "kernel.log_A_real"].double().numpy()) + 1j * sd[p + "kernel.A_imag"].double().numpy()
    C = torch.view_as_complex(sd[p + "kernel.C"].double().contiguous()).numpy()
    dtA = A * dt[:, None]
    W = C * (np.exp(dtA) - 1.0) / A
    return 2 * np.einsum("hn,hnl->hl", W, np.exp(dtA[..., None] * np.arange(L))).real, W, np.exp(dtA)


def s4d_ssm_kernel(sd, p, L, real_t="exp", imag_t="none", dt_t="exp"):
    """SSMKernelDiag.forward, disc zoh, channels 1: A = -T(A_real) - i T(A_imag), C <- B C, 2 Re(Vandermonde)."""
    dt = s4d_transform(sd[p + "kernel.inv_dt"].double().numpy(), dt_t)  # (H, 1)
    A = -s4d_transform(sd[p + "kernel.A_real"].double().numpy(), real_t) - 1j * s4d_transform(
        sd[p + "kernel.A_imag"].double().numpy(), imag_t
    )
    B = torch.view_as_complex(sd[p + "kernel.B"].double().contiguous()).numpy()[0]
    C = torch.view_as_complex(sd[p + "kernel.C"].double().contiguous()).numpy()[0]
    dtA = dt * A
    W = B * C * (np.exp(dtA) - 1.0) / A
    return 2 * np.einsum("hn,hnl->hl", W, np.exp(dtA[..., None] * np.arange(L))).real


def minimal_state_dict(seed=0, M=M, prefix="layer."):
    g = torch.Generator().manual_seed(seed)
    d = torch.float64
    return {
        prefix + "kernel.log_dt": torch.rand(H, generator=g, dtype=d) * (np.log(0.5) - np.log(0.05)) + np.log(0.05),
        prefix + "kernel.log_A_real": np.log(0.5) + 0.3 * torch.randn(H, M, generator=g, dtype=d),
        prefix + "kernel.A_imag": np.pi * torch.arange(M, dtype=d).repeat(H, 1)
        + 0.1 * torch.randn(H, M, generator=g, dtype=d),
        prefix + "kernel.C": torch.randn(H, M, 2, generator=g, dtype=d),
        prefix + "D": torch.randn(H, generator=g, dtype=d),
        prefix + "output_linear.0.weight": torch.randn(2 * H, H, 1, generator=g, dtype=d),
    }


def ssm_state_dict(seed=1, real_t="exp", imag_t="none", dt_t="exp"):
    g = torch.Generator().manual_seed(seed)
    d = torch.float64
    inv = {"exp": np.log, "none": lambda v: v, "relu": lambda v: v - 1e-4, "softplus": lambda v: np.log(np.expm1(v))}
    re = 0.5 * np.exp(0.3 * torch.randn(H, M, generator=g, dtype=d).numpy())
    im = np.pi * np.arange(1, M + 1) + 0.1 * torch.rand(H, M, generator=g, dtype=d).numpy()
    dt = np.exp(torch.rand(H, 1, generator=g, dtype=d).numpy() * (np.log(0.5) - np.log(0.05)) + np.log(0.05))
    return {
        "kernel.inv_dt": torch.tensor(inv[dt_t](dt)),
        "kernel.A_real": torch.tensor(inv[real_t](re)),
        "kernel.A_imag": torch.tensor(inv[imag_t](im)),
        "kernel.B": torch.randn(1, H, M, 2, generator=g, dtype=d),
        "kernel.C": torch.randn(1, H, M, 2, generator=g, dtype=d),
        "D": torch.randn(1, H, generator=g, dtype=d),
    }


def dssbt_kernel(ss, L):
    """dssbt's own layer, loaded with the converted parameters, in float64."""
    layer = DSS(H, ss["Lambda"].shape[-1]).double()
    layer.load_ss_params(ss["Lambda"][None], ss["B"][None], ss["C"][None], ss["D"], ss["dt"])
    with torch.no_grad():
        return layer.kernel(L)[0].numpy()


def test_minimal_s4d_kernel_equals_dssbt_kernel_of_converted_parameters():
    sd = minimal_state_dict()
    assert find_s4d_kernels(sd) == {"layer.": "minimal"}
    ss = s4d_to_dss(sd, "layer.", "minimal")
    K_s4d, _, _ = s4d_minimal_kernel(sd, "layer.", 300)
    np.testing.assert_allclose(dssbt_kernel(ss, 300), K_s4d, rtol=1e-10, atol=1e-12 * np.abs(K_s4d).max())


@pytest.mark.parametrize("transforms", [("exp", "none", "exp"), ("relu", "exp", "softplus"), ("none", "relu", "none")])
def test_ssm_diag_kernel_equals_dssbt_kernel_and_round_trip_is_exact(transforms):
    real_t, imag_t, dt_t = transforms
    sd = ssm_state_dict(real_t=real_t, imag_t=imag_t, dt_t=dt_t)
    opts = S4DOptions(real_transform=real_t, imag_transform=imag_t, dt_transform=dt_t)
    assert find_s4d_kernels(sd) == {"": "ssm"}
    ss = s4d_to_dss(sd, "", "ssm", opts)
    K = s4d_ssm_kernel(sd, "", 300, real_t, imag_t, dt_t)
    np.testing.assert_allclose(dssbt_kernel(ss, 300), K, rtol=1e-10, atol=1e-12 * np.abs(K).max())
    back = dss_to_s4d(ss, "", "ssm", opts, dtype=torch.float64)
    assert set(back) == set(sd)
    for k in sd:
        assert back[k].shape == sd[k].shape, k
        np.testing.assert_allclose(back[k].numpy(), sd[k].numpy(), rtol=1e-13, atol=1e-13, err_msg=k)


def test_minimal_round_trip_s4d_dssbt_s4d_is_exact():
    sd = minimal_state_dict()
    back = dss_to_s4d(s4d_to_dss(sd, "layer.", "minimal"), "layer.", "minimal", dtype=torch.float64)
    for k, v in back.items():
        np.testing.assert_allclose(v.numpy(), sd[k].numpy(), rtol=1e-14, atol=1e-15, err_msg=k)


def unit_circle_transfer(W, a, z):
    """Transfer function of K[l] = 2 Re(sum_n W_n a_n^l): sum_n W z/(z - a) + conj(W) z/(z - conj a). (H, Z)."""
    zz = z[None, :, None]
    return (W[:, None] * zz / (zz - a[:, None]) + np.conj(W[:, None]) * zz / (zz - np.conj(a[:, None]))).sum(-1)


class MinimalS4DKernel(nn.Module):
    """The parameter names and shapes of models/s4/s4d.py's S4DKernel + S4D (what must load the written file)."""

    def __init__(self, H, N):
        super().__init__()
        self.log_dt = nn.Parameter(torch.zeros(H, dtype=torch.float64))
        self.log_A_real = nn.Parameter(torch.zeros(H, N // 2, dtype=torch.float64))
        self.A_imag = nn.Parameter(torch.zeros(H, N // 2, dtype=torch.float64))
        self.C = nn.Parameter(torch.zeros(H, N // 2, 2, dtype=torch.float64))


class MinimalS4D(nn.Module):
    def __init__(self, H, N):
        super().__init__()
        self.D = nn.Parameter(torch.zeros(H, dtype=torch.float64))
        self.kernel = MinimalS4DKernel(H, N)
        self.output_linear = nn.Sequential(nn.Conv1d(H, 2 * H, 1, dtype=torch.float64))


@pytest.mark.parametrize("route", ["discrete", "continuous"])
def test_reduced_s4d_state_dict_loads_and_its_kernel_error_is_within_the_bt_bound(route, tmp_path):
    r = 4
    sd = minimal_state_dict(M=M)
    new, report = reduce_s4d_state_dict(sd, r, route=route)
    mod = nn.Module()
    mod.layer = MinimalS4D(H, 2 * r)
    mod.layer.output_linear[0].weight.data = sd["layer.output_linear.0.weight"]
    sd_conv = {k: v for k, v in new.items()}
    sd_conv["layer.output_linear.0.bias"] = torch.zeros(2 * H, dtype=torch.float64)
    mod.load_state_dict(sd_conv, strict=True)  # same keys, N/2 = r
    assert torch.equal(new["layer.D"], sd["layer.D"]) and torch.equal(
        new["layer.kernel.log_dt"], sd["layer.kernel.log_dt"]
    )
    _, W, a = s4d_minimal_kernel(sd, "layer.", 1)
    _, Wr, ar = s4d_minimal_kernel(new, "layer.", 1)
    z = np.exp(1j * np.linspace(-np.pi, np.pi, 4001))
    err = np.abs(unit_circle_transfer(W, a, z) - unit_circle_transfer(Wr, ar, z)).max(-1)  # (H,)
    bound = report["layer."]["bound"]
    if route == "discrete":  # BT's bound holds on the unit circle for the ZOH system
        assert np.all(err <= bound * (1 + 1e-6)), (err, bound)
        assert np.all(err > 0.02 * bound)  # not vacuous
    else:  # the continuous bound is on the imaginary axis; the discretised error is still of its size
        assert np.all(err <= 2 * bound), (err, bound)
    np.testing.assert_allclose(bound, 2 * np.sort(report["layer."]["hsv"], -1)[..., ::-1][..., r:].sum(-1), rtol=1e-10)


def test_reduce_s4d_cli_lists_kernels_and_keeps_the_wrapping(tmp_path, capsys):
    sd = {
        **minimal_state_dict(prefix="model.layers.0.layer."),
        **minimal_state_dict(seed=3, prefix="model.layers.1.layer."),
        "model.encoder.weight": torch.randn(H, 3, dtype=torch.float64),
    }
    torch.save({"state_dict": sd, "epoch": 7}, tmp_path / "s4d.pt")
    assert (
        main(["reduce-s4d", "--model", str(tmp_path / "s4d.pt"), "--order", "3", "--out", str(tmp_path / "out.pt")])
        == 0
    )
    out = capsys.readouterr().out
    assert "model.layers.0.layer." in out and "model.layers.1.layer." in out and "d_state = 6" in out
    payload = torch.load(tmp_path / "out.pt", weights_only=True)
    assert payload["epoch"] == 7 and set(payload["state_dict"]) == set(sd)
    assert payload["state_dict"]["model.layers.1.layer.kernel.C"].shape == (H, 3, 2)
    assert torch.equal(payload["state_dict"]["model.encoder.weight"], sd["model.encoder.weight"])


@pytest.mark.parametrize(
    "edit, opts, message",
    [
        (None, S4DOptions(disc="bilinear"), r"disc='bilinear' is not supported"),
        (None, S4DOptions(real_transform="sigmoid"), r"real_transform='sigmoid' is not supported"),
        ("channels", S4DOptions(), r"2 output channels; only channels=1"),
        ("dt_untied", S4DOptions(), r"dt_tie=False"),
        ("is_real", S4DOptions(), r"real-valued SSM kernel"),
        ("shared_A", S4DOptions(), r"n_ssm < H"),
    ],
)
def test_unsupported_s4d_options_are_rejected_naming_them(edit, opts, message):
    sd = ssm_state_dict()
    if edit == "channels":
        sd["kernel.C"] = torch.randn(2, H, M, 2, dtype=torch.float64)
    elif edit == "dt_untied":
        sd["kernel.inv_dt"] = torch.zeros(H, M, dtype=torch.float64)
    elif edit == "is_real":
        del sd["kernel.A_imag"]
    elif edit == "shared_A":
        sd["kernel.A_real"], sd["kernel.A_imag"] = sd["kernel.A_real"][:1], sd["kernel.A_imag"][:1]
        sd["kernel.B"] = sd["kernel.B"][:, :1]
    with pytest.raises(ValueError, match=message):
        reduce_s4d_state_dict(sd, 3, opts)


def test_no_s4d_kernel_and_bad_order_are_errors():
    with pytest.raises(ValueError, match="no S4D kernel found"):
        reduce_s4d_state_dict({"w": torch.zeros(2)}, 2)
    with pytest.raises(ValueError, match=r"1 <= r < N/2 = 10"):
        reduce_s4d_state_dict(minimal_state_dict(), 10)


# ----- Lightning checkpoints of state-spaces/s4's training script ---------------------------------------------------

FIXTURE = Path(__file__).parent / "fixtures" / "s4d_lightning.ckpt"  # written by fixtures/make_s4d_lightning_ckpt.py


class SSMKernelDiagShapes(nn.Module):
    """The parameter names and shapes of state-spaces/s4's SSMKernelDiag (channels 1, dt_tie, n_ssm = H)."""

    def __init__(self, H, N):
        super().__init__()
        self.inv_dt = nn.Parameter(torch.zeros(H, 1))
        self.A_real = nn.Parameter(torch.zeros(H, N // 2))
        self.A_imag = nn.Parameter(torch.zeros(H, N // 2))
        self.B = nn.Parameter(torch.zeros(1, H, N // 2, 2))
        self.C = nn.Parameter(torch.zeros(1, H, N // 2, 2))


class S4BlockShapes(nn.Module):
    def __init__(self, H, N):
        super().__init__()
        self.layer = nn.Module()
        self.layer.kernel = SSMKernelDiagShapes(H, N)
        self.layer.D = nn.Parameter(torch.zeros(1, H))
        self.output_linear = nn.Conv1d(H, 2 * H, 1, bias=False)


class SequenceModuleShapes(nn.Module):
    """What SequenceLightningModule builds from its config (the fixture's parameter layout)."""

    def __init__(self, config):
        super().__init__()
        m = config["model"]
        H, N = m["d_model"], m["layer"]["d_state"]
        self.encoder = nn.Sequential(nn.Linear(1, H))
        self.model = nn.Module()
        self.model.layers = nn.ModuleList()
        for _ in range(m["n_layers"]):
            block = nn.Module()
            block.layer = S4BlockShapes(H, N)
            block.norm = nn.Module()
            block.norm.weight = nn.Parameter(torch.ones(H))
            self.model.layers.append(block)
        self.decoder = nn.Sequential(nn.Module())
        self.decoder[0].output_transform = nn.Linear(H, 10, bias=False)


class DictConfigRef:
    """Stands for the class omegaconf.dictconfig.DictConfig that a Lightning checkpoint names in hparams_type."""


def lightning_style_load(path):
    """Lightning's load_from_checkpoint without Lightning: the module built from the saved hyper-parameters
    (hparams_name 'config'), the state dict loaded strictly. Only the class name of hparams_type is allowed."""
    with torch.serialization.safe_globals([(DictConfigRef, "omegaconf.dictconfig.DictConfig")]):
        ckpt = torch.load(path, weights_only=True)
    config = ckpt["hyper_parameters"]
    module = SequenceModuleShapes(config)
    module.load_state_dict(ckpt["state_dict"], strict=True)
    return module, ckpt


def plain(x):
    if isinstance(x, dict):
        return all(isinstance(k, str) and plain(v) for k, v in x.items())
    if isinstance(x, list):
        return all(plain(v) for v in x)
    return x is None or isinstance(x, str | int | float | bool)


@pytest.fixture
def no_omegaconf(monkeypatch):
    """omegaconf cannot be imported (it is not a dssbt dependency)."""
    for name in [m for m in sys.modules if m == "omegaconf" or m.startswith("omegaconf.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "omegaconf", None)


def test_fixture_is_a_lightning_checkpoint_with_omegaconf_hyper_parameters():
    """What made the issue's error: torch's weights-only load refuses the DictConfig."""
    names = set(torch.serialization.get_unsafe_globals_in_checkpoint(FIXTURE))
    assert {"omegaconf.dictconfig.DictConfig", "omegaconf.nodes.AnyNode", "omegaconf.base.ContainerMetadata"} <= names
    with pytest.raises(Exception, match="omegaconf"):
        torch.load(FIXTURE, weights_only=True)


def test_lightning_checkpoint_is_reduced_and_loads_by_its_hyper_parameters(tmp_path, capsys, no_omegaconf):
    from dssbt.lightning import load_checkpoint

    r, L = 3, 64
    out, rep = tmp_path / "reduced.ckpt", tmp_path / "report.json"
    assert (
        main(["reduce-s4d", "--model", str(FIXTURE), "--order", str(r), "--out", str(out), "--report", str(rep)]) == 0
    )
    text = capsys.readouterr().out
    assert "real_transform=exp (hyper_parameters)" in text and "dt_transform=softplus (hyper_parameters)" in text
    assert "model.layer.d_state 12 -> 6" in text and "dropped optimizer_states, lr_schedulers" in text
    module, ckpt = lightning_style_load(out)  # strict load at d_state = 2 r from the saved hyper-parameters
    assert plain(ckpt["hyper_parameters"]) and ckpt["hparams_type"] is DictConfigRef
    assert "optimizer_states" not in ckpt and "lr_schedulers" not in ckpt
    assert ckpt["epoch"] == 3 and ckpt["hparams_name"] == "config" and "callbacks" in ckpt
    hp = ckpt["hyper_parameters"]
    assert hp["model"]["layer"]["d_state"] == 2 * r and hp["model"]["layer"]["dropout"] == 0.1  # ${..dropout}
    assert hp["model"]["layer"]["l_max"] == L and hp["optimizer"]["betas"] == [0.9, 0.999]
    orig = load_checkpoint(FIXTURE)
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(out)) == {"omegaconf.dictconfig.DictConfig"}
    report = json.loads(rep.read_text())
    assert report["options"]["dt_transform"] == "softplus" and report["option_sources"]["real_transform"] == (
        "hyper_parameters"
    )
    assert [layer["layer"] for layer in report["layers"]] == [f"model.layers.{i}.layer.layer." for i in range(2)]
    ratios = []
    for layer in report["layers"]:
        p = layer["layer"]
        K = s4d_ssm_kernel(orig["state_dict"], p, L, "exp", "none", "softplus")
        Kr = s4d_ssm_kernel(ckpt["state_dict"], p, L, "exp", "none", "softplus")
        err = np.linalg.norm(K - Kr, axis=-1)  # (H,), S4D's own kernel formula, float32 weights as written
        bound, hsv = np.asarray(layer["bound"]), np.asarray(layer["hsv"])
        assert hsv.shape == (H, 6) and bound.shape == (H,) and layer["N"] == 12 and layer["r"] == r
        np.testing.assert_allclose(bound, 2 * hsv[:, r:].sum(-1), rtol=1e-10)
        np.testing.assert_allclose(layer["kernel_error"], err, rtol=1e-6, atol=1e-9)
        assert np.all(err <= bound * (1 + 1e-6)), (err, bound)  # l2 <= H2 <= Hinf <= 2 sum of discarded HSVs
        ratios.append(err / bound)
        np.testing.assert_allclose(layer["rel_kernel_error"], err / np.linalg.norm(K, axis=-1), rtol=1e-6)
        assert torch.equal(ckpt["state_dict"][p + "D"], orig["state_dict"][p + "D"])
        assert ckpt["state_dict"][p + "kernel.B"].shape == (1, H, r, 2)
    print("measured l2 kernel error / HSV bound per channel:", np.round(np.concatenate(ratios), 4))
    assert np.max(ratios) > 0.02  # the bound is not vacuous
    other = "model.layers.0.layer.output_linear.weight"
    assert torch.equal(dict(module.named_parameters())[other], orig["state_dict"][other])


def test_a_flag_contradicting_the_hyper_parameters_is_refused_naming_both(tmp_path, capsys, no_omegaconf):
    out = tmp_path / "out.ckpt"
    argv = ["reduce-s4d", "--model", str(FIXTURE), "--order", "2", "--out", str(out), "--dt-transform", "exp"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        "--dt-transform exp contradicts the checkpoint's hyper_parameters model.layer.dt_transform = 'softplus'" in err
    )
    assert not out.exists()


def lightning_payload(sd, layer_hp):
    return {"state_dict": sd, "epoch": 1, "hyper_parameters": {"model": {"d_model": H, "layer": layer_hp}}}


@pytest.mark.parametrize(
    "flags, stored, layer_hp, code, message",
    [  # detectable: always an error (the kernel cannot be reduced)
        (["--real-transform", "none"], None, None, 2, r"Re A = .* >= 0 \(unstable\).* real_transform='none' \(flag\)"),
        (["--dt-transform", "none"], None, None, 2, r"dt must be > 0\) under dt_transform='none' \(flag\)"),
        # relu on values stored under exp: every decay rate at relu's floor; stated by a flag this is only a warning,
        # but the reduced poles then cannot be written under relu either
        (["--real-transform", "relu"], None, None, 2, r"A_real: value 0.0001 below relu's floor"),
        # detectable, stated by a flag or the hyper-parameters: a warning; unstated (S4's default used): refused
        (
            [],
            {"dt_t": "relu"},
            {"d_state": 2 * M, "dt_min": 1e-4, "dt_max": 1e-3},
            2,
            r"median dt .* dt_transform='exp' \(default\)",
        ),
        (["--dt-transform", "relu"], "small_dt_relu", {"d_state": 2 * M, "dt_min": 1e-3, "dt_max": 5e-3}, 0, None),
        ([], "small_dt_relu", {"d_state": 2 * M, "dt_transform": "relu"}, 0, None),
        # not detectable: exp-stored dt read as softplus gives plausible values (softplus(log dt) = log(1 + dt))
        (["--dt-transform", "softplus"], None, None, 0, None),
    ],
)
def test_transforms_are_checked_for_plausibility(tmp_path, capsys, flags, stored, layer_hp, code, message):
    sd = ssm_state_dict()
    if stored == "small_dt_relu":  # dt in [1e-3, 1e-2] stored under relu: read as exp, every dt is about 1
        sd["kernel.inv_dt"] = torch.linspace(1e-3, 1e-2, H, dtype=torch.float64)[:, None] - 1e-4
    sd["kernel.A_real"] = -sd["kernel.A_real"].abs() if "--real-transform" in flags else sd["kernel.A_real"]
    torch.save(lightning_payload(sd, layer_hp) if layer_hp else sd, tmp_path / "in.ckpt")
    out = tmp_path / "out.ckpt"
    assert main(["reduce-s4d", "--model", str(tmp_path / "in.ckpt"), "--order", "3", "--out", str(out), *flags]) == code
    err = capsys.readouterr().err
    if message:
        assert re.search(message, err), err
    else:
        assert "warning" not in err and "error" not in err, err
    assert out.exists() == (code == 0)
