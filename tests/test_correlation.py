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


# ----- the correlation design ---------------------------------------------------------------------------------------

# a fixed small table: 6 pretrainings (3 seeds x 2 knob values), 2 retraining seeds each
DESIGN_X = {  # pretraining -> validation accuracy
    "seed0/lr0.1": 0.61,
    "seed0/lr1": 0.80,
    "seed1/lr0.1": 0.55,
    "seed1/lr1": 0.83,
    "seed2/lr0.1": 0.66,
    "seed2/lr1": 0.78,
}
DESIGN_Y = {  # pretraining -> test accuracy of its retrainings (rseed 0, rseed 1)
    "seed0/lr0.1": (0.70, 0.74),
    "seed0/lr1": (0.79, 0.77),
    "seed1/lr0.1": (0.69, 0.66),
    "seed1/lr1": (0.81, 0.84),
    "seed2/lr0.1": (0.75, 0.71),
    "seed2/lr1": (0.70, 0.72),
}


def design_frame() -> pd.DataFrame:
    rows = [
        {"task": "t", "pretraining": p, "rseed": r, "pretrained_val": DESIGN_X[p], "retrained_test": DESIGN_Y[p][r]}
        for p in DESIGN_X
        for r in (0, 1)
    ]
    return pd.DataFrame(rows)


def test_cluster_bootstrap_equals_a_hand_run_loop_over_pretrainings():
    """Reference: a plain loop that draws pretrainings with replacement (same generator, same seed), copies every
    retraining seed of each drawn pretraining into the resample, and computes the coefficient of the resample's
    (x, mean y) per drawn pretraining with scipy."""
    from dssbt.correlation import _pearson, _spearman, cluster_bootstrap, cluster_means

    points = design_frame()
    names = sorted(DESIGN_X)
    n_resamples, seed = 400, 11
    for fn, scipy_fn in ((_spearman, stats.spearmanr), (_pearson, stats.pearsonr)):
        rng = np.random.default_rng(seed)
        dist = []
        for _ in range(n_resamples):
            drawn = rng.integers(0, len(names), size=len(names))
            resample = pd.concat(
                [points[points["pretraining"] == names[i]].assign(copy=j) for j, i in enumerate(drawn)]
            )
            per = resample.groupby("copy").agg(x=("pretrained_val", "first"), y=("retrained_test", "mean"))
            if per["x"].nunique() < 2 or per["y"].nunique() < 2:
                continue
            dist.append(scipy_fn(per["x"], per["y"]).statistic)
        want = np.percentile(dist, [2.5, 97.5])
        c = cluster_means(points)
        low, high, share = cluster_bootstrap(c["x"].to_numpy(), c["y"].to_numpy(), fn, n_resamples, seed)
        assert (low, high) == pytest.approx(tuple(want), abs=1e-12)
        assert share == pytest.approx(1 - len(dist) / n_resamples)


def test_design_spearman_and_pearson_equal_scipy_on_pretraining_means():
    from dssbt.correlation import design_table

    points = design_frame().assign(pretrain_epochs=3)
    x = np.array([DESIGN_X[p] for p in sorted(DESIGN_X)])
    y = np.array([np.mean(DESIGN_Y[p]) for p in sorted(DESIGN_X)])
    t = design_table(points, n_resamples=200).iloc[0]
    assert t["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert t["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert (t["pretrainings"], t["points"], t["rseeds_per_pretraining"]) == (6, 12, 2)
    assert t["spearman_low"] <= t["spearman"] <= t["spearman_high"]


def test_mixedlm_slope_equals_statsmodels_and_the_balanced_closed_form():
    """On a balanced design with x constant within a pretraining, the GLS slope of the random-intercept model equals
    the least-squares slope of the pretrainings' mean y on x, whatever the variance components (V maps the
    column space of [1, x] onto itself); and the fit equals statsmodels MixedLM called directly."""
    import statsmodels.formula.api as smf

    from dssbt.correlation import mixed_slope

    rng = np.random.default_rng(3)
    k, m = 8, 3
    x = rng.uniform(0.5, 0.9, k)
    rows = [
        {"pretraining": f"p{i}", "pretrained_val": x[i], "retrained_test": 0.3 + 0.5 * x[i] + u + rng.normal(0, 0.02)}
        for i, u in enumerate(rng.normal(0, 0.03, k))
        for _ in range(m)
    ]
    points = pd.DataFrame(rows)
    got = mixed_slope(points)
    means = points.groupby("pretraining").agg(x=("pretrained_val", "first"), y=("retrained_test", "mean"))
    assert got["slope"] == pytest.approx(np.polyfit(means["x"], means["y"], 1)[0], abs=1e-6)
    frame = pd.DataFrame({"y": points["retrained_test"], "x": points["pretrained_val"], "g": points["pretraining"]})
    direct = smf.mixedlm("y ~ x", frame, groups=frame["g"]).fit(reml=True)
    assert got["slope"] == pytest.approx(direct.params["x"], abs=1e-10)
    assert (got["slope_low"], got["slope_high"]) == pytest.approx(tuple(direct.conf_int().loc["x"]), abs=1e-10)
    assert got["slope_p"] == pytest.approx(direct.pvalues["x"], rel=1e-8)


def write_design_metrics(root, run, epochs, val, test, order=32):
    path = root / "results" / run / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"order": order, "epochs_run": epochs, "accuracy": {"val": val, "test": test}}))
    return path


def test_design_points_read_val_for_x_and_test_for_y_and_write_table_and_plot(tmp_path):
    from dssbt.correlation import design_points, write_correlation_design

    pairs = []
    for p, xv in DESIGN_X.items():
        pre = write_design_metrics(tmp_path, f"corr/t/{p}/pretrain", 3, xv, xv - 0.2)  # test differs from val
        for r in (0, 1):
            ret = write_design_metrics(tmp_path, f"corr/t/{p}/bt_init_r8_s{r}", 3, 0.0, DESIGN_Y[p][r], order=8)
            pairs.append((pre, ret))
    points = design_points(pairs)
    assert len(points) == 12 and set(points["knob_value"]) == {0.1, 1.0}
    one = points[(points["pretraining"] == "seed1/lr1") & (points["rseed"] == 1)].iloc[0]
    assert (one["pretrained_val"], one["retrained_test"], one["seed"], one["order"]) == (0.83, 0.84, 1, 8)
    out = [tmp_path / "pts.csv", tmp_path / "design.csv", [tmp_path / "d.png", tmp_path / "d.pdf"]]
    table = write_correlation_design(pairs, *out, {"dpi": 40}, n_resamples=200, knob="lr_factor")
    assert list(pd.read_csv(out[1])["task"]) == ["t"] and table.loc[0, "pretrainings"] == 6
    assert all(p.stat().st_size > 0 for p in out[2])
    with pytest.raises(ValueError, match="was not retrained from"):
        design_points([(pairs[0][0], pairs[2][1])])  # seed0/lr0.1's pretraining with seed0/lr1's retraining
    with pytest.raises(ValueError, match="is a corr_retrain run, not corr_pretrain"):
        design_points([(pairs[1][1], pairs[1][1])])
    with pytest.raises(ValueError, match="point given twice"):
        design_points([pairs[0], pairs[0]])
