"""Accuracy tables from the metrics files of every run (long form, then mean ± std over seeds).

Inits in the tables: ``skew_hippo`` (a model of order r trained from the Skew-HiPPO init), ``{method}_init``
(order r, retrained from the pretrained model reduced by ``method``: bt, bsp, modal, h2), ``{method}_no_retrain``
(the reduced model as is), and the full-N reference ``skew_hippo`` at order N (the pretrained model).

Orders are grouped by how they were asked for (``order_spec``): an integer r, or ``tol:<x>`` where every layer got
its own order; ``order`` is then the mean state size over layers (and seeds, in the summary).

A run whose training diverged and that finished with its best checkpoint before it (``optim.on_divergence:
keep_best``; metrics ``diverged: true``) is marked: ``diverged`` in the runs table, the count ``n_diverged`` in the
summary, and a ``†`` on its cell in the Markdown and LaTeX tables, explained in a footnote below them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .io import atomic_path
from .reduction.registry import METHODS
from .runs import table_init

METHOD_NAMES = {name: m.label for name, m in METHODS.items()}
INIT_ORDER = ["skew_hippo"] + [f"{m}_{k}" for m in METHOD_NAMES for k in ("init", "no_retrain")]
LABELS = {"skew_hippo": "Skew-HiPPO"} | {
    f"{m}_{k}": f"{name}-init (retrained)" if k == "init" else f"{name}, no retraining"
    for m, name in METHOD_NAMES.items()
    for k in ("init", "no_retrain")
}


def runs_table(metrics_files: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per run: task, seed, order, N, init, method, accuracies, losses, parameter counts, epochs, time."""
    rows = []
    for path in metrics_files:
        m = json.loads(Path(path).read_text())
        init = table_init(m)
        layer_orders = m.get("layer_orders") or [m["order"]]
        spec = str(m.get("order_spec") or m["order"])
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
                "method": init.split("_")[0] if init != "skew_hippo" else None,
                "test_accuracy": m["accuracy"]["test"],
                "val_accuracy": m["accuracy"]["val"],
                "train_accuracy": m["accuracy"].get("train"),
                "test_loss": m["loss"]["test"],
                "params_total": m["params"]["total"],
                "params_ssm": m["params"]["ssm"],
                "epochs_run": m.get("epochs_run", 0),
                "diverged": bool(m.get("diverged", False)),  # files written before the key existed: not diverged
                "wall_time_s": m.get("wall_time_s"),
                "file": str(path),
            }
        )
    if not rows:
        raise ValueError("no metrics files given")
    return pd.DataFrame(rows).sort_values(["task", "order", "order_spec", "init", "seed"], ignore_index=True)


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std of test accuracy over seeds per task × order × init, parameter counts, and BT-init − Skew-HiPPO.

    ``diff_vs_skew_hippo`` is the mean accuracy minus the Skew-HiPPO mean at the same task and order (empty for the
    Skew-HiPPO rows themselves and for the full-N reference); ``sign`` is ``+``, ``-`` or ``0``.
    """
    g = runs.groupby(["task", "order_spec", "init"], sort=False)
    s = g.agg(
        order=("order", "mean"),
        N=("N", "first"),
        reference=("reference", "first"),
        acc_mean=("test_accuracy", "mean"),
        acc_std=("test_accuracy", lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else 0.0),
        n_seeds=("seed", "nunique"),
        n_diverged=("diverged", "sum"),
        params_total=("params_total", "mean"),  # differs between seeds only for tolerance-chosen orders
        params_ssm=("params_ssm", "mean"),
    ).reset_index()
    base = s[s["init"] == "skew_hippo"].set_index(["task", "order_spec"])["acc_mean"]
    key = list(zip(s["task"], s["order_spec"]))
    s["diff_vs_skew_hippo"] = [
        (m - base[k]) if (i != "skew_hippo" and not ref and k in base.index) else np.nan
        for m, k, i, ref in zip(s["acc_mean"], key, s["init"], s["reference"])
    ]
    s["sign"] = [("" if np.isnan(d) else "+" if d > 0 else "-" if d < 0 else "0") for d in s["diff_vs_skew_hippo"]]
    s["init_rank"] = s["init"].map({k: i for i, k in enumerate(INIT_ORDER)})
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
DIVERGED_NOTE = (f"{DIVERGED_MARK} training diverged in at least one seed of this cell; that seed reports its best "
                 "checkpoint before the divergence (optim.on_divergence: keep_best; runs.csv, column diverged).")


def _pm(mean: float, std: float, n_diverged: int = 0) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}" + (f" {DIVERGED_MARK}" if n_diverged else "")


def _display(summary: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "task": summary["task"],
            "order": [_order_label(*a) for a in zip(summary["order_spec"], summary["order"], summary["reference"])],
            "init": [LABELS.get(i, i) for i in summary["init"]],
            "test acc. % (mean ± std)": [_pm(m, s, d) for m, s, d in
                                         zip(summary["acc_mean"], summary["acc_std"], summary["n_diverged"])],
            "seeds": summary["n_seeds"],
            "params": [_count(x) for x in summary["params_total"]],
            "SSM params": [_count(x) for x in summary["params_ssm"]],
            "vs Skew-HiPPO (pp)": ["" if np.isnan(d) else f"{100 * d:+.2f}" for d in summary["diff_vs_skew_hippo"]],
        }
    )


def _latex(df: pd.DataFrame, note: str | None = None) -> str:
    """A booktabs tabular of ``df`` (written by hand: pandas' to_latex needs jinja2), ``note`` below it."""

    def cell(v) -> str:
        t = str(v)
        for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
            t = t.replace(a, b)
        return t.replace("±", r"$\pm$").replace(DIVERGED_MARK, r"\dag{}")

    lines = [r"\begin{tabular}{" + "l" * 3 + "r" * (len(df.columns) - 3) + "}", r"\toprule"]
    lines.append(" & ".join(cell(c) for c in df.columns) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(cell(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if note:
        lines += ["", r"\par\footnotesize " + cell(note)]
    return "\n".join(lines) + "\n"


def methods_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary side by side: one row per task × order, one column per init (Skew-HiPPO, then each method
    without and after retraining), cells "mean ± std" test accuracy in %, and the row's total parameter count."""
    rows = []
    for (task, spec), g in summary.groupby(["task", "order_spec"], sort=False):
        first = g.iloc[0]
        row = {"task": task, "order": _order_label(spec, first["order"], first["reference"]),
               "params": _count(g["params_total"].mean())}
        for init, m, sd, d in zip(g["init"], g["acc_mean"], g["acc_std"], g["n_diverged"]):
            row[LABELS.get(init, init)] = _pm(m, sd, d)
        rows.append(row)
    table = pd.DataFrame(rows)
    columns = ["task", "order", "params"] + [LABELS[i] for i in INIT_ORDER if LABELS[i] in table.columns]
    return table[columns].fillna("")


def _markdown(df: pd.DataFrame, note: str | None = None) -> str:
    md = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    md += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(md + (["", note] if note else [])) + "\n"


def write_tables(metrics_files: Iterable[str | os.PathLike], runs_csv, csv_path, md_path, tex_path,
                 methods_md=None) -> pd.DataFrame:
    """Write the long-form runs CSV and the summary as CSV, Markdown and LaTeX (each atomically); ``methods_md``:
    also the side-by-side table of ``methods_table`` as Markdown."""
    runs = runs_table(metrics_files)
    summary = summary_table(runs)
    shown = _display(summary)
    note = DIVERGED_NOTE if summary["n_diverged"].any() else None
    outputs = [
        (runs_csv, runs.to_csv(index=False)),
        (csv_path, summary.to_csv(index=False)),
        (md_path, _markdown(shown, note)),
        (tex_path, _latex(shown, note)),
    ]
    if methods_md is not None:
        outputs.append((methods_md, _markdown(methods_table(summary), note)))
    for path, text in outputs:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)
    return summary
