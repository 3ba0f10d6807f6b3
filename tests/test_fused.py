"""The fused C kernels (dssbt.fused) against torch's own ops, finite differences and the closed-form sigmoid.

Oracles: the same computation with torch ops (``*_reference``) in float64 to 1e-12, ``torch.autograd.gradcheck``
for the hand-written backwards, float64 sigmoid for the float32 exp. The ``c_kernels`` and ``kernels`` fixtures
(conftest) skip the C runs with the reason where no C compiler works, and fail them under CI.
"""

import copy
import os
import subprocess
import sys

import pytest
import torch

from dssbt import fused

# (B, L, H): a partial last tile of 64 rows (B*L = 111), H = 1, an odd H, the pipeline's H
SIZES = [(3, 37, 6), (1, 5, 1), (2, 70, 33), (2, 64, 32)]


def grads(f, inputs, g):
    for t in inputs:
        t.grad = None
    out = f()
    (out * g).sum().backward()
    return [out.detach().clone()] + [t.grad.clone() for t in inputs]


def affine(norm_class, H, seed):
    """A float64 norm over H channels with random weight and bias (its defaults, 1 and 0, would hide errors)."""
    torch.manual_seed(seed)
    norm = norm_class(H).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    return norm


def rel(a, b):
    """Largest difference relative to the reference's norm, or absolute below norm 1 (H = 1: the normalised
    rows are exactly 0, torch's carry 1e-14 of rounding)."""
    return max(((x - y).norm() / y.norm().clamp_min(1.0)).item() for x, y in zip(a, b))


@pytest.mark.parametrize("size", SIZES)
def test_layer_norm_channel_major_equals_torch_layer_norm_then_transpose(size, c_kernels):
    B, L, H = size
    norm = affine(torch.nn.LayerNorm, H, 0)
    x = (3 * torch.randn(B, L, H, dtype=torch.float64) + 1).requires_grad_()
    g = torch.randn(H, B, L, dtype=torch.float64)
    inputs = [x, norm.weight, norm.bias]
    ours = grads(lambda: fused.layer_norm_channel_major(x, norm), inputs, g)
    ref = grads(lambda: fused.layer_norm_channel_major_reference(x, norm), inputs, g)
    assert ours[0].shape == (H, B, L) and ours[0].is_contiguous()
    assert rel(ours, ref) < 1e-12


@pytest.mark.parametrize("size", SIZES)
def test_glu_residual_equals_torch_glu_plus_residual(size, c_kernels):
    B, L, H = size
    torch.manual_seed(1)
    y = (2 * torch.randn(2, B, L, H, dtype=torch.float64)).requires_grad_()
    bias = torch.randn(2 * H, dtype=torch.float64, requires_grad=True)
    x = torch.randn(B, L, H, dtype=torch.float64, requires_grad=True)
    g = torch.randn(B, L, H, dtype=torch.float64)
    inputs = [y, bias, x]
    ours = grads(lambda: fused.glu_residual(y, bias, x), inputs, g)
    ref = grads(lambda: fused.glu_residual_reference(y, bias, x), inputs, g)
    assert rel(ours, ref) < 1e-12


def test_hand_written_backwards_pass_gradcheck(c_kernels):
    torch.manual_seed(2)
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: fused._LayerNormChannelMajor.apply(x, w, b, 1e-5), (x, w, b))
    y = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fused.glu_residual, (y, bias, x))


