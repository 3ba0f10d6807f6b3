import numpy as np
import pandas as pd
import pytest
from test_aggregate import metrics

from dssbt.aggregate import runs_table
from dssbt.plots import learning_curve_data, learning_curves


def history(metrics_path, val):
    """history.csv beside a metrics file: row 0 = before training, then one row per epoch."""
    rows = {"epoch": range(len(val)), "val_accuracy": val, "test_accuracy": [val[0]] + [np.nan] * (len(val) - 1)}
    pd.DataFrame(rows).to_csv(metrics_path.parent / "history.csv", index=False)
    return metrics_path


@pytest.fixture
def runs(tmp_path):
    f = []
    for seed in (0, 1):
        s = 0.01 * seed  # seed 1 is 1 point above seed 0 everywhere
        f.append(
            history(metrics(tmp_path, "pretrain", "t", seed, 8, 0.9, epochs=3), [0.1 + s, 0.5 + s, 0.7 + s, 0.9 + s])
        )
        f.append(history(metrics(tmp_path, "skew_hippo", "t", seed, 2, 0.6, epochs=2), [0.1 + s, 0.4 + s, 0.6 + s]))
        f.append(
            history(
                metrics(tmp_path, "skew_hippo_equal", "t", seed, 2, 0.7, epochs=5),
                [0.1 + s, 0.3 + s, 0.5 + s, 0.6 + s, 0.65 + s, 0.7 + s],
            )
        )
        f.append(history(metrics(tmp_path, "bt_init", "t", seed, 2, 0.8, epochs=2), [0.6 + s, 0.75 + s, 0.8 + s]))
        f.append(metrics(tmp_path, "bt", "t", seed, 2, 0.6, epochs=0))  # not trained: no curve
    return runs_table(f)


def test_learning_curves_count_the_pretraining_for_runs_that_start_from_it(runs):
    c = learning_curve_data(runs)
    bt = c[c["init"] == "bt_init"]
    assert list(bt["epochs"]) == [3, 4, 5]  # after the 3 pretraining epochs
    np.testing.assert_allclose(bt["val_accuracy"], [0.605, 0.755, 0.805])  # mean over the two seeds
    assert (bt["n_seeds"] == 2).all()
    equal = c[c["init"] == "skew_hippo_equal"]
    assert list(equal["epochs"]) == [0, 1, 2, 3, 4, 5] and equal["epochs"].max() == bt["epochs"].max()
    assert list(c[(c["init"] == "skew_hippo") & ~c["reference"]]["epochs"]) == [0, 1, 2]
    assert list(c[c["reference"]]["epochs"]) == [0, 1, 2, 3]
    assert "bt_no_retrain" not in set(c["init"])


def test_learning_curves_figure_is_written(runs, tmp_path):
    paths = [tmp_path / "curves.png", tmp_path / "curves.pdf"]
    learning_curves(runs, paths, {"dpi": 40})
    assert all(p.stat().st_size > 0 for p in paths)


def test_learning_curve_bands_are_the_min_and_max_over_seeds(runs):
    c = learning_curve_data(runs)
    bt = c[c["init"] == "bt_init"]
    np.testing.assert_allclose(bt["val_min"], [0.60, 0.75, 0.80])  # seed 0
    np.testing.assert_allclose(bt["val_max"], [0.61, 0.76, 0.81])  # seed 1, one point above


class Captured:
    """Stands in for plots._save: keeps the figure instead of writing it."""

    def __init__(self):
        self.figs = []

    def __call__(self, fig, paths, dpi):
        self.figs.append(fig)


def grid_runs(tmp_path, orders):
    """Two seeds; the pretrained model (3 epochs, 10 classes), full N continued (2 more), BT-init and the
    equal-budget Skew-HiPPO at each order."""
    f = []
    cfg = {"model_config": {"d_output": 10}}
    for seed in (0, 1):
        f.append(metrics(tmp_path, "pretrain", "t", seed, 8, 0.9, epochs=3, extra=cfg))
        f.append(metrics(tmp_path, "full_continued", "t", seed, 8, 0.92, epochs=2, extra=cfg))
        for r in orders:
            f.append(metrics(tmp_path, "bt_init", "t", seed, r, 0.8 + 0.01 * seed, epochs=2, extra=cfg))
            f.append(metrics(tmp_path, "skew_hippo_equal", "t", seed, r, 0.7, epochs=5, extra=cfg))
    return runs_table(f)


