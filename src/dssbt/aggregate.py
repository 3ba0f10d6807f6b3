"""Accuracy tables from the metrics files of every run (long form, then mean ± std over seeds, then the paired
differences between inits with their 95 % confidence intervals).

Inits in the tables: ``skew_hippo_equal`` (a model of order r trained from the Skew-HiPPO init for the pretraining
+ retraining epochs: the equal-budget control), ``skew_hippo`` (the same for the pretraining epochs only),
``{method}_init`` (order r, retrained from the pretrained model reduced by ``method``: bt, bsp, modal, h2, or a
control such as transplant), ``{method}_no_retrain`` (the reduced model as is), and at order N the full-N
reference ``skew_hippo`` (the pretrained model) and ``full_continued`` (that model trained for the retraining
epochs more: a control).

Budget: every run states its own epochs and wall time and its total: a run that starts from the pretrained model
(``*_init``, ``*_no_retrain``, ``full_continued``) adds the epochs and wall time of that pretraining (the ``pretrain/metrics.json`` of
the same task and seed, found by the run folder layout ``<task>/seed<s>/<run>/metrics.json``).

Differences: for each task and order, every init minus a baseline (the equal-budget control first, then plain
Skew-HiPPO) is the mean over seeds of the per-seed difference (paired by seed: the same pretrained model, data
order and initial RNG state), with the two-sided 95 % Student-t interval of that mean
(``scipy.stats.ttest_rel(...).confidence_interval``); with one pair there is no interval.

Orders are grouped by how they were asked for (``order_spec``): an integer r, or ``tol:<x>`` where every layer got
its own order; ``order`` is then the mean state size over layers (and seeds, in the summary).

A run whose training diverged and that finished with its best checkpoint before it (``optim.on_divergence:
keep_best``; metrics ``diverged: true``) is marked: ``diverged`` in the runs table, the count ``n_diverged`` in the
summary, and a ``†`` on its cell in the Markdown and LaTeX tables, explained in a footnote below them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from . import grid
from .io import atomic_path
from .provenance import mixed_provenance
from .reduction.registry import METHODS
from .runs import table_init

METHOD_NAMES = {name: m.label for name, m in METHODS.items()}
# The table keys and labels come from the catalog of run kinds (dssbt.grid), read when a table is made; these
# constants are the catalog as imported (the plots read them).
LABELS = grid.table_labels()  # table key -> label, in table order
BASELINE_LABELS = grid.baselines()  # the order-r models trained from a fresh init (equal budget first)
VERSUS = tuple(grid.versus())  # the baselines every other key is compared with, in the order the tables show them
CONTINUED_LABELS = grid.continued()
INIT_ORDER = list(LABELS)
CONFIDENCE = 0.95


def reduction_method(init: str) -> str | None:
    """The reduction method of a table init (``bt_init`` -> ``bt``, ``random_modes_no_retrain`` ->
    ``random_modes``); None for a baseline (``skew_hippo``, ``skew_hippo_equal``)."""
    return grid.method_of(init)


def starts_from_pretrained(init: str) -> bool:
    """Whether a run of this table init starts from the pretrained model (its pretraining counts in its budget)."""
    return grid.starts_from_pretrained(init)


def pretrained_metrics_path(path: str | os.PathLike) -> Path:
    """The metrics of the pretrained model a reduced or retrained run came from: same task and seed folder."""
    return Path(path).parent.parent / "pretrain" / "metrics.json"


def runs_table(metrics_files: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per run: task, seed, order, N, init, method, accuracies, losses, parameter counts, epochs and wall
    time (the run's own and in total, pretraining included where the run starts from the pretrained model)."""
    rows = []
    pretrained: dict[Path, dict] = {}
    for path in metrics_files:
        m = json.loads(Path(path).read_text())
        init = table_init(m)
        layer_orders = m.get("layer_orders") or [m["order"]]
        spec = str(m.get("order_spec") or m["order"])
        epochs, wall = m.get("epochs_run", 0), m.get("wall_time_s")
        total_epochs, total_wall = epochs, wall
        if starts_from_pretrained(init):  # its pretraining counts in its budget
            pre_path = pretrained_metrics_path(path)
            if pre_path not in pretrained:
                if not pre_path.exists():
                    raise ValueError(
                        f"{path}: a {init} run counts the epochs of its pretrained model, but {pre_path} is missing"
                    )
                pretrained[pre_path] = json.loads(pre_path.read_text())
            pre = pretrained[pre_path]
            total_epochs = epochs + pre.get("epochs_run", 0)
            total_wall = None if wall is None or pre.get("wall_time_s") is None else wall + pre["wall_time_s"]
        rows.append(
            {
                "task": m["task"],
                "seed": m["seed"],
                "order_spec": spec,
                "order": m["order"] if spec.isdigit() else float(np.mean(layer_orders)),
                "layer_orders": " ".join(str(r) for r in layer_orders),
                "N": m["N"],
                "reference": spec == str(m["N"]),
                "init": init,
                "method": reduction_method(init),
                "test_accuracy": m["accuracy"]["test"],
                "val_accuracy": m["accuracy"]["val"],
                "train_accuracy": m["accuracy"].get("train"),
                "test_loss": m["loss"]["test"],
                "params_total": m["params"]["total"],
                "params_ssm": m["params"]["ssm"],
                "epochs_run": epochs,
                "diverged": bool(m.get("diverged", False)),  # files written before the key existed: not diverged
                "wall_time_s": wall,
                "total_epochs": total_epochs,
                "total_wall_time_s": total_wall,
                "file": str(path),
            }
        )
    if not rows:
        raise ValueError("no metrics files given")
    return pd.DataFrame(rows).sort_values(["task", "order", "order_spec", "init", "seed"], ignore_index=True)


