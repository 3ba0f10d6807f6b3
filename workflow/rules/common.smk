# Config, wildcards and the input / params / resources functions of the job rules. What makes one run distinct
# (its folder, parent, hyper-parameters, switch, table key) is its kind in dssbt.grid; these functions look it up.
# No model code, no math: the dssbt package does that.

import json
import os
import sys

from snakemake.utils import available_cpu_count

from dssbt import grid
from dssbt.config_check import check_config, check_names
from dssbt.data.download import ARCHIVES, TASK_ARCHIVE
from dssbt.orders import from_wildcard
from dssbt.reduction.registry import METHODS as REDUCTION_METHODS

CONDA_ENV = "../envs/dssbt.yaml"
# glibc returns every freed block above 32 MiB to the OS and maps it again on the next step: millions of page
# faults per training run. Keeping freed memory in the heap made a training job 1.4x faster here (docs/benchmarks.md).
TRAIN_ENV = "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=10000000000"
TASKS = config["tasks"]
SEEDS = config["seeds"]
COMPRESS = config.get(
    "compressibility"
)  # the compressibility study (dssbt.compress), or None (off)
CORRELATION = config.get(
    "correlation"
)  # the budget-effect study (snapshots of the pretraining), or None (off)
CORRELATION_STUDY = config.get(
    "correlation_study"
)  # the correlation design (independent full-length pretrainings), or None (off)


check_names(config)
try:
    PLAN = grid.Plan(config)  # one config over the catalog of run kinds
except ValueError as e:
    raise ValueError(f"config: orders: {e}") from None
ORDER_SPECS = (
    PLAN.order_specs
)  # integers r and per-layer specs ("tol:0.3"); folder part "8" or "tol0.3"
ORDER_WILDCARDS = [s.wildcard for s in ORDER_SPECS]
METHODS = (
    PLAN.methods()
)  # the reduce -> retrain chain: config methods + the registry controls listed
check_config(config, PLAN)


wildcard_constraints:
    task="|".join(TASKS),
    filename="|".join(a.filename.replace(".", r"\.") for a in ARCHIVES.values()),
    seed=r"\d+",
    order=grid.FIELDS["order"],


# ----- the job rules (train, reduce): everything from the run's kind ---------------------------------------------


def prepared(task):
    """The files of a prepared task (meta.json last: it marks completeness)."""
    return [
        f"data/prepared/{task}/{split}.npz" for split in ("train", "val", "test")
    ] + [f"data/prepared/{task}/meta.json"]


def run_of(wildcards):
    """(kind, fields) of a job's run folder (dssbt.grid.parse)."""
    return grid.parse(wildcards.run)


def job_input(wildcards):
    """A run's data, the model it starts from (its parent's) and, where its order is per layer, the orders file."""
    kind, fields = run_of(wildcards)
    out = {"data": prepared(fields["task"])}
    if PLAN.parent_file(kind, fields):
        out["start"] = PLAN.parent_file(kind, fields)
    if PLAN.orders_file(kind, fields):
        out["orders"] = PLAN.orders_file(kind, fields)
    return out


def data_dir(wildcards, input):
    """The prepared task folder of a job (from its input)."""
    return os.path.dirname(input.data[-1])


def out_dir(wildcards, output):
    return os.path.dirname(output[0])


def curves_arg(wildcards):
    """--tensorboard tensorboard/<run>/ where config log.tensorboard is on: one `tensorboard --logdir tensorboard`
    shows the curves of the whole grid while it runs (the events are a side product, not an output).
    """
    if not config["log"]["tensorboard"]:
        return ""
    return f" --tensorboard tensorboard/{wildcards.run}"  # its own leading space: none in the command when off


def job_hparams(wildcards):
    kind, fields = run_of(wildcards)
    return PLAN.run_hparams(kind, fields)


def job_seed(wildcards, output):
    """The run's --seed: its retraining seed where it has one (correlation design), else its seed."""
    fields = run_of(wildcards)[1]
    return fields.get("rseed", fields["seed"])


def job_method(wildcards, output):
    return run_of(wildcards)[1]["method"]


def train_start(wildcards, input):
    """--init skew_hippo [the kind's arguments], or --init from_reduced / from_pretrained --model FILE."""
    return PLAN.start_args(*run_of(wildcards))


def order_args(wildcards, input):
    """The order options of a job: --order r, --layer-orders FILE (a per-layer order), or none (full N)."""
    if "orders" in input.keys():
        return f"--layer-orders {input.orders}"
    fields = run_of(wildcards)[1]
    return f"--order {fields['order']}" if "order" in fields else ""


