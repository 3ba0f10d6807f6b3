import numpy as np
import pytest
from needs import need_module
from scipy.linalg import solve_continuous_lyapunov, solve_discrete_lyapunov

from dssbt.oracles import embed, random_stable, real_mimo, trained_like_channel, transfer
from dssbt.reduction import balance, balanced_truncation, gramians_continuous, gramians_discrete, reduce, truncate, zoh


def frequency_grid(Lambda: np.ndarray) -> np.ndarray:
    """Points on the imaginary axis: a wide linear grid plus every pole's imaginary part (where peaks sit)."""
    w = np.concatenate([np.linspace(-60, 60, 6001), Lambda.imag.ravel()])
    return 1j * np.unique(w)


def circle_grid(Lambda_bar: np.ndarray) -> np.ndarray:
    th = np.concatenate([np.linspace(-np.pi, np.pi, 8001), np.angle(Lambda_bar).ravel()])
    return np.exp(1j * np.unique(th))


def transfer_discrete(Lambda_bar, B_bar, C, z):
    """ZOH system x_k = Lambda_bar x_(k-1) + B_bar u_k, y_k = C x_k: G(z) = z * sum C B_bar / (z - Lambda_bar)."""
    return z * transfer(Lambda_bar, B_bar, C, z)


# ----- Gramians ---------------------------------------------------------------------------------------------------


