"""The catalog of run kinds: every kind of run the workflow makes, in one dict (``KINDS``), and the plan of one
config over it (``Plan``). The Snakefile's two job rules (train, reduce), its targets, the tables, the plots and the
config checks all read this module; adding a control, a baseline or a study arm is one ``RunKind`` here.

A run kind declares:

    name       the kind (also its resources section ``resources.<name>`` and its log folder); today's rule names
    command    "train" (``dssbt train``) or "reduce" (``dssbt reduce``)
    stage      pretrain | baseline | reduce | retrain | continue | snapshot (what the run's metrics file says)
    folder     its folder under results/, a pattern over the fields task, seed, order, method, epoch, variant, keep
    parent     the kind whose model it starts from (None: a fresh Skew-HiPPO model), or a function of the fields
    hparams    how its hyper-parameters derive: "pretrain" | "train" | "retrain" | "equal_budget" | "variant" |
               "reduce", or a function (plan, task, fields) -> sorted JSON
    switch     what turns it on: None (always), "controls" (config controls lists ``control``), "correlation",
               "compressibility"
    axes       the config lists its fields other than task and seed run over (``Plan.axis``)
    table_key  its key in the accuracy tables (``runs.table_init`` of its metrics), a pattern over {method}
    label      its name in the tables, a pattern over {method} (the method's label) and {init} ("-init" for a
               reduction, "" for a control of the registry)

Importing this module imports no torch: the Snakefile imports it at every call.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .hparams import equal_budget_hparams
from .orders import parse_order
from .reduction.registry import CONTROL_METHODS, METHODS, REDUCTIONS

COMMANDS = ("train", "reduce")
STAGES = ("pretrain", "baseline", "reduce", "retrain", "continue", "snapshot")
# what a folder field may hold (the Snakemake wildcard constraints and parse() read these)
FIELDS = {
    "task": r"[a-z]+",
    "seed": r"\d+",
    "order": r"\d+|[a-z]+[0-9][0-9.eE+-]*",
    "method": "|".join(sorted(METHODS, key=len, reverse=True)),
    "epoch": r"\d+",
    "variant": r"plain|hsvreg[0-9.eE+-]+|shrink[0-9.eE+-]+",
    "keep": r"[0-9][0-9.eE+-]*",
}
RESULTS = "results/"
# the file a run of each command leaves for the runs that start from it
MODEL_FILE = {"train": "model.pt", "reduce": "reduced.pt"}


@dataclass(frozen=True)
class RunKind:
    name: str
    command: str
    stage: str
    folder: str
    parent: str | Callable[[dict[str, str]], str] | None = None
    hparams: str | Callable[[Plan, str, dict[str, str]], str] = "train"
    switch: str | None = None
    control: str | None = None  # the name config controls lists (switch "controls")
    axes: dict[str, str] = field(default_factory=dict)  # field -> Plan.axis source
    run_args: str = ""  # extra `dssbt train` arguments, a pattern over the fields (a snapshot's --stop-after)
    table_key: str | None = None
    label: str | None = None
    versus: int | None = None  # a baseline every other table key is compared with (rank: 0 first)
    rank: int = 99  # table order among the kinds
    deploy: bool = False  # its models are exported by snakemake deploy

    @property
    def fields(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.folder)

    def parent_kind(self, fields: dict[str, str]) -> RunKind | None:
        p = self.parent(fields) if callable(self.parent) else self.parent
        return None if p is None else KINDS[p]

    def path(self, fields: dict[str, str], filename: str = "") -> str:
        """The run's folder (``results/.../``) for these fields, with ``filename`` appended."""
        return f"{RESULTS}{self.folder.format(**fields)}/{filename}"

    def regex(self, named: bool = True) -> str:
        """The folder pattern as a regex (named groups, or plain groups for a Snakemake wildcard constraint)."""
        out, pos = "", 0
        for m in re.finditer(r"{(\w+)}", self.folder):
            out += re.escape(self.folder[pos : m.start()])
            out += f"(?P<{m.group(1)}>{FIELDS[m.group(1)]})" if named else f"(?:{FIELDS[m.group(1)]})"
            pos = m.end()
        return out + re.escape(self.folder[pos:])


