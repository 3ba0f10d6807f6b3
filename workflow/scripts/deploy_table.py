"""Snakemake script of rule deploy_table: every exported model's row -> deploy table and Pareto plot."""

import sys

from dssbt.deploy.table import write_deploy_table

with open(snakemake.log[0], "w") as log:  # noqa: F821 (injected by Snakemake)
    sys.stderr = sys.stdout = log
    o = snakemake.output  # noqa: F821
    table = write_deploy_table(snakemake.input.rows, o.csv, o.md, o.plot, dpi=snakemake.params.dpi)  # noqa: F821
    print(table.to_string())
