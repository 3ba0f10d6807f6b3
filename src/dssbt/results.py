"""The figures the README quotes, generated from committed result files: one command, and a test holds them equal.

    python -m dssbt.results            # rewrite README.md's result block and docs/results.md from docs/results/
    python -m dssbt.results --check    # exit 1 (naming the file) where either differs from what the results give

``docs/results/<study>/`` holds the tables a finished run wrote (``results/tables/``: runs.csv, differences.csv and,
optionally, accuracy.md, differences.md, a compressibility run's compress.md and frontier_differences.md, figures
(.png) and a README.md saying how it was run), copied there by hand after the run:
``default`` (the embedded default) and ``evidence`` (``workflow/presets/evidence.yaml``) when committed. The README
keeps one short table: the primary contrast (``evidence.primary``, e.g. BT-init − equal-budget Skew-HiPPO at r = 4)
of every committed study and task, with its seed × item interval, Holm-adjusted p and verdict; ``docs/results.md``
holds, per study, every comparison by claim (the primary contrast, claim 2, balancing, then the rest) with its
verdict, and the tables the run wrote.

A rerun that changed only float rounding (``optim.kernels: c``, another thread count or CPU) is a study folder of its
own (e.g. ``evidence-kernels-c``); ``python -m dssbt.rounding docs/results/evidence docs/results/evidence-kernels-c``
writes ``rounding.csv``/``rounding.md`` into the run's folder, and the README's table says per primary contrast
whether its verdict held there ("not rerun" where no rerun is committed).

A verdict names a direction ("BT-init ahead") only for a significant difference (Holm-adjusted p < 0.05 and the
seed × item interval excludes 0); otherwise it says "no measurable difference at this power" with the smallest
effect the study's seeds detect with 80 % power (``aggregate.smallest_detectable_effect``: statsmodels'
TTestPower at the observed sd of the per-seed differences, paired from runs.csv).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .aggregate import CLAIMS, LABELS, POWER, smallest_detectable_effect

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- results:begin (python -m dssbt.results) -->", "<!-- results:end -->"
SECTIONS = (  # claim groups of docs/results.md in order: the primary contrast, claim 2, balancing, then the rest
    ("primary", "Primary contrast"),
    ("claim2", "Claim 2: BT-init at r against more parameters (larger orders, full N continued)"),
    ("balancing", "Balancing: BT-init against retrained controls"),
    *((c, f"Other comparisons ({c})") for c in CLAIMS if c not in ("primary", "claim2", "balancing")),
)


def results_dir() -> Path:
    return ROOT / "docs" / "results"


def arm(init: str) -> str:
    """The short name of an arm: its table label without " (retrained)" (``bt_init`` -> ``BT-init``)."""
    return LABELS.get(init, init).replace(" (retrained)", "")


def verdict(row: pd.Series, detectable: float = np.nan) -> str:
    """What a difference supports: a direction only where it is significant (Holm-adjusted p < 0.05 and the seed ×
    item interval excludes 0), else no measurable difference at this power, with ``detectable`` (the smallest
    effect the seeds detect with 80 % power, accuracy) where known; a row outside the Holm family is exploratory."""
    if bool(row["significant"]):
        return f"{arm(row.get('init', 'bt_init'))} {'ahead' if row['diff'] > 0 else 'behind'}"
    if "in_family" in row and not bool(row["in_family"]):
        return "exploratory (outside the Holm family: raw p only)"
    text = "no measurable difference at this power"
    if not pd.isna(detectable):
        text += f" (smallest detectable effect {100 * detectable:.1f} points at {int(round(100 * POWER))} % power)"
    return text


def detectable_effect(row: pd.Series, runs: pd.DataFrame) -> float:
    """The smallest paired effect (accuracy) the seeds of ``row`` detect with 80 % power: the two arms' test
    accuracies paired by seed from ``runs`` (runs.csv), the sd of their differences, ``smallest_detectable_effect``."""
    vspec = str(row["versus_order_spec"]) if "versus_order_spec" in row else str(row["order_spec"])

    def acc(init: str, spec: str) -> pd.Series:
        sel = (runs["task"] == row["task"]) & (runs["init"] == init) & (runs["order_spec"].astype(str) == spec)
        return runs[sel].set_index("seed")["test_accuracy"]

    both = pd.concat([acc(row["init"], str(row["order_spec"])), acc(row["versus"], vspec)], axis=1).dropna()
    if len(both) < 2:
        return np.nan
    d = both.iloc[:, 0].to_numpy() - both.iloc[:, 1].to_numpy()  # (seeds,)
    return smallest_detectable_effect(float(np.std(d, ddof=1)), len(d))


def _pp(x: float) -> str:
    return f"{100 * x:+.1f}"


def _interval(lo: float, hi: float) -> str:
    return "n/a" if pd.isna(lo) or pd.isna(hi) else f"[{_pp(lo)}, {_pp(hi)}]"


def _p(p: float) -> str:
    return "n/a" if pd.isna(p) else f"{p:.3f}"


def _order(row: pd.Series, versus: bool = False) -> str:
    key = "versus_order_spec" if versus and "versus_order_spec" in row else "order_spec"
    return f"r={row[key]}" if row.get("N") is None or str(row[key]) != str(row.get("N")) else f"N={row[key]}"


def arm_params(runs: pd.DataFrame, task: str, init: str, spec: str) -> str:
    """The mean total parameter count of one arm over its seeds in runs.csv ("n/a" where it has no run)."""
    sel = (runs["task"] == task) & (runs["init"] == init) & (runs["order_spec"].astype(str) == str(spec))
    return "n/a" if not sel.any() else f"{runs.loc[sel, 'params_total'].mean():.0f}"


def claims(differences: pd.DataFrame) -> pd.Series:
    """The claim group of each row (column ``claim``; a table written before it: primary or, else, other)."""
    if "claim" in differences:
        return differences["claim"].astype(str)
    return pd.Series(np.where(differences["primary"].astype(bool), "primary", "other"), index=differences.index)


def comparison_table(rows: pd.DataFrame, runs: pd.DataFrame) -> str:
    """Markdown: one row per comparison (differences in points), with both arms' parameters and the verdict."""
    n_full = runs.groupby("task")["N"].max()
    lines = [
        "| task | comparison | params (init / versus) | seeds | test items | difference (pp) | 95 % CI, seeds × items "
        "| 95 % CI, seeds only | p | p (Holm) | verdict |",
        "|" + " --- |" * 11,
    ]
    for _, r in rows.iterrows():
        r = r.copy()
        r["N"] = n_full.get(r["task"])
        vspec = r["versus_order_spec"] if "versus_order_spec" in r else r["order_spec"]
        params = f"{arm_params(runs, r['task'], r['init'], r['order_spec'])} / "
        params += arm_params(runs, r["task"], r["versus"], vspec)
        items = "n/a" if pd.isna(r["n_items"]) else f"{int(r['n_items'])}"
        lines.append(
            f"| {r['task']} | {arm(r['init'])} {_order(r)} − {arm(r['versus'])} {_order(r, True)} | {params} | "
            f"{int(r['n_pairs'])} | {items} | {_pp(r['diff'])} | {_interval(r['boot_low'], r['boot_high'])} | "
            f"{_interval(r['ci_low'], r['ci_high'])} | {_p(r['p'])} | {_p(r['p_holm'])} | "
            f"{verdict(r, detectable_effect(r, runs))} |"
        )
    return "\n".join(lines) + "\n"


