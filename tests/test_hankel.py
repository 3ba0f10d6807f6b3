"""Differentiable HSVs (dssbt.reduction.hankel) against scipy's Lyapunov/Stein solvers, mpmath, and finite
differences; the Hankel penalty in a real optimisation."""

import subprocess
import sys
from pathlib import Path

import mpmath
import numpy as np
import pytest
import torch
from scipy.linalg import solve_continuous_lyapunov, solve_discrete_lyapunov

from dssbt.model import ModelConfig, S4Model
from dssbt.oracles import random_stable, trained_like_channel
from dssbt.reduction import balance
from dssbt.reduction.hankel import cauchy_factor, hankel_penalty, hankel_singular_values_torch, hsv_sum, layer_params

ROOT = Path(__file__).resolve().parents[1]


def scipy_hsv(Lambda, B, C, dt=None):
    """HSVs of one channel (N,) from dense Lyapunov (dt None) or Stein equations, sqrt of eig(PQ), descending."""
    if dt is None:
        A, b = np.diag(Lambda), B[:, None]
        P = solve_continuous_lyapunov(A, -b @ b.conj().T)
        Q = solve_continuous_lyapunov(A.conj().T, -C[:, None].conj() @ C[None, :])
    else:
        lb = np.exp(dt * Lambda)
        A, b = np.diag(lb), ((lb - 1) / Lambda * B)[:, None]
        P = solve_discrete_lyapunov(A, b @ b.conj().T)
        Q = solve_discrete_lyapunov(A.conj().T, C[:, None].conj() @ C[None, :])
    return np.sort(np.sqrt(np.abs(np.linalg.eigvals(P @ Q))))[::-1]


def ours(Lambda, B, C, dt=None):
    t = lambda a: torch.as_tensor(np.asarray(a))  # noqa: E731  (float64 / complex128)
    return hankel_singular_values_torch(t(Lambda), t(B), t(C), None if dt is None else t(dt)).numpy()


@pytest.mark.parametrize("route", ["continuous", "discrete"])
def test_cauchy_factor_is_an_exact_cholesky_factor_of_the_gramian_kernel(route):
    rng = np.random.default_rng(0)
    Lambda, _, _ = random_stable(rng, (3,), 9)
    dt = np.array([0.05, 0.3, 1.0])
    L = cauchy_factor(torch.tensor(Lambda), None if route == "continuous" else torch.tensor(dt)).numpy()
    if route == "continuous":
        G = -1.0 / (Lambda[:, :, None] + Lambda.conj()[:, None, :])
    else:
        x = np.exp(dt[:, None] * Lambda)
        G = 1.0 / (1.0 - x[:, :, None] * x.conj()[:, None, :])
    np.testing.assert_allclose(L @ np.swapaxes(L, -1, -2).conj(), G, rtol=1e-12, atol=1e-13 * np.abs(G).max())
    assert np.all(np.triu(L, 1) == 0)


@pytest.mark.parametrize("route", ["continuous", "discrete"])
def test_hsvs_equal_scipy_on_random_and_trained_like_channels(route):
    rng = np.random.default_rng(1)
    Lambda, B, C = random_stable(rng, (6,), 12)
    dt = rng.uniform(0.02, 1.0, 6)
    for Lam, Bm, Cm, d in [(Lambda, B, C, dt), (*trained_like_channel(64), np.array([0.05]))]:
        d = None if route == "continuous" else d
        got = ours(Lam, Bm, Cm, d)
        for i in range(Lam.shape[0]):
            ref = scipy_hsv(Lam[i], Bm[i], Cm[i], None if d is None else d[i])
            # sqrt(eig(PQ)) of dense Gramians carries an absolute error ~ sqrt(eps) hsv0 on tiny HSVs (an eigenvalue
            # error eps*hsv0^2 under the square root), so: 1e-9 relative where scipy itself is that accurate
            # (hsv >= 1e-3 hsv0), its sqrt(eps) floor elsewhere; the tail is checked against mpmath below.
            big = ref >= 1e-3 * ref[0]
            np.testing.assert_allclose(got[i][big], ref[big], rtol=1e-9)
            np.testing.assert_allclose(got[i], ref, rtol=1e-9, atol=1e-7 * ref[0])
            np.testing.assert_allclose(got[i].sum(), ref.sum(), rtol=1e-8)  # includes scipy's tail error
        # and with the eigh-based square-root method of balanced.py (the model-level reduction's HSVs)
        ref = balance(Lam, Bm, Cm, dt=d).hsv
        assert np.all(np.abs(got - ref) <= 1e-8 * ref + 1e-9 * ref[..., :1])


