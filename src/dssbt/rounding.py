"""Which conclusions survive a change of float rounding alone.

A run and its rerun differ only in rounding (another thread count, ``optim.kernels``, another CPU); the code, the
config and the seeds are the same. Each paired difference of the run's ``differences.csv`` is matched with the
rerun's and its verdict (``dssbt.results.verdict``: a direction only where significant) compared. A conclusion that
does not hold in both is not a conclusion.

    python -m dssbt.rounding docs/results/default docs/results/default-threads2
        # writes docs/results/default/rounding.csv and rounding.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .results import COMPARISON, verdict, with_comparison_key

KEY = ["task", "order_spec", "init", "versus"]  # required columns; versus_order_spec is optional (results.COMPARISON)


def compare(base: pd.DataFrame, rerun: pd.DataFrame) -> pd.DataFrame:
    """One row per difference of ``base`` (its differences.csv): both runs' difference, seed × item interval, Holm p
    and verdict, and ``held`` (the verdicts are equal). A difference missing from the rerun is an error: the two runs
    must be the same grid."""
    for name, df in (("run", base), ("rerun", rerun)):
        missing = [c for c in KEY + ["diff", "boot_low", "boot_high", "p_holm", "significant"] if c not in df]
        if missing:
            raise ValueError(f"the {name}'s differences table lacks columns {missing}")
    a, b = with_comparison_key(base), with_comparison_key(rerun)
    for df in (a, b):
        df["verdict"] = df.apply(verdict, axis=1)
    key = COMPARISON
    for name, df in (("run", a), ("rerun", b)):
        dup = df[df.duplicated(key, keep=False)]
        if not dup.empty:
            raise ValueError(f"the {name}'s differences repeat a comparison: {dup[key].iloc[0].tolist()}")
    cols = key + ["diff", "boot_low", "boot_high", "p_holm", "verdict"]
    out = a[cols].merge(b[cols], on=key, how="left", suffixes=("", "_rerun"), indicator=True)
    absent = out[out["_merge"] != "both"]
    if not absent.empty:
        rows = "; ".join(" ".join(str(r[k]) for k in key) for _, r in absent.head(5).iterrows())
        raise ValueError(f"{len(absent)} differences of the run are not in the rerun (e.g. {rows}): not the same grid")
    out = out.drop(columns="_merge")
    out["held"] = out["verdict"] == out["verdict_rerun"]
    return out


def markdown(table: pd.DataFrame, base_name: str, rerun_name: str) -> str:
    """The comparison as a markdown table (differences in points) with a one-line count."""
    lines = [
        f"| task | r | init | versus | versus r | diff (pp), {base_name} | diff (pp), {rerun_name} | p (Holm), {base_name} | "
        f"p (Holm), {rerun_name} | verdict, {base_name} | verdict, {rerun_name} | held |",
        "|" + " --- |" * 12,
    ]
    for _, r in table.iterrows():
        lines.append(
            f"| {r['task']} | {r['order_spec']} | {r['init']} | {r['versus']} | {r['versus_order_spec']} | "
            f"{100 * r['diff']:+.1f} | "
            f"{100 * r['diff_rerun']:+.1f} | {r['p_holm']:.3f} | {r['p_holm_rerun']:.3f} | {r['verdict']} | "
            f"{r['verdict_rerun']} | {'yes' if r['held'] else '**no**'} |"
        )
    held = int(table["held"].sum())
    lines.append("")
    lines.append(
        f"{held} of {len(table)} verdicts held when only float rounding changed ({base_name} vs {rerun_name}); "
        "a verdict is a direction where significant (Holm p < 0.05 and the seed × item interval excludes 0), "
        "else no measurable difference."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dssbt.rounding", description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="folder with the run's differences.csv; rounding.csv/.md are written here")
    ap.add_argument("rerun", type=Path, help="folder with the rerun's differences.csv (only rounding changed)")
    args = ap.parse_args(argv)
    tables = []
    for folder in (args.run, args.rerun):
        path = folder / "differences.csv"
        if not path.exists():
            ap.error(f"{path} does not exist")
        tables.append(pd.read_csv(path))
    table = compare(*tables)
    table["rerun"] = args.rerun.name  # the rerun's folder: docs/results/<run>/ names the run it was checked against
    table.to_csv(args.run / "rounding.csv", index=False)
    (args.run / "rounding.md").write_text(markdown(table, args.run.name, args.rerun.name))
    print(f"{int(table['held'].sum())} of {len(table)} verdicts held; wrote {args.run / 'rounding.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
