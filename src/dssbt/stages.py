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
from .reduction.registry import check_reduction_options
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
    out: PathLike,
    init: str,
    seed: int = 0,
    hparams: str | dict[str, Any] = "{}",
    order: int | None = None,
    layer_orders: PathLike | None = None,
    model: PathLike | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
    method: str | None = None,
    stop_after: int | None = None,
    tensorboard: PathLike | None = None,
) -> dict[str, Path]:
    """Train one model (pretraining, baseline or retraining: ``train.train``) into the run folder ``out``; returns
    {model, metrics, history}. ``model``: the model file a ``from_reduced`` / ``from_pretrained`` init starts from.
    ``method`` names a baseline run other than its init (``skew_hippo_equal``: the equal-budget control);
    ``stop_after`` makes a snapshot of the pretraining (``train.train``); ``tensorboard``: a folder for the job's
    TensorBoard event files (``curves.TensorBoardLogger``: the ``log`` extra, checked before training starts)."""
    from .curves import TensorBoardLogger
    from .train import train

    logger = None if tensorboard is None else TensorBoardLogger(tensorboard)
    orders, spec = _orders(order, layer_orders)
    try:
        train(
            data,
            hparams,
            init,
            seed,
            out,
            order=orders,
            order_spec=None if spec is None else spec.label,
            start=model,
            device=device,
            log=log,
            method=method,
            stop_after=stop_after,
            logger=logger,
        )
    finally:
        if logger is not None:
            logger.close()
    folder = Path(out)
    return {"model": folder / "model.pt", "metrics": folder / "metrics.json", "history": folder / "history.csv"}


def orders_job(
    model: PathLike, spec: str, out: PathLike, route: str = "discrete", allocation: str = "hsv"
) -> dict[str, Any]:
    """Choose the per-layer orders of ``spec`` (``tol:<x>``, ``budget:<f>`` or their folder forms ``tol0.3``,
    ``budget0.25``) for the pretrained model file ``model``; writes them to ``out``. ``allocation``: how a budget is
    split over layers (``ModelReducer.choose_orders``)."""
    from .orders import from_wildcard

    order = parse_order(spec) if ":" in spec else from_wildcard(spec)
    if not order.per_layer:
        raise ValueError(f"order {spec!r} is one r for every layer: there are no per-layer orders to choose")
    full, meta = load_model(model)
    if allocation != "hsv" and order.kind != "budget":
        raise ValueError(f"--allocation {allocation}: only a budget order (budget:<f>) is allocated, got {spec!r}")
    chosen = ModelReducer(full, route).choose_orders(order, allocation)
    chosen.update(checkpoint=str(model), task=meta.get("task"), seed=meta.get("seed"))
    write_json(out, chosen)
    return chosen


def reduce_job(
    model: PathLike,
    out: PathLike,
    report: PathLike,
    method: str = "bt",
    route: str = "discrete",
    order: int | None = None,
    layer_orders: PathLike | None = None,
    data: PathLike | None = None,
    metrics_out: PathLike | None = None,
    hparams: str | dict[str, Any] = "{}",
    kernel_length: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Reduce the pretrained model file ``model``; writes the reduced model (``out``), its report and (with ``data``)
    its metrics without retraining (``metrics_out``), and beside them its item-level predictions
    (``evaluate.predictions_path``). Everything is read and checked before anything is written. Returns the paths
    and a summary."""
    from .train import load_task

    t0 = time.perf_counter()
    if (data is None) != (metrics_out is None):
        raise ValueError("--data and --metrics-out go together (the accuracy of the reduced model without retraining)")
    orders, spec = _orders(order, layer_orders)
    if orders is None:
        raise ValueError("give exactly one of --order r and --layer-orders FILE")
    hp = parse_hparams(hparams)
    check_reduction_options(hp.reduction)
    full, meta = load_model(model)
    # read and checked (against the model's l_max too) before writing anything: bad data fails early
    task = load_task(data, l_max=meta.get("l_max")) if data else None
    L = kernel_length or meta.get("l_max")
    if not L:
        raise ValueError(f"{model}: no l_max in the model file's metadata; pass --kernel-length")
    reduced, rep = ModelReducer(full, route, int(L)).reduce(
        method, orders, hp.reduction.get(method, {}), seed=meta.get("seed")
    )  # a control's seed
    rep.update(order_spec=spec.label, checkpoint=str(model), task=meta.get("task"), seed=meta.get("seed"))
    if layer_orders is not None:
        rep.update(layer_orders_file=str(layer_orders), **{spec.kind: spec.value})
    measured = predictions = None
    if task is not None:
        dev = resolve_device(device)
        run = describe_run("reduce", method, spec.wildcard)
        with fused.kernels(hp.optim.kernels):
            measured = base_metrics(
                task[0], reduced.to(dev), hp, run, meta.get("seed"), dev, full.cfg.d_state, spec.label
            )
            scores, predictions = summary_and_predictions(reduced, task[1], hp, dev, splits=PREDICTION_SPLITS)
            measured |= scores
        measured |= {
            "reduced_from": str(model),
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
        "N": full.cfg.d_state,  # the pretrained state size: a retraining takes its architecture from this file
    }
    save_model(out, reduced, {**meta, "reduced_from": str(model), "reduction": reduction})
    write_json(report, rep)
    if measured is not None:
        save_predictions(predictions_path(metrics_out), predictions, task[1], reduced.cfg.d_output)
        write_json(metrics_out, measured)
    worst = max(
        (max(max(ch) for ch in layer["rel_kernel_error"]) for layer in rep["layers"] if "rel_kernel_error" in layer),
        default=0.0,
    )
    return {
        "model": Path(out),
        "report": Path(report),
        "metrics": None if metrics_out is None else Path(metrics_out),
        "N": full.cfg.d_state,
        "layer_orders": reduced.cfg.orders_by_layer(),
        "order_spec": spec.label,
        "worst_rel_kernel_error": worst,
        "test_accuracy": None if measured is None else measured["accuracy"]["test"],
    }


def evaluate_job(
    model: PathLike, data: PathLike, out: PathLike, hparams: str | dict[str, Any] = "{}", device: str = "cpu"
) -> dict[str, Any]:
    """Accuracy and loss of the model file ``model`` on every split of a prepared task, written to ``out``, and its
    val and test predictions beside it (``evaluate.predictions_path``)."""
    from .train import load_task

    hp = parse_hparams(hparams)
    net, meta_ckpt = load_model(model)
    meta, data_splits = load_task(data, l_max=meta_ckpt.get("l_max"))
    dev = resolve_device(device)
    net.to(dev)
    run = describe_run("evaluate", meta_ckpt.get("reduction", {}).get("method") or meta_ckpt.get("init"), None)
    with fused.kernels(hp.optim.kernels):
        scores, predictions = summary_and_predictions(net, data_splits, hp, dev)
        metrics = (
            base_metrics(meta, net, hp, run, meta_ckpt.get("seed"), dev, net.cfg.d_state)
            | scores
            | {"checkpoint": str(model), "epochs_run": 0}
        )
    kept = {s: predictions[s] for s in PREDICTION_SPLITS}
    save_predictions(predictions_path(out), kept, data_splits, net.cfg.d_output)
    write_json(out, metrics)
    return metrics
