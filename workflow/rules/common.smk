# Config helpers, wildcards and paths shared by every rule. No model code, no math: the dssbt package does that.

import copy
import functools
import json
import os
import sys

from snakemake.utils import available_cpu_count

from dssbt.data import EMBEDDED_TASKS
from dssbt.data.download import ARCHIVES, TASK_ARCHIVE
from types import SimpleNamespace

from dssbt.hparams import DEFAULT_D_STATE, equal_budget_hparams, parse_hparams
from dssbt.orders import from_wildcard, parse_order
from dssbt.reduction.registry import METHODS as REDUCTION_METHODS
from dssbt.runs import TRAINING_CONTROLS, run_name

CONDA_ENV = "../envs/dssbt.yaml"
# glibc returns every freed block above 32 MiB to the OS and maps it again on the next step: millions of page
# faults per training run. Keeping freed memory in the heap made a training job 1.4x faster here (docs/benchmarks.md).
TRAIN_ENV = "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=10000000000"
TRAIN_RULES = (
    "pretrain",
    "train_baseline",
    "retrain",
    "train_equal_budget",
    "continue_full",
    "snapshot",
    "retrain_snapshot",
    "compress_pretrain",
    "compress_retrain",
)  # resources: default, then 'train', then the rule's own
# the rules whose command takes --device {config[device]}: under device cuda each requests a GPU (rule_resources)
DEVICE_RULES = TRAIN_RULES + ("reduce", "reduce_snapshot", "compress_reduce")
TASKS = config["tasks"]
SEEDS = config["seeds"]
CONTROLS = config.get("controls", [])
# the reduce -> retrain chain runs every compared method and every control that is a registry method (transplant,
# random_modes); the other controls (skew_hippo, skew_hippo_equal, full_continued) have their own rule
METHODS = config["methods"] + [c for c in CONTROLS if c not in TRAINING_CONTROLS]
COMPRESS = config.get(
    "compressibility"
)  # the compressibility study (dssbt.compress), or None (off)
CORRELATION = config.get(
    "correlation"
)  # the within-task correlation study, or None (off)


def _order_specs():
    try:
        return [parse_order(o) for o in config["orders"]]
    except ValueError as e:
        raise ValueError(f"config: orders: {e}") from None


# integers r and per-layer specs ("tol:0.3"); the {order} part of run folders is "8" or "tol0.3"
ORDER_SPECS = _order_specs()
ORDER_WILDCARDS = [s.wildcard for s in ORDER_SPECS]


def check_config():
    """Cross-key checks the JSON schema cannot express; errors name the key and the value."""
    for task in TASKS:
        if task not in config["data"]:
            raise ValueError(
                f"config: tasks lists {task!r} but data.{task} is missing (where its data comes from)"
            )
        if config["data"][task]["source"] == "embedded" and task not in EMBEDDED_TASKS:
            raise ValueError(
                f"config: data.{task}.source = embedded, but only {EMBEDDED_TASKS} have embedded data"
            )
    settings = config.get("task_settings", {})
    elsewhere = [
        ("optim", config.get("optim", {})),
        ("retrain.optim", config["retrain"]["optim"]),
    ]
    for task, cfg in settings.items():
        elsewhere += [
            (f"task_settings.{task}.optim", cfg.get("optim", {})),
            (
                f"task_settings.{task}.retrain.optim",
                cfg.get("retrain", {}).get("optim", {}),
            ),
        ]
    for where, optim in elsewhere:
        if "reduce_during" in optim:
            raise ValueError(
                f"config: {where}.reduce_during: in-training reduction applies to the pretraining only; "
                "set it under pretrain.optim"
            )
    for task in TASKS:
        try:
            parse_hparams(hparams_json(task, "pretrain"))
        except ValueError as e:
            raise ValueError(f"config: the pretraining of task {task}: {e}") from None
    for task in TASKS:
        N = json.loads(hparams_json(task, "train"))["model"].get(
            "d_state", DEFAULT_D_STATE
        )
        for spec in ORDER_SPECS:
            if not spec.per_layer and spec.r >= N:
                where = (
                    f"task_settings.{task}.model.d_state"
                    if "d_state"
                    in config.get("task_settings", {}).get(task, {}).get("model", {})
                    else "model.d_state"
                )
                raise ValueError(
                    f"config: orders contains {spec.r}, not below N = {where} = {N} (task {task})"
                )
        if CORRELATION:
            epochs = json.loads(hparams_json(task, "pretrain"))["optim"].get("epochs")
            if CORRELATION["order"] >= N:
                raise ValueError(
                    f"config: correlation.order = {CORRELATION['order']} is not below N = {N} (task {task})"
                )
            late = [
                e for e in CORRELATION["epochs"] if epochs is not None and e >= epochs
            ]
            if late:
                raise ValueError(
                    f"config: correlation.epochs {late} must be below the pretraining epochs of task {task} "
                    f"({epochs}): the full pretraining is always one more point"
                )


