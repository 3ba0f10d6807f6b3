"""The compressibility study (config ``compressibility``): how much accuracy survives when most states are removed,
for models pretrained to be compressible.

Variants of the full-N pretraining, all at the same total number of training epochs (pretraining E_p + retraining
E_r):

- ``plain``: the main grid's pretraining; reduced by BT to a global state budget, then retrained for E_r epochs;
- ``hsvreg<lambda>``: the same with ``optim.hsv_reg = lambda`` (Hankel nuclear-norm penalty) in the pretraining;
- ``shrink<f>``: in-training reduction (``optim.reduce_during`` with ``budget: f``) over one run of E_p + E_r
  epochs; it has no "without retraining" figure (it never runs at full size after its last reduction).

``keep`` lists the fractions f of the full model's states kept (budget orders ``budget:<f>``: 0.25 keeps 25 %, so
removes 75 %). ``table`` writes one row per task x variant x kept fraction with mean ± std over seeds (test
accuracy, %) without and after retraining, and the paired-by-seed difference to ``plain`` at the same fraction
with its 95 % Student-t interval (``aggregate.paired_difference``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .aggregate import paired_difference
from .orders import n_states

PLAIN = "plain"


def variant_label(variant: str) -> str:
    """How a variant reads in the table: ``plain``, ``hsv_reg 0.001``, ``in-training reduction``."""
    if variant.startswith("hsvreg"):
        return f"hsv_reg {variant[len('hsvreg') :]}"
    if variant.startswith("shrink"):
        return "in-training reduction"
    return variant


def _read(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def points(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Long form of the study's runs. Each row: {task, seed, variant, keep, kind, metrics} with kind one of
    ``pretrained`` (full N), ``reduced`` (BT to the budget, not retrained), ``retrained`` (after E_r epochs; for a
    shrink variant its own run) and ``metrics`` a metrics.json path. Returns task, seed, variant, keep, kind,
    accuracy (test, %), states (complex modes over every channel and layer), epochs (total training epochs)."""
    out = []
    for r in rows:
        m = _read(r["metrics"])
        cfg = m["model_config"]
        states = n_states(m["layer_orders"], cfg["d_model"], cfg.get("bidirectional", False))
        out.append(
            {
                "task": r["task"],
                "seed": int(r["seed"]),
                "variant": r["variant"],
                "method": r.get("method", "bt"),
                "keep": float(r["keep"]),
                "kind": r["kind"],
                "accuracy": 100.0 * m["accuracy"]["test"],
                "states": states,
                "epochs": m.get("epochs_run"),
            }
        )
    return pd.DataFrame(out)


