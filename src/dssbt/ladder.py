"""The evidence studies that make budgets fair: the budget ladder (accuracy of both primary arms against cumulative
epochs, optimizer steps and wall time, and BT-init's paired lead at every multiplier) and the learning-rate grid
(mean validation accuracy per factor and the chosen factor per task and arm).

The runs are kinds of ``dssbt.grid`` (``ladder_*``, ``lr_*``); the workflow (workflow/rules/evidence.smk) hands
this module the metrics files of each point. A point of the ladder is a *chain* of runs: BT-init's pretraining,
its reduction and its retraining (their epochs, steps and wall times add up), or the equal-budget Skew-HiPPO's one
run. Its accuracies and predictions are those of the chain's last run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .aggregate import CONFIDENCE, item_correctness, paired_difference, seed_item_bootstrap
from .hparams import parse_hparams
from .io import atomic_path

# the arms of the ladder, in table order: the equal-budget baseline is what the others are compared with
ARMS = {
    "skew_hippo_equal": "Skew-HiPPO, equal budget",
    "bt_init": "BT-init",
    "bt_init_no_warmup": "BT-init, retraining without warmup",
}
VERSUS = "skew_hippo_equal"
LR_ARMS = {"bt_init": "BT-init (retraining lr)", "skew_hippo_equal": "Skew-HiPPO, equal budget"}
TIE_TOL = 1e-12  # mean validation accuracies closer than this are a tie (float rounding of means of k/n)


def n_train(meta_file: str | os.PathLike) -> int:
    """Training examples of a prepared task: the sum of its train label counts (``meta.json``)."""
    meta = json.loads(Path(meta_file).read_text())
    try:
        return int(sum(meta["label_counts"]["train"]))
    except KeyError:
        raise ValueError(f"{meta_file}: no label_counts.train (the training split's size)") from None


def steps_per_epoch(metrics: dict[str, Any], n: int) -> int:
    """Optimizer steps of one epoch of a training run: ceil(n_train / batch_size), at most max_steps_per_epoch
    where that is set (its hyper-parameters as its metrics record them)."""
    optim = parse_hparams(metrics["hparams"]).optim
    steps = math.ceil(n / optim.batch_size)
    return min(steps, optim.max_steps_per_epoch) if optim.max_steps_per_epoch else steps


def chain_point(chain: list[str | os.PathLike], n: int) -> dict[str, Any]:
    """One ladder point from the metrics files of its chain (first to last; ``n``: the task's training examples):
    the last run's test and validation accuracy and file, and the chain's cumulative epochs (``epochs_run``),
    optimizer steps (epochs x steps per epoch, per training run) and wall time (every run's ``wall_time_s``,
    reductions included). Raises ValueError naming the file where a run has no wall time."""
    epochs = steps = 0
    wall = 0.0
    for path in chain:
        m = json.loads(Path(path).read_text())
        if m.get("wall_time_s") is None:
            raise ValueError(f"{path}: no wall_time_s")
        wall += float(m["wall_time_s"])
        e = int(m.get("epochs_run", 0))
        if e:
            epochs += e
            steps += e * steps_per_epoch(m, n)
    return {
        "test_accuracy": float(m["accuracy"]["test"]),
        "val_accuracy": float(m["accuracy"]["val"]),
        "epochs": epochs,
        "steps": steps,
        "wall_time_s": wall,
        "file": str(chain[-1]),
    }


def ladder_points(rows: Iterable[dict[str, Any]], meta: dict[str, str | os.PathLike]) -> pd.DataFrame:
    """One row per (task, seed, mult, arm): ``rows`` give those fields and ``chain`` (metrics files, first to last);
    ``meta``: task -> its prepared meta.json."""
    sizes = {task: n_train(path) for task, path in meta.items()}
    out = []
    for r in rows:
        fields = {"task": r["task"], "seed": int(r["seed"]), "mult": int(r["mult"]), "arm": r["arm"]}
        out.append(fields | chain_point(r["chain"], sizes[r["task"]]))
    if not out:
        raise ValueError("no ladder points given")
    return pd.DataFrame(out).sort_values(["task", "mult", "arm", "seed"], ignore_index=True)


def ladder_summary(points: pd.DataFrame) -> pd.DataFrame:
    """Per task, multiplier and arm: the seeds (n), test accuracy mean and sd (ddof 1), and the means of the
    cumulative epochs, steps and wall time (with the wall time's sd: it varies between runs)."""
    g = points.groupby(["task", "mult", "arm"], sort=True)
    out = g.agg(
        n=("seed", "nunique"),
        test_mean=("test_accuracy", "mean"),
        test_sd=("test_accuracy", "std"),
        val_mean=("val_accuracy", "mean"),
        epochs=("epochs", "mean"),
        steps=("steps", "mean"),
        wall_time_s=("wall_time_s", "mean"),
        wall_time_sd=("wall_time_s", "std"),
    ).reset_index()
    out.insert(3, "label", out["arm"].map(ARMS))
    return out


def ladder_differences(points: pd.DataFrame, n_boot: int | None = None) -> pd.DataFrame:
    """Per task, multiplier and BT-init arm: the paired difference of test accuracy (arm - equal-budget
    Skew-HiPPO) over the seeds both have, its seed-only Student-t interval (``aggregate.paired_difference``) and
    its seed x item bootstrap interval (``aggregate.seed_item_bootstrap``, from the runs' predictions.npz; NaN
    where one is missing)."""
    rows = []
    kw = {} if n_boot is None else {"n_boot": n_boot}
    for (task, mult), df in points.groupby(["task", "mult"], sort=True):
        base = df[df["arm"] == VERSUS].set_index("seed")
        for arm in [a for a in ARMS if a != VERSUS and a in set(df["arm"])]:
            own = df[df["arm"] == arm].set_index("seed")
            seeds = sorted(set(own.index) & set(base.index))
            x, y = own.loc[seeds, "test_accuracy"].to_numpy(), base.loc[seeds, "test_accuracy"].to_numpy()
            row = {"task": task, "mult": mult, "arm": arm, "versus": VERSUS} | paired_difference(x, y)
            try:
                a = np.stack([item_correctness(own.loc[s, "file"], own.loc[s, "test_accuracy"])[0] for s in seeds])
                b = np.stack([item_correctness(base.loc[s, "file"], base.loc[s, "test_accuracy"])[0] for s in seeds])
                row |= seed_item_bootstrap(a, b, **kw)
            except FileNotFoundError:
                row |= {"boot_low": np.nan, "boot_high": np.nan, "n_items": np.nan}
            rows.append(row)
    return pd.DataFrame(rows)


def ladder_trend(points: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Does BT-init's lead shrink as the budget grows? Per task and BT-init arm: each seed's least-squares slope
    of its paired difference (arm - equal-budget) against log2(m) over the multipliers (``scipy.stats.linregress``),
    then the mean slope over seeds with its Student-t interval (``scipy.stats.ttest_1samp``) and p. A negative
    slope: the lead shrinks per doubling of the budget. NaN where fewer than 2 multipliers or 2 seeds."""
    rows = []
    for task, df in points.groupby("task", sort=True):
        wide = df.pivot_table(index=["seed", "mult"], columns="arm", values="test_accuracy")
        for arm in [a for a in ARMS if a != VERSUS and a in wide.columns]:
            d = (wide[arm] - wide[VERSUS]).dropna().reset_index()
            d.columns = ["seed", "mult", "diff"]
            slopes = [
                stats.linregress(np.log2(s["mult"]), s["diff"]).slope
                for _, s in d.groupby("seed")
                if s["mult"].nunique() >= 2
            ]
            row = {"task": task, "arm": arm, "n_seeds": len(slopes), "multipliers": d["mult"].nunique()}
            if len(slopes) >= 2 and np.ptp(slopes) > 0:
                t = stats.ttest_1samp(slopes, 0.0)
                ci = t.confidence_interval(confidence)
                row |= {"slope": float(np.mean(slopes)), "low": float(ci.low), "high": float(ci.high)}
                row["p"] = float(t.pvalue)
            else:
                row |= {"slope": float(np.mean(slopes)) if slopes else np.nan, "low": np.nan, "high": np.nan}
                row["p"] = np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def ladder_plot(summary: pd.DataFrame, paths: Iterable, settings: dict[str, Any]) -> None:
    """One row of panels per task: test accuracy (mean +- sd over seeds) of every arm against cumulative epochs,
    optimizer steps and wall time (minutes); each point annotated with its multiplier."""
    from .plots import _save, _style, plt

    _style(settings)
    tasks = sorted(summary["task"].unique())
    xs = [("epochs", "cumulative epochs"), ("steps", "cumulative optimizer steps"), ("wall_min", "wall time (min)")]
    fig, axes = plt.subplots(len(tasks), 3, figsize=(12, 3.4 * len(tasks)), squeeze=False)
    summary = summary.assign(wall_min=summary["wall_time_s"] / 60)
    for row, task in zip(axes, tasks):
        df = summary[summary["task"] == task]
        for ax, (col, name) in zip(row, xs):
            for arm, label in ARMS.items():
                a = df[df["arm"] == arm].sort_values("mult")
                if a.empty:
                    continue
                n = f"{a['n'].min()}" if a["n"].nunique() == 1 else f"{a['n'].min()}-{a['n'].max()}"
                ax.errorbar(
                    a[col], a["test_mean"], yerr=a["test_sd"], marker="o", capsize=3, label=f"{label} (n = {n})"
                )
                for _, p in a.iterrows():
                    ax.annotate(f"x{p['mult']}", (p[col], p["test_mean"]), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")  # fmt: skip
            ax.set_xlabel(name)
            ax.set_ylabel("test accuracy")
            ax.set_title(task)
        row[0].legend(fontsize=7, title="mean ± sd over seeds", title_fontsize=7)
    fig.tight_layout()
    _save(fig, paths, settings.get("dpi", 150))


def _write(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_ladder(
    rows: Iterable[dict[str, Any]],
    meta: dict[str, str | os.PathLike],
    out: dict[str, Any],
    settings: dict[str, Any],
) -> pd.DataFrame:
    """The ladder's files: ``out`` = {points, summary, differences, trend: CSV paths; md: markdown of the three
    tables; plot: [png, pdf]}. Returns the differences."""
    points = ladder_points(rows, meta)
    summary = ladder_summary(points)
    diffs = ladder_differences(points)
    trend = ladder_trend(points)
    for key, df in (("points", points), ("summary", summary), ("differences", diffs), ("trend", trend)):
        _write(out[key], df.to_csv(index=False))
    md = "\n\n".join(
        [
            "# Accuracy against budget (mean and sd of test accuracy over n seeds)",
            summary.to_markdown(index=False, floatfmt=".4g"),
            "# Paired difference to the equal-budget Skew-HiPPO (t: seeds only; boot: seeds x test items, 95 %)",
            diffs.to_markdown(index=False, floatfmt=".4g"),
            "# Trend: slope of the paired difference per doubling of the budget (mean over seeds, 95 % t interval)",
            trend.to_markdown(index=False, floatfmt=".4g"),
        ]
    )
    _write(out["md"], md + "\n")
    ladder_plot(summary, out["plot"], settings)
    return diffs


# ----- the learning-rate grid ------------------------------------------------------------------------------------


def lr_grid_table(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Per task, arm and factor: mean validation accuracy over the seeds (and n). ``rows``: task, arm, factor,
    seed and ``metrics`` (the run's metrics.json)."""
    out = []
    for r in rows:
        m = json.loads(Path(r["metrics"]).read_text())
        out.append(
            {
                "task": r["task"],
                "arm": r["arm"],
                "factor": float(r["factor"]),
                "seed": int(r["seed"]),
                "val_accuracy": float(m["accuracy"]["val"]),
            }
        )
    if not out:
        raise ValueError("no lr-grid runs given")
    df = pd.DataFrame(out)
    return (
        df.groupby(["task", "arm", "factor"], sort=True)
        .agg(val_mean=("val_accuracy", "mean"), n=("seed", "nunique"))
        .reset_index()
    )


def lr_choice(table: pd.DataFrame, tol: float = TIE_TOL) -> pd.DataFrame:
    """Per task and arm, the factor of the largest mean validation accuracy; where several are within ``tol`` of
    the largest (a tie), the smallest of them. Columns task, arm, factor, val_mean, n."""
    rows = []
    for (task, arm), df in table.groupby(["task", "arm"], sort=True):
        best = df["val_mean"].max()
        pick = df[df["val_mean"] >= best - tol].sort_values("factor").iloc[0]
        rows.append({"task": task, "arm": arm, "factor": float(pick["factor"]), "val_mean": pick["val_mean"]})
        rows[-1]["n"] = int(pick["n"])
    return pd.DataFrame(rows)


def write_lr_grid(rows: Iterable[dict[str, Any]], table_csv, choice_csv) -> pd.DataFrame:
    """lr_grid.csv (task, arm, factor, val_mean, n) and lr_choice.csv (the chosen factor per task and arm)."""
    table = lr_grid_table(rows)
    choice = lr_choice(table)
    _write(table_csv, table.to_csv(index=False))
    _write(choice_csv, choice.to_csv(index=False))
    return choice


__all__ = [
    "ARMS",
    "chain_point",
    "ladder_differences",
    "ladder_points",
    "ladder_summary",
    "ladder_trend",
    "lr_choice",
    "lr_grid_table",
    "write_ladder",
    "write_lr_grid",
]
