# Deployment (optional): export each model's recurrent step as ONNX, measure it at batch 1, tabulate and plot.
# Target: snakemake deploy. Part of `all` only with config `deploy: {enabled: true}`.

from dssbt.data import tasks as data_tasks

# The model files to export: per unidirectional single-sequence task and seed, every run of a kind of dssbt.grid
# marked deploy (the full-N model, the Skew-HiPPO baseline where on, each method's retrained model). Bidirectional
# tasks (their reverse direction needs the future) and dual tasks (two documents: Retrieval; dssbt.data.tasks)
# cannot run token by token: left out by design. (A list, not a function: `snakemake --lint` objects to functions beside rules.)
DEPLOY_MODELS = [
    kind.path(fields, "model.pt")
    for kind in grid.kinds("train")
    if kind.deploy
    for fields in PLAN.runs(kind)
    if not data_tasks.get(fields["task"]).dual
    and not json.loads(PLAN.hparams(fields["task"], "train"))["model"].get(
        "bidirectional", False
    )
]


DEPLOY = {
    "enabled": False,
    "subset": 100,
    "steps": 200,
    "repeats": 5,
    "precisions": ["fp32"],
} | config.get("deploy", {})
# each model is exported once per weight precision: fp32 as model.onnx, the others as model_<precision>.onnx
DEPLOY_SUFFIXES = ["" if p == "fp32" else f"_{p}" for p in DEPLOY["precisions"]]
deploy_weights = lambda wildcards: wildcards.prec.lstrip("_") or "fp32"
# results/runs/<task>/seed<s>/<run>/model.pt -> results/deploy/<task>/seed<s>/<run>/<name>
deploy_file = lambda model, name: os.path.join(
    os.path.dirname(model).replace("results/runs/", "results/deploy/", 1), name
)


DEPLOY_OUTPUTS = [
    "results/tables/deploy.csv",
    "results/tables/deploy.md",
    "results/plots/deploy_pareto.png",
]
# what rule all adds: the deploy outputs where enabled, nothing otherwise
DEPLOY_IN_ALL = DEPLOY_OUTPUTS if DEPLOY["enabled"] else []


localrules:
    deploy,


rule export_onnx:
    input:
        model="results/runs/{task}/seed{seed}/{run}/model.pt",
        data=prepared("{task}"),
    output:
        onnx="results/deploy/{task}/seed{seed}/{run}/model{prec}.onnx",
        json="results/deploy/{task}/seed{seed}/{run}/model{prec}.json",
    log:
        "logs/deploy/export/{task}/seed{seed}/{run}{prec}.log",
    wildcard_constraints:
        run=r"[A-Za-z0-9_.]+",
        prec=r"(_int8|_int16)?",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **rule_resources("export_onnx"),
    params:
        weights=deploy_weights,
    shell:
        "python -m dssbt export --model {input.model} --out {output.onnx} --weights {params.weights}"
        " --data data/prepared/{wildcards.task} > {log} 2>&1"


rule deploy_measure:
    input:
        model="results/runs/{task}/seed{seed}/{run}/model.pt",
        metrics="results/runs/{task}/seed{seed}/{run}/metrics.json",
        onnx="results/deploy/{task}/seed{seed}/{run}/model{prec}.onnx",
        json="results/deploy/{task}/seed{seed}/{run}/model{prec}.json",
        data=prepared("{task}"),
    output:
        "results/deploy/{task}/seed{seed}/{run}/measure{prec}.json",
    log:
        "logs/deploy/measure/{task}/seed{seed}/{run}{prec}.log",
    wildcard_constraints:
        run=r"[A-Za-z0-9_.]+",
        prec=r"(_int8|_int16)?",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **rule_resources("deploy_measure"),
    params:
        subset=DEPLOY["subset"],
        steps=DEPLOY["steps"],
        repeats=DEPLOY["repeats"],
    shell:
        "python -m dssbt deploy-measure --model {input.model} --onnx {input.onnx}"
        " --data data/prepared/{wildcards.task} --metrics {input.metrics} --run {wildcards.run}"
        " --subset {params.subset} --steps {params.steps} --repeats {params.repeats}"
        " --threads 1 --out {output} > {log} 2>&1"


rule deploy_table:
    input:
        rows=[
            deploy_file(m, f"measure{sfx}.json")
            for m in DEPLOY_MODELS
            for sfx in DEPLOY_SUFFIXES
        ],
    output:
        csv=report(
            "results/tables/deploy.csv",
            caption="../report/deploy.rst",
            category="Deployment",
            subcategory="Tables",
            labels={"table": "deploy", "rows": "task, seed, run (init and order)"},
        ),
        md="results/tables/deploy.md",
        plot=report(
            "results/plots/deploy_pareto.png",
            caption="../report/deploy.rst",
            category="Deployment",
            subcategory="Figures",
            labels={"figure": "accuracy vs latency", "by": "task, init, order"},
        ),
    log:
        "logs/deploy/table.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **rule_resources("deploy_table"),
    params:
        dpi=config["plot"]["dpi"],
    script:
        "../scripts/deploy_table.py"


rule deploy:
    input:
        DEPLOY_OUTPUTS,
