# Reduction of every DSS channel of a model (any method of dssbt.reduction.registry), and the reduced model's
# accuracy as it is: every reduce run of dssbt.grid (the main grid, the correlation snapshots, the compressibility
# budgets), one rule. A per-layer order (tol0.3) first gets its orders chosen once per pretrained model
# (choose_orders), shared by every method, the baseline and the retraining at that order.


rule reduce:
    input:
        unpack(job_input),
    output:
        reduced="results/{run}/reduced.pt",
        report="results/{run}/report.json",
        metrics="results/{run}/metrics.json",
        predictions="results/{run}/predictions.npz",
    log:
        "logs/reduce/{run}.log",
    wildcard_constraints:
        run=grid.folder_constraint("reduce"),
    conda:
        CONDA_ENV
    threads: config["threads"]["reduce"]
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
        gpu=job_gpu,
        gres=job_gres,
    params:
        route=config["reduction"]["route"],
        order=order_args,
        method=job_method,
        hparams=job_hparams,
        data=data_dir,
        device=config["device"],
    shell:
        "python -m dssbt reduce --model {input.start} {params.order}"
        " --method {params.method} --route {params.route} --data {params.data}"
        " --hparams {params.hparams:q} --out {output.reduced} --report {output.report}"
        " --metrics-out {output.metrics} --threads {threads} --device {params.device} > {log} 2>&1"


rule choose_orders:
    input:
        model=grid.KINDS["pretrain"].path({"task": "{task}", "seed": "{seed}"})
        + "model.pt",
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