wildcard_constraints:
    task="|".join(TASKS),
    filename="|".join(a.filename.replace(".", r"\.") for a in ARCHIVES.values()),
    seed=r"\d+",
    epoch=r"\d+",
    method="|".join(REDUCTION_METHODS),
    order=r"\d+|[a-z]+[0-9][0-9.eE+-]*",


def deep_merge(base, override):
    """Recursive dict merge (override wins); lists and scalars are replaced whole."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@functools.cache  # one per task and stage, not one per job: planning a large grid stays linear and cheap
def hparams_json(task, stage):
    """Sorted JSON of a job's hyper-parameters: the global model/optim sections, then the task's overrides, then
    (stage "pretrain") the pretrain overrides or (stage "retrain") the retrain overrides, global then per task. A job
    sees only what can change its output, so editing one task, the pretrain or the retrain section reruns only the
    jobs it reaches. Stage "train": the Skew-HiPPO baseline."""
    hp = {"model": config["model"], "optim": config["optim"]}
    task_cfg = config.get("task_settings", {}).get(task, {})
    hp = deep_merge(hp, {k: task_cfg[k] for k in ("model", "optim") if k in task_cfg})
    if stage == "pretrain":
        hp = deep_merge(hp, {"optim": config.get("pretrain", {}).get("optim", {})})
    if stage == "retrain":
        hp = deep_merge(hp, {"optim": config["retrain"]["optim"]})
        hp = deep_merge(hp, {"optim": task_cfg.get("retrain", {}).get("optim", {})})
    return json.dumps(hp, sort_keys=True)


check_config()


@functools.cache
def equal_budget_hparams_json(task):
    """Hyper-parameters of the equal-budget Skew-HiPPO control: the baseline's, with epochs = pretraining +
    retraining epochs (dssbt.hparams.equal_budget_hparams)."""
    return equal_budget_hparams(
        hparams_json(task, "train"),
        hparams_json(task, "retrain"),
        pretrain=hparams_json(task, "pretrain"),
    )


@functools.cache
def reduce_hparams_json(task, method):
    """What a reduce job depends on besides its inputs: the evaluation settings of the retrain stage (its accuracy)
    and, where set, the method's options (reduction.h2); other methods' jobs never see them.
    """
    optim = json.loads(hparams_json(task, "retrain"))["optim"]
    hp = {
        "optim": {
            k: optim[k] for k in ("eval_batch_size", "amp", "kernels") if k in optim
        }
    }
    # {method} is one of bt|bsp|modal|h2 (wildcard constraint), never the key "route"
    if method in config["reduction"]:
        hp["reduction"] = {method: config["reduction"][method]}
    return json.dumps(hp, sort_keys=True)


def prepared(task):
    """The files of a prepared task (meta.json last: it marks completeness)."""
    return [
        f"data/prepared/{task}/{split}.npz" for split in ("train", "val", "test")
    ] + [f"data/prepared/{task}/meta.json"]


def run_dir(stage, method="{method}", order="{order}"):
    """Folder of one run: results/runs/{task}/seed{seed}/<run name>/ (dssbt.runs.run_name)."""
    return f"results/runs/{{task}}/seed{{seed}}/{run_name(stage, method, order)}/"


def orders_file():
    """The per-layer orders of one per-layer order spec for one pretrained model (rule choose_orders)."""
    return "results/runs/{task}/seed{seed}/orders_{order}.json"


def order_input(wildcards):
    """Input of a job at {order}: the orders file where the order is per layer (tol:...), else nothing."""
    if from_wildcard(wildcards.order).per_layer:
        return {"orders": orders_file().format(**wildcards)}
    return {}


def order_args(wildcards, input):
    """The order options of a job: --order r, or --layer-orders FILE for a per-layer order."""
    if from_wildcard(wildcards.order).per_layer:
        return f"--layer-orders {input.orders}"
    return f"--order {wildcards.order}"


def rule_resources(name):
    """mem_mb, runtime (minutes) and gpu (only where > 0) of a rule: resources.default, then resources.train for a
    training rule, then the section named after the rule. A training rule's runtime doubles with each attempt: a
    job retried after its time limit (TIMEOUT; retries in profiles/slurm) resumes from its last epoch with more time.
    """
    res = config["resources"]
    merged = deep_merge(
        res["default"], res.get("train", {}) if name in TRAIN_RULES else {}
    )
    merged = deep_merge(merged, res.get(name, {}))
    if config["device"] == "cuda" and name in DEVICE_RULES and "gres" not in merged:
        # a job run with --device cuda fails on a node without one: it always asks SLURM for a GPU (gpu, or the
        # site's gres where the config gives one; never both)
        merged["gpu"] = max(1, merged.get("gpu") or 0)
    merged = {k: v for k, v in merged.items() if k != "gpu" or v}
    if name in TRAIN_RULES and "runtime" in merged:
        merged["runtime"] = runtime_by_attempt(merged["runtime"])
    return merged


def runtime_by_attempt(minutes):
    """Runtime of attempt 1, 2, 3, ...: minutes, 2 x minutes, 4 x minutes, ..."""
    return lambda wildcards, attempt: minutes * 2 ** (attempt - 1)


def expand_runs(stage, filename, method="{method}"):
    """Files of every run of a stage over the grid: tasks x seeds (x orders x methods where the stage has them)."""
    if stage == "pretrain":
        return expand(f"{run_dir('pretrain')}{filename}", task=TASKS, seed=SEEDS)
    methods = METHODS if method == "{method}" else [method]
    return expand(
        f"{run_dir(stage)}{filename}",
        task=TASKS,
        seed=SEEDS,
        order=ORDER_WILDCARDS,
        method=methods,
    )


def baseline_methods():
    """The baseline runs at every order, where config controls lists them: plain Skew-HiPPO (the paper's
    baseline, the retraining epochs only) and the equal-budget control."""
    return [c for c in ("skew_hippo", "skew_hippo_equal") if c in CONTROLS]


def continued_runs(filename):
    """The full_continued control's files (one run per task and seed), where config controls lists it."""
    if "full_continued" not in CONTROLS:
        return []
    return expand(f"{run_dir('continue', 'full')}{filename}", task=TASKS, seed=SEEDS)


