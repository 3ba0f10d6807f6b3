"""Reduction methods beyond BT: balanced singular perturbation, modal truncation, H2-optimal (IRKA)."""

import warnings

import numpy as np
import pytest
from needs import need_module
from scipy.integrate import quad
from scipy.linalg import solve_continuous_lyapunov, solve_discrete_lyapunov

from dssbt.oracles import random_stable, simulate_dense, trained_like_channel, transfer
from dssbt.reduction import balance, reduce
from dssbt.reduction.h2 import h2_error, h2_norm


def dtransfer(Lambda, B, C, s):
    """dG/ds = -sum C B / (s - Lambda)^2 at points s (S,). Returns (..., S)."""
    return -(C[..., None, :] * B[..., None, :] / (s[:, None] - Lambda[..., None, :]) ** 2).sum(-1)


def discretise(Lambda, B, dt):
    """ZOH in closed form, written out here: Lambda_bar = exp(dt Lambda), B_bar = expm1(dt Lambda) / Lambda * B."""
    dtL = np.asarray(dt)[..., None] * Lambda
    return np.exp(dtL), np.expm1(dtL) / Lambda * B


def kernel_transfer(Lambda_bar, B_bar, C, z, D=0.0):
    """``sum_l K_c[l] z^-l + D = sum_n C_n B_bar_n z / (z - Lambda_bar_n) + D`` at points z (S,). Returns (..., S)."""
    return z * transfer(Lambda_bar, B_bar, C, z) + np.asarray(D)[..., None]


def dense_kernel(Lambda_bar, B_bar, C, L, D=0.0):
    """Complex kernel ``K_c[l] = sum_n C_n B_bar_n Lambda_bar_n^l`` (+ D at l = 0) by powers, (..., L)."""
    powers = Lambda_bar[..., None] ** np.arange(L)  # (..., N, L)
    K = np.einsum("...n,...nl->...l", C * B_bar, powers)
    K[..., 0] += D
    return K


def test_h2_norm_closed_form_matches_lyapunov_and_quadrature():
    rng = np.random.default_rng(0)
    Lambda, B, C = random_stable(rng, (3,), 6)
    got = h2_norm(Lambda, B, C)
    for i in range(3):
        P = solve_continuous_lyapunov(np.diag(Lambda[i]), -np.outer(B[i], B[i].conj()))
        dense = np.sqrt((C[i] @ P @ C[i].conj()).real)
        integral = quad(
            lambda w: abs(transfer(Lambda[i], B[i], C[i], np.array([1j * w]))[0]) ** 2, -np.inf, np.inf, limit=500
        )[0] / (2 * np.pi)
        assert got[i] == pytest.approx(dense, rel=1e-10)
        assert got[i] == pytest.approx(np.sqrt(integral), rel=1e-6)
    r = reduce(Lambda, B, C, 3)
    err = h2_error(Lambda, B, C, r.Lambda, r.B, r.C)
    integral = quad(
        lambda w: (
            abs(
                (
                    transfer(Lambda[0], B[0], C[0], np.array([1j * w]))
                    - transfer(r.Lambda[0], r.B[0], r.C[0], np.array([1j * w]))
                )[0]
            )
            ** 2
        ),
        -np.inf,
        np.inf,
        limit=500,
    )[0] / (2 * np.pi)
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


@pytest.mark.slow
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


# ----- discrete route: balanced singular perturbation ---------------------------------------------------------------


def test_discrete_bsp_balances_the_kernel_realization_g2():
    """hsv of discrete bsp = HSVs of (Lambda_bar, B_bar, C Lambda_bar), from dense Stein equations."""
    rng = np.random.default_rng(20)
    Lambda, B, C = random_stable(rng, (4,), 8)
    dt = np.array([0.05, 0.2, 0.5, 1.0])
    res = reduce(Lambda, B, C, 3, method="bsp", dt=dt)
    Lb, Bb = discretise(Lambda, B, dt)
    for i in range(4):
        A, b, c = np.diag(Lb[i]), Bb[i][:, None], (C[i] * Lb[i])[None, :]
        P = solve_discrete_lyapunov(A, b @ b.conj().T)
        Q = solve_discrete_lyapunov(A.conj().T, c.conj().T @ c)
        hsv = np.sort(np.sqrt(np.abs(np.linalg.eigvals(P @ Q))))[::-1]
        np.testing.assert_allclose(res.hsv[i], hsv, rtol=1e-8, atol=1e-12 * hsv[0])
        np.testing.assert_allclose(res.bound[i], 2 * hsv[3:].sum(), rtol=1e-8)
    np.testing.assert_allclose(res.hsv, balance(Lambda, B, C * Lb, dt=dt).hsv, rtol=1e-10, atol=1e-13)
    assert np.all(res.hsv < balance(Lambda, B, C, dt=dt).hsv)  # the Hankel matrix of G1 shifted by one step