def job_resources(name, command):
    """mem_mb, runtime (minutes) and gpu of a job: resources.default, then resources.train for a training job, then
    the section named after its kind or rule. A job that runs on --device cuda asks for at least one GPU.
    """
    res = config["resources"]
    merged = grid.deep_merge(
        res["default"], res.get("train", {}) if command == "train" else {}
    )
    merged = grid.deep_merge(merged, res.get(name, {}))
    if command in grid.COMMANDS and config["device"] == "cuda" and "gres" not in merged:
        # a job run with --device cuda fails on a node without one: it asks SLURM for a GPU (gpu, or the site's gres
        # where the config gives one: never both)
        merged["gpu"] = max(merged.get("gpu", 0), 1)
    return merged


def rule_resources(name):
    """Resources of a rule that is not a job rule (its own section over the default), as keyword arguments."""
    return {k: v for k, v in job_resources(name, None).items() if k != "gpu" or v}


def job_mem_mb(wildcards):
    kind = run_of(wildcards)[0]
    return job_resources(kind.name, kind.command)["mem_mb"]


def job_runtime(wildcards, attempt):
    """Runtime of attempt 1, 2, 3, ... of a training job: minutes, 2 x minutes, 4 x minutes, ... (a job retried after
    its time limit, TIMEOUT; retries in profiles/slurm, resumes from its last epoch with more time).
    """
    kind = run_of(wildcards)[0]
    minutes = job_resources(kind.name, kind.command)["runtime"]
    return minutes * 2 ** (attempt - 1) if kind.command == "train" else minutes


def job_gpu(wildcards):
    kind = run_of(wildcards)[0]
    return job_resources(kind.name, kind.command).get("gpu", 0)


def job_gres(wildcards):
    """The site's GRES string of a job (e.g. "gpu:a100:1") where its resources give one, else "" (none)."""
    kind = run_of(wildcards)[0]
    return job_resources(kind.name, kind.command).get("gres", "")


# ----- targets -----------------------------------------------------------------------------------------------------


def kind_files(*names, filename="metrics.json"):
    """``filename`` of every run of the named kinds, where they are on."""
    return [f for name in names for f in PLAN.files(name, filename)]


def orders_file():
    """The per-layer orders of one per-layer order spec for one pretrained model (rule choose_orders)."""
    return "results/runs/{task}/seed{seed}/orders_{order}.json"


def all_hsv_reports():
    """One reduction report per pretrained model (HSVs do not depend on the order: take the first fixed one)."""
    fixed = [s.wildcard for s in ORDER_SPECS if not s.per_layer]
    method = next((m for m in METHODS if REDUCTION_METHODS[m].uses_balance), METHODS[0])
    order = min(fixed, key=int) if fixed else ORDER_WILDCARDS[0]
    return [
        grid.KINDS["reduce"].path(dict(task=t, seed=s, method=method, order=order))
        + "report.json"
        for t in TASKS
        for s in SEEDS
    ]


def correlation_pairs():
    """(pretrained metrics, retrained metrics) files of the correlation study, as two lists in one order: per task
    and seed, every snapshot epoch, then the full pretraining with its retrained model of the main grid.
    """
    if not CORRELATION:
        return [], []
    K = grid.KINDS
    method, order = CORRELATION.get("method", "bt"), str(CORRELATION["order"])
    pre, ret = [], []
    for task in TASKS:
        for seed in SEEDS:
            where = dict(task=task, seed=seed, method=method, order=order)
            for e in CORRELATION["epochs"]:
                pre.append(K["snapshot"].path(where | {"epoch": e}) + "metrics.json")
                ret.append(
                    K["retrain_snapshot"].path(where | {"epoch": e}) + "metrics.json"
                )
            pre.append(K["pretrain"].path(where) + "metrics.json")
            ret.append(K["retrain"].path(where) + "metrics.json")
    return pre, ret


def correlation_design_pairs():
    """(pretrained metrics, retrained metrics) files of the correlation design, as two lists in one order: per task,
    seed and knob value, its pretraining once per retraining seed, with that retraining.
    """
    if not CORRELATION_STUDY:
        return [], []
    pre, ret = [], []
    for fields in PLAN.runs("corr_retrain"):
        parent = grid.KINDS["corr_retrain"].parent_kind(fields).parent_kind(fields)
        pre.append(parent.path(fields) + "metrics.json")
        ret.append(grid.KINDS["corr_retrain"].path(fields) + "metrics.json")
    return pre, ret


# ----- data

ARCHIVE_BY_FILE = {a.filename: key for key, a in ARCHIVES.items()}


def cli_options(options):
    """{"n_train": 100, "seed": 0} -> "--n-train 100 --seed 0" (None values left to the CLI's default)."""
    return " ".join(
        f"--{key.replace('_', '-')} {value}"
        for key, value in sorted((options or {}).items())
        if value is not None
    )


def prepare_input(wildcards):
    """What `dssbt prepare` reads: the generated folder, a user-given archive, or the downloaded archive."""
    task_cfg = config["data"][wildcards.task]
    if task_cfg["source"] == "embedded":
        return f"data/raw/embedded/{wildcards.task}"
    key = TASK_ARCHIVE[wildcards.task]
    given = config.get("downloads", {}).get(key, {}).get("path")
    return given or f"data/downloads/{ARCHIVES[key].filename}"


