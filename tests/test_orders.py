"""Orders chosen per layer by a tolerance on the discarded Hankel-singular-value energy; models with per-layer sizes."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.linalg import solve_discrete_lyapunov
from test_model import small_model

from dssbt.checkpoint import load_model, save_model
from dssbt.model import ModelConfig, S4Model, count_parameters
from dssbt.oracles import run_recording_dss_io, simulate_dense
from dssbt.orders import parse_order
from dssbt.reduction import reduce
from dssbt.reduction.apply import ModelReducer, reduce_model


def dense_hsv_discrete(Lambda, B, C, dt):
    """HSVs of one channel from scipy's Stein solvers on the ZOH system (slow, independent path). -> (N,)"""
    Lb = np.exp(dt * Lambda)
    Bb = (Lb - 1) / Lambda * B
    A = np.diag(Lb)
    P = solve_discrete_lyapunov(A, np.outer(Bb, Bb.conj()))
    Q = solve_discrete_lyapunov(A.conj().T, np.outer(C.conj(), C))
    return np.sort(np.sqrt(np.abs(np.linalg.eigvals(P @ Q))))[::-1]


def choose_layer_orders(model, tol, route="discrete"):
    return ModelReducer(model, route).choose_orders(parse_order(f"tol:{tol}"))


def shaped_model():
    """Layer 0: slowly decaying C (many states matter); layer 1: only 2 modes with output weight (rank 2)."""
    model = small_model()
    with torch.no_grad():
        model.dss_layers()[0].C.mul_(torch.logspace(0, -2, 12).view(1, 1, 12, 1))
        model.dss_layers()[1].C[:, :, 2:] = 0.0
    return model


@pytest.mark.parametrize("tol", [0.3, 0.05, 1e-3])
def test_chosen_orders_match_a_brute_force_search_over_scipy_hsvs(tol):
    model = shaped_model()
    chosen = choose_layer_orders(model, tol, route="discrete")
    for i, layer in enumerate(model.dss_layers()):
        ss = {k: v.numpy() for k, v in layer.ss_params().items()}
        hsv = np.stack(
            [dense_hsv_discrete(ss["Lambda"][0, h], ss["B"][0, h], ss["C"][0, h], ss["dt"][h]) for h in range(6)]
        )  # (H, N)
        energy = hsv**2
        total = energy.sum()
        want = next(r for r in range(1, 13) if energy[:, r:].sum() <= tol * total + 1e-9 * total)
        assert chosen["layer_orders"][i] == want, (i, tol)
        assert chosen["discarded_energy"][i] == pytest.approx(energy[:, want:].sum() / total, rel=1e-5, abs=1e-12)
    assert chosen["layer_orders"][1] <= 2  # rank-2 layer
    if tol <= 0.05:
        assert chosen["layer_orders"][0] > chosen["layer_orders"][1]  # the two layers get different orders
    # a smaller tolerance never keeps fewer states
    tighter = choose_layer_orders(model, tol / 10, route="discrete")["layer_orders"]
    assert all(a >= b for a, b in zip(tighter, chosen["layer_orders"]))


def test_tolerance_is_checked():
    for bad in ("tol:0", "tol:1", "tol:-0.1", "tol:1.5", "tol:nan", "tol:x", "tol:"):
        with pytest.raises(ValueError, match="the tol must lie in \\(0, 1\\)|is not a number"):
            parse_order(bad)
    for bad in (0, True, "8", "budget:1.5", "gap:0.5", 2.5):
        with pytest.raises(ValueError, match="order"):
            parse_order(bad)


