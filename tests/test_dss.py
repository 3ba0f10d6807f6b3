import numpy as np
import pytest
import torch

from dssbt.dss import DSS, naive_kernel, vandermonde_kernel
from dssbt.oracles import random_stable, simulate_dense


def random_layer(H: int, N: int, bidirectional: bool, seed: int, dtype=torch.float64) -> DSS:
    """A DSS layer with random (not init-structured) stable parameters, including large |Im dt Lambda|."""
    torch.manual_seed(seed)
    layer = DSS(H, N, bidirectional=bidirectional).to(dtype)
    rng = np.random.default_rng(seed)
    n_dir = 2 if bidirectional else 1
    Lambda, B, C = random_stable(rng, (n_dir, H), N, im_scale=40.0)
    layer.load_ss_params(Lambda, B, C, D=rng.normal(size=H), dt=rng.uniform(0.01, 0.3, H))
    return layer


@pytest.mark.parametrize("L", [1, 2, 7, 64, 100, 1000])
def test_fast_kernel_equals_naive_kernel(L):
    layer = random_layer(H=5, N=9, bidirectional=True, seed=L)
    fast, naive = layer.kernel(L), layer.kernel(L, naive=True)
    assert fast.shape == (2, 5, L)
    torch.testing.assert_close(fast, naive, rtol=1e-10, atol=1e-10 * naive.abs().max().item())


def test_fast_kernel_float32_within_1e_4_of_float64_reference():
    layer = random_layer(H=8, N=32, bidirectional=False, seed=3)
    ref = layer.kernel(2048, naive=True)
    fast32 = layer.float().kernel(2048)
    assert fast32.dtype == torch.float32
    err = (fast32.double() - ref).norm(dim=-1) / ref.norm(dim=-1)
    assert err.max() < 1e-4


def test_kernel_functions_agree_on_arbitrary_batch_dims():
    g = torch.Generator().manual_seed(0)
    dtL = torch.complex(
        -torch.rand(3, 2, 6, generator=g, dtype=torch.float64), torch.randn(3, 2, 6, generator=g, dtype=torch.float64)
    )
    W = torch.complex(
        torch.randn(3, 2, 6, generator=g, dtype=torch.float64), torch.randn(3, 2, 6, generator=g, dtype=torch.float64)
    )
    torch.testing.assert_close(vandermonde_kernel(dtL, W, 50), naive_kernel(dtL, W, 50))


@pytest.mark.parametrize("H,N,L", [(1, 1, 5), (3, 4, 17), (4, 16, 64), (2, 32, 300)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_fft_convolution_equals_recurrence_and_dense_ssm(H, N, L, bidirectional):
    layer = random_layer(H, N, bidirectional, seed=H * 100 + N)
    u = torch.randn(2, H, L, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y_fft = layer(u)
        y_rec = layer.forward_recurrent(u)
    torch.testing.assert_close(y_fft, y_rec, rtol=1e-9, atol=1e-9)

    ss = {k: v.numpy() for k, v in layer.ss_params().items()}
    y_dense = np.empty((2, H, L))
    for b in range(2):
        for h in range(H):
            uh = u[b, h].numpy()
            y = simulate_dense(ss["Lambda"][0, h], ss["B"][0, h], ss["C"][0, h], ss["D"][h], ss["dt"][h], uh)
            if bidirectional:  # the reverse direction: same kind of system over the reversed input, D once
                y += simulate_dense(ss["Lambda"][1, h], ss["B"][1, h], ss["C"][1, h], 0.0, ss["dt"][h], uh[::-1])[::-1]
            y_dense[b, h] = y
    np.testing.assert_allclose(y_fft.numpy(), y_dense, rtol=1e-8, atol=1e-8 * np.abs(y_dense).max())


def test_step_mode_carries_state_across_calls():
    layer = random_layer(3, 8, False, seed=5)
    u = torch.randn(2, 3, 40, dtype=torch.float64)
    params = layer.step_params()
    state = layer.initial_state(2)
    ys = []
    with torch.no_grad():
        for t in range(40):
            y_t, state = layer.step(u[..., t], state, params)
            ys.append(y_t)
        torch.testing.assert_close(torch.stack(ys, -1), layer(u), rtol=1e-9, atol=1e-9)


def test_step_refuses_bidirectional_layer():
    layer = random_layer(2, 4, True, seed=0)
    with pytest.raises(ValueError, match="bidirectional"):
        layer.step(torch.zeros(1, 2, dtype=torch.float64), layer.initial_state(1))


def test_float32_layer_gradients_match_naive_kernel_path():
    torch.manual_seed(0)
    layer = DSS(4, 16)
    grads = []
    for naive in (False, True):
        layer.zero_grad()
        k = layer.kernel(128, naive=naive)
        (k * torch.linspace(-1, 1, 128)).sum().backward()
        grads.append(
            [p.grad.clone() for p in (layer.Lambda_log_neg_re, layer.Lambda_im, layer.B, layer.C, layer.log_dt)]
        )
    for g_fast, g_naive in zip(*grads):
        torch.testing.assert_close(g_fast, g_naive, rtol=1e-3, atol=1e-4 * g_naive.abs().max().item())


def test_init_is_stable_and_dt_in_range():
    torch.manual_seed(0)
    layer = DSS(64, 8, init="skew_hippo", dt_min=1e-3, dt_max=1e-1)
    ss = layer.ss_params()
    assert (ss["Lambda"].real < 0).all()
    assert ((ss["dt"] >= 1e-3 * (1 - 1e-6)) & (ss["dt"] <= 1e-1 * (1 + 1e-6))).all()


def test_load_ss_params_rejects_unstable_and_nonfinite_values_naming_the_channel():
    layer = DSS(3, 4)
    ss = layer.ss_params()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    bad = ss["Lambda"].clone()
    bad[0, 2, 1] = 0.3 + 1j
    with pytest.raises(ValueError, match=r"layer 7: Lambda has Re >= 0 \(unstable\) at direction 0, channel 2, mode 1"):
        layer.load_ss_params(bad, ss["B"], ss["C"], where="layer 7")
    badC = ss["C"].clone()
    badC[0, 1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"C is not finite at direction 0, channel 1, mode 3"):
        layer.load_ss_params(ss["Lambda"], ss["B"], badC)
    with pytest.raises(ValueError, match=r"B has shape \(1, 3, 2\), expected \(1, 3, 4\)"):
        layer.load_ss_params(ss["Lambda"], ss["B"][..., :2], ss["C"])
    for k, v in layer.state_dict().items():  # nothing was written
        torch.testing.assert_close(v, before[k])