@pytest.mark.parametrize("r", [1, 3, 7, 11])
def test_discrete_bsp_matches_the_dc_gain_of_the_kernel_exactly(r):
    rng = np.random.default_rng(30 + r)
    Lambda, B, C = random_stable(rng, (2, 25), 12)
    dt = rng.uniform(0.02, 1.0, (2, 25))
    res = reduce(Lambda, B, C, r, method="bsp", dt=dt)
    assert res.method == "bsp" and res.route == "discrete" and res.D.shape == (2, 25)
    assert np.all(res.Lambda.real < 0) and np.all(res.D != 0)  # SPA on every channel, no BT fallback here
    Lb, Bb = discretise(Lambda, B, dt)
    Lbr, Bbr = discretise(res.Lambda, res.B, dt)
    dc = (C * Bb / (1 - Lb)).sum(-1)  # sum_l K_c[l]
    dc_r = (res.C * Bbr / (1 - Lbr)).sum(-1) + res.D
    np.testing.assert_allclose(dc, -(C * B / Lambda).sum(-1), rtol=1e-9)  # ZOH keeps the continuous DC gain
    np.testing.assert_allclose(dc_r, dc, rtol=1e-9, atol=1e-12 * np.abs(dc).max())
    np.testing.assert_allclose(dc_r.real, dc.real, rtol=1e-9, atol=1e-12 * np.abs(dc).max())  # what a layer sums
    bt = reduce(Lambda, B, C, r, dt=dt)
    assert not np.allclose(bt.Lambda, res.Lambda)


@pytest.mark.parametrize("r", [2, 5, 9])
def test_discrete_bsp_kernel_error_is_within_the_spa_bound(r):
    """The reduced kernel, by powers with D_r at lag 0, against the full one: sup over the unit circle <= bound."""
    rng = np.random.default_rng(40 + r)
    S, N, L = 20, 12, 2**14
    Lambda, B, C = random_stable(rng, (S,), N)
    dt = rng.uniform(0.1, 0.5, S)
    res = reduce(Lambda, B, C, r, method="bsp", dt=dt)
    Lb, Bb = discretise(Lambda, B, dt)
    Lbr, Bbr = discretise(res.Lambda, res.B, dt)
    dK = dense_kernel(Lb, Bb, C, L) - dense_kernel(Lbr, Bbr, res.C, L, res.D)  # (S, L)
    # what the first L lags leave out, per channel: sum_n |C_n B_bar_n| |Lambda_bar_n|^L / (1 - |Lambda_bar_n|)
    tail = sum(
        (np.abs(c * b) * np.abs(lb) ** L / (1 - np.abs(lb))).sum(-1) for lb, b, c in ((Lb, Bb, C), (Lbr, Bbr, res.C))
    )
    assert np.all(tail < 1e-9 * res.bound)
    err = np.abs(np.fft.fft(dK, n=2 * L)).max(-1)  # sup over 2L equispaced points of the unit circle
    assert np.all(err <= res.bound * (1 + 1e-9) + tail), err / res.bound
    assert np.all(err > 0.2 * res.bound)  # not vacuous
    # The same through the layer's own recurrence (real input, real output Re(C x) + Re(D) u), by a dense
    # real realization: the l2 gain of the error system is at most the bound.
    u = rng.normal(size=300)
    for i in range(3):
        y = simulate_dense(Lambda[i], B[i], C[i], 0.0, dt[i], u)
        y_r = simulate_dense(res.Lambda[i], res.B[i], res.C[i], res.D[i].real, dt[i], u)
        assert 0 < np.linalg.norm(y - y_r) <= res.bound[i] * np.linalg.norm(u)


