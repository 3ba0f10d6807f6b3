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


# Tasks read from the LRA release (ListOps, Retrieval, Pathfinder, Path-X): one extract job reads the ~7.7 GB
# archive once for all of them, instead of one pass per prepare job. LRA_RELEASE: a given path, else the download;
# a given folder is an extracted release, read as it is.
LRA_RELEASE = (
    config.get("downloads", {}).get("lra", {}).get("path")
    or f"data/downloads/{ARCHIVES['lra'].filename}"
)
LRA_EXTRACTED = [
    t
    for t in TASKS
    if config["data"][t]["source"] == "lra"
    and TASK_ARCHIVE[t] == "lra"
    and not os.path.isdir(LRA_RELEASE)
]


if LRA_EXTRACTED:

    rule extract_lra:
        input:
            LRA_RELEASE,
        output:
            [directory(f"data/extracted/lra/{t}") for t in LRA_EXTRACTED],
        log:
            "logs/extract/lra.log",
        conda:
            CONDA_ENV
        threads: 1
        resources:
            **rule_resources("extract_lra"),
        params:
            tasks=" ".join(LRA_EXTRACTED),
        shell:
            "python -m dssbt extract --input {input} --tasks {params.tasks}"
            " --out data/extracted/lra > {log} 2>&1"


rule prepare:
    input:
        # the task's extracted folder for the LRA release, else the generated folder or the archive
        lambda wc: (
            f"data/extracted/lra/{wc.task}"
            if wc.task in LRA_EXTRACTED
            else prepare_input(wc)
        ),
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
