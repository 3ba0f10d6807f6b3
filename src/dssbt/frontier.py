"""The compression frontier (issue 30; ``workflow/presets/frontier.yaml``): every reduction method against BT at each
global state budget, and the frontier plot.

``differences``: per task x variant x kept fraction x method other than ``bt`` x kind (``reduced``: without
retraining; ``retrained``: after retraining), the paired difference of test accuracy (%) to BT at the same task,
variant, fraction and seed (``aggregate.paired_difference``: mean, seed-only Student-t interval), the seed x item
percentile bootstrap interval (``aggregate.seed_item_bootstrap`` on the runs' ``predictions.npz``, read by
``aggregate.item_correctness``; NaN where a run has none), the raw p of the paired t test over seeds
(``aggregate.paired_t_pvalue``: ``scipy.stats.ttest_rel``), its Holm adjustment over the family of every row with a
p (``statsmodels.stats.multitest.multipletests(method="holm")``), and ``significant``: Holm p < ``ALPHA`` and the
bootstrap interval excludes 0 (DESIGN.md section 8, as ``aggregate.differences_table``).

``plot``: one panel per task, x = % of all states removed, y = test accuracy (mean ± sd over seeds), one colour per
method, solid after retraining, dashed without; reference lines: the full model (pretrained: the pretraining's
epochs only, fewer than a retrained point's; mean over seeds) and chance (1 / the model's ``d_output``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from .aggregate import (
    ALPHA,
    BOOTSTRAP_B,
    BOOTSTRAP_SEED,
    item_correctness,
    paired_difference,
    paired_t_pvalue,
    seed_item_bootstrap,
)
from .compress import PLAIN, points, variant_label

BASE = "bt"  # every other method is compared with BT
KINDS = {"reduced": "without retraining", "retrained": "after retraining"}
COLUMNS = [
    "task",
    "variant",
    "method",
    "keep",
    "removed_pct",
    "kind",
    "mean",
    "bt_mean",
    "diff",
    "ci_low",
    "ci_high",
    "n_pairs",
    "boot_low",
    "boot_high",
    "n_items",
    "p",
    "p_holm",
    "significant",
]


def frontier_points(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """``compress.points`` of the study's rows plus, per run, its metrics file (``file``), its test accuracy as a
    fraction (``fraction``: what its predictions must reproduce) and its number of classes (``n_classes``: the
    metrics' ``model_config.d_output``; NaN where absent)."""
    rows = list(rows)
    pts = points(rows)
    metrics = [json.loads(Path(r["metrics"]).read_text()) for r in rows]
    return pts.assign(
        file=[str(r["metrics"]) for r in rows],
        fraction=[m["accuracy"]["test"] for m in metrics],
        n_classes=[m.get("model_config", {}).get("d_output", np.nan) for m in metrics],
    )


def _bootstrap(files_a: list[str], acc_a: list[float], files_b: list[str], acc_b: list[float], n_boot, seed):
    """The seed x item interval (accuracy %) of arm a - arm b, paired by position (seed); NaN where any run has no
    predictions file."""
    arms: list[list[np.ndarray]] = [[], []]
    labels = None
    for arm, files, accs in ((0, files_a, acc_a), (1, files_b, acc_b)):
        for f, acc in zip(files, accs):
            try:
                correct, lab = item_correctness(f, acc)
            except FileNotFoundError:
                return {"boot_low": np.nan, "boot_high": np.nan, "n_items": np.nan}
            if labels is None:
                labels = lab
            elif not np.array_equal(lab, labels):
                raise ValueError(f"{f}: scored on other test items than {files_a[0]}: a paired comparison needs one")
            arms[arm].append(correct)
    b = seed_item_bootstrap(np.array(arms[0]), np.array(arms[1]), n_boot, seed)
    return {"boot_low": 100 * b["boot_low"], "boot_high": 100 * b["boot_high"], "n_items": b["n_items"]}


def differences(pts: pd.DataFrame, n_boot: int = BOOTSTRAP_B, boot_seed: int = BOOTSTRAP_SEED) -> pd.DataFrame:
    """The frontier's paired differences to BT (module docstring), one row per task x variant x kept fraction x
    method (not BT) x kind, in the order of ``pts``; accuracies and intervals in %. ``pts``: ``frontier_points``."""
    rows = []
    runs = pts[pts.kind.isin(list(KINDS))]
    for (task, variant, keep, method, kind), g in runs.groupby(
        ["task", "variant", "keep", "method", "kind"], sort=False
    ):
        if method == BASE:
            continue
        base = runs[
            (runs.task == task)
            & (runs.variant == variant)
            & (runs.keep == keep)
            & (runs.method == BASE)
            & (runs.kind == kind)
        ]
        if not len(base):
            continue
        pair = g.merge(base, on="seed", suffixes=("", "_bt")).sort_values("seed")
        x, y = pair["accuracy"].to_numpy(), pair["accuracy_bt"].to_numpy()
        boot = (
            _bootstrap(
                list(pair["file"]),
                list(pair["fraction"]),
                list(pair["file_bt"]),
                list(pair["fraction_bt"]),
                n_boot,
                boot_seed,
            )
            if len(pair)
            else {"boot_low": np.nan, "boot_high": np.nan, "n_items": np.nan}
        )
        rows.append(
            {
                "task": task,
                "variant": variant,
                "method": method,
                "keep": keep,
                "removed_pct": round(100 * (1 - keep)),
                "kind": kind,
                "mean": float(np.mean(x)) if len(x) else np.nan,
                "bt_mean": float(np.mean(y)) if len(y) else np.nan,
                **paired_difference(x, y),
                **boot,
                "p": paired_t_pvalue(x, y),
            }
        )
    tab = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_holm", "significant")])
    tab["p_holm"] = np.nan
    tested = tab["p"].notna().to_numpy()
    if tested.any():
        tab.loc[tested, "p_holm"] = multipletests(tab.loc[tested, "p"].to_numpy(), method="holm")[1]
    excludes_0 = (tab["boot_low"] > 0) | (tab["boot_high"] < 0)  # False where NaN
    tab["significant"] = ((tab["p_holm"] < ALPHA) & excludes_0).astype(bool)
    return tab[COLUMNS]


def _interval(lo: float, hi: float) -> str:
    return "–" if np.isnan(lo) else f"[{lo:+.1f}, {hi:+.1f}]"


def _p(p: float) -> str:
    return "–" if np.isnan(p) else f"{p:.3g}"


def markdown(tab: pd.DataFrame) -> str:
    """The differences as Markdown, one line per row; a significant row's difference in bold."""
    lines = [
        "| task | variant | states removed | method | retraining | method − BT | t interval (seeds) |"
        " bootstrap interval (seeds × items) | n | p | p Holm |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in tab.itertuples():
        diff = "–" if np.isnan(r.diff) else f"{r.diff:+.1f}"
        if r.significant:
            diff = f"**{diff}**"
        lines.append(
            f"| {r.task} | {variant_label(r.variant)} | {r.removed_pct} % | {r.method} | {KINDS[r.kind]} | {diff}"
            f" | {_interval(r.ci_low, r.ci_high)} | {_interval(r.boot_low, r.boot_high)} | {r.n_pairs}"
            f" | {_p(r.p)} | {_p(r.p_holm)} |"
        )
    lines += [
        "",
        "Test accuracy % of each method minus BT's at the same task, variant, global budget and seed (paired), mean "
        "over seeds; t interval: 95 % Student-t over seeds; bootstrap interval: 95 % percentile bootstrap over seeds "
        f"and test items ({BOOTSTRAP_B} replicates); p: paired t test over seeds; p Holm: Holm-adjusted over every "
        f"row with a p. Bold: significant (p Holm < {ALPHA} and the bootstrap interval excludes 0).",
    ]
    return "\n".join(lines) + "\n"


def plot(pts: pd.DataFrame, paths: Iterable, settings: dict[str, Any]):
    """The frontier plot (module docstring) of the plain variant's runs (``frontier_points``), written as every
    path (PNG, PDF); returns the figure (closed), one axes per task."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from .aggregate import METHOD_NAMES
    from .plots import _save, _style, palette

    _style(settings)
    pts = pts[pts.variant == PLAIN] if (pts.variant == PLAIN).any() else pts
    tasks = list(dict.fromkeys(pts["task"]))
    methods = list(dict.fromkeys(pts.loc[pts.kind != "pretrained", "method"]))
    names = {m: METHOD_NAMES.get(m, m) for m in methods}
    colours = palette(names.values())
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        t = pts[pts.task == task]
        for i, m in enumerate(methods):
            for kind, ls in (("retrained", "-"), ("reduced", "--")):
                g = t[(t.method == m) & (t.kind == kind)]
                if not len(g):
                    continue
                s = g.groupby("keep")["accuracy"].agg(["mean", "std"]).sort_index(ascending=False)
                x = 100 * (1 - s.index.to_numpy()) + 0.25 * (i - (len(methods) - 1) / 2)  # dodged a little
                ax.errorbar(
                    x,
                    s["mean"],
                    yerr=s["std"].fillna(0),
                    color=colours[names[m]],
                    ls=ls,
                    marker="o",
                    ms=3,
                    lw=1.2,
                    capsize=2,
                )
        full = t[t.kind == "pretrained"]["accuracy"]
        if len(full):
            ax.axhline(full.mean(), c="0.2", lw=1, ls="-.")
            ax.annotate(
                f"full N, pretraining only {full.mean():.1f}",
                (0.01, full.mean()),
                xycoords=("axes fraction", "data"),
                va="bottom",
                fontsize="x-small",
                color="0.2",
            )
        k = pd.to_numeric(t["n_classes"], errors="coerce").dropna() if "n_classes" in t else pd.Series([])
        if len(k):
            ax.axhline(100 / k.iloc[0], c="0.55", lw=1, ls=":")
            ax.annotate(
                f"chance 1/{int(k.iloc[0])}",
                (0.99, 100 / k.iloc[0]),
                xycoords=("axes fraction", "data"),
                ha="right",
                va="bottom",
                fontsize="x-small",
                color="0.4",
            )
        removed = sorted({round(100 * (1 - v)) for v in t.loc[t.kind != "pretrained", "keep"]})
        ax.set_xticks(removed)
        ax.set_xticklabels([f"{r} %" for r in removed])
        ax.set_title(task)
        ax.set_xlabel("states removed (share of all states, one global budget)")
    axes[0][0].set_ylabel("test accuracy (%)")
    handles = [Line2D([], [], color=colours[names[m]], marker="o", ms=3, label=names[m]) for m in methods]
    handles += [
        Line2D([], [], color="0.3", ls="-", label="after retraining"),
        Line2D([], [], color="0.3", ls="--", label="without retraining"),
        # its budget: the pretraining alone, fewer epochs than a retrained point (pretraining + retraining)
        Line2D([], [], color="0.2", ls="-.", label="full N, pretraining epochs only (mean over seeds)"),
        Line2D([], [], color="0.55", ls=":", label="chance (1 / classes)"),
    ]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", frameon=False)
    n = pts.loc[pts.kind != "pretrained"].groupby(["task", "method", "keep", "kind"])["seed"].nunique()
    seeds = f"{n.min()}" if len(n) and n.min() == n.max() else (f"{n.min()}–{n.max()}" if len(n) else "0")
    fig.suptitle(f"Compression frontier: mean ± sd over seeds (error bars; n = {seeds} seeds)", fontsize="medium")
    fig.tight_layout()
    _save(fig, paths, settings.get("dpi", 150))
    return fig


def write(rows: Iterable[dict[str, Any]], csv_path, md_path, plot_paths, settings: dict[str, Any]) -> pd.DataFrame:
    """Rows of the study (``compress.points``) -> the differences (CSV, Markdown) and the frontier plot."""
    from .io import atomic_path

    pts = frontier_points(rows)
    tab = differences(pts)
    with atomic_path(csv_path) as tmp:
        tab.to_csv(tmp, index=False)
    with atomic_path(md_path) as tmp:
        Path(tmp).write_text(markdown(tab))
    plot(pts, plot_paths, settings)
    return tab
