"""Training of one model on one prepared task, with per-epoch resume.

``train`` writes into ``out_dir``: ``model.pt`` (the best checkpoint by validation accuracy), ``history.csv``
(one row per epoch, row 0 = before any update), ``predictions.npz`` (that model's prediction of every val and test
example: ``evaluate.save_predictions``), ``metrics.json`` (written last). While it runs it keeps
``train_state.pt`` (``resume.ResumeState``), written atomically after every epoch; started again with the same
arguments it continues from the last completed epoch and ends with the same metrics as an uninterrupted run. The
state file is removed once the outputs are complete. Evaluation and the metrics format are in ``evaluate.py``.

In-training reduction (``optim.reduce_during``, full-N pretraining only): after each listed epoch the model is
balanced-truncated (``dssbt.shrink``) and training goes on at the smaller size; the best checkpoint is taken among
the epochs after the last reduction, and a resumed job rebuilds the model at its reduced size.

Mixed precision (``optim.amp``): ``bf16`` and ``fp16`` run the forward passes of training and evaluation under
autocast on the job's device (CPU or CUDA), the DSS layers in float32 (``dss.float32_region``); ``fp16`` scales the
loss with ``torch.amp.GradScaler``, whose state is part of the resume state. A step whose gradients overflow under
the scaler is skipped (and the scale halved), as GradScaler does; it is a divergence only once the scale is below 1.

Divergence: a non-finite training loss, or a non-finite gradient norm after the backward pass, stops the epoch
before the optimiser steps. With ``optim.on_divergence = "fail"`` (the default) ``train`` raises ValueError naming
the job (task, seed, init, order), the epoch and step and the learning rates, and writes no output; with
``"keep_best"`` it finishes with the best checkpoint of the epochs before and marks the metrics ``diverged``.

Quantisation-aware training (``optim.qat``: int8 | int16, ``dssbt.qat``): every forward pass (training steps, the
per-epoch validation that picks the best checkpoint and drives early stopping, the final evaluation and
predictions) runs through fake-quantised weights of the linear maps the export quantises, so the metrics are those
of the quantised model; ``model.pt`` holds the float master weights under the usual keys.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import fused, qat
from .batches import batches
from .checkpoint import load_model, read_config, save_model
from .curves import EpochLogger
from .data.prepared import SPLITS, Split, load_meta, load_split
from .eager import AdamW
from .evaluate import (
    PREDICTION_SPLITS,
    amp_dtype,
    autocast,
    base_metrics,
    evaluate,
    predictions_path,
    resolve_device,
    save_predictions,
    summary_and_predictions,
)
from .hippo import INITS
from .hparams import DEFAULT_D_STATE, MODEL_KEYS, Hparams, parse_hparams
from .io import atomic_path, write_json
from .model import ModelConfig, S4Model
from .reduction.hankel import hankel_penalty
from .resume import ResumeState
from .runs import BASELINE_METHODS, describe_run
from .shrink import move_scheduler, orders_by_budget, orders_by_tol, shrink_model

TRAIN_INITS = (*INITS, "from_reduced", "from_pretrained")  # from_*: start from a model file
SSM_PARAMS = ("Lambda_log_neg_re", "Lambda_im", "B", "C", "log_dt")


def load_task(folder: str | os.PathLike, l_max: int | None = None) -> tuple[dict[str, Any], dict[str, Split]]:
    """Metadata and the three splits of a prepared task folder, each checked against meta.json and, where given,
    the model's ``l_max`` (``data.prepared.check_split``: a bad file is refused before anything is written)."""
    meta = load_meta(folder)
    return meta, {s: load_split(folder, s, meta, l_max) for s in SPLITS}


# ----- model -------------------------------------------------------------------------------------------------------


def full_state_size(hp: Hparams) -> int:
    """N of a job: model.d_state, or ModelConfig's default."""
    return hp.model.get("d_state", DEFAULT_D_STATE)


