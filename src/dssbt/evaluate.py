"""Evaluation of a model on prepared splits, and the metrics format every stage writes (``metrics.json``).

Every metrics file names its run: ``stage`` (pretrain | baseline | reduce | retrain | evaluate), ``method`` (the
init of a trained model, ``skew_hippo``; the reduction of a reduced or retrained one, e.g. ``bt``) and ``run``,
the run folder name (``runs.run_name``).

Item-level predictions (``predictions.npz``, beside the metrics file: ``predictions_path``): every job that
evaluates a model (training: its final model; reduce: the reduced model; evaluate) also stores, per split of
``PREDICTION_SPLITS``, the predicted class of every example (``{split}``, in the prepared split's order) and the
prepared labels (``{split}_labels``), both in the smallest unsigned integer type holding ``d_output - 1``. The
labels make the file self-contained: the paired analyses of ``dssbt.aggregate`` score each run without the data and
check that two runs were scored on the same items. Written before the metrics (which mark a finished run).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__, fused
from .batches import batches
from .data.prepared import SPLITS, Split, smallest_uint_dtype
from .hparams import AMP_FROM_BOOL, Hparams
from .io import atomic_path
from .model import S4Model, count_parameters
from .provenance import provenance


def resolve_device(name: str) -> torch.device:
    """``cpu`` | ``cuda`` | ``auto`` (cuda where torch sees one) -> torch.device; ValueError otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: str | bool) -> torch.dtype | None:
    """The autocast dtype of ``optim.amp`` (none | bf16 | fp16; false / true: none / bf16), None for float32."""
    if isinstance(amp, bool):
        amp = AMP_FROM_BOOL[amp]
    if amp not in AMP_DTYPES:
        raise ValueError(f"optim.amp={amp!r} is not one of {list(AMP_DTYPES)}")
    return AMP_DTYPES[amp]


def autocast(device: torch.device, amp: str | bool):
    """Autocast to ``optim.amp``'s dtype on ``device`` (CPU or CUDA); a disabled context for none.

    Under it the encoder, the blocks' output maps and the decoder run in the low precision; norms and the loss in
    float32 (torch's autocast lists), and the DSS layers entirely in float32 (``DSS.forward`` leaves autocast)."""
    dtype = amp_dtype(amp)
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


