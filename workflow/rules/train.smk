# Every training run, one rule: the pretraining at full N, the Skew-HiPPO baseline and its equal-budget control at
# every order, the full-N model trained on (full_continued), the retraining from the reduced parameters, and the
# study arms (snapshots, compressibility variants). Which one a job is comes from its folder ({run}), a kind of
# dssbt.grid: its parent, hyper-parameters, start and resources (resources.<kind>) are looked up there.


rule train:
    input:
        unpack(job_input),
    output:
        model="results/{run}/model.pt",
        metrics="results/{run}/metrics.json",
        history="results/{run}/history.csv",
        predictions="results/{run}/predictions.npz",
    log:
        "logs/train/{run}.log",
    benchmark:
        "benchmarks/train/{run}.tsv"
    wildcard_constraints:
        run=grid.folder_constraint("train"),
    conda:
        CONDA_ENV
    threads: config["threads"]["train"]
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime,
        gpu=job_gpu,
        gres=job_gres,
    params:
        hparams=job_hparams,
        init=train_start,
        order=order_args,
        seed=job_seed,
        data=data_dir,
        out_dir=out_dir,
        device=config["device"],
        env=TRAIN_ENV,
        curves=curves_arg,
    shell:
        "{params.env} python -m dssbt train --data {params.data} {params.init} {params.order}"
        " --seed {params.seed} --hparams {params.hparams:q} --out {params.out_dir}{params.curves}"
        " --threads {threads} --device {params.device} > {log} 2>&1"