def test_per_layer_reduction_runs_each_layer_at_its_own_order():
    model = shaped_model()
    orders = [5, 2]
    reduced, report = reduce_model(model, orders, kernel_length=40)
    assert reduced.cfg.orders_by_layer() == orders and reduced.cfg.d_state == 5
    assert [layer.N for layer in reduced.dss_layers()] == orders
    assert report["layer_orders"] == orders and [entry["r"] for entry in report["layers"]] == orders
    # each reduced layer = that layer's channels reduced at r_i and simulated densely
    _, inputs, outputs = run_recording_dss_io(reduced, torch.randn(2, 40, 3))
    for k, full in enumerate(model.dss_layers()):
        ss = {a: v.numpy() for a, v in full.ss_params().items()}
        res = reduce(ss["Lambda"], ss["B"], ss["C"], orders[k], dt=np.broadcast_to(ss["dt"], (1, 6)))
        u = inputs[k].double().numpy()
        y = np.array(
            [
                [
                    simulate_dense(res.Lambda[0, h], res.B[0, h], res.C[0, h], ss["D"][h], ss["dt"][h], u[b, h])
                    for h in range(6)
                ]
                for b in range(2)
            ]
        )
        np.testing.assert_allclose(outputs[k].numpy(), y, rtol=1e-4, atol=1e-4 * np.abs(y).max())
    # non-SSM weights copied
    sd = model.state_dict()
    for key, v in reduced.state_dict().items():
        if key.split(".")[-1] not in ("Lambda_log_neg_re", "Lambda_im", "B", "C"):
            assert torch.equal(v, sd[key]), key


def test_a_layer_whose_order_is_its_size_is_copied_unchanged():
    model = shaped_model()
    reduced, report = reduce_model(model, [12, 3], kernel_length=30)
    assert report["layers"][0] == {"layer": 0, "r": 12, "unchanged": True}
    for key, v in model.dss_layers()[0].state_dict().items():
        assert torch.equal(reduced.dss_layers()[0].state_dict()[key], v)
    with pytest.raises(ValueError, match=r"2 integers with 1 <= r_i <= N_i = \[12, 12\], got \[13, 3\]"):
        reduce_model(model, [13, 3])


def test_per_layer_config_round_trips_and_counts_parameters_by_hand():
    cfg = ModelConfig(d_input=3, d_output=5, d_model=6, d_state=12, n_layers=2, norm="batch").with_layer_orders([5, 2])
    assert cfg.layer_orders == (5, 2) and cfg.d_state == 5
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert ModelConfig(d_input=1, d_output=2, n_layers=2).with_layer_orders([4, 4]).layer_orders == ()
    H = 6
    ssm = sum(H * n * 6 + 2 * H for n in (5, 2))  # Lambda (re, im), B, C complex: 6 reals per mode; D, log_dt
    assert count_parameters(S4Model(cfg))["ssm"] == ssm
    with pytest.raises(ValueError, match=r"layer_orders must hold n_layers=2 sizes in \[1, d_state=4\], got \[5, 2\]"):
        ModelConfig(d_input=1, d_output=2, n_layers=2, d_state=4, layer_orders=(5, 2))
    with pytest.raises(ValueError, match="layer_orders must be a list of ints"):
        ModelConfig(d_input=1, d_output=2, n_layers=2, layer_orders=(2.0, 3))


