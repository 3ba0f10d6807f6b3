"""S4D (state-spaces/s4) <-> dssbt: kernels against S4D's own formula written out here, exact round trips, the
reduced state dict within BT's bound, and clear errors for the options that are not supported."""

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