def test_continuous_gramians_match_scipy_and_solve_lyapunov():
    rng = np.random.default_rng(0)
    Lambda, B, C = random_stable(rng, (3,), 7)
    P, Q = gramians_continuous(Lambda, B, C)
    for i in range(3):
        A = np.diag(Lambda[i])
        b, c = B[i][:, None], C[i][None, :]
        np.testing.assert_allclose(P[i], solve_continuous_lyapunov(A, -b @ b.conj().T), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(Q[i], solve_continuous_lyapunov(A.conj().T, -c.conj().T @ c), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(A @ P[i] + P[i] @ A.conj().T + b @ b.conj().T, 0, atol=1e-12)
        np.testing.assert_allclose(A.conj().T @ Q[i] + Q[i] @ A + c.conj().T @ c, 0, atol=1e-12)


def test_discrete_gramians_match_scipy_and_solve_stein():
    rng = np.random.default_rng(1)
    Lambda, B, C = random_stable(rng, (3,), 7)
    Lb, Bb = zoh(Lambda, B, np.array([0.05, 0.2, 1.0]))
    P, Q = gramians_discrete(Lb, Bb, C)
    for i in range(3):
        A = np.diag(Lb[i])
        b, c = Bb[i][:, None], C[i][None, :]
        np.testing.assert_allclose(P[i], solve_discrete_lyapunov(A, b @ b.conj().T), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(Q[i], solve_discrete_lyapunov(A.conj().T, c.conj().T @ c), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(A @ P[i] @ A.conj().T + b @ b.conj().T, P[i], rtol=1e-10, atol=1e-12)
    P2, Q2 = gramians_discrete(Lb, Bb, C, dtLambda=np.array([0.05, 0.2, 1.0])[:, None] * Lambda)
    np.testing.assert_allclose(P2, P, rtol=1e-10)
    np.testing.assert_allclose(Q2, Q, rtol=1e-10)


def test_zoh_matches_matrix_exponential_of_the_augmented_system():
    from scipy.linalg import expm

    rng = np.random.default_rng(2)
    Lambda, B, _ = random_stable(rng, (), 5)
    dt = 0.3
    M = np.zeros((6, 6), complex)
    M[:5, :5], M[:5, 5] = np.diag(Lambda), B
    E = expm(M * dt)
    Lb, Bb = zoh(Lambda, B, np.array(dt))
    np.testing.assert_allclose(Lb, np.diag(E[:5, :5]), rtol=1e-12)
    np.testing.assert_allclose(Bb, E[:5, 5], rtol=1e-10)


# ----- balanced truncation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["continuous", "discrete"])
def test_bt_hsvs_sorted_positive_reduced_stable_and_hinf_error_below_bound(route):
    rng = np.random.default_rng(3)
    Lambda, B, C = random_stable(rng, (4, 3), 12)
    dt = rng.uniform(0.02, 0.5, (4, 3)) if route == "discrete" else None
    f = balance(Lambda, B, C, dt=dt)
    assert np.all(f.hsv > 0) and np.all(np.diff(f.hsv, axis=-1) <= 0)
    for r in (1, 3, 6, 11):
        res = truncate(f, r)
        assert res.Lambda.shape == (4, 3, r) and res.route == route
        assert np.all(res.Lambda.real < 0)
        np.testing.assert_allclose(res.bound, 2 * f.hsv[..., r:].sum(-1), rtol=1e-12)
        if route == "continuous":
            s = frequency_grid(Lambda)
            err = np.abs(transfer(Lambda, B, C, s) - transfer(res.Lambda, res.B, res.C, s)).max(-1)
        else:
            z = circle_grid(f.A)
            Lbr, Bbr = zoh(res.Lambda, res.B, dt)
            err = np.abs(transfer_discrete(f.A, f.B, C, z) - transfer_discrete(Lbr, Bbr, res.C, z)).max(-1)
        assert np.all(err <= res.bound * (1 + 1e-9)), (r, err / res.bound)
        assert np.all(err > 0.05 * res.bound)  # the sampled error is of the bound's size, not vacuous


@pytest.mark.parametrize("dt", [None, 0.1])
def test_bt_at_full_order_reproduces_the_transfer_function(dt):
    rng = np.random.default_rng(4)
    Lambda, B, C = random_stable(rng, (5,), 10)
    dts = None if dt is None else np.full(5, dt)
    res = reduce(Lambda, B, C, 10, dt=dts)
    s = frequency_grid(Lambda)
    G, Gr = transfer(Lambda, B, C, s), transfer(res.Lambda, res.B, res.C, s)
    assert np.abs(G - Gr).max() < 1e-8 * np.abs(G).max()
    assert np.all(res.bound == 0)


@pytest.mark.parametrize("seed", range(6))
def test_bt_agrees_with_python_control_slycot_by_invariants(seed):
    control = need_module("control", "python-control (test extra) is the BT oracle")
    need_module("slycot", "python-control's balred needs slycot (test extra)")
    rng = np.random.default_rng(10 + seed)
    N = 10
    Lambda, B, C = random_stable(rng, (), N)
    sys = real_mimo(Lambda, B, C)
    hsv_lib = control.hsvd(sys)  # 2N values: each HSV of the complex system appears twice
    f = balance(Lambda, B, C)
    # slycot's smallest HSVs carry absolute errors ~1e-11 * hsv[0] (see the mpmath test below for ours)
    atol = 1e-10 * f.hsv[0]
    np.testing.assert_allclose(hsv_lib[::2], f.hsv, rtol=1e-8, atol=atol)
    np.testing.assert_allclose(hsv_lib[1::2], f.hsv, rtol=1e-8, atol=atol)
    for r in (2, 5):
        res = truncate(f, r)
        red = control.balred(sys, 2 * r, method="truncate")
        for s in (0.0, 0.7j, -2.3j, 5j, 0.2 + 1.1j):
            ours, lib = embed(res.Lambda, res.B, res.C, s), red(s)
            np.testing.assert_allclose(ours, lib, rtol=1e-6, atol=1e-6 * np.abs(lib).max())


@pytest.mark.parametrize("seed", [10, 13])
def test_hsvs_match_a_50_digit_computation(seed):
    mp = need_module("mpmath", "the 50-digit reference (test extra)")
    mp.mp.dps = 50
    rng = np.random.default_rng(seed)
    N = 10
    Lambda, B, C = random_stable(rng, (), N)
    Lm, Bm, Cm = ([mp.mpc(complex(x)) for x in a] for a in (Lambda, B, C))
    P, Q = mp.matrix(N, N), mp.matrix(N, N)
    for i in range(N):
        for j in range(N):
            P[i, j] = -Bm[i] * mp.conj(Bm[j]) / (Lm[i] + mp.conj(Lm[j]))
            Q[i, j] = -mp.conj(Cm[i]) * Cm[j] / (mp.conj(Lm[i]) + Lm[j])
    exact = sorted((float(mp.sqrt(mp.re(e))) for e in mp.eig(P * Q)[0]), reverse=True)
    np.testing.assert_allclose(balance(Lambda, B, C).hsv, exact, rtol=1e-9)


# ----- robustness: rank deficiency, repeated poles, poles near the imaginary axis ---------------------------------


def assert_valid_reduction(Lambda, B, C, r, dt=None, floor=1e-8):
    """Finite, stable, and the sampled H-inf error within the bound plus a round-off floor ``floor * ||G||_inf``.

    The floor is real, not slack for a bug: re-diagonalising the reduced A moves a pole by ~1e-16 |A| cond(V), and
    near a slow pole (|Re| small) G changes by that shift / Re^2 -- e.g. 1e-12 / (1e-3)^2 = 1e-6 for a peak of 1e3.
    """
    res = reduce(Lambda, B, C, r, dt=dt)
    for a in (res.Lambda, res.B, res.C, res.bound):
        assert np.all(np.isfinite(a))
    assert np.all(res.Lambda.real < 0)
    if dt is None:
        s = frequency_grid(Lambda)
        G, Gr = transfer(Lambda, B, C, s), transfer(res.Lambda, res.B, res.C, s)
    else:
        Lb, Bb = zoh(Lambda, B, dt)
        z = circle_grid(Lb)
        Lbr, Bbr = zoh(res.Lambda, res.B, dt)
        G, Gr = transfer_discrete(Lb, Bb, C, z), transfer_discrete(Lbr, Bbr, res.C, z)
    err, scale = np.abs(G - Gr).max(-1), np.abs(G).max()
    assert np.all(err <= res.bound * (1 + 1e-6) + floor * scale), (err, res.bound, scale)
    return res


@pytest.mark.parametrize("dt", [None, 0.1])
def test_repeated_poles_make_a_nonminimal_system_that_still_reduces(dt):
    rng = np.random.default_rng(5)
    L0, B, C = random_stable(rng, (2,), 8)
    Lambda = np.concatenate([L0[:, :4], L0[:, :4]], -1)  # every pole twice: rank of the Gramians <= 4
    dts = None if dt is None else np.full(2, dt)
    res = assert_valid_reduction(Lambda, B, C, 6, dts)
    assert np.all(res.rank == 4)  # two padding modes per channel
    assert np.all(res.hsv[:, 4:] < 1e-10 * res.hsv[:, :1])


def test_channel_with_zero_output_and_uncontrollable_modes():
    rng = np.random.default_rng(6)
    Lambda, B, C = random_stable(rng, (3,), 8)
    C[0] = 0  # a dead channel: every HSV is 0
    B[1, :5] = 0  # five uncontrollable modes
    res = assert_valid_reduction(Lambda, B, C, 4)
    assert res.rank[0] == 0 and np.all(res.C[0] == 0) and res.bound[0] == 0
    assert res.rank[1] == 3
    res = assert_valid_reduction(Lambda, B, C, 8)


def test_fast_decaying_hsvs_of_a_trained_like_channel():
    Lambda, B, C = trained_like_channel()
    f = balance(Lambda, B, C)
    assert f.hsv[0, -1] < 1e-10 * f.hsv[0, 0]  # numerically rank-deficient Gramians
    for r in (4, 16, 32, 63):
        assert_valid_reduction(Lambda, B, C, r)
        assert_valid_reduction(Lambda[None], B[None], C[None], r, dt=np.array([0.05]))


def test_poles_close_to_the_imaginary_axis():
    rng = np.random.default_rng(8)
    Lambda, B, C = random_stable(rng, (2,), 10)
    # Poles 1e-7 from the axis (1e-9 from the unit circle after ZOH with dt = 0.01): a pole shift of one ulp moves
    # the peak of |G| by ~eps / distance of itself, so the round-off floor grows to 1e-7 (1e-6 discrete) of ||G||_inf.
    Lambda[:, :3] = -1e-7 + 1j * Lambda[:, :3].imag
    for r in (2, 5, 9):
        assert_valid_reduction(Lambda, B, C, r, floor=1e-7)
        assert_valid_reduction(Lambda, B, C, r, dt=np.array([0.01, 0.1]), floor=1e-5)


# ----- bad input --------------------------------------------------------------------------------------------------


def test_bad_input_is_a_clear_error():
    rng = np.random.default_rng(9)
    Lambda, B, C = random_stable(rng, (2, 3), 6)
    with pytest.raises(ValueError, match=r"r must be an integer in \[1, N=6\], got 7"):
        reduce(Lambda, B, C, 7)
    with pytest.raises(ValueError, match=r"got 0"):
        reduce(Lambda, B, C, 0)
    with pytest.raises(ValueError, match="unknown reduction method 'pod'"):
        reduce(Lambda, B, C, 2, method="pod")
    bad = Lambda.copy()
    bad[1, 2, 4] = 0.1 + 2j
    with pytest.raises(ValueError, match=r"Re >= 0 \(unstable\) at index \(1, 2, 4\)"):
        reduce(bad, B, C, 2)
    badB = B.copy()
    badB[0, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"B is not finite at index \(0, 1, 0\)"):
        reduce(Lambda, badB, C, 2)
    with pytest.raises(ValueError, match=r"dt must be finite and > 0"):
        reduce(Lambda, B, C, 2, dt=np.zeros((2, 3)))


def test_balanced_truncation_alias_is_reduce_bt():
    rng = np.random.default_rng(11)
    Lambda, B, C = random_stable(rng, (2,), 6)
    a, b = balanced_truncation(Lambda, B, C, 3), reduce(Lambda, B, C, 3, method="bt")
    np.testing.assert_array_equal(a.Lambda, b.Lambda)


def test_from_zoh_inverts_zoh_on_the_principal_branch():
    from dssbt.reduction.gramians import from_zoh

    rng = np.random.default_rng(12)
    Lambda, B, _ = random_stable(rng, (5,), 8, im_scale=20.0)
    dt = rng.uniform(0.01, 0.15, 5)  # |Im(dt Lambda)| <= 3 < pi: the principal branch is Lambda itself
    Lambda_back, B_back = from_zoh(*zoh(Lambda, B, dt), dt)
    np.testing.assert_allclose(Lambda_back, Lambda, rtol=1e-12)
    np.testing.assert_allclose(B_back, B, rtol=1e-10)