def evaluate(
    model: S4Model, split: Split, batch_size: int, device: torch.device, amp: str | bool = "none"
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on a split (eval mode), under ``optim.amp``'s autocast."""
    return evaluate_with_predictions(model, split, batch_size, device, amp)[0]


def evaluate_with_predictions(
    model: S4Model, split: Split, batch_size: int, device: torch.device, amp: str | bool = "none"
) -> tuple[dict[str, float], np.ndarray]:
    """``evaluate`` and the predicted class of every example of the split, int64 (n,) in the split's order."""
    model.eval()
    # accumulated on the device and read once at the end (no host synchronisation per batch on a GPU): the loss
    # sum in float64, as the float64 Python sum of each batch's float32 sum was, so CPU results are unchanged
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    predicted = []
    with torch.no_grad(), autocast(device, amp):
        for x, lengths, y in batches(split, torch.arange(len(split)), batch_size, device):
            logits = model(x, lengths).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            pred = logits.argmax(-1)
            correct += (pred == y).sum()
            predicted.append(pred)
    preds = torch.cat(predicted).cpu().numpy().astype(np.int64) if predicted else np.zeros(0, np.int64)
    return {"loss": loss_sum.item() / len(split), "accuracy": int(correct) / len(split)}, preds


def summary_metrics(
    model: S4Model, data: dict[str, Split], hp: Hparams, device: torch.device, splits=SPLITS
) -> dict[str, dict[str, float]]:
    """{"accuracy": {split: ...}, "loss": {split: ...}} of ``model`` on ``splits``."""
    return summary_and_predictions(model, data, hp, device, splits)[0]


def summary_and_predictions(
    model: S4Model, data: dict[str, Split], hp: Hparams, device: torch.device, splits=SPLITS
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """``summary_metrics`` and the predictions of each split (``evaluate_with_predictions``), from one pass."""
    res = {s: evaluate_with_predictions(model, data[s], hp.optim.eval_batch_size, device, hp.optim.amp) for s in splits}
    summary = {
        "accuracy": {s: r["accuracy"] for s, (r, _) in res.items()},
        "loss": {s: r["loss"] for s, (r, _) in res.items()},
    }
    return summary, {s: p for s, (_, p) in res.items()}


# ----- item-level predictions --------------------------------------------------------------------------------------

PREDICTIONS = "predictions.npz"
PREDICTION_SPLITS = ("val", "test")


def predictions_path(metrics_path: str | os.PathLike) -> Path:
    """Where the predictions of the run with this metrics file lie: ``<folder>/predictions.npz`` beside a
    ``metrics.json``, ``<folder>/<stem>.predictions.npz`` beside any other ``<stem>.json``."""
    p = Path(metrics_path)
    return p.with_name(PREDICTIONS if p.name == "metrics.json" else f"{p.stem}.predictions.npz")


def save_predictions(
    path: str | os.PathLike, predictions: dict[str, np.ndarray], data: dict[str, Split], d_output: int
) -> Path:
    """Write ``predictions`` ({split: predicted class (n,)}) with the labels of ``data``'s same splits, atomically,
    as ``{split}`` and ``{split}_labels`` in the smallest unsigned integer type holding ``d_output - 1``."""
    dtype = smallest_uint_dtype(max(int(d_output) - 1, 0))
    arrays = {}
    for split, pred in predictions.items():
        labels = np.asarray(data[split].labels)
        pred = np.asarray(pred)
        if pred.shape != labels.shape:
            raise ValueError(f"{split}: {pred.shape[0]} predictions for {labels.shape[0]} examples")
        if len(pred) and (pred.min() < 0 or pred.max() >= d_output or labels.min() < 0 or labels.max() >= d_output):
            raise ValueError(f"{split}: a predicted class or label outside [0, d_output={d_output})")
        arrays[split], arrays[f"{split}_labels"] = pred.astype(dtype), labels.astype(dtype)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return Path(path)


def load_predictions(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (predicted class, label)} of a predictions file (arrays of its stored unsigned type, (n,) each)."""
    with np.load(path) as z:
        return {k: (z[k], z[f"{k}_labels"]) for k in z.files if not k.endswith("_labels")}


def base_metrics(
    meta: dict[str, Any],
    model: S4Model,
    hp: Hparams,
    run: dict[str, Any],
    seed: int | None,
    device,
    N: int,
    order_spec: str | None = None,
) -> dict[str, Any]:
    """The fields every metrics.json carries (train, reduce and evaluate write the same shape).

    ``run``: {"stage", "method", "run", "init"} of the job (``runs.describe_run``). ``order`` is the largest state
    size of a layer, ``layer_orders`` the size of each, ``order_spec`` how the order was asked for: the order itself,
    or ``tol:<tolerance>`` for orders chosen per layer (``layers:6,7`` when a per-layer model comes without its spec,
    e.g. to ``dssbt evaluate``).
    """
    return {
        "task": meta.get("task"),
        **run,
        "seed": seed,
        "order": model.cfg.d_state,
        "layer_orders": model.cfg.orders_by_layer(),
        "order_spec": order_spec or layers_spec(model),
        "N": N,
        "params": count_parameters(model),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "kernels": fused.used() if str(device).startswith("cpu") else "torch",  # dssbt.fused: c or torch
        "hparams": hp.to_dict(),
        "model_config": model.cfg.to_dict(),
        "version": __version__,
        "provenance": provenance(device),  # code, packages, machine, device: why two runs may differ
    }


def layers_spec(model: S4Model) -> str:
    """``order_spec`` of a model met without its spec: ``8``, or ``layers:5,2`` when its layers differ."""
    cfg = model.cfg
    return "layers:" + ",".join(map(str, cfg.layer_orders)) if cfg.layer_orders else str(cfg.d_state)