def note_if_oversubscribed():
    """On a local run, --cores above the machine's CPUs runs more single-threaded training jobs at once than it has
    CPUs; time slicing then costs CPU time. Measured on the 2-core reference machine (README): the default grid took
    19 min 20 s with --cores 8 and 17 min 23 s with --cores 2, its training jobs 32.4 vs 24.3 min of CPU, same results.
    """
    cpus = available_cpu_count()  # what --cores all gives
    if workflow.local_exec and workflow.cores > cpus:
        print(
            f"note: --cores {workflow.cores} on a machine with {cpus} CPUs runs more training jobs at once than it "
            f"has CPUs, which is slower here; --cores all uses {cpus} (same results)",
            file=sys.stderr,
        )


# ----- the compressibility study (compress.smk) -------------------------------------------------------------------


def compress_target(wildcards):
    """The study's table, for target compress; without a compressibility section, an error saying where one is."""
    if not COMPRESS:
        raise ValueError(
            "config: target compress needs a compressibility section, e.g. "
            "--configfile workflow/presets/compressible.yaml (docs/compressibility.md)"
        )
    return "results/tables/compress.csv"


def compress_orders_model(wildcards):
    """The full-N model whose layers a budget order allocates: the main grid's pretraining (plain) or the variant's."""
    fields = dict(wildcards.items())
    return PLAN.parent_file(grid.KINDS["compress_reduce"], fields)


def compress_rows():
    """(row descriptors, metrics files, HSV reports) of the study, in one order (dssbt.compress.points)."""
    if not COMPRESS:
        return [], [], []
    K = grid.KINDS
    # one method, or several (the frontier preset)
    methods = PLAN.axis("compressibility.method")
    rows, reports = [], []
    for task in TASKS:
        for seed in SEEDS:
            for variant, method in (
                (v, m)
                for v in grid.compress_variants(COMPRESS)
                for m in (methods if not v.startswith("shrink") else methods[:1])
            ):
                where = dict(task=task, seed=seed, variant=variant, method=method)
                if variant.startswith("shrink"):
                    keep = float(variant[len("shrink") :])
                    metrics = K["compress_pretrain"].path(where) + "metrics.json"
                    rows.append(
                        dict(where, keep=keep, kind="retrained", metrics=metrics)
                    )
                    continue
                pre = K[_compress_parent_name(variant)].path(where) + "metrics.json"
                # one full-N row per variant, whatever the methods
                if method == methods[0]:
                    rows.append(dict(where, keep=1.0, kind="pretrained", metrics=pre))
                for keep in COMPRESS["keep"]:
                    at = where | {"keep": f"{keep:g}"}
                    for kind, name in (
                        ("reduced", "compress_reduce"),
                        ("retrained", "compress_retrain"),
                    ):
                        metrics = K[name].path(at) + "metrics.json"
                        rows.append(dict(where, keep=keep, kind=kind, metrics=metrics))
                least = where | {"keep": f"{min(COMPRESS['keep']):g}"}
                reports.append(K["compress_reduce"].path(least) + "report.json")
    return (
        [{k: v for k, v in r.items() if k != "metrics"} for r in rows],
        [r["metrics"] for r in rows],
        reports,
    )


def _compress_parent_name(variant):
    return grid.KINDS["compress_reduce"].parent_kind({"variant": variant}).name


COMPRESS_ROWS = compress_rows()
# the predictions beside each reduced or retrained run's metrics (the frontier's seed x item bootstrap)
COMPRESS_PREDICTIONS = [
    m.replace("metrics.json", "predictions.npz")
    for r, m in zip(COMPRESS_ROWS[0], COMPRESS_ROWS[1])
    if r["kind"] != "pretrained"
]


# ----- the evidence studies (evidence.smk): budget ladder, learning-rate grid ------------------------------------

LADDER_ROWS = PLAN.ladder_rows()
LADDER_FILES = sorted({f for r in LADDER_ROWS for f in r["chain"]})
LADDER_LAST = [r["chain"][-1] for r in LADDER_ROWS]


def ladder_target(wildcards):
    """The ladder's plot, for target ladder; without an evidence.ladder section, an error saying where one is."""
    if not LADDER_ROWS:
        raise ValueError(
            "config: target ladder needs evidence.ladder.multipliers, e.g. "
            "--configfile workflow/presets/ladder.yaml"
        )
    return "results/plots/ladder.png"


def lr_grid_target(wildcards):
    """The lr choice table, for target lr_grid; without an evidence.lr_grid section, an error saying where one is."""
    if not PLAN.lr_rows():
        raise ValueError(
            "config: target lr_grid needs evidence.lr_grid.factors, e.g. "
            "--configfile workflow/presets/lr_grid.yaml"
        )
    return "results/tables/lr_choice.csv"
