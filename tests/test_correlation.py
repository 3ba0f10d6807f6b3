import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dssbt.correlation import correlation, correlation_table, points_table, write_correlation


def test_coefficients_match_hand_computations():
    x = np.array([0.5, 0.6, 0.7, 0.8, 0.9])
    y = np.array([0.55, 0.58, 0.75, 0.7, 0.95])
    mx, my = x.mean(), y.mean()
    pearson = sum((a - mx) * (b - my) for a, b in zip(x, y)) / math.sqrt(
        sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y)
    )
    # ranks of y: 1, 2, 4, 3, 5 -> d^2 sums to 2; rho = 1 - 6 sum d^2 / (n (n^2 - 1))
    spearman = 1 - 6 * 2 / (5 * 24)
    got = correlation(x, y, n_resamples=500)
    assert got["n"] == 5
    assert got["pearson"] == pytest.approx(pearson, abs=1e-12)
    assert got["spearman"] == pytest.approx(spearman, abs=1e-12)
    for name in ("pearson", "spearman"):
        assert -1 <= got[f"{name}_low"] <= got[f"{name}_high"] <= 1
    assert got == correlation(x, y, n_resamples=500)  # seeded: reproducible
    # the interval is the bootstrap's: scipy's percentile interval of the same resamples where none is degenerate
    ref = stats.bootstrap(
        (x, y),
        lambda a, b: stats.pearsonr(a, b).statistic if np.ptp(a) > 0 else np.nan,
        paired=True,
        vectorized=False,
        n_resamples=500,
        method="percentile",
        rng=np.random.default_rng(0),
    )
    dist = ref.bootstrap_distribution
    expected = np.nanpercentile(dist, [2.5, 97.5]) if np.isnan(dist).any() else ref.confidence_interval
    assert (got["pearson_low"], got["pearson_high"]) == pytest.approx(tuple(expected))


def test_undefined_coefficients_are_nan():
    assert np.isnan(correlation([0.1, 0.2], [0.3, 0.4])["pearson"])  # fewer than 3 points
    c = correlation([0.1, 0.1, 0.1], [0.3, 0.4, 0.5])  # constant x
    assert np.isnan(c["pearson"]) and np.isnan(c["spearman_low"])


def test_per_task_coefficients_are_never_pooled():
    """Two tasks with a negative relation inside each but a positive one pooled (the easy task is high on both)."""
    rows = []
    for task, base in (("easy", 0.8), ("hard", 0.2)):
        for i, (x, y) in enumerate([(0.00, 0.06), (0.02, 0.04), (0.04, 0.02), (0.06, 0.00)]):
            rows.append(
                {
                    "task": task,
                    "seed": i,
                    "pretrain_epochs": 1,
                    "order": 2,
                    "pretrained_accuracy": base + x,
                    "bt_init_accuracy": base + y,
                }
            )
    points = pd.DataFrame(rows)
    assert stats.pearsonr(points["pretrained_accuracy"], points["bt_init_accuracy"]).statistic > 0.9
    t = correlation_table(points, n_resamples=200).set_index("task")
    assert list(t.index) == ["easy", "hard"]
    assert t.loc["easy", "pearson"] == pytest.approx(-1) and t.loc["hard", "spearman"] == pytest.approx(-1)


def write_metrics(path, task, seed, acc, epochs, order):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"task": task, "seed": seed, "order": order, "epochs_run": epochs, "accuracy": {"test": acc}})
    )
    return path


def test_written_points_table_and_plot(tmp_path):
    pairs = []
    for seed in (0, 1):
        for e, (pre, ret) in enumerate([(0.5, 0.6), (0.7, 0.65), (0.8, 0.8)], start=1):
            pairs.append(
                (
                    write_metrics(tmp_path / f"s{seed}/pre{e}.json", "t", seed, pre + 0.01 * seed, e, 32),
                    write_metrics(tmp_path / f"s{seed}/ret{e}.json", "t", seed, ret, 2, 8),
                )
            )
    out = [tmp_path / "points.csv", tmp_path / "corr.csv", [tmp_path / "c.png", tmp_path / "c.pdf"]]
    table = write_correlation(pairs, *out, {"dpi": 40})
    points = pd.read_csv(out[0])
    assert len(points) == 6 and list(points.columns[:6]) == [
        "task",
        "seed",
        "pretrain_epochs",
        "order",
        "pretrained_accuracy",
        "bt_init_accuracy",
    ]
    assert list(pd.read_csv(out[1])["task"]) == ["t"] and table.loc[0, "n"] == 6
    assert all(p.stat().st_size > 0 for p in out[2])
    bad = [(pairs[0][0], pairs[3][1])]  # seed 0's pretrained model with seed 1's retrained one
    with pytest.raises(ValueError, match="is not that of"):
        points_table(bad)
