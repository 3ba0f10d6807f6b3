"""Training and evaluation of one model on one prepared task, with per-epoch resume.

``train`` writes into ``out_dir``: ``model.pt`` (the best checkpoint by validation accuracy), ``history.csv``
(one row per epoch, row 0 = before any update), ``metrics.json`` (written last). While it runs it keeps
``train_state.pt`` (model, optimiser, scheduler, RNG states, epoch, history), written atomically after every epoch;
started again with the same arguments it continues from the last completed epoch and ends with the same metrics as
an uninterrupted run. The state file is removed once the outputs are complete.
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
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import __version__
from .checkpoint import load_model, save_model
from .data.prepared import SPLITS, Split, load_meta, load_split
from .hippo import INITS
from .hparams import Hparams, parse_hparams
from .io import atomic_path, write_json
from .model import ModelConfig, S4Model, count_parameters
from .reduction.apply import load_layer_orders, order_spec

TRAIN_INITS = (*INITS, "from_reduced")
SSM_PARAMS = ("Lambda_log_neg_re", "Lambda_im", "B", "C", "log_dt")


# ----- data --------------------------------------------------------------------------------------------------------

def load_task(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Split]]:
    """Metadata and the three splits of a prepared task folder."""
    meta = load_meta(folder)
    return meta, {s: load_split(folder, s) for s in SPLITS}


def batches(split: Split, index: torch.Tensor, batch_size: int, device: torch.device) -> Iterator[tuple]:
    """Yield (x, lengths, y) for consecutive chunks of ``index``, each trimmed to its longest sequence.

    x: (b, L') int64 tokens | (b, L') float32 pixels | (b, 2, L') for two-document tasks; lengths (b,) | (b, 2).
    The split stays in its compact stored form; only the batch is decoded (``Split.batch_inputs``).
    """
    for i in range(0, len(index), batch_size):
        idx = index[i : i + batch_size].numpy()
        ln = torch.from_numpy(split.lengths[idx])
        L = int(ln.max())
        x = torch.from_numpy(np.ascontiguousarray(split.batch_inputs(idx, L)))
        yield x.to(device), ln.to(device), torch.from_numpy(split.labels[idx]).to(device)


# ----- model -------------------------------------------------------------------------------------------------------

def full_state_size(hp: Hparams) -> int:
    """N of a job: model.d_state, or ModelConfig's default."""
    return hp.model.get("d_state", ModelConfig.__dataclass_fields__["d_state"].default)


def model_config(
    meta: dict[str, Any], hp: Hparams, init: str, order: int | None = None, layer_orders: list[int] | None = None
) -> ModelConfig:
    """The architecture of a job: task part from ``meta``, the rest from ``hp``, state size ``order`` (or N), or
    one state size per layer (``layer_orders``, each <= N)."""
    if init not in TRAIN_INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {list(TRAIN_INITS)}")
    N = full_state_size(hp)
    if order is not None and layer_orders is not None:
        raise ValueError("give either --order or --layer-orders, not both")
    if order is not None and not 1 <= order < N:
        raise ValueError(f"order r={order} must satisfy 1 <= r < N={N} (model.d_state)")
    if init == "from_reduced" and order is None and layer_orders is None:
        raise ValueError("init from_reduced needs --order r or --layer-orders (the state sizes of the reduced model)")
    task = {k: meta[k] for k in ("d_input", "d_output", "encoder", "dual")}
    cfg = ModelConfig.from_dict({**hp.model, **task, "d_state": order or N, "init": init if init in INITS else "skew_hippo"})
    if layer_orders is not None:
        if len(layer_orders) != cfg.n_layers or not all(1 <= r <= N for r in layer_orders):
            raise ValueError(f"layer orders {list(layer_orders)} must be n_layers={cfg.n_layers} sizes in [1, N={N}]")
        cfg = cfg.with_state_sizes(layer_orders)
    return cfg


def optimizer(model: S4Model, hp: Hparams) -> torch.optim.AdamW:
    """AdamW with the SSM parameters (Lambda, B, C, log_dt: own lr, no weight decay) apart from the rest."""
    ssm, rest = [], []
    for name, p in model.named_parameters():
        (ssm if ".dss." in name and name.rsplit(".", 1)[1] in SSM_PARAMS else rest).append(p)
    o = hp.optim
    return torch.optim.AdamW(
        [{"params": ssm, "lr": o.ssm_lr, "weight_decay": 0.0}, {"params": rest, "lr": o.lr, "weight_decay": o.weight_decay}]
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


# ----- evaluation --------------------------------------------------------------------------------------------------

def evaluate(model: S4Model, split: Split, batch_size: int, device: torch.device, amp: bool = False) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on a split (eval mode)."""
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad(), _autocast(device, amp):
        for x, lengths, y in batches(split, torch.arange(len(split)), batch_size, device):
            logits = model(x, lengths).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(-1) == y).sum())
    return {"loss": loss_sum / len(split), "accuracy": correct / len(split)}


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def summary_metrics(
    model: S4Model, data: dict[str, Split], hp: Hparams, device: torch.device, splits=SPLITS
) -> dict[str, dict[str, float]]:
    """{"accuracy": {split: ...}, "loss": {split: ...}} of ``model`` on ``splits``."""
    res = {s: evaluate(model, data[s], hp.optim.eval_batch_size, device, hp.optim.amp) for s in splits}
    return {"accuracy": {s: r["accuracy"] for s, r in res.items()}, "loss": {s: r["loss"] for s, r in res.items()}}


def base_metrics(
    meta: dict[str, Any], model: S4Model, hp: Hparams, init: str, seed: int | None, device, N: int,
    order_spec: str | None = None,
) -> dict:
    """The fields every metrics.json carries (train, reduce and evaluate write the same shape).

    ``order`` is the largest state size of a layer, ``layer_orders`` the size of each, ``order_spec`` how the
    order was asked for: the order itself, or ``tol:<tolerance>`` for orders chosen per layer (``layers:6,7`` when a
    per-layer model comes without its tolerance, e.g. to ``dssbt evaluate``).
    """
    return {
        "task": meta.get("task"),
        "init": init,
        "seed": seed,
        "order": model.cfg.d_state,
        "layer_orders": model.cfg.state_sizes(),
        "order_spec": order_spec or _layers_spec(model.cfg),
        "N": N,
        "params": count_parameters(model),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "hparams": hp.to_dict(),
        "model_config": model.cfg.to_dict(),
        "version": __version__,
    }


def _layers_spec(cfg: ModelConfig) -> str:
    return "layers:" + ",".join(map(str, cfg.layer_states)) if cfg.layer_states else str(cfg.d_state)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


# ----- training ----------------------------------------------------------------------------------------------------

def train(
    data_dir: str | os.PathLike,
    hparams: str | dict[str, Any],
    init: str,
    seed: int,
    out_dir: str | os.PathLike,
    order: int | None = None,
    reduced: str | os.PathLike | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
    layer_orders: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train one model; returns the metrics also written to ``out_dir/metrics.json``. See the module docstring.

    ``layer_orders``: a file written by ``dssbt orders`` (one state size per layer, chosen by tolerance)."""
    hp = parse_hparams(hparams)
    orders_file = None if layer_orders is None else load_layer_orders(layer_orders)
    meta, data = load_task(data_dir)
    cfg = model_config(meta, hp, init, order, None if orders_file is None else orders_file["layer_orders"])
    spec = None if orders_file is None else order_spec(orders_file["tol"])
    dev = resolve_device(device)
    if init == "from_reduced" and reduced is None:
        raise ValueError("init from_reduced needs --reduced (the model file written by dssbt reduce)")
    torch.manual_seed(seed)
    model = S4Model(cfg)
    method = None
    if init == "from_reduced":
        start, start_meta = load_model(reduced, expect=cfg)
        model.load_state_dict(start.state_dict())
        method = start_meta.get("reduction", {}).get("method")
    model.to(dev)
    opt = optimizer(model, hp)
    steps_per_epoch = math.ceil(len(data["train"]) / hp.optim.batch_size)
    sched = scheduler(opt, hp, steps_per_epoch)
    shuffle = torch.Generator().manual_seed(seed)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "train_state.pt"
    job = json.dumps(
        {"data": str(Path(data_dir).resolve()), "hparams": hp.to_dict(), "init": init, "seed": seed, "order": order,
         "layer_orders": None if orders_file is None else orders_file["layer_orders"],
         "reduced": None if reduced is None else hashlib.sha256(Path(reduced).read_bytes()).hexdigest()},
        sort_keys=True,
    )
    history: list[dict[str, float]] = []
    best = {"val_accuracy": -1.0, "epoch": 0, "state": None}
    epoch, bad_epochs, elapsed = 0, 0, 0.0
    if state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        if st.get("job") == job:
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
            shuffle.set_state(st["shuffle_rng"])
            torch.set_rng_state(st["torch_rng"])
            if dev.type == "cuda" and st.get("cuda_rng") is not None:
                torch.cuda.set_rng_state_all(st["cuda_rng"])
            history, best, epoch, bad_epochs, elapsed = (st[k] for k in ("history", "best", "epoch", "bad_epochs", "elapsed"))
            log(f"resuming from {state_path} after epoch {epoch}")
        else:
            log(f"ignoring {state_path}: it belongs to a job with other arguments")
    t0 = time.perf_counter() - elapsed

    if epoch == 0:  # row 0: the model before any update
        v, t = (evaluate(model, data[s], hp.optim.eval_batch_size, dev, hp.optim.amp) for s in ("val", "test"))
        history.append(_row(0, {"loss": math.nan, "accuracy": math.nan}, v, t, opt, 0.0))
        best = {"val_accuracy": v["accuracy"], "epoch": 0, "state": _cpu_state(model)}
        log(f"epoch 0 (before training): val acc {v['accuracy']:.4f}, test acc {t['accuracy']:.4f}")

    tty = sys.stderr.isatty()
    while epoch < hp.optim.epochs and not (hp.optim.patience and bad_epochs >= hp.optim.patience):
        epoch += 1
        model.train()
        order_idx = torch.randperm(len(data["train"]), generator=shuffle)
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{hp.optim.epochs}", file=sys.stderr, ascii=True,
                   mininterval=1.0 if tty else 30.0, ncols=100, disable=False)
        for x, lengths, y in batches(data["train"], order_idx, hp.optim.batch_size, dev):
            with _autocast(dev, hp.optim.amp):
                logits = model(x, lengths).float()
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if hp.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), hp.optim.grad_clip)
            opt.step()
            if hp.optim.schedule == "cosine":
                sched.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(-1) == y).sum())
            seen += len(y)
            bar.update()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        bar.close()
        v = evaluate(model, data["val"], hp.optim.eval_batch_size, dev, hp.optim.amp)
        if hp.optim.schedule == "plateau":
            sched.step(v["accuracy"])
        tr = {"loss": loss_sum / seen, "accuracy": correct / seen}
        history.append(_row(epoch, tr, v, None, opt, time.perf_counter() - t0))
        if v["accuracy"] > best["val_accuracy"]:
            best, bad_epochs = {"val_accuracy": v["accuracy"], "epoch": epoch, "state": _cpu_state(model)}, 0
        else:
            bad_epochs += 1
        log(f"epoch {epoch}/{hp.optim.epochs}: train loss {tr['loss']:.4f} acc {tr['accuracy']:.4f} | "
            f"val loss {v['loss']:.4f} acc {v['accuracy']:.4f} | best val {best['val_accuracy']:.4f} "
            f"(epoch {best['epoch']}) | {time.perf_counter() - t0:.0f} s")
        st = {
            "job": job, "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "shuffle_rng": shuffle.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if dev.type == "cuda" else None,
            "history": history, "best": best, "epoch": epoch, "bad_epochs": bad_epochs,
            "elapsed": time.perf_counter() - t0,
        }
        with atomic_path(state_path) as tmp:
            torch.save(st, tmp)

    model.load_state_dict(best["state"])
    # val/test re-measured on the best model; train as measured during its epoch (saves a pass over train)
    final = summary_metrics(model, data, hp, dev, splits=("val", "test"))
    best_row = history[best["epoch"]]
    for key, col in (("accuracy", "train_accuracy"), ("loss", "train_loss")):
        final[key]["train"] = None if math.isnan(best_row[col]) else best_row[col]  # None: best is epoch 0
    N = full_state_size(hp)
    metrics = base_metrics(meta, model, hp, init, seed, dev, N, spec) | final | {
        "initial": {"accuracy": {"val": history[0]["val_accuracy"], "test": history[0]["test_accuracy"]}},
        "method": method,  # the reduction the model started from (init from_reduced), else None
        "best_epoch": best["epoch"],
        "epochs_run": epoch,
        "wall_time_s": time.perf_counter() - t0,
    }
    save_model(out / "model.pt", model.cpu(), {"l_max": meta["l_max"], "task": meta.get("task"), "init": init, "seed": seed})
    _write_history(out / "history.csv", history)
    write_json(out / "metrics.json", metrics)
    state_path.unlink(missing_ok=True)
    log(f"done: best epoch {best['epoch']}, test accuracy {final['accuracy']['test']:.4f}, wrote {out}")
    return metrics


def _cpu_state(model: S4Model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _row(epoch: int, tr: dict, v: dict, t: dict | None, opt: torch.optim.Optimizer, seconds: float) -> dict[str, float]:
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
    }


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0]))
    w.writeheader()
    w.writerows(history)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
