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
        route=lambda wc: reduction_route(wc.method),
        hparams=lambda wc: eval_hparams_json(wc.task),
        device=config["device"],
    shell:
        "python -m dssbt reduce --checkpoint {input.model} --order {wildcards.order}"
        " --method {wildcards.method} --route {params.route} --data data/prepared/{wildcards.task}"
        " --hparams {params.hparams:q} --out {output.reduced} --report {output.report}"
        " --metrics {output.metrics} --threads {threads} --device {params.device} > {log} 2>&1"
