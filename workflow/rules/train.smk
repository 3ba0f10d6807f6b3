# Training stages, one rule each, one shape: the pretraining at full N (also the baseline's full-N reference row:
# trained once), the Skew-HiPPO baseline at every order, its equal-budget control (trained for the pretraining +
# retraining epochs, where config controls lists skew_hippo_equal), the full-N model trained for the retraining
# epochs more (full_continued), and the retraining from the reduced parameters. An order is
# an integer r or a per-layer spec (tol0.3); order_input / order_args add the orders file and the flag.


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
        **rule_resources("pretrain"),
    params:
        hparams=lambda wc: hparams_json(wc.task, "pretrain"),
        init="--init skew_hippo",
        order="",
        out_dir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        env=TRAIN_ENV,
    shell:
        "{params.env} python -m dssbt train --data data/prepared/{wildcards.task} {params.init} {params.order}"
        " --seed {wildcards.seed} --hparams {params.hparams:q} --out {params.out_dir}"
        " --threads {threads} --device {params.device} > {log} 2>&1"


use rule pretrain as train_baseline with:
    input:
        unpack(order_input),
        data=prepared("{task}"),
    output:
        model=run_dir("baseline", "skew_hippo") + "model.pt",
        metrics=run_dir("baseline", "skew_hippo") + "metrics.json",
        history=run_dir("baseline", "skew_hippo") + "history.csv",
    log:
        "logs/train_baseline/{task}/seed{seed}_r{order}.log",
    benchmark:
        "benchmarks/train_baseline/{task}/seed{seed}_r{order}.tsv"
    resources:
        **rule_resources("train_baseline"),
    params:
        hparams=lambda wc: hparams_json(wc.task, "train"),
        init="--init skew_hippo",
        order=order_args,
        out_dir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        env=TRAIN_ENV,


use rule train_baseline as train_equal_budget with:
    output:
        model=run_dir("baseline", "skew_hippo_equal") + "model.pt",
        metrics=run_dir("baseline", "skew_hippo_equal") + "metrics.json",
        history=run_dir("baseline", "skew_hippo_equal") + "history.csv",
    log:
        "logs/train_equal_budget/{task}/seed{seed}_r{order}.log",
    benchmark:
        "benchmarks/train_equal_budget/{task}/seed{seed}_r{order}.tsv"
    resources:
        **rule_resources("train_equal_budget"),
    params:
        hparams=lambda wc: equal_budget_hparams_json(wc.task),
        init="--init skew_hippo --method skew_hippo_equal",
        order=order_args,
        out_dir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        env=TRAIN_ENV,


use rule pretrain as continue_full with:
    input:
        data=prepared("{task}"),
        model=run_dir("pretrain") + "model.pt",
    output:
        model=run_dir("continue", "full") + "model.pt",
        metrics=run_dir("continue", "full") + "metrics.json",
        history=run_dir("continue", "full") + "history.csv",
    log:
        "logs/continue_full/{task}/seed{seed}.log",
    benchmark:
        "benchmarks/continue_full/{task}/seed{seed}.tsv"
    resources:
        **rule_resources("continue_full"),
    params:
        hparams=lambda wc: hparams_json(wc.task, "retrain"),
        init=lambda wc, input: f"--init from_pretrained --model {input.model}",
        order="",
        out_dir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        env=TRAIN_ENV,


use rule pretrain as retrain with:
    input:
        unpack(order_input),
        data=prepared("{task}"),
        reduced=run_dir("reduce") + "reduced.pt",
    output:
        model=run_dir("retrain") + "model.pt",
        metrics=run_dir("retrain") + "metrics.json",
        history=run_dir("retrain") + "history.csv",
    log:
        "logs/retrain/{task}/seed{seed}_{method}_r{order}.log",
    benchmark:
        "benchmarks/retrain/{task}/seed{seed}_{method}_r{order}.tsv"
    resources:
        **rule_resources("retrain"),
    params:
        hparams=lambda wc: hparams_json(wc.task, "retrain"),
        init=lambda wc, input: f"--init from_reduced --model {input.reduced}",
        order=order_args,
        out_dir=lambda wc, output: os.path.dirname(output.model),
        device=config["device"],
        env=TRAIN_ENV,
