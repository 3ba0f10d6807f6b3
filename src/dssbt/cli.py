"""The ``dssbt`` command: one subcommand per pipeline stage. Each reads files and writes files, nothing else."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch

from . import __version__


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the job's share of cores)")


def cmd_reduce(args: argparse.Namespace) -> None:
    from .checkpoint import load_model, save_model
    from .io import write_json
    from .reduction.apply import reduce_model

    model, meta = load_model(args.checkpoint)
    L = args.kernel_length or meta.get("l_max")
    if not L:
        raise ValueError(f"{args.checkpoint}: no l_max in the checkpoint metadata; pass --kernel-length")
    reduced, report = reduce_model(model, args.order, method=args.method, route=args.route, kernel_length=int(L))
    report["checkpoint"] = str(args.checkpoint)
    save_model(args.out, reduced, {**meta, "reduced_from": str(args.checkpoint), "reduction": {
        "method": args.method, "route": args.route, "r": args.order}})
    write_json(args.report, report)
    worst = max(max(max(ch) for ch in layer["rel_kernel_error"]) for layer in report["layers"])
    print(f"reduced {args.checkpoint} N={model.cfg.d_state} -> r={args.order} ({args.method}, {args.route}); "
          f"worst relative kernel error {worst:.3e}; wrote {args.out} and {args.report}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dssbt", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dssbt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("reduce", help="reduce every DSS channel of a model checkpoint to order r")
    p.add_argument("--checkpoint", required=True, help="pretrained model file (written by dssbt)")
    p.add_argument("--order", type=int, required=True, help="reduced order r, 1 <= r < N")
    p.add_argument("--method", default="bt", help="reduction method (default: bt)")
    p.add_argument("--route", default="discrete", choices=["continuous", "discrete"],
                   help="Gramians of the continuous system or of its ZOH discretisation (default: discrete)")
    p.add_argument("--kernel-length", type=int, default=None,
                   help="kernel length for the measured error (default: l_max stored in the checkpoint)")
    p.add_argument("--out", required=True, help="reduced model file to write")
    p.add_argument("--report", required=True, help="reduction report (JSON) to write")
    _add_threads(p)
    p.set_defaults(func=cmd_reduce)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    try:
        args.func(args)
    except ValueError as e:
        print(f"dssbt {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0