@pytest.mark.parametrize("r", [3, 4, 6])
def test_discrete_bsp_at_and_beyond_the_numerical_rank(r):
    rng = np.random.default_rng(50)
    L0, B, C = random_stable(rng, (3,), 8)
    Lambda = np.concatenate([L0[:, :4], L0[:, :4]], -1)  # every pole twice: numerical rank 4
    B[2], C[2, :3] = B[0], 0  # channel 2: dead modes
    C[1] = 0  # channel 1: dead channel, every HSV 0
    dt = np.array([0.1, 0.3, 0.05])
    res = reduce(Lambda, B, C, r, method="bsp", dt=dt)
    for a in (res.Lambda, res.B, res.C, res.D, res.bound):
        assert np.all(np.isfinite(a))
    assert np.all(res.Lambda.real < 0)
    bt = reduce(Lambda, B, C, r, dt=dt)
    assert np.all(res.D[1] == 0) and np.all(res.C[1] == 0) and res.bound[1] == 0
    if r > 4:  # r beyond the numerical rank: BT (with padding modes), no feedthrough
        np.testing.assert_array_equal(res.D, 0)
        np.testing.assert_array_equal(res.Lambda, bt.Lambda)
        np.testing.assert_array_equal(res.rank, bt.rank)
    Lb, Bb = discretise(Lambda, B, dt)
    Lbr, Bbr = discretise(res.Lambda, res.B, dt)
    z = np.exp(1j * np.unique(np.concatenate([np.linspace(-np.pi, np.pi, 8001), np.angle(Lb).ravel()])))
    G, Gr = kernel_transfer(Lb, Bb, C, z), kernel_transfer(Lbr, Bbr, res.C, z, res.D)
    err = np.abs(G - Gr).max(-1)
    assert np.all(err <= res.bound * (1 + 1e-6) + 1e-8 * np.abs(G).max())
    if r == 3:  # SPA proper on the live channels: the DC gain is exact
        assert np.all(res.D[[0, 2]] != 0)
        np.testing.assert_allclose(Gr[:, np.argmin(np.abs(z - 1))], G[:, np.argmin(np.abs(z - 1))], atol=1e-10)


def test_discrete_bsp_of_a_trained_like_channel_with_fast_decaying_hsvs():
    Lambda, B, C = trained_like_channel()
    dt = np.array([0.05])
    Lb, Bb = discretise(Lambda, B, dt)
    z = np.exp(1j * np.unique(np.concatenate([np.linspace(-np.pi, np.pi, 8001), np.angle(Lb).ravel()])))
    G = kernel_transfer(Lb, Bb, C, z)
    for r in (4, 16, 32, 63):
        res = reduce(Lambda, B, C, r, method="bsp", dt=dt)
        assert np.all(np.isfinite(res.Lambda)) and np.all(np.isfinite(res.D)) and np.all(res.Lambda.real < 0)
        Lbr, Bbr = discretise(res.Lambda, res.B, dt)
        err = np.abs(G - kernel_transfer(Lbr, Bbr, res.C, z, res.D)).max(-1)
        assert np.all(err <= res.bound * (1 + 1e-6) + 1e-8 * np.abs(G).max()), (r, err, res.bound)


# ----- discrete route: H2 (IRKA) ---------------------------------------------------------------------------------


def test_discrete_h2_norm_matches_stein_and_the_kernel_energy():
    rng = np.random.default_rng(60)
    Lambda, B, C = random_stable(rng, (3,), 6)
    dt = np.array([0.1, 0.3, 1.0])
    got = h2_norm(Lambda, B, C, dt=dt)
    Lb, Bb = discretise(Lambda, B, dt)
    K = dense_kernel(Lb, Bb, C, 20000)  # |Lambda_bar| <= exp(-0.005): the tail beyond 20000 lags is < 1e-40
    np.testing.assert_allclose(got, np.sqrt((np.abs(K) ** 2).sum(-1)), rtol=1e-10)
    for i in range(3):
        P = solve_discrete_lyapunov(np.diag(Lb[i]), np.outer(Bb[i], Bb[i].conj()))
        np.testing.assert_allclose(got[i], np.sqrt((C[i] @ P @ C[i].conj()).real), rtol=1e-10)
    r = reduce(Lambda, B, C, 3, dt=dt)
    Lbr, Bbr = discretise(r.Lambda, r.B, dt)
    err = h2_error(Lambda, B, C, r.Lambda, r.B, r.C, dt=dt)
    np.testing.assert_allclose(err, np.linalg.norm(K - dense_kernel(Lbr, Bbr, r.C, 20000), axis=-1), rtol=1e-8)
    assert np.all(err > 0) and not np.allclose(err, h2_error(Lambda, B, C, r.Lambda, r.B, r.C))