def _compress_parent(fields: dict[str, str]) -> str:
    """A compressibility variant reduces the main grid's pretraining (plain) or its own."""
    return "pretrain" if fields["variant"] == "plain" else "compress_pretrain"


MAIN = "runs/{task}/seed{seed}/"
COMPRESS = "compress/{task}/seed{seed}/{variant}/"

KINDS: dict[str, RunKind] = {}


def register(kind: RunKind) -> RunKind:
    """Add a kind to the catalog (its name and folder unique); returns it."""
    if kind.name in KINDS:
        raise ValueError(f"run kind {kind.name!r} is registered already")
    if kind.command not in COMMANDS or kind.stage not in STAGES:
        raise ValueError(f"run kind {kind.name!r}: command {kind.command!r} / stage {kind.stage!r} unknown")
    unknown = set(kind.fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"run kind {kind.name!r}: folder fields {sorted(unknown)} unknown; known: {list(FIELDS)}")
    KINDS[kind.name] = kind
    return kind


for _kind in (
    RunKind(
        "pretrain",
        "train",
        "pretrain",
        MAIN + "pretrain",
        hparams="pretrain",
        table_key="skew_hippo",
        label="Skew-HiPPO",
        deploy=True,
    ),
    RunKind(
        "train_equal_budget",
        "train",
        "baseline",
        MAIN + "skew_hippo_equal_r{order}",
        hparams="equal_budget",
        switch="controls",
        control="skew_hippo_equal",
        axes={"order": "orders"},
        run_args="--method skew_hippo_equal",
        table_key="skew_hippo_equal",
        label="Skew-HiPPO, equal budget",
        versus=0,
        rank=0,
    ),
    RunKind(
        "train_baseline",
        "train",
        "baseline",
        MAIN + "skew_hippo_r{order}",
        switch="controls",
        control="skew_hippo",
        axes={"order": "orders"},
        table_key="skew_hippo",
        label="Skew-HiPPO",
        versus=1,
        rank=1,
        deploy=True,
    ),
    RunKind(
        "continue_full",
        "train",
        "continue",
        MAIN + "full_continued",
        parent="pretrain",
        hparams="retrain",
        switch="controls",
        control="full_continued",
        table_key="full_continued",
        label="Full N, continued",
        rank=2,
    ),
    RunKind(
        "reduce",
        "reduce",
        "reduce",
        MAIN + "{method}_r{order}",
        parent="pretrain",
        hparams="reduce",
        axes={"method": "methods", "order": "orders"},
        table_key="{method}_no_retrain",
        label="{method}, no retraining",
        rank=4,
    ),
    RunKind(
        "retrain",
        "train",
        "retrain",
        MAIN + "{method}_init_r{order}",
        parent="reduce",
        hparams="retrain",
        axes={"method": "methods", "order": "orders"},
        table_key="{method}_init",
        label="{method}{init} (retrained)",
        rank=3,
        deploy=True,
    ),
    # the correlation study: snapshots of the pretraining, each reduced at one order and retrained
    RunKind(
        "snapshot",
        "train",
        "snapshot",
        MAIN + "pretrain_e{epoch}",
        hparams="pretrain",
        switch="correlation",
        axes={"epoch": "correlation.epochs"},
        run_args="--stop-after {epoch}",
    ),
    RunKind(
        "reduce_snapshot",
        "reduce",
        "reduce",
        MAIN + "pretrain_e{epoch}/{method}_r{order}",
        parent="snapshot",
        hparams="reduce",
        switch="correlation",
        axes={"epoch": "correlation.epochs", "method": "correlation.method", "order": "correlation.order"},
    ),
    RunKind(
        "retrain_snapshot",
        "train",
        "retrain",
        MAIN + "pretrain_e{epoch}/{method}_init_r{order}",
        parent="reduce_snapshot",
        hparams="retrain",
        switch="correlation",
        axes={"epoch": "correlation.epochs", "method": "correlation.method", "order": "correlation.order"},
    ),
    # the compressibility study: pretraining variants, each reduced to global state budgets and retrained
    RunKind(
        "compress_pretrain",
        "train",
        "pretrain",
        COMPRESS + "pretrain",
        hparams="variant",
        switch="compressibility",
        axes={"variant": "compressibility.own_variants"},
    ),
    RunKind(
        "compress_reduce",
        "reduce",
        "reduce",
        COMPRESS + "{method}_rbudget{keep}",
        parent=_compress_parent,
        hparams="reduce",
        switch="compressibility",
        axes={
            "variant": "compressibility.reduced_variants",
            "method": "compressibility.method",
            "keep": "compressibility.keep",
        },
    ),
    RunKind(
        "compress_retrain",
        "train",
        "retrain",
        COMPRESS + "{method}_init_rbudget{keep}",
        parent="compress_reduce",
        hparams="retrain",
        switch="compressibility",
        axes={
            "variant": "compressibility.reduced_variants",
            "method": "compressibility.method",
            "keep": "compressibility.keep",
        },
    ),
):
    register(_kind)