COMPARISON = ["task", "order_spec", "init", "versus", "versus_order_spec"]  # what names one paired difference


def _spec(value) -> str:
    """An order spec as text: 4, 4.0 (a column that also holds NaN reads as float) and "4" are "4"; "tol:0.1" stays."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def with_comparison_key(differences: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``differences`` whose COMPARISON columns are comparable text: order specs as ``_spec`` writes them,
    and the versus arm's order (claim 2 compares r with 2r) filled with the row's own order where it has none."""
    out = differences.copy()
    out["order_spec"] = out["order_spec"].map(_spec)
    versus = out["versus_order_spec"] if "versus_order_spec" in out else pd.Series(np.nan, index=out.index)
    out["versus_order_spec"] = versus.where(versus.notna(), out["order_spec"]).map(_spec)
    return out


def rounding_checks() -> dict[str, pd.DataFrame]:
    """Per study with a ``rounding.csv`` (``python -m dssbt.rounding``: the study against a rerun that changed only
    float rounding), that table; its ``rerun`` column names the rerun's folder."""
    out = {}
    for p in sorted(results_dir().glob("*/rounding.csv")):
        table = pd.read_csv(p, dtype={"order_spec": str, "versus_order_spec": str})
        if "rerun" not in table or "versus_order_spec" not in table:
            raise ValueError(
                f"{p}: written by an older dssbt.rounding (rewrite it: python -m dssbt.rounding RUN RERUN)"
            )
        out[p.parent.name] = table
    return out


def held_under_rounding(study: str, row: pd.Series, checks: dict[str, pd.DataFrame]) -> str:
    """Whether ``row``'s verdict (a difference of ``study``, keyed by ``with_comparison_key``) held in the rerun that
    changed only rounding: "yes" or "**no**: not a conclusion" naming the rerun and its verdict, "rerun of <study>"
    for a rerun's own rows, "not rerun" where none was run."""
    if study in checks:
        t = checks[study]
        match = t[(t[COMPARISON] == row[COMPARISON]).all(axis=1)]
        if match.empty:
            raise ValueError(f"docs/results/{study}/rounding.csv lacks {row['task']} {row['init']} − {row['versus']}")
        m = match.iloc[0]
        if bool(m["held"]):
            return f"yes ({m['rerun']})"
        return f"**no**: not a conclusion ({m['rerun']}: {m['verdict_rerun']})"
    bases = [base for base, t in checks.items() if (t["rerun"] == study).any()]
    return f"rerun of {', '.join(bases)}" if bases else "not rerun"