def test_float32_kernels_are_torch_to_rounding(c_kernels):
    """float32: the C kernels differ from torch's float32 ops by rounding only; both near the float64 result."""
    torch.manual_seed(3)
    B, L, H = 4, 300, 32
    norm = torch.nn.LayerNorm(H)
    x = torch.randn(B, L, H) * 2 + 0.5
    y, bias = torch.randn(2, B, L, H) * 3, torch.randn(2 * H)
    n64 = copy.deepcopy(norm).double()
    exact_ln = fused.layer_norm_channel_major_reference(x.double(), n64)
    exact_glu = fused.glu_residual_reference(y.double(), bias.double(), x.double())
    with torch.no_grad():
        for ours, torch_ops, exact in (
            (fused.layer_norm_channel_major(x, norm), fused.layer_norm_channel_major_reference(x, norm), exact_ln),
            (fused.glu_residual(y, bias, x), fused.glu_residual_reference(y, bias, x), exact_glu),
        ):
            assert ours.dtype == torch.float32
            err_ours = ((ours.double() - exact).abs() / exact.abs().clamp_min(1)).max().item()
            err_torch = ((torch_ops.double() - exact).abs() / exact.abs().clamp_min(1)).max().item()
            assert err_ours < 1e-6 and err_torch < 1e-6
            assert not torch.equal(ours, torch_ops) or ours.numel() < 100  # they do differ by rounding


def test_float32_sigmoid_is_within_two_ulp_over_the_whole_range(c_kernels):
    """The vectorised exp through the GLU: a = 1, x = 0, zero bias gives out = sigmoid(b), b over [-100, 100],
    against float64: within 2 float32 eps relative (torch's own sigmoid: 1.2) down to b = -87; below, where exp's
    argument is clamped at 88, it stays at sigmoid(-88) = 6e-39 instead of falling further (absolute error < 1e-38);
    1 exactly at the top."""
    b = torch.linspace(-100, 100, 200_001)
    y = torch.stack([torch.ones_like(b), b]).view(2, 1, -1, 1)
    with torch.no_grad():
        s = fused.glu_residual(y, torch.zeros(2), torch.zeros(1, b.numel(), 1)).view(-1).double()
    exact = torch.sigmoid(b.double())
    eps = torch.finfo(torch.float32).eps
    inside = b >= -87
    assert ((s - exact).abs() / exact)[inside].max().item() < 2 * eps
    assert (s - exact).abs()[~inside].max().item() < 1e-38
    assert s[-1].item() == 1.0


def test_c_kernels_are_deterministic(c_kernels):
    torch.manual_seed(4)
    norm = torch.nn.LayerNorm(32)
    x = torch.randn(2, 500, 32, requires_grad=True)
    g = torch.randn(32, 2, 500)
    a = grads(lambda: fused.layer_norm_channel_major(x, norm), [x, norm.weight, norm.bias], g)
    b = grads(lambda: fused.layer_norm_channel_major(x, norm), [x, norm.weight, norm.bias], g)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_mode_chooses_the_kernels(kernels):
    x = torch.zeros(1)
    assert fused.applies(x) == (kernels == "c")
    assert fused.used() == kernels
    with fused.kernels("torch"):
        assert not fused.applies(x) and fused.used() == "torch"
    assert fused.applies(x.double()) == (kernels == "c")
    assert not fused.applies(x.long())


def test_bad_mode_names_the_key():
    with pytest.raises(ValueError, match=r"optim.kernels: 'fast' is not one of \['auto', 'c', 'torch'\]"):
        with fused.kernels("fast"):
            pass


