"""The controls that flow through reduce -> retrain (dssbt.reduction.registry, control=True): transplant and
random_modes. References: a fresh baseline model built the way train.py builds one, and the pretrained channels
themselves (modes matched by exact value, not through the indices the control reports)."""

import numpy as np
import pytest
import torch

from dssbt.checkpoint import load_model, save_model
from dssbt.hparams import parse_hparams
from dssbt.model import S4Model
from dssbt.reduction.apply import ModelReducer
from dssbt.reduction.registry import CONTROL_METHODS, METHODS, REDUCTIONS
from dssbt.stages import reduce_job
from dssbt.train import model_config

META = {"task": "t", "encoder": "linear", "d_input": 1, "d_output": 3, "dual": False, "l_max": 16}
HP = parse_hparams({"model": {"d_model": 6, "d_state": 8, "n_layers": 2, "bidirectional": True}})
SSM = ("Lambda_log_neg_re", "Lambda_im", "B", "C")


def pretrained(weights_seed: int = 7) -> S4Model:
    """A full-N model whose every weight is moved off its init (as training would), with distinct modes."""
    torch.manual_seed(weights_seed)
    model = S4Model(model_config(META, HP, "skew_hippo", None))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def save_pretrained(path, seed: int, weights_seed: int = 7):
    save_model(path, pretrained(weights_seed), {"l_max": 16, "task": "t", "init": "skew_hippo", "seed": seed})
    return path


def test_controls_are_registry_methods_apart_from_the_reductions():
    assert set(CONTROL_METHODS) == {"transplant", "random_modes", "top_energy_modes"}
    assert list(REDUCTIONS) == ["bt", "bsp", "modal", "h2", "msp", "top_energy", "last"]
    assert all(not METHODS[m].control for m in REDUCTIONS)


@pytest.mark.parametrize("orders", [3, [3, 8]])
def test_transplant_keeps_every_other_weight_and_takes_lambda_b_c_of_a_fresh_baseline(tmp_path, orders):
    ckpt = save_pretrained(tmp_path / "pre.pt", seed=5)
    full, _ = load_model(ckpt)
    layer_orders = None
    if isinstance(orders, list):
        layer_orders = tmp_path / "orders.json"
        layer_orders.write_text('{"order_spec": "tol:0.1", "layer_orders": [3, 8]}')
    reduce_job(
        ckpt,
        tmp_path / "red.pt",
        tmp_path / "rep.json",
        method="transplant",
        order=None if layer_orders else orders,
        layer_orders=layer_orders,
    )
    red, meta = load_model(tmp_path / "red.pt")  # the retraining's model at epoch 0
    assert meta["reduction"]["method"] == "transplant"
    # the reference: the baseline of seed 5 at these orders at epoch 0, built as train.train builds it
    torch.manual_seed(5)
    fresh = S4Model(model_config(META, HP, "skew_hippo", orders))
    rs, fs, ps = red.state_dict(), fresh.state_dict(), full.state_dict()
    assert rs.keys() == fs.keys() == ps.keys()
    for k in rs:
        source = fs if k.rsplit(".", 1)[1] in SSM and ".dss." in k else ps  # D, log_dt: pretrained
        assert torch.equal(rs[k], source[k]), k
    assert not torch.equal(rs["blocks.0.dss.C"], ps["blocks.0.dss.C"][..., :3, :])  # a real replacement
    # building the fresh model leaves torch's RNG where it was
    from dssbt.reduction.apply import fresh_skew_hippo

    torch.manual_seed(0)
    before = torch.get_rng_state()
    fresh_skew_hippo(red.cfg, 5)
    assert torch.equal(torch.get_rng_state(), before)


def matched_modes(red_layer, full_layer) -> np.ndarray:
    """For every mode of every reduced channel, the index of the pretrained mode with bit-identical stored values
    (Lambda_log_neg_re, Lambda_im, B, C); AssertionError where none matches. Returns (n_dir, H, r)."""

    def values(layer):
        p = {k: getattr(layer, k).detach() for k in SSM}
        return torch.cat([p["Lambda_log_neg_re"][..., None], p["Lambda_im"][..., None], p["B"], p["C"]], -1)

    r_vals, f_vals = values(red_layer), values(full_layer)  # (n_dir, H, r or N, 6)
    out = np.empty(r_vals.shape[:3], dtype=int)
    for d, h, j in np.ndindex(*out.shape):
        hits = [n for n in range(f_vals.shape[2]) if torch.equal(r_vals[d, h, j], f_vals[d, h, n])]
        assert len(hits) == 1, (d, h, j, hits)
        out[d, h, j] = hits[0]
    return out


def random_modes(model, r, seed):
    red, rep = ModelReducer(model).reduce("random_modes", r, seed=seed)
    picked = [matched_modes(rl, fl) for rl, fl in zip(red.dss_layers(), model.dss_layers())]
    return red, rep, picked


def test_random_modes_keep_r_distinct_pretrained_modes_unchanged_and_every_other_weight():
    model = pretrained()
    red, rep, picked = random_modes(model, 3, seed=0)
    for i, p in enumerate(picked):
        assert all(len(set(p[d, h])) == 3 for d, h in np.ndindex(*p.shape[:2]))  # r distinct modes per channel
        np.testing.assert_array_equal(np.sort(p, -1), np.asarray(rep["layers"][i]["kept"]))  # reported = used
    rs, ps = red.state_dict(), model.state_dict()
    for k in rs:
        if not (".dss." in k and k.rsplit(".", 1)[1] in SSM):
            assert torch.equal(rs[k], ps[k]), k


def test_random_modes_change_with_the_seed_and_nothing_else():
    model = pretrained()
    _, _, a = random_modes(model, 3, seed=0)
    _, _, b = random_modes(model, 3, seed=1)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))
    # other pretrained weights, other methods reduced before, another route, another torch RNG state: same choice
    reducer = ModelReducer(pretrained(weights_seed=8), route="continuous", kernel_length=7)
    reducer.reduce("bt", 2)
    torch.manual_seed(123)
    red, _ = reducer.reduce("random_modes", 3, seed=0)
    c = [matched_modes(rl, fl) for rl, fl in zip(red.dss_layers(), reducer.model.dss_layers())]
    assert all(np.array_equal(x, y) for x, y in zip(a, c))
    # a smaller order keeps a subset of the larger order's modes (one draw per channel, cut at r)
    _, _, small = random_modes(model, 2, seed=0)
    for s, big in zip(small, a):
        assert all(set(s[d, h]) <= set(big[d, h]) for d, h in np.ndindex(*s.shape[:2]))


def test_a_control_without_a_seed_is_an_error():
    with pytest.raises(ValueError, match="control 'random_modes' needs the run's seed"):
        ModelReducer(pretrained()).reduce("random_modes", 3)
