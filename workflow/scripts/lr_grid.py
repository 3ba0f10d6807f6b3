"""Snakemake script of rule lr_grid_table: the lr grid's metrics -> lr_grid.csv and lr_choice.csv (dssbt.ladder)."""

import sys

from dssbt.ladder import write_lr_grid

with open(snakemake.log[0], "w") as log:  # noqa: F821 (injected by Snakemake)
    sys.stderr = sys.stdout = log
    sm = snakemake  # noqa: F821
    choice = write_lr_grid(list(sm.params.rows), sm.output.table, sm.output.choice)
    print(choice.to_string())