@pytest.mark.parametrize("route", ["continuous", "discrete"])
@pytest.mark.parametrize("channel", ["trained_like", "random"])
def test_hsvs_match_high_precision_to_round_off(route, channel):
    """mpmath at 50 digits (dense Gramians, eig of PQ) as the oracle: every HSV above 1e-8 hsv0 to 1e-12 relative,
    all to 1e-14 hsv0 (scipy's eig(PQ) is ~1e-8 hsv0 off on tiny HSVs, the eigh route of balance ~1e-10 hsv0)."""
    mpmath.mp.dps = 50
    if channel == "trained_like":
        Lambda, B, C = (a[0, :20] for a in trained_like_channel(64))  # HSVs over ~10 decades
    else:
        Lambda, B, C = (a[0] for a in random_stable(np.random.default_rng(1), (1,), 12))
    dt = 0.05
    mpc = lambda z: mpmath.mpc(complex(z))  # noqa: E731
    lam = [mpc(z) for z in Lambda]
    if route == "continuous":
        a, b = lam, [mpc(z) for z in B]
        den = lambda i, j: -(a[i] + mpmath.conj(a[j]))  # noqa: E731
    else:
        a = [mpmath.exp(mpmath.mpf(dt) * z) for z in lam]
        b = [(ai - 1) / z * mpc(bz) for ai, z, bz in zip(a, lam, B)]
        den = lambda i, j: 1 - a[i] * mpmath.conj(a[j])  # noqa: E731
    c = [mpc(z) for z in C]
    N = len(a)
    P = mpmath.matrix(N, N)
    Q = mpmath.matrix(N, N)
    for i in range(N):
        for j in range(N):
            P[i, j] = b[i] * mpmath.conj(b[j]) / den(i, j)
            Q[i, j] = mpmath.conj(c[i]) * c[j] / mpmath.conj(den(i, j))
    ref = np.sort([float(mpmath.sqrt(abs(e))) for e in mpmath.eig(P * Q, left=False, right=False)])[::-1]
    got = ours(Lambda[None], B[None], C[None], None if route == "continuous" else np.array([dt]))[0]
    big = ref > 1e-8 * ref[0]
    assert big.sum() >= 8 if channel == "trained_like" else big.sum() >= 10
    np.testing.assert_allclose(got[big], ref[big], rtol=1e-12)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-14 * ref[0])


def _layer(N=6, H=3, seed=0, bidirectional=False):
    torch.manual_seed(seed)
    layer = (
        S4Model(
            ModelConfig(
                d_input=1, d_output=2, d_model=H, d_state=N, n_layers=1, init="random", bidirectional=bidirectional
            )
        )
        .double()
        .dss_layers()[0]
    )
    with torch.no_grad():
        layer.log_dt.copy_(torch.log(torch.linspace(0.05, 0.5, H, dtype=torch.float64)))
    return layer


