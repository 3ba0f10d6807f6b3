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