def all_metrics():
    return (
        expand_runs("pretrain", "metrics.json")
        + continued_runs("metrics.json")
        + [
            f
            for m in baseline_methods()
            for f in expand_runs("baseline", "metrics.json", method=m)
        ]
        + expand_runs("reduce", "metrics.json")
        + expand_runs("retrain", "metrics.json")
    )


def snapshot_run_dir(stage):
    """Folder of a reduce or retrain run of a pretraining snapshot (correlation study): inside the snapshot's."""
    return f"results/runs/{{task}}/seed{{seed}}/pretrain_e{{epoch}}/{run_name(stage, '{method}', '{order}')}/"


def correlation_pairs():
    """(pretrained metrics, retrained metrics) files of the correlation study, as two lists in one order: per task
    and seed, every snapshot epoch, then the full pretraining with its retrained model of the main grid.
    """
    if not CORRELATION:
        return [], []
    method, order = CORRELATION.get("method", "bt"), CORRELATION["order"]
    pre, ret = [], []
    for task in TASKS:
        for seed in SEEDS:
            for e in CORRELATION["epochs"]:
                where = dict(task=task, seed=seed, epoch=e, method=method, order=order)
                pre.append(
                    run_dir("snapshot", "skew_hippo", "{epoch}").format(**where)
                    + "metrics.json"
                )
                ret.append(snapshot_run_dir("retrain").format(**where) + "metrics.json")
            pre.append(
                run_dir("pretrain").format(task=task, seed=seed) + "metrics.json"
            )
            ret.append(
                run_dir("retrain", method, str(order)).format(task=task, seed=seed)
                + "metrics.json"
            )
    return pre, ret


def all_histories():
    """history.csv of every trained run: pretraining, the baselines, every retraining (the learning curves)."""
    return (
        expand_runs("pretrain", "history.csv")
        + continued_runs("history.csv")
        + [
            f
            for m in baseline_methods()
            for f in expand_runs("baseline", "history.csv", method=m)
        ]
        + expand_runs("retrain", "history.csv")
    )


def all_hsv_reports():
    """One reduction report per pretrained model (HSVs do not depend on the order: take the first fixed one)."""
    fixed = [s.wildcard for s in ORDER_SPECS if not s.per_layer]
    return expand(
        f"{run_dir('reduce')}report.json",
        task=TASKS,
        seed=SEEDS,
        method=next(
            (m for m in METHODS if REDUCTION_METHODS[m].uses_balance), METHODS[0]
        ),
        order=min(fixed, key=int) if fixed else ORDER_WILDCARDS[0],
    )


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


