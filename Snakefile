# dssbt: S4/DSS models compressed by balanced truncation (Ezoe & Sato 2024), as a Snakemake workflow.
# Stages: data -> pretrain (full N) -> reduce (BT, every order) -> retrain (BT-init), beside the Skew-HiPPO
# baseline at every order; then tables and plots. Targets: all (default), data_all, pretrain_all, baseline_all,
# reduce_all, retrain_all, tables.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/reduce.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/deploy.smk"


localrules:
    all,
    data_all,
    pretrain_all,
    baseline_all,
    reduce_all,
    retrain_all,
    tables,


rule all:
    default_target: True
    input:
        "results/tables/accuracy.csv",
        "results/plots/accuracy_vs_order.png",
        "results/plots/hsv_decay.png",
        "results/plots/pretrained_vs_bt.png",
        DEPLOY_IN_ALL,


rule data_all:
    input:
        [prepared(task) for task in TASKS],


rule pretrain_all:
    input:
        expand_runs("pretrain", "metrics.json", orders=False),


rule baseline_all:
    input:
        expand_runs("skew_hippo_r{order}", "metrics.json"),


rule reduce_all:
    input:
        expand_runs("{method}_r{order}", "metrics.json"),


rule retrain_all:
    input:
        expand_runs("{method}_init_r{order}", "metrics.json"),


rule tables:
    input:
        "results/tables/accuracy.csv",
