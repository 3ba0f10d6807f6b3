import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dssbt.aggregate import differences_table, paired_difference, runs_table, summary_table, write_tables

STAGE = {
    "pretrain": ("pretrain", "skew_hippo"),
    "skew_hippo": ("baseline", "skew_hippo"),
    "skew_hippo_equal": ("baseline", "skew_hippo_equal"),
    "bt_init": ("retrain", "bt"),
    "bt": ("reduce", "bt"),
    "full_continued": ("continue", "full"),
    "transplant_init": ("retrain", "transplant"),
    "transplant": ("reduce", "transplant"),
}
RUN = {
    "pretrain": "pretrain",
    "skew_hippo": "skew_hippo_r{r}",
    "skew_hippo_equal": "skew_hippo_equal_r{r}",
    "bt_init": "bt_init_r{r}",
    "bt": "bt_r{r}",
    "full_continued": "full_continued",
    "transplant_init": "transplant_init_r{r}",
    "transplant": "transplant_r{r}",
}


def metrics(root, kind, task, seed, order, acc, N=8, params=(100, 40), epochs=3, wall=1.0, extra=None):
    """A metrics file where the pipeline writes it: root/<task>/seed<s>/<run>/metrics.json."""
    stage, method = STAGE[kind]
    run = RUN[kind].format(r=order)
    path = root / task / f"seed{seed}" / run / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "task": task,
                "seed": seed,
                "order": order,
                "N": N,
                "stage": stage,
                "method": method,
                "run": run,
                "accuracy": {"train": acc, "val": acc, "test": acc},
                "loss": {"train": 1, "val": 1, "test": 1},
                "params": {"total": params[0], "ssm": params[1]},
                "epochs_run": epochs,
                "wall_time_s": wall,
                **(extra or {}),
            }
        )
    )
    return path


@pytest.fixture
def files(tmp_path):
    f = []
    accs = [(0.90, 0.60, 0.70, 0.80, 0.50), (0.94, 0.70, 0.75, 0.90, 0.40)]
    for seed, (pre, sh, eq, bt, nr) in enumerate(accs):
        f.append(metrics(tmp_path, "pretrain", "t", seed, 8, pre, params=(200, 80), epochs=3, wall=10.0))
        f.append(metrics(tmp_path, "skew_hippo", "t", seed, 2, sh, epochs=3, wall=2.0))
        f.append(metrics(tmp_path, "skew_hippo_equal", "t", seed, 2, eq, epochs=6, wall=4.0))
        f.append(metrics(tmp_path, "bt_init", "t", seed, 2, bt, epochs=3, wall=2.0))
        f.append(metrics(tmp_path, "bt", "t", seed, 2, nr, epochs=0, wall=0.5))
    return f


def test_paired_interval_matches_a_hand_computation():
    x = np.array([0.81, 0.86, 0.79, 0.90])
    y = np.array([0.70, 0.72, 0.74, 0.71])
    d = [0.11, 0.14, 0.05, 0.19]  # x - y, written out
    mean = sum(d) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / 3)
    half = stats.t.ppf(0.975, 3) * sd / math.sqrt(4)  # the t quantile: the independent reference
    got = paired_difference(x, y)
    assert got["n_pairs"] == 4
    assert got["diff"] == pytest.approx(0.1225, abs=1e-12)
    assert got["ci_low"] == pytest.approx(mean - half, abs=1e-12)
    assert got["ci_high"] == pytest.approx(mean + half, abs=1e-12)
    # paired, not two-sample: the unpaired interval of the same numbers differs
    welch = stats.ttest_ind(x, y).confidence_interval(0.95)
    assert not np.isclose(welch.low, got["ci_low"])


def test_one_pair_has_no_interval_and_none_no_difference():
    one = paired_difference(np.array([0.8]), np.array([0.7]))
    assert one["diff"] == pytest.approx(0.1) and one["n_pairs"] == 1
    assert np.isnan(one["ci_low"]) and np.isnan(one["ci_high"])
    none = paired_difference(np.array([]), np.array([]))
    assert none["n_pairs"] == 0 and np.isnan(none["diff"])
    with pytest.raises(ValueError, match="one length"):
        paired_difference(np.array([0.1, 0.2]), np.array([0.1]))