@pytest.mark.slow
def test_discrete_irka_satisfies_the_interpolation_conditions_and_beats_bt_in_most_trials(capsys):
    rng = np.random.default_rng(70)
    Lambda, B, C = random_stable(rng, (300,), 12)
    dt = rng.uniform(0.05, 1.0, 300)  # dt |Im Lambda| up to 5 > pi: aliased poles included
    Lb, Bb = discretise(Lambda, B, dt)
    fractions, ratios = {}, {}
    for r in (2, 4, 6):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a few channels fall back to BT, by design
            res = reduce(Lambda, B, C, r, method="h2", dt=dt, tol=1e-10, max_iter=200)
        assert res.route == "discrete" and np.all(res.Lambda.real < 0)
        ok = res.converged
        assert ok.mean() > 0.8
        Lbr, Bbr = discretise(res.Lambda, res.B, dt)
        assert np.all(np.abs(Lbr) < 1)
        sigma = 1 / np.conj(Lbr[ok])  # (n_ok, r) reduced poles reflected across the unit circle
        for fn in (transfer, dtransfer):  # G1(z) = sum C B_bar / (z - Lambda_bar) and its derivative
            full = np.stack([fn(Lb[ok][k], Bb[ok][k], C[ok][k], sigma[k]) for k in range(ok.sum())])
            red = np.stack([fn(Lbr[ok][k], Bbr[ok][k], res.C[ok][k], sigma[k]) for k in range(ok.sum())])
            np.testing.assert_allclose(red, full, rtol=1e-6, atol=1e-8 * np.abs(full).max())
        bt = reduce(Lambda, B, C, r, dt=dt)
        e_h2 = h2_error(Lambda, B, C, res.Lambda, res.B, res.C, dt=dt)
        e_bt = h2_error(Lambda, B, C, bt.Lambda, bt.B, bt.C, dt=dt)
        fractions[r] = float(np.mean(e_h2 <= e_bt * (1 + 1e-9)))
        ratios[r] = round(float(np.median(e_h2 / e_bt)), 3)
        assert fractions[r] >= 0.8
    with capsys.disabled():
        print(
            f"\nIRKA discrete-H2 error <= BT's on random stable ZOH systems (N=12, 300 each): {fractions}; "
            f"median ratio IRKA/BT: {ratios}"
        )


def test_discrete_h2_falls_back_to_bt_with_a_warning_when_not_converged():
    rng = np.random.default_rng(80)
    Lambda, B, C = random_stable(rng, (20,), 12)
    dt = np.full(20, 0.1)
    with pytest.warns(RuntimeWarning, match="IRKA did not converge for 20 of 20 channels"):
        res = reduce(Lambda, B, C, 4, method="h2", dt=dt, max_iter=1, tol=0.0)
    bt = reduce(Lambda, B, C, 4, dt=dt)
    np.testing.assert_array_equal(res.Lambda, bt.Lambda)
    assert not res.converged.any() and res.route == "discrete"


@pytest.mark.parametrize("dt", [None, 0.1])
def test_irka_keeps_bt_on_rank_deficient_channels_instead_of_failing_the_batch(dt):
    rng = np.random.default_rng(90)
    Lambda, B, C = random_stable(rng, (3,), 8)
    C[0] = 0  # dead channel: W^H V = 0
    B[1, :6] = 0  # two controllable modes: singular W^H V at r = 4
    dts = None if dt is None else np.full(3, dt)
    with pytest.warns(RuntimeWarning, match="IRKA did not converge for 2 of 3 channels"):
        res = reduce(Lambda, B, C, 4, method="h2", dt=dts)
    np.testing.assert_array_equal(res.converged, [False, False, True])
    bt = reduce(Lambda, B, C, 4, dt=dts)
    np.testing.assert_array_equal(res.Lambda[:2], bt.Lambda[:2])
    assert np.all(np.isfinite(res.Lambda)) and np.all(res.Lambda.real < 0)


def test_discrete_h2_norm_keeps_its_accuracy_for_poles_next_to_the_unit_circle():
    mp = need_module("mpmath", "the 40-digit reference (test extra)")
    mp.mp.dps = 40
    rng = np.random.default_rng(61)
    Lambda, B, C = random_stable(rng, (), 4)
    Lambda = -1e-9 * np.array([1, 2, 3, 4]) + 1j * Lambda.imag  # 1 - |Lambda_bar| ~ 1e-11 at dt = 0.01
    dt = 0.01
    lb = [mp.exp(dt * mp.mpc(complex(x))) for x in Lambda]
    w = [
        mp.mpc(complex(c)) * (z - 1) / mp.mpc(complex(x)) * mp.mpc(complex(b)) for c, b, x, z in zip(C, B, Lambda, lb)
    ]  # C_n B_bar_n
    exact = mp.sqrt(mp.re(sum(w[i] * mp.conj(w[j]) / (1 - lb[i] * mp.conj(lb[j])) for i in range(4) for j in range(4))))
    assert h2_norm(Lambda, B, C, dt=np.array(dt)) == pytest.approx(float(exact), rel=1e-9)


