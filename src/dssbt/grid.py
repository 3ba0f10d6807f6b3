"""The catalog of run kinds: every kind of run the workflow makes, in one dict (``KINDS``), and the plan of one
config over it (``Plan``). The Snakefile's two job rules (train, reduce), its targets, the tables, the plots and the
config checks all read this module; adding a control, a baseline or a study arm is one ``RunKind`` here.

A run kind declares:

    name       the kind (also its resources section ``resources.<name>`` and its log folder); today's rule names
    command    "train" (``dssbt train``) or "reduce" (``dssbt reduce``)
    stage      pretrain | baseline | reduce | retrain | continue | snapshot (what the run's metrics file says)
    folder     its folder under results/, a pattern over the fields task, seed, order, method, epoch, variant, keep,
               knob (the correlation design's pretraining knob value, e.g. lr0.5), rseed (a retraining seed)
    parent     the kind whose model it starts from (None: a fresh Skew-HiPPO model), or a function of the fields
    hparams    how its hyper-parameters derive: "pretrain" | "train" | "retrain" | "equal_budget" | "variant" |
               "reduce", or a function (plan, task, fields) -> sorted JSON
    switch     what turns it on: None (always), "controls" (config controls lists ``control``), "correlation",
               "correlation_study", "compressibility"
    axes       the config lists its fields other than task run over (``Plan.axis``); seed too where a study has its own
               seeds (otherwise config seeds)
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

from .hparams import equal_budget_hparams, parse_hparams
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
    "mult": r"[1-9]\d*",  # a budget multiplier of the ladder (evidence.ladder.multipliers)
    "factor": r"[0-9][0-9.eE+-]*",  # a learning-rate factor of the lr grid (evidence.lr_grid.factors), as {:g}
    "knob": r"(?:lr|wd|dropout)[0-9][0-9.eE+-]*",
    "rseed": r"\d+",
}
# the quality knob of the correlation design (config correlation_study.knob): its folder prefix. lr_factor multiplies
# optim.lr and optim.ssm_lr, weight_decay sets optim.weight_decay, dropout sets model.dropout; none changes the epochs
KNOBS = {"lr_factor": "lr", "weight_decay": "wd", "dropout": "dropout"}
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
    # (field, value, kind): the runs whose field has this value ARE the runs of that kind (same parent, start and
    # hyper-parameters: the ladder at x1, the lr grid at factor 1 are the main grid's runs); Plan.runs leaves them
    # out and RunKind.at() gives the kind whose folder holds them
    same_as: tuple[str, str, str] | None = None
    seeds: str | None = None  # a Plan.axis source of its own seeds (default: config seeds)

    @property
    def fields(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.folder)

    def parent_kind(self, fields: dict[str, str]) -> RunKind | None:
        p = self.parent(fields) if callable(self.parent) else self.parent
        return None if p is None else KINDS[p].at(fields)

    def at(self, fields: dict[str, str]) -> RunKind:
        """The kind whose folder holds this run: its twin of ``same_as`` where the fields say so, else itself."""
        if self.same_as is not None and fields.get(self.same_as[0]) == self.same_as[1]:
            return KINDS[self.same_as[2]]
        return self

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
LADDER = "ladder/{task}/seed{seed}/x{mult}/"
LR_GRID = "lr_grid/{task}/seed{seed}/lr{factor}/"


def _scaled_epochs(how: str) -> Callable[[Plan, str, dict[str, str]], str]:
    """Hyper-parameters of a ladder run: the main grid's ``how`` (pretrain | retrain | equal_budget) with optim.epochs
    times the run's multiplier (``mult``); at x1 the main grid's JSON unchanged."""

    def derive(plan: Plan, task: str, fields: dict[str, str]) -> str:
        base = plan.hparams(task, how)
        m = int(fields["mult"])
        return base if m == 1 else with_optim(base, epochs=m * parse_hparams(base).optim.epochs)

    return derive


def _ladder_no_warmup(plan: Plan, task: str, fields: dict[str, str]) -> str:
    """The ladder's retraining (epochs times the multiplier) without a warmup: BT-init's second cycle is then a pure
    cosine decay, so the schedules' shapes differ by one warmup less (the difference measured, not assumed)."""
    return with_optim(_scaled_epochs("retrain")(plan, task, fields), warmup_epochs=0.0)