@pytest.mark.slow
def test_required_c_kernels_without_a_compiler_is_a_clear_error(tmp_path):
    """optim.kernels: c where the library cannot be built: an error naming the key and why; auto falls back to
    torch ops and says so in what it reports as used. In a fresh interpreter, with $CC a missing program."""
    code = (
        "from dssbt import fused\n"
        "with fused.kernels('auto'):\n"
        "    assert fused.used() == 'torch', fused.used()\n"
        "try:\n"
        "    with fused.kernels('c'):\n"
        "        pass\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    env = {**os.environ, "CC": "no-such-compiler-here", "DSSBT_CACHE": str(tmp_path)}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert "optim.kernels: c" in p.stdout and "no-such-compiler-here" in p.stdout
    assert list(tmp_path.iterdir()) == []  # nothing half-built left behind


@pytest.mark.parametrize("size", SIZES[:1] + SIZES[2:])
def test_batch_norm_channel_major_equals_torch_batch_norm_then_transpose(size, c_kernels):
    """Training mode: output, gradients and the running statistics (two steps); eval mode: the output."""
    B, L, H = size
    ours_bn = affine(torch.nn.BatchNorm1d, H, 5)
    ref_bn = copy.deepcopy(ours_bn)
    for step in range(2):
        x = (3 * torch.randn(B, L, H, dtype=torch.float64) + step).requires_grad_()
        g = torch.randn(H, B, L, dtype=torch.float64)
        ours = grads(lambda: fused.batch_norm_channel_major(x, ours_bn), [x, ours_bn.weight, ours_bn.bias], g)
        ref = grads(lambda: fused.batch_norm_channel_major_reference(x, ref_bn), [x, ref_bn.weight, ref_bn.bias], g)
        assert ours[0].shape == (H, B, L) and ours[0].is_contiguous()
        assert rel(ours, ref) < 1e-12
        for name in ("running_mean", "running_var"):
            torch.testing.assert_close(getattr(ours_bn, name), getattr(ref_bn, name), rtol=1e-12, atol=1e-14)
        assert int(ours_bn.num_batches_tracked) == int(ref_bn.num_batches_tracked) == step + 1
    ours_bn.eval()
    ref_bn.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            fused.batch_norm_channel_major(x, ours_bn),
            fused.batch_norm_channel_major_reference(x, ref_bn),
            rtol=1e-12,
            atol=1e-13,
        )
    assert not fused.batch_norm_applies(ours_bn)  # eval mode with gradients: torch's batch norm


def _bn_apply(x, w, b, eps):
    """The fused batch norm with the batch's statistics computed by torch ops from x.detach(): finite differences
    recompute them at every perturbed x, so gradcheck sees the gradient through them, which the hand-written
    (training-mode) backward must contain."""
    rows = x.detach().reshape(-1, x.shape[-1])
    mean, rstd = rows.mean(0), (rows.var(0, unbiased=False) + eps).rsqrt()
    return fused._BatchNormChannelMajor.apply(x, w, b, mean, rstd)


def test_batch_norm_is_the_closed_form_and_its_backward_passes_gradcheck(c_kernels):
    torch.manual_seed(6)
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    rows = x.reshape(-1, 4)
    closed = ((rows - rows.mean(0)) / torch.sqrt(rows.var(0, unbiased=False) + 1e-5) * w + b).t().reshape(4, 2, 5)
    torch.testing.assert_close(_bn_apply(x, w, b, 1e-5), closed, rtol=1e-12, atol=1e-13)
    assert torch.autograd.gradcheck(lambda x, w, b: _bn_apply(x, w, b, 1e-5), (x, w, b))


@pytest.mark.parametrize("size", SIZES)
def test_layer_norm_mean_pool_equals_torch_norm_mask_and_mean(size, c_kernels):
    """Lengths from 0 (an empty sequence: pooled = 0 / 1) to L; the rows past a length get no gradient."""
    B, L, H = size
    norm = affine(torch.nn.LayerNorm, H, 7)
    x = (2 * torch.randn(B, L, H, dtype=torch.float64) - 1).requires_grad_()
    lengths = torch.randint(0, L + 1, (B,))
    lengths[0] = L
    if B > 1:
        lengths[1] = 0
    g = torch.randn(B, H, dtype=torch.float64)
    inputs = [x, norm.weight, norm.bias]
    ours = grads(lambda: fused.layer_norm_mean_pool(x, lengths, norm), inputs, g)
    ref = grads(lambda: fused.layer_norm_mean_pool_reference(x, lengths, norm), inputs, g)
    assert ours[0].shape == (B, H)
    assert rel(ours, ref) < 1e-12
    past = torch.arange(L) >= lengths.unsqueeze(-1)
    assert (ours[1][past] == 0).all()


def test_layer_norm_mean_pool_backward_passes_gradcheck(c_kernels):
    torch.manual_seed(8)
    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 0])
    assert torch.autograd.gradcheck(lambda x, w, b: fused._LayerNormMeanPool.apply(x, lengths, w, b, 1e-5), (x, w, b))