@pytest.mark.parametrize("route", ["continuous", "discrete"])
def test_gradient_of_hsv_sum_equals_central_finite_differences(route):
    layer = _layer(bidirectional=True)
    names = ["Lambda_log_neg_re", "Lambda_im", "B", "C", "log_dt"]
    params = [getattr(layer, n).detach().clone() for n in names]

    def f(*ps):
        lp = dict(zip(names, ps))
        Lambda = torch.complex(-torch.exp(lp["Lambda_log_neg_re"]), lp["Lambda_im"])
        B, C = torch.view_as_complex(lp["B"]), torch.view_as_complex(lp["C"])
        dt = None if route == "continuous" else torch.exp(lp["log_dt"]).expand(Lambda.shape[:-1])
        return hankel_singular_values_torch(Lambda, B, C, dt).sum()

    inputs = [p.requires_grad_(True) for p in params]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)  # central differences, float64
    # the layer entry point differentiates the same function of the same parameters
    s = hsv_sum(layer, route)
    grads = torch.autograd.grad(s, [getattr(layer, n) for n in names], allow_unused=True)
    ref = torch.autograd.grad(f(*inputs), inputs, allow_unused=True)
    for n, g, r in zip(names, grads, ref):
        if route == "continuous" and n == "log_dt":
            assert g is None and r is None
        else:
            torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("route", ["continuous", "discrete"])
def test_rank_deficient_and_repeated_pole_channels_give_finite_values_and_gradients(route):
    rng = np.random.default_rng(5)
    Lambda, B, C = random_stable(rng, (5,), 8)
    Lambda[0, 3] = Lambda[0, 1]  # one repeated pole
    Lambda[1, :] = Lambda[1, 0]  # all poles equal: rank one
    B[2, :] = 0  # dead input
    C[3, 2:] = 0  # partly dead output
    B[4, ::2] = 0
    C[4, 1::2] = 0  # no mode both reachable and observable: Hankel operator zero
    dt = np.full(5, 0.2)
    d = None if route == "continuous" else dt
    got = ours(Lambda, B, C, d)
    for i in range(5):
        ref = scipy_hsv(Lambda[i], B[i], C[i], None if d is None else d[i])
        big = ref >= 1e-3 * ref[0]
        np.testing.assert_allclose(got[i][big], ref[big], rtol=1e-9)
        np.testing.assert_allclose(got[i], ref, rtol=1e-9, atol=1e-7 * ref[0])  # scipy's sqrt(eps) floor
    assert got[0, -1] <= 1e-14 * got[0, 0]  # a repeated pole removes one state (scipy: ~1e-8 hsv0 of noise)
    assert np.all(got[4] == 0) and np.all(got[2] == 0)
    assert np.sum(got[1] > 1e-12 * got[1, 0]) == 1  # repeated poles: one state
    ts = [torch.tensor(a, requires_grad=True) for a in (Lambda, B, C)]
    dtt = None if d is None else torch.tensor(d, requires_grad=True)
    s = hankel_singular_values_torch(*ts, dtt).sum()
    grads = torch.autograd.grad(s, ts + ([] if dtt is None else [dtt]))
    assert torch.isfinite(s)
    assert all(torch.isfinite(torch.view_as_real(g) if g.is_complex() else g).all() for g in grads)


def test_float32_layer_gives_float32_hsvs_close_to_float64():
    layer = _layer(N=16, H=4).float()
    s32 = hsv_sum(layer)
    s64 = hsv_sum(layer, dtype=torch.float64)
    assert s32.dtype == torch.float32 and s64.dtype == torch.float64
    assert abs(s32.item() - s64.item()) <= 1e-4 * s64.item()
    p = layer_params(layer, "discrete", torch.float64)
    assert p["Lambda"].dtype == torch.complex128 and p["dt"].shape == (1, 4)


def _image_model(seed=0):
    torch.manual_seed(seed)
    return S4Model(ModelConfig(d_input=1, d_output=4, d_model=8, d_state=8, n_layers=2))


def _train(model, weight, steps, x, y):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y) + hankel_penalty(model, weight)
        loss.backward()
        opt.step()
    return model