def kinds(command: str | None = None) -> list[RunKind]:
    """The registered kinds (of one command), in catalog order."""
    return [k for k in KINDS.values() if command is None or k.command == command]


def parse(run: str) -> tuple[RunKind, dict[str, str]]:
    """The kind and fields of a run folder (``runs/image/seed0/bt_init_r4``, without results/ and a trailing /)."""
    for kind in KINDS.values():
        m = re.fullmatch(kind.regex(), run)
        if m:
            return kind, m.groupdict()
    raise ValueError(f"{run!r} is the folder of no run kind of dssbt.grid")


def folder_constraint(command: str) -> str:
    """Regex of every run folder of one command (the {run} wildcard of its rule)."""
    return "|".join(f"(?:{k.regex(named=False)})" for k in kinds(command))


def training_controls() -> list[str]:
    """The controls a config may list that are kinds of their own (the others are methods of the registry)."""
    return [k.control for k in KINDS.values() if k.switch == "controls"]


def controls() -> list[str]:
    """Every name config controls may list: the training controls, then the registry's control methods."""
    return training_controls() + list(CONTROL_METHODS)


def table_labels() -> dict[str, str]:
    """Table key -> label, in table order: the kinds without a method, then per method its kinds."""
    plain = sorted((k for k in KINDS.values() if k.table_key and "{method}" not in k.table_key), key=lambda k: k.rank)
    per_method = sorted((k for k in KINDS.values() if k.table_key and "{method}" in k.table_key), key=lambda k: k.rank)
    out = {k.table_key: k.label for k in plain}
    for name, m in METHODS.items():
        for k in per_method:
            out[k.table_key.format(method=name)] = k.label.format(method=m.label, init="" if m.control else "-init")
    return out


def versus() -> list[str]:
    """The table keys of the baselines every other key is compared with, first first."""
    return [k.table_key for k in sorted((k for k in KINDS.values() if k.versus is not None), key=lambda k: k.versus)]


def baselines() -> dict[str, str]:
    """Table key -> label of the order-r models trained from a fresh init (stage baseline)."""
    return {k.table_key: k.label for k in KINDS.values() if k.stage == "baseline" and k.table_key}


def continued() -> dict[str, str]:
    """Table key -> label of the full-N models trained further (stage continue)."""
    return {k.table_key: k.label for k in KINDS.values() if k.stage == "continue" and k.table_key}


def _key_regex(kind: RunKind) -> str:
    return re.escape(kind.table_key).replace(re.escape("{method}"), f"(?P<method>{FIELDS['method']})")


def table_kind(table_key: str) -> RunKind | None:
    """The first kind (catalog order) whose table key this is, else None."""
    for k in KINDS.values():
        if k.table_key and re.fullmatch(_key_regex(k), table_key):
            return k
    return None


def method_of(table_key: str) -> str | None:
    """The registry method of a per-method table key (``bt_init`` -> ``bt``), else None (a baseline)."""
    k = table_kind(table_key)
    return None if k is None or "{method}" not in k.table_key else re.fullmatch(_key_regex(k), table_key)["method"]


def starts_from_pretrained(table_key: str) -> bool:
    """Whether a run of this table key starts from a pretrained model (its pretraining counts in its budget)."""
    k = table_kind(table_key)
    return k is not None and k.parent is not None


# ----- one config over the catalog --------------------------------------------------------------------------------


