"""Run folders and the names a run carries: one table from (stage, method, order) to the folder name.

    stage      method          folder (under results/runs/{task}/seed{s}/)   what it holds
    pretrain   skew_hippo      pretrain                                      the full-N model
    baseline   skew_hippo      skew_hippo_r{order}                           order-r model from Skew-HiPPO
    baseline   skew_hippo_equal  skew_hippo_equal_r{order}                   the same, trained for the pretraining +
                                                                             retraining epochs (equal-budget control)
    reduce     bt|bsp|...      {method}_r{order}                             the reduced model, not retrained
    retrain    bt|bsp|...      {method}_init_r{order}                        retrained from the reduced model
    continue   full            full_continued                                the pretrained model trained for the
                                                                             retraining epochs more (control)
    snapshot   skew_hippo      pretrain_e{epoch}                             the pretraining stopped after epoch e
                                                                             (correlation study; the reduce and
                                                                             retrain folders of a snapshot lie inside)

A reduce "method" may be a control of the comparison rather than a reduction (``registry.Method.control``:
transplant, random_modes); it flows through reduce and retrain like the others. The controls a config can select
(its ``controls`` list) are ``dssbt.grid.controls()``: the catalog's training controls (run kinds of their own)
and the registry's control methods. The catalog (``dssbt.grid.KINDS``) is where a run kind's folder is declared;
this table is what a job writes into its metrics file (``describe_run``), and a test holds the two equal.

``{method}_continued`` (``full_continued``) is the table key of the continued full-N model.

``init`` is the older name of the same information, kept in every metrics file so tables read old and new runs
alike: the Lambda init of a trained model (``skew_hippo``), ``from_reduced`` for a retrained one,
``{method}_no_retrain`` for a reduced one.
"""

from __future__ import annotations

from typing import Any

from . import grid

STAGES = (*grid.STAGES, "evaluate")
# the method names of a baseline run (order r, trained from an init): the catalog's kinds of stage baseline (the
# paper's Skew-HiPPO baseline and the equal-budget control)
BASELINE_METHODS = tuple(grid.baselines())


# stage -> run folder name (``order``: the folder part of an order spec, e.g. 8 or tol0.3; for a snapshot the epoch)
FOLDERS = {
    "pretrain": "pretrain",
    "baseline": "{method}_r{order}",
    "reduce": "{method}_r{order}",
    "retrain": "{method}_init_r{order}",
    "continue": "{method}_continued",
    "snapshot": "pretrain_e{order}",
}
# stage -> key of a run in the tables (other stages: the method itself)
TABLE_KEYS = {"reduce": "{method}_no_retrain", "retrain": "{method}_init", "continue": "{method}_continued"}


def run_name(stage: str, method: str, order: str) -> str:
    """The run folder name; ``order`` is the folder part of an order spec (``8``, ``tol0.3``) or a wildcard."""
    if stage not in FOLDERS:
        raise ValueError(f"stage {stage!r} has no run folder; stages with one: {', '.join(FOLDERS)}")
    return FOLDERS[stage].format(method=method, order=order)


def describe_run(stage: str, method: str, order: str | None) -> dict[str, Any]:
    """The naming fields of a metrics file: stage, method, run (folder name, None for evaluate) and init."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {list(STAGES)}")
    init = {"reduce": f"{method}_no_retrain", "retrain": "from_reduced", "continue": "from_pretrained"}.get(
        stage, method
    )
    run = None if stage == "evaluate" else run_name(stage, method, order or "")
    return {"stage": stage, "method": method, "run": run, "init": init}


def table_init(metrics: dict[str, Any]) -> str:
    """The key of a run in the tables: ``skew_hippo``, ``{method}_init`` (retrained) or ``{method}_no_retrain``."""
    stage = metrics.get("stage")
    if stage is None:  # metrics written before stage/method existed
        init = metrics["init"]
        return f"{metrics.get('method') or 'bt'}_init" if init == "from_reduced" else init
    return TABLE_KEYS.get(stage, "{method}").format(method=metrics["method"])