def _lr_scaled(how: str) -> Callable[[Plan, str, dict[str, str]], str]:
    """Hyper-parameters of an lr-grid run: the main grid's ``how`` (retrain | equal_budget) with optim.lr and
    optim.ssm_lr times the run's factor; at factor 1 the main grid's JSON unchanged."""

    def derive(plan: Plan, task: str, fields: dict[str, str]) -> str:
        base = plan.hparams(task, how)
        f = float(fields["factor"])
        if f == 1:
            return base
        optim = parse_hparams(base).optim
        return with_optim(base, lr=optim.lr * f, ssm_lr=optim.ssm_lr * f)

    return derive


def with_optim(hparams: str, **optim: Any) -> str:
    """Sorted hyper-parameter JSON with these optim keys set (checked by ``parse_hparams``)."""
    hp = json.loads(hparams)
    hp = {**hp, "optim": {**hp.get("optim", {}), **optim}}
    parse_hparams(hp)
    return json.dumps(hp, sort_keys=True)


CORR = "corr/{task}/seed{seed}/{knob}/"


def _design_hparams(plan: Plan, task: str, fields: dict[str, str]) -> str:
    return plan.design_hparams(task, fields["knob"])


# the axes of the correlation design's kinds (config correlation_study)
_DESIGN_AXES = {
    "seed": "correlation_study.seeds",
    "knob": "correlation_study.knob",
    "method": "correlation_study.method",
    "order": "correlation_study.order",
}

