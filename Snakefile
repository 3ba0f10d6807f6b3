# dssbt: S4/DSS models compressed by balanced truncation (Ezoe & Sato 2024), as a Snakemake workflow.
# Stages: data -> pretrain (full N) -> reduce (every method, every order) -> retrain, beside the Skew-HiPPO baseline
# at every order; then tables and plots. Targets: all (default), data_all, pretrain_all, baseline_all, reduce_all,
# retrain_all, tables. {order} is r (8) or a per-layer spec (tol0.3); {method} a name of dssbt.reduction.registry.
# Every run is a kind of dssbt.grid (its folder, parent, hyper-parameters, config switch, table key), made by one
# of two rules: train (workflow/rules/train.smk) or reduce (reduce.smk). Paths (run folders: dssbt.grid.KINDS):
#   data/raw/embedded/{task}/                       generated embedded data, official LRA formats (rule generate)
#   data/downloads/{file}                           real LRA archives (rule download)
#   data/prepared/{task}/{train,val,test}.npz       prepared splits + meta.json (rule prepare)
#   results/runs/{task}/seed{s}/pretrain/           full-N model: model.pt, metrics.json, history.csv (pretrain)
#   results/runs/{task}/seed{s}/skew_hippo_r{order}/  order-r Skew-HiPPO model, same files (kind train_baseline;
#                                                   config controls: skew_hippo)
#   results/runs/{task}/seed{s}/skew_hippo_equal_r{order}/  the same for pretraining + retraining epochs
#                                                   (train_equal_budget; config controls: skew_hippo_equal)
#   results/runs/{task}/seed{s}/orders_{order}.json   per-layer orders of a per-layer spec (choose_orders)
#   results/runs/{task}/seed{s}/{method}_r{order}/    reduced.pt, report.json, metrics.json (reduce)
#   results/runs/{task}/seed{s}/{method}_init_r{order}/  retrained from the reduced model (retrain)
#   results/compress/{task}/seed{s}/{variant}/      compressibility study (config compressibility: compress.smk)
#   results/ladder/{task}/seed{s}/x{m}/             budget ladder (config evidence.ladder: evidence.smk)
#   results/lr_grid/{task}/seed{s}/lr{f}/           learning-rate grid (config evidence.lr_grid: evidence.smk)
#   results/tables/, results/plots/                 accuracy tables, figures (aggregate, plot)
#   logs/{rule}/..., benchmarks/{rule}/...          one log per job; time and memory of training jobs

import os

from snakemake.utils import min_version, validate

from dssbt.schema import derived_schema_file

min_version("9.0")


configfile: "config.yaml"


# the schema's task and archive enums come from the task registry (dssbt.data.tasks): one place declares a task
with derived_schema_file(
    os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml")
) as schema:
    validate(config, schema)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/reduce.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/deploy.smk"
include: "workflow/rules/correlation.smk"
include: "workflow/rules/compress.smk"
include: "workflow/rules/evidence.smk"


# resources.<name>: a run kind of dssbt.grid, or a rule that is not a job rule (train, reduce), or default / train
RESOURCE_SECTIONS = ["default", "train", *grid.KINDS, "extract_lra"] + [
    r.name for r in workflow.rules if r.name not in grid.COMMANDS
]
for name in config["resources"]:
    if name not in RESOURCE_SECTIONS:
        raise ValueError(
            f"config: resources: {name!r} is not one of {RESOURCE_SECTIONS}"
        )


onstart:
    note_if_oversubscribed()


localrules:
    all,
    data_all,
    pretrain_all,
    baseline_all,
    reduce_all,
    retrain_all,
    tables,
    compress,
    ladder,
    lr_grid,


rule all:
    default_target: True
    input:
        "results/tables/accuracy.csv",
        "results/plots/accuracy_vs_order.png",
        "results/plots/hsv_decay.png",
        "results/plots/pretrained_vs_bt.png",
        DEPLOY_IN_ALL,
        "results/plots/learning_curves.png",
        ["results/tables/correlation.csv"] if CORRELATION else [],
        ["results/tables/correlation_design.csv"] if CORRELATION_STUDY else [],
        ["results/tables/compress.csv"] if COMPRESS else [],
        ["results/plots/ladder.png"] if LADDER_ROWS else [],
        ["results/tables/lr_choice.csv"] if PLAN.lr_rows() else [],


rule data_all:
    input:
        [prepared(task) for task in TASKS],


rule pretrain_all:
    input:
        kind_files("pretrain"),


rule baseline_all:
    input:
        kind_files(*[k.name for k in grid.kinds() if k.stage == "baseline"]),


rule reduce_all:
    input:
        kind_files("reduce"),


rule retrain_all:
    input:
        kind_files("retrain"),


rule tables:
    input:
        "results/tables/accuracy.csv",


rule compress:
    input:
        compress_target,
