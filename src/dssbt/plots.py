"""Figures of a finished grid (seaborn; each written as PNG and PDF, atomically)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from scipy.stats import linregress, pearsonr  # noqa: E402

from .aggregate import BASELINE_LABELS, CONTINUED_LABELS, LABELS, METHOD_NAMES, reduction_method  # noqa: E402
from .correlation import budget_label  # noqa: E402
from .io import atomic_path  # noqa: E402
from .reduction.registry import REDUCTIONS  # noqa: E402


def _save(fig: plt.Figure, paths: Iterable[str | os.PathLike], dpi: int) -> None:
    for path in paths:
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def _style(settings: dict[str, Any]) -> None:
    sns.set_theme(style=settings.get("style", "whitegrid"), context=settings.get("context", "paper"))


# baselines in greys (the equal-budget control darkest), reduction methods and controls in seaborn's colours
BASELINE_COLOURS = {"Skew-HiPPO": "0.6", "Skew-HiPPO, equal budget": "0.1"}


def series_name(init: str) -> str:
    """The legend name of a table init: a baseline's label, else its method's (``bt_init`` -> ``BT``)."""
    if init in BASELINE_LABELS or init in CONTINUED_LABELS:
        return (BASELINE_LABELS | CONTINUED_LABELS)[init]
    m = reduction_method(init)
    return METHOD_NAMES[m] if m else init


def palette(names: Iterable[str]) -> dict[str, Any]:
    """One colour per series name, fixed by the order of BASELINE_LABELS and METHOD_NAMES (not by the data)."""
    methods = [n for n in METHOD_NAMES.values()]
    colours = dict(zip(methods, sns.color_palette(n_colors=max(10, len(methods)))))
    return {n: BASELINE_COLOURS.get(n, colours.get(n, "0.3")) for n in names}


def n_classes(runs: pd.DataFrame, task: str) -> int | None:
    """The number of classes of ``task`` from the runs table (``n_classes``: the model's d_output in the metrics);
    None where the table has no such column or no value (files written before the metrics held the model config)."""
    if "n_classes" not in runs:
        return None
    k = pd.to_numeric(runs.loc[runs["task"] == task, "n_classes"], errors="coerce").dropna()
    return int(k.iloc[0]) if len(k) else None


def _epochs(runs: pd.DataFrame) -> str:
    """The total epochs of a set of runs (``12`` or ``12-14`` where seeds differ)."""
    e = runs["total_epochs"].dropna()
    if not len(e):
        return "?"
    lo, hi = e.min(), e.max()
    return f"{lo:g}" if lo == hi else f"{lo:g}–{hi:g}"


def reference_lines(ax: plt.Axes, runs: pd.DataFrame, task: str) -> None:
    """The horizontal reference lines of one task's panel, each labelled with its budget: the pretrained full-N
    model (after the pretraining epochs only), the full-N model continued for the retraining epochs (where run),
    and chance (1 / the number of classes, where known)."""
    ref = runs[(runs["task"] == task) & runs["reference"]]
    N = int(runs.loc[runs["task"] == task, "N"].max())
    full = ref[ref["init"] == "skew_hippo"]
    if len(full):
        label = f"full N={N}, pretraining only ({_epochs(full)} epochs; mean)"
        ax.axhline(full["test_accuracy"].mean(), ls="--", c="0.3", lw=1, label=label)
    cont = ref[ref["init"] == "full_continued"]
    if len(cont):
        label = f"full N={N}, continued ({_epochs(cont)} epochs in all; mean)"
        ax.axhline(cont["test_accuracy"].mean(), ls="-.", c="0.3", lw=1, label=label)
    k = n_classes(runs, task)
    if k:
        ax.axhline(1 / k, ls=":", c="0.55", lw=1, label="chance (1 / classes)")
        ax.annotate(
            f"chance 1/{k}",
            (0.99, 1 / k),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize="xx-small",
            color="0.4",
        )


def accuracy_vs_order(runs: pd.DataFrame, paths: Iterable, settings: dict[str, Any]) -> None:
    """Test accuracy vs reduced order, one column per task and two rows: after retraining (each method's
    reduction-initialised model) and without retraining (the reduced model as is). One colour per method, the same
    in both rows; the Skew-HiPPO baselines (trained at order r; the equal-budget control for the pretraining +
    retraining epochs) are in both rows for reference; every series names its training budget (epochs in all,
    pretraining included) in the legend. Bars: mean ± sd over seeds (each method dodged a little beside its
    order), seeds as dots. Reference lines, each with its budget: dashed, the full-N model after the pretraining
    epochs only; dash-dotted, the full-N model continued (full_continued); dotted, chance (1 / classes, from the
    runs table's n_classes). Tolerance-chosen orders (``tol:<x>``) are stars at their mean state size per layer.

    A task with fewer than 2 integer orders gets a dot plot per init instead (x: the init; its title names the one
    order): a line over a single order draws a trend that was not measured."""
    _style(settings)
    runs = runs.copy()
    runs["method_name"] = [series_name(i) for i in runs["init"]]
    by_tol = ~runs["order_spec"].astype(str).str.isdigit()  # orders chosen per layer (tol:…)
    names = [n for n in [*BASELINE_LABELS.values(), *METHOD_NAMES.values()] if n in set(runs["method_name"])]
    colours = palette(names)
    rows = [("after retraining", lambda i: i in BASELINE_LABELS or i.endswith("_init"))]
    if runs["init"].str.endswith("_no_retrain").any():
        rows.append(("without retraining", lambda i: i in BASELINE_LABELS or i.endswith("_no_retrain")))
    trained = runs["init"].map(rows[0][1]) & ~runs["reference"]  # a method's budget: its retrained model's
    budget = {  # legend name -> "name (E epochs)"
        name: f"{name} ({_epochs(runs[trained & (runs['method_name'] == name)])} epochs)" for name in names
    }
    tasks = sorted(runs["task"].unique())
    fig, axes = plt.subplots(len(rows), len(tasks), figsize=(4.2 * len(tasks), 3.6 * len(rows)), squeeze=False)
    for row, (title, wanted) in enumerate(rows):
        keep = runs["init"].map(wanted) & ~runs["reference"]
        for col, task in enumerate(tasks):
            ax = axes[row][col]
            d = runs[keep & ~by_tol & (runs["task"] == task)]
            hue_order = [n for n in names if n in set(d["method_name"])]
            orders = sorted(d["order"].unique())
            dots = len(orders) < 2  # one order: a dot plot per init
            seeds = sorted(d["seed"].unique())
            for j, name in enumerate(hue_order):
                g = d[d["method_name"] == name]
                m = g.groupby("order")["test_accuracy"].agg(["mean", "std"]).reset_index()
                if dots:  # x = the init's place; seeds spread a little around it
                    x_mean = np.full(len(m), float(j))
                    x_seed = j + 0.25 * (g["seed"].map({s: k for k, s in enumerate(seeds)}) / max(1, len(seeds)) - 0.5)
                else:  # each method a little beside the order on the log axis (dodged), seeds beside its mean
                    dodge = 2 ** (0.09 * (j - (len(hue_order) - 1) / 2))
                    spread = {s: 2 ** (0.02 * (k - (len(seeds) - 1) / 2)) for k, s in enumerate(seeds)}
                    x_mean, x_seed = m["order"] * dodge, g["order"] * dodge * g["seed"].map(spread)
                ax.errorbar(
                    x_mean,
                    m["mean"],
                    yerr=m["std"].fillna(0),
                    marker="o",
                    ms=4,
                    lw=1.2,
                    capsize=2,
                    color=colours[name],
                    label=budget[name],
                    zorder=4,
                )
                ax.scatter(x_seed, g["test_accuracy"], s=9, alpha=0.45, color=colours[name], lw=0, zorder=3)
            if not dots:
                t = (
                    runs[keep & by_tol & (runs["task"] == task)]
                    .groupby(["order_spec", "method_name"], as_index=False)[["order", "test_accuracy"]]
                    .mean()
                )
                for spec, name, x, y in t[["order_spec", "method_name", "order", "test_accuracy"]].itertuples(
                    index=False
                ):
                    ax.scatter(
                        [x], [y], marker="*", s=90, color=colours.get(name, "0.3"), edgecolor="k", lw=0.4, zorder=5
                    )
                for spec, g in t.groupby("order_spec"):  # one label per tolerance, above its highest star
                    top = g["test_accuracy"].idxmax()
                    ax.annotate(
                        spec,
                        (g.loc[top, "order"], g.loc[top, "test_accuracy"]),
                        textcoords="offset points",
                        xytext=(0, 6),
                        ha="center",
                        fontsize="x-small",
                    )
            reference_lines(ax, runs, task)
            if dots:
                ax.set_xticks(range(len(hue_order)), hue_order, rotation=25, ha="right", fontsize="x-small")
                ax.set_xlim(-0.6, len(hue_order) - 0.4)
                one = f"r = {orders[0]:g}" if orders else "no order"
                ax.set_title(f"{task}: {title}\n(one order, {one}: dots per init)", fontsize="small")
                ax.set_xlabel("")
            else:
                ax.set_xscale("log", base=2)
                ax.set_xticks(orders, [f"{o:g}" for o in orders])
                ax.minorticks_off()
                ax.set_title(f"{task}: {title}")
                ax.set_xlabel("reduced order r")
            ax.set_ylabel("test accuracy\n(mean ± sd over seeds; dots: seeds)")
    # one legend for the figure (every panel's entries, once each), below the panels: inside a panel it covers
    # seed dots, right of them it ran into the last column's titles
    entries: dict[str, Any] = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, h)
    ncol = min(len(entries), 2) if len(tasks) == 1 else min(len(entries), 2 * len(tasks))
    legend_rows = -(-len(entries) // max(1, ncol))
    fig.legend(
        list(entries.values()), list(entries), loc="lower center", ncol=max(1, ncol), fontsize="small", frameon=False
    )
    fig.tight_layout(rect=(0, min(0.5, 0.09 * legend_rows / len(rows)), 1, 1))
    _save(fig, paths, settings.get("dpi", 150))


def normalised_hsv(layer: dict[str, Any]) -> np.ndarray | None:
    """sigma_k / sigma_1 of every channel of one layer of a reduce report, (n_dir * H, N); None for a layer kept
    unchanged (a per-layer order that kept it whole has no HSVs in the report) and for a method that computes no
    HSVs (modal, top_energy, last, ...: its report holds NaN, reduction/methods.py)."""
    if "hsv" not in layer:
        return None
    hsv = np.asarray(layer["hsv"], dtype=float)
    if not np.isfinite(hsv).all():
        return None
    hsv = hsv.reshape(-1, hsv.shape[-1])  # (n_dir * H, N)
    return hsv / np.where(hsv[:, :1] > 0, hsv[:, :1], 1.0)


def hsv_panels(curves: dict[str, dict[str, list[np.ndarray]]], paths: Iterable, settings: dict[str, Any]) -> None:
    """One log-scale panel per task (sorted), one line per series (in insertion order): the median over channels of
    sigma_k / sigma_1 with the 10-90 % band. ``curves[task][series]``: arrays (channels, N)."""
    tasks = sorted(curves)
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(4.2 * max(1, len(tasks)), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, (series, arrays) in enumerate(curves[task].items()):
            a = np.concatenate(arrays)  # (channels, N)
            k = np.arange(1, a.shape[1] + 1)
            floor = 1e-17
            med = np.maximum(np.median(a, 0), floor)
            lo, hi = (np.maximum(np.quantile(a, q, 0), floor) for q in (0.1, 0.9))
            color = sns.color_palette()[i % 10]
            ax.plot(k, med, color=color, label=series)
            ax.fill_between(k, lo, hi, color=color, alpha=0.2)
        ax.set_yscale("log")
        ax.set_title(task)
        ax.set_xlabel("index k")
        ax.set_ylabel(r"$\sigma_k / \sigma_1$")
    axes[0][0].legend(fontsize="small")
    _save(fig, paths, settings.get("dpi", 150))


def hsv_decay(report_files: Iterable[str | os.PathLike], paths: Iterable, settings: dict[str, Any]) -> None:
    """Normalised Hankel singular values sigma_k / sigma_1 of the pretrained models, per task and layer:
    median over channels (and seeds) with the 10-90 % band."""
    _style(settings)
    per_task: dict[str, dict[int, list[np.ndarray]]] = {}
    for path in report_files:
        rep = json.loads(Path(path).read_text())
        task = rep.get("task") or Path(path).parts[-4]
        for layer in rep["layers"]:
            norm = normalised_hsv(layer)
            if norm is not None:
                per_task.setdefault(task, {}).setdefault(layer["layer"], []).append(norm)
    hsv_panels(
        {
            task: {f"layer {layer}": arrays for layer, arrays in sorted(layers.items())}
            for task, layers in per_task.items()
        },
        paths,
        settings,
    )


def pretrained_vs_bt(runs: pd.DataFrame, paths: Iterable, settings: dict[str, Any]) -> None:
    """Scatter over runs (task × seed × order × method): accuracy of the pretrained full-N model vs the final
    accuracy of the reduction-initialised order-r model, with Pearson's rho pooled over every task and labelled so:
    an easy task has both accuracies high, so the pooled rho mostly measures differences between tasks, not whether
    a better pretrained model gives a better reduced one (that is the within-task study, ``correlation_plot``)."""
    _style(settings)
    pre = runs[runs["reference"] & (runs["init"] == "skew_hippo")].set_index(["task", "seed"])["test_accuracy"]
    bt = runs[runs["init"].str.endswith("_init") & runs["method"].isin(REDUCTIONS)].copy()  # no controls
    bt["pretrained_accuracy"] = [pre.get((t, s), np.nan) for t, s in zip(bt["task"], bt["seed"])]
    bt = bt.dropna(subset=["pretrained_accuracy"])
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    style = "method" if bt["method"].nunique() > 1 else "order"
    sns.scatterplot(data=bt, x="pretrained_accuracy", y="test_accuracy", hue="task", style=style, ax=ax)
    x, y = bt["pretrained_accuracy"].to_numpy(), bt["test_accuracy"].to_numpy()
    if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        rho, p = pearsonr(x, y)
        text = (
            f"Pearson ρ pooled over tasks = {rho:.3f} (p = {p:.2g}, n = {len(x)}):\nmostly between-task "
            f"differences; within-task: correlation study"
        )
    else:
        text = f"Pearson ρ undefined (n = {len(x)})"
    ax.text(0.02, 0.98, text, transform=ax.transAxes, va="top", fontsize="small")
    lo = min(x.min(initial=1.0), y.min(initial=1.0))
    ax.plot([lo, 1], [lo, 1], ls=":", c="0.5", lw=1)
    ax.set_xlabel("pretrained (full N) test accuracy")
    ax.set_ylabel(
        "BT-init (retrained) test accuracy" if style == "order" else "reduction-initialised (retrained) test accuracy"
    )
    ax.legend(fontsize="x-small", loc="lower right")
    _save(fig, paths, settings.get("dpi", 150))


def learning_curve_data(runs: pd.DataFrame) -> pd.DataFrame:
    """Per task, order, init and cumulative epoch: the mean over seeds of the validation accuracy in the runs'
    history.csv files (beside each metrics file of ``runs``, the runs table). Only trained runs (baselines,
    ``*_init``, the pretraining) at integer orders. ``epochs`` = the run's epoch + the epochs it started from
    (``total_epochs - epochs_run``: the pretraining's for a run from the pretrained model, else 0). Columns: task,
    order, reference, init, name (legend), epochs, val_accuracy (mean), val_min and val_max (the band over seeds),
    n_seeds."""
    trained = runs[
        runs["init"].map(lambda i: i in BASELINE_LABELS or i in CONTINUED_LABELS or i.endswith("_init"))
        & runs["order_spec"].astype(str).str.isdigit()
    ]
    curves = []
    for row in trained.itertuples(index=False):
        h = pd.read_csv(Path(row.file).parent / "history.csv")
        offset = row.total_epochs - row.epochs_run
        curves.append(
            pd.DataFrame(
                {
                    "task": row.task,
                    "seed": row.seed,
                    "order": row.order,
                    "reference": row.reference,
                    "init": row.init,
                    "name": series_name(row.init),
                    "epochs": h["epoch"] + offset,
                    "val_accuracy": h["val_accuracy"],
                }
            )
        )
    if not curves:
        raise ValueError("learning curves: no trained runs with a fixed order in the runs table")
    c = pd.concat(curves, ignore_index=True)
    return c.groupby(["task", "order", "reference", "init", "name", "epochs"], as_index=False).agg(
        val_accuracy=("val_accuracy", "mean"),
        val_min=("val_accuracy", "min"),
        val_max=("val_accuracy", "max"),
        n_seeds=("seed", "nunique"),
    )


def learning_curves(runs: pd.DataFrame, paths: Iterable, settings: dict[str, Any]) -> None:
    """Validation accuracy per epoch against cumulative training epochs, one column per task and one row per
    (integer) order: every init that was trained (the baselines and each ``*_init``), mean over seeds. A run that
    starts from the pretrained model starts at the pretraining's epoch count (its epoch 0 is the reduced model);
    the pretraining itself (full N) is the dotted grey curve from 0, the full_continued control (full N trained
    further) dash-dotted after it. Lines: the mean over seeds; bands: the minimum to maximum over seeds (named on
    the y axis). Validation, not test, accuracy: history.csv
    has the test accuracy only at epoch 0. Each run's ``history.csv`` lies beside its metrics file."""
    _style(settings)
    c = learning_curve_data(runs)
    tasks = sorted(c["task"].unique())
    orders = sorted(c.loc[~c["reference"], "order"].unique())
    names = [n for n in [*BASELINE_LABELS.values(), *METHOD_NAMES.values()] if n in set(c["name"])]
    colours = palette(names)
    fig, axes = plt.subplots(
        max(1, len(orders)), len(tasks), figsize=(4.2 * len(tasks), 3.0 * max(1, len(orders))), squeeze=False
    )
    for col, task in enumerate(tasks):
        pre = c[(c["task"] == task) & c["reference"] & (c["init"] == "skew_hippo")]
        cont = c[(c["task"] == task) & c["reference"] & (c["init"] == "full_continued")]
        for row, order in enumerate(orders or [None]):
            ax = axes[row][col]
            for g, ls, label in ((pre, ":", "pretraining (full N)"), (cont, "-.", "full N, continued")):
                if len(g):
                    ax.plot(g["epochs"], g["val_accuracy"], ls=ls, c="0.5", lw=1.2, label=label)
                    ax.fill_between(g["epochs"], g["val_min"], g["val_max"], color="0.5", alpha=0.15, lw=0)
            d = c[(c["task"] == task) & ~c["reference"] & (c["order"] == order)]
            for name in names:
                g = d[d["name"] == name]
                if len(g):
                    ax.plot(g["epochs"], g["val_accuracy"], marker=".", color=colours[name], label=name)
                    ax.fill_between(g["epochs"], g["val_min"], g["val_max"], color=colours[name], alpha=0.18, lw=0)
            ax.set_title(f"{task}, r = {order:g}" if order is not None else task)
            ax.set_xlabel("cumulative training epochs")
            ax.set_ylabel("val accuracy\n(line: mean over seeds; band: min–max)")
    entries: dict[str, Any] = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, h)
    axes[0][0].legend(list(entries.values()), list(entries), fontsize="x-small")
    fig.tight_layout()
    _save(fig, paths, settings.get("dpi", 150))


def _coefficient(value: float, low: float, high: float) -> str:
    if np.isnan(value):
        return "undefined"
    interval = "no CI" if np.isnan(low) else f"95 % CI [{low:.2f}, {high:.2f}]"
    return f"{value:.2f} ({interval})"


def correlation_plot(points: pd.DataFrame, table: pd.DataFrame, paths: Iterable, settings: dict[str, Any]) -> None:
    """One panel per task (never pooled): test accuracy of the reduced-and-retrained model vs that of the
    pretrained model it came from (pretraining snapshots and the full pretraining, every seed; colour = seed,
    marker = pretraining epochs), the least-squares line (``scipy.stats.linregress``), and Pearson's r and
    Spearman's rho with their bootstrap intervals from ``table`` (``correlation.correlation_table``)."""
    _style(settings)
    tasks = sorted(points["task"].unique())
    coeffs = table.set_index("task")
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.4 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        d = points[points["task"] == task]
        sns.scatterplot(
            data=d,
            x="pretrained_accuracy",
            y="bt_init_accuracy",
            hue="seed",
            style="pretrain_epochs",
            palette="deep",
            ax=ax,
        )
        x, y = d["pretrained_accuracy"].to_numpy(), d["bt_init_accuracy"].to_numpy()
        if len(x) >= 2 and np.ptp(x) > 0:
            fit = linregress(x, y)
            xs = np.linspace(x.min(), x.max(), 2)
            ax.plot(xs, fit.intercept + fit.slope * xs, c="0.3", lw=1, label="least squares")
        c = coeffs.loc[task]
        ax.text(
            0.02,
            0.98,
            f"Pearson r = {_coefficient(c['pearson'], c['pearson_low'], c['pearson_high'])}\n"
            f"Spearman ρ = {_coefficient(c['spearman'], c['spearman_low'], c['spearman_high'])}\n"
            f"n = {int(c['n'])} points of this task",
            transform=ax.transAxes,
            va="top",
            fontsize="x-small",
        )
        ax.set_title(f"{task}: {budget_label(d['pretrain_epochs'])}", fontsize="small")
        ax.set_xlabel("pretrained (full N) test accuracy")
        ax.set_ylabel("reduced + retrained test accuracy")
        ax.legend(fontsize="xx-small", loc="lower right")
    fig.tight_layout()
    _save(fig, paths, settings.get("dpi", 150))


def arm_name(init: str, spec: Any, n: int | None = None) -> str:
    """A short name of one arm of a difference: ``BT-init r=4``, ``Skew-HiPPO, equal budget r=8``, ``full N=32,
    continued``, ``pretrained (full N=32)`` (``n``: the full order N)."""
    spec = str(spec)
    if n is not None and spec == str(n):
        return f"pretrained (full N={n})" if init == "skew_hippo" else f"full N={n}, continued"
    label = LABELS.get(init, init).replace(" (retrained)", "")
    return f"{label} r={spec}"


def forest_rows(differences: pd.DataFrame) -> pd.DataFrame:
    """The rows of the forest plot, top to bottom: the rows of the Holm family (``in_family``; a table without that
    column: every row with a p), by task (sorted), the primary contrast first in its task, the rest in the table's
    order; order specs as strings (``versus_order_spec`` = ``order_spec`` in a table without it)."""
    d = differences.copy()
    d["order_spec"] = d["order_spec"].astype(str)
    d["versus_order_spec"] = d["versus_order_spec"].astype(str) if "versus_order_spec" in d else d["order_spec"]
    d = d[d["in_family"].astype(bool) if "in_family" in d else d["p"].notna()]
    d = d.assign(_first=~d["primary"].astype(bool)).sort_values(["task", "_first"], kind="stable")
    return d.drop(columns="_first").reset_index(drop=True)


def forest(differences: pd.DataFrame, paths: Iterable, settings: dict[str, Any], n: int | None = None) -> None:
    """The main figure: one row per difference of the Holm family (``differences_table``: rows with ``in_family``;
    a table without that column: every row with a p), grouped by task (sorted), the primary contrast first within
    its task. Point: the mean paired difference (percentage points); thick bar: the 95 % seed × item bootstrap
    interval; thin bar: the seed-only Student-t interval; the Holm-adjusted p printed at the right of each row; a
    line at 0. ``n``: the full order N (names the full-N arms; default: the order of a full_continued arm)."""
    _style(settings)
    d = forest_rows(differences)
    full = [*d.loc[d["init"].isin(list(CONTINUED_LABELS)), "order_spec"]]
    full += [*d.loc[d["versus"].isin(list(CONTINUED_LABELS)), "versus_order_spec"]]
    if n is None and full:  # the order of a full-N arm (else no arm is named full N)
        n = int(full[0])
    tasks = sorted(d["task"].unique())
    lines: list[tuple[str, pd.Series | None]] = []
    for task in tasks:
        lines.append((task, None))  # a header row per task
        lines += [("", row) for _, row in d[d["task"] == task].iterrows()]
    fig, ax = plt.subplots(figsize=(7.5, 0.8 + 0.32 * max(1, len(lines))))
    ticks, names = [], []
    for k, (title, row) in enumerate(lines):
        y = len(lines) - 1 - k
        if row is None:
            ax.axhline(y - 0.5, c="0.8", lw=0.6)
            ticks.append(y)
            names.append(f"{title}  ")
            continue
        init, versus = arm_name(row["init"], row["order_spec"], n), arm_name(row["versus"], row["versus_order_spec"], n)
        name = f"{init} − {versus}" + (
            " (primary)" if bool(row.get("primary", False)) else f" [{row['claim']}]" if "claim" in row else ""
        )
        ticks.append(y)
        names.append(name)
        colour = "C3" if bool(row.get("primary", False)) else "C0"
        if not np.isnan(row["boot_low"]):
            ax.plot([100 * row["boot_low"], 100 * row["boot_high"]], [y, y], lw=4.5, c=colour, alpha=0.45)
        if not np.isnan(row["ci_low"]):
            ax.plot([100 * row["ci_low"], 100 * row["ci_high"]], [y, y], lw=1.2, c=colour)
        ax.plot([100 * row["diff"]], [y], "o", ms=5, c=colour, mec="k", mew=0.5)
        p = row["p_holm"] if "p_holm" in row else np.nan
        text = "Holm p n/a" if np.isnan(p) else ("Holm p < 1e-4" if p < 1e-4 else f"Holm p = {p:.2g}")
        text += " *" if bool(row.get("significant", False)) else ""
        ax.text(1.01, y, text, transform=ax.get_yaxis_transform(), va="center", fontsize="x-small")
    ax.axvline(0, c="0.2", lw=0.8, ls="--")
    ax.set_yticks(ticks, names, fontsize="x-small")
    for tick, (title, row) in zip(ax.get_yticklabels(), lines):
        if row is None:
            tick.set_fontweight("bold")
            tick.set_fontsize("small")
    ax.set_ylim(-0.7, len(lines) - 0.3)
    ax.set_xlabel("test accuracy difference (points), 95 % interval")
    if not len(d):
        ax.set_title("no comparison in the Holm family (evidence.family)")
    handles = [
        plt.Line2D([], [], lw=4.5, c="C0", alpha=0.45, label="95 % CI, seeds × test items (bootstrap)"),
        plt.Line2D([], [], lw=1.2, c="C0", label="95 % CI, seeds only (Student t)"),
        plt.Line2D([], [], ls="", marker="o", c="C0", mec="k", mew=0.5, label="mean paired difference"),
    ]
    if d.get("significant", pd.Series(dtype=bool)).astype(bool).any():
        handles.append(plt.Line2D([], [], ls="", label="* significant: Holm p < 0.05 and the thick bar excludes 0"))
    ax.legend(handles=handles, fontsize="x-small", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2)
    fig.tight_layout()
    _save(fig, paths, settings.get("dpi", 150))


def correlation_design_plot(
    points: pd.DataFrame,
    table: pd.DataFrame,
    fits: dict[str, dict[str, Any]],
    paths: Iterable,
    settings: dict[str, Any],
    knob: str | None = None,
) -> None:
    """The correlation design, one panel per task (never pooled): retrained test accuracy (one point per retraining
    seed) vs the pretrained model's validation accuracy, colour = knob value; the retraining seeds of one pretraining
    joined by a vertical line, their mean a white-edged marker; the MixedLM fit (``fits[task]``:
    ``correlation.mixed_slope``) with its 95 % band for the mean, and the coefficients of ``table``
    (``correlation.design_table``) in the text."""
    from scipy.stats import norm

    _style(settings)
    tasks = sorted(points["task"].unique())
    coeffs = table.set_index("task")
    values = sorted(points["knob_value"].unique())
    colours = dict(zip(values, sns.color_palette("viridis", len(values))))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 4.0), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        d = points[points["task"] == task]
        for _, g in d.groupby("pretraining"):
            x, colour = g["pretrained_val"].iloc[0], colours[g["knob_value"].iloc[0]]
            ax.plot([x, x], [g["retrained_test"].min(), g["retrained_test"].max()], c=colour, lw=1, alpha=0.7)
            ax.scatter(np.full(len(g), x), g["retrained_test"], color=colour, s=14, alpha=0.8)
            ax.scatter([x], [g["retrained_test"].mean()], color=colour, s=40, edgecolor="white", zorder=3)
        for v in values:
            ax.scatter([], [], color=colours[v], label=f"{knob or 'knob'} = {v:g}")
        fit = fits.get(task)
        if fit:
            xs = np.linspace(d["pretrained_val"].min(), d["pretrained_val"].max(), 50)  # (50,)
            design = np.stack([np.ones_like(xs), xs], axis=1)  # (50, 2): [1, x]
            mean = fit["intercept"] + fit["slope"] * xs  # (50,)
            se = np.sqrt(np.einsum("ij,jk,ik->i", design, fit["cov"], design))  # (50,)
            z = norm.ppf(0.975)
            ax.plot(xs, mean, c="0.2", lw=1.2, label="MixedLM fit, 95 % band")
            ax.fill_between(xs, mean - z * se, mean + z * se, color="0.5", alpha=0.2, lw=0)
        c = coeffs.loc[task]
        slope = (
            "undefined"
            if np.isnan(c["slope"])
            else f"{c['slope']:.2f} (95 % CI [{c['slope_low']:.2f}, {c['slope_high']:.2f}])"
        )
        ax.text(
            0.02,
            0.98,
            f"Spearman ρ = {_coefficient(c['spearman'], c['spearman_low'], c['spearman_high'])}\n"
            f"Pearson r = {_coefficient(c['pearson'], c['pearson_low'], c['pearson_high'])}\n"
            f"MixedLM slope = {slope}\n"
            f"k = {int(c['pretrainings'])} pretrainings (cluster bootstrap), {int(c['points'])} points",
            transform=ax.transAxes,
            va="top",
            fontsize="x-small",
        )
        order = d["order"].iloc[0]
        ax.set_title(f"{task}: independent pretrainings, fixed budget", fontsize="small")
        ax.set_xlabel("pretrained model (full N): validation accuracy")
        ax.set_ylabel(f"BT-init r = {order}, retrained: test accuracy")
        ax.legend(fontsize="xx-small", loc="lower right")
    fig.tight_layout()
    _save(fig, paths, settings.get("dpi", 150))
