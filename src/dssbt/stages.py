"""One function per pipeline stage: read the job's files, run it, write its outputs; returns the paths written.

The CLI (``cli.py``) only parses arguments and calls one of these; the math and the training live in the modules
they call (``train``, ``reduction.apply``, ``evaluate``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import fused
from .checkpoint import load_model, save_model
from .evaluate import (
    PREDICTION_SPLITS,
    base_metrics,
    predictions_path,
    resolve_device,
    save_predictions,
    summary_and_predictions,
)
from .hparams import parse_hparams
from .io import write_json
from .orders import OrderSpec, load_orders_file, parse_order
from .reduction.apply import ModelReducer
from .runs import describe_run

PathLike = str | os.PathLike


def _orders(order: int | None, layer_orders: PathLike | None) -> tuple[int | list[int] | None, OrderSpec | None]:
    """The job's order: ``--order r`` or the per-layer orders of an orders file (with their spec), or neither."""
    if order is not None and layer_orders is not None:
        raise ValueError("give exactly one of --order r and --layer-orders FILE")
    if layer_orders is not None:
        d = load_orders_file(layer_orders)
        return d["layer_orders"], parse_order(d["order_spec"])
    return order, None if order is None else parse_order(order)


def train_job(
    data: PathLike,
    out_dir: PathLike,
    init: str,
    seed: int = 0,
    hparams: str = "{}",
    order: int | None = None,
    layer_orders: PathLike | None = None,
    reduced: PathLike | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
    method: str | None = None,
    stop_after: int | None = None,
) -> dict[str, Path]:
    """Train one model (pretraining, baseline or retraining: ``train.train``); returns {model, metrics, history}.
    ``method`` names a baseline run other than its init (``skew_hippo_equal``: the equal-budget control);
    ``stop_after`` makes a snapshot of the pretraining (``train.train``)."""
    from .train import train

    orders, spec = _orders(order, layer_orders)
    train(
        data,
        hparams,
        init,
        seed,
        out_dir,
        order=orders,
        order_spec=None if spec is None else spec.label,
        reduced=reduced,
        device=device,
        log=log,
        method=method,
        stop_after=stop_after,
    )
    out = Path(out_dir)
    return {"model": out / "model.pt", "metrics": out / "metrics.json", "history": out / "history.csv"}


def orders_job(checkpoint: PathLike, spec: str, out: PathLike, route: str = "discrete") -> dict[str, Any]:
    """Choose the per-layer orders of ``spec`` (``tol:<x>`` or its folder form ``tol0.3``) for a pretrained model."""
    from .orders import from_wildcard

    order = parse_order(spec) if ":" in spec else from_wildcard(spec)
    if not order.per_layer:
        raise ValueError(f"order {spec!r} is one r for every layer: there are no per-layer orders to choose")
    model, meta = load_model(checkpoint)
    chosen = ModelReducer(model, route).choose_orders(order)
    chosen.update(checkpoint=str(checkpoint), task=meta.get("task"), seed=meta.get("seed"))
    write_json(out, chosen)
    return chosen