def paired_difference(x: np.ndarray, y: np.ndarray, confidence: float = CONFIDENCE) -> dict[str, float]:
    """Mean of the paired differences ``x_i - y_i`` (float (n,) each, pair i = one seed) with its two-sided
    Student-t confidence interval (``scipy.stats.ttest_rel``, n - 1 degrees of freedom).

    Returns {diff, ci_low, ci_high, n_pairs}; with fewer than 2 pairs the interval is NaN (none can be given),
    with none the difference too. Equal differences in every pair give the interval [diff, diff].
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired samples must be two 1-d arrays of one length, got shapes {x.shape}, {y.shape}")
    n = len(x)
    if n == 0:
        return {"diff": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n_pairs": 0}
    diff = float(np.mean(x - y))
    if n < 2:
        return {"diff": diff, "ci_low": np.nan, "ci_high": np.nan, "n_pairs": 1}
    if np.all(x - y == (x - y)[0]):  # no spread: scipy warns (catastrophic cancellation); the limit is a point
        return {"diff": diff, "ci_low": diff, "ci_high": diff, "n_pairs": n}
    ci = stats.ttest_rel(x, y).confidence_interval(confidence)
    return {"diff": diff, "ci_low": float(ci.low), "ci_high": float(ci.high), "n_pairs": n}


def retrained_controls(inits) -> list[str]:
    """The retrained control inits among ``inits`` (``transplant_init``, ``random_modes_init``), in registry order:
    the further baselines of every retrained init (what the reduced SSM adds beyond the copied weights, or beyond
    any r pretrained modes)."""
    return [f"{m}_init" for m, method in METHODS.items() if method.control and f"{m}_init" in set(inits)]


def differences_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Long form: per task × order spec × init × baseline (``versus``), the paired difference of test accuracy over
    the seeds both have (``paired_difference``), and ``significant``: the interval excludes 0. Baselines: every init
    against skew_hippo_equal and skew_hippo (``VERSUS``); every retrained init (``*_init``) also against each
    retrained control (``retrained_controls``). At order N the pretrained model (``skew_hippo``) is the baseline of
    ``full_continued``. No rows for an init against itself."""
    rows = []
    for (task, spec), g in runs.groupby(["task", "order_spec"], sort=False):
        acc = g.pivot_table(index="seed", columns="init", values="test_accuracy", aggfunc="first")
        controls = retrained_controls(acc.columns)
        for versus in [*grid.versus(), *controls]:
            if versus not in acc:
                continue
            for init in acc.columns:
                if init == versus or (versus in controls and not init.endswith("_init")):
                    continue
                both = acc[[init, versus]].dropna()
                d = paired_difference(both[init].to_numpy(), both[versus].to_numpy())
                rows.append(
                    {
                        "task": task,
                        "order_spec": spec,
                        "order": g["order"].mean(),
                        "init": init,
                        "versus": versus,
                        **d,
                        "significant": bool(d["ci_low"] > 0 or d["ci_high"] < 0),
                    }
                )
    cols = ["task", "order_spec", "order", "init", "versus", "diff", "ci_low", "ci_high", "n_pairs", "significant"]
    return pd.DataFrame(rows, columns=cols)


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per task × order × init: mean ± std of test accuracy over seeds and their number, parameter counts, mean
    epochs and wall time (own and total), and for each baseline b of ``VERSUS`` the paired difference to it
    (``diff_vs_<b>``, ``ci_low_vs_<b>``, ``ci_high_vs_<b>``, ``n_pairs_vs_<b>``, ``significant_vs_<b>``; empty
    for b itself and a missing b)."""
    g = runs.groupby(["task", "order_spec", "init"], sort=False)
    s = g.agg(
        order=("order", "mean"),
        N=("N", "first"),
        reference=("reference", "first"),
        acc_mean=("test_accuracy", "mean"),
        acc_std=("test_accuracy", lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else np.nan),
        n_seeds=("seed", "nunique"),
        n_diverged=("diverged", "sum"),
        params_total=("params_total", "mean"),  # differs between seeds only for tolerance-chosen orders
        params_ssm=("params_ssm", "mean"),
        epochs_run=("epochs_run", "mean"),
        total_epochs=("total_epochs", "mean"),
        wall_time_s=("wall_time_s", "mean"),
        total_wall_time_s=("total_wall_time_s", "mean"),
    ).reset_index()
    d = differences_table(runs).set_index(["task", "order_spec", "init", "versus"])
    for versus in grid.versus():
        key = [(t, o, i, versus) for t, o, i in zip(s["task"], s["order_spec"], s["init"])]
        for col in ("diff", "ci_low", "ci_high", "n_pairs", "significant"):
            s[f"{col}_vs_{versus}"] = [d.at[k, col] if k in d.index else np.nan for k in key]
    s["init_rank"] = s["init"].map({k: i for i, k in enumerate(grid.table_labels())})
    s["by_tol"] = ~s["order_spec"].str.isdigit()  # fixed orders first, then per-layer ones (tol:…, layers:…)
    s = s.sort_values(["task", "reference", "by_tol", "order", "init_rank"], ascending=[True, False, True, True, True])
    return s.drop(columns=["init_rank", "by_tol"]).reset_index(drop=True)


def _order_label(spec: str, order: float, reference: bool) -> str:
    if reference:
        return f"{spec} (full N)"
    return spec if spec.isdigit() else f"{spec} (mean r {order:.1f})"


def _count(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


DIVERGED_MARK = "†"
DIVERGED_NOTE = (
    f"{DIVERGED_MARK} training diverged in at least one seed of this cell; that seed reports its best "
    "checkpoint before the divergence (optim.on_divergence: keep_best; runs.csv, column diverged)."
)


def _pm(mean: float, std: float, n: int, n_diverged: int = 0) -> str:
    """``mean ± std (n=k)`` in %; one seed has no std; ``†`` where a seed diverged."""
    spread = "± n/a" if np.isnan(std) else f"± {100 * std:.2f}"
    return f"{100 * mean:.2f} {spread} (n={int(n)})" + (f" {DIVERGED_MARK}" if n_diverged else "")


def _diff_cell(diff: float, low: float, high: float, n: float) -> str:
    """``+d [low, high]`` in percentage points; **bold** where the interval excludes 0; ``n=1: no CI``."""
    if np.isnan(diff):
        return ""
    if np.isnan(low):
        return f"{100 * diff:+.2f} (n={int(n)}, no CI)"
    text = f"{100 * diff:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"
    return f"**{text}**" if low > 0 or high < 0 else text


def _display(summary: pd.DataFrame) -> pd.DataFrame:
    level = int(round(100 * CONFIDENCE))
    labels = grid.table_labels()
    cols = {
        "task": summary["task"],
        "order": [_order_label(*a) for a in zip(summary["order_spec"], summary["order"], summary["reference"])],
        "init": [labels.get(i, i) for i in summary["init"]],
        "test acc. % (mean ± std, n seeds)": [
            _pm(*a) for a in zip(summary["acc_mean"], summary["acc_std"], summary["n_seeds"], summary["n_diverged"])
        ],
        "epochs (total)": [_count(x) for x in summary["total_epochs"]],
        "train time s (total)": ["" if np.isnan(x) else f"{x:.0f}" for x in summary["total_wall_time_s"]],
        "params": [_count(x) for x in summary["params_total"]],
        "SSM params": [_count(x) for x in summary["params_ssm"]],
    }
    for versus in [v for v in grid.versus() if summary[f"diff_vs_{v}"].notna().any()]:  # the baselines the grid ran
        cols[f"vs {labels[versus]} (pp, paired, {level} % CI)"] = [
            _diff_cell(*a)
            for a in zip(*(summary[f"{c}_vs_{versus}"] for c in ("diff", "ci_low", "ci_high", "n_pairs")))
        ]
    return pd.DataFrame(cols)


def _latex(df: pd.DataFrame, note: str | None = None) -> str:
    """A booktabs tabular of ``df`` (written by hand: pandas' to_latex needs jinja2); ``**x**`` becomes bold,
    ``note`` goes below it."""

    def cell(v) -> str:
        t = str(v)
        bold = len(t) > 4 and t.startswith("**") and t.endswith("**")
        t = t[2:-2] if bold else t
        for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
            t = t.replace(a, b)
        t = t.replace("±", r"$\pm$").replace(DIVERGED_MARK, r"\dag{}")
        return rf"\textbf{{{t}}}" if bold else t

    lines = [r"\begin{tabular}{" + "l" * 3 + "r" * (len(df.columns) - 3) + "}", r"\toprule"]
    lines.append(" & ".join(cell(c) for c in df.columns) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(cell(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if note:
        lines += ["", r"\par\footnotesize " + cell(note)]
    return "\n".join(lines) + "\n"


def methods_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary side by side: one row per task × order, one column per init (the baselines, then each method
    without and after retraining), cells "mean ± std (n=k)" test accuracy in %, and the row's parameter count."""
    rows, labels = [], grid.table_labels()
    for (task, spec), g in summary.groupby(["task", "order_spec"], sort=False):
        first = g.iloc[0]
        row = {
            "task": task,
            "order": _order_label(spec, first["order"], first["reference"]),
            "params": _count(g["params_total"].mean()),
        }
        for init, m, sd, n, d in zip(g["init"], g["acc_mean"], g["acc_std"], g["n_seeds"], g["n_diverged"]):
            row[labels.get(init, init)] = _pm(m, sd, n, d)
        rows.append(row)
    table = pd.DataFrame(rows)
    columns = ["task", "order", "params"] + [
        label for label in dict.fromkeys(labels.values()) if label in table.columns
    ]
    return table[columns].fillna("")


def _markdown(df: pd.DataFrame, note: str | None = None) -> str:
    md = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    md += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(md + (["", note] if note else [])) + "\n"


def write_tables(
    metrics_files: Iterable[str | os.PathLike],
    runs_csv,
    csv_path,
    md_path,
    tex_path,
    methods_md=None,
    differences_csv=None,
) -> pd.DataFrame:
    """Write the long-form runs CSV and the summary as CSV, Markdown and LaTeX (each atomically); ``methods_md``:
    also the side-by-side table of ``methods_table`` as Markdown; ``differences_csv``: the paired differences in
    long form (``differences_table``: columns diff, ci_low, ci_high, n_pairs, ...)."""
    metrics_files = list(metrics_files)
    runs = runs_table(metrics_files)
    summary = summary_table(runs)
    shown = _display(summary)
    notes = [DIVERGED_NOTE] if summary["n_diverged"].any() else []
    mixed = mixed_provenance(json.loads(Path(f).read_text()) for f in metrics_files)
    if mixed:
        print(f"warning: {mixed}", file=sys.stderr)
        notes.append(f"Warning: {mixed}.")
    note = "\n\n".join(notes) or None
    outputs = [
        (runs_csv, runs.to_csv(index=False)),
        (csv_path, summary.to_csv(index=False)),
        (md_path, _markdown(shown, note)),
        (tex_path, _latex(shown, note)),
    ]
    if methods_md is not None:
        outputs.append((methods_md, _markdown(methods_table(summary), note)))
    if differences_csv is not None:
        outputs.append((differences_csv, differences_table(runs).to_csv(index=False)))
    for path, text in outputs:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)
    return summary
