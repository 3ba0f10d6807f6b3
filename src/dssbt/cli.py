"""The ``dssbt`` command: one subcommand per pipeline stage. Each reads files and writes files, nothing else."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch
from threadpoolctl import threadpool_limits

from . import __version__


def cmd_train(args: argparse.Namespace) -> None:
    from .train import train

    train(args.data, args.hparams, args.init, args.seed, args.out_dir, order=args.order, reduced=args.reduced,
          device=args.device, layer_orders=args.layer_orders)


def _evaluated_metrics(model, meta, data, hp, init, seed, device, N, extra, splits=("train", "val", "test"),
                       order_spec=None) -> dict:
    from .train import base_metrics, summary_metrics

    measured = summary_metrics(model, data, hp, device, splits)
    return base_metrics(meta, model, hp, init, seed, device, N, order_spec) | measured | extra


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .checkpoint import load_model
    from .hparams import parse_hparams
    from .io import write_json
    from .train import load_task, resolve_device

    hp = parse_hparams(args.hparams)
    model, meta_ckpt = load_model(args.checkpoint)
    meta, data = load_task(args.data)
    dev = resolve_device(args.device)
    metrics = _evaluated_metrics(model.to(dev), meta, data, hp, meta_ckpt.get("init"), meta_ckpt.get("seed"), dev,
                                 model.cfg.d_state, {"checkpoint": str(args.checkpoint), "epochs_run": 0})
    write_json(args.out, metrics)
    print(f"{args.checkpoint}: test accuracy {metrics['accuracy']['test']:.4f}; wrote {args.out}")


def cmd_orders(args: argparse.Namespace) -> None:
    from .checkpoint import load_model
    from .io import write_json
    from .reduction.apply import choose_layer_orders

    model, meta = load_model(args.checkpoint)
    chosen = choose_layer_orders(model, args.tol, route=args.route)
    chosen.update(checkpoint=str(args.checkpoint), task=meta.get("task"), seed=meta.get("seed"))
    write_json(args.out, chosen)
    print(f"{args.checkpoint}: tol {args.tol:g} ({args.route}) -> layer orders {chosen['layer_orders']} of "
          f"{chosen['N']}; discarded HSV energy {[f'{x:.2e}' for x in chosen['discarded_energy']]}")


def cmd_reduce(args: argparse.Namespace) -> None:
    from .checkpoint import load_model, save_model
    from .hparams import parse_hparams
    from .io import write_json
    from .reduction.apply import load_layer_orders, order_spec, reduce_model, reduce_model_layers
    from .train import load_task, resolve_device

    if (args.data is None) != (args.metrics is None):
        raise ValueError("--data and --metrics go together (the accuracy of the reduced model without retraining)")
    if (args.order is None) == (args.layer_orders is None):
        raise ValueError("give exactly one of --order r and --layer-orders FILE")
    hp = parse_hparams(args.hparams)
    orders_file = None if args.layer_orders is None else load_layer_orders(args.layer_orders)
    model, meta = load_model(args.checkpoint)
    task = load_task(args.data) if args.data else None  # read before writing anything: bad data fails early
    L = args.kernel_length or meta.get("l_max")
    if not L:
        raise ValueError(f"{args.checkpoint}: no l_max in the checkpoint metadata; pass --kernel-length")
    options = hp.reduction.get(args.method, {})
    if orders_file is None:
        spec = None
        reduced, report = reduce_model(model, args.order, method=args.method, route=args.route, kernel_length=int(L),
                                       options=options)
    else:
        spec = order_spec(orders_file["tol"])
        reduced, report = reduce_model_layers(model, orders_file["layer_orders"], method=args.method,
                                              route=args.route, kernel_length=int(L), options=options)
        report.update(tol=orders_file["tol"], order_spec=spec, layer_orders_file=str(args.layer_orders))
    report.update(checkpoint=str(args.checkpoint), task=meta.get("task"), seed=meta.get("seed"))
    metrics = None
    if task is not None:
        dev = resolve_device(args.device)
        metrics = _evaluated_metrics(reduced.to(dev), task[0], task[1], hp, f"{args.method}_no_retrain",
                                     meta.get("seed"), dev, model.cfg.d_state,
                                     {"reduced_from": str(args.checkpoint), "epochs_run": 0, "route": args.route,
                                      "method": args.method},
                                     splits=("val", "test"), order_spec=spec)
        reduced.cpu()
    reduction = {"method": args.method, "route": args.route, "r": args.order,
                 "layer_orders": reduced.cfg.state_sizes(), "order_spec": spec or str(args.order)}
    save_model(args.out, reduced, {**meta, "reduced_from": str(args.checkpoint), "reduction": reduction})
    write_json(args.report, report)
    if metrics is not None:
        write_json(args.metrics, metrics)
    worst = max((max(max(ch) for ch in layer["rel_kernel_error"]) for layer in report["layers"]
                 if "rel_kernel_error" in layer), default=0.0)
    acc = "" if metrics is None else f"; test accuracy without retraining {metrics['accuracy']['test']:.4f}"
    print(f"reduced {args.checkpoint} N={model.cfg.d_state} -> r={spec or args.order} "
          f"(layers {reduced.cfg.state_sizes()}, {args.method}, {args.route}); "
          f"worst relative kernel error {worst:.3e}{acc}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dssbt", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dssbt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--threads", type=int, default=1, help="torch threads: the job's share of cores (default 1)")
        p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")

    p = sub.add_parser("train", help="train a model on a prepared task (resumes an interrupted run)")
    p.add_argument("--data", required=True, help="prepared task folder (meta.json + {train,val,test}.npz)")
    p.add_argument("--hparams", default="{}", help="hyper-parameter JSON (see dssbt.hparams)")
    p.add_argument("--init", required=True, help="skew_hippo | s4d_lin | s4d_inv | random | from_reduced")
    p.add_argument("--order", type=int, default=None, help="state size r < N of a reduced-order model")
    p.add_argument("--reduced", default=None, help="model file written by dssbt reduce (for --init from_reduced)")
    p.add_argument("--layer-orders", default=None,
                   help="file written by dssbt orders: one state size per layer (instead of --order)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", required=True, help="folder for model.pt, metrics.json, history.csv")
    common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy and loss of a model file on every split of a prepared task")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--hparams", default="{}", help="only optim.eval_batch_size and optim.amp are used")
    p.add_argument("--out", required=True, help="metrics JSON to write")
    common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("reduce", help="reduce every DSS channel of a model checkpoint to order r")
    p.add_argument("--checkpoint", required=True, help="pretrained model file (written by dssbt)")
    p.add_argument("--order", type=int, default=None, help="reduced order r, 1 <= r < N (or --layer-orders)")
    p.add_argument("--layer-orders", default=None, help="file written by dssbt orders: one order per layer")
    p.add_argument("--method", default="bt", choices=["bt", "bsp", "modal", "h2"],
                   help="bt (balanced truncation, default), bsp (balanced singular perturbation), modal, h2 (IRKA)")
    p.add_argument("--route", default="discrete", choices=["continuous", "discrete"],
                   help="Gramians of the continuous system or of its ZOH discretisation (default: discrete)")
    p.add_argument("--kernel-length", type=int, default=None,
                   help="kernel length for the measured error (default: l_max stored in the checkpoint)")
    p.add_argument("--out", required=True, help="reduced model file to write")
    p.add_argument("--report", required=True, help="reduction report (JSON) to write")
    p.add_argument("--data", default=None, help="prepared task: also measure accuracy without retraining")
    p.add_argument("--metrics", default=None, help="metrics JSON of the reduced model without retraining")
    p.add_argument("--hparams", default="{}",
                   help="optim.eval_batch_size and optim.amp (the accuracy), reduction.<method> (e.g. h2: tol, max_iter)")
    common(p)
    p.set_defaults(func=cmd_reduce)

    p = sub.add_parser("orders", help="choose one reduced order per layer by a tolerance on the discarded HSV energy")
    p.add_argument("--checkpoint", required=True, help="pretrained model file (written by dssbt)")
    p.add_argument("--tol", type=float, required=True,
                   help="keep the smallest r_i whose discarded HSV energy (sum of squares) is <= tol of layer i's total")
    p.add_argument("--route", default="discrete", choices=["continuous", "discrete"])
    p.add_argument("--out", required=True, help="JSON with layer_orders to write")
    common(p)
    p.set_defaults(func=cmd_orders)
    from .data.cli import add_subcommands

    add_subcommands(sub)
    __import__("dssbt.deploy.cli", fromlist=["add_subcommands"]).add_subcommands(sub)  # export, predict, reduce-s4d
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    threads = max(1, getattr(args, "threads", 1))
    torch.set_num_threads(threads)
    try:
        # numpy's BLAS too (the reductions): a job uses exactly its share of cores; more BLAS threads than cores
        # made the batched BT 3x slower on a loaded 2-core machine (README, Benchmarks)
        with threadpool_limits(limits=threads):
            args.func(args)
    except ValueError as e:
        print(f"dssbt {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0
