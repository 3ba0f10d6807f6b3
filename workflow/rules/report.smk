# Tables and figures of the whole grid (cheap: script rules).


rule aggregate:
    input:
        metrics=PLAN.tabled("metrics.json"),
        predictions=PLAN.tabled("predictions.npz"),
    output:
        runs="results/tables/runs.csv",
        csv=report(
            "results/tables/accuracy.csv",
            caption="../report/accuracy.rst",
            category="Main grid",
            subcategory="Tables",
            labels={"table": "accuracy", "rows": "task, order, init"},
        ),
        md="results/tables/accuracy.md",
        tex="results/tables/accuracy.tex",
        methods=report(
            "results/tables/methods.md",
            caption="../report/methods.rst",
            category="Main grid",
            subcategory="Tables",
            labels={
                "table": "methods side by side",
                "rows": "task, order; one column per init",
            },
        ),
        differences=report(
            "results/tables/differences.csv",
            caption="../report/differences.rst",
            category="Main grid",
            subcategory="Tables",
            labels={
                "table": "paired differences",
                "rows": "task, order, init, baseline",
            },
        ),
        differences_md="results/tables/differences.md",
    log:
        "logs/aggregate.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **rule_resources("aggregate"),
    params:
        # the contrast and the power figure only: the evidence studies' sections (ladder, lr_grid) are not its input
        evidence={
            k: v
            for k, v in config["evidence"].items()
            if k not in ("ladder", "lr_grid")
        },
    script:
        "../scripts/aggregate.py"


rule plot:
    input:
        runs="results/tables/runs.csv",
        differences="results/tables/differences.csv",
        reports=all_hsv_reports(),
        histories=PLAN.tabled("history.csv", "train"),
    output:
        # each figure as [png, pdf]: the png in the report (a pdf twin with the same labels would replace it there)
        forest=[
            report(
                "results/plots/forest.png",
                caption="../report/forest.rst",
                category="Main grid",
                subcategory="Figures",
                labels={
                    "figure": "forest plot (main figure)",
                    "by": "task, comparison of the Holm family",
                },
            ),
            "results/plots/forest.pdf",
        ],
        accuracy=[
            report(
                "results/plots/accuracy_vs_order.png",
                caption="../report/accuracy_vs_order.rst",
                category="Main grid",
                subcategory="Figures",
                labels={
                    "figure": "accuracy vs order",
                    "by": "task, order, method; with and without retraining",
                },
            ),
            "results/plots/accuracy_vs_order.pdf",
        ],
        hsv=[
            report(
                "results/plots/hsv_decay.png",
                caption="../report/hsv_decay.rst",
                category="Main grid",
                subcategory="Figures",
                labels={"figure": "HSV decay", "by": "task, layer"},
            ),
            "results/plots/hsv_decay.pdf",
        ],
        scatter=[
            report(
                "results/plots/pretrained_vs_bt.png",
                caption="../report/pretrained_vs_bt.rst",
                category="Main grid",
                subcategory="Figures",
                labels={
                    "figure": "pretrained vs BT",
                    "by": "task, seed, order (one point each)",
                },
            ),
            "results/plots/pretrained_vs_bt.pdf",
        ],
        curves=[
            report(
                "results/plots/learning_curves.png",
                caption="../report/learning_curves.rst",
                category="Main grid",
                subcategory="Figures",
                labels={"figure": "learning curves", "by": "task, order, init"},
            ),
            "results/plots/learning_curves.pdf",
        ],
    log:
        "logs/plot.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **rule_resources("plot"),
    params:
        settings=config["plot"],
    script:
        "../scripts/plot.py"
