import json

import numpy as np
import pandas as pd
import pytest

from dssbt.aggregate import runs_table, summary_table, write_tables


def metrics(tmp_path, name, task, seed, order, init, acc, N=8, params=(100, 40)):
    path = tmp_path / f"{name}_{task}_{seed}_{order}.json"
    path.write_text(json.dumps({
        "task": task, "seed": seed, "order": order, "N": N, "init": init,
        "accuracy": {"train": acc, "val": acc, "test": acc}, "loss": {"train": 1, "val": 1, "test": 1},
        "params": {"total": params[0], "ssm": params[1]}, "epochs_run": 3, "wall_time_s": 1.0,
    }))
    return path


@pytest.fixture
def files(tmp_path):
    f = []
    for seed, (pre, sh, bt, nr) in enumerate([(0.90, 0.60, 0.80, 0.50), (0.94, 0.70, 0.90, 0.40)]):
        f.append(metrics(tmp_path, "pre", "t", seed, 8, "skew_hippo", pre, params=(200, 80)))
        f.append(metrics(tmp_path, "sh", "t", seed, 2, "skew_hippo", sh))
        f.append(metrics(tmp_path, "bt", "t", seed, 2, "from_reduced", bt))
        f.append(metrics(tmp_path, "nr", "t", seed, 2, "bt_no_retrain", nr))
    return f


def test_summary_means_stds_and_signed_differences(files):
    s = summary_table(runs_table(files)).set_index(["order", "init"])
    assert list(s.index) == [(8, "skew_hippo"), (2, "skew_hippo"), (2, "bt_init"), (2, "bt_no_retrain")]
    assert s.loc[(8, "skew_hippo"), "acc_mean"] == pytest.approx(0.92) and s.loc[(8, "skew_hippo"), "reference"]
    assert s.loc[(2, "bt_init"), "acc_mean"] == pytest.approx(0.85)
    assert s.loc[(2, "bt_init"), "acc_std"] == pytest.approx(np.sqrt(2 * 0.05**2))  # sample std of 0.8, 0.9
    assert s.loc[(2, "bt_init"), "diff_vs_skew_hippo"] == pytest.approx(0.20)
    assert s.loc[(2, "bt_init"), "sign"] == "+"
    assert s.loc[(2, "bt_no_retrain"), "diff_vs_skew_hippo"] == pytest.approx(-0.20)
    assert s.loc[(2, "bt_no_retrain"), "sign"] == "-"
    assert np.isnan(s.loc[(8, "skew_hippo"), "diff_vs_skew_hippo"]) and s.loc[(8, "skew_hippo"), "sign"] == ""
    assert s.loc[(8, "skew_hippo"), "params_total"] == 200 and s.loc[(2, "bt_init"), "params_ssm"] == 40
    assert (s["n_seeds"] == 2).all()


def test_written_tables(files, tmp_path):
    out = {k: tmp_path / f"out.{k}" for k in ("runs", "csv", "md", "tex")}
    write_tables(files, out["runs"], out["csv"], out["md"], out["tex"])
    runs = pd.read_csv(out["runs"])
    assert len(runs) == 8 and set(runs["init"]) == {"skew_hippo", "bt_init", "bt_no_retrain"}
    md = out["md"].read_text().splitlines()
    assert md[2].startswith("| t | 8 (full N) | Skew-HiPPO | 92.00 ± 2.83 | 2 | 200 | 80 |")
    assert "| t | 2 | BT-init (retrained) | 85.00 ± 7.07 | 2 | 100 | 40 | +20.00 |" in md
    tex = out["tex"].read_text()
    assert r"85.00 $\pm$ 7.07" in tex and r"\begin{tabular}" in tex and "test acc. \\% (mean" in tex


def test_no_metrics_is_an_error():
    with pytest.raises(ValueError, match="no metrics files"):
        runs_table([])


def test_tolerance_orders_group_by_spec_across_seeds_with_their_mean_state_size(tmp_path):
    files = []
    for seed, (layers, sh, bt) in enumerate([([5, 2], 0.6, 0.7), ([6, 3], 0.5, 0.9)]):
        files.append(metrics(tmp_path, "pre", "t", seed, 8, "skew_hippo", 0.9))
        files.append(metrics(tmp_path, "sh2", "t", seed, 2, "skew_hippo", 0.4))
        for name, init, acc in (("sh", "skew_hippo", sh), ("bt", "from_reduced", bt)):
            p = metrics(tmp_path, name, "t", seed, max(layers), init, acc, params=(90 + seed, 30 + seed))
            m = json.loads(p.read_text())
            p.write_text(json.dumps(m | {"layer_orders": layers, "order_spec": "tol:0.05", "method": "bt"}))
            files.append(p)
    runs = runs_table(files)
    tol = runs[runs["order_spec"] == "tol:0.05"]
    assert sorted(tol["order"]) == [3.5, 3.5, 4.5, 4.5] and not tol["reference"].any()
    assert set(tol["layer_orders"]) == {"5 2", "6 3"}
    s = summary_table(runs).set_index(["order_spec", "init"])
    # fixed orders first, then the tolerance row; the full model (order 8 = N) is the reference
    assert list(s.index) == [("8", "skew_hippo"), ("2", "skew_hippo"), ("tol:0.05", "skew_hippo"),
                             ("tol:0.05", "bt_init")]
    row = s.loc[("tol:0.05", "bt_init")]
    assert row["order"] == pytest.approx(4.0) and row["params_total"] == pytest.approx(90.5)
    assert row["diff_vs_skew_hippo"] == pytest.approx(0.8 - 0.55)  # against Skew-HiPPO at the same spec
    out = {k: tmp_path / f"out.{k}" for k in ("runs", "csv", "md", "tex")}
    write_tables(files, out["runs"], out["csv"], out["md"], out["tex"])
    assert "| t | tol:0.05 (mean r 4.0) | BT-init (retrained) | 80.00 ± 14.14 | 2 | 90.5 | 30.5 | +25.00 |" in \
        out["md"].read_text()


def test_methods_table_puts_every_init_of_an_order_side_by_side(files, tmp_path):
    from dssbt.aggregate import methods_table

    t = methods_table(summary_table(runs_table(files)))
    assert list(t.columns) == ["task", "order", "params", "Skew-HiPPO", "BT-init (retrained)", "BT, no retraining"]
    assert t.to_dict("records") == [
        {"task": "t", "order": "8 (full N)", "params": "200", "Skew-HiPPO": "92.00 ± 2.83", "BT-init (retrained)": "",
         "BT, no retraining": ""},
        {"task": "t", "order": "2", "params": "100", "Skew-HiPPO": "65.00 ± 7.07", "BT-init (retrained)": "85.00 ± 7.07",
         "BT, no retraining": "45.00 ± 7.07"},
    ]
    out = {k: tmp_path / f"out.{k}" for k in ("runs", "csv", "md", "tex", "methods")}
    write_tables(files, out["runs"], out["csv"], out["md"], out["tex"], out["methods"])
    assert "| t | 2 | 100 | 65.00 ± 7.07 | 85.00 ± 7.07 | 45.00 ± 7.07 |" in out["methods"].read_text()
