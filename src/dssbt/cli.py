"""The ``dssbt`` command: one subcommand per pipeline stage. Each reads files and writes files, nothing else."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch
from threadpoolctl import threadpool_limits

from . import __version__
from .reduction.registry import METHODS, ROUTES


def cmd_train(a: argparse.Namespace) -> None:
    from .eager import skip_dynamo_import
    from .stages import train_job

    skip_dynamo_import()  # this process never compiles: 1.5-2 s less per training job (dssbt.eager)

    train_job(
        a.data,
        a.out_dir,
        a.init,
        a.seed,
        a.hparams,
        a.order,
        a.layer_orders,
        a.reduced,
        a.device,
        method=a.method,
        stop_after=a.stop_after,
        tensorboard=a.tensorboard,
    )


def cmd_evaluate(a: argparse.Namespace) -> None:
    from .stages import evaluate_job

    m = evaluate_job(a.checkpoint, a.data, a.out, a.hparams, a.device)
    print(f"{a.checkpoint}: test accuracy {m['accuracy']['test']:.4f}; wrote {a.out}")


def cmd_orders(a: argparse.Namespace) -> None:
    from .stages import orders_job

    c = orders_job(a.checkpoint, a.spec, a.out, a.route)
    print(
        f"{a.checkpoint}: {c['order_spec']} ({a.route}) -> layer orders {c['layer_orders']} of {c['N']}; "
        f"discarded HSV energy {[f'{x:.2e}' for x in c['discarded_energy']]}"
    )


def cmd_reduce(a: argparse.Namespace) -> None:
    from .stages import reduce_job

    r = reduce_job(
        a.checkpoint,
        a.out,
        a.report,
        a.method,
        a.route,
        a.order,
        a.layer_orders,
        a.data,
        a.metrics,
        a.hparams,
        a.kernel_length,
        a.device,
    )
    acc = "" if r["test_accuracy"] is None else f"; test accuracy without retraining {r['test_accuracy']:.4f}"
    print(
        f"reduced {a.checkpoint} N={r['N']} -> r={r['order_spec']} (layers {r['layer_orders']}, {a.method}, "
        f"{a.route}); worst relative kernel error {r['worst_rel_kernel_error']:.3e}{acc}"
    )


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
    p.add_argument(
        "--init", required=True, help="skew_hippo | s4d_lin | s4d_inv | random | from_reduced | from_pretrained"
    )
    p.add_argument("--order", type=int, default=None, help="state size r < N of a reduced-order model")
    p.add_argument(
        "--reduced",
        default=None,
        help="model file to start from: written by dssbt reduce (--init from_reduced) or the "
        "pretrained full-N model (--init from_pretrained: train it further)",
    )
    p.add_argument(
        "--layer-orders",
        default=None,
        help="file written by dssbt orders: one state size per layer (instead of --order)",
    )
    p.add_argument(
        "--method",
        default=None,
        help="method name of a baseline run of order r in its metrics and tables (default: the init); "
        "skew_hippo_equal = the Skew-HiPPO model trained for the pretraining + retraining epochs",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="a snapshot of the full-N pretraining: the same run stopped after this epoch (its best "
        "model up to then); the schedule still spans optim.epochs",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", required=True, help="folder for model.pt, metrics.json, history.csv")
    p.add_argument(
        "--tensorboard",
        default=None,
        metavar="DIR",
        help="also write the training curves as TensorBoard event files under DIR (per epoch: losses, accuracies, "
        "learning rates, epoch time; at the end the test metrics); off by default; needs pip install -e '.[log]'",
    )
    common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy and loss of a model file on every split of a prepared task")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--hparams", default="{}", help="only optim.eval_batch_size, optim.amp and optim.kernels are used")
    p.add_argument("--out", required=True, help="metrics JSON to write")
    common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("reduce", help="reduce every DSS channel of a model checkpoint to order r")
    p.add_argument("--checkpoint", required=True, help="pretrained model file (written by dssbt)")
    p.add_argument("--order", type=int, default=None, help="reduced order r, 1 <= r < N (or --layer-orders)")
    p.add_argument("--layer-orders", default=None, help="file written by dssbt orders: one order per layer")
    p.add_argument(
        "--method",
        default="bt",
        choices=list(METHODS),
        help="; ".join(f"{m.name}: {m.label}" for m in METHODS.values()) + " (default bt)",
    )
    p.add_argument(
        "--route",
        default="discrete",
        choices=list(ROUTES),
        help="Gramians of the continuous system or of its ZOH discretisation (default: discrete)",
    )
    p.add_argument(
        "--kernel-length",
        type=int,
        default=None,
        help="kernel length for the measured error (default: l_max stored in the checkpoint)",
    )
    p.add_argument("--out", required=True, help="reduced model file to write")
    p.add_argument("--report", required=True, help="reduction report (JSON) to write")
    p.add_argument("--data", default=None, help="prepared task: also measure accuracy without retraining")
    p.add_argument("--metrics", default=None, help="metrics JSON of the reduced model without retraining")
    p.add_argument(
        "--hparams",
        default="{}",
        help="optim.eval_batch_size, optim.amp and optim.kernels (the accuracy), reduction.<method> (e.g. h2: tol, max_iter)",
    )
    common(p)
    p.set_defaults(func=cmd_reduce)

    p = sub.add_parser(
        "orders", help="choose one reduced order per layer (e.g. by a tolerance on the discarded HSV energy)"
    )
    p.add_argument("--checkpoint", required=True, help="pretrained model file (written by dssbt)")
    p.add_argument(
        "--spec",
        required=True,
        help="a per-layer order: tol:<x> (or tol<x>) keeps the smallest r_i whose discarded HSV energy "
        "(sum of squares) is <= x of layer i's total",
    )
    p.add_argument("--route", default="discrete", choices=list(ROUTES))
    p.add_argument("--out", required=True, help="JSON with layer_orders to write")
    common(p)
    p.set_defaults(func=cmd_orders)
    from .data.cli import add_subcommands as add_data_subcommands
    from .deploy.cli import add_subcommands as add_deploy_subcommands

    add_data_subcommands(sub)  # download, generate, prepare
    add_deploy_subcommands(sub)  # export, predict, deploy-measure, reduce-s4d
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
    except ValueError as e:  # bad input, a diverged training run
        print(f"dssbt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file that cannot be read or written (a full disk, a missing folder)
        print(f"dssbt {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0
