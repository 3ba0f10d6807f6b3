"""Reduction methods beyond BT: balanced singular perturbation, modal truncation, H2-optimal (IRKA)."""

import warnings

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.linalg import solve_continuous_lyapunov

from dssbt.reduction import reduce
from dssbt.reduction.h2 import h2_error, h2_norm
from reference import random_stable, transfer


def dtransfer(Lambda, B, C, s):
    """dG/ds = -sum C B / (s - Lambda)^2 at points s (S,). Returns (..., S)."""
    return -(C[..., None, :] * B[..., None, :] / (s[:, None] - Lambda[..., None, :]) ** 2).sum(-1)


def test_h2_norm_closed_form_matches_lyapunov_and_quadrature():
    rng = np.random.default_rng(0)
    Lambda, B, C = random_stable(rng, (3,), 6)
    got = h2_norm(Lambda, B, C)
    for i in range(3):
        P = solve_continuous_lyapunov(np.diag(Lambda[i]), -np.outer(B[i], B[i].conj()))
        dense = np.sqrt((C[i] @ P @ C[i].conj()).real)
        integral = quad(lambda w: abs(transfer(Lambda[i], B[i], C[i], np.array([1j * w]))[0]) ** 2,
                        -np.inf, np.inf, limit=500)[0] / (2 * np.pi)
        assert got[i] == pytest.approx(dense, rel=1e-10)
        assert got[i] == pytest.approx(np.sqrt(integral), rel=1e-6)
    r = reduce(Lambda, B, C, 3)
    err = h2_error(Lambda, B, C, r.Lambda, r.B, r.C)
    integral = quad(lambda w: abs((transfer(Lambda[0], B[0], C[0], np.array([1j * w]))
                                   - transfer(r.Lambda[0], r.B[0], r.C[0], np.array([1j * w])))[0]) ** 2,
                    -np.inf, np.inf, limit=500)[0] / (2 * np.pi)
    assert err[0] == pytest.approx(np.sqrt(integral), rel=1e-6)


@pytest.mark.parametrize("r", [1, 3, 7, 11])
def test_bsp_matches_the_dc_gain_exactly_and_respects_the_bt_bound(r):
    rng = np.random.default_rng(r)
    Lambda, B, C = random_stable(rng, (50,), 12)
    res = reduce(Lambda, B, C, r, method="bsp")
    assert res.method == "bsp" and np.all(res.Lambda.real < 0)
    G0 = transfer(Lambda, B, C, np.array([0j]))[..., 0]
    Gr0 = transfer(res.Lambda, res.B, res.C, np.array([0j]))[..., 0] + res.D
    np.testing.assert_allclose(Gr0, G0, rtol=1e-9, atol=1e-12 * np.abs(G0).max())
    bt = reduce(Lambda, B, C, r)
    assert not np.allclose(bt.Lambda, res.Lambda)  # a different reduced system, not BT relabelled
    s = 1j * np.unique(np.concatenate([np.linspace(-40, 40, 4001), Lambda.imag.ravel()]))
    G = transfer(Lambda, B, C, s)
    err = np.abs(G - transfer(res.Lambda, res.B, res.C, s) - res.D[:, None]).max(-1)
    assert np.all(err <= res.bound * (1 + 1e-6) + 1e-9 * np.abs(G).max())


@pytest.mark.parametrize("dt", [None, 0.1])
def test_modal_truncation_keeps_the_most_dominant_modes_unchanged(dt):
    rng = np.random.default_rng(3)
    Lambda, B, C = random_stable(rng, (4,), 9)
    res = reduce(Lambda, B, C, 3, method="modal", dt=None if dt is None else np.full(4, dt))
    for i in range(4):
        if dt is None:
            dom = [abs(C[i, n] * B[i, n]) / -Lambda[i, n].real for n in range(9)]
        else:
            lb = np.exp(dt * Lambda[i])
            dom = [abs(C[i, n] * (lb[n] - 1) / Lambda[i, n] * B[i, n]) / (1 - abs(lb[n])) for n in range(9)]
        top = sorted(sorted(range(9), key=lambda n: -dom[n])[:3])
        np.testing.assert_array_equal(res.kept[i], top)
        np.testing.assert_array_equal(res.Lambda[i], Lambda[i, top])
        np.testing.assert_array_equal(res.B[i], B[i, top])
        np.testing.assert_array_equal(res.C[i], C[i, top])


def test_irka_satisfies_the_h2_interpolation_conditions_and_beats_bt_in_most_trials(capsys):
    rng = np.random.default_rng(7)
    Lambda, B, C = random_stable(rng, (300,), 12)
    fractions = {}
    for r in (2, 4, 6):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a few channels fall back to BT, by design
            res = reduce(Lambda, B, C, r, method="h2", tol=1e-10, max_iter=200)
        ok = res.converged
        assert ok.mean() > 0.8
        sigma = -np.conj(res.Lambda[ok])  # (n_ok, r) mirrored reduced poles
        for fn in (transfer, dtransfer):
            full = np.stack([fn(Lambda[ok][k], B[ok][k], C[ok][k], sigma[k]) for k in range(ok.sum())])
            red = np.stack([fn(res.Lambda[ok][k], res.B[ok][k], res.C[ok][k], sigma[k]) for k in range(ok.sum())])
            np.testing.assert_allclose(red, full, rtol=1e-6, atol=1e-8 * np.abs(full).max())
        bt = reduce(Lambda, B, C, r)
        e_h2 = h2_error(Lambda, B, C, res.Lambda, res.B, res.C)
        e_bt = h2_error(Lambda, B, C, bt.Lambda, bt.B, bt.C)
        fractions[r] = float(np.mean(e_h2 <= e_bt * (1 + 1e-9)))
        assert fractions[r] >= 0.8
    with capsys.disabled():
        print(f"\nIRKA H2 error <= BT H2 error on random stable systems (N=12, 300 each): {fractions}")


def test_h2_falls_back_to_bt_with_a_warning_when_not_converged():
    rng = np.random.default_rng(8)
    Lambda, B, C = random_stable(rng, (20,), 12)
    with pytest.warns(RuntimeWarning, match="IRKA did not converge for 20 of 20 channels"):
        res = reduce(Lambda, B, C, 4, method="h2", max_iter=1, tol=0.0)
    bt = reduce(Lambda, B, C, 4)
    np.testing.assert_array_equal(res.Lambda, bt.Lambda)
    assert not res.converged.any()


def test_continuous_only_methods_refuse_the_discrete_route():
    rng = np.random.default_rng(9)
    Lambda, B, C = random_stable(rng, (2,), 5)
    for method in ("bsp", "h2"):
        with pytest.raises(ValueError, match=f"method {method} is implemented for the continuous route only"):
            reduce(Lambda, B, C, 2, method=method, dt=np.full(2, 0.1))
