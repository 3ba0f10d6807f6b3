"""Snakemake script of rule aggregate: every run's metrics -> accuracy tables (see dssbt.aggregate)."""

import sys

from dssbt.aggregate import write_tables

with open(snakemake.log[0], "w") as log:  # noqa: F821 (injected by Snakemake)
    sys.stderr = sys.stdout = log
    o = snakemake.output  # noqa: F821
    evidence = snakemake.params.evidence  # noqa: F821
    summary = write_tables(
        snakemake.input.metrics,  # noqa: F821
        o.runs,
        o.csv,
        o.md,
        o.tex,
        o.methods,
        o.differences,
        o.differences_md,
        primary=evidence["primary"],
        power_effect=evidence["power_effect"],
        family=evidence.get("family"),
    )
    print(summary.to_string())
