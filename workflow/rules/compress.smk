# The compressibility study (config compressibility: {keep, hsv_reg, reduce_during_epochs, method}; dssbt.compress):
# pretraining variants (plain = the main grid's pretraining; hsvreg<lambda>: with the Hankel nuclear-norm penalty),
# each reduced to global state budgets (budget:<f> orders) and retrained; and in-training reduction runs
# (shrink<f>) over the same total epochs. Its runs are kinds of dssbt.grid (compress_pretrain, compress_reduce,
# compress_retrain: rules train and reduce); here are its orders, its table and the frontier (dssbt.frontier).


rule compress_orders:
    input:
        model=compress_orders_model,
    output:
        orders="results/compress/{task}/seed{seed}/{variant}/orders_budget{keep}.json",
    log:
        "logs/compress_orders/{task}/seed{seed}_{variant}_budget{keep}.log",
    wildcard_constraints:
        variant=r"plain|hsvreg[0-9.eE+-]+",
        keep=r"[0-9][0-9.eE+-]*",
    conda:
        CONDA_ENV
    threads: config["threads"]["reduce"]
    resources:
        **rule_resources("compress_orders"),
    params:
        route=config["reduction"]["route"],
    shell:
        "python -m dssbt orders --model {input.model} --spec budget:{wildcards.keep} --route {params.route}"
        " --out {output.orders} --threads {threads} > {log} 2>&1"


rule compress_orders_allocated:
    # the same budget split over layers by a method's own scores (registry Method.allocation: LAST, top-energy)
    input:
        model=compress_orders_model,
    output:
        orders="results/compress/{task}/seed{seed}/{variant}/orders_budget{keep}_{allocation}.json",
    log:
        "logs/compress_orders/{task}/seed{seed}_{variant}_budget{keep}_{allocation}.log",
    wildcard_constraints:
        variant=r"plain|hsvreg[0-9.eE+-]+",
        keep=r"[0-9][0-9.eE+-]*",
        allocation=r"last|h2energy",
    conda:
        CONDA_ENV
    threads: config["threads"]["reduce"]
    resources:
        **rule_resources("compress_orders_allocated"),
    params:
        route=config["reduction"]["route"],
    shell:
        "python -m dssbt orders --model {input.model} --spec budget:{wildcards.keep} --route {params.route}"
        " --allocation {wildcards.allocation} --out {output.orders} --threads {threads} > {log} 2>&1"


rule compress_table:
    input:
        metrics=COMPRESS_ROWS[1],
        reports=COMPRESS_ROWS[2],
        predictions=COMPRESS_PREDICTIONS,
    output:
        csv=report(
            "results/tables/compress.csv",
            caption="../report/compress.rst",
            category="Compressibility",
            subcategory="Tables",
            labels={
                "table": "compressibility",
                "rows": "task, variant, kept fraction",
            },
        ),
        md="results/tables/compress.md",
        hsv=[
            report(
                "results/plots/compress_hsv_decay.png",
                caption="../report/compress.rst",
                category="Compressibility",
                subcategory="Figures",
                labels={"figure": "HSV decay by variant", "by": "task, variant"},
            ),
            "results/plots/compress_hsv_decay.pdf",
        ],
        # the compression frontier (dssbt.frontier): every method minus BT at each budget, and the frontier plot
        frontier=report(
            "results/tables/frontier_differences.csv",
            caption="../report/compress.rst",
            category="Compressibility",
            subcategory="Tables",
            labels={
                "table": "frontier differences",
                "rows": "task, budget, method, retraining",
            },
        ),
        frontier_md="results/tables/frontier_differences.md",
        frontier_plot=[
            report(
                "results/plots/frontier.png",
                caption="../report/compress.rst",
                category="Compressibility",
                subcategory="Figures",
                labels={
                    "figure": "compression frontier",
                    "by": "task, method, retraining",
                },
            ),
            "results/plots/frontier.pdf",
        ],
    log:
        "logs/compress_table.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **rule_resources("compress_table"),
    params:
        rows=COMPRESS_ROWS[0],
        settings=config["plot"],
    script:
        "../scripts/compress.py"