def test_differences_are_paired_by_seed(tmp_path):
    """Seeds pair by their number, not by file order; a seed one side lacks is left out of the pairs."""
    f = []
    for seed, (sh, bt) in {0: (0.5, 0.6), 1: (0.7, 0.9), 2: (0.4, None)}.items():
        f.append(metrics(tmp_path, "pretrain", "t", seed, 8, 0.9))
        f.append(metrics(tmp_path, "skew_hippo", "t", seed, 2, sh))
        if bt is not None:
            f.append(metrics(tmp_path, "bt_init", "t", seed, 2, bt))
    d = differences_table(runs_table(f[::-1])).set_index(["init", "versus"])
    row = d.loc[("bt_init", "skew_hippo")]
    assert row["n_pairs"] == 2 and row["diff"] == pytest.approx(0.15)  # (0.1 + 0.2) / 2; seed 2 unpaired
    half = stats.t.ppf(0.975, 1) * np.std([0.1, 0.2], ddof=1) / np.sqrt(2)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((0.15 - half, 0.15 + half))
    assert not row["significant"]


def test_retrained_inits_are_also_compared_with_the_retrained_controls(tmp_path):
    """BT-init - transplant (retrained): what the reduced SSM adds beyond the copied weights, paired by seed and
    checked against scipy's paired t test; inits that are not retrained get no row against a retrained control."""
    f, bt, tp = [], [0.80, 0.90, 0.70], [0.60, 0.85, 0.50]
    for seed in range(3):
        f.append(metrics(tmp_path, "pretrain", "t", seed, 8, 0.9))
        f.append(metrics(tmp_path, "skew_hippo_equal", "t", seed, 2, 0.6))
        f.append(metrics(tmp_path, "bt_init", "t", seed, 2, bt[seed]))
        f.append(metrics(tmp_path, "bt", "t", seed, 2, 0.3))
        f.append(metrics(tmp_path, "transplant_init", "t", seed, 2, tp[seed]))
        f.append(metrics(tmp_path, "transplant", "t", seed, 2, 0.1))
    d = differences_table(runs_table(f)).set_index(["init", "versus"])
    row = d.loc[("bt_init", "transplant_init")]
    ci = stats.ttest_rel(bt, tp).confidence_interval(0.95)
    assert row["diff"] == pytest.approx(np.mean(np.subtract(bt, tp))) and row["n_pairs"] == 3
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert row["significant"] == (ci.low > 0)
    versus_transplant = {i for i, v in d.index if v == "transplant_init"}
    assert versus_transplant == {"bt_init"}  # not bt_no_retrain, transplant_no_retrain, skew_hippo_equal, itself
    assert ("transplant_init", "skew_hippo_equal") in d.index  # the controls keep their rows against the baselines


def test_summary_means_stds_budgets_and_paired_differences(files):
    s = summary_table(runs_table(files)).set_index(["order", "init"])
    assert list(s.index) == [
        (8, "skew_hippo"),
        (2, "skew_hippo_equal"),
        (2, "skew_hippo"),
        (2, "bt_init"),
        (2, "bt_no_retrain"),
    ]
    assert s.loc[(8, "skew_hippo"), "acc_mean"] == pytest.approx(0.92) and s.loc[(8, "skew_hippo"), "reference"]
    assert s.loc[(2, "bt_init"), "acc_mean"] == pytest.approx(0.85)
    assert s.loc[(2, "bt_init"), "acc_std"] == pytest.approx(np.sqrt(2 * 0.05**2))  # sample std of 0.8, 0.9
    # bt - equal budget: 0.10, 0.15 per seed
    assert s.loc[(2, "bt_init"), "diff_vs_skew_hippo_equal"] == pytest.approx(0.125)
    assert s.loc[(2, "bt_init"), "n_pairs_vs_skew_hippo_equal"] == 2
    # bt - plain: 0.20 in both seeds: no spread, the interval is the point
    assert s.loc[(2, "bt_init"), "diff_vs_skew_hippo"] == pytest.approx(0.20)
    assert s.loc[(2, "bt_init"), "ci_low_vs_skew_hippo"] == pytest.approx(0.20)
    assert s.loc[(2, "bt_no_retrain"), "diff_vs_skew_hippo"] == pytest.approx(-0.20)
    assert s.loc[(2, "skew_hippo"), "diff_vs_skew_hippo_equal"] == pytest.approx(-0.075)
    assert np.isnan(s.loc[(2, "skew_hippo"), "diff_vs_skew_hippo"])  # not against itself
    assert np.isnan(s.loc[(8, "skew_hippo"), "diff_vs_skew_hippo"])  # the full-N reference has none
    assert s.loc[(8, "skew_hippo"), "params_total"] == 200 and s.loc[(2, "bt_init"), "params_ssm"] == 40
    assert (s["n_seeds"] == 2).all()
    # budgets: a run from the pretrained model adds its pretraining (3 epochs, 10 s)
    assert s.loc[(2, "bt_init"), "total_epochs"] == 6 and s.loc[(2, "bt_init"), "total_wall_time_s"] == 12
    assert s.loc[(2, "bt_no_retrain"), "total_epochs"] == 3 and s.loc[(2, "bt_no_retrain"), "epochs_run"] == 0
    assert s.loc[(2, "skew_hippo_equal"), "total_epochs"] == 6 and s.loc[(2, "skew_hippo"), "total_epochs"] == 3


