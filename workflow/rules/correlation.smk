# Budget-effect study (config correlation: {epochs, order, method}; it is NOT the paper's claim 3, since x and y
# both grow with the pretraining epochs): snapshots of the pretraining (the
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
            labels={"table": "budget effect (snapshots)", "rows": "task"},
        ),
        plot=[
            report(
                "results/plots/correlation.png",
                caption="../report/correlation.rst",
                category="Correlation",
                subcategory="Figures",
                labels={
                    "figure": "budget effect: snapshot vs BT-init accuracy",
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


# The correlation design (config correlation_study): k = seeds x knob values independent full-length pretrainings
# per task (kinds corr_pretrain, corr_reduce, corr_retrain of dssbt.grid: rules train and reduce), each reduced at
# one order and retrained with every retraining seed; x = the pretrained model's validation accuracy, y = the
# retrained model's test accuracy; Spearman / Pearson with cluster-bootstrap intervals over pretrainings and a
# MixedLM slope (dssbt.correlation.write_correlation_design). Target: snakemake correlation_design.


rule correlation_design:
    input:
        pretrained=correlation_design_pairs()[0],
        retrained=correlation_design_pairs()[1],
    output:
        points="results/tables/correlation_design_points.csv",
        table=report(
            "results/tables/correlation_design.csv",
            caption="../report/correlation_design.rst",
            category="Correlation",
            subcategory="Tables",
            labels={"table": "correlation design", "rows": "task"},
        ),
        plot=[
            report(
                "results/plots/correlation_design.png",
                caption="../report/correlation_design.rst",
                category="Correlation",
                subcategory="Figures",
                labels={
                    "figure": "pretrained val vs retrained test accuracy",
                    "by": "task, pretraining, retraining seed",
                },
            ),
            "results/plots/correlation_design.pdf",
        ],
    log:
        "logs/correlation_design.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **rule_resources("correlation_design"),
    params:
        settings=config["plot"],
        n_resamples=(CORRELATION_STUDY or {}).get("n_resamples", 2000),
        knob=(CORRELATION_STUDY or {}).get("knob"),
    script:
        "../scripts/correlation_design.py"
