# Tables and figures of the whole grid (cheap: script rules).


rule aggregate:
    input:
        metrics=PLAN.tabled("metrics.json"),
    output:
        runs="results/tables/runs.csv",
        csv=report(
            "results/tables/accuracy.csv",
            caption="../report/accuracy.rst",
            category="Tables",
        ),
        md="results/tables/accuracy.md",
        tex="results/tables/accuracy.tex",
        methods="results/tables/methods.md",
        differences="results/tables/differences.csv",
    log:
        "logs/aggregate.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **rule_resources("aggregate"),
    script:
        "../scripts/aggregate.py"


rule plot:
    input:
        runs="results/tables/runs.csv",
        reports=all_hsv_reports(),
        histories=PLAN.tabled("history.csv", "train"),
    output:
        accuracy=report(
            multiext("results/plots/accuracy_vs_order", ".png", ".pdf"),
            caption="../report/accuracy_vs_order.rst",
            category="Figures",
        ),
        hsv=report(
            multiext("results/plots/hsv_decay", ".png", ".pdf"),
            caption="../report/hsv_decay.rst",
            category="Figures",
        ),
        scatter=report(
            multiext("results/plots/pretrained_vs_bt", ".png", ".pdf"),
            caption="../report/pretrained_vs_bt.rst",
            category="Figures",
        ),
        curves=report(
            multiext("results/plots/learning_curves", ".png", ".pdf"),
            caption="../report/learning_curves.rst",
            category="Figures",
        ),
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
