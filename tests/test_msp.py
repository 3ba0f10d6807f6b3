"""Modal singular perturbation: the kept modes are modal truncation's, unchanged; the DC gain is exact."""

import numpy as np
import pytest

from dssbt.oracles import random_stable, transfer
from dssbt.reduction.methods import modal_singular_perturbation, modal_truncation


def dominant(Lambda, B, C, r, dt):
    """Indices (sorted) of the r most dominant modes of one channel, from explicit per-mode H-infinity norms."""
    N = len(Lambda)
    if dt is None:
        dom = [abs(C[n] * B[n]) / -Lambda[n].real for n in range(N)]
    else:
        lb = np.exp(dt * Lambda)
        dom = [abs(C[n] * (lb[n] - 1) / Lambda[n] * B[n]) / (1 - abs(lb[n])) for n in range(N)]
    return sorted(sorted(range(N), key=lambda n: -dom[n])[:r])


@pytest.mark.parametrize("r", [1, 4, 9])
def test_continuous_msp_keeps_the_dominant_modes_and_the_dc_gain(r):
    rng = np.random.default_rng(r)
    Lambda, B, C = random_stable(rng, (3, 10), 12)
    res = modal_singular_perturbation(Lambda, B, C, r)
    assert res.method == "msp" and res.route == "continuous" and res.D.shape == (3, 10)
    modal = modal_truncation(Lambda, B, C, r)
    np.testing.assert_array_equal(res.kept, modal.kept)
    for idx in np.ndindex(3, 10):
        top = dominant(Lambda[idx], B[idx], C[idx], r, None)
        np.testing.assert_array_equal(res.kept[idx], top)
        for got, full in ((res.Lambda, Lambda), (res.B, B), (res.C, C)):
            np.testing.assert_array_equal(got[idx], full[idx][top])  # bit-identical modes
    G0 = transfer(Lambda, B, C, np.array([0j]))[..., 0]
    Gr0 = transfer(res.Lambda, res.B, res.C, np.array([0j]))[..., 0] + res.D
    np.testing.assert_allclose(Gr0, G0, rtol=1e-12, atol=1e-14 * np.abs(G0).max())
    assert np.all(np.abs(res.D) > 0)
    assert not np.allclose(transfer(res.Lambda, res.B, res.C, np.array([0j]))[..., 0], G0)  # D is needed


@pytest.mark.parametrize("r", [1, 5, 11])
def test_discrete_msp_makes_the_kernel_sum_exact(r):
    """Full system's DC gain from a long dense kernel, sum_l C B_bar Lambda_bar^l, against the reduced kernel's
    closed-form sum plus D (and the real part, which a layer computes)."""
    rng = np.random.default_rng(10 + r)
    S, N, L = 16, 12, 6000
    Lambda, B, C = random_stable(rng, (S,), N)
    dt = rng.uniform(0.2, 1.0, S)  # |Lambda_bar| <= exp(-0.01): the kernel is below 1e-26 of its start after L
    res = modal_singular_perturbation(Lambda, B, C, r, dt=dt)
    assert res.route == "discrete"
    for s in range(S):
        np.testing.assert_array_equal(res.kept[s], dominant(Lambda[s], B[s], C[s], r, dt[s]))
    lb = np.exp(dt[:, None] * Lambda)
    bb = (lb - 1) / Lambda * B
    powers = lb[..., None] ** np.arange(L)  # (S, N, L)
    dc_full = np.einsum("sn,snl->s", C * bb, powers)
    lbr = np.exp(dt[:, None] * res.Lambda)
    dc_red = (res.C * (lbr - 1) / res.Lambda * res.B / (1 - lbr)).sum(-1) + res.D
    np.testing.assert_allclose(dc_red, dc_full, rtol=1e-10, atol=1e-12 * np.abs(dc_full).max())
    np.testing.assert_allclose(dc_red.real, dc_full.real, rtol=1e-10, atol=1e-12 * np.abs(dc_full).max())


def test_msp_at_full_order_is_the_system_itself():
    rng = np.random.default_rng(0)
    Lambda, B, C = random_stable(rng, (2,), 5)
    res = modal_singular_perturbation(Lambda, B, C, 5)
    np.testing.assert_array_equal(res.Lambda, Lambda)
    assert np.all(res.D == 0)
    with pytest.raises(ValueError, match="reduced order"):
        modal_singular_perturbation(Lambda, B, C, 0)