def table(pts: pd.DataFrame) -> pd.DataFrame:
    """One row per task x variant x kept fraction x method: the states kept (the largest over seeds), the variant's
    full-N pretrained accuracy, the accuracy without and after retraining (mean, std, n over seeds; test, %), the
    after-retraining difference to ``plain`` at the same fraction and method, paired by seed, with its 95 % interval,
    and (several methods: the frontier preset) the differences to BT's at the same task, variant and fraction, paired
    by seed, without (``vs_bt_reduced_*``) and after retraining (``vs_bt_*``)."""
    rows = []
    if "method" not in pts:
        pts = pts.assign(method="bt")
    reduced_pts = pts[pts.kind != "pretrained"]
    for (task, variant, keep, method), g in reduced_pts.groupby(["task", "variant", "keep", "method"], sort=False):
        row: dict[str, Any] = {
            "task": task,
            "variant": variant,
            "method": method,
            "label": variant_label(variant),
            "keep": keep,
            "removed_pct": round(100 * (1 - keep)),
            "states": int(g["states"].max()),
        }
        full = pts[(pts.task == task) & (pts.variant == variant) & (pts.kind == "pretrained")]
        for kind, a in (
            ("pretrained", full["accuracy"]),
            ("reduced", g[g.kind == "reduced"]["accuracy"]),
            ("retrained", g[g.kind == "retrained"]["accuracy"]),
        ):
            row[f"{kind}_mean"], row[f"{kind}_std"], row[f"{kind}_n"] = (
                a.mean(),
                a.std(ddof=1) if len(a) > 1 else np.nan,
                len(a),
            )
        same = (pts.task == task) & (pts.keep == keep) & (pts.method == method)
        base = pts[same & (pts.variant == PLAIN) & (pts.kind == "retrained")]
        pair = g[g.kind == "retrained"].merge(base, on="seed", suffixes=("", "_plain"))
        d = (
            paired_difference(pair["accuracy"].to_numpy(), pair["accuracy_plain"].to_numpy())
            if variant != PLAIN
            else {"diff": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n_pairs": 0}
        )
        row |= {f"vs_plain_{k}": v for k, v in d.items()}
        if pts["method"].nunique() > 1:
            at = (pts.task == task) & (pts.keep == keep) & (pts.variant == variant) & (pts.method == "bt")
            for kind, prefix in (("retrained", "vs_bt"), ("reduced", "vs_bt_reduced")):
                pair = g[g.kind == kind].merge(pts[at & (pts.kind == kind)], on="seed", suffixes=("", "_bt"))
                d = (
                    paired_difference(pair["accuracy"].to_numpy(), pair["accuracy_bt"].to_numpy())
                    if method != "bt" and len(pair)
                    else {"diff": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n_pairs": 0}
                )
                row |= {f"{prefix}_{k}": v for k, v in d.items()}
        rows.append(row)
    df = pd.DataFrame(rows)
    order = {v: i for i, v in enumerate(dict.fromkeys(pts["variant"]))}
    morder = {m: i for i, m in enumerate(dict.fromkeys(pts["method"]))}
    return df.sort_values(
        ["task", "keep", "variant", "method"],
        ascending=[True, False, True, True],
        key=lambda s: s.map(order) if s.name == "variant" else s.map(morder) if s.name == "method" else s,
    ).reset_index(drop=True)


def _cell(mean: float, std: float, n: int) -> str:
    if not n:
        return "–"
    return f"{mean:.1f}" + ("" if np.isnan(std) else f" ± {std:.1f}")


def markdown(tab: pd.DataFrame) -> str:
    """The table as Markdown: test accuracy %, mean ± std over seeds; a difference to the plain pretraining in bold
    where its interval excludes 0; a method − BT difference never (frontier_differences.md adjusts those)."""
    several = "vs_bt_diff" in tab
    lines = [
        "| task | states removed | kept states | variant | full N | without retraining | after retraining |"
        " after retraining − plain |"
        + (" method | without retraining − BT | after retraining − BT |" if several else ""),
        "| --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- | --- | --- |" if several else ""),
    ]

    def interval(diff: float, lo: float, hi: float, n: int) -> str:
        if n == 0:
            return ""
        if np.isnan(lo):
            return f"{diff:+.1f} (n = {n}, no interval)"
        # never bold: these intervals are unadjusted; the adjusted verdicts are frontier_differences.md's
        return f"{diff:+.1f} [{lo:+.1f}, {hi:+.1f}]"

    for r in tab.itertuples():
        if r.vs_plain_n_pairs == 0:
            diff = ""
        elif np.isnan(r.vs_plain_ci_low):
            diff = f"{r.vs_plain_diff:+.1f} (n = {r.vs_plain_n_pairs}, no interval)"
        else:
            diff = f"{r.vs_plain_diff:+.1f} [{r.vs_plain_ci_low:+.1f}, {r.vs_plain_ci_high:+.1f}]"
            if r.vs_plain_ci_low > 0 or r.vs_plain_ci_high < 0:
                diff = f"**{diff}**"
        lines.append(
            f"| {r.task} | {r.removed_pct} % | {r.states} | {r.label}"
            f" | {_cell(r.pretrained_mean, r.pretrained_std, r.pretrained_n)}"
            f" | {_cell(r.reduced_mean, r.reduced_std, r.reduced_n)}"
            f" | {_cell(r.retrained_mean, r.retrained_std, r.retrained_n)} | {diff} |"
            + (
                f" {r.method} | {interval(r.vs_bt_reduced_diff, r.vs_bt_reduced_ci_low, r.vs_bt_reduced_ci_high, r.vs_bt_reduced_n_pairs)}"
                f" | {interval(r.vs_bt_diff, r.vs_bt_ci_low, r.vs_bt_ci_high, r.vs_bt_n_pairs)} |"
                if several
                else ""
            )
        )
    n = int(tab["retrained_n"].max()) if len(tab) else 0
    lines.append("")
    lines.append(
        f"Test accuracy %, mean ± std over seeds (n = {n}); kept states: complex modes over every channel "
        "and layer (the largest over seeds); after retraining − plain: the difference to the plain "
        "pretraining at the same fraction, paired by seed, with its 95 % Student-t interval (bold: it "
        "excludes 0). Every row has the same total training epochs (pretraining + retraining)."
        + (
            " Method − BT: paired by seed, 95 % Student-t interval, unadjusted (never bold); the comparison with "
            "the seed × item bootstrap and Holm-adjusted p is frontier_differences.md."
            if several
            else ""
        )
    )
    return "\n".join(lines) + "\n"


def write(rows: Iterable[dict[str, Any]], csv_path, md_path) -> pd.DataFrame:
    """Points -> table, written as CSV and Markdown (atomically)."""
    from .io import atomic_path

    tab = table(points(rows))
    with atomic_path(csv_path) as tmp:
        tab.to_csv(tmp, index=False)
    with atomic_path(md_path) as tmp:
        Path(tmp).write_text(markdown(tab))
    return tab


def hsv_decay_by_variant(report_files: Iterable[str | os.PathLike], paths: Iterable, settings: dict[str, Any]) -> None:
    """Normalised HSVs sigma_k / sigma_1 of each variant's pretrained model, one panel per task: median over every
    channel, layer and seed, with the 10-90 % band. Report files: ``.../{task}/seed{s}/{variant}/<reduce run>/
    report.json`` (the reduce report holds the HSVs of the model it reduced)."""
    from .plots import _style, hsv_panels, normalised_hsv

    _style(settings)
    curves: dict[str, dict[str, list[np.ndarray]]] = {}
    for path in report_files:
        parts = Path(path).parts
        task, variant = parts[-5], parts[-3]
        for layer in _read(path)["layers"]:
            norm = normalised_hsv(layer)
            if norm is not None:
                curves.setdefault(task, {}).setdefault(variant_label(variant), []).append(norm)
    hsv_panels(curves, paths, settings)
