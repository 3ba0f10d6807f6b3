# Balanced truncation of every DSS channel of a pretrained model, and the reduced model's accuracy as it is.


rule reduce:
    input:
        data=prepared("{task}"),
        model=run_dir("pretrain") + "model.pt",
    output:
        reduced=run_dir("{method}_r{order}") + "reduced.pt",
        report=run_dir("{method}_r{order}") + "report.json",
        metrics=run_dir("{method}_r{order}") + "metrics.json",
    log:
        "logs/reduce/{task}/seed{seed}_{method}_r{order}.log",
    conda:
        CONDA_ENV
    threads: config["threads"]["reduce"]
    resources:
        **rule_resources("reduce"),
    params:
        route=config["reduction"]["route"],
        hparams=lambda wc: reduce_hparams_json(wc.task, wc.method),
        device=config["device"],
    shell:
        "python -m dssbt reduce --checkpoint {input.model} --order {wildcards.order}"
        " --method {wildcards.method} --route {params.route} --data data/prepared/{wildcards.task}"
        " --hparams {params.hparams:q} --out {output.reduced} --report {output.report}"
        " --metrics {output.metrics} --threads {threads} --device {params.device} > {log} 2>&1"


# Orders by tolerance ("tol:<x>" in orders): one order per layer, the smallest whose discarded HSVs carry at most
# x of the layer's HSV energy (sum of squares); chosen once per pretrained model, shared by every method and the
# baseline.


rule choose_orders:
    input:
        model=run_dir("pretrain") + "model.pt",
    output:
        orders=layer_orders_file(),
    log:
        "logs/choose_orders/{task}/seed{seed}_tol{tol}.log",
    conda:
        CONDA_ENV
    threads: config["threads"]["reduce"]
    resources:
        **rule_resources("reduce"),
    params:
        route=config["reduction"]["route"],
    shell:
        "python -m dssbt orders --checkpoint {input.model} --tol {wildcards.tol} --route {params.route}"
        " --out {output.orders} --threads {threads} > {log} 2>&1"


rule reduce_tol:
    input:
        data=prepared("{task}"),
        model=run_dir("pretrain") + "model.pt",
        orders=layer_orders_file(),
    output:
        reduced=run_dir("{method}_rtol{tol}") + "reduced.pt",
        report=run_dir("{method}_rtol{tol}") + "report.json",
        metrics=run_dir("{method}_rtol{tol}") + "metrics.json",
    log:
        "logs/reduce/{task}/seed{seed}_{method}_rtol{tol}.log",
    conda:
        CONDA_ENV
    threads: config["threads"]["reduce"]
    resources:
        **rule_resources("reduce"),
    params:
        route=config["reduction"]["route"],
        hparams=lambda wc: reduce_hparams_json(wc.task, wc.method),
        device=config["device"],
    shell:
        "python -m dssbt reduce --checkpoint {input.model} --layer-orders {input.orders}"
        " --method {wildcards.method} --route {params.route} --data data/prepared/{wildcards.task}"
        " --hparams {params.hparams:q} --out {output.reduced} --report {output.report}"
        " --metrics {output.metrics} --threads {threads} --device {params.device} > {log} 2>&1"
