# Config helpers, wildcards and paths shared by every rule. No model code, no math: the dssbt package does that.

import copy
import json
import os

from dssbt.data.download import ARCHIVES, TASK_ARCHIVE

CONDA_ENV = "../envs/dssbt.yaml"
# glibc returns every freed block above 32 MiB to the OS and maps it again on the next step: millions of page
# faults per training run. Keeping freed memory in the heap made a training job 1.4x faster here (README).
TRAIN_ENV = "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=10000000000"
TASKS = config["tasks"]
SEEDS = config["seeds"]
ORDERS = config[
    "orders"
]  # integers r, and "tol:<x>" (one order per layer, chosen by tolerance)
INT_ORDERS = [o for o in ORDERS if isinstance(o, int)]
TOLS = [o.split(":", 1)[1] for o in ORDERS if isinstance(o, str)]
# the {order} part of run folders: "8" or "tol0.01" (rules *_tol handle the latter)
ORDER_WILDCARDS = [str(o) for o in INT_ORDERS] + [f"tol{t}" for t in TOLS]
METHODS = config["methods"]

EMBEDDED_TASKS = ("listops", "pathfinder", "image")


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
    for t in TOLS:
        if not 0.0 < float(t) < 1.0:
            raise ValueError(
                f"config: orders contains 'tol:{t}'; the tolerance must lie in (0, 1)"
            )
    for task in TASKS:
        N = json.loads(hparams_json(task, "train"))["model"].get("d_state", 64)
        for r in INT_ORDERS:
            if r >= N:
                where = (
                    f"task_settings.{task}.model.d_state"
                    if "d_state"
                    in config.get("task_settings", {}).get(task, {}).get("model", {})
                    else "model.d_state"
                )
                raise ValueError(
                    f"config: orders contains {r}, not below N = {where} = {N} (task {task})"
                )


wildcard_constraints:
    task="|".join(TASKS),
    filename="|".join(a.filename.replace(".", r"\.") for a in ARCHIVES.values()),
    seed=r"\d+",
    method="bt|bsp|modal|h2",
    order=r"\d+",
    tol=r"[0-9][0-9.eE+-]*",


def deep_merge(base, override):
    """Recursive dict merge (override wins); lists and scalars are replaced whole."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def hparams_json(task, stage):
    """Sorted JSON of a job's hyper-parameters: the global model/optim sections, then the task's overrides, then
    (stage "retrain") the retrain overrides, global then per task. A job sees only what can change its output, so
    editing one task or the retrain section reruns only the jobs it reaches."""
    hp = {"model": config["model"], "optim": config["optim"]}
    task_cfg = config.get("task_settings", {}).get(task, {})
    hp = deep_merge(hp, {k: task_cfg[k] for k in ("model", "optim") if k in task_cfg})
    if stage == "retrain":
        hp = deep_merge(hp, {"optim": config["retrain"]["optim"]})
        hp = deep_merge(hp, {"optim": task_cfg.get("retrain", {}).get("optim", {})})
    return json.dumps(hp, sort_keys=True)


check_config()


def reduce_hparams_json(task, method):
    """What a reduce job depends on besides its inputs: the evaluation settings of the retrain stage (its accuracy)
    and, where set, the method's options (reduction.h2); other methods' jobs never see them.
    """
    optim = json.loads(hparams_json(task, "retrain"))["optim"]
    hp = {"optim": {k: optim[k] for k in ("eval_batch_size", "amp") if k in optim}}
    # {method} is one of bt|bsp|modal|h2 (wildcard constraint), never the key "route"
    if method in config["reduction"]:
        hp["reduction"] = {method: config["reduction"][method]}
    return json.dumps(hp, sort_keys=True)


def prepared(task):
    """The files of a prepared task (meta.json last: it marks completeness)."""
    return [
        f"data/prepared/{task}/{split}.npz" for split in ("train", "val", "test")
    ] + [f"data/prepared/{task}/meta.json"]


def run_dir(kind):
    """Folder of one run: results/runs/{task}/seed{seed}/{kind}/ (kind may hold the {order} wildcard)."""
    return f"results/runs/{{task}}/seed{{seed}}/{kind}/"


def rule_resources(name):
    """mem_mb and runtime (minutes) of a rule from config['resources'] (default section, then the rule's)."""
    res = deep_merge(config["resources"]["default"], config["resources"].get(name, {}))
    return {k: v for k, v in res.items() if k != "gpu" or v}


def train_resources(name):
    """Resources of a training rule: the 'train' section, then the rule's own; gpu only where > 0."""
    res = deep_merge(
        config["resources"]["default"], config["resources"].get("train", {})
    )
    res = deep_merge(res, config["resources"].get(name, {}))
    return {k: v for k, v in res.items() if k != "gpu" or v}


def expand_runs(kind, filename, orders=True):
    pattern = f"results/runs/{{task}}/seed{{seed}}/{kind}/{filename}"
    axes = {"task": TASKS, "seed": SEEDS}
    if orders:
        axes["order"] = ORDER_WILDCARDS
    if "{method}" in kind:
        axes["method"] = METHODS
    return expand(pattern, **axes)


def all_metrics():
    return (
        expand_runs("pretrain", "metrics.json", orders=False)
        + expand_runs("skew_hippo_r{order}", "metrics.json")
        + expand_runs("{method}_r{order}", "metrics.json")
        + expand_runs("{method}_init_r{order}", "metrics.json")
    )


def all_hsv_reports():
    """One reduction report per pretrained model (HSVs do not depend on the order: take the first order)."""
    return expand(
        "results/runs/{task}/seed{seed}/{method}_r{order}/report.json",
        task=TASKS,
        seed=SEEDS,
        method=next((m for m in ("bt", "bsp", "h2") if m in METHODS), METHODS[0]),
        order=str(min(INT_ORDERS)) if INT_ORDERS else ORDER_WILDCARDS[0],
    )


def layer_orders_file(kind="{tol}"):
    """The per-layer orders chosen by tolerance for one pretrained model (rule choose_orders)."""
    return f"results/runs/{{task}}/seed{{seed}}/orders_tol{kind}.json"


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
