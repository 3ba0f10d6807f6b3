"""Snakemake script of rule correlation: (pretrained, retrained) metrics pairs -> per-task coefficients and plot."""

import sys

from dssbt.correlation import write_correlation

with open(snakemake.log[0], "w") as log:  # noqa: F821 (injected by Snakemake)
    sys.stderr = sys.stdout = log
    sm = snakemake  # noqa: F821
    pairs = list(zip(sm.input.pretrained, sm.input.retrained))
    table = write_correlation(pairs, sm.output.points, sm.output.table, sm.output.plot, dict(sm.params.settings))
    print(table.to_string())
