# The evidence studies that make budgets fair (config evidence.ladder, evidence.lr_grid; dssbt.ladder). Their runs
# are kinds of dssbt.grid (ladder_*, lr_*: rules train and reduce); here are their tables, plot and targets.
# ladder: both primary arms at m x the main grid's epochs (x1: the main grid's runs) -> accuracy against cumulative
# epochs, steps and wall time, and BT-init's paired lead per multiplier. lr_grid: lr and ssm_lr x factor -> mean
# validation accuracy per factor and the chosen factor (written into the study preset by hand: no re-planning).


rule ladder_table:
    input:
        metrics=LADDER_FILES,
        predictions=[f.replace("metrics.json", "predictions.npz") for f in LADDER_LAST],
        meta=[f"data/prepared/{task}/meta.json" for task in TASKS],
    output:
        points="results/tables/ladder_points.csv",
        summary=report(
            "results/tables/ladder.csv",
            caption="../report/ladder.rst",
            category="Evidence",
            subcategory="Tables",
            labels={"table": "budget ladder", "rows": "task, multiplier, arm"},
        ),
        differences="results/tables/ladder_differences.csv",
        trend="results/tables/ladder_trend.csv",
        md="results/tables/ladder.md",
        plot=[
            report(
                "results/plots/ladder.png",
                caption="../report/ladder.rst",
                category="Evidence",
                subcategory="Figures",
                labels={
                    "figure": "accuracy against budget",
                    "by": "task, arm, multiplier",
                },
            ),
            "results/plots/ladder.pdf",
        ],
    log:
        "logs/ladder_table.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **rule_resources("ladder_table"),
    params:
        rows=PLAN.ladder_rows(),
        settings=config["plot"],
    script:
        "../scripts/ladder.py"


rule lr_grid_table:
    input:
        metrics=[r["metrics"] for r in PLAN.lr_rows()],
    output:
        table="results/tables/lr_grid.csv",
        choice="results/tables/lr_choice.csv",
    log:
        "logs/lr_grid_table.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **rule_resources("lr_grid_table"),
    params:
        rows=PLAN.lr_rows(),
    script:
        "../scripts/lr_grid.py"


rule ladder:
    input:
        ladder_target,


rule lr_grid:
    input:
        lr_grid_target,
