"""The ``dssbt`` command: one subcommand per pipeline stage. Each reads files and writes files, nothing else."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch
from threadpoolctl import threadpool_limits

from . import __version__
from .hparams import load_hparams_arg
from .reduction.registry import METHODS, ROUTES


def hparams_arg(text: str) -> dict:
    """``--hparams``: inline JSON or a .json/.yaml/.yml file, read and checked while the arguments are parsed."""
    try:
        return load_hparams_arg(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_train(a: argparse.Namespace) -> None:
    from .eager import skip_dynamo_import
    from .stages import train_job

    if not a.hparams.get("optim", {}).get("compile"):  # optim.compile: the model is compiled, dynamo is needed
        skip_dynamo_import()  # this process never compiles: 1.5-2 s less per training job (dssbt.eager)

    train_job(
        a.data,
        a.out,
        a.init,
        a.seed,
        a.hparams,
        a.order,
        a.layer_orders,
        a.model,
        a.device,
        method=a.method,
        stop_after=a.stop_after,
        tensorboard=a.tensorboard,
    )


def cmd_evaluate(a: argparse.Namespace) -> None:
    from .stages import evaluate_job

    m = evaluate_job(a.model, a.data, a.out, a.hparams, a.device)
    print(f"{a.model}: test accuracy {m['accuracy']['test']:.4f}; wrote {a.out}")


def cmd_orders(a: argparse.Namespace) -> None:
    from .stages import orders_job

    c = orders_job(a.model, a.spec, a.out, a.route, a.allocation)
    print(
        f"{a.model}: {c['order_spec']} ({a.route}) -> layer orders {c['layer_orders']} of {c['N']}; "
        f"discarded HSV energy {[f'{x:.2e}' for x in c['discarded_energy']]}"
    )


def cmd_reduce(a: argparse.Namespace) -> None:
    from .stages import reduce_job

    r = reduce_job(
        a.model,
        a.out,
        a.report,
        a.method,
        a.route,
        a.order,
        a.layer_orders,
        a.data,
        a.metrics_out,
        a.hparams,
        a.kernel_length,
        a.device,
    )
    acc = "" if r["test_accuracy"] is None else f"; test accuracy without retraining {r['test_accuracy']:.4f}"
    print(
        f"reduced {a.model} N={r['N']} -> r={r['order_spec']} (layers {r['layer_orders']}, {a.method}, "
        f"{a.route}); worst relative kernel error {r['worst_rel_kernel_error']:.3e}{acc}"
    )


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that never accepts an abbreviated flag (``--out-d`` is not ``--out-dir``). Subparsers are
    built by their parent's class, so every subcommand (data and deploy ones, nested ones) inherits it."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


# The flag names every subcommand shares (tests/test_cli.py holds every subcommand to them):
#   --model FILE   the input model file (a dssbt model file; reduce-s4d: a state-spaces/s4 state dict)
#   --data DIR     the input prepared task folder
#   --out PATH     the primary output (a folder for train, generate, prepare and extract; a file elsewhere)
#   --hparams      hyper-parameters: inline JSON or a .json/.yaml/.yml file (dssbt.hparams.load_hparams_arg)
# Secondary outputs have names of their own (reduce: --report, --metrics-out), so that no flag is an input in one
# subcommand and an output in another.
HPARAMS_HELP = (
    'hyper-parameters (dssbt.hparams): inline JSON, e.g. \'{"optim": {"epochs": 3}}\', or a .json, .yaml or '
    ".yml file holding the same object"
)
ORDER_SPEC_HELP = (
    "how to choose one order per layer: tol:<x> keeps in each layer the smallest r_i whose discarded HSV energy "
    "(sum of squares) is <= x of that layer's total (0 < x < 1); budget:<f> keeps a share f (0 < f < 1) of all the "
    "model's states, allocated across layers by least discarded HSV energy; the run-folder forms tol<x> and "
    "budget<f> (e.g. tol0.3, budget0.25) are accepted too. An integer such as 8 is refused: one r for every layer "
    "needs no orders file (reduce / train --order 8)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dssbt", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dssbt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--threads", type=int, default=1, help="torch threads: the job's share of cores (default 1)")
        p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")

    p = sub.add_parser("train", help="train a model on a prepared task (resumes an interrupted run)")
    p.add_argument("--data", required=True, help="prepared task folder (meta.json + {train,val,test}.npz)")
    p.add_argument("--hparams", default="{}", type=hparams_arg, help=HPARAMS_HELP)
    p.add_argument(
        "--init",
        required=True,
        help="skew_hippo | s4d_lin | s4d_inv | random (a fresh model) | from_reduced | from_pretrained (start "
        "from --model)",
    )
    p.add_argument(
        "--order",
        type=int,
        default=None,
        help="state size r < N of a reduced-order model (from_reduced: default the model file's)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model file to start from: written by dssbt reduce (--init from_reduced) or the pretrained full-N "
        "model (--init from_pretrained: train it further). It carries its architecture: without a model section "
        "in --hparams the file's is used (and, for from_reduced, its orders when --order / --layer-orders are "
        "absent); a model section must describe the same architecture",
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
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the data order (default 0)")
    p.add_argument("--out", required=True, help="run folder to write: model.pt, metrics.json, history.csv")
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
    p.add_argument("--model", required=True, help="model file to evaluate (written by dssbt)")
    p.add_argument("--data", required=True, help="prepared task folder (meta.json + {train,val,test}.npz)")
    p.add_argument(
        "--hparams",
        default="{}",
        type=hparams_arg,
        help=HPARAMS_HELP + "; only optim.eval_batch_size, optim.amp and optim.kernels are used",
    )
    p.add_argument("--out", required=True, help="metrics JSON to write")
    common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("reduce", help="reduce every DSS channel of a model file to order r")
    p.add_argument("--model", required=True, help="pretrained model file (written by dssbt train)")
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
        help="kernel length for the measured error (default: l_max stored in the model file)",
    )
    p.add_argument("--out", required=True, help="reduced model file to write")
    p.add_argument("--report", required=True, help="reduction report (JSON) to write")
    p.add_argument(
        "--data", default=None, help="prepared task folder: also measure accuracy without retraining (--metrics-out)"
    )
    p.add_argument("--metrics-out", default=None, help="metrics JSON to write: the reduced model's accuracy on --data")
    p.add_argument(
        "--hparams",
        default="{}",
        type=hparams_arg,
        help=HPARAMS_HELP + "; used: optim.eval_batch_size, optim.amp and optim.kernels (the accuracy), "
        "reduction.<method> (e.g. h2: tol, max_iter)",
    )
    common(p)
    p.set_defaults(func=cmd_reduce)

    p = sub.add_parser(
        "orders", help="choose one reduced order per layer (by a tolerance on the discarded HSV energy or a budget)"
    )
    p.add_argument("--model", required=True, help="pretrained model file (written by dssbt train)")
    p.add_argument("--spec", required=True, help=ORDER_SPEC_HELP)
    p.add_argument(
        "--route",
        default="discrete",
        choices=list(ROUTES),
        help="HSVs of the continuous system or of its ZOH discretisation (default: discrete)",
    )
    p.add_argument("--out", required=True, help="orders file (JSON with order_spec and layer_orders) to write")
    p.add_argument(
        "--allocation",
        default="hsv",
        choices=["hsv", "last", "h2energy"],
        help="how a budget is split over layers: least discarded HSV energy (hsv, default), LAST's normalised "
        "H-infinity scores (last) or the modes' H2 energies (h2energy, AIRE-Prune)",
    )
    common(p)
    p.set_defaults(func=cmd_orders)
    from .data.cli import add_subcommands as add_data_subcommands
    from .deploy.cli import add_subcommands as add_deploy_subcommands

    add_data_subcommands(sub)  # download, extract, generate, prepare
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
