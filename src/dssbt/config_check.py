"""Cross-key checks of a workflow config that its JSON schema cannot express, run when the Snakefile is parsed:
every error names the key and the value, before any job runs. Plain Python over the config dict and its
``grid.Plan``; the Snakefile calls ``check_names`` (before the plan is built) and ``check_config``."""

from __future__ import annotations

import json
from typing import Any

from . import grid
from .data import EMBEDDED_TASKS
from .hparams import DEFAULT_D_STATE, parse_hparams
from .reduction.registry import REDUCTIONS


def check_names(config: dict[str, Any]) -> None:
    """Names the schema leaves to the catalog: controls (``grid.controls``) and methods (the registry)."""
    lists = [("controls", config.get("controls", []), grid.controls())]
    lists += [("methods", config["methods"], list(REDUCTIONS))]
    lists += [
        (f"{s}.method", m if isinstance(m := config[s]["method"], list) else [m], list(REDUCTIONS))
        for s in ("correlation", "correlation_study", "compressibility")
        if (config.get(s) or {}).get("method")
    ]
    for key, values, known in lists:
        for v in values:
            if v not in known:
                raise ValueError(f"config: {key}: {v!r} is not one of {known}")


def _check_data(config: dict[str, Any]) -> None:
    for task in config["tasks"]:
        if task not in config["data"]:
            raise ValueError(f"config: tasks lists {task!r} but data.{task} is missing (where its data comes from)")
        if config["data"][task]["source"] == "embedded" and task not in EMBEDDED_TASKS:
            raise ValueError(f"config: data.{task}.source = embedded, but only {EMBEDDED_TASKS} have embedded data")


def _check_reduce_during(config: dict[str, Any]) -> None:
    """In-training reduction belongs to the pretraining only."""
    elsewhere = [("optim", config.get("optim", {})), ("retrain.optim", config["retrain"]["optim"])]
    for task, cfg in config.get("task_settings", {}).items():
        elsewhere += [
            (f"task_settings.{task}.optim", cfg.get("optim", {})),
            (f"task_settings.{task}.retrain.optim", cfg.get("retrain", {}).get("optim", {})),
        ]
    for where, optim in elsewhere:
        if "reduce_during" in optim:
            raise ValueError(
                f"config: {where}.reduce_during: in-training reduction applies to the pretraining only; "
                "set it under pretrain.optim"
            )


def _check_orders(config: dict[str, Any], plan: grid.Plan, task: str) -> None:
    """Every fixed order and the correlation study's order below the task's N; snapshot epochs below its epochs."""
    N = json.loads(plan.hparams(task, "train"))["model"].get("d_state", DEFAULT_D_STATE)
    for spec in plan.order_specs:
        if not spec.per_layer and spec.r >= N:
            own = "d_state" in config.get("task_settings", {}).get(task, {}).get("model", {})
            where = f"task_settings.{task}.model.d_state" if own else "model.d_state"
            raise ValueError(f"config: orders contains {spec.r}, not below N = {where} = {N} (task {task})")
    correlation = config.get("correlation")
    if correlation:
        epochs = json.loads(plan.hparams(task, "pretrain"))["optim"].get("epochs")
        if correlation["order"] >= N:
            raise ValueError(f"config: correlation.order = {correlation['order']} is not below N = {N} (task {task})")
        late = [e for e in correlation["epochs"] if epochs is not None and e >= epochs]
        if late:
            raise ValueError(
                f"config: correlation.epochs {late} must be below the pretraining epochs of task {task} "
                f"({epochs}): the full pretraining is always one more point"
            )


def _check_design(config: dict[str, Any], plan: grid.Plan, task: str) -> None:
    """The correlation design: k >= 3 pretrainings, its order below N, knob values its hyper-parameters accept, and
    every pretraining of it as long as the task's pretraining."""
    study = config.get("correlation_study")
    if not study:
        return
    k = len(study["seeds"]) * len(study["values"])
    if k < 3:
        raise ValueError(f"config: correlation_study: {k} pretrainings per task (seeds x values); at least 3 needed")
    N = json.loads(plan.hparams(task, "train"))["model"].get("d_state", DEFAULT_D_STATE)
    if study["order"] >= N:
        raise ValueError(f"config: correlation_study.order = {study['order']} is not below N = {N} (task {task})")
    if study["knob"] == "lr_factor" and 0 in study["values"]:
        raise ValueError("config: correlation_study.values: lr_factor 0 would not train at all")
    if study["knob"] == "dropout" and max(study["values"]) >= 1:
        raise ValueError(f"config: correlation_study.values: dropout {max(study['values'])} is not below 1")
    for knob in plan.axis("correlation_study.knob"):
        try:
            parse_hparams(plan.design_hparams(task, knob))
        except ValueError as e:
            raise ValueError(f"config: correlation_study: the pretraining {knob} of task {task}: {e}") from None


def check_config(config: dict[str, Any], plan: grid.Plan) -> None:
    """Every cross-key check; the first failure raises ValueError naming the key and the value."""
    _check_data(config)
    _check_reduce_during(config)
    for task in config["tasks"]:
        for how, stage in (("pretrain", "pretraining"), ("retrain", "retraining")):
            try:
                parse_hparams(plan.hparams(task, how))
            except ValueError as e:
                raise ValueError(f"config: the {stage} of task {task}: {e}") from None
    for task in config["tasks"]:
        _check_orders(config, plan, task)
        _check_design(config, plan, task)
    _check_evidence_studies(plan)
    for task in config["tasks"]:  # every compressibility variant's pretraining parses (shrink: epochs below total)
        for fields in plan.runs("compress_pretrain"):
            try:
                parse_hparams(plan.variant_hparams(task, fields["variant"]))
            except ValueError as e:
                raise ValueError(f"config: compressibility, variant {fields['variant']} of task {task}: {e}") from None


def _check_evidence_studies(plan: grid.Plan) -> None:
    """The ladder's and the lr grid's order below every task's N, and every one of their runs' hyper-parameters
    valid (e.g. a factor that makes lr negative cannot pass the schema, but a task's own settings are checked here)."""
    for study in ("ladder", "lr_grid"):
        if not plan.enabled(grid.KINDS["ladder_retrain" if study == "ladder" else "lr_retrain"]):
            continue
        order = int(plan.axis(f"evidence.{study}.order")[0])
        for task in plan.tasks:
            N = json.loads(plan.hparams(task, "train"))["model"].get("d_state", DEFAULT_D_STATE)
            if order >= N:
                raise ValueError(f"config: evidence.{study}.order = {order} is not below N = {N} (task {task})")
    for kind in grid.KINDS.values():
        if kind.switch in ("ladder", "ladder.no_warmup", "lr_grid"):
            for fields in plan.runs(kind):
                try:
                    parse_hparams(plan.run_hparams(kind, fields))
                except ValueError as e:
                    raise ValueError(f"config: evidence, run {kind.folder.format(**fields)}: {e}") from None
