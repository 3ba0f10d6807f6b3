"""Accuracy tables from the metrics files of every run (long form, then mean ± std over seeds).

Inits in the tables: ``skew_hippo`` (a model of order r trained from the Skew-HiPPO init), ``{method}_init``
(order r, retrained from the pretrained model reduced by ``method``: bt, bsp, modal, h2), ``{method}_no_retrain``
(the reduced model as is), and the full-N reference ``skew_hippo`` at order N (the pretrained model).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .io import atomic_path

METHOD_NAMES = {"bt": "BT", "bsp": "BSP", "modal": "Modal", "h2": "H2 (IRKA)"}
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
        init, method = m["init"], m.get("method")
        if init == "from_reduced":
            init = f"{method or 'bt'}_init"
        rows.append(
            {
                "task": m["task"],
                "seed": m["seed"],
                "order": m["order"],
                "N": m["N"],
                "init": init,
                "method": init.split("_")[0] if init != "skew_hippo" else None,
                "test_accuracy": m["accuracy"]["test"],
                "val_accuracy": m["accuracy"]["val"],
                "train_accuracy": m["accuracy"].get("train"),
                "test_loss": m["loss"]["test"],
                "params_total": m["params"]["total"],
                "params_ssm": m["params"]["ssm"],
                "epochs_run": m.get("epochs_run", 0),
                "wall_time_s": m.get("wall_time_s"),
                "file": str(path),
            }
        )
    if not rows:
        raise ValueError("no metrics files given")
    return pd.DataFrame(rows).sort_values(["task", "order", "init", "seed"], ignore_index=True)


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std of test accuracy over seeds per task × order × init, parameter counts, and BT-init − Skew-HiPPO.

    ``diff_vs_skew_hippo`` is the mean accuracy minus the Skew-HiPPO mean at the same task and order (empty for the
    Skew-HiPPO rows themselves and for the full-N reference); ``sign`` is ``+``, ``-`` or ``0``.
    """
    g = runs.groupby(["task", "order", "init"], sort=False)
    s = g.agg(
        N=("N", "first"),
        acc_mean=("test_accuracy", "mean"),
        acc_std=("test_accuracy", lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else 0.0),
        n_seeds=("seed", "nunique"),
        params_total=("params_total", "first"),
        params_ssm=("params_ssm", "first"),
    ).reset_index()
    s["reference"] = s["order"] == s["N"]
    base = s[s["init"] == "skew_hippo"].set_index(["task", "order"])["acc_mean"]
    key = list(zip(s["task"], s["order"]))
    s["diff_vs_skew_hippo"] = [
        (m - base[k]) if (i != "skew_hippo" and not ref and k in base.index) else np.nan
        for m, k, i, ref in zip(s["acc_mean"], key, s["init"], s["reference"])
    ]
    s["sign"] = [("" if np.isnan(d) else "+" if d > 0 else "-" if d < 0 else "0") for d in s["diff_vs_skew_hippo"]]
    s["init_rank"] = s["init"].map({k: i for i, k in enumerate(INIT_ORDER)})
    s = s.sort_values(["task", "reference", "order", "init_rank"], ascending=[True, False, True, True])
    return s.drop(columns="init_rank").reset_index(drop=True)


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _display(summary: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "task": summary["task"],
            "order": [f"{o} (full N)" if ref else str(o) for o, ref in zip(summary["order"], summary["reference"])],
            "init": [LABELS.get(i, i) for i in summary["init"]],
            "test acc. % (mean ± std)": [_pm(m, s) for m, s in zip(summary["acc_mean"], summary["acc_std"])],
            "seeds": summary["n_seeds"],
            "params": summary["params_total"],
            "SSM params": summary["params_ssm"],
            "vs Skew-HiPPO (pp)": ["" if np.isnan(d) else f"{100 * d:+.2f}" for d in summary["diff_vs_skew_hippo"]],
        }
    )


def _latex(df: pd.DataFrame) -> str:
    """A booktabs tabular of ``df`` (written by hand: pandas' to_latex needs jinja2)."""

    def cell(v) -> str:
        t = str(v)
        for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
            t = t.replace(a, b)
        return t.replace("±", r"$\pm$")

    lines = [r"\begin{tabular}{" + "l" * 3 + "r" * (len(df.columns) - 3) + "}", r"\toprule"]
    lines.append(" & ".join(cell(c) for c in df.columns) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(cell(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(metrics_files: Iterable[str | os.PathLike], runs_csv, csv_path, md_path, tex_path) -> pd.DataFrame:
    """Write the long-form runs CSV and the summary as CSV, Markdown and LaTeX (each atomically)."""
    runs = runs_table(metrics_files)
    summary = summary_table(runs)
    shown = _display(summary)
    md = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    md += ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    tex = _latex(shown)
    for path, text in (
        (runs_csv, runs.to_csv(index=False)),
        (csv_path, summary.to_csv(index=False)),
        (md_path, "\n".join(md) + "\n"),
        (tex_path, tex),
    ):
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)
    return summary