def test_adamw_with_the_hankel_penalty_decreases_the_hsv_sum():
    torch.manual_seed(1)
    x, y = torch.randn(8, 64), torch.randint(0, 4, (8,))
    start = hsv_sum(_image_model()).item()
    plain = hsv_sum(_train(_image_model(), 0.0, 20, x, y)).item()
    reg = hsv_sum(_train(_image_model(), 1e-2, 20, x, y)).item()
    assert reg < 0.8 * start and reg < 0.8 * plain, (start, plain, reg)


def test_zero_weight_adds_exactly_nothing():
    torch.manual_seed(2)
    x, y = torch.randn(4, 32), torch.randint(0, 4, (4,))
    a = _train(_image_model(), 0.0, 3, x, y)
    # the same steps without any penalty term, and with the penalty computed but multiplied by 0
    b = _image_model()
    opt = torch.optim.AdamW(b.parameters(), lr=1e-2)
    c = _image_model()
    opt_c = torch.optim.AdamW(c.parameters(), lr=1e-2)
    for _ in range(3):
        for m, o, extra in ((b, opt, None), (c, opt_c, lambda m: 0.0 * hsv_sum(m))):
            o.zero_grad()
            loss = torch.nn.functional.cross_entropy(m(x), y)
            if extra is not None:
                loss = loss + extra(m)
            loss.backward()
            o.step()
    for (n, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb) and torch.equal(pa, pc), n
    assert hankel_penalty(a, 0.0).item() == 0.0 and not hankel_penalty(a, 0.0).requires_grad


def test_bad_inputs_are_rejected():
    layer = _layer()
    with pytest.raises(ValueError, match="route"):
        hsv_sum(layer, route="bilinear")
    with pytest.raises(ValueError, match="weight"):
        hankel_penalty(_image_model(), -1.0)
    with pytest.raises(ValueError, match="dt"):
        hsv_sum({"Lambda": torch.tensor([-1 + 0j]), "B": torch.tensor([1 + 0j]), "C": torch.tensor([1 + 0j])})
    with pytest.raises(ValueError, match="one shape"):
        hankel_singular_values_torch(torch.tensor([-1 + 0j]), torch.tensor([1 + 0j, 1]), torch.tensor([1 + 0j]))


@pytest.mark.slow
def test_benchmark_quick_mode_runs_and_its_checks_pass():
    p = subprocess.run(
        [sys.executable, "bench/hsv_reg.py", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "CHECK" in p.stdout and "FAIL" not in p.stdout


def test_doubling_scan_and_real_expm1_equal_their_torch_references():
    from dssbt.reduction.hankel import _exclusive_cumprod, _expm1

    g = torch.Generator().manual_seed(0)
    R = torch.randn(3, 7, 9, dtype=torch.complex128, generator=g)
    R[0, 2, 4] = 0  # exact zeros (repeated poles) must stay exact
    ref = torch.cat([torch.ones_like(R[..., :1]), torch.cumprod(R[..., :-1], dim=-1)], dim=-1)
    torch.testing.assert_close(_exclusive_cumprod(R), ref, rtol=1e-14, atol=0)
    assert torch.all(_exclusive_cumprod(R)[0, 2, 5:] == 0)
    a = torch.cat([torch.randn(50, dtype=torch.float64, generator=g), torch.tensor([-1e-9, 0.0, 3e-7])])
    b = torch.cat([torch.randn(50, dtype=torch.float64, generator=g) * 3, torch.tensor([1e-9, 0.0, -2e-8])])
    torch.testing.assert_close(_expm1(a, b), torch.expm1(torch.complex(a, b)), rtol=1e-14, atol=1e-300)


def test_penalty_under_autocast_is_computed_in_full_precision():
    model = _image_model()
    ref = hankel_penalty(model, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = hankel_penalty(model, 0.5)
    assert got.dtype == torch.float32 and torch.equal(got, ref)
