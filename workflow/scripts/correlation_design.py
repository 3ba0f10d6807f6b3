"""Snakemake script of rule correlation_design: (pretrained, retrained) metrics pairs of the correlation design ->
points, per-task coefficients (cluster bootstrap over pretrainings, MixedLM slope) and the plot."""

import sys

from dssbt.correlation import write_correlation_design

with open(snakemake.log[0], "w") as log:  # noqa: F821 (injected by Snakemake)
    sys.stderr = sys.stdout = log
    sm = snakemake  # noqa: F821
    pairs = list(zip(sm.input.pretrained, sm.input.retrained))
    table = write_correlation_design(
        pairs,
        sm.output.points,
        sm.output.table,
        sm.output.plot,
        dict(sm.params.settings),
        n_resamples=int(sm.params.n_resamples),
        knob=sm.params.knob,
    )
    print(table.to_string())