def test_a_run_from_a_missing_pretrained_model_is_an_error(tmp_path):
    f = [metrics(tmp_path, "bt_init", "t", 0, 2, 0.8)]
    with pytest.raises(ValueError, match=r"seed0/pretrain/metrics.json is missing"):
        runs_table(f)


def test_written_tables(files, tmp_path):
    out = {k: tmp_path / f"out.{k}" for k in ("runs", "csv", "md", "tex", "diff")}
    write_tables(files, out["runs"], out["csv"], out["md"], out["tex"], differences_csv=out["diff"])
    runs = pd.read_csv(out["runs"])
    assert len(runs) == 10 and set(runs["init"]) == {"skew_hippo", "skew_hippo_equal", "bt_init", "bt_no_retrain"}
    assert {"total_epochs", "total_wall_time_s"} <= set(runs.columns)
    md = out["md"].read_text().splitlines()
    assert md[0].startswith(
        "| task | order | init | test acc. % (mean ± std, n seeds) | epochs (total) | "
        "train time s (total) | params | SSM params | vs Skew-HiPPO, equal budget (pp, paired,"
        " 95 % CI) | vs Skew-HiPPO (pp, paired, 95 % CI) |"
    )
    assert md[2] == "| t | 8 (full N) | Skew-HiPPO | 92.00 ± 2.83 (n=2) | 3 | 10 | 200 | 80 |  |  |"
    half = 100 * stats.t.ppf(0.975, 1) * np.std([0.10, 0.15], ddof=1) / np.sqrt(2)
    assert (
        f"| t | 2 | BT-init (retrained) | 85.00 ± 7.07 (n=2) | 6 | 12 | 100 | 40 | "
        f"+12.50 [{12.5 - half:+.2f}, {12.5 + half:+.2f}] | +20.00 [+20.00, +20.00] |"
    ) in md  # no predictions, no seed x item interval: nothing is significant (bold), whatever the t interval
    tex = out["tex"].read_text()
    assert r"85.00 $\pm$ 7.07 (n=2)" in tex and r"\begin{tabular}" in tex and "test acc. \\% (mean" in tex
    assert r"+20.00 [+20.00, +20.00]" in tex and r"\textbf" not in tex and "**" not in tex
    diff = pd.read_csv(out["diff"])
    assert {"diff", "ci_low", "ci_high", "n_pairs"} <= set(diff.columns)
    row = diff[(diff["init"] == "bt_init") & (diff["versus"] == "skew_hippo_equal")].iloc[0]
    assert row["diff"] == pytest.approx(0.125) and row["n_pairs"] == 2


def test_one_seed_tables_say_no_interval_and_leave_out_a_baseline_not_run(tmp_path):
    """No plain Skew-HiPPO run (control skew_hippo not listed): no column of differences to it."""
    f = [
        metrics(tmp_path, "pretrain", "t", 0, 8, 0.9),
        metrics(tmp_path, "skew_hippo_equal", "t", 0, 2, 0.6),
        metrics(tmp_path, "bt_init", "t", 0, 2, 0.7),
    ]
    out = {k: tmp_path / f"out.{k}" for k in ("runs", "csv", "md", "tex")}
    write_tables(f, *out.values())
    md = out["md"].read_text()
    assert "| t | 2 | BT-init (retrained) | 70.00 ± n/a (n=1) | 6 | 2 | 100 | 40 | +10.00 (n=1, no CI) |\n" in md
    assert md.splitlines()[0].endswith("| vs Skew-HiPPO, equal budget (pp, paired, 95 % CI) |")
    assert "vs Skew-HiPPO (pp" not in md and "vs Skew-HiPPO (pp" not in out["tex"].read_text().replace("\\%", "%")


def test_no_metrics_is_an_error():
    with pytest.raises(ValueError, match="no metrics files"):
        runs_table([])