def run(*args):
    return subprocess.run([sys.executable, "-m", "dssbt", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_orders_then_reduce_commands(tmp_path):
    save_model(tmp_path / "pre.pt", shaped_model(), {"l_max": 32})
    p = run("orders", "--model", str(tmp_path / "pre.pt"), "--spec", "tol:0.05", "--out", str(tmp_path / "o.json"))
    assert p.returncode == 0, p.stderr
    chosen = json.loads((tmp_path / "o.json").read_text())
    assert chosen["layer_orders"] == choose_layer_orders(shaped_model(), 0.05)["layer_orders"]
    p = run(
        "reduce",
        "--model",
        str(tmp_path / "pre.pt"),
        "--layer-orders",
        str(tmp_path / "o.json"),
        "--method",
        "modal",
        "--out",
        str(tmp_path / "r.pt"),
        "--report",
        str(tmp_path / "r.json"),
    )
    assert p.returncode == 0, p.stderr
    reduced, meta = load_model(tmp_path / "r.pt")
    assert reduced.cfg.orders_by_layer() == chosen["layer_orders"]
    assert meta["reduction"]["order_spec"] == "tol:0.05" and meta["reduction"]["method"] == "modal"
    # --order and --layer-orders are exclusive; a broken orders file is named
    p = run(
        "reduce",
        "--model",
        str(tmp_path / "pre.pt"),
        "--order",
        "3",
        "--layer-orders",
        str(tmp_path / "o.json"),
        "--out",
        str(tmp_path / "x.pt"),
        "--report",
        str(tmp_path / "x.json"),
    )
    assert p.returncode == 2 and "exactly one of --order r and --layer-orders FILE" in p.stderr
    (tmp_path / "bad.json").write_text(json.dumps({"tol": 0.05, "layer_orders": [3, "2"]}))
    p = run(
        "reduce",
        "--model",
        str(tmp_path / "pre.pt"),
        "--layer-orders",
        str(tmp_path / "bad.json"),
        "--out",
        str(tmp_path / "x.pt"),
        "--report",
        str(tmp_path / "x.json"),
    )
    assert p.returncode == 2 and "bad.json: key layer_orders must be a non-empty list" in p.stderr
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "x.json").exists()


def test_a_per_layer_model_evaluated_on_its_own_names_its_layer_sizes(tmp_path):
    from dssbt.evaluate import base_metrics
    from dssbt.hparams import parse_hparams
    from dssbt.runs import describe_run

    model = S4Model(ModelConfig(d_input=3, d_output=5, d_model=6, d_state=12, n_layers=2).with_layer_orders([5, 2]))
    m = base_metrics(
        {"task": "t"}, model, parse_hparams("{}"), describe_run("evaluate", "skew_hippo", None), 0, "cpu", 12
    )
    assert m["order_spec"] == "layers:5,2" and m["layer_orders"] == [5, 2] and m["order"] == 5
    uniform = S4Model(ModelConfig(d_input=3, d_output=5, d_model=6, d_state=4, n_layers=2))
    assert (
        base_metrics(
            {"task": "t"}, uniform, parse_hparams("{}"), describe_run("evaluate", "skew_hippo", None), 0, "cpu", 12
        )["order_spec"]
        == "4"
    )


def test_irka_fallback_warnings_name_the_layer_and_order():
    model = shaped_model()  # layer 1 has 10 dead modes per channel: IRKA at r = 3 cannot use them
    with pytest.warns(RuntimeWarning, match=r"layer 1, r=3: IRKA did not converge for \d+ of 6 channels"):
        reduce_model(model, [5, 3], method="h2", kernel_length=20)


def test_budget_orders_keep_the_budget_with_least_discarded_energy_and_match_a_brute_force_search():
    import itertools

    from dssbt.reduction.budget import budget_states

    model = shaped_model()  # 2 layers x 12 modes
    for f in (0.1, 0.25, 0.5):
        chosen = ModelReducer(model).choose_orders(parse_order(f"budget:{f}"))
        R = budget_states([12, 12], f)
        assert sum(chosen["layer_orders"]) == R == chosen["kept"] == max(2, int(f * 24 + 0.5))
        # brute force over every split of R states, energies from scipy's Stein HSVs
        energy = []
        for layer in model.dss_layers():
            ss = {k: v.numpy() for k, v in layer.ss_params().items()}
            hsv = np.stack(
                [dense_hsv_discrete(ss["Lambda"][0, h], ss["B"][0, h], ss["C"][0, h], ss["dt"][h]) for h in range(6)]
            )
            energy.append((hsv**2).sum(0))  # (N,)
        cost = {
            o: sum(e[r:].sum() for e, r in zip(energy, o))
            for o in itertools.product(range(1, 13), repeat=2)
            if sum(o) == R
        }
        best = min(cost.values())
        assert cost[tuple(chosen["layer_orders"])] <= best * (1 + 1e-6) + 1e-15, (chosen, best)
    # the reduced model has the parameter count of a fresh model with the same per-layer orders
    reduced, _ = reduce_model(model, chosen["layer_orders"], kernel_length=20)
    fresh = S4Model(model.cfg.with_layer_orders(chosen["layer_orders"]))
    assert count_parameters(reduced) == count_parameters(fresh)