def model_config(meta: dict[str, Any], hp: Hparams, init: str, order: int | list[int] | None = None) -> ModelConfig:
    """The architecture of a job: task part from ``meta``, the rest from ``hp``; state size ``order`` (an int r < N,
    a list of one size per layer, each <= N, or None for N)."""
    if init not in TRAIN_INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {list(TRAIN_INITS)}")
    N = full_state_size(hp)
    if isinstance(order, int) and not 1 <= order < N:
        raise ValueError(f"order r={order} must satisfy 1 <= r < N={N} (model.d_state)")
    if init == "from_reduced" and order is None:
        raise ValueError("init from_reduced needs --order r or --layer-orders (the state sizes of the reduced model)")
    if init == "from_pretrained" and order is not None:
        raise ValueError("init from_pretrained continues the full-N model: no --order or --layer-orders")
    task = {k: meta[k] for k in ("d_input", "d_output", "encoder", "dual")}
    uniform = order if isinstance(order, int) else N
    cfg = ModelConfig.from_dict(
        {**hp.model, **task, "d_state": uniform, "init": init if init in INITS else "skew_hippo"}
    )
    if isinstance(order, list):
        if len(order) != cfg.n_layers or not all(1 <= r <= N for r in order):
            raise ValueError(f"layer orders {list(order)} must be n_layers={cfg.n_layers} sizes in [1, N={N}]")
        cfg = cfg.with_layer_orders(order)
    return cfg


TASK_KEYS = ("d_input", "d_output", "encoder", "dual")  # the part of a ModelConfig the prepared data decides


def start_architecture(
    path: str | os.PathLike, hp: Hparams, init: str, order: int | list[int] | None, order_spec: str | None
) -> tuple[Hparams, int | list[int] | None, str | None]:
    """The architecture a ``from_reduced`` / ``from_pretrained`` job takes from its model file ``path``; returns
    (hp, order, order_spec).

    Without a model section in ``hp`` the file's architecture becomes the job's, recorded in its hyper-parameters
    as the model keys whose value differs from ModelConfig's default (so a default architecture records ``{}``, as
    before), d_state = the full N (recorded by ``dssbt reduce`` in a reduced file). The model trained is the one a
    job that restates the architecture trains.
    A ``from_reduced`` job without an order takes the file's orders and order spec. A model section that is given
    must describe the file's model (``check_start_architecture``)."""
    cfg, meta = read_config(path)
    reduction = meta.get("reduction") or {}
    if init == "from_reduced" and order is None:
        order_spec = reduction.get("order_spec")
        per_layer = bool(cfg.layer_orders) or (order_spec is not None and ":" in str(order_spec))
        order = cfg.orders_by_layer() if per_layer else cfg.d_state
    if hp.model:
        return hp, order, order_spec
    if init == "from_reduced":
        N = reduction.get("N")
        if N is None:
            raise ValueError(
                f"{path}: the file does not record the pretrained model's state size N (a reduced model written "
                "before dssbt reduce recorded it): give the architecture as the model section of --hparams"
            )
    else:
        N = cfg.d_state
    default = ModelConfig(d_input=1, d_output=1)
    model = {k: getattr(cfg, k) for k in MODEL_KEYS if k != "d_state" and getattr(cfg, k) != getattr(default, k)}
    if N != DEFAULT_D_STATE:
        model["d_state"] = N
    return Hparams(model=dict(sorted(model.items())), optim=hp.optim, reduction=hp.reduction), order, order_spec


def check_start_architecture(path: str | os.PathLike, cfg: ModelConfig, hp: Hparams, init: str) -> None:
    """ValueError naming every key where the model file ``path`` and the job's architecture ``cfg`` (built from the
    prepared data, the model section of ``hp`` and the order) differ, and where each job value comes from."""
    file_cfg, meta = read_config(path)
    have, want = file_cfg.to_dict(), cfg.to_dict()
    parts = []
    for k, v in want.items():
        if k == "init" or have[k] == v:  # the Lambda init is overwritten by the file's weights
            continue
        if k in TASK_KEYS:
            source = "the prepared data"
        elif init == "from_reduced" and k in ("d_state", "layer_orders"):
            source = "--order / --layer-orders"
        elif k in hp.model:
            source = "--hparams model"
        else:
            source = "the default (not in --hparams model)"
        parts.append(f"{k}: file {have[k]!r}, {source} {v!r}")
    N = (meta.get("reduction") or {}).get("N")
    if init == "from_reduced" and N is not None and "d_state" in hp.model and hp.model["d_state"] != N:
        parts.append(f"N (the pretrained state size): file {N!r}, --hparams model.d_state {hp.model['d_state']!r}")
    if parts:
        raise ValueError(
            f"{path}: the model file's architecture contradicts the job's ({'; '.join(parts)}); leave the model "
            "section out of --hparams to take the file's architecture"
        )