def compress_variants(study):
    """The pretraining variants of the study, in table order: plain, hsvreg<lambda>..., shrink<f>..."""
    names = ["plain"] + [f"hsvreg{lam:g}" for lam in study.get("hsv_reg", [])]
    if study.get("reduce_during_epochs"):
        names += [f"shrink{f:g}" for f in study["keep"]]
    return names


def check_compress_config():
    """Every shrink run's hyper-parameters parse (its reduction epochs below its total epochs), at planning time."""
    own = compress_variants(COMPRESS)[1:] if COMPRESS else []  # plain: the main grid's
    for task in TASKS:
        for v in own:
            try:
                parse_hparams(
                    compress_pretrain_hparams(SimpleNamespace(task=task, variant=v))
                )
            except ValueError as e:
                raise ValueError(
                    f"config: compressibility, variant {v} of task {task}: {e}"
                ) from None


def compress_target(wildcards):
    """The study's table, for target compress; without a compressibility section, an error saying where one is."""
    if not COMPRESS:
        raise ValueError(
            "config: target compress needs a compressibility section, e.g. "
            "--configfile workflow/presets/compressible.yaml (docs/compressibility.md)"
        )
    return "results/tables/compress.csv"


def compress_dir():
    """Folder of one variant's runs in the compressibility study."""
    return "results/compress/{task}/seed{seed}/{variant}/"


def compress_pretrained(wildcards):
    """The full-N model a variant reduces: the main grid's pretraining (plain) or the variant's own."""
    where = dict(task=wildcards.task, seed=wildcards.seed, variant=wildcards.variant)
    if wildcards.variant == "plain":
        return run_dir("pretrain").format(**where) + "model.pt"
    return compress_dir().format(**where) + "pretrain/model.pt"


def compress_pretrain_hparams(wildcards):
    """Pretraining hyper-parameters of a variant: the task's pretraining with optim.hsv_reg = lambda (hsvreg), or
    (shrink<f>) pretraining + retraining epochs in one run reduced during training to f of its states.
    """
    hp = json.loads(hparams_json(wildcards.task, "pretrain"))
    v = wildcards.variant
    if v.startswith("hsvreg"):
        return json.dumps(
            deep_merge(hp, {"optim": {"hsv_reg": float(v[len("hsvreg") :])}}),
            sort_keys=True,
        )
    retrain_epochs = json.loads(hparams_json(wildcards.task, "retrain"))["optim"][
        "epochs"
    ]
    optim = {
        "epochs": hp["optim"]["epochs"] + retrain_epochs,
        "reduce_during": {
            "at_epochs": COMPRESS["reduce_during_epochs"],
            "budget": float(v[len("shrink") :]),
        },
    }
    return json.dumps(deep_merge(hp, {"optim": optim}), sort_keys=True)


@functools.cache  # three of compress_table's directives read it
def compress_rows():
    """(row descriptors, metrics files, HSV reports) of the study, in one order (dssbt.compress.points)."""
    if not COMPRESS:
        return [], [], []
    method = COMPRESS.get("method", "bt")
    rows, reports = [], []
    for task in TASKS:
        for seed in SEEDS:
            for variant in compress_variants(COMPRESS):
                where = dict(task=task, seed=seed, variant=variant, method=method)
                folder = compress_dir().format(**where)
                if variant.startswith("shrink"):
                    keep = float(variant[len("shrink") :])
                    rows.append(
                        dict(
                            where,
                            keep=keep,
                            kind="retrained",
                            metrics=f"{folder}pretrain/metrics.json",
                        )
                    )
                    continue
                pre = compress_pretrained(SimpleNamespace(**where)).replace(
                    "model.pt", "metrics.json"
                )
                rows.append(dict(where, keep=1.0, kind="pretrained", metrics=pre))
                for keep in COMPRESS["keep"]:
                    k = f"{keep:g}"
                    rows.append(
                        dict(
                            where,
                            keep=keep,
                            kind="reduced",
                            metrics=f"{folder}{method}_rbudget{k}/metrics.json",
                        )
                    )
                    rows.append(
                        dict(
                            where,
                            keep=keep,
                            kind="retrained",
                            metrics=f"{folder}{method}_init_rbudget{k}/metrics.json",
                        )
                    )
                reports.append(
                    f"{folder}{method}_rbudget{min(COMPRESS['keep']):g}/report.json"
                )  # every layer cut
    return (
        [{k: v for k, v in r.items() if k != "metrics"} for r in rows],
        [r["metrics"] for r in rows],
        reports,
    )


check_compress_config()