# the axes of the ladder's BT-init chain (reduction, retraining, retraining without warmup)
_LADDER_CHAIN_AXES = {
    "mult": "evidence.ladder.multipliers",
    "method": "evidence.ladder.method",
    "order": "evidence.ladder.order",
}

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
    # the correlation design (config correlation_study): independent full-length pretrainings, seeds x one quality
    # knob, each reduced at one order and retrained with several retraining seeds (the retraining's --seed is rseed)
    RunKind(
        "corr_pretrain",
        "train",
        "pretrain",
        CORR + "pretrain",
        hparams=_design_hparams,
        switch="correlation_study",
        axes={"seed": "correlation_study.seeds", "knob": "correlation_study.knob"},
    ),
    RunKind(
        "corr_reduce",
        "reduce",
        "reduce",
        CORR + "{method}_r{order}",
        parent="corr_pretrain",
        hparams="reduce",
        switch="correlation_study",
        axes=_DESIGN_AXES,
    ),
    RunKind(
        "corr_retrain",
        "train",
        "retrain",
        CORR + "{method}_init_r{order}_s{rseed}",
        parent="corr_reduce",
        hparams="retrain",
        switch="correlation_study",
        axes=_DESIGN_AXES | {"rseed": "correlation_study.rseeds"},
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
    # the budget ladder (evidence.ladder): the primary arms at m times the main grid's epochs; x1 is the main grid
    RunKind(
        "ladder_pretrain",
        "train",
        "pretrain",
        LADDER + "pretrain",
        hparams=_scaled_epochs("pretrain"),
        switch="ladder",
        axes={"mult": "evidence.ladder.multipliers"},
        same_as=("mult", "1", "pretrain"),
    ),
    RunKind(
        "ladder_reduce",
        "reduce",
        "reduce",
        LADDER + "{method}_r{order}",
        parent="ladder_pretrain",
        hparams="reduce",
        switch="ladder",
        axes=_LADDER_CHAIN_AXES,
        same_as=("mult", "1", "reduce"),
    ),
    RunKind(
        "ladder_retrain",
        "train",
        "retrain",
        LADDER + "{method}_init_r{order}",
        parent="ladder_reduce",
        hparams=_scaled_epochs("retrain"),
        switch="ladder",
        axes=_LADDER_CHAIN_AXES,
        same_as=("mult", "1", "retrain"),
    ),
    RunKind(
        "ladder_equal",
        "train",
        "baseline",
        LADDER + "skew_hippo_equal_r{order}",
        hparams=_scaled_epochs("equal_budget"),
        switch="ladder",
        axes={"mult": "evidence.ladder.multipliers", "order": "evidence.ladder.order"},
        run_args="--method skew_hippo_equal",
        same_as=("mult", "1", "train_equal_budget"),
    ),
    RunKind(
        "ladder_retrain_no_warmup",
        "train",
        "retrain",
        LADDER + "{method}_init_r{order}_no_warmup",
        parent="ladder_reduce",
        hparams=_ladder_no_warmup,
        switch="ladder.no_warmup",
        axes=_LADDER_CHAIN_AXES,
    ),
    # the learning-rate grid (evidence.lr_grid): the primary arms' lr and ssm_lr times a factor, on its own seeds;
    # the BT-init arm retrains the main grid's reduction; factor 1 is the main grid
    RunKind(
        "lr_retrain",
        "train",
        "retrain",
        LR_GRID + "{method}_init_r{order}",
        parent="reduce",
        hparams=_lr_scaled("retrain"),
        switch="lr_grid",
        axes={
            "factor": "evidence.lr_grid.factors",
            "method": "evidence.lr_grid.method",
            "order": "evidence.lr_grid.order",
        },
        same_as=("factor", "1", "retrain"),
        seeds="evidence.lr_grid.seeds",
    ),
    RunKind(
        "lr_equal",
        "train",
        "baseline",
        LR_GRID + "skew_hippo_equal_r{order}",
        hparams=_lr_scaled("equal_budget"),
        switch="lr_grid",
        axes={"factor": "evidence.lr_grid.factors", "order": "evidence.lr_grid.order"},
        run_args="--method skew_hippo_equal",
        same_as=("factor", "1", "train_equal_budget"),
        seeds="evidence.lr_grid.seeds",
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
        if kind.switch in ("ladder", "ladder.no_warmup", "lr_grid"):
            study = self.evidence(kind.switch.split(".")[0])
            on = bool(study.get("multipliers" if kind.switch.startswith("ladder") else "factors"))
            return on and (kind.switch != "ladder.no_warmup" or bool(study.get("no_warmup")))
        return bool(self.config.get(kind.switch))

    def evidence(self, study: str) -> dict[str, Any]:
        """evidence.<study> of the config (ladder, lr_grid), {} where absent (off)."""
        return (self.config.get("evidence") or {}).get(study) or {}

    def _evidence_axis(self, study: str, key: str) -> list[str]:
        """A field of the ladder or the lr grid: multipliers, factors ({:g}), seeds, the order (default: the primary
        contrast's, else 4) and the method (bt: the primary arm's reduction)."""
        cfg = self.evidence(study)
        if key == "method":
            return ["bt"]
        if key == "order":
            primary = (self.config.get("evidence") or {}).get("primary") or {}
            return [str(cfg.get("order", primary.get("order", 4)))]
        if key == "factors":
            return [f"{float(f):g}" for f in cfg["factors"]]
        if key == "seeds":
            return [str(s) for s in cfg.get("seeds", self.seeds)]
        return [str(v) for v in cfg[key]]

    def axis(self, source: str) -> list[str]:
        """The values of one field: orders, methods, or a study's list (correlation.*, compressibility.*)."""
        if source == "orders":
            return [s.wildcard for s in self.order_specs]
        if source == "methods":
            return self.methods()
        study, _, key = source.partition(".")
        if study == "evidence":
            return self._evidence_axis(*key.split("."))
        cfg = self.config.get(study) or {}
        if study == "compressibility" and key in ("own_variants", "reduced_variants"):
            variants = compress_variants(cfg)
            return variants[1:] if key == "own_variants" else [v for v in variants if not v.startswith("shrink")]
        if key == "method":  # one method, or a list of them (the frontier preset)
            method = cfg.get("method", "bt")
            return [str(m) for m in method] if isinstance(method, list) else [method]
        if key == "keep":
            return [f"{k:g}" for k in cfg["keep"]]
        if study == "correlation_study" and key == "knob":
            return [f"{KNOBS[cfg['knob']]}{v:g}" for v in cfg["values"]]
        value = cfg[key]
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]

    def runs(self, kind: RunKind | str, twins: bool = False) -> list[dict[str, str]]:
        """The fields of every run of a kind (none where it is off), task-major; without the runs that are another
        kind's (``same_as``: the ladder at x1, the lr grid at factor 1) unless ``twins``."""
        kind = KINDS[kind] if isinstance(kind, str) else kind
        if not self.enabled(kind):
            return []
        if kind.seeds:  # a study's own seeds (evidence.lr_grid.seeds)
            seeds = self.axis(kind.seeds)
        elif "seed" in kind.axes:  # the correlation design's seeds (correlation_study.seeds)
            seeds = self.axis(kind.axes["seed"])
        else:
            seeds = self.seeds
        out = [{"task": t, "seed": str(s)} for t in self.tasks for s in seeds]
        for name in kind.fields:
            if name in ("task", "seed"):
                continue
            out = [f | {name: v} for f in out for v in self.axis(kind.axes[name])]
        return out if twins else [f for f in out if kind.at(f) is kind]

    def run_file(self, kind: RunKind | str, fields: dict[str, str], filename: str) -> str:
        """``filename`` of one run, in the folder of the kind that holds it (``RunKind.at``)."""
        kind = KINDS[kind] if isinstance(kind, str) else kind
        return kind.at(fields).path(fields, filename)

    def files(self, kind: RunKind | str, filename: str) -> list[str]:
        """``filename`` of every run of a kind."""
        kind = KINDS[kind] if isinstance(kind, str) else kind
        return [kind.path(f, filename) for f in self.runs(kind)]

    def tabled(self, filename: str, command: str | None = None) -> list[str]:
        """``filename`` of every run of the main grid's tables (the kinds with a table key), in catalog order."""
        return [f for k in kinds(command) if k.table_key for f in self.files(k, filename)]

    # -- the evidence studies' points (dssbt.ladder)
    def ladder_rows(self) -> list[dict[str, Any]]:
        """One row per task, seed, multiplier and arm of the ladder (none where it is off): the fields and ``chain``,
        the metrics files of the arm's runs first to last (BT-init: pretraining, reduction, retraining; the
        equal-budget Skew-HiPPO: its one run), x1 in the main grid's folders."""
        rows = []
        for fields in self.runs("ladder_retrain", twins=True):
            chain = {
                "bt_init": ["ladder_pretrain", "ladder_reduce", "ladder_retrain"],
                "skew_hippo_equal": ["ladder_equal"],
            }
            if self.enabled(KINDS["ladder_retrain_no_warmup"]):
                chain["bt_init_no_warmup"] = ["ladder_pretrain", "ladder_reduce", "ladder_retrain_no_warmup"]
            for arm, names in chain.items():
                files = [self.run_file(n, fields, "metrics.json") for n in names]
                rows.append({k: fields[k] for k in ("task", "seed", "mult")} | {"arm": arm, "chain": files})
        return rows

    def lr_rows(self) -> list[dict[str, Any]]:
        """One row per task, seed, factor and arm of the lr grid (none where it is off): fields and ``metrics``."""
        return [
            {k: fields[k] for k in ("task", "seed", "factor")}
            | {"arm": arm, "metrics": self.run_file(name, fields, "metrics.json")}
            for name, arm in (("lr_retrain", "bt_init"), ("lr_equal", "skew_hippo_equal"))
            for fields in self.runs(name, twins=True)
        ]

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
        retraining epochs (``hparams.equal_budget_hparams``) with the task's ``equal_budget.optim`` learning rates."""
        key = (task, how)
        if key not in self._hp:
            self._hp[key] = self._hparams(task, how)
        return self._hp[key]

    def _hparams(self, task: str, how: str) -> str:
        config = self.config
        if how == "equal_budget":
            hp = equal_budget_hparams(
                self.hparams(task, "train"), self.hparams(task, "retrain"), pretrain=self.hparams(task, "pretrain")
            )
            own = config.get("task_settings", {}).get(task, {}).get("equal_budget", {}).get("optim", {})
            return with_optim(hp, **own) if own else hp  # its own learning rates (the lr grid's choice), if any
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

    def design_hparams(self, task: str, knob: str) -> str:
        """Pretraining of the correlation design at one knob value (folder token ``lr0.5``, ``wd0.1``, ``dropout0.2``
        of config correlation_study.knob): the task's pretraining hyper-parameters (its full epoch count) with
        lr_factor: optim.lr and optim.ssm_lr times the value; weight_decay: optim.weight_decay = value; dropout:
        model.dropout = value."""
        name = (self.config.get("correlation_study") or {}).get("knob")
        if name not in KNOBS or not knob.startswith(KNOBS[name]):
            raise ValueError(f"correlation_study.knob = {name!r}: folder value {knob!r} is not one of its values")
        value = float(knob[len(KNOBS[name]) :])
        hp = json.loads(self.hparams(task, "pretrain"))
        if name == "lr_factor":
            optim = hp["optim"]
            change = {"optim": {k: optim[k] * value for k in ("lr", "ssm_lr") if k in optim}}
            missing = {"lr", "ssm_lr"} - set(optim)
            if missing:
                raise ValueError(f"correlation_study.knob = lr_factor: optim has no {sorted(missing)} to scale")
        elif name == "weight_decay":
            change = {"optim": {"weight_decay": value}}
        else:
            change = {"model": {"dropout": value}}
        return json.dumps(deep_merge(hp, change), sort_keys=True)

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


__all__ = [
    "KINDS",
    "KNOBS",
    "Plan",
    "RunKind",
    "compress_variants",
    "controls",
    "kinds",
    "parse",
    "register",
    "REDUCTIONS",
]
