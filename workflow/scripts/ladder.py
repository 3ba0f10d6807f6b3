"""Snakemake script of rule ladder_table: the ladder's chains of metrics files -> tables and plot (dssbt.ladder)."""

import sys

from dssbt.ladder import write_ladder

with open(snakemake.log[0], "w") as log:  # noqa: F821 (injected by Snakemake)
    sys.stderr = sys.stdout = log
    sm = snakemake  # noqa: F821
    meta = {path.split("/")[-2]: path for path in sm.input.meta}  # data/prepared/<task>/meta.json
    out = {k: sm.output[k] for k in ("points", "summary", "differences", "trend", "md")} | {"plot": sm.output.plot}
    diffs = write_ladder(list(sm.params.rows), meta, out, dict(sm.params.settings))
    print(diffs.to_string())
