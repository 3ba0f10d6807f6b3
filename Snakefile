# dssbt: S4/DSS models compressed by balanced truncation (Ezoe & Sato 2024), as a Snakemake workflow.
# Stages: data -> pretrain (full N) -> reduce (every method, every order) -> retrain, beside the Skew-HiPPO baseline
# at every order; then tables and plots. Targets: all (default), data_all, pretrain_all, baseline_all, reduce_all,
# retrain_all, tables. {order} is r (8) or a per-layer spec (tol0.3); {method} a name of dssbt.reduction.registry.
# Paths (run folders: dssbt.runs.run_name):
#   data/raw/embedded/{task}/                       generated embedded data, official LRA formats (rule generate)
#   data/downloads/{file}                           real LRA archives (rule download)
#   data/prepared/{task}/{train,val,test}.npz       prepared splits + meta.json (rule prepare)
#   results/runs/{task}/seed{s}/pretrain/           full-N model: model.pt, metrics.json, history.csv (pretrain)
#   results/runs/{task}/seed{s}/skew_hippo_r{order}/  order-r Skew-HiPPO model, same files (train_baseline;
#                                                   config controls: skew_hippo)
#   results/runs/{task}/seed{s}/skew_hippo_equal_r{order}/  the same for pretraining + retraining epochs
#                                                   (train_equal_budget; config controls: skew_hippo_equal)
#   results/runs/{task}/seed{s}/orders_{order}.json   per-layer orders of a per-layer spec (choose_orders)
#   results/runs/{task}/seed{s}/{method}_r{order}/    reduced.pt, report.json, metrics.json (reduce)
#   results/runs/{task}/seed{s}/{method}_init_r{order}/  retrained from the reduced model (retrain)
#   results/compress/{task}/seed{s}/{variant}/      compressibility study (config compressibility: compress.smk)
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
        ["results/tables/compress.csv"] if COMPRESS else [],


rule data_all:
    input:
        [prepared(task) for task in TASKS],


rule pretrain_all:
    input:
        expand_runs("pretrain", "metrics.json"),


rule baseline_all:
    input:
        [
            f
            for m in baseline_methods()
            for f in expand_runs("baseline", "metrics.json", method=m)
        ],


rule reduce_all:
    input:
        expand_runs("reduce", "metrics.json"),


rule retrain_all:
    input:
        expand_runs("retrain", "metrics.json"),


rule tables:
    input:
        "results/tables/accuracy.csv",


rule compress:
    input:
        compress_target,
