"""The deployment subcommands of ``dssbt``: export, predict, deploy-measure, reduce-s4d."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_export(args: argparse.Namespace) -> None:
    from ..checkpoint import load_model
    from ..data.prepared import load_meta
    from .export import export_onnx, sidecar_path

    model, meta = load_model(args.model)
    if args.format == "c":
        from .cexport import export_c

        if args.ssm != "fp32":
            raise ValueError(f"--ssm {args.ssm}: the C export keeps the SSM parameters in float32 (--ssm fp32)")
        info = export_c(model, args.out, args.weights)
        print(
            f"{args.model}: wrote {info['c']} and {info['h']} (weights {args.weights}; flash {info['flash_bytes']} "
            f"bytes of const parameters, RAM {info['ram_bytes']} bytes of state per sequence, stack "
            f"{info['stack_bytes']} bytes per step; layer states {info['layer_orders']})"
        )
        return
    task_meta = load_meta(args.data) if args.data else None
    info = export_onnx(model, args.out, meta, task_meta, weights=args.weights, ssm=args.ssm)
    print(
        f"{args.model}: wrote {args.out} ({info['onnx_bytes'] / 1024:.1f} KiB; weights {args.weights}, SSM "
        f"{args.ssm}, {info['model_bytes']} parameter bytes; layer states {info['layer_orders']}, "
        f"{info['state_bytes_per_sequence']} state bytes per sequence) and {sidecar_path(args.out)}"
    )


def cmd_predict(args: argparse.Namespace) -> None:
    from .predict import predict

    if args.every < 0:
        raise ValueError(f"--every must be >= 0, got {args.every}")
    predict(args.onnx, args.input, every=args.every, threads=args.threads)


def cmd_measure(args: argparse.Namespace) -> None:
    from ..checkpoint import load_model
    from ..data.prepared import load_split
    from ..io import write_json
    from .measure import measure

    model, meta = load_model(args.model)
    metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else None
    test = load_split(args.data, "test", l_max=meta.get("l_max"))  # checked against meta.json and the model
    row = measure(model, args.onnx, test, metrics, args.subset, args.steps, args.repeats)
    row.update(
        model=str(args.model),
        onnx=str(args.onnx),
        task=meta.get("task"),
        seed=meta.get("seed"),
        init=(metrics or {}).get("init", meta.get("init")),
        method=(metrics or {}).get("method"),
        order=model.cfg.d_state,
        order_spec=(metrics or {}).get("order_spec"),
        run=args.run,
    )
    write_json(args.out, row)
    lat = row["latency_us"]
    print(
        f"{args.model}: per token {lat['onnxruntime']:.0f} us (onnxruntime), {lat['torch_fused']:.0f} us (torch "
        f"fused), {lat['torch_step']:.0f} us (S4Model.step); ONNX accuracy on {row['subset']} test examples "
        f"{row['onnx_accuracy_subset']:.3f} (torch {row['torch_accuracy_subset']:.3f}); wrote {args.out}"
    )


def cmd_reduce_s4d(args: argparse.Namespace) -> None:
    import sys

    from ..interop import reduce_s4d_file

    flags = {k: getattr(args, k) for k in ("disc", "real_transform", "imag_transform", "dt_transform")}
    res = reduce_s4d_file(
        args.model, args.out, args.order, flags, route=args.route, report=args.report, kernel_length=args.kernel_length
    )
    print("S4D options: " + ", ".join(f"{k}={v} ({res['sources'][k]})" for k, v in res["options"].items()))
    for prefix, info in res["kernels"].items():
        print(
            f"{prefix or '(root)'}: {info['layout']} S4D kernel, H={info['H']}, N/2={info['modes']} -> {args.order} "
            f"modes; worst bound {info['worst_bound']:.3e}, worst kernel error {float(info['kernel_error'].max()):.3e} "
            f"(l2 over {res['kernel_length']} steps)"
        )
    for path, old, new in res["hparams_updated"]:
        print(f"hyper_parameters: {path} {old} -> {new}")
    if res["dropped"]:
        print(f"dropped {', '.join(res['dropped'])}: their buffers have the old state size (a new optimizer starts)")
    for w in res["warnings"]:
        print(f"dssbt reduce-s4d: warning: {w}", file=sys.stderr)
    report = f" and {args.report}" if args.report else ""
    print(
        f"reduced {len(res['kernels'])} S4D kernel(s) of {args.model} to d_state = {2 * args.order}; "
        f"wrote {args.out}{report}"
    )


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``export``, ``predict``, ``deploy-measure`` and ``reduce-s4d`` on the ``dssbt`` subparsers."""

    def threads(p: argparse.ArgumentParser) -> None:
        p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1: one edge core)")

    p = sub.add_parser("export", help="the recurrent step of a unidirectional model as an ONNX graph (+ JSON)")
    p.add_argument("--model", required=True, help="model file written by dssbt (full or reduced)")
    p.add_argument(
        "--out",
        required=True,
        help="onnx: the file to write (its description goes to the .json beside it); c: the folder for model.c/.h",
    )
    p.add_argument(
        "--format",
        default="onnx",
        choices=["onnx", "c"],
        help="onnx: the step graph (opset 17); c: one self-contained C99 source and header (default: onnx)",
    )
    p.add_argument(
        "--weights",
        default="fp32",
        choices=["fp32", "int16", "int8"],
        help="storage of the linear maps: per-row symmetric integers with float scales (default: fp32)",
    )
    p.add_argument(
        "--ssm",
        default="fp32",
        choices=["fp32", "fp16"],
        help="storage of the SSM parameters Lambda_bar, B_bar, C, D (onnx only; default: fp32)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="prepared task folder: record its vocabulary / pixel normalisation (needed by predict)",
    )
    threads(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="stream one input through an exported graph, print class probabilities")
    p.add_argument("--onnx", required=True, help="ONNX file written by dssbt export (with its .json beside it)")
    p.add_argument(
        "--input",
        required=True,
        help="ListOps expression or text (or a file holding it); an image file for pixel tasks",
    )
    p.add_argument(
        "--every", type=int, default=0, help="print the running prediction every K tokens (0: only at the end)"
    )
    threads(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("deploy-measure", help="per-token latency (batch 1), sizes and accuracy of an exported model")
    p.add_argument("--model", required=True, help="the model file the graph was exported from")
    p.add_argument("--onnx", required=True, help="ONNX file written by dssbt export from --model")
    p.add_argument("--data", required=True, help="prepared task folder (its test split)")
    p.add_argument("--metrics", default=None, help="the run's metrics.json (its accuracy.test goes into the row)")
    p.add_argument("--run", default=None, help="name of the run (e.g. bt_init_r8) recorded in the row")
    p.add_argument("--subset", type=int, default=100, help="test examples streamed through the graph (default 100)")
    p.add_argument("--steps", type=int, default=200, help="steps per timed block (default 200)")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks per implementation (median; default 5)")
    p.add_argument("--out", required=True, help="JSON row to write")
    threads(p)
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("reduce-s4d", help="balanced truncation of every S4D kernel in a state-spaces/s4 checkpoint")
    p.add_argument(
        "--model",
        required=True,
        help="torch file: a state-spaces/s4 state dict, a dict with 'state_dict' / 'model', or a Lightning .ckpt "
        "(read without running code from it)",
    )
    p.add_argument("--order", type=int, required=True, help="complex modes kept per channel (d_state = 2 r)")
    p.add_argument("--out", required=True, help="file to write: same wrapping and keys, N/2 = r, d_state = 2 r")
    p.add_argument(
        "--route",
        default="discrete",
        choices=["continuous", "discrete"],
        help="Gramians of the continuous system or of its ZOH discretisation (default: discrete)",
    )
    opt_help = "(default: the checkpoint's hyper_parameters where they state it, else S4's default {})"
    p.add_argument("--disc", default=None, help="the layers' discretisation: only zoh " + opt_help.format("zoh"))
    p.add_argument(
        "--real-transform",
        default=None,
        help="SSMKernelDiag real_transform: exp|relu|softplus|none " + opt_help.format("exp"),
    )
    p.add_argument(
        "--imag-transform",
        default=None,
        help="SSMKernelDiag imag_transform: none|exp|relu|softplus " + opt_help.format("none"),
    )
    p.add_argument(
        "--dt-transform",
        default=None,
        help="SSMKernelDiag dt_transform: exp|softplus|relu|none " + opt_help.format("exp"),
    )
    p.add_argument(
        "--report",
        default=None,
        help="reduction report (JSON) to write: per kernel and channel the HSVs, the bound, the measured kernel error",
    )
    p.add_argument(
        "--kernel-length",
        type=int,
        default=None,
        help="steps of the measured kernel error (default: the hyper_parameters' l_max, else 1024)",
    )
    threads(p)
    p.set_defaults(func=cmd_reduce_s4d)
