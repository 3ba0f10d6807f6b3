"""Within-task correlation of pretrained accuracy and BT-init accuracy: does a better pretrained model give a better
reduced-and-retrained one?

Points: per task, seed and pretraining snapshot (the pretraining stopped after epoch e, rule ``snapshot``; the
full pretraining is one more), the snapshot's test accuracy (x) and the test accuracy of the model reduced from it
at one order and retrained (y). Per task: Pearson's r and Spearman's rho of (x, y) with 95 % bootstrap intervals
(``scipy.stats.bootstrap``, paired resampling of the points, percentile method). Points of one seed share their
pretraining run, so they are not independent: the intervals are optimistic, and with few seeds they say little.
No pooled coefficient over tasks: it would mostly measure the differences between tasks (an easy task has both a
high x and a high y), not the within-task relation asked about.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .io import atomic_path

CONFIDENCE = 0.95


def points_table(pairs: Iterable[tuple[str | os.PathLike, str | os.PathLike]]) -> pd.DataFrame:
    """One row per (pretrained metrics, BT-init metrics) pair of files: task, seed, epochs of the pretrained model
    (its ``epochs_run``), order, pretrained_accuracy, bt_init_accuracy (test). Raises ValueError where the two
    files disagree on task or seed."""
    rows = []
    for pre_path, ret_path in pairs:
        pre, ret = (json.loads(Path(p).read_text()) for p in (pre_path, ret_path))
        if (pre["task"], pre["seed"]) != (ret["task"], ret["seed"]):
            raise ValueError(
                f"{ret_path}: task/seed {ret['task']}/{ret['seed']} is not that of {pre_path} "
                f"({pre['task']}/{pre['seed']})"
            )
        rows.append(
            {
                "task": pre["task"],
                "seed": pre["seed"],
                "pretrain_epochs": pre.get("epochs_run"),
                "order": ret["order"],
                "pretrained_accuracy": pre["accuracy"]["test"],
                "bt_init_accuracy": ret["accuracy"]["test"],
                "pretrained_file": str(pre_path),
                "bt_init_file": str(ret_path),
            }
        )
    if not rows:
        raise ValueError("correlation: no (pretrained, BT-init) pairs given")
    return pd.DataFrame(rows).sort_values(["task", "seed", "pretrain_epochs"], ignore_index=True)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    return float(stats.pearsonr(x, y).statistic) if np.ptp(x) > 0 and np.ptp(y) > 0 else np.nan


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(stats.spearmanr(x, y).statistic) if np.ptp(x) > 0 and np.ptp(y) > 0 else np.nan


def correlation(x: np.ndarray, y: np.ndarray, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Pearson's r and Spearman's rho of paired samples x, y (float (n,)) with 95 % percentile-bootstrap intervals
    (``scipy.stats.bootstrap``, paired, ``n_resamples`` resamples drawn from a generator seeded by ``seed``).

    Returns {n, pearson, pearson_low, pearson_high, spearman, spearman_low, spearman_high, degenerate_share};
    NaN where undefined: fewer than 3 points, or x or y constant. A resample in which x or y is constant has no
    coefficient (scipy's interval is then NaN): the interval is then the same percentiles of the resamples that
    have one, and ``degenerate_share`` says how many had none."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    out: dict[str, Any] = {"n": len(x)}
    ok = len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0
    degenerate = np.nan
    for name, fn in (("pearson", _pearson), ("spearman", _spearman)):
        out[name] = fn(x, y) if ok else np.nan
        out[f"{name}_low"] = out[f"{name}_high"] = np.nan
        if not ok:
            continue
        with warnings.catch_warnings():  # degenerate resamples are handled below
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            res = stats.bootstrap(
                (x, y),
                fn,
                paired=True,
                vectorized=False,
                n_resamples=n_resamples,
                confidence_level=CONFIDENCE,
                method="percentile",
                rng=np.random.default_rng(seed),
            )
        dist = res.bootstrap_distribution
        degenerate = float(np.mean(~np.isfinite(dist)))
        low, high = res.confidence_interval
        if degenerate and degenerate < 1:
            tail = 100 * (1 - CONFIDENCE) / 2
            low, high = np.nanpercentile(dist, [tail, 100 - tail])
        out[f"{name}_low"], out[f"{name}_high"] = float(low), float(high)
    out["degenerate_share"] = degenerate
    return out


def correlation_table(points: pd.DataFrame, n_resamples: int = 2000) -> pd.DataFrame:
    """Per task (never pooled over tasks): ``correlation`` of pretrained vs BT-init accuracy over its points."""
    rows = [
        {
            "task": task,
            **correlation(g["pretrained_accuracy"].to_numpy(), g["bt_init_accuracy"].to_numpy(), n_resamples),
        }
        for task, g in points.groupby("task", sort=True)
    ]
    return pd.DataFrame(rows)


def write_correlation(pairs, points_csv, table_csv, plot_paths, settings: dict[str, Any]) -> pd.DataFrame:
    """Points and per-task coefficients as CSV, and one panel per task: the points (colour = seed), the
    least-squares line and the coefficients with their intervals in the legend text."""
    from .plots import correlation_plot

    points = points_table(pairs)
    table = correlation_table(points)
    for path, text in ((points_csv, points.to_csv(index=False)), (table_csv, table.to_csv(index=False))):
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)
    correlation_plot(points, table, plot_paths, settings)
    return table