def test_tolerance_orders_group_by_spec_across_seeds_with_their_mean_state_size(tmp_path):
    files = []
    for seed, (layers, sh, bt) in enumerate([([5, 2], 0.6, 0.7), ([6, 3], 0.5, 0.9)]):
        files.append(metrics(tmp_path, "pretrain", "t", seed, 8, 0.9))
        files.append(metrics(tmp_path, "skew_hippo", "t", seed, 2, 0.4))
        for kind, acc in (("skew_hippo", sh), ("bt_init", bt)):
            p = metrics(
                tmp_path,
                kind,
                "t",
                seed,
                "tol0.05",
                acc,
                params=(90 + seed, 30 + seed),
                extra={"order": max(layers), "layer_orders": layers, "order_spec": "tol:0.05"},
            )
            files.append(p)
    runs = runs_table(files)
    tol = runs[runs["order_spec"] == "tol:0.05"]
    assert sorted(tol["order"]) == [3.5, 3.5, 4.5, 4.5] and not tol["reference"].any()
    assert set(tol["layer_orders"]) == {"5 2", "6 3"}
    s = summary_table(runs).set_index(["order_spec", "init"])
    # fixed orders first, then the tolerance row; the full model (order 8 = N) is the reference
    assert list(s.index) == [
        ("8", "skew_hippo"),
        ("2", "skew_hippo"),
        ("tol:0.05", "skew_hippo"),
        ("tol:0.05", "bt_init"),
    ]
    row = s.loc[("tol:0.05", "bt_init")]
    assert row["order"] == pytest.approx(4.0) and row["params_total"] == pytest.approx(90.5)
    assert row["diff_vs_skew_hippo"] == pytest.approx(0.8 - 0.55)  # against Skew-HiPPO at the same spec
    out = {k: tmp_path / f"out.{k}" for k in ("runs", "csv", "md", "tex")}
    write_tables(files, out["runs"], out["csv"], out["md"], out["tex"])
    # no equal-budget control in this grid: only the column against plain Skew-HiPPO
    assert (
        "| t | tol:0.05 (mean r 4.0) | BT-init (retrained) | 80.00 ± 14.14 (n=2) | 6 | 2 | 90.5 | 30.5 | +25.00 ["
        in out["md"].read_text()
    )


def test_methods_table_puts_every_init_of_an_order_side_by_side(files, tmp_path):
    from dssbt.aggregate import methods_table

    t = methods_table(summary_table(runs_table(files)))
    assert list(t.columns) == [
        "task",
        "order",
        "params",
        "Skew-HiPPO, equal budget",
        "Skew-HiPPO",
        "BT-init (retrained)",
        "BT, no retraining",
    ]
    assert t.to_dict("records")[1] == {
        "task": "t",
        "order": "2",
        "params": "100",
        "Skew-HiPPO, equal budget": "72.50 ± 3.54 (n=2)",
        "Skew-HiPPO": "65.00 ± 7.07 (n=2)",
        "BT-init (retrained)": "85.00 ± 7.07 (n=2)",
        "BT, no retraining": "45.00 ± 7.07 (n=2)",
    }
    out = {k: tmp_path / f"out.{k}" for k in ("runs", "csv", "md", "tex", "methods")}
    write_tables(files, out["runs"], out["csv"], out["md"], out["tex"], out["methods"])
    assert (
        "| t | 2 | 100 | 72.50 ± 3.54 (n=2) | 65.00 ± 7.07 (n=2) | 85.00 ± 7.07 (n=2) | 45.00 ± 7.07 (n=2) |"
        in out["methods"].read_text()
    )


def test_full_continued_counts_its_pretraining_and_is_compared_with_the_pretrained_model(tmp_path):
    f = []
    for seed, (pre, cont) in enumerate([(0.90, 0.93), (0.80, 0.86)]):
        f.append(metrics(tmp_path, "pretrain", "t", seed, 8, pre, epochs=3, wall=10.0))
        f.append(metrics(tmp_path, "full_continued", "t", seed, 8, cont, epochs=2, wall=5.0))
    s = summary_table(runs_table(f)).set_index("init")
    assert list(s.index) == ["skew_hippo", "full_continued"] and s["reference"].all()
    assert s.loc["full_continued", "total_epochs"] == 5 and s.loc["full_continued", "total_wall_time_s"] == 15
    assert s.loc["full_continued", "diff_vs_skew_hippo"] == pytest.approx(0.045)
    assert s.loc["full_continued", "n_pairs_vs_skew_hippo"] == 2


# ----- seed x item uncertainty, multiplicity, power -----------------------------------------------------------------


