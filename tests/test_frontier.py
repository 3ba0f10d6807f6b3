"""The compression frontier (dssbt.frontier): its paired differences to BT against scipy / statsmodels and a
hand-written bootstrap loop, and its plot's files and lines."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from dssbt.frontier import COLUMNS, differences, frontier_points, markdown, plot, write

# (method, kind, keep) -> test accuracy (%) per seed 0, 1, 2, 3
ACC = {
    ("bt", "reduced", 0.5): [60.0, 62.0, 58.0, 61.0],
    ("bt", "retrained", 0.5): [70.0, 71.0, 69.0, 72.0],
    ("bt", "reduced", 0.25): [40.0, 45.0, 41.0, 43.0],
    ("bt", "retrained", 0.25): [65.0, 66.0, 64.0, 66.5],
    ("modal", "reduced", 0.5): [50.0, 55.0, 49.0, 52.0],
    ("modal", "retrained", 0.5): [69.0, 71.5, 68.0, 71.0],
    ("modal", "reduced", 0.25): [30.0, 31.0, 35.0, 29.0],
    ("modal", "retrained", 0.25): [64.0, 66.0, 63.5, 67.0],
    ("last", "reduced", 0.5): [61.0, 62.5, 57.0, 62.0],
    ("last", "retrained", 0.5): [70.5, 70.0, 69.5, 72.5],
    ("last", "reduced", 0.25): [20.0, 25.0, 22.0, 21.0],
    ("last", "retrained", 0.25): [60.0, 62.0, 61.0, 59.0],
}


def long_points(tmp_path):
    rows = []
    for (method, kind, keep), accs in ACC.items():
        for seed, a in enumerate(accs):
            rows.append(
                dict(
                    task="image",
                    seed=seed,
                    variant="plain",
                    method=method,
                    keep=keep,
                    kind=kind,
                    accuracy=a,
                    fraction=a / 100,
                    file=str(tmp_path / "none" / f"{method}_{kind}_{keep}_{seed}.json"),  # no predictions: NaN
                )
            )
    return pd.DataFrame(rows)


def test_p_and_holm_p_are_scipy_and_statsmodels_on_a_fixed_table(tmp_path):
    tab = differences(long_points(tmp_path))
    assert len(tab) == 2 * 2 * 2 and set(tab["method"]) == {"modal", "last"}
    raw = []
    for r in tab.itertuples():
        x = np.array(ACC[(r.method, r.kind, r.keep)])
        y = np.array(ACC[("bt", r.kind, r.keep)])
        assert r.diff == pytest.approx(np.mean(x - y))
        ci = stats.ttest_rel(x, y).confidence_interval(0.95)
        assert (r.ci_low, r.ci_high) == pytest.approx((ci.low, ci.high))
        raw.append(stats.ttest_rel(x, y).pvalue)
        assert r.removed_pct == round(100 * (1 - r.keep))
    assert tab["p"].to_numpy() == pytest.approx(raw)
    assert tab["p_holm"].to_numpy() == pytest.approx(multipletests(raw, method="holm")[1])
    # by hand too: Holm = running max of (m - rank) * p over the sorted p, capped at 1
    order = np.argsort(raw)
    m = len(raw)
    holm = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * raw[i]))
        holm[i] = running
    assert tab["p_holm"].to_numpy() == pytest.approx(holm)
    # no predictions files: no bootstrap interval, so nothing is significant however small its p
    assert tab["boot_low"].isna().all() and not tab["significant"].any()
    md = markdown(tab)
    assert md.count("| image | plain |") == len(tab) and "**" not in md.split("\n\n")[0]


def write_run(folder, pred, labels, d_output=3, orders=(2, 1)):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "predictions.npz", test=pred.astype(np.uint8), test_labels=labels.astype(np.uint8))
    metrics = {
        "accuracy": {"test": float(np.mean(pred == labels))},
        "layer_orders": list(orders),
        "epochs_run": 2,
        "model_config": {"d_model": 2, "bidirectional": False, "d_output": d_output},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return str(folder / "metrics.json")


def test_bootstrap_interval_is_a_hand_written_loop(tmp_path):
    rng = np.random.default_rng(11)
    S, n = 3, 9
    labels = rng.integers(0, 3, n)
    correct = {}
    rows = []
    for method, p_right in (("bt", 0.7), ("modal", 0.4)):
        correct[method] = rng.random((S, n)) < p_right
        for s in range(S):
            pred = np.where(correct[method][s], labels, (labels + 1) % 3)
            where = dict(task="image", seed=s, variant="plain", method=method)
            for kind in ("reduced", "retrained"):
                f = write_run(tmp_path / method / kind / f"seed{s}", pred, labels)
                rows.append(dict(where, keep=0.25, kind=kind, metrics=f))
    pts = frontier_points(rows)
    assert set(pts["n_classes"]) == {3}
    n_boot, seed = 40, 5
    tab = differences(pts, n_boot=n_boot, boot_seed=seed)
    assert len(tab) == 2
    d = correct["modal"].astype(float) - correct["bt"].astype(float)
    g = np.random.default_rng(seed)
    stat = []
    for _ in range(n_boot):  # seeds drawn, then items, with replacement; one item draw for every drawn seed
        seeds = g.integers(0, S, S)
        items = g.integers(0, n, n)
        stat.append(np.mean([[d[s, i] for i in items] for s in seeds]))
    low, high = np.percentile(stat, [2.5, 97.5])
    for r in tab.itertuples():
        assert (r.boot_low, r.boot_high) == pytest.approx((100 * low, 100 * high))
        assert r.n_items == n and r.n_pairs == S
        assert r.diff == pytest.approx(100 * d.mean())


def synthetic_frontier(tasks=("image", "pathfinder"), methods=("bt", "modal", "last"), seeds=3):
    rng = np.random.default_rng(0)
    rows = []
    for task, k in zip(tasks, (10, 2)):
        for s in range(seeds):
            rows.append(
                dict(task=task, seed=s, variant="plain", method="bt", keep=1.0, kind="pretrained", n_classes=k,
                     accuracy=85 + rng.normal())
            )  # fmt: skip
            for j, m in enumerate(methods):
                for keep in (0.5, 0.25, 0.1, 0.05):
                    for kind, drop in (("retrained", 5), ("reduced", 30)):
                        acc = 85 - drop * (1 - keep) * (1 + 0.3 * j) + rng.normal()
                        rows.append(
                            dict(task=task, seed=s, variant="plain", method=m, keep=keep, kind=kind, n_classes=k,
                                 accuracy=acc)
                        )  # fmt: skip
    return pd.DataFrame(rows)


def test_plot_writes_both_files_with_one_line_per_method_and_kind(tmp_path):
    paths = [tmp_path / "frontier.png", tmp_path / "frontier.pdf"]
    fig = plot(synthetic_frontier(), paths, {"dpi": 60})
    assert all(p.stat().st_size > 0 for p in paths)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        styles = [c.lines[0].get_linestyle() for c in ax.containers]  # one error-bar series per method and kind
        assert (styles.count("-"), styles.count("--"), len(styles)) == (3, 3, 6)  # solid after, dashed without
        assert [ln.get_linestyle() for ln in ax.get_lines()].count("-.") == 1  # the full model
        assert [ln.get_linestyle() for ln in ax.get_lines()].count(":") == 1  # chance
        assert list(ax.get_xticks()) == [50, 75, 90, 95]


def test_write_gives_the_table_markdown_and_plot_and_an_empty_table_for_bt_alone(tmp_path):
    labels = np.arange(6) % 3
    rows = []
    for method in ("bt", "last"):
        for s in range(2):
            where = dict(task="image", seed=s, variant="plain", method=method)
            if method == "bt":
                f = write_run(tmp_path / "pre" / f"seed{s}", labels, labels, orders=(8, 8))
                rows.append(dict(where, keep=1.0, kind="pretrained", metrics=f))
            for kind in ("reduced", "retrained"):
                pred = np.where(np.arange(6) < 3 + (s + 1) * (method == "bt"), labels, (labels + 1) % 3)
                f = write_run(tmp_path / method / kind / f"seed{s}", pred, labels)
                rows.append(dict(where, keep=0.5, kind=kind, metrics=f))
    out = [tmp_path / n for n in ("d.csv", "d.md", "f.png", "f.pdf")]
    tab = write(rows, out[0], out[1], out[2:], {"dpi": 50})
    assert all(p.exists() for p in out)
    assert list(pd.read_csv(out[0])["kind"]) == ["reduced", "retrained"] == list(tab["kind"])
    assert tab["diff"].to_numpy() == pytest.approx([-25.0, -25.0])  # seeds: 3 - 4 and 3 - 5 of 6 items
    alone = [r for r in rows if r["method"] == "bt"]
    tab = write(alone, out[0], out[1], out[2:], {"dpi": 50})
    assert len(tab) == 0 and list(pd.read_csv(out[0]).columns) == COLUMNS


def test_the_compress_table_never_bolds_an_unadjusted_method_difference():
    """compress.md's method − BT cells carry seed-only t intervals without multiplicity control: shown, never bold
    (a clearly non-zero one included), and the footnote points to frontier_differences.md."""
    from dssbt.compress import markdown

    row = dict(
        task="image", removed_pct=75, states=512, label="plain", method="top_energy",
        pretrained_mean=73.4, pretrained_std=3.6, pretrained_n=5, reduced_mean=18.8, reduced_std=4.3, reduced_n=5,
        retrained_mean=83.5, retrained_std=1.5, retrained_n=5, vs_plain_n_pairs=0, vs_plain_diff=np.nan,
        vs_plain_ci_low=np.nan, vs_plain_ci_high=np.nan, vs_bt_reduced_diff=-28.1, vs_bt_reduced_ci_low=-46.0,
        vs_bt_reduced_ci_high=-10.3, vs_bt_reduced_n_pairs=5, vs_bt_diff=-1.3, vs_bt_ci_low=-3.8,
        vs_bt_ci_high=1.3, vs_bt_n_pairs=5,
    )  # fmt: skip
    md = markdown(pd.DataFrame([row]))
    assert "| top_energy | -28.1 [-46.0, -10.3] | -1.3 [-3.8, +1.3] |" in md and "**" not in md
    assert "frontier_differences.md" in md