def test_accuracy_vs_order_labels_every_reference_line_with_its_budget_and_draws_chance(tmp_path, monkeypatch):
    from dssbt import plots

    cap = Captured()
    monkeypatch.setattr(plots, "_save", cap)
    runs = grid_runs(tmp_path, [2, 4])
    assert set(runs["n_classes"]) == {10}
    plots.accuracy_vs_order(runs, [], {})
    ax = cap.figs[0].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["full N=8, pretraining only (3 epochs; mean)"].get_ydata()[0] == pytest.approx(0.9)
    assert lines["full N=8, continued (5 epochs in all; mean)"].get_ydata()[0] == pytest.approx(0.92)
    assert lines["chance (1 / classes)"].get_ydata()[0] == pytest.approx(0.1)
    legend = [t.get_text() for t in cap.figs[0].legends[0].get_texts()]
    assert "BT (5 epochs)" in legend and "Skew-HiPPO, equal budget (5 epochs)" in legend  # equal budgets
    assert "mean ± sd over seeds" in ax.get_ylabel()
    assert ax.get_xscale() == "log" and "one order" not in ax.get_title()


def test_accuracy_vs_order_with_one_order_is_a_dot_plot_per_init(tmp_path, monkeypatch):
    from dssbt import plots

    cap = Captured()
    monkeypatch.setattr(plots, "_save", cap)
    plots.accuracy_vs_order(grid_runs(tmp_path, [4]), [], {})
    ax = cap.figs[0].axes[0]
    assert "one order, r = 4: dots per init" in ax.get_title() and ax.get_xscale() == "linear"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Skew-HiPPO, equal budget", "BT"]


def test_forest_plots_exactly_the_family_grouped_by_task_primary_first(tmp_path, monkeypatch):
    from test_aggregate import claim2_runs

    from dssbt import plots
    from dssbt.aggregate import differences_table

    f, _, _ = claim2_runs(tmp_path / "a")
    g, _, _ = claim2_runs(tmp_path / "b")
    runs = pd.concat([runs_table(f), runs_table(g).assign(task="s")], ignore_index=True)
    primary = {"method": "bt", "control": "skew_hippo_equal", "order": 4}
    d = differences_table(runs, primary=primary, family=["primary", "claim2"])
    rows = plots.forest_rows(d.iloc[::-1])  # whatever the table's order
    assert list(rows["task"]) == ["s"] * 8 + ["t"] * 8
    assert rows.loc[0, "primary"] and rows.loc[8, "primary"] and rows["primary"].sum() == 2
    assert set(rows["claim"]) == {"primary", "claim2"} and len(rows) == d["in_family"].sum()
    cap = Captured()
    monkeypatch.setattr(plots, "_save", cap)
    plots.forest(d, [], {})
    ax = cap.figs[0].axes[0]
    assert ax.get_xlabel() == "test accuracy difference (points), 95 % interval"
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks.count("s  ") == 1 and ticks.count("t  ") == 1 and len(ticks) == 18  # a header row per task
    assert "BT-init r=4 − full N=32, continued [claim2]" in ticks
    texts = [t.get_text() for t in ax.texts]
    assert sum(t.startswith("Holm p") for t in texts) == 16
    assert 0 in [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]  # the zero line
    paths = [tmp_path / "forest.png", tmp_path / "forest.pdf"]
    monkeypatch.undo()
    plots.forest(d, paths, {"dpi": 40})
    assert all(p.stat().st_size > 0 for p in paths)


def test_hsv_decay_skips_the_reports_of_methods_without_hsvs(tmp_path):
    """The frontier reduces one pretrained model by bt, top_energy and last; only BT's report holds HSVs (the others
    NaN). The compressibility HSV plot uses the finite ones and is written (it raised on an all-NaN log axis)."""
    import json

    from dssbt.compress import hsv_decay_by_variant
    from dssbt.plots import normalised_hsv

    hsv = np.array([[[4.0, 2.0, 1.0, 0.5], [2.0, 1.0, 0.25, 0.0]]])  # (n_dir, H, N)
    assert np.array_equal(normalised_hsv({"hsv": hsv.tolist()}), hsv[0] / hsv[0][:, :1])
    assert normalised_hsv({"hsv": np.full_like(hsv, np.nan).tolist()}) is None
    files = []
    for method, values in (("bt", hsv), ("top_energy", np.full_like(hsv, np.nan)), ("last", np.full_like(hsv, np.nan))):
        path = tmp_path / "image" / "seed0" / "plain" / f"{method}_rbudget0.1" / "report.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"layers": [{"hsv": values.tolist()}]}))  # NaN as the reduce job writes it
        files.append(path)
    out = [tmp_path / "hsv.png", tmp_path / "hsv.pdf"]
    hsv_decay_by_variant(files, out, {"dpi": 60})
    assert all(p.stat().st_size > 0 for p in out)
