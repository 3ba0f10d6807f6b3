"""Evaluation of a model on prepared splits, and the metrics format every stage writes (``metrics.json``).

Every metrics file names its run: ``stage`` (pretrain | baseline | reduce | retrain | evaluate), ``method`` (the
init of a trained model, ``skew_hippo``; the reduction of a reduced or retrained one, e.g. ``bt``) and ``run``,
the run folder name (``runs.run_name``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from . import __version__, fused
from .batches import batches
from .data.prepared import SPLITS, Split
from .hparams import AMP_FROM_BOOL, Hparams
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
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad(), autocast(device, amp):
        for x, lengths, y in batches(split, torch.arange(len(split)), batch_size, device):
            logits = model(x, lengths).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(-1) == y).sum())
    return {"loss": loss_sum / len(split), "accuracy": correct / len(split)}


def summary_metrics(
    model: S4Model, data: dict[str, Split], hp: Hparams, device: torch.device, splits=SPLITS
) -> dict[str, dict[str, float]]:
    """{"accuracy": {split: ...}, "loss": {split: ...}} of ``model`` on ``splits``."""
    res = {s: evaluate(model, data[s], hp.optim.eval_batch_size, device, hp.optim.amp) for s in splits}
    return {"accuracy": {s: r["accuracy"] for s, r in res.items()}, "loss": {s: r["loss"] for s, r in res.items()}}


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