def optimizer(model: S4Model, hp: Hparams) -> torch.optim.AdamW:
    """AdamW with the SSM parameters (Lambda, B, C, log_dt: own lr, no weight decay) apart from the rest
    (``eager.AdamW``: torch's, stepped without importing torch._dynamo)."""
    ssm, rest = [], []
    for name, p in model.named_parameters():
        (ssm if ".dss." in name and name.rsplit(".", 1)[1] in SSM_PARAMS else rest).append(p)
    o = hp.optim
    return AdamW(
        [
            {"params": ssm, "lr": o.ssm_lr, "weight_decay": 0.0},
            {"params": rest, "lr": o.lr, "weight_decay": o.weight_decay},
        ]
    )


def scheduler(opt: torch.optim.Optimizer, hp: Hparams, steps_per_epoch: int):
    """Warmup + cosine (stepped per batch) or reduce-on-plateau of val accuracy (stepped per epoch)."""
    o = hp.optim
    if o.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=2)
    total = o.epochs * steps_per_epoch
    warmup = int(o.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def compile_model(model: S4Model, hp: Hparams) -> S4Model:
    """``optim.compile``: ``model.compile()`` (torch.compile, inductor, in place: the module's call runs the compiled
    forward, its state dict and parameters unchanged), so training and evaluation run compiled, the backward through
    AOT autograd. Graphs are cached by inductor on disk (``TORCHINDUCTOR_CACHE_DIR``, default a folder per user under
    the system's temp dir), so the jobs of one machine compile a shape once. Off: nothing is done and nothing of
    torch._dynamo is imported. Returns ``model``."""
    if hp.optim.compile:
        model.compile()
    return model


def as_job_runs_it(model: S4Model, hp: Hparams) -> S4Model:
    """``model`` as a training job runs it, wherever one is built (start, resume at a reduced size, in-training
    reduction): fake-quantised forwards where ``optim.qat`` (``dssbt.qat``), then compiled where ``optim.compile``."""
    return compile_model(qat.enable(model, hp.optim.qat), hp)


# ----- training ----------------------------------------------------------------------------------------------------


class Diverged(Exception):
    """A non-finite value met at training step ``step`` (1-based, within epoch ``epoch``) before the optimiser
    step: ``what`` is "training loss" or "gradient norm"; ``lr``, ``ssm_lr`` the scheduled rates at that step."""

    def __init__(self, what: str, value: float, epoch: int, step: int, lr: float, ssm_lr: float):
        super().__init__(f"{what} is {value} at epoch {epoch}, step {step}")
        self.what, self.value, self.epoch, self.step, self.lr, self.ssm_lr = what, value, epoch, step, lr, ssm_lr


def train(
    data_dir: str | os.PathLike,
    hparams: str | dict[str, Any],
    init: str,
    seed: int,
    out_dir: str | os.PathLike,
    order: int | list[int] | None = None,
    order_spec: str | None = None,
    start: str | os.PathLike | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
    method: str | None = None,
    stop_after: int | None = None,
    logger: EpochLogger | None = None,
) -> dict[str, Any]:
    """Train one model; returns the metrics also written to ``out_dir/metrics.json``. See the module docstring.

    ``order``: None (full N: pretraining), r, or one order per layer (then ``order_spec`` names how they were
    chosen, e.g. ``tol:0.3``). ``init``: a Lambda init (``hippo.INITS``), ``from_reduced`` with ``start``, the
    model file written by ``dssbt reduce``, or ``from_pretrained`` with ``start`` the pretrained full-N model file
    (the ``full_continued`` control: that model trained further, stage ``continue``, method ``full``).
    ``stop_after``: a snapshot of the full-N pretraining (the correlation study): the same run (same
    hyper-parameters, schedule and RNG streams) stopped after that epoch, its best model up to then by validation
    accuracy as the pretraining picks its own; stage ``snapshot``, run ``pretrain_e{stop_after}``. ``method``: the run's method name in its metrics (and so its run folder
    name, ``dssbt.runs.run_name``) for a baseline of order r, e.g. ``skew_hippo_equal`` for the equal-budget
    control (``runs.BASELINE_METHODS``); default the init. ``logger``: told every history row and the final metrics
    (``curves.EpochLogger``, e.g. ``curves.TensorBoardLogger``); it changes no result.
    """
    hp = parse_hparams(hparams)
    with fused.kernels("torch" if hp.optim.compile else hp.optim.kernels):  # compile traces torch's ops only
        return _train(
            data_dir,
            hp,
            init,
            seed,
            out_dir,
            order=order,
            order_spec=order_spec,
            start=start,
            device=device,
            log=log,
            method=method,
            stop_after=stop_after,
            logger=logger,
        )


def _train(
    data_dir, hp: Hparams, init, seed, out_dir, *, order, order_spec, start, device, log, method, stop_after, logger
) -> dict[str, Any]:
    """``train`` with parsed hyper-parameters, under its kernels."""
    if method is not None and (init.startswith("from_") or order is None or method not in BASELINE_METHODS):
        raise ValueError(
            f"--method {method!r}: only a baseline of order r (not from_reduced, not the full-N "
            f"pretraining) takes a method name, one of {list(BASELINE_METHODS)}"
        )
    if init.startswith("from_") and start is None:
        raise ValueError(
            f"init {init} needs --model (the model file to start from: written by dssbt reduce for "
            "from_reduced, the pretrained model for from_pretrained)"
        )
    if init.startswith("from_"):
        hp, order, order_spec = start_architecture(start, hp, init, order, order_spec)
    meta, data = load_task(data_dir)
    cfg = model_config(meta, hp, init, order)
    if init.startswith("from_"):
        check_start_architecture(start, cfg, hp, init)
    dev = resolve_device(device)
    if stop_after is not None and (
        order is not None or init != "skew_hippo" or method is not None or not 1 <= stop_after < hp.optim.epochs
    ):
        raise ValueError(
            f"--stop-after {stop_after}: a snapshot of the full-N Skew-HiPPO pretraining (no order, "
            f"init or method) after an epoch in [1, optim.epochs={hp.optim.epochs})"
        )
    if hp.optim.reduce_during and (order is not None or init != "skew_hippo" or method is not None):
        raise ValueError(
            "optim.reduce_during: in-training reduction applies to the full-N Skew-HiPPO pretraining "
            "(config: pretrain.optim.reduce_during), not to a baseline of order r or a retraining"
        )
    torch.manual_seed(seed)
    model = S4Model(cfg)
    method = method or init
    if init.startswith("from_"):
        first, start_meta = load_model(start, expect=cfg)
        model.load_state_dict(first.state_dict())
        method = (start_meta.get("reduction", {}).get("method") or "bt") if init == "from_reduced" else "full"
    stage = {"from_reduced": "retrain", "from_pretrained": "continue"}.get(
        init, "pretrain" if order is None else "baseline"
    )
    folder = None if order is None else _order_folder(order, order_spec)
    if stop_after is not None:
        stage, folder = "snapshot", str(stop_after)
    run = describe_run(stage, method, folder)
    model = as_job_runs_it(model.to(dev), hp)
    opt = optimizer(model, hp)
    steps_per_epoch = math.ceil(len(data["train"]) / hp.optim.batch_size)
    if hp.optim.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, hp.optim.max_steps_per_epoch)
    sched = scheduler(opt, hp, steps_per_epoch)
    shuffle = torch.Generator().manual_seed(seed)
    scaler = grad_scaler(dev, hp)  # None unless optim.amp = fp16

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "train_state.pt"
    job = json.dumps(
        {
            "data": str(Path(data_dir).resolve()),
            "hparams": hp.to_dict(),
            "init": init,
            "seed": seed,
            "order": order if isinstance(order, int) else None,
            "layer_orders": order if isinstance(order, list) else None,
            # the key keeps its old name: a resume state written before the rename still matches its job
            "reduced": None if start is None else hashlib.sha256(Path(start).read_bytes()).hexdigest(),
            "stop_after": stop_after,
        },
        sort_keys=True,
    )
    st = ResumeState.load(state_path, job, log)
    if st is not None:
        if st.layer_orders is not None:  # reduced during training: rebuild at that size, then load
            model = as_job_runs_it(S4Model(cfg.with_layer_orders(st.layer_orders)).to(dev), hp)
            opt = optimizer(model, hp)
            sched = scheduler(opt, hp, steps_per_epoch)
        model.load_state_dict(st.model)
        opt.load_state_dict(st.optimizer)
        sched.load_state_dict(st.scheduler)
        shuffle.set_state(st.shuffle_rng)
        torch.set_rng_state(st.torch_rng)
        if dev.type == "cuda" and st.cuda_rng is not None:
            torch.cuda.set_rng_state_all(st.cuda_rng)
        if scaler is not None and st.scaler:
            scaler.load_state_dict(st.scaler)
        log(f"resuming from {state_path} after epoch {st.epoch}")
    else:
        st = ResumeState(job=job)
    t0 = time.perf_counter() - st.elapsed

    if st.epoch == 0:  # row 0: the model before any update
        v, t = (evaluate(model, data[s], hp.optim.eval_batch_size, dev, hp.optim.amp) for s in ("val", "test"))
        st.history = [_row(0, {"loss": math.nan, "accuracy": math.nan}, v, t, opt, 0.0, _states(model, hp))]
        st.best = {"val_accuracy": v["accuracy"], "epoch": 0, "state": _cpu_state(model)}
        log(f"epoch 0 (before training): val acc {v['accuracy']:.4f}, test acc {t['accuracy']:.4f}")
        if logger is not None:
            logger.epoch(st.history)

    last = hp.optim.epochs if stop_after is None else stop_after  # the schedule still spans optim.epochs
    diverged = None
    while st.epoch < last and not (hp.optim.patience and st.bad_epochs >= hp.optim.patience):
        st.epoch += 1
        try:
            tr = _train_epoch(model, data["train"], hp, opt, sched, shuffle, dev, st.epoch, steps_per_epoch, scaler)
        except Diverged as d:
            msg = _divergence_message(d, meta, hp, init, seed, order, order_spec, steps_per_epoch)
            if hp.optim.on_divergence == "fail":
                raise ValueError(
                    f"{msg}; nothing written. Lower optim.lr / optim.ssm_lr, set optim.grad_clip, "
                    "or set optim.on_divergence: keep_best to keep the best checkpoint before it"
                ) from None
            log(f"warning: {msg}; finishing with the best checkpoint before it (optim.on_divergence: keep_best)")
            st.epoch -= 1  # the diverged epoch did not complete
            diverged = {"epoch": d.epoch, "step": d.step, "what": d.what, "value": str(d.value)}
            break
        v = evaluate(model, data["val"], hp.optim.eval_batch_size, dev, hp.optim.amp)
        if hp.optim.schedule == "plateau":
            sched.step(v["accuracy"])
        st.history.append(_row(st.epoch, tr, v, None, opt, time.perf_counter() - t0, _states(model, hp)))
        if v["accuracy"] > st.best["val_accuracy"]:
            st.best, st.bad_epochs = {"val_accuracy": v["accuracy"], "epoch": st.epoch, "state": _cpu_state(model)}, 0
        else:
            st.bad_epochs += 1
        log(
            f"epoch {st.epoch}/{hp.optim.epochs}: train loss {tr['loss']:.4f} acc {tr['accuracy']:.4f} | "
            f"val loss {v['loss']:.4f} acc {v['accuracy']:.4f} | best val {st.best['val_accuracy']:.4f} "
            f"(epoch {st.best['epoch']}) | {time.perf_counter() - t0:.0f} s"
            + ("" if scaler is None else f" | fp16 loss scale {scaler.get_scale():g}, {tr['skipped']} steps skipped")
        )
        if st.epoch in hp.optim.reduce_during.get("at_epochs", ()) and st.epoch < last:
            model, opt = _reduce_during(model, opt, sched, hp, st, meta, log)
        if logger is not None:  # before the state is saved: a kill in between repeats the epoch's points, same values
            logger.epoch(st.history)
        st.model, st.optimizer, st.scheduler = model.state_dict(), opt.state_dict(), sched.state_dict()
        st.shuffle_rng, st.torch_rng = shuffle.get_state(), torch.get_rng_state()
        st.cuda_rng = torch.cuda.get_rng_state_all() if dev.type == "cuda" else None
        st.scaler = None if scaler is None else scaler.state_dict()
        st.elapsed = time.perf_counter() - t0
        st.save(state_path)

    history, best = st.history, st.best
    model.load_state_dict(best["state"])
    # test measured on the best model; val and train as measured at its epoch (the same weights and buffers, and
    # evaluation is deterministic, so re-measuring val gave the same numbers: tests/test_train.py checks it)
    best_row = history[best["epoch"]]
    # val is measured again only for its item-level predictions (predictions.npz; the metrics keep the epoch's)
    test, predictions = summary_and_predictions(model, data, hp, dev, splits=PREDICTION_SPLITS)
    final = {key: {"val": best_row[f"val_{key}"], "test": test[key]["test"]} for key in ("accuracy", "loss")}
    for key, col in (("accuracy", "train_accuracy"), ("loss", "train_loss")):
        final[key]["train"] = None if math.isnan(best_row[col]) else best_row[col]  # None: best is epoch 0
    metrics = (
        base_metrics(meta, model, hp, run, seed, dev, full_state_size(hp), order_spec)
        | final
        | {
            "initial": {"accuracy": {"val": history[0]["val_accuracy"], "test": history[0]["test_accuracy"]}},
            "best_epoch": best["epoch"],
            "epochs_run": st.epoch,
            "wall_time_s": time.perf_counter() - t0,
            "diverged": diverged is not None,
        }
        | ({"diverged_at": diverged} if diverged else {})
        | ({"reductions": st.reductions} if st.reductions else {})
    )
    save_model(
        out / "model.pt", model.cpu(), {"l_max": meta["l_max"], "task": meta.get("task"), "init": init, "seed": seed}
    )
    _write_history(out / "history.csv", history)
    save_predictions(predictions_path(out / "metrics.json"), predictions, data, cfg.d_output)
    write_json(out / "metrics.json", metrics)
    state_path.unlink(missing_ok=True)
    if logger is not None:
        logger.end(metrics)
    log(f"done: best epoch {best['epoch']}, test accuracy {final['accuracy']['test']:.4f}, wrote {out}")
    return metrics


