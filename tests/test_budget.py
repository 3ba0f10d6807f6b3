"""Global state budgets (dssbt.reduction.budget) against brute-force search over all per-layer orders."""

import itertools

import numpy as np
import pytest

from dssbt.reduction.budget import allocate_budget, allocate_last, budget_states, discarded_energy


def random_hsvs(rng, sizes, channels=(2, 3)):
    """Per layer (n_dir, H, N_i) HSVs with a random decay rate and scale per layer, unsorted along the last axis."""
    out = []
    for N in sizes:
        decay = rng.uniform(0.2, 2.0)
        h = rng.uniform(0.1, 10.0) * np.exp(-decay * np.arange(N)) * rng.uniform(0.5, 1.5, channels + (N,))
        out.append(rng.permuted(h, axis=-1))  # the allocation must not rely on sorted input
    return out


def brute_force(hsvs, R):
    """Minimum discarded energy over every (r_1, ..., r_n) with 1 <= r_i <= N_i and sum r_i = R, and its minimisers."""
    sizes = [h.shape[-1] for h in hsvs]
    best, argbest = np.inf, []
    for orders in itertools.product(*(range(1, N + 1) for N in sizes)):
        if sum(orders) != R:
            continue
        lost = 0.0
        for h, r in zip(hsvs, orders):
            s = np.sort(h.reshape(-1, h.shape[-1]), axis=-1)[:, ::-1]
            lost += (s[:, r:] ** 2).sum()
        if lost < best * (1 - 1e-12):
            best, argbest = lost, [list(orders)]
        elif abs(lost - best) <= 1e-12 * best:
            argbest.append(list(orders))
    return best, argbest


@pytest.mark.parametrize("seed", range(6))
def test_greedy_allocation_equals_brute_force_on_three_small_layers(seed):
    rng = np.random.default_rng(seed)
    sizes = [6, 6, 6] if seed % 2 == 0 else [6, 4, 5]
    hsvs = random_hsvs(rng, sizes)
    for fraction in (0.1, 0.25, 1 / 3, 0.5, 0.7, 0.9, 1.0):
        R = budget_states(sizes, fraction)
        orders = allocate_budget(hsvs, fraction)
        assert sum(orders) == R and all(1 <= r <= N for r, N in zip(orders, sizes))
        best, argbest = brute_force(hsvs, R)
        assert discarded_energy(hsvs, orders) == pytest.approx(best, rel=1e-12, abs=1e-300)
        assert orders in argbest


def test_budget_rounds_half_up_and_keeps_one_state_per_layer():
    assert budget_states([6, 6, 6], 0.25) == 5  # 4.5 -> 5 (Python's round would give 4)
    assert budget_states([6, 6, 6], 0.05) == 3  # 0.9 -> 1, raised to one state per layer
    assert budget_states([6, 6, 6], 1.0) == 18
    for bad in (0, -0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="fraction"):
            budget_states([6], bad)


def test_last_keeps_the_highest_normalised_scores():
    rng = np.random.default_rng(11)
    sizes = [6, 5, 6]
    hsvs = random_hsvs(rng, sizes)
    for fraction in (0.2, 0.5, 0.8):
        R = budget_states(sizes, fraction)
        # independent: every state's score from explicit sums, then the R highest over the model
        scored = []
        for i, h in enumerate(hsvs):
            s = np.sort(h.reshape(-1, h.shape[-1]), axis=-1)[:, ::-1]
            e = (s**2).sum(0)
            scored += [(e[k] / sum(e[: k + 1]), i) for k in range(len(e))]
        kept = sorted(scored, reverse=True)[:R]
        expect = [sum(1 for _, i in kept if i == layer) for layer in range(3)]
        orders = allocate_last(hsvs, fraction)
        assert orders == expect and sum(orders) == R


def test_greedy_follows_the_energy_and_last_spreads_the_budget_across_scales():
    """Two layers with the same decay, one 100x louder: the energy-optimal budget goes to the loud layer, LAST's
    normalised scores treat both alike. Greedy never discards more energy (it is optimal)."""
    base = np.exp(-0.5 * np.arange(8))[None]
    hsvs = [100 * base, base]
    g = allocate_budget(hsvs, 0.5)
    last = allocate_last(hsvs, 0.5)
    assert last == [4, 4] and g[0] > g[1] and sum(g) == 8
    assert discarded_energy(hsvs, g) < discarded_energy(hsvs, last)


def test_bad_hsvs_name_the_layer():
    with pytest.raises(ValueError, match="layer 1"):
        allocate_budget([np.ones((2, 4)), np.array([[1.0, np.nan]])], 0.5)
    with pytest.raises(ValueError, match="layer 0"):
        allocate_last([-np.ones((2, 4))], 0.5)
    with pytest.raises(ValueError, match="orders"):
        discarded_energy([np.ones((2, 4))], [5])
