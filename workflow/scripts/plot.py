"""Snakemake script of rule plot: tables and reduction reports -> figures (see dssbt.plots)."""

import sys

import pandas as pd

from dssbt import plots

with open(snakemake.log[0], "w") as log:  # noqa: F821 (injected by Snakemake)
    sys.stderr = sys.stdout = log
    sm = snakemake  # noqa: F821
    runs = pd.read_csv(sm.input.runs)
    settings = dict(sm.params.settings)
    plots.forest(pd.read_csv(sm.input.differences), sm.output.forest, settings, n=int(runs["N"].max()))
    plots.accuracy_vs_order(runs, sm.output.accuracy, settings)
    plots.hsv_decay(sm.input.reports, sm.output.hsv, settings)
    plots.pretrained_vs_bt(runs, sm.output.scatter, settings)
    plots.learning_curves(runs, sm.output.curves, settings)
    print("wrote", *sm.output)