def primary_table(studies: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> str:
    """Markdown: the primary contrast of every study and task (difference, seed × item interval, Holm p,
    verdict, and whether the verdict held when only float rounding changed); ValueError naming a study whose
    differences have no primary contrast."""
    lines = [
        "| study | task | comparison | seeds | difference (pp) | 95 % CI, seeds × items | p (Holm) | verdict "
        "| held when only rounding changed |",
        "|" + " --- |" * 9,
    ]
    checks = rounding_checks()
    for study, (differences, runs) in studies.items():
        rows = differences[differences["primary"].astype(bool)]
        if rows.empty:
            raise ValueError(f"docs/results/{study}/differences.csv has no primary contrast (config evidence.primary)")
        for _, r in with_comparison_key(rows).iterrows():
            lines.append(
                f"| {study} | {r['task']} | {arm(r['init'])} − {arm(r['versus'])}, r = {r['order_spec']} | "
                f"{int(r['n_pairs'])} | {_pp(r['diff'])} | {_interval(r['boot_low'], r['boot_high'])} | "
                f"{_p(r['p_holm'])} | {verdict(r, detectable_effect(r, runs))} | "
                f"{held_under_rounding(study, r, checks)} |"
            )
    return "\n".join(lines) + "\n"


def read(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(differences, runs) of a committed study folder; ValueError naming a missing file."""
    for name in ("differences.csv", "runs.csv"):
        if not (folder / name).exists():
            raise ValueError(f"{folder / name}: missing (a study folder holds runs.csv and differences.csv)")
    converters = {"order_spec": str, "versus_order_spec": str}
    return pd.read_csv(folder / "differences.csv", dtype=converters), pd.read_csv(
        folder / "runs.csv", dtype={"order_spec": str}
    )


def studies() -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Every committed study (a folder of docs/results/ with a differences.csv), by name (sorted)."""
    return {p.name: read(p) for p in sorted(results_dir().iterdir()) if p.is_dir() and (p / "differences.csv").exists()}


def readme_block() -> str:
    return (
        f"{BEGIN}\n{primary_table(studies())}\nEvery comparison of every study, by claim: "
        f"[docs/results.md](docs/results.md).\n{END}"
    )


def results_page() -> str:
    """docs/results.md: per committed study, its comparisons by claim with verdicts, then the tables it wrote."""
    parts = [
        "# Results\n",
        "Generated by `python -m dssbt.results` from the files under `docs/results/` (do not edit).\n",
    ]
    found = studies()
    for folder in sorted(p for p in results_dir().iterdir() if p.is_dir()):
        parts.append(f"## `{folder.name}`\n")
        if (folder / "README.md").exists():
            parts.append((folder / "README.md").read_text().strip() + "\n")
        if folder.name in found:
            differences, runs = found[folder.name]
            group = claims(differences)
            known = [c for c, _ in SECTIONS]
            for claim, title in [*SECTIONS, ("other", "Other comparisons")]:
                rows = differences[group == claim] if claim != "other" else differences[~group.isin(known)]
                if len(rows):
                    parts.append(f"### {title}\n")
                    parts.append(comparison_table(rows, runs))
        for name, title in (
            ("accuracy.md", "Accuracy"),
            ("differences.md", "Paired differences"),
            ("rounding.md", "Verdicts when only float rounding changed"),
            ("compress.md", "Accuracy at global state budgets"),
            ("frontier_differences.md", "Each method − BT at the same budget"),
        ):
            if (folder / name).exists():
                parts.append(f"### {title} (`{name}`)\n")
                parts.append((folder / name).read_text().strip() + "\n")
        for png in sorted(folder.glob("*.png")):  # a study's committed figures, linked from docs/results.md
            parts.append(f"![{png.stem}](results/{folder.name}/{png.name})\n")
    return "\n".join(parts)


def with_block(readme: str, block: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"README.md has no result block ({BEGIN} ... {END})")
    head, rest = readme.split(BEGIN, 1)
    return head + block + rest.split(END, 1)[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dssbt.results", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 where they differ")
    args = ap.parse_args(argv)
    readme_path, page_path = ROOT / "README.md", ROOT / "docs" / "results.md"
    wanted = {readme_path: with_block(readme_path.read_text(), readme_block()), page_path: results_page()}
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(
                f"{p.relative_to(ROOT)} differs from the committed results: run python -m dssbt.results",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for p in stale:
        p.write_text(wanted[p])
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
