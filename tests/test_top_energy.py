"""Top-energy modes (AIRE-Prune's score): the reduction ``top_energy`` and the control ``top_energy_modes``. The
reference is the energy computed here, directly from the stored parameters, and the modes matched by exact value."""

import numpy as np
import pytest
import torch
from test_controls import SSM, matched_modes, save_pretrained

from dssbt.checkpoint import load_model
from dssbt.reduction.registry import METHODS, System
from dssbt.stages import reduce_job


def stored_energy(layer) -> np.ndarray:
    """|c|^2 |b_bar|^2 / (1 - |lambda_bar|^2) of every mode, from the layer's stored float32 parameters (ZOH with
    the layer's dt), in float64. Returns (n_dir, H, N)."""
    p = {k: getattr(layer, k).detach().double().numpy() for k in (*SSM, "log_dt")}
    lam = -np.exp(p["Lambda_log_neg_re"]) + 1j * p["Lambda_im"]
    b, c = p["B"][..., 0] + 1j * p["B"][..., 1], p["C"][..., 0] + 1j * p["C"][..., 1]
    dt = np.exp(p["log_dt"])[:, None]  # (H, 1)
    lam_bar = np.exp(dt * lam)
    b_bar = (lam_bar - 1) / lam * b
    return np.abs(c) ** 2 * np.abs(b_bar) ** 2 / (1 - np.abs(lam_bar) ** 2)


def test_the_control_keeps_the_r_modes_of_largest_energy_bit_identical_at_epoch_0(tmp_path):
    ckpt = save_pretrained(tmp_path / "pre.pt", seed=3)
    full, _ = load_model(ckpt)
    reduce_job(ckpt, tmp_path / "red.pt", tmp_path / "rep.json", method="top_energy_modes", order=3)
    red, meta = load_model(tmp_path / "red.pt")  # what the retraining loads: its model at epoch 0
    assert meta["reduction"]["method"] == "top_energy_modes"
    for fl, rl in zip(full.dss_layers(), red.dss_layers()):
        energy = stored_energy(fl)
        expected = np.sort(np.argsort(-energy, axis=-1)[..., :3], axis=-1)
        picked = np.sort(matched_modes(rl, fl), axis=-1)  # each kept mode found among the pretrained by exact value
        np.testing.assert_array_equal(picked, expected)
        kept_energy = np.take_along_axis(energy, expected, -1)
        dropped = energy.copy()
        np.put_along_axis(dropped, expected, -np.inf, -1)
        assert (kept_energy.min(-1) > dropped.max(-1)).all()  # no tie decides the choice here
    rs, ps = red.state_dict(), full.state_dict()
    for k in rs:  # every other weight, D and log_dt included: the pretrained model's
        if not (".dss." in k and k.rsplit(".", 1)[1] in SSM):
            assert torch.equal(rs[k], ps[k]), k


def test_the_reduction_keeps_the_same_modes_as_the_control(tmp_path):
    ckpt = save_pretrained(tmp_path / "pre.pt", seed=3)
    for method in ("top_energy", "top_energy_modes"):
        reduce_job(ckpt, tmp_path / f"{method}.pt", tmp_path / f"{method}.json", method=method, order=3)
    a, _ = load_model(tmp_path / "top_energy.pt")
    b, _ = load_model(tmp_path / "top_energy_modes.pt")
    for la, lb in zip(a.dss_layers(), b.dss_layers()):
        sa, sb = la.ss_params(), lb.ss_params()
        for k in ("Lambda", "B", "C", "D", "dt"):  # through complex128 and back: equal up to float32 rounding
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-6, atol=1e-7)


def kernel_error(lam, b, c, dt, keep, L=2000) -> np.ndarray:
    """||K - K_r||_2 / ||K||_2 per channel of the discrete (ZOH) complex kernels over L steps, K[l] = sum c b_bar
    lambda_bar^l, K_r the same over the modes ``keep``. Shapes (H, N), keep (H, r)."""
    lam_bar = np.exp(dt[:, None] * lam)
    b_bar = (lam_bar - 1) / lam * b
    powers = lam_bar[..., None] ** np.arange(L)  # (H, N, L)
    terms = (c * b_bar)[..., None] * powers
    K = terms.sum(1)
    mask = np.zeros(lam.shape, bool)
    np.put_along_axis(mask, keep, True, -1)
    K_r = (terms * mask[..., None]).sum(1)
    return np.linalg.norm(K - K_r, axis=-1) / np.linalg.norm(K, axis=-1)


def test_top_energy_beats_random_modes_on_average_a_sanity_check():
    """A sanity check, not a property: on random stable diagonal systems, keeping the r modes of largest H2
    energy gives a smaller kernel (H2) error than keeping r random modes, on average over channels and draws."""
    rng = np.random.default_rng(0)
    H, N, r = 64, 16, 4
    lam = -rng.uniform(0.05, 2.0, (H, N)) + 1j * rng.uniform(-20, 20, (H, N))
    b = rng.normal(size=(H, N)) + 1j * rng.normal(size=(H, N))
    c = rng.normal(size=(H, N)) + 1j * rng.normal(size=(H, N))
    dt = np.exp(rng.uniform(np.log(1e-2), np.log(1e-1), H))
    res = METHODS["top_energy"].run(None, System(lam, b, c, dt), r)
    assert res.Lambda.shape == (H, r) and res.method == "top_energy" and res.route == "discrete"
    top = kernel_error(lam, b, c, dt, res.kept)
    random = np.mean(
        [
            kernel_error(lam, b, c, dt, np.sort(rng.permuted(np.tile(np.arange(N), (H, 1)), axis=-1)[:, :r]))
            for _ in range(20)
        ],
        axis=0,
    )
    assert top.mean() < random.mean()
    np.testing.assert_array_equal(res.Lambda, np.take_along_axis(lam, res.kept, -1))  # kept unchanged
    with pytest.raises(ValueError, match="r must be an integer"):
        METHODS["top_energy"].run(None, System(lam, b, c, dt), N + 1)
