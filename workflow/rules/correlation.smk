# Within-task correlation study (config correlation: {epochs, order, method}): snapshots of the pretraining (the
# same run stopped after epoch e), each reduced at one order and retrained (kinds snapshot, reduce_snapshot,
# retrain_snapshot of dssbt.grid: rules train and reduce); then per-task Pearson and Spearman
# coefficients with bootstrap intervals (dssbt.correlation). The final pretraining and its retrained model of the
# main grid are one more point per task and seed.


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
