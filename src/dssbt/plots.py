"""Figures of a finished grid (seaborn; each written as PNG and PDF, atomically)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from scipy.stats import pearsonr  # noqa: E402

from .aggregate import INIT_ORDER, LABELS  # noqa: E402
from .io import atomic_path  # noqa: E402


def _save(fig: plt.Figure, paths: Iterable[str | os.PathLike], dpi: int) -> None:
    for path in paths:
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def _style(settings: dict[str, Any]) -> None:
    sns.set_theme(style=settings.get("style", "whitegrid"), context=settings.get("context", "paper"))


def accuracy_vs_order(runs: pd.DataFrame, paths: Iterable, settings: dict[str, Any]) -> None:
    """Test accuracy vs reduced order per task, one line per init (mean ± sd over seeds, seeds as dots);
    the dashed line is the full-N pretrained model. Tolerance-chosen orders (``tol:<x>``) are stars at their mean
    state size per layer, one per init, labelled with the tolerance."""
    _style(settings)
    by_tol = runs["order_spec"].astype(str).str.startswith("tol:")
    tol_runs = runs[by_tol].copy()
    tol_runs["init"] = tol_runs["init"].map(LABELS)
    reduced = runs[~runs["reference"] & ~by_tol].copy()
    reduced["init"] = reduced["init"].map(LABELS)
    tasks = sorted(runs["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    hue_order = [LABELS[i] for i in INIT_ORDER if LABELS[i] in set(reduced["init"]) | set(tol_runs["init"])]
    for ax, task in zip(axes[0], tasks):
        d = reduced[reduced["task"] == task]
        if len(d):
            sns.lineplot(data=d, x="order", y="test_accuracy", hue="init", hue_order=hue_order, errorbar="sd",
                         marker="o", ax=ax, legend=ax is axes[0][0])
            sns.stripplot(data=d, x="order", y="test_accuracy", hue="init", hue_order=hue_order, native_scale=True,
                          dodge=False, alpha=0.4, size=3, ax=ax, legend=False)
        palette = dict(zip(hue_order, sns.color_palette()))
        t = tol_runs[tol_runs["task"] == task].groupby(["order_spec", "init"], as_index=False)[
            ["order", "test_accuracy"]].mean()
        for spec, init, x, y in t[["order_spec", "init", "order", "test_accuracy"]].itertuples(index=False):
            ax.scatter([x], [y], marker="*", s=90, color=palette.get(init, "0.3"), edgecolor="k", lw=0.4, zorder=5)
            ax.annotate(spec, (x, y), textcoords="offset points", xytext=(4, 3), fontsize="x-small")
        full = runs[(runs["task"] == task) & runs["reference"]]["test_accuracy"]
        if len(full):
            ax.axhline(full.mean(), ls="--", c="0.3", lw=1, label=f"full N={int(runs['N'].max())}")
        ax.set_xscale("log", base=2)
        orders = sorted(d["order"].unique())
        ax.set_xticks(orders, [str(o) for o in orders])
        ax.set_title(task)
        ax.set_xlabel("reduced order r")
        ax.set_ylabel("test accuracy")
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
            if "hsv" not in layer:  # a layer kept unchanged by a tolerance-chosen order
                continue
            hsv = np.asarray(layer["hsv"])
            hsv = hsv.reshape(-1, hsv.shape[-1])  # (n_dir * H, N)
            norm = hsv / np.where(hsv[:, :1] > 0, hsv[:, :1], 1.0)
            per_task.setdefault(task, {}).setdefault(layer["layer"], []).append(norm)
    tasks = sorted(per_task)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, (layer, arrays) in enumerate(sorted(per_task[task].items())):
            a = np.concatenate(arrays)  # (channels, N)
            k = np.arange(1, a.shape[1] + 1)
            floor = 1e-17
            med = np.maximum(np.median(a, 0), floor)
            lo, hi = (np.maximum(np.quantile(a, q, 0), floor) for q in (0.1, 0.9))
            color = sns.color_palette()[i % 10]
            ax.plot(k, med, color=color, label=f"layer {layer}")
            ax.fill_between(k, lo, hi, color=color, alpha=0.2)
        ax.set_yscale("log")
        ax.set_title(task)
        ax.set_xlabel("index k")
        ax.set_ylabel(r"$\sigma_k / \sigma_1$")
    axes[0][0].legend(fontsize="small")
    _save(fig, paths, settings.get("dpi", 150))


def pretrained_vs_bt(runs: pd.DataFrame, paths: Iterable, settings: dict[str, Any]) -> None:
    """Scatter over runs (task × seed × order × method): accuracy of the pretrained full-N model vs the final
    accuracy of the reduction-initialised order-r model, with Pearson's rho."""
    _style(settings)
    pre = runs[runs["reference"]].set_index(["task", "seed"])["test_accuracy"]
    bt = runs[runs["init"].str.endswith("_init")].copy()
    bt["pretrained_accuracy"] = [pre.get((t, s), np.nan) for t, s in zip(bt["task"], bt["seed"])]
    bt = bt.dropna(subset=["pretrained_accuracy"])
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    style = "method" if bt["method"].nunique() > 1 else "order"
    sns.scatterplot(data=bt, x="pretrained_accuracy", y="test_accuracy", hue="task", style=style, ax=ax)
    x, y = bt["pretrained_accuracy"].to_numpy(), bt["test_accuracy"].to_numpy()
    if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        rho, p = pearsonr(x, y)
        text = f"Pearson ρ = {rho:.3f} (p = {p:.2g}, n = {len(x)})"
    else:
        text = f"Pearson ρ undefined (n = {len(x)})"
    ax.text(0.02, 0.98, text, transform=ax.transAxes, va="top", fontsize="small")
    lo = min(x.min(initial=1.0), y.min(initial=1.0))
    ax.plot([lo, 1], [lo, 1], ls=":", c="0.5", lw=1)
    ax.set_xlabel("pretrained (full N) test accuracy")
    ax.set_ylabel("BT-init (retrained) test accuracy")
    ax.legend(fontsize="x-small", loc="lower right")
    _save(fig, paths, settings.get("dpi", 150))
