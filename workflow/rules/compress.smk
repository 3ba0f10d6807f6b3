# The compressibility study (config compressibility: {keep, hsv_reg, reduce_during_epochs, method}; dssbt.compress):
# pretraining variants (plain = the main grid's pretraining; hsvreg<lambda>: with the Hankel nuclear-norm penalty),
# each reduced to global state budgets (budget:<f> orders) and retrained; and in-training reduction runs
# (shrink<f>) over the same total epochs. Folders: results/compress/{task}/seed{seed}/{variant}/.


use rule pretrain as compress_pretrain with:
    output:
        model=compress_dir() + "pretrain/model.pt",
        metrics=compress_dir() + "pretrain/metrics.json",
        history=compress_dir() + "pretrain/history.csv",
    log:
        "logs/compress_pretrain/{task}/seed{seed}_{variant}.log",
    benchmark:
        "benchmarks/compress_pretrain/{task}/seed{seed}_{variant}.tsv"
    wildcard_constraints:
        variant=r"(hsvreg|shrink)[0-9.eE+-]+",
    resources:
        **rule_resources("compress_pretrain"),
    params:
        hparams=compress_pretrain_hparams,
        init="--init skew_hippo",
        order="",
        out_dir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        env=TRAIN_ENV,


rule compress_orders:
    input:
        model=compress_pretrained,
    output:
        orders=compress_dir() + "orders_budget{keep}.json",
    log:
        "logs/compress_orders/{task}/seed{seed}_{variant}_budget{keep}.log",
    wildcard_constraints:
        variant=r"plain|hsvreg[0-9.eE+-]+",
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


use rule reduce as compress_reduce with:
    input:
        orders=compress_dir() + "orders_budget{keep}.json",
        data=prepared("{task}"),
        model=compress_pretrained,
    output:
        reduced=compress_dir() + "{method}_rbudget{keep}/reduced.pt",
        report=compress_dir() + "{method}_rbudget{keep}/report.json",
        metrics=compress_dir() + "{method}_rbudget{keep}/metrics.json",
    log:
        "logs/compress_reduce/{task}/seed{seed}_{variant}_{method}_budget{keep}.log",
    wildcard_constraints:
        variant=r"plain|hsvreg[0-9.eE+-]+",
    resources:
        **rule_resources("compress_reduce"),
    params:
        route=config["reduction"]["route"],
        order=lambda wc, input: f"--layer-orders {input.orders}",
        hparams=lambda wc: reduce_hparams_json(wc.task, wc.method),
        device=config["device"],


use rule retrain as compress_retrain with:
    input:
        orders=compress_dir() + "orders_budget{keep}.json",
        data=prepared("{task}"),
        reduced=compress_dir() + "{method}_rbudget{keep}/reduced.pt",
    output:
        model=compress_dir() + "{method}_init_rbudget{keep}/model.pt",
        metrics=compress_dir() + "{method}_init_rbudget{keep}/metrics.json",
        history=compress_dir() + "{method}_init_rbudget{keep}/history.csv",
    log:
        "logs/compress_retrain/{task}/seed{seed}_{variant}_{method}_budget{keep}.log",
    benchmark:
        "benchmarks/compress_retrain/{task}/seed{seed}_{variant}_{method}_budget{keep}.tsv"
    wildcard_constraints:
        variant=r"plain|hsvreg[0-9.eE+-]+",
    resources:
        **rule_resources("compress_retrain"),
    params:
        hparams=lambda wc: hparams_json(wc.task, "retrain"),
        init=lambda wc, input: f"--init from_reduced --model {input.reduced}",
        order=lambda wc, input: f"--layer-orders {input.orders}",
        out_dir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        env=TRAIN_ENV,


rule compress_table:
    input:
        metrics=compress_rows()[1],
        reports=compress_rows()[2],
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
    log:
        "logs/compress_table.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **rule_resources("compress_table"),
    params:
        rows=compress_rows()[0],
        settings=config["plot"],
    script:
        "../scripts/compress.py"
