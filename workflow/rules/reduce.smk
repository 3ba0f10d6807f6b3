# Reduction of every DSS channel of a pretrained model (any method of dssbt.reduction.registry), and the reduced
# model's accuracy as it is. A per-layer order (tol0.3) first gets its orders chosen once per pretrained model
# (choose_orders), shared by every method, the baseline and the retraining at that order.


rule reduce:
    input:
        unpack(order_input),
        data=prepared("{task}"),
        model=run_dir("pretrain") + "model.pt",
    output:
        reduced=run_dir("reduce") + "reduced.pt",
        report=run_dir("reduce") + "report.json",
        metrics=run_dir("reduce") + "metrics.json",
    log:
        "logs/reduce/{task}/seed{seed}_{method}_r{order}.log",
    conda:
        CONDA_ENV
    threads: config["threads"]["reduce"]
    resources:
        **rule_resources("reduce"),
    params:
        route=config["reduction"]["route"],
        order=order_args,
        hparams=lambda wc: reduce_hparams_json(wc.task, wc.method),
        device=config["device"],
    shell:
        "python -m dssbt reduce --model {input.model} {params.order}"
        " --method {wildcards.method} --route {params.route} --data data/prepared/{wildcards.task}"
        " --hparams {params.hparams:q} --out {output.reduced} --report {output.report}"
        " --metrics-out {output.metrics} --threads {threads} --device {params.device} > {log} 2>&1"


rule choose_orders:
    input:
        model=run_dir("pretrain") + "model.pt",
    output:
        orders=orders_file(),
    log:
        "logs/choose_orders/{task}/seed{seed}_{order}.log",
    wildcard_constraints:
        order=r"[a-z]+[0-9][0-9.eE+-]*",
    conda:
        CONDA_ENV
    threads: config["threads"]["reduce"]
    resources:
        **rule_resources("choose_orders"),
    params:
        route=config["reduction"]["route"],
    shell:
        "python -m dssbt orders --model {input.model} --spec {wildcards.order} --route {params.route}"
        " --out {output.orders} --threads {threads} > {log} 2>&1"
