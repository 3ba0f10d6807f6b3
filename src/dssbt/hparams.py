"""Hyper-parameters of one training job, parsed from JSON (inline, or a .json/.yaml/.yml file: ``load_hparams_arg``)
with every key checked.

The JSON has these sections; every key is optional (defaults below) and unknown keys are an error:

    {"model": {d_model, d_state, n_layers, dropout, norm, prenorm, output, pool, bidirectional, dt_min, dt_max},
     "optim": {epochs, batch_size, lr, ssm_lr, weight_decay, warmup_epochs, schedule, grad_clip, patience,
               eval_batch_size, amp, hsv_reg, on_divergence, reduce_during, kernels, max_steps_per_epoch,
               compile, qat},
     "reduction": {"h2": {tol, max_iter}}}   (options of a reduction method; used by ``dssbt reduce`` only,
                                             which checks them: ``reduction.registry.check_reduction_options``)

The task-dependent part of the architecture (encoder, d_input, d_output, dual) comes from the prepared data,
the Lambda init from the job's ``--init``, the state size from the job's ``--order`` (default: d_state = N). A job that
starts from a model file (``--init from_reduced`` / ``from_pretrained``) and has no model section takes the file's
architecture (``train.start_architecture``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

DEFAULT_D_STATE = 64  # N of a model whose config sets no d_state (ModelConfig's default; torch-free for the workflow)

MODEL_KEYS = {
    "d_model": int,
    "d_state": int,
    "n_layers": int,
    "dropout": float,
    "norm": str,
    "prenorm": bool,
    "output": str,
    "pool": str,
    "bidirectional": bool,
    "dt_min": float,
    "dt_max": float,
}


@dataclass
class OptimHparams:
    epochs: int = 10  # maximum number of epochs
    batch_size: int = 32
    lr: float = 4e-3  # AdamW learning rate of every non-SSM weight
    ssm_lr: float = 1e-3  # learning rate of Lambda, B, C, log_dt (no weight decay)
    weight_decay: float = 0.01  # non-SSM weights only
    warmup_epochs: float = 1.0  # linear warmup length (cosine schedule)
    schedule: str = "cosine"  # "cosine" (warmup, then cosine decay per step) | "plateau" (halve on a val plateau)
    grad_clip: float = 0.0  # max global gradient norm; 0 disables
    patience: int = 0  # early stopping after this many epochs without a better val accuracy; 0 disables
    eval_batch_size: int = 256
    # mixed precision of training and evaluation, on CPU and CUDA: "none" (float32) | "bf16" (bfloat16 autocast) |
    # "fp16" (float16 autocast, and a gradient scaler in training); false / true of older configs mean none / bf16.
    # The DSS kernel, the FFT convolution, the Hankel penalty and the reductions always run in float32 / float64.
    amp: str = "none"
    # weight of the Hankel nuclear norm (sum of the HSVs of every channel, discrete route) added to the loss: trains
    # models whose HSVs decay fast, so that they compress well (reduction/hankel.py); 0 = off, training unchanged
    hsv_reg: float = 0.0
    # a non-finite loss or gradient: "fail" (error, nothing written) | "keep_best" (finish with the best checkpoint
    # before it, metrics marked diverged)
    on_divergence: str = "fail"
    # in-training reduction of the full-N pretraining (dssbt.shrink): {"at_epochs": [e_1, ..., e_K], "tol": x |
    # "budget": f, "moments": "reset" | "mean"}: after each listed epoch every layer is balanced-truncated and
    # training continues with the optimizer carried over. tol: each layer drops at most x of its HSV energy at each
    # reduction; budget: after reduction k the model keeps f^(k/K) of the full model's states (f after the last),
    # allocated across layers by least discarded HSV energy. {} = off
    reduce_during: dict = field(default_factory=dict)
    # a block's norm and GLU and the final norm + pooling on CPU (dssbt.fused): "torch" (torch's ops) | "c"
    # (compiled C kernels, or an error where no C compiler works) | "auto" (C where it builds, else torch);
    # float32 results of c and torch differ by rounding
    kernels: str = "torch"
    # at most this many training steps per epoch (the first batches of the epoch's shuffled order); the schedule
    # counts the steps taken. 0 = every batch of the training split. For rehearsals and smoke runs at full shapes.
    max_steps_per_epoch: int = 0
    # torch.compile (inductor) of the model's forward in training and evaluation (its backward through AOT
    # autograd), on CPU and CUDA; off: eager, and a job imports nothing of torch._dynamo. Results differ from eager
    # by rounding. Off by default: measured slower per step and per whole job on CPU (docs/benchmarks.md)
    compile: bool = False
    # quantisation-aware training (dssbt.qat), meant for the retraining: "int8" | "int16" runs every forward pass of
    # training, validation and the final evaluation through fake-quantised weights of the linear maps the int8 /
    # int16 export quantises (straight-through gradient to the float masters, which model.pt keeps); "none" = off
    qat: str = "none"


ON_DIVERGENCE = ("fail", "keep_best")
AMP = ("none", "bf16", "fp16")
AMP_FROM_BOOL = {False: "none", True: "bf16"}  # optim.amp of configs and metrics written when it was a bool
KERNELS = ("auto", "c", "torch")
QAT = ("int8", "int16")  # optim.qat besides "none" (off); dssbt.qat.QAT maps them to bits
REDUCE_DURING_KEYS = {"at_epochs": list, "tol": float, "budget": float, "moments": str}
REDUCE_DURING_MOMENTS = ("reset", "mean")
# Keys added after runs were finished: left out of to_dict() (metrics, resume identity) while at their default, so
# a job's recorded hyper-parameters, and so everything derived from them, stay as they were before the key existed.
OPTIM_KEYS_OMITTED_AT_DEFAULT = (
    "hsv_reg",
    "on_divergence",
    "reduce_during",
    "kernels",
    "max_steps_per_epoch",
    "compile",
    "qat",
)


@dataclass
class Hparams:
    model: dict[str, Any] = field(default_factory=dict)  # keys of MODEL_KEYS, validated by ModelConfig
    optim: OptimHparams = field(default_factory=OptimHparams)
    # method -> options, passed to it by ``dssbt reduce`` (defaults there: h2 tol 1e-8, max_iter 100); checked
    # against the methods by ``reduction.registry.check_reduction_options``, which knows them (this module imports
    # nothing of dssbt.reduction)
    reduction: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        default = asdict(OptimHparams())
        optim = {
            k: v for k, v in asdict(self.optim).items() if not (k in OPTIM_KEYS_OMITTED_AT_DEFAULT and v == default[k])
        }
        if optim["amp"] == "none":  # recorded as when amp was a bool, so finished runs keep their hyper-parameters
            optim["amp"] = False
        d = {"model": dict(sorted(self.model.items())), "optim": optim}
        return d | ({"reduction": self.reduction} if self.reduction else {})


def _check_type(where: str, key: str, value: Any, want: type) -> None:
    ok = isinstance(value, want) and not (isinstance(value, bool) and want is not bool)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ValueError(f"hyper-parameters: {where}.{key} must be {want.__name__}, got {value!r}")


def parse_hparams(source: str | dict[str, Any]) -> Hparams:
    """Parse and validate hyper-parameters from a JSON string or a dict. Raises ValueError naming the bad key."""
    if isinstance(source, str):
        try:
            source = json.loads(source)
        except json.JSONDecodeError as e:
            raise ValueError(f"hyper-parameters: not valid JSON ({e})") from None
    if not isinstance(source, dict):
        raise ValueError(f"hyper-parameters: expected a JSON object, got {type(source).__name__}")
    unknown = sorted(set(source) - {"model", "optim", "reduction"})
    if unknown:
        raise ValueError(
            f"hyper-parameters: unknown section(s) {unknown}; sections are ['model', 'optim', 'reduction']"
        )
    model = dict(source.get("model", {}))
    for k, v in model.items():
        if k not in MODEL_KEYS:
            raise ValueError(f"hyper-parameters: unknown key model.{k}; known: {sorted(MODEL_KEYS)}")
        _check_type("model", k, v, MODEL_KEYS[k])
    optim_in = dict(source.get("optim", {}))
    types = {
        f.name: {"int": int, "float": float, "str": str, "bool": bool, "dict": dict}[str(f.type)]
        for f in fields(OptimHparams)
    }
    if isinstance(optim_in.get("amp"), bool):
        optim_in["amp"] = AMP_FROM_BOOL[optim_in["amp"]]
    for k, v in optim_in.items():
        if k not in types:
            raise ValueError(f"hyper-parameters: unknown key optim.{k}; known: {sorted(types)}")
        _check_type("optim", k, v, types[k])
    optim = OptimHparams(**optim_in)
    if optim.schedule not in ("cosine", "plateau"):
        raise ValueError(f"hyper-parameters: optim.schedule={optim.schedule!r} is not one of ['cosine', 'plateau']")
    if optim.on_divergence not in ON_DIVERGENCE:
        raise ValueError(
            f"hyper-parameters: optim.on_divergence={optim.on_divergence!r} is not one of {list(ON_DIVERGENCE)}"
        )
    if optim.amp not in AMP:
        raise ValueError(
            f"hyper-parameters: optim.amp={optim.amp!r} is not one of {list(AMP)} (or false / true: none / bf16)"
        )
    if optim.kernels not in KERNELS:
        raise ValueError(f"hyper-parameters: optim.kernels={optim.kernels!r} is not one of {list(KERNELS)}")
    if optim.qat not in ("none", *QAT):
        raise ValueError(
            f"hyper-parameters: optim.qat={optim.qat!r} is not one of {list(QAT)} (or none, the default: off)"
        )
    if optim.compile and optim.kernels == "c":
        raise ValueError(
            "hyper-parameters: optim.compile=true and optim.kernels='c' exclude each other (torch.compile cannot "
            "trace the C kernels); under compile the model runs torch's ops (kernels 'auto' means torch there)"
        )
    for k in ("epochs", "batch_size", "eval_batch_size"):
        if getattr(optim, k) < 1:
            raise ValueError(f"hyper-parameters: optim.{k} must be >= 1, got {getattr(optim, k)}")
    for k in (
        "lr",
        "ssm_lr",
        "weight_decay",
        "warmup_epochs",
        "grad_clip",
        "patience",
        "hsv_reg",
        "max_steps_per_epoch",
    ):
        if getattr(optim, k) < 0:
            raise ValueError(f"hyper-parameters: optim.{k} must be >= 0, got {getattr(optim, k)}")
    if optim.reduce_during:
        optim.reduce_during = _check_reduce_during(optim.reduce_during, optim.epochs)
    reduction = source.get("reduction", {})
    if not isinstance(reduction, dict):
        raise ValueError(f"hyper-parameters: reduction must be an object, got {reduction!r}")
    for method, options in reduction.items():
        if not isinstance(options, dict):
            raise ValueError(f"hyper-parameters: reduction.{method} must be an object, got {options!r}")
    return Hparams(model=model, optim=optim, reduction={m: dict(o) for m, o in sorted(reduction.items())})


HPARAMS_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def load_hparams_arg(text: str) -> dict[str, Any]:
    """The value of a ``--hparams`` flag: inline JSON (an object, ``{...}``) or the path of a ``.json``, ``.yaml`` or
    ``.yml`` file holding that object. Returns the object, checked by :func:`parse_hparams`. Raises ValueError naming
    the file (or the inline value) for a missing or unreadable file, bad JSON/YAML and bad keys."""
    if text.lstrip().startswith("{"):
        where = f"--hparams {text}"
        try:
            source = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
    else:
        from pathlib import Path

        path = Path(text)
        where = f"--hparams {path}"
        if path.suffix.lower() not in HPARAMS_FILE_SUFFIXES:
            raise ValueError(
                f"--hparams {text!r}: neither inline JSON (an object in braces) nor a "
                f"{', '.join(HPARAMS_FILE_SUFFIXES)} file"
            )
        try:
            content = path.read_text()
        except FileNotFoundError:
            raise ValueError(f"{where}: no such file") from None
        except OSError as e:
            raise ValueError(f"{where}: cannot be read ({e})") from None
        if path.suffix.lower() == ".json":
            try:
                source = json.loads(content)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e})") from None
        else:
            import yaml

            try:
                source = yaml.safe_load(content)
            except yaml.YAMLError as e:
                raise ValueError(f"{where}: not valid YAML ({e})") from None
            if source is None:  # an empty file: no hyper-parameters given
                source = {}
    try:
        parse_hparams(source)
    except ValueError as e:
        hint = ""
        if "must be float, got '" in str(e):
            hint = " (YAML reads 1e-3 as a string: write 1.0e-3)"
        raise ValueError(f"{where}: {e}{hint}") from None
    return source


def _check_reduce_during(rd: dict[str, Any], epochs: int) -> dict[str, Any]:
    """optim.reduce_during checked (every key, the epochs against optim.epochs); returns it with sorted keys."""
    where = "optim.reduce_during"
    for k, v in rd.items():
        if k not in REDUCE_DURING_KEYS:
            raise ValueError(f"hyper-parameters: unknown key {where}.{k}; known: {sorted(REDUCE_DURING_KEYS)}")
        _check_type(where, k, v, REDUCE_DURING_KEYS[k])
    at = rd.get("at_epochs")
    if not at or not all(isinstance(e, int) and not isinstance(e, bool) for e in at):
        raise ValueError(f"hyper-parameters: {where}.at_epochs must be a non-empty list of epochs, got {at!r}")
    if list(at) != sorted(set(at)) or not 1 <= at[0] or at[-1] >= epochs:
        raise ValueError(
            f"hyper-parameters: {where}.at_epochs={list(at)} must increase strictly within "
            f"[1, optim.epochs={epochs}) (training continues after the last reduction)"
        )
    if ("tol" in rd) == ("budget" in rd):
        raise ValueError(
            f"hyper-parameters: {where} needs exactly one of tol (the HSV energy each layer may drop "
            "at a reduction) and budget (the fraction of the model's states kept)"
        )
    for k in ("tol", "budget"):
        if k in rd and not 0 < rd[k] < 1:
            raise ValueError(f"hyper-parameters: {where}.{k} must be in (0, 1), got {rd[k]}")
    if rd.get("moments", "reset") not in REDUCE_DURING_MOMENTS:
        raise ValueError(
            f"hyper-parameters: {where}.moments={rd['moments']!r} is not one of {list(REDUCE_DURING_MOMENTS)}"
        )
    return dict(sorted(rd.items()))


def equal_budget_hparams(
    train: str | dict[str, Any], retrain: str | dict[str, Any], pretrain: str | dict[str, Any] | None = None
) -> str:
    """Hyper-parameter JSON of the equal-budget Skew-HiPPO control: those of the baseline (``train``) with
    ``optim.epochs`` = the pretraining epochs (``pretrain``'s, default ``train``'s) + the retraining epochs
    (``retrain``), so the order-r model sees as many epochs as a BT-init model has in total. Everything else (and so
    the schedule's shape: the cosine decay runs over the total) is the baseline's, e.g. without the pretraining's
    hsv_reg. Every input is parsed and checked; returns sorted JSON."""
    hp = json.loads(train) if isinstance(train, str) else dict(train)
    first = parse_hparams(hp if pretrain is None else pretrain).optim.epochs
    total = first + parse_hparams(retrain).optim.epochs
    hp = {**hp, "optim": {**hp.get("optim", {}), "epochs": total}}
    parse_hparams(hp)
    return json.dumps(hp, sort_keys=True)