@pytest.mark.parametrize("method", ["bt", "bsp", "h2"])
@pytest.mark.parametrize("dt", [None, 0.3])
def test_re_diagonalised_methods_split_each_modes_gain_evenly(method, dt):
    """|B_n| = |C_n| per reduced mode, whatever length eig gave the eigenvectors (the DC-gain, bound and
    interpolation tests above check the transfer functions of these same split outputs)."""
    rng = np.random.default_rng(7)
    Lambda, B, C = random_stable(rng, (20,), 10)
    B = B * rng.uniform(0.01, 100, B.shape)  # far from balanced gains to start with
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = reduce(Lambda, B, C, 4, method=method, dt=None if dt is None else np.full(20, dt))
    assert np.all(np.abs(res.C) > 0)
    np.testing.assert_allclose(np.abs(res.B), np.abs(res.C), rtol=1e-10)


def test_reduction_options_in_hparams_are_checked():
    """parse_hparams checks the section's shape; the registry (which knows the methods) checks its entries."""
    from dssbt.hparams import parse_hparams
    from dssbt.reduction.registry import check_reduction_options

    def parse(text):
        hp = parse_hparams(text)
        check_reduction_options(hp.reduction)
        return hp

    hp = parse('{"reduction": {"h2": {"tol": 1e-6, "max_iter": 7}}}')
    assert hp.reduction == {"h2": {"tol": 1e-6, "max_iter": 7}} and hp.to_dict()["reduction"] == hp.reduction
    assert "reduction" not in parse("{}").to_dict()  # training jobs' hparams are unchanged
    for bad, message in (
        ('{"reduction": []}', r"reduction must be an object, got \[\]"),
        ('{"reduction": {"h2": 1}}', r"reduction.h2 must be an object, got 1"),
        ('{"reduction": {"bt": {}}}', r"unknown key reduction.bt; known: \['h2'\]"),
        ('{"reduction": {"h2": {"tolerance": 1}}}', r"unknown key reduction.h2.tolerance"),
        ('{"reduction": {"h2": {"max_iter": 2.5}}}', r"reduction.h2.max_iter must be int, got 2.5"),
        ('{"reduction": {"h2": {"max_iter": true}}}', r"reduction.h2.max_iter must be int, got True"),
        ('{"reduction": {"h2": {"max_iter": 0}}}', r"reduction.h2.max_iter must be > 0, got 0"),
    ):
        with pytest.raises(ValueError, match=message):
            parse(bad)


def test_hparams_imports_no_reduction_module():
    """The arrow runs one way: dssbt.hparams is a leaf that the reduction registry's users read, never a reader of it."""
    import subprocess
    import sys

    code = "import sys, dssbt.hparams; print(sorted(m for m in sys.modules if m.startswith('dssbt.reduction')))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "[]", p.stdout


def test_reduce_rejects_unknown_reduction_options(tmp_path):
    """dssbt reduce checks the hyper-parameters' reduction section against the registry before it reads anything."""
    from dssbt.stages import reduce_job

    with pytest.raises(ValueError, match=r"unknown key reduction.bt"):
        reduce_job(
            tmp_path / "none.pt", tmp_path / "r.pt", tmp_path / "r.json", order=4, hparams='{"reduction": {"bt": {}}}'
        )
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_irka_iteration_cap_reaches_the_reduction_through_the_cli(tmp_path):
    """max_iter = 1 cannot converge: every channel keeps BT (converged all False); the default converges."""
    import json
    import subprocess
    import sys

    from test_model import small_model

    from dssbt.checkpoint import save_model

    save_model(tmp_path / "pre.pt", small_model(), {"l_max": 32})
    converged = {}
    for name, hp in (("capped", '{"reduction": {"h2": {"max_iter": 1}}}'), ("default", "{}")):
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "dssbt",
                "reduce",
                "--model",
                str(tmp_path / "pre.pt"),
                "--order",
                "3",
                "--method",
                "h2",
                "--hparams",
                hp,
                "--out",
                str(tmp_path / f"{name}.pt"),
                "--report",
                str(tmp_path / f"{name}.json"),
            ],
            capture_output=True,
            text=True,
        )
        assert p.returncode == 0, p.stderr
        report = json.loads((tmp_path / f"{name}.json").read_text())
        converged[name] = np.concatenate([np.ravel(layer["converged"]) for layer in report["layers"]])
        assert report["options"] == json.loads(hp).get("reduction", {}).get("h2", {})
    assert not converged["capped"].any() and converged["default"].mean() > 0.5
