import numpy as np
import pytest

from dssbt.hippo import INITS, init_lambda, s4d_inv, s4d_lin, skew_hippo


def hippo_legs(M: int) -> np.ndarray:
    """HiPPO-LegS (M, M): A_nk = -sqrt(2n+1) sqrt(2k+1) for n > k, -(n+1) on the diagonal, 0 above."""
    q = np.sqrt(2 * np.arange(M) + 1.0)
    return -np.tril(np.outer(q, q), -1) - np.diag(np.arange(M) + 1.0)


@pytest.mark.parametrize("N", [1, 4, 16, 64])
def test_skew_hippo_equals_spectrum_of_normal_part_of_hippo_legs(N):
    M = 2 * N
    P = np.sqrt(np.arange(M) + 0.5)
    normal = hippo_legs(M) + np.outer(P, P)  # A = A_normal - P P^T
    ev = np.linalg.eigvals(normal)
    ev = ev[ev.imag > 0]
    ev = ev[np.argsort(ev.imag)]
    got = skew_hippo(N)
    assert got.shape == (N,)
    np.testing.assert_allclose(got, ev, rtol=1e-9, atol=1e-9)
    assert np.all(got.imag > 0)  # conjugate-free
    np.testing.assert_array_equal(got.real, -0.5)


def test_s4d_closed_forms():
    np.testing.assert_allclose(s4d_lin(3), [-0.5, -0.5 + 1j * np.pi, -0.5 + 2j * np.pi])
    N = 4
    expect = np.array([-0.5 + 1j * N / np.pi * (N / (2 * n + 1) - 1) for n in range(N)])
    np.testing.assert_allclose(np.sort_complex(s4d_inv(N)), np.sort_complex(expect))


@pytest.mark.parametrize("name", sorted(INITS))
def test_every_init_is_stable_by_name(name):
    Lam = init_lambda(name, 8, np.random.default_rng(0))
    assert Lam.shape == (8,) and np.all(Lam.real < 0)


def test_unknown_init_is_an_error():
    with pytest.raises(ValueError, match="unknown Lambda init 'legt'"):
        init_lambda("legt", 4)
