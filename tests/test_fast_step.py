"""The fast training path equals the reference path (the original implementation) on every pipeline model shape.

Oracles: the reference path (``reference=True``: (B, L, H) backbone, autograd through torch.fft at size 2L,
complex-arithmetic kernel), finite differences (gradcheck) for the hand-written FFT backward, the recurrence for
the layer, and brute force for the FFT sizes. All comparisons in float64 to 1e-10 (relative).
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dssbt.dss as dss
from dssbt import fused
from dssbt.dss import DSS, FFTConv, circular_kernel, naive_kernel, next_fast_len, vandermonde_kernel
from dssbt.model import ModelConfig, S4Model

TOL = 1e-10
# Small versions of the shapes the pipeline trains (config.yaml model + task_settings; retrieval from lra.yaml).
SHAPES = {
    "image": dict(encoder="linear", d_input=1, d_output=10, norm="layer"),
    "listops": dict(encoder="embedding", d_input=20, d_output=10, norm="layer"),
    "pathfinder": dict(encoder="linear", d_input=1, d_output=2, norm="batch", bidirectional=True),
    "retrieval": dict(encoder="embedding", d_input=30, d_output=2, norm="batch", dual=True),
    # other block variants the config allows
    "postnorm-last-linear": dict(
        encoder="linear", d_input=3, d_output=4, norm="layer", prenorm=False, pool="last", output="linear"
    ),
    "retrieval-layernorm": dict(encoder="embedding", d_input=30, d_output=2, norm="layer", dual=True),
}


def make(shape: str, seed: int = 0, L: int = 37, B: int = 4, **kw):
    """A float64 model with perturbed weights and one batch (x, lengths, y) of the shape."""
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**dict(d_model=6, d_state=5, n_layers=2), **SHAPES[shape], **kw})
    model = S4Model(cfg).double().train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    g = torch.Generator().manual_seed(seed + 1)
    lead = (B, 2) if cfg.dual else (B,)
    if cfg.encoder == "embedding":
        lengths = torch.randint(max(1, L // 2), L + 1, lead, generator=g)
        x = torch.randint(1, cfg.d_input, (*lead, L), generator=g)
        x[torch.arange(L) >= lengths.unsqueeze(-1)] = 0  # 0 = padding
    else:
        lengths = torch.full(lead, L)
        x = torch.randn(*lead, L, cfg.d_input, generator=g, dtype=torch.float64)
        if cfg.d_input == 1:
            x = x.squeeze(-1)
    return model, x, lengths, torch.randint(0, cfg.d_output, (B,), generator=g)


def logits_and_grads(model, fn):
    model.zero_grad(set_to_none=True)
    logits = fn()
    F.cross_entropy(logits, torch.arange(logits.shape[0]) % logits.shape[1]).backward()
    return [logits.detach()] + [p.grad.clone() for p in model.parameters()]


def max_rel(a: list, b: list) -> float:
    return max(((x - y).norm() / y.norm().clamp_min(1e-300)).item() for x, y in zip(a, b))


def reference_two_b(model, x, lengths):
    """Reference path on the dual model's documents as one 2B batch (what the fast path computes), then the head."""
    a, b = model.features(
        torch.cat([x[:, 0], x[:, 1]]), torch.cat([lengths[:, 0], lengths[:, 1]]), reference=True
    ).split(x.shape[0])
    return model.decoder(torch.cat([a, b, a * b, a - b], dim=-1))


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("L", [1, 37, 64])
def test_fast_step_equals_reference_step(shape, L, kernels):
    """Logits and EVERY parameter gradient of one training step, fast vs reference path (train mode), with the
    fused C kernels and with torch ops."""
    model, x, lengths, _ = make(shape, L=L)
    fast = logits_and_grads(model, lambda: model(x, lengths))
    if model.cfg.dual and model.cfg.norm == "batch":  # the fast path takes batch-norm statistics over 2B sequences
        ref = logits_and_grads(model, lambda: reference_two_b(model, x, lengths))
    else:
        ref = logits_and_grads(model, lambda: model(x, lengths, reference=True))
    assert len(fast) == 1 + len(list(model.parameters()))
    assert max_rel(fast, ref) < TOL