def hand_bootstrap(a, b, n_boot=2000, seed=0):
    """The two-way bootstrap written out: per replicate, S seeds then n items drawn with replacement from
    default_rng(seed), one item draw for every drawn seed and both arms; 2.5 / 97.5 % percentiles."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    S, n = a.shape
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        s = rng.integers(0, S, S)
        i = rng.integers(0, n, n)
        reps.append(np.mean(a[s][:, i] - b[s][:, i]))
    return np.percentile(reps, [2.5, 97.5])


def with_predictions(path, correct, n_classes=2):
    """Write the predictions.npz beside a metrics file: labels 0/1 alternating, predictions right where
    ``correct``; the metrics' test accuracy set to the predictions' (as a job writes them)."""
    correct = np.asarray(correct, dtype=bool)
    labels = (np.arange(len(correct)) % n_classes).astype(np.uint8)
    pred = np.where(correct, labels, (labels + 1) % n_classes).astype(np.uint8)
    with open(path.parent / "predictions.npz", "wb") as fh:
        np.savez(fh, val=labels, val_labels=labels, test=pred, test_labels=labels)
    m = json.loads(path.read_text())
    m["accuracy"]["test"] = float(np.mean(correct))
    path.write_text(json.dumps(m))
    return path


def correctness(k, n, rng):
    """n items, k of them right, at places drawn from ``rng``."""
    c = np.zeros(n, dtype=bool)
    c[rng.permutation(n)[:k]] = True
    return c


def test_seed_item_bootstrap_equals_a_hand_run_loop():
    from dssbt.aggregate import seed_item_bootstrap

    a = np.array([[1, 1, 0, 1, 1, 0, 1, 1], [1, 0, 1, 1, 1, 1, 0, 1], [0, 1, 1, 1, 0, 1, 1, 1]], dtype=bool)
    b = np.array([[0, 1, 0, 1, 0, 0, 1, 0], [1, 0, 0, 1, 0, 1, 0, 0], [0, 1, 0, 1, 0, 0, 1, 1]], dtype=bool)
    got = seed_item_bootstrap(a, b, n_boot=2000, seed=0)
    assert got["n_items"] == 8
    assert (got["boot_low"], got["boot_high"]) == pytest.approx(tuple(hand_bootstrap(a, b, 2000, 0)), abs=1e-12)
    other = seed_item_bootstrap(a, b, n_boot=2000, seed=1)  # the generator's seed matters
    assert (other["boot_low"], other["boot_high"]) != (got["boot_low"], got["boot_high"])
    # replicates computed in chunks (large n): the same draws, the same interval
    rng = np.random.default_rng(5)
    a2, b2 = rng.random((2, 3000)) < 0.7, rng.random((2, 3000)) < 0.6
    big = seed_item_bootstrap(a2, b2, n_boot=2000, seed=0)
    assert (big["boot_low"], big["boot_high"]) == pytest.approx(tuple(hand_bootstrap(a2, b2, 2000, 0)), abs=1e-12)
    one = seed_item_bootstrap(a[:1], b[:1])
    assert np.isnan(one["boot_low"]) and np.isnan(one["boot_high"])  # one seed: no seed spread to resample


def test_few_test_items_make_the_seed_item_interval_wider_than_the_seed_only_one(tmp_path):
    """20 test items, 3 seeds with steady differences (+3, +4, +2 items): the t interval over seeds excludes 0, the
    binomial noise of 20 items does not let the seed x item interval do so: not significant."""
    rng = np.random.default_rng(0)
    f, A, B = [], [], []
    for seed, (k_bt, k_eq) in enumerate([(14, 11), (15, 11), (14, 12)]):
        f.append(metrics(tmp_path, "pretrain", "t", seed, 8, 0.9))
        A.append(correctness(k_bt, 20, rng))
        B.append(correctness(k_eq, 20, rng))
        f.append(with_predictions(metrics(tmp_path, "bt_init", "t", seed, 2, 0), A[-1]))
        f.append(with_predictions(metrics(tmp_path, "skew_hippo_equal", "t", seed, 2, 0), B[-1]))
    d = differences_table(runs_table(f)).set_index(["init", "versus"]).loc[("bt_init", "skew_hippo_equal")]
    assert d["diff"] == pytest.approx(0.15) and d["n_items"] == 20 and d["n_pairs"] == 3
    assert d["ci_low"] > 0  # the seed-only interval: [+2.6, +27.4] points
    low, high = hand_bootstrap(A, B)  # rows in seed order, bt_init first
    assert (d["boot_low"], d["boot_high"]) == pytest.approx((low, high), abs=1e-12)
    assert d["boot_high"] - d["boot_low"] > d["ci_high"] - d["ci_low"] and d["boot_low"] < 0
    assert not d["significant"]


def test_predictions_that_miss_the_metrics_or_other_items_are_refused(tmp_path):
    rng = np.random.default_rng(1)
    f = [metrics(tmp_path, "pretrain", "t", s, 8, 0.9) for s in range(2)]
    for s in range(2):
        f.append(with_predictions(metrics(tmp_path, "bt_init", "t", s, 2, 0), correctness(5, 10, rng)))
        f.append(with_predictions(metrics(tmp_path, "skew_hippo_equal", "t", s, 2, 0), correctness(4, 10, rng)))
    m = json.loads(f[2].read_text())
    m["accuracy"]["test"] = 0.6  # not what its predictions score
    f[2].write_text(json.dumps(m))
    with pytest.raises(ValueError, match="test accuracy 0.5 of the predictions, 0.6"):
        differences_table(runs_table(f))
    with_predictions(f[2], correctness(5, 12, rng))  # another test set (12 items)
    with pytest.raises(ValueError, match="other test items"):
        differences_table(runs_table(f))


def family(tmp_path, n_items=400):
    """3 seeds of every arm with predictions on ``n_items`` items; BT-init far ahead of every other arm."""
    rng = np.random.default_rng(2)
    acc = {  # items right per seed
        "skew_hippo_equal": (0.600, 0.650, 0.625),
        "skew_hippo": (0.550, 0.600, 0.500),
        "bt_init": (0.900, 0.930, 0.910),
        "bt": (0.500, 0.475, 0.525),
        "transplant_init": (0.700, 0.640, 0.600),
        "transplant": (0.300, 0.250, 0.350),
    }
    f = []
    for seed in range(3):
        f.append(metrics(tmp_path, "pretrain", "t", seed, 8, 0.95))
        for kind, a in acc.items():
            path = metrics(tmp_path, kind, "t", seed, 2, 0)
            f.append(with_predictions(path, correctness(round(a[seed] * n_items), n_items, rng)))
    return f, acc


def test_p_values_are_paired_t_tests_holm_adjusted_over_the_family(tmp_path):
    from statsmodels.stats.multitest import multipletests

    f, acc = family(tmp_path)
    d = differences_table(runs_table(f))
    key = {"bt_no_retrain": "bt", "transplant_no_retrain": "transplant"}  # table init -> the fixture's kind
    raw = [stats.ttest_rel(acc[key.get(i, i)], acc[key.get(v, v)]).pvalue for i, v in zip(d["init"], d["versus"])]
    np.testing.assert_allclose(d["p"], raw, rtol=1e-9)
    holm = multipletests(raw, method="holm")[1]
    np.testing.assert_allclose(d["p_holm"], holm, rtol=1e-9)
    assert (d["p_holm"] > d["p"]).any()  # adjusted, not the raw p
    assert len(d) == 11  # the family: 5 inits x 2 baselines less self, + 2 retrained x transplant less self
    # significant = Holm p < 0.05 and the seed x item interval excludes 0
    expected = (holm < 0.05) & ((d["boot_low"] > 0) | (d["boot_high"] < 0))
    assert list(d["significant"]) == list(expected) and expected.any() and not expected.all()
    row = d.set_index(["init", "versus"]).loc[("bt_init", "skew_hippo_equal")]
    assert row["significant"] and row["boot_low"] > 0


def test_the_primary_contrast_comes_first_and_a_missing_one_is_reported(tmp_path, capsys):
    f, _ = family(tmp_path)
    primary = {"method": "bt", "control": "skew_hippo_equal", "order": 2}
    d = differences_table(runs_table(f), primary=primary)
    assert d.loc[0, ["init", "versus", "order_spec"]].tolist() == ["bt_init", "skew_hippo_equal", "2"]
    assert d["primary"].tolist() == [True] + [False] * (len(d) - 1)
    out = {k: tmp_path / f"out.{k}" for k in ("runs", "csv", "md", "tex", "methods", "dcsv", "dmd")}
    write_tables(f, *out.values(), primary=primary)
    md = out["dmd"].read_text().splitlines()
    assert md[0].startswith(
        "| task | order | init | versus | versus order | claim | params (init / versus) | diff (pp) | "
        "95 % CI, seeds (t) | 95 % CI, seeds × items"
    )
    assert md[2].startswith(
        "| t | 2 | BT-init (retrained) (primary) | Skew-HiPPO, equal budget | 2 | primary | 100 / 100 | +28.83 |"
    )
    assert "| yes |" in md[2]
    assert pd.read_csv(out["dcsv"])["primary"].iloc[0]
    assert "**" in out["md"].read_text() and "Bold: significant" in out["md"].read_text()
    write_tables(f, *out.values(), primary=primary | {"order": 4})
    assert "the declared primary contrast (bt_init − skew_hippo_equal at order 4) has no row" in out["dmd"].read_text()
    assert "primary contrast" in capsys.readouterr().err


def test_seeds_for_power_is_statsmodels_paired_t_power_at_the_observed_spread(tmp_path):
    from statsmodels.stats.power import TTestPower

    from dssbt.aggregate import seeds_for_power

    diffs = np.array([0.03, -0.01, 0.02, 0.05])
    sd = np.std(diffs, ddof=1)
    n = TTestPower().solve_power(effect_size=0.02 / sd, alpha=0.05, power=0.8, alternative="two-sided")
    assert seeds_for_power(diffs, 0.02) == math.ceil(n) == 15
    assert seeds_for_power(diffs, 0.04) < 15  # a larger effect needs fewer seeds
    assert np.isnan(seeds_for_power(np.array([0.02]))) and np.isnan(seeds_for_power(np.array([0.1, 0.1])))
    assert seeds_for_power(np.array([0.100, 0.101]), 0.5) == 2  # the solver finds no root below 2: the least
    f, acc = family(tmp_path)
    row = differences_table(runs_table(f), power_effect=0.03).set_index(["init", "versus"])
    r = row.loc[("transplant_init", "skew_hippo_equal")]
    sd = np.std(np.subtract(acc["transplant_init"], acc["skew_hippo_equal"]), ddof=1)
    n = TTestPower().solve_power(effect_size=0.03 / sd, alpha=0.05, power=0.8, alternative="two-sided")
    assert r["seeds_for_power"] == math.ceil(n) and r["power_effect"] == 0.03


# ----- claim 2 and the declared family ------------------------------------------------------------------------------


def claim2_runs(tmp_path):
    """N = 32, orders 2, 4, 8, 16: BT-init at 2 and 4, the equal-budget Skew-HiPPO at every order, full N continued;
    4 seeds, fixed accuracies (no predictions: no seed x item interval)."""
    acc = {
        ("bt_init", 2): (0.70, 0.72, 0.69, 0.75),
        ("bt_init", 4): (0.80, 0.83, 0.79, 0.84),
        ("skew_hippo_equal", 2): (0.60, 0.61, 0.66, 0.58),
        ("skew_hippo_equal", 4): (0.70, 0.74, 0.69, 0.73),
        ("skew_hippo_equal", 8): (0.75, 0.77, 0.72, 0.80),
        ("skew_hippo_equal", 16): (0.78, 0.76, 0.80, 0.79),
        ("full_continued", 32): (0.85, 0.86, 0.80, 0.88),
    }
    params = {2: (50, 10), 4: (60, 20), 8: (80, 40), 16: (120, 80), 32: (200, 160)}
    f = []
    for seed in range(4):
        f.append(metrics(tmp_path, "pretrain", "t", seed, 32, 0.9, N=32, params=params[32]))
        for (kind, r), a in acc.items():
            f.append(metrics(tmp_path, kind, "t", seed, r, a[seed], N=32, params=params[r]))
    return f, acc, params


def test_claim2_compares_bt_init_at_r_with_the_equal_budget_model_at_every_larger_order_and_full_n(tmp_path):
    f, acc, params = claim2_runs(tmp_path)
    d = differences_table(runs_table(f))
    c2 = d[d["claim"] == "claim2"]
    got = sorted(zip(c2["order_spec"], c2["versus"], c2["versus_order_spec"]))
    assert got == sorted(
        [
            ("2", "skew_hippo_equal", "4"),
            ("2", "skew_hippo_equal", "8"),
            ("2", "skew_hippo_equal", "16"),
            ("2", "full_continued", "32"),
            ("4", "skew_hippo_equal", "8"),
            ("4", "skew_hippo_equal", "16"),
            ("4", "full_continued", "32"),
        ]
    )  # r = 4 against 8, 16 and full N; never against a smaller order (2)
    for _, row in c2.iterrows():
        x = np.array(acc[("bt_init", int(row["order_spec"]))])
        y = np.array(acc[(row["versus"], int(row["versus_order_spec"]))])
        assert row["diff"] == pytest.approx(np.mean(x - y), abs=1e-12) and row["n_pairs"] == 4
        assert row["p"] == pytest.approx(stats.ttest_rel(x, y).pvalue, rel=1e-9)
        assert row["sd"] == pytest.approx(np.std(x - y, ddof=1), rel=1e-9)
        assert (row["params_total"], row["params_ssm"]) == params[int(row["order_spec"])]
        assert (row["versus_params_total"], row["versus_params_ssm"]) == params[int(row["versus_order_spec"])]
        assert row["versus_order"] == int(row["versus_order_spec"])
    # the same-order comparisons keep their groups; the summary shows only those
    same = d[d["versus_order_spec"] == d["order_spec"]]
    assert set(same.loc[same["init"] == "bt_init", "claim"]) == {"claim1"}
    s = summary_table(runs_table(f), d).set_index(["order_spec", "init"])
    assert s.loc[("4", "bt_init"), "diff_vs_skew_hippo_equal"] == pytest.approx(
        np.mean(np.subtract(acc[("bt_init", 4)], acc[("skew_hippo_equal", 4)]))
    )


def test_holm_runs_over_exactly_the_declared_family_and_the_rest_is_exploratory(tmp_path):
    from statsmodels.stats.multitest import multipletests

    f, acc, _ = claim2_runs(tmp_path)
    primary = {"method": "bt", "control": "skew_hippo_equal", "order": 4}
    d = differences_table(runs_table(f), primary=primary, family=["primary", "claim2"])
    assert d.loc[0, "claim"] == "primary" and d["primary"].tolist() == [True] + [False] * (len(d) - 1)
    fam = d["claim"].isin(["primary", "claim2"]).to_numpy()
    assert list(d["in_family"]) == list(fam) and fam.sum() == 8 and (~fam).sum() > 0
    # the raw p of the family from the fixed accuracies (scipy), adjusted by statsmodels: the table's Holm p
    raw = [
        stats.ttest_rel(acc[("bt_init", int(o))], acc[(v, int(vo))]).pvalue
        for o, v, vo in zip(d.loc[fam, "order_spec"], d.loc[fam, "versus"], d.loc[fam, "versus_order_spec"])
    ]
    np.testing.assert_allclose(d.loc[fam, "p_holm"], multipletests(raw, method="holm")[1], rtol=1e-9)
    assert d.loc[~fam, "p_holm"].isna().all() and not d.loc[~fam, "significant"].any()
    assert d.loc[~fam, "p"].notna().all()  # exploratory rows keep their raw p
    every = differences_table(runs_table(f), primary=primary)  # no family declared: every row with a p
    assert every["in_family"].all() and len(every) == len(d)
    with pytest.raises(ValueError, match=r"evidence.family: unknown group\(s\) \['claim3'\]"):
        differences_table(runs_table(f), family=["primary", "claim3"])


def test_smallest_detectable_effect_is_statsmodels_solved_for_the_effect_size():
    from statsmodels.stats.power import TTestPower

    from dssbt.aggregate import seeds_for_power, smallest_detectable_effect

    x = smallest_detectable_effect(0.03, 10)
    assert TTestPower().power(effect_size=x / 0.03, nobs=10, alpha=0.05) == pytest.approx(0.8, abs=1e-6)
    # consistent with the seeds a paired test needs at that effect (the inverse question)
    diffs = np.array([0.01, 0.05, -0.02, 0.03, 0.0, 0.04])
    sd = np.std(diffs, ddof=1)
    assert seeds_for_power(diffs, smallest_detectable_effect(sd, 12)) == 12
    assert np.isnan(smallest_detectable_effect(0.03, 1)) and smallest_detectable_effect(0.0, 5) == 0.0


def test_a_claim2_row_gets_the_seed_item_bootstrap_of_both_arms_predictions(tmp_path):
    """BT-init at r = 2 against the equal-budget model at r = 4: paired by seed, each arm its own predictions on
    the same 30 test items; the interval is the two-way bootstrap written out by hand."""
    rng = np.random.default_rng(4)
    f, A, B = [], [], []
    for seed, (k_bt, k_eq) in enumerate([(20, 18), (22, 17), (19, 19)]):
        f.append(metrics(tmp_path, "pretrain", "t", seed, 8, 0.9))
        A.append(correctness(k_bt, 30, rng))
        B.append(correctness(k_eq, 30, rng))
        f.append(with_predictions(metrics(tmp_path, "bt_init", "t", seed, 2, 0), A[-1]))
        f.append(with_predictions(metrics(tmp_path, "skew_hippo_equal", "t", seed, 4, 0), B[-1]))
    d = differences_table(runs_table(f))
    row = d[(d["claim"] == "claim2")].iloc[0]
    assert (row["order_spec"], row["versus"], row["versus_order_spec"], row["n_items"]) == (
        "2",
        "skew_hippo_equal",
        "4",
        30,
    )
    assert (row["boot_low"], row["boot_high"]) == pytest.approx(tuple(hand_bootstrap(A, B)), abs=1e-12)