def reduce_job(
    checkpoint: PathLike,
    out: PathLike,
    report: PathLike,
    method: str = "bt",
    route: str = "discrete",
    order: int | None = None,
    layer_orders: PathLike | None = None,
    data: PathLike | None = None,
    metrics: PathLike | None = None,
    hparams: str = "{}",
    kernel_length: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Reduce a pretrained model; writes the reduced model, its report and (with ``data``) its metrics without
    retraining, and beside them its item-level predictions (``evaluate.predictions_path``). Everything is read and checked before anything is written. Returns the paths and a summary."""
    from .train import load_task

    t0 = time.perf_counter()
    if (data is None) != (metrics is None):
        raise ValueError("--data and --metrics go together (the accuracy of the reduced model without retraining)")
    orders, spec = _orders(order, layer_orders)
    if orders is None:
        raise ValueError("give exactly one of --order r and --layer-orders FILE")
    hp = parse_hparams(hparams)
    model, meta = load_model(checkpoint)
    # read and checked (against the model's l_max too) before writing anything: bad data fails early
    task = load_task(data, l_max=meta.get("l_max")) if data else None
    L = kernel_length or meta.get("l_max")
    if not L:
        raise ValueError(f"{checkpoint}: no l_max in the checkpoint metadata; pass --kernel-length")
    reduced, rep = ModelReducer(model, route, int(L)).reduce(
        method, orders, hp.reduction.get(method, {}), seed=meta.get("seed")
    )  # a control's seed
    rep.update(order_spec=spec.label, checkpoint=str(checkpoint), task=meta.get("task"), seed=meta.get("seed"))
    if layer_orders is not None:
        rep.update(layer_orders_file=str(layer_orders), **{spec.kind: spec.value})
    measured = predictions = None
    if task is not None:
        dev = resolve_device(device)
        run = describe_run("reduce", method, spec.wildcard)
        with fused.kernels(hp.optim.kernels):
            measured = base_metrics(
                task[0], reduced.to(dev), hp, run, meta.get("seed"), dev, model.cfg.d_state, spec.label
            )
            scores, predictions = summary_and_predictions(reduced, task[1], hp, dev, splits=PREDICTION_SPLITS)
            measured |= scores
        measured |= {
            "reduced_from": str(checkpoint),
            "epochs_run": 0,
            "route": route,
            "wall_time_s": time.perf_counter() - t0,
        }  # reduction and evaluation
        reduced.cpu()
    reduction = {
        "method": method,
        "route": route,
        "r": order,
        "layer_orders": reduced.cfg.orders_by_layer(),
        "order_spec": spec.label,
    }
    save_model(out, reduced, {**meta, "reduced_from": str(checkpoint), "reduction": reduction})
    write_json(report, rep)
    if measured is not None:
        save_predictions(predictions_path(metrics), predictions, task[1], reduced.cfg.d_output)
        write_json(metrics, measured)
    worst = max(
        (max(max(ch) for ch in layer["rel_kernel_error"]) for layer in rep["layers"] if "rel_kernel_error" in layer),
        default=0.0,
    )
    return {
        "model": Path(out),
        "report": Path(report),
        "metrics": None if metrics is None else Path(metrics),
        "N": model.cfg.d_state,
        "layer_orders": reduced.cfg.orders_by_layer(),
        "order_spec": spec.label,
        "worst_rel_kernel_error": worst,
        "test_accuracy": None if measured is None else measured["accuracy"]["test"],
    }


def evaluate_job(
    checkpoint: PathLike, data: PathLike, out: PathLike, hparams: str = "{}", device: str = "cpu"
) -> dict[str, Any]:
    """Accuracy and loss of a model file on every split of a prepared task, written as a metrics file, and its
    val and test predictions beside it (``evaluate.predictions_path``)."""
    from .train import load_task

    hp = parse_hparams(hparams)
    model, meta_ckpt = load_model(checkpoint)
    meta, data_splits = load_task(data, l_max=meta_ckpt.get("l_max"))
    dev = resolve_device(device)
    model.to(dev)
    run = describe_run("evaluate", meta_ckpt.get("reduction", {}).get("method") or meta_ckpt.get("init"), None)
    with fused.kernels(hp.optim.kernels):
        scores, predictions = summary_and_predictions(model, data_splits, hp, dev)
        metrics = (
            base_metrics(meta, model, hp, run, meta_ckpt.get("seed"), dev, model.cfg.d_state)
            | scores
            | {"checkpoint": str(checkpoint), "epochs_run": 0}
        )
    kept = {s: predictions[s] for s in PREDICTION_SPLITS}
    save_predictions(predictions_path(out), kept, data_splits, model.cfg.d_output)
    write_json(out, metrics)
    return metrics