def test_dual_batch_norm_uses_the_statistics_of_both_documents():
    """Train mode: statistics over the 2B batch (not per tower); running statistics updated once per step, from 2B."""
    model, x, lengths, _ = make("retrieval")
    per_tower, two_b = copy.deepcopy(model), copy.deepcopy(model)
    fast = model(x, lengths)
    assert (fast - per_tower(x, lengths, reference=True)).abs().max() > 1e-6  # the documented numerics change
    reference_two_b(two_b, x, lengths)
    norms = [[m for m in mod.modules() if isinstance(m, torch.nn.BatchNorm1d)] for mod in (model, two_b, per_tower)]
    assert len(norms[0]) == 2
    for m_fast, m_ref, m_tower in zip(*norms):
        assert int(m_fast.num_batches_tracked) == 1 and int(m_tower.num_batches_tracked) == 2
        torch.testing.assert_close(m_fast.running_mean, m_ref.running_mean, rtol=TOL, atol=1e-14)
        torch.testing.assert_close(m_fast.running_var, m_ref.running_var, rtol=TOL, atol=1e-14)
    model.eval()  # eval mode: running statistics, so the towers may run apart or together
    with torch.no_grad():
        torch.testing.assert_close(model(x, lengths), model(x, lengths, reference=True), rtol=TOL, atol=1e-13)


def test_batch_norm_running_statistics_match_the_reference():
    model, x, lengths, _ = make("pathfinder")
    twin = copy.deepcopy(model)
    model(x, lengths)
    twin(x, lengths, reference=True)
    for a, b in zip(model.modules(), twin.modules()):
        if isinstance(a, torch.nn.BatchNorm1d):
            torch.testing.assert_close(a.running_mean, b.running_mean, rtol=TOL, atol=1e-14)
            torch.testing.assert_close(a.running_var, b.running_var, rtol=TOL, atol=1e-14)


