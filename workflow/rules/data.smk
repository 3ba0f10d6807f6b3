# Data: embedded tasks are generated offline in the official LRA formats; real LRA archives are downloaded
# (or taken from a path in the config); either way `dssbt prepare` reads them with the same readers.


rule generate:
    output:
        directory("data/raw/embedded/{task}"),
    log:
        "logs/generate/{task}.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **rule_resources("generate"),
    params:
        options=lambda wc: cli_options(config["data"][wc.task].get("generate")),
    shell:
        "python -m dssbt generate {wildcards.task} --out {output} {params.options} > {log} 2>&1"


rule download:
    output:
        "data/downloads/{filename}",
    log:
        "logs/download/{filename}.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **rule_resources("download"),
    params:
        archive=lambda wc: ARCHIVE_BY_FILE[wc.filename],
        options=lambda wc: cli_options(
            {
                k: v
                for k, v in config.get("downloads", {})
                .get(ARCHIVE_BY_FILE[wc.filename], {})
                .items()
                if k != "path"
            }
        ),
    shell:
        "python -m dssbt download {params.archive} --out {output} {params.options} > {log} 2>&1"


rule prepare:
    input:
        prepare_input,
    output:
        prepared("{task}"),
    log:
        "logs/prepare/{task}.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **rule_resources("prepare"),
    params:
        source=lambda wc: config["data"][wc.task]["source"],
        options=lambda wc: cli_options(config["data"][wc.task].get("prepare")),
        out_dir="data/prepared/{task}",
    shell:
        "python -m dssbt prepare {wildcards.task} --source {params.source} --input {input}"
        " --out {params.out_dir} {params.options} > {log} 2>&1"
