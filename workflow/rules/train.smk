# Training stages: the Skew-HiPPO baseline at every reduced order, the pretraining at full N (which is also the
# baseline's full-N reference row: trained once), and the retraining from the BT-reduced parameters.


rule pretrain:
    input:
        data=prepared("{task}"),
    output:
        model=run_dir("pretrain") + "model.pt",
        metrics=run_dir("pretrain") + "metrics.json",
        history=run_dir("pretrain") + "history.csv",
    log:
        "logs/pretrain/{task}/seed{seed}.log",
    benchmark:
        "benchmarks/pretrain/{task}/seed{seed}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]["train"]
    resources:
        **train_resources("pretrain"),
    params:
        hparams=lambda wc: hparams_json(wc.task, "train"),
        out_dir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        env=TRAIN_ENV,
    shell:
        "{params.env} python -m dssbt train --data data/prepared/{wildcards.task} --init skew_hippo"
        " --seed {wildcards.seed} --hparams {params.hparams:q} --out-dir {params.out_dir}"
        " --threads {threads} --device {params.device} > {log} 2>&1"


rule train_baseline:
    input:
        data=prepared("{task}"),
    output:
        model=run_dir("skew_hippo_r{order}") + "model.pt",
        metrics=run_dir("skew_hippo_r{order}") + "metrics.json",
        history=run_dir("skew_hippo_r{order}") + "history.csv",
    log:
        "logs/train_baseline/{task}/seed{seed}_r{order}.log",
    benchmark:
        "benchmarks/train_baseline/{task}/seed{seed}_r{order}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]["train"]
    resources:
        **train_resources("train_baseline"),
    params:
        hparams=lambda wc: hparams_json(wc.task, "train"),
        out_dir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        env=TRAIN_ENV,
    shell:
        "{params.env} python -m dssbt train --data data/prepared/{wildcards.task} --init skew_hippo"
        " --order {wildcards.order} --seed {wildcards.seed} --hparams {params.hparams:q}"
        " --out-dir {params.out_dir} --threads {threads} --device {params.device} > {log} 2>&1"


rule retrain:
    input:
        data=prepared("{task}"),
        reduced=run_dir("{method}_r{order}") + "reduced.pt",
    output:
        model=run_dir("{method}_init_r{order}") + "model.pt",
        metrics=run_dir("{method}_init_r{order}") + "metrics.json",
        history=run_dir("{method}_init_r{order}") + "history.csv",
    log:
        "logs/retrain/{task}/seed{seed}_{method}_r{order}.log",
    benchmark:
        "benchmarks/retrain/{task}/seed{seed}_{method}_r{order}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]["train"]
    resources:
        **train_resources("retrain"),
    params:
        hparams=lambda wc: hparams_json(wc.task, "retrain"),
        out_dir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        env=TRAIN_ENV,
    shell:
        "{params.env} python -m dssbt train --data data/prepared/{wildcards.task} --init from_reduced"
        " --reduced {input.reduced} --order {wildcards.order} --seed {wildcards.seed}"
        " --hparams {params.hparams:q} --out-dir {params.out_dir} --threads {threads}"
        " --device {params.device} > {log} 2>&1"


# The same two training stages for orders chosen per layer by tolerance (see rule choose_orders).


rule train_baseline_tol:
    input:
        data=prepared("{task}"),
        orders=layer_orders_file(),
    output:
        model=run_dir("skew_hippo_rtol{tol}") + "model.pt",
        metrics=run_dir("skew_hippo_rtol{tol}") + "metrics.json",
        history=run_dir("skew_hippo_rtol{tol}") + "history.csv",
    log:
        "logs/train_baseline/{task}/seed{seed}_rtol{tol}.log",
    benchmark:
        "benchmarks/train_baseline/{task}/seed{seed}_rtol{tol}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]["train"]
    resources:
        **train_resources("train_baseline"),
    params:
        hparams=lambda wc: hparams_json(wc.task, "train"),
        out_dir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        env=TRAIN_ENV,
    shell:
        "{params.env} python -m dssbt train --data data/prepared/{wildcards.task} --init skew_hippo"
        " --layer-orders {input.orders} --seed {wildcards.seed} --hparams {params.hparams:q}"
        " --out-dir {params.out_dir} --threads {threads} --device {params.device} > {log} 2>&1"


rule retrain_tol:
    input:
        data=prepared("{task}"),
        orders=layer_orders_file(),
        reduced=run_dir("{method}_rtol{tol}") + "reduced.pt",
    output:
        model=run_dir("{method}_init_rtol{tol}") + "model.pt",
        metrics=run_dir("{method}_init_rtol{tol}") + "metrics.json",
        history=run_dir("{method}_init_rtol{tol}") + "history.csv",
    log:
        "logs/retrain/{task}/seed{seed}_{method}_rtol{tol}.log",
    benchmark:
        "benchmarks/retrain/{task}/seed{seed}_{method}_rtol{tol}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]["train"]
    resources:
        **train_resources("retrain"),
    params:
        hparams=lambda wc: hparams_json(wc.task, "retrain"),
        out_dir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        env=TRAIN_ENV,
    shell:
        "{params.env} python -m dssbt train --data data/prepared/{wildcards.task} --init from_reduced"
        " --reduced {input.reduced} --layer-orders {input.orders} --seed {wildcards.seed}"
        " --hparams {params.hparams:q} --out-dir {params.out_dir} --threads {threads}"
        " --device {params.device} > {log} 2>&1"