# Devices whose training loop reads nothing back per step (``_train_epoch``): loss, accuracy and the divergence check
# stay on the device and are read every DEVICE_CHECK_STEPS steps and at the end of the epoch. On CPU a read costs
# nothing and the loop checks every step, as it always has; tests run the device loop on CPU by adding "cpu" here.
SYNC_FREE_DEVICES = ("cuda",)
DEVICE_CHECK_STEPS = 50


def _train_epoch(
    model: S4Model,
    split: Split,
    hp: Hparams,
    opt,
    sched,
    shuffle: torch.Generator,
    dev: torch.device,
    epoch: int,
    steps: int,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One pass over the training split in the order drawn from ``shuffle`` (its first ``steps`` batches); returns
    its mean loss and accuracy, and the steps skipped by the fp16 gradient ``scaler`` (overflowing gradients).

    On a device of ``SYNC_FREE_DEVICES`` (CUDA) the step never waits for the device: the loss sum (float64) and the
    correct count accumulate there, and a device flag records the first step whose loss or gradient norm is not
    finite; they are read every ``DEVICE_CHECK_STEPS`` steps and at the end. A divergence found at a read raises
    ``Diverged`` naming that first step, its value and its learning rates, as the per-step check does (the steps
    after it ran on, on weights that are dropped: the job fails, or keeps the best checkpoint of an earlier epoch).
    The returned metrics equal the per-step loop's (same sums in the same order)."""
    model.train()
    perm = torch.randperm(len(split), generator=shuffle)
    sync_free = dev.type in SYNC_FREE_DEVICES and scaler is None  # fp16's scaler reads the device every step anyway
    loss_sum, correct, seen, skipped = 0.0, 0, 0, 0
    if sync_free:
        loss_acc = torch.zeros((), dtype=torch.float64, device=dev)
        correct_acc = torch.zeros((), dtype=torch.int64, device=dev)
        first_bad = torch.zeros(3, dtype=torch.float64, device=dev)  # (step, loss, norm) of the first bad step
        step_dev = torch.zeros(1, dtype=torch.float64, device=dev)  # the step number, counted on the device
        lrs: dict[int, tuple[float, float]] = {}  # the scheduled rates of the steps since the last read
    tty = sys.stderr.isatty()
    bar = tqdm(
        total=steps,
        desc=f"epoch {epoch}/{hp.optim.epochs}",
        file=sys.stderr,
        ascii=True,
        mininterval=1.0 if tty else 30.0,
        ncols=100,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    for step, (x, lengths, y) in enumerate(batches(split, perm, hp.optim.batch_size, dev), start=1):
        with autocast(dev, hp.optim.amp):
            logits = model(x, lengths).float()
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        total = loss + hankel_penalty(model, hp.optim.hsv_reg) if hp.optim.hsv_reg > 0 else loss  # off: bit for bit
        if scaler is None:
            total.backward()
        else:  # fp16: the scaled loss's gradients, unscaled in place before the norm, the clipping and the step
            scaler.scale(total).backward()
            scaler.unscale_(opt)
        if hp.optim.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, hp.optim.grad_clip)  # the norm before clipping
        else:
            norm = _total_norm([p.grad for p in params if p.grad is not None])
        if sync_free:
            lrs[step] = _lrs(opt)
            pair = torch.stack([loss.detach().double(), norm.double()])  # (2,)
            step_dev += 1
            bad = ~torch.isfinite(pair).all() & (first_bad[0] == 0)
            first_bad.copy_(torch.where(bad, torch.cat([step_dev, pair]), first_bad))
            loss_acc += pair[0] * len(y)
            correct_acc += (logits.argmax(-1) == y).sum()
            opt.step()
        else:
            # Checked before the step (one sync per step, as loss.item() alone was): a non-finite gradient would
            # make every weight NaN, clipping included (it scales by the norm)
            loss_value, norm_value = torch.stack([loss.detach().float(), norm.float()]).tolist()
            if not math.isfinite(loss_value):
                raise Diverged("training loss", loss_value, epoch, step, *_lrs(opt))
            if not math.isfinite(norm_value) and (scaler is None or scaler.get_scale() < 1.0):
                raise Diverged("gradient norm", norm_value, epoch, step, *_lrs(opt))
            if scaler is None:
                opt.step()
            else:  # skips the step where the gradients overflowed (and halves the scale), else steps and may grow it
                skipped += not math.isfinite(norm_value)
                scaler.step(opt)
                scaler.update()
        if hp.optim.schedule == "cosine":
            if scaler is None:
                sched.step()
            else:  # the schedule counts steps, skipped ones included: torch's warning on a skipped first step is moot
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
                    sched.step()
        seen += len(y)
        last = step == steps  # optim.max_steps_per_epoch
        if sync_free:
            if step % DEVICE_CHECK_STEPS == 0 or last:
                _check_device(first_bad, lrs, epoch)
                loss_sum, correct = loss_acc.item(), int(correct_acc)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        else:
            loss_sum += loss_value * len(y)
            correct += int((logits.argmax(-1) == y).sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        bar.update()
        if last:
            break
    bar.close()
    return {"loss": loss_sum / seen, "accuracy": correct / seen, "skipped": skipped}


def _check_device(first_bad: torch.Tensor, lrs: dict[int, tuple[float, float]], epoch: int) -> None:
    """The device loop's read: ``Diverged`` at the first non-finite step recorded in ``first_bad`` (step, loss,
    norm), with its scheduled rates from ``lrs``; else forget the rates read."""
    step, loss_value, norm_value = first_bad.tolist()
    if step:
        what, value = ("training loss", loss_value) if not math.isfinite(loss_value) else ("gradient norm", norm_value)
        raise Diverged(what, value, epoch, int(step), *lrs[int(step)])
    lrs.clear()


def grad_scaler(dev: torch.device, hp: Hparams) -> torch.amp.GradScaler | None:
    """The loss scaler of ``optim.amp = fp16`` on ``dev`` (torch's defaults: scale 2^16, halved on an overflow,
    doubled after 2000 steps without one); None otherwise (float32 and bfloat16 need none)."""
    return torch.amp.GradScaler(dev.type) if amp_dtype(hp.optim.amp) == torch.float16 else None


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The global 2-norm of ``grads`` (as clip_grad_norm_ computes it); torch < 2.6 has no get_total_norm."""
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _lrs(opt: torch.optim.Optimizer) -> tuple[float, float]:
    """(lr, ssm_lr) as scheduled now: param group 1 holds the non-SSM weights, group 0 the SSM parameters."""
    return opt.param_groups[1]["lr"], opt.param_groups[0]["lr"]


def _divergence_message(
    d: Diverged,
    meta: dict[str, Any],
    hp: Hparams,
    init: str,
    seed: int,
    order: int | list[int] | None,
    order_spec: str | None,
    steps: int,
) -> str:
    """What diverged, in which job and where, and the learning rates (configured, and scheduled at that step)."""
    if order is None:
        what_order = f"N={full_state_size(hp)} (full)"
    elif isinstance(order, int):
        what_order = f"r={order}"
    else:
        what_order = f"{order_spec or 'per layer'} (layers {list(order)})"
    o = hp.optim
    return (
        f"training diverged: {d.what} is {d.value} (task {meta.get('task')}, seed {seed}, init {init}, "
        f"order {what_order}) at epoch {d.epoch}/{o.epochs}, step {d.step}/{steps}; "
        f"optim.lr={o.lr:g}, optim.ssm_lr={o.ssm_lr:g} (scheduled at that step: lr {d.lr:.3g}, "
        f"ssm_lr {d.ssm_lr:.3g})"
    )


def _order_folder(order: int | list[int], order_spec: str | None) -> str:
    """The {order} part of the run folder: ``8``, or the per-layer spec's (``tol0.3``; ``layers`` if unnamed)."""
    from .orders import parse_order

    if isinstance(order, int):
        return str(order)
    return parse_order(order_spec).wildcard if order_spec else "layers"


def _reduce_during(
    model: S4Model, opt, sched, hp: Hparams, st: ResumeState, meta: dict[str, Any], log: Callable[[str], None]
) -> tuple[S4Model, torch.optim.Optimizer]:
    """One scheduled in-training reduction after epoch ``st.epoch`` (``optim.reduce_during``; ``dssbt.shrink``).

    Balanced truncation of every layer (discrete route) to orders chosen on the current model, the optimizer and
    scheduler carried over. The best checkpoint restarts with the reduced model: the final model has the size of the
    last reduction, and is the best by validation accuracy among the epochs trained after it.
    """
    rd = hp.optim.reduce_during
    before = model.cfg.orders_by_layer()
    if "tol" in rd:
        orders = orders_by_tol(model, rd["tol"])
    else:  # after reduction k of K: f^(k/K) of the full model's states, as a fraction of the current ones
        k, K = rd["at_epochs"].index(st.epoch) + 1, len(rd["at_epochs"])
        fraction = rd["budget"] ** (k / K) * _full_states(hp, model) / _states(model, hp)
        orders = orders_by_budget(model, min(1.0, fraction))
    model, opt, _ = shrink_model(
        model, opt, orders, ssm_moments=rd.get("moments", "reset"), kernel_length=int(meta.get("l_max") or 1024)
    )
    model = as_job_runs_it(model, hp)  # the reduced model is a new module (new shapes: compiled afresh)
    move_scheduler(sched, opt)
    st.layer_orders = list(orders)
    st.reductions.append(
        {"epoch": st.epoch, "layer_orders_before": before, "layer_orders": list(orders), "states": _states(model, hp)}
    )
    st.best, st.bad_epochs = {"val_accuracy": -1.0, "epoch": st.epoch, "state": _cpu_state(model)}, 0
    log(
        f"epoch {st.epoch}: reduced during training, layer orders {before} -> {list(orders)} "
        f"({_states(model, hp)} states)"
    )
    return model, opt


def _full_states(hp: Hparams, model: S4Model) -> int:
    """The number of states (complex modes of every channel, direction and layer) of the full-N model."""
    return model.cfg.n_states([full_state_size(hp)] * model.cfg.n_layers)


def _states(model: S4Model, hp: Hparams) -> int | None:
    """The model's number of states (complex modes of every channel, direction and layer): the history's ``states``
    column, written when reduce_during is on."""
    return model.cfg.n_states() if hp.optim.reduce_during else None


def _cpu_state(model: S4Model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _row(
    epoch: int, tr: dict, v: dict, t: dict | None, opt: torch.optim.Optimizer, seconds: float, states: int | None = None
) -> dict[str, float]:
    return {
        "epoch": epoch,
        "train_loss": tr["loss"],
        "train_accuracy": tr["accuracy"],
        "val_loss": v["loss"],
        "val_accuracy": v["accuracy"],
        "test_accuracy": math.nan if t is None else t["accuracy"],
        "lr": opt.param_groups[1]["lr"],
        "ssm_lr": opt.param_groups[0]["lr"],
        "seconds": seconds,
    } | ({} if states is None else {"states": states})  # the model's size when this row was measured


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0]))
    w.writeheader()
    w.writerows(history)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
