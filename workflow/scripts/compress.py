"""Snakemake script of rule compress_table: the study's metrics -> table (CSV, Markdown), HSV decay plot, and the
compression frontier (differences to BT, CSV and Markdown; frontier plot)."""

import sys

from dssbt import frontier
from dssbt.compress import hsv_decay_by_variant, write

with open(snakemake.log[0], "w") as log:  # noqa: F821 (injected by Snakemake)
    sys.stderr = sys.stdout = log
    sm = snakemake  # noqa: F821
    rows = [dict(r, metrics=m) for r, m in zip(sm.params.rows, sm.input.metrics)]
    table = write(rows, sm.output.csv, sm.output.md)
    hsv_decay_by_variant(list(sm.input.reports), sm.output.hsv, dict(sm.params.settings))
    frontier.write(rows, sm.output.frontier, sm.output.frontier_md, sm.output.frontier_plot, dict(sm.params.settings))
    print(table.to_string())