def deep_merge(base: dict, override: dict | None) -> dict:
    """Recursive dict merge (override wins); lists and scalars are replaced whole."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def compress_variants(study: dict) -> list[str]:
    """The pretraining variants of the compressibility study, in table order: plain, hsvreg<lambda>..., shrink<f>..."""
    names = ["plain"] + [f"hsvreg{lam:g}" for lam in study.get("hsv_reg", [])]
    if study.get("reduce_during_epochs"):
        names += [f"shrink{f:g}" for f in study["keep"]]
    return names


class Plan:
    """One config over the catalog: which kinds are on, the values of their fields, and each run's
    hyper-parameters (sorted JSON, cached per task and derivation)."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.tasks, self.seeds = list(config["tasks"]), list(config["seeds"])
        self.order_specs = [parse_order(o) for o in config["orders"]]
        self._hp: dict[tuple, str] = {}

    # -- what runs
    def methods(self) -> list[str]:
        """The methods of the main grid's reduce -> retrain chain: config methods, then the registry controls listed."""
        return list(self.config["methods"]) + [c for c in self.config.get("controls", []) if c in CONTROL_METHODS]

    def enabled(self, kind: RunKind) -> bool:
        if kind.switch is None:
            return True
        if kind.switch == "controls":
            return kind.control in self.config.get("controls", [])
        return bool(self.config.get(kind.switch))

    def axis(self, source: str) -> list[str]:
        """The values of one field: orders, methods, or a study's list (correlation.*, compressibility.*)."""
        if source == "orders":
            return [s.wildcard for s in self.order_specs]
        if source == "methods":
            return self.methods()
        study, _, key = source.partition(".")
        cfg = self.config.get(study) or {}
        if study == "compressibility" and key in ("own_variants", "reduced_variants"):
            variants = compress_variants(cfg)
            return variants[1:] if key == "own_variants" else [v for v in variants if not v.startswith("shrink")]
        if key == "method":  # one method, or a list of them (the frontier preset)
            method = cfg.get("method", "bt")
            return [str(m) for m in method] if isinstance(method, list) else [method]
        if key == "keep":
            return [f"{k:g}" for k in cfg["keep"]]
        value = cfg[key]
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]

    def runs(self, kind: RunKind | str) -> list[dict[str, str]]:
        """The fields of every run of a kind (none where it is off), task-major."""
        kind = KINDS[kind] if isinstance(kind, str) else kind
        if not self.enabled(kind):
            return []
        out = [{"task": t, "seed": str(s)} for t in self.tasks for s in self.seeds]
        for name in kind.fields:
            if name in ("task", "seed"):
                continue
            out = [f | {name: v} for f in out for v in self.axis(kind.axes[name])]
        return out

    def files(self, kind: RunKind | str, filename: str) -> list[str]:
        """``filename`` of every run of a kind."""
        kind = KINDS[kind] if isinstance(kind, str) else kind
        return [kind.path(f, filename) for f in self.runs(kind)]

    def tabled(self, filename: str, command: str | None = None) -> list[str]:
        """``filename`` of every run of the main grid's tables (the kinds with a table key), in catalog order."""
        return [f for k in kinds(command) if k.table_key for f in self.files(k, filename)]

    # -- what a run starts from
    def parent_file(self, kind: RunKind, fields: dict[str, str]) -> str | None:
        parent = kind.parent_kind(fields)
        return None if parent is None else parent.path(fields, MODEL_FILE[parent.command])

    def orders_file(self, kind: RunKind, fields: dict[str, str]) -> str | None:
        """The per-layer orders file of a run: a budget order (compressibility) or a per-layer order spec."""
        if "keep" in fields:  # a method with its own budget allocation (LAST, top-energy) has its own orders file
            alloc = METHODS[fields["method"]].allocation if fields.get("method") in METHODS else "hsv"
            suffix = "" if alloc == "hsv" else f"_{alloc}"
            return f"{RESULTS}{COMPRESS.format(**fields)}orders_budget{fields['keep']}{suffix}.json"
        if "order" in fields and not re.fullmatch(r"\d+", fields["order"]):
            return f"{RESULTS}runs/{fields['task']}/seed{fields['seed']}/orders_{fields['order']}.json"
        return None

    # -- hyper-parameters
    def hparams(self, task: str, how: str) -> str:
        """Sorted JSON of a job's hyper-parameters: the global model/optim sections, then the task's overrides, then
        (``pretrain``) the pretrain overrides or (``retrain``) the retrain overrides, global then per task. A job sees
        only what can change its output, so editing one task, the pretrain or the retrain section reruns only the
        jobs it reaches. ``train``: the Skew-HiPPO baseline; ``equal_budget``: the baseline for the pretraining +
        retraining epochs (``hparams.equal_budget_hparams``)."""
        key = (task, how)
        if key not in self._hp:
            self._hp[key] = self._hparams(task, how)
        return self._hp[key]

    def _hparams(self, task: str, how: str) -> str:
        config = self.config
        if how == "equal_budget":
            return equal_budget_hparams(
                self.hparams(task, "train"), self.hparams(task, "retrain"), pretrain=self.hparams(task, "pretrain")
            )
        hp = {"model": config["model"], "optim": config["optim"]}
        task_cfg = config.get("task_settings", {}).get(task, {})
        hp = deep_merge(hp, {k: task_cfg[k] for k in ("model", "optim") if k in task_cfg})
        if how == "pretrain":
            hp = deep_merge(hp, {"optim": config.get("pretrain", {}).get("optim", {})})
        if how == "retrain":
            hp = deep_merge(hp, {"optim": config["retrain"]["optim"]})
            hp = deep_merge(hp, {"optim": task_cfg.get("retrain", {}).get("optim", {})})
        return json.dumps(hp, sort_keys=True)

    def reduce_hparams(self, task: str, method: str) -> str:
        """What a reduce job depends on besides its inputs: the evaluation settings of the retrain stage (its
        accuracy) and, where set, the method's options (reduction.<method>); other methods' jobs never see them."""
        optim = json.loads(self.hparams(task, "retrain"))["optim"]
        hp = {"optim": {k: optim[k] for k in ("eval_batch_size", "amp", "kernels") if k in optim}}
        if method in self.config["reduction"]:
            hp["reduction"] = {method: self.config["reduction"][method]}
        return json.dumps(hp, sort_keys=True)

    def variant_hparams(self, task: str, variant: str) -> str:
        """Pretraining of a compressibility variant: the task's pretraining with optim.hsv_reg = lambda (hsvreg), or
        (shrink<f>) pretraining + retraining epochs in one run reduced during training to f of its states."""
        hp = json.loads(self.hparams(task, "pretrain"))
        if variant.startswith("hsvreg"):
            return json.dumps(deep_merge(hp, {"optim": {"hsv_reg": float(variant[len("hsvreg") :])}}), sort_keys=True)
        retrain_epochs = json.loads(self.hparams(task, "retrain"))["optim"]["epochs"]
        optim = {
            "epochs": hp["optim"]["epochs"] + retrain_epochs,
            "reduce_during": {
                "at_epochs": self.config["compressibility"]["reduce_during_epochs"],
                "budget": float(variant[len("shrink") :]),
            },
        }
        return json.dumps(deep_merge(hp, {"optim": optim}), sort_keys=True)

    def run_hparams(self, kind: RunKind, fields: dict[str, str]) -> str:
        """The hyper-parameter JSON of one run, as its kind derives it."""
        if callable(kind.hparams):
            return kind.hparams(self, fields["task"], fields)
        if kind.hparams == "reduce":
            return self.reduce_hparams(fields["task"], fields["method"])
        if kind.hparams == "variant":
            return self.variant_hparams(fields["task"], fields["variant"])
        return self.hparams(fields["task"], kind.hparams)

    def start_args(self, kind: RunKind, fields: dict[str, str]) -> str:
        """How a training run starts: a fresh Skew-HiPPO init (with the kind's own arguments), or the parent's model
        (``--init from_reduced`` / ``from_pretrained --model FILE``)."""
        parent = kind.parent_kind(fields)
        if parent is None:
            return " ".join(["--init skew_hippo", kind.run_args.format(**fields)]).strip()
        start = "from_reduced" if parent.command == "reduce" else "from_pretrained"
        return f"--init {start} --model {self.parent_file(kind, fields)}"


__all__ = ["KINDS", "Plan", "RunKind", "compress_variants", "controls", "kinds", "parse", "register", "REDUCTIONS"]
