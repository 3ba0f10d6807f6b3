"""Within-task correlation of pretrained accuracy and BT-init accuracy: does a better pretrained model give a better
reduced-and-retrained one? Two designs.

The correlation design (config correlation_study; ``design_points`` ... ``write_correlation_design``, below): k
independent full-length pretrainings per task whose quality differs at a fixed budget (seeds x one knob), each
reduced at one order and retrained with several retraining seeds; the pretrainings are the resampled clusters.
This is the paper's claim 3.

The budget effect (config correlation; ``points_table`` ... ``write_correlation``): per task, seed and pretraining
snapshot (the pretraining stopped after epoch e, rule ``snapshot``; the full pretraining is one more), the snapshot's
test accuracy (x) and the test accuracy of the model reduced from it at one order and retrained (y). x and y both grow
with the epochs, so this measures the budget, not the quality at a fixed budget. Per task: Pearson's r and Spearman's
rho of (x, y) with 95 % bootstrap intervals (``scipy.stats.bootstrap``, paired resampling of the points, percentile
method). Points of one seed share their pretraining run, so they are not independent: the intervals are optimistic,
and with few seeds they say little.

No pooled coefficient over tasks: it would mostly measure the differences between tasks (an easy task has both a
high x and a high y), not the within-task relation asked about.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable
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


def budget_label(epochs: Iterable) -> str:
    """What the snapshot design measures: "budget effect (snapshots at epochs 1, 2, 3)" (the epochs of its points)."""
    values = sorted({int(e) for e in epochs if e == e})
    return f"budget effect (snapshots at epochs {', '.join(str(e) for e in values)})"


def correlation_table(points: pd.DataFrame, n_resamples: int = 2000) -> pd.DataFrame:
    """Per task (never pooled over tasks): ``correlation`` of pretrained vs BT-init accuracy over its points."""
    rows = [
        {
            "task": task,
            "design": budget_label(g["pretrain_epochs"]),
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


# ----- the correlation design: independent full-length pretrainings (config correlation_study) --------------------
#
# Points: per task, one row per (pretraining, retraining seed). x = the pretrained model's validation accuracy (the
# model selection split: no test information in x), y = the retrained model's test accuracy. A pretraining is a
# cluster: its retraining seeds share x and its weights. Coefficients are those of x and the mean y of each
# pretraining; their intervals resample pretrainings with replacement (every retraining seed of a drawn pretraining
# kept). The MixedLM (y ~ x, random intercept per pretraining) uses every point.


def design_points(pairs: Iterable[tuple[str | os.PathLike, str | os.PathLike]]) -> pd.DataFrame:
    """One row per (pretraining metrics, retraining metrics) pair of the correlation design, the run fields read from
    the folders (``dssbt.grid`` kinds corr_pretrain and corr_retrain): task, seed, knob (folder value, e.g. lr0.5),
    knob_value (float), pretraining ("seed{seed}/{knob}"), rseed, order, pretrain_epochs, pretrained_val (x),
    pretrained_test, retrained_test (y), and the files. Raises ValueError where a path is no run of those kinds, the
    pair's pretraining is not the retraining's, or one (pretraining, rseed) appears twice."""
    from . import grid

    rows = []
    for pre_path, ret_path in pairs:
        kinds = []
        for path, want in ((pre_path, "corr_pretrain"), (ret_path, "corr_retrain")):
            run = str(path).replace(os.sep, "/")
            run = run[run.index(grid.RESULTS) + len(grid.RESULTS) :] if grid.RESULTS in run else run
            kind, fields = grid.parse(run.rsplit("/", 1)[0])
            if kind.name != want:
                raise ValueError(f"correlation design: {path} is a {kind.name} run, not {want}")
            kinds.append(fields)
        pf, rf = kinds
        if any(pf[k] != rf[k] for k in ("task", "seed", "knob")):
            raise ValueError(f"correlation design: {ret_path} was not retrained from {pre_path}")
        pre, ret = (json.loads(Path(p).read_text()) for p in (pre_path, ret_path))
        prefix = next(p for p in sorted(grid.KNOBS.values(), key=len, reverse=True) if rf["knob"].startswith(p))
        rows.append(
            {
                "task": rf["task"],
                "seed": int(rf["seed"]),
                "knob": rf["knob"],
                "knob_value": float(rf["knob"][len(prefix) :]),
                "pretraining": f"seed{rf['seed']}/{rf['knob']}",
                "rseed": int(rf["rseed"]),
                "order": ret["order"],
                "pretrain_epochs": pre.get("epochs_run"),
                "pretrained_val": pre["accuracy"]["val"],
                "pretrained_test": pre["accuracy"]["test"],
                "retrained_test": ret["accuracy"]["test"],
                "pretrained_file": str(pre_path),
                "retrained_file": str(ret_path),
            }
        )
    if not rows:
        raise ValueError("correlation design: no (pretrained, retrained) pairs given")
    points = pd.DataFrame(rows).sort_values(["task", "seed", "knob_value", "rseed"], ignore_index=True)
    twice = points.duplicated(["task", "pretraining", "rseed"])
    if twice.any():
        raise ValueError(f"correlation design: point given twice: {points.loc[twice, 'retrained_file'].tolist()}")
    return points


def cluster_means(points: pd.DataFrame) -> pd.DataFrame:
    """Per pretraining of one task: x (pretrained_val), y (the mean retrained_test over its retraining seeds), n."""
    g = points.groupby("pretraining", sort=True)
    if (g["pretrained_val"].nunique() > 1).any():
        raise ValueError("correlation design: one pretraining with two validation accuracies")
    return pd.DataFrame({"x": g["pretrained_val"].first(), "y": g["retrained_test"].mean(), "n": g.size()})


def cluster_bootstrap(
    x: np.ndarray,
    y: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile interval (95 %) of ``statistic`` over pretrainings resampled with replacement.

    x, y: float (k,), one entry per pretraining (y: the mean over its retraining seeds, so every retraining seed of a
    drawn pretraining is kept). Resample b draws k indices from ``np.random.default_rng(seed).integers(0, k, (B, k))``
    (row b); a resample whose x or y is constant has no coefficient (NaN) and is left out of the percentiles.
    Returns (low, high, share of resamples without a coefficient)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    k = len(x)
    idx = np.random.default_rng(seed).integers(0, k, size=(n_resamples, k))  # (B, k)
    dist = np.array([statistic(x[i], y[i]) for i in idx])  # (B,)
    finite = np.isfinite(dist)
    if not finite.any():
        return np.nan, np.nan, 1.0
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(dist[finite], [tail, 100 - tail])
    return float(low), float(high), float(1 - finite.mean())


def mixed_slope(points: pd.DataFrame) -> dict[str, Any]:
    """Linear mixed model y ~ x with a random intercept per pretraining (``statsmodels`` MixedLM, REML) over every
    point of one task: y = retrained_test, x = pretrained_val. Returns slope, slope_low, slope_high (95 % Wald
    interval, ``conf_int``), slope_p, intercept, the fixed effects' covariance (``cov``: 2 x 2, [intercept, x]) and
    ``mixedlm_warning`` (the fit's warnings, e.g. a variance at its boundary; "" if none)."""
    import statsmodels.formula.api as smf

    frame = pd.DataFrame({"y": points["retrained_test"].to_numpy(float), "x": points["pretrained_val"].to_numpy(float)})
    frame["pretraining"] = points["pretraining"].to_numpy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = smf.mixedlm("y ~ x", frame, groups=frame["pretraining"]).fit(reml=True)
    ci = fit.conf_int(alpha=1 - CONFIDENCE)
    return {
        "slope": float(fit.fe_params["x"]),
        "slope_low": float(ci.loc["x", 0]),
        "slope_high": float(ci.loc["x", 1]),
        "slope_p": float(fit.pvalues["x"]),
        "intercept": float(fit.fe_params["Intercept"]),
        "cov": fit.cov_params().loc[["Intercept", "x"], ["Intercept", "x"]].to_numpy(),
        "mixedlm_warning": "; ".join(sorted({str(w.message).splitlines()[0] for w in caught})),
    }


def design_table(points: pd.DataFrame, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per task (never pooled): k pretrainings, points, the range of x, Spearman's rho and Pearson's r of the
    pretrainings' (x, mean y) with cluster-bootstrap intervals, and the MixedLM slope with its interval."""
    rows = []
    for task, d in points.groupby("task", sort=True):
        c = cluster_means(d)
        x, y = c["x"].to_numpy(), c["y"].to_numpy()
        row: dict[str, Any] = {
            "task": task,
            "design": "independent full-length pretrainings (seeds x knob)",
            "pretrainings": len(c),
            "points": len(d),
            "rseeds_per_pretraining": int(c["n"].min()) if c["n"].nunique() == 1 else f"{c['n'].min()}-{c['n'].max()}",
            "pretrain_epochs": ",".join(str(e) for e in sorted(d["pretrain_epochs"].dropna().unique())),
            "x_min": float(x.min()),
            "x_max": float(x.max()),
        }
        ok = len(c) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0
        for name, fn in (("spearman", _spearman), ("pearson", _pearson)):
            row[name] = fn(x, y) if ok else np.nan
            low, high, share = cluster_bootstrap(x, y, fn, n_resamples, seed) if ok else (np.nan, np.nan, np.nan)
            row[f"{name}_low"], row[f"{name}_high"], row[f"{name}_degenerate_share"] = low, high, share
        try:
            fit = mixed_slope(d) if ok else {}
        except (np.linalg.LinAlgError, ValueError) as e:  # e.g. a singular fit: the coefficients still stand
            fit = {"mixedlm_warning": f"MixedLM failed: {e}"}
        for key in ("slope", "slope_low", "slope_high", "slope_p", "intercept", "mixedlm_warning"):
            row[key] = fit.get(key, np.nan)
        row["n_resamples"] = n_resamples
        rows.append(row)
    return pd.DataFrame(rows)


def write_correlation_design(
    pairs, points_csv, table_csv, plot_paths, settings: dict[str, Any], n_resamples: int = 2000, knob: str | None = None
) -> pd.DataFrame:
    """Points and per-task coefficients of the correlation design as CSV, and its plot (``plots.correlation_design_
    plot``: one panel per task, points coloured by knob value, the retraining seeds of one pretraining joined, the
    MixedLM line with its 95 % band)."""
    from .plots import correlation_design_plot

    points = design_points(pairs)
    table = design_table(points, n_resamples)
    for path, text in ((points_csv, points.to_csv(index=False)), (table_csv, table.to_csv(index=False))):
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)
    fitted = set(table.dropna(subset=["slope"])["task"])  # a task whose MixedLM failed gets no line
    fits = {task: mixed_slope(d) for task, d in points.groupby("task") if task in fitted}
    correlation_design_plot(points, table, fits, plot_paths, settings, knob=knob)
    return table
