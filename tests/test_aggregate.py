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
        f"+12.50 [{12.5 - half:+.2f}, {12.5 + half:+.2f}] | **+20.00 [+20.00, +20.00]** |"
    ) in md
    tex = out["tex"].read_text()
    assert r"85.00 $\pm$ 7.07 (n=2)" in tex and r"\begin{tabular}" in tex and "test acc. \\% (mean" in tex
    assert r"\textbf{+20.00 [+20.00, +20.00]}" in tex and "**" not in tex
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