def test_dropout_in_the_fast_path_is_seeded_and_off_in_eval(kernels):
    model, x, lengths, _ = make("image", dropout=0.3)
    torch.manual_seed(5)
    a = model(x, lengths)
    torch.manual_seed(5)
    b = model(x, lengths)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # same seed, same masks
    model.eval()
    with torch.no_grad():
        e = model(x, lengths)
        assert (a - e).abs().max() > 1e-6  # dropout did act in train mode
        torch.testing.assert_close(e, model(x, lengths, reference=True), rtol=TOL, atol=1e-13)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_fft_conv_backward_passes_gradcheck_across_channel_chunks(bidirectional, monkeypatch):
    """The hand-written backward against finite differences, with several (uneven) channel chunks."""
    H, B, L = 3, 2, 7
    n = next_fast_len(2 * L - 1)
    monkeypatch.setattr(dss, "CHUNK_BYTES", 2 * 16 * B * n)  # 2 channels per chunk: chunks of 2, 1
    monkeypatch.setattr(dss, "MAX_CHUNKS", 8)
    monkeypatch.setattr(dss, "CHUNK_THREADS", torch.get_num_threads())  # chunk at this test's thread count
    cpu = torch.device("cpu")
    assert [c.stop - c.start for c in dss._channel_chunks(H, B, n, cpu)] == [2, 1]
    assert len(dss._channel_chunks(100, B, n, cpu)) == 8  # at most MAX_CHUNKS
    g = torch.Generator().manual_seed(0)
    u = torch.randn(H, B, L, dtype=torch.float64, generator=g).transpose(0, 1).requires_grad_()  # channel-major
    k = torch.randn(H, n if bidirectional else L, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, k: FFTConv.apply(u, k, n), (u, k))
    # and the forward against the direct circular sum y[t] = sum_m k[m mod n] u[t - m]
    uu = u.detach().transpose(0, 1)  # (H, B, L)
    kk = F.pad(k.detach(), (0, n - k.shape[-1]))
    want = torch.zeros(H, B, L, dtype=torch.float64)
    for t in range(L):
        for s in range(L):
            want[..., t] += kk[:, (t - s) % n].unsqueeze(1) * uu[..., s]
    torch.testing.assert_close(FFTConv.apply(u, k, n).transpose(0, 1), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("L", [1, 2, 13, 100])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_fast_forward_equals_reference_and_recurrence(L, bidirectional):
    torch.manual_seed(L)
    layer = DSS(4, 6, bidirectional=bidirectional).double()
    with torch.no_grad():
        layer.log_dt.add_(1.0)  # longer memory than the init, so the anti-causal part matters
    u = torch.randn(3, 4, L, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 4, L, dtype=torch.float64)
    fast = [layer(u)] + list(torch.autograd.grad((layer(u) * g).sum(), [u, *layer.parameters()]))
    ref = [layer.forward_reference(u)] + list(
        torch.autograd.grad((layer.forward_reference(u) * g).sum(), [u, *layer.parameters()])
    )
    assert max_rel([t.detach() for t in fast], [t.detach() for t in ref]) < TOL
    with torch.no_grad():
        torch.testing.assert_close(fast[0].detach(), layer.forward_recurrent(u), rtol=1e-9, atol=1e-9)


def test_real_arithmetic_kernel_equals_the_complex_and_naive_kernels():
    g = torch.Generator().manual_seed(0)
    shape = (2, 3, 7)
    dtL = torch.complex(
        -torch.rand(shape, generator=g, dtype=torch.float64), 30 * torch.randn(shape, generator=g, dtype=torch.float64)
    )
    W = torch.complex(
        torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    )
    for L in (1, 5, 64, 300):
        real = dss.vandermonde_kernel_real(dtL, W, L)
        ref = naive_kernel(dtL, W, L)
        torch.testing.assert_close(real, ref, rtol=TOL, atol=TOL * ref.abs().max().item())
        torch.testing.assert_close(real, vandermonde_kernel(dtL, W, L), rtol=TOL, atol=TOL * ref.abs().max().item())


def test_circular_kernel_places_the_anticausal_taps_at_n_minus_m():
    k = torch.arange(1.0, 9.0).view(2, 1, 4)  # causal 1..4, anti-causal 5..8 (K1[0] = 5)
    n = 9
    ck = circular_kernel(k, n)[0]
    assert ck.tolist() == [1 + 5, 2, 3, 4, 0, 0, 8, 7, 6]  # K1[m] at n - m
    assert circular_kernel(k[:1], n).shape == (1, 4)


def test_next_fast_len_is_the_smallest_5_smooth_size():
    def smooth(m):
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    for n in list(range(1, 400)) + [2047, 2049, 4095, 8191]:
        want = next(m for m in range(n, 2 * n + 1) if smooth(m))
        assert next_fast_len(n) == want, n
    with pytest.raises(ValueError, match="n >= 1"):
        next_fast_len(0)


AMP = [torch.bfloat16, torch.float16]  # optim.amp bf16, fp16; CPU autocast takes both (checked on torch 2.13)


@pytest.mark.parametrize("kernels", ["torch", "c"])
@pytest.mark.parametrize("norm", ["layer", "batch"])
@pytest.mark.parametrize("amp", AMP)
def test_fast_path_runs_under_amp_autocast(norm, amp, kernels):
    """optim.amp: the model under CPU autocast runs its output maps in the low precision (logits in it), the DSS
    layers in float32; gradients reach every parameter in float32; the fast path agrees with the reference path."""
    torch.manual_seed(0)
    model = S4Model(ModelConfig(d_input=1, d_output=3, d_model=8, d_state=4, n_layers=2, norm=norm))
    x = torch.randn(3, 40)
    with fused.kernels(kernels):
        want = model(x)
        with torch.autocast("cpu", dtype=amp):
            fast = model(x)
            ref = model(x, reference=True)
    assert fast.dtype == ref.dtype == amp
    fast.float().sum().backward()
    assert all(
        p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
        for p in model.parameters()
    )
    tol = 0.05 if amp == torch.bfloat16 else 0.005  # 8 resp. 11 mantissa bits
    torch.testing.assert_close(fast.float(), ref.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(fast.float(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("amp", AMP)
def test_dss_kernel_and_fft_convolution_stay_float32_under_amp(amp, bidirectional):
    """Under autocast the DSS layer's kernel, FFT convolution (both paths), recurrence and gradients are float32 and
    equal the float32 computation (a low-precision input is cast to float32 first); without the float32 region
    autocast would run the kernel's real matmul in the low precision."""
    torch.manual_seed(1)
    layer = DSS(6, 5, bidirectional=bidirectional)
    u = torch.randn(2, 6, 33)
    L = u.shape[-1]

    def run(x, dtype=None):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = {"kernel": layer.kernel(L), "fast": layer.forward(x), "reference": layer.forward_reference(x)}
            out["recurrent"] = layer.forward_recurrent(x)
        layer.zero_grad()
        (out["fast"].square().sum() + out["reference"].sum()).backward()  # outside autocast, as in training
        return out, [p.grad.clone() for p in layer.parameters()]

    want, want_grads = run(u)
    got, grads = run(u, amp)
    low, _ = run(u.to(amp), amp)  # an activation that arrives in the low precision
    for name, y in want.items():
        assert got[name].dtype == low[name].dtype == torch.float32, name
        assert torch.equal(got[name], y), name  # the same float32 operations
    assert all(torch.equal(g, w) for g, w in zip(grads, want_grads))
    cast, _ = run(u.to(amp).float())
    assert all(torch.equal(low[k], cast[k]) for k in want)
    with torch.autocast("cpu", dtype=amp):
        dtL = layer.Lambda() * torch.exp(layer.log_dt).unsqueeze(-1)
        assert dss.vandermonde_kernel_real(dtL, torch.ones_like(dtL), L).dtype == amp  # what float32_region prevents


@pytest.mark.parametrize("amp", AMP)
def test_output_map_from_channel_major_runs_in_the_autocast_dtype_like_nn_linear(amp):
    """linear_from_channel_major under autocast: autocast's dtype, as nn.Linear; float32 gradients of float32
    weights, close to nn.Linear's under the same autocast (both computed in the low precision)."""
    from dssbt.model import linear_from_channel_major

    torch.manual_seed(2)
    lin = torch.nn.Linear(8, 16)
    z = torch.randn(8, 3, 20, requires_grad=True)  # (H, B, L)
    with torch.autocast("cpu", dtype=amp):
        y = linear_from_channel_major(z, lin, parts=2)
        want = lin(z.permute(1, 2, 0))  # (B, L, 2H)
    assert y.dtype == want.dtype == amp
    torch.testing.assert_close(torch.cat([y[0], y[1]], -1), want, rtol=0.02, atol=0.02)
    g = torch.randn(2, 3, 20, 8)
    grads = torch.autograd.grad(y, [z, lin.weight, lin.bias], g.to(amp))
    want_grads = torch.autograd.grad(want, [z, lin.weight, lin.bias], torch.cat([g[0], g[1]], -1).to(amp))
    for a, b in zip(grads, want_grads):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05 * b.abs().max().item())


@pytest.mark.parametrize("amp", AMP)
def test_hankel_penalty_and_balanced_truncation_ignore_amp(amp):
    """The Hankel penalty and a model's balanced truncation give the same numbers under autocast as without."""
    from dssbt.reduction.apply import reduce_model
    from dssbt.reduction.hankel import hankel_penalty

    torch.manual_seed(3)
    model = S4Model(ModelConfig(d_input=1, d_output=2, d_model=4, d_state=6, n_layers=2))
    want = hankel_penalty(model, 0.1)
    want_model, want_report = reduce_model(model, 3, kernel_length=64)
    with torch.autocast("cpu", dtype=amp):
        got = hankel_penalty(model, 0.1)
        got_model, got_report = reduce_model(model, 3, kernel_length=64)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(got_model.state_dict().values(), want_model.state_dict().values()))
    for a, b in zip(got_report["layers"], want_report["layers"]):
        np.testing.assert_array_equal(a["hsv"], b["hsv"])


def test_to_channel_major_is_the_transpose_and_hands_back_a_contiguous_gradient():
    from dssbt.model import to_channel_major

    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    y = to_channel_major(x)
    assert y.is_contiguous() and torch.equal(y, x.permute(2, 0, 1))  # (H, B, L)
    g = torch.randn(4, 3, 5, dtype=torch.float64)
    (dx,) = torch.autograd.grad(y, x, g)
    assert dx.is_contiguous()  # batch norm's backward is ~4x slower on a transposed gradient
    assert torch.equal(dx, g.permute(1, 2, 0))
    assert torch.autograd.gradcheck(to_channel_major, (x,))
