# Within-task correlation study (config correlation: {epochs, order, method}): snapshots of the pretraining (the
# same run stopped after epoch e), each reduced at one order and retrained; then per-task Pearson and Spearman
# coefficients with bootstrap intervals (dssbt.correlation). The final pretraining and its retrained model of the
# main grid are one more point per task and seed.


use rule pretrain as snapshot with:
    output:
        model=run_dir("snapshot", "skew_hippo", "{epoch}") + "model.pt",
        metrics=run_dir("snapshot", "skew_hippo", "{epoch}") + "metrics.json",
        history=run_dir("snapshot", "skew_hippo", "{epoch}") + "history.csv",
    log:
        "logs/snapshot/{task}/seed{seed}_e{epoch}.log",
    benchmark:
        "benchmarks/snapshot/{task}/seed{seed}_e{epoch}.tsv"
    resources:
        **rule_resources("snapshot"),
    params:
        hparams=lambda wc: hparams_json(wc.task, "pretrain"),
        init=lambda wc: f"--init skew_hippo --stop-after {wc.epoch}",
        order="",
        out_dir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        env=TRAIN_ENV,


use rule reduce as reduce_snapshot with:
    input:
        data=prepared("{task}"),
        model=run_dir("snapshot", "skew_hippo", "{epoch}") + "model.pt",
    output:
        reduced=snapshot_run_dir("reduce") + "reduced.pt",
        report=snapshot_run_dir("reduce") + "report.json",
        metrics=snapshot_run_dir("reduce") + "metrics.json",
    log:
        "logs/reduce_snapshot/{task}/seed{seed}_e{epoch}_{method}_r{order}.log",
    resources:
        **rule_resources("reduce_snapshot"),


use rule retrain as retrain_snapshot with:
    input:
        data=prepared("{task}"),
        reduced=snapshot_run_dir("reduce") + "reduced.pt",
    output:
        model=snapshot_run_dir("retrain") + "model.pt",
        metrics=snapshot_run_dir("retrain") + "metrics.json",
        history=snapshot_run_dir("retrain") + "history.csv",
    log:
        "logs/retrain_snapshot/{task}/seed{seed}_e{epoch}_{method}_r{order}.log",
    benchmark:
        "benchmarks/retrain_snapshot/{task}/seed{seed}_e{epoch}_{method}_r{order}.tsv"
    resources:
        **rule_resources("retrain_snapshot"),


rule correlation:
    input:
        pretrained=correlation_pairs()[0],
        retrained=correlation_pairs()[1],
    output:
        points="results/tables/correlation_points.csv",
        table=report(
            "results/tables/correlation.csv",
            caption="../report/correlation.rst",
            category="Correlation",
            subcategory="Tables",
            labels={"table": "correlation", "rows": "task"},
        ),
        plot=[
            report(
                "results/plots/correlation.png",
                caption="../report/correlation.rst",
                category="Correlation",
                subcategory="Figures",
                labels={
                    "figure": "pretrained vs BT-init accuracy",
                    "by": "task, seed, snapshot epoch",
                },
            ),
            "results/plots/correlation.pdf",
        ],
    log:
        "logs/correlation.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **rule_resources("correlation"),
    params:
        settings=config["plot"],
    script:
        "../scripts/correlation.py"
