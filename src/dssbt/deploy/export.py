"""Export a unidirectional model's recurrent step as an ONNX graph (real arithmetic) plus a JSON description.

The graph is built node by node with ``onnx.helper`` from ``real_step_params`` (not traced: FFT convolution and
complex tensors do not export reliably, DESIGN 9). One call is one time step:

    inputs : x (embedding: int64 (B,) token ids | linear: float32 (B, d_input) pixels),
             state{i}_re, state{i}_im float32 (B, H, N_i) for each layer i (complex modes as real/imag pairs),
             pool_sum float32 (B, H), pool_count float32 (B, 1)      (mean pooling only)
    outputs: logits float32 (B, d_output), then the same state names with suffix ``_out``

Per layer, with Lambda_bar = a_r + i a_i, B_bar = b_r + i b_i, C = c_r + i c_i precomputed (float64, stored
float32):

    x_re' = a_r x_re - a_i x_im + b_r u,   x_im' = a_i x_re + a_r x_im + b_i u,   y = sum_n (c_r x_re' - c_i x_im') + D u

Opset 17 (LayerNormalization). The JSON beside the graph (``<out>.json``) says how to feed it: task, input
encoding (and, given the prepared task, its vocabulary or pixel normalisation), state names and shapes, classes
and pooling.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_path, write_json
from ..model import S4Model
from .quant import WEIGHTS, check_precision, model_bytes, quantise_rows
from .stream import NormParams, StepParams, real_step_params

OPSET = 17
FORMAT = "dssbt-onnx-step"


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """The JSON description beside an exported graph: ``model.onnx`` -> ``model.json``."""
    return Path(onnx_path).with_suffix(".json")


class _Graph:
    """A small builder: named initializers and nodes, unique intermediate names."""

    def __init__(self) -> None:
        from onnx import helper

        self.helper = helper
        self.nodes: list = []
        self.inits: list = []
        self.n = 0
        self.scalars: set[str] = set()

    def const(self, name: str, value: np.ndarray, dtype=np.float32) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(np.asarray(value, dtype=dtype)), name))
        return name

    def scalar(self, value: float) -> str:
        """A float32 scalar constant, one initializer per value."""
        name = f"const.{value!r}"
        if name not in self.scalars:
            self.scalars.add(name)
            self.const(name, value)
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, n_out: int = 1, **attrs) -> Any:
        self.n += 1
        outs = [out] if out is not None else [f"{op_type.lower()}_{self.n}_{k}" for k in range(n_out)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else outs


def _norm(g: _Graph, x: str, norm: NormParams, prefix: str) -> str:
    w = g.const(f"{prefix}.weight", norm.weight)
    b = g.const(f"{prefix}.bias", norm.bias)
    if norm.kind == "layer":
        return g.op("LayerNormalization", x, w, b, axis=-1, epsilon=norm.eps)
    return g.op("Add", g.op("Mul", x, w), b)  # batch norm in eval mode: folded scale and shift


def _activation(g: _Graph, x: str, name: str) -> str:
    half, one = g.scalar(0.5), g.scalar(1.0)
    if name == "gelu_tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        x3 = g.op("Mul", g.op("Mul", x, x), x)
        inner = g.op("Add", x, g.op("Mul", x3, g.scalar(0.044715)))
        t = g.op("Tanh", g.op("Mul", inner, g.scalar(math.sqrt(2.0 / math.pi))))
    else:  # exact: 0.5 x (1 + erf(x / sqrt 2))
        t = g.op("Erf", g.op("Mul", x, g.scalar(1.0 / math.sqrt(2.0))))
    return g.op("Mul", g.op("Mul", x, half), g.op("Add", t, one))


def _weight(g: _Graph, name: str, w: np.ndarray, weights: str) -> str:
    """A linear map's weight (K, J) as a float32 tensor name: the constant itself (fp32), or the per-row integer
    constant ``name`` (int8 / int16) cast to float and multiplied by its scale ``name.scale`` (K, 1)."""
    bits = WEIGHTS[weights]
    if bits is None:
        return g.const(name, w)
    q, s = quantise_rows(w, bits)
    from onnx import TensorProto

    qf = g.op("Cast", g.const(name, q, q.dtype), to=TensorProto.FLOAT)
    return g.op("Mul", qf, g.const(name + ".scale", s[:, None]))


def _ssm_const(g: _Graph, name: str, a: np.ndarray, ssm: str) -> str:
    """An SSM parameter: float32, or stored float16 and cast to float32 (``ssm="fp16"``)."""
    if ssm == "fp32":
        return g.const(name, a)
    from onnx import TensorProto

    return g.op("Cast", g.const(name, a, np.float16), to=TensorProto.FLOAT)


def build_graph(p: StepParams, name: str = "dssbt_step", weights: str = "fp32", ssm: str = "fp32"):
    """The ONNX ModelProto of one step of ``p`` (see the module docstring). Checked with ``onnx.checker``.

    ``weights``: fp32 | int16 | int8, the storage of the linear maps (``dssbt.deploy.quant``: per-row symmetric
    integers and float32 scales, dequantised in the graph); ``ssm``: fp32 | fp16, the storage of Lambda_bar, B_bar,
    C and D."""
    import onnx
    from onnx import TensorProto, helper

    check_precision(weights, ssm)
    g = _Graph()
    H = p.H
    if p.encoder == "embedding":
        x_in = helper.make_tensor_value_info("x", TensorProto.INT64, ["batch"])
        h = g.op("Gather", _weight(g, "encoder.weight", p.enc_weight, weights), "x", axis=0)  # (B, H)
    else:
        x_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", p.d_input])
        enc_w = _weight(g, "encoder.weight", p.enc_weight, weights)
        h = g.op("Gemm", "x", enc_w, g.const("encoder.bias", p.enc_bias), transB=1)
    inputs, outputs = [x_in], []
    axis_last = g.const("const.axis_last", np.array([-1]), np.int64)
    for i, lay in enumerate(p.layers):
        pre = f"layer{i}"
        names = [f"state{i}_re", f"state{i}_im"]
        for nm in names:
            inputs.append(helper.make_tensor_value_info(nm, TensorProto.FLOAT, ["batch", H, lay.N]))
            outputs.append(helper.make_tensor_value_info(nm + "_out", TensorProto.FLOAT, ["batch", H, lay.N]))
        z = _norm(g, h, lay.norm, f"{pre}.norm") if p.prenorm else h
        u = g.op("Unsqueeze", z, axis_last)  # (B, H, 1)
        ar, ai = (
            _ssm_const(g, f"{pre}.Lambda_bar_re", lay.Lambda_bar.real, ssm),
            _ssm_const(g, f"{pre}.Lambda_bar_im", lay.Lambda_bar.imag, ssm),
        )
        br, bi = (
            _ssm_const(g, f"{pre}.B_bar_re", lay.B_bar.real, ssm),
            _ssm_const(g, f"{pre}.B_bar_im", lay.B_bar.imag, ssm),
        )
        cr, ci = _ssm_const(g, f"{pre}.C_re", lay.C.real, ssm), _ssm_const(g, f"{pre}.C_im", lay.C.imag, ssm)
        xr, xi = names
        new_re = g.op(
            "Add", g.op("Sub", g.op("Mul", xr, ar), g.op("Mul", xi, ai)), g.op("Mul", u, br), out=names[0] + "_out"
        )
        new_im = g.op(
            "Add", g.op("Add", g.op("Mul", xr, ai), g.op("Mul", xi, ar)), g.op("Mul", u, bi), out=names[1] + "_out"
        )
        y = g.op("ReduceSum", g.op("Sub", g.op("Mul", new_re, cr), g.op("Mul", new_im, ci)), axis_last, keepdims=0)
        y = g.op("Add", y, g.op("Mul", z, _ssm_const(g, f"{pre}.D", lay.D, ssm)))  # (B, H)
        y = _activation(g, y, p.activation)
        out_w = _weight(g, f"{pre}.out.weight", lay.out_weight, weights)
        y = g.op("Gemm", y, out_w, g.const(f"{pre}.out.bias", lay.out_bias), transB=1)
        if lay.glu:  # a * sigmoid(b), halves along the last axis
            a, b = g.op("Split", y, g.const(f"{pre}.split", np.array([H, H]), np.int64), axis=-1, n_out=2)
            y = g.op("Mul", a, g.op("Sigmoid", b))
        h = g.op("Add", h, y)
        if not p.prenorm:
            h = _norm(g, h, lay.norm, f"{pre}.norm")
    if p.final_norm is not None:
        h = _norm(g, h, p.final_norm, "final_norm")
    if p.pool == "mean":
        for nm, shape in (("pool_sum", ["batch", H]), ("pool_count", ["batch", 1])):
            inputs.append(helper.make_tensor_value_info(nm, TensorProto.FLOAT, shape))
            outputs.append(helper.make_tensor_value_info(nm + "_out", TensorProto.FLOAT, shape))
        s = g.op("Add", "pool_sum", h, out="pool_sum_out")
        c = g.op("Add", "pool_count", g.scalar(1.0), out="pool_count_out")
        h = g.op("Div", s, c)
    dec_w = _weight(g, "decoder.weight", p.dec_weight, weights)
    logits = g.op("Gemm", h, dec_w, g.const("decoder.bias", p.dec_bias), transB=1, out="logits")
    outputs.insert(0, helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["batch", p.d_output]))
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dssbt")
    model.ir_version = min(model.ir_version, 9)  # readable by older onnxruntime releases too
    onnx.checker.check_model(model)
    return model


def _classes(task_meta: dict[str, Any] | None, d_output: int) -> list[str]:
    labels = ((task_meta or {}).get("preprocessing") or {}).get("labels")
    if isinstance(labels, dict) and sorted(labels.values()) == list(range(d_output)):
        return [name for name, _ in sorted(labels.items(), key=lambda kv: kv[1])]
    return [str(k) for k in range(d_output)]


def _tokenizer(task: str | None) -> str:
    """How raw input of a token task is split (dssbt.deploy.predict): the task's in the registry, else whitespace."""
    from ..data.tasks import TASKS

    spec = TASKS.get(task) if task else None
    return (spec.tokenizer if spec is not None else None) or "whitespace"


def describe(
    model: S4Model,
    p: StepParams,
    ckpt_meta: dict[str, Any],
    task_meta: dict[str, Any] | None,
    weights: str = "fp32",
    ssm: str = "fp32",
) -> dict:
    """The JSON description of an exported step (see the module docstring)."""
    cfg = model.cfg
    task = (task_meta or {}).get("task") or ckpt_meta.get("task")
    if task_meta is not None and ckpt_meta.get("task") not in (None, task_meta.get("task")):
        raise ValueError(
            f"the model was trained on task {ckpt_meta.get('task')!r} but --data is task {task_meta.get('task')!r}"
        )
    if task_meta is not None and (task_meta.get("d_input"), task_meta.get("d_output")) != (cfg.d_input, cfg.d_output):
        raise ValueError(
            f"--data has d_input={task_meta.get('d_input')}, d_output={task_meta.get('d_output')}; the "
            f"model has {cfg.d_input}, {cfg.d_output}"
        )
    if cfg.encoder == "embedding":
        enc = {
            "kind": "token_ids",
            "name": "x",
            "dtype": "int64",
            "shape": ["batch"],
            "vocab_size": cfg.d_input,
            "pad_id": 0,
            "unk_id": 1,
        }
        if task_meta is not None:
            enc["vocab"] = task_meta.get("vocab")
            enc["tokenizer"] = _tokenizer(task)
            # the task cuts every sequence at this many tokens (text: the cut before the longest length)
            enc["cut"] = (task_meta.get("preprocessing") or {}).get("cut") or task_meta.get("l_max")
    else:
        enc = {"kind": "pixels", "name": "x", "dtype": "float32", "shape": ["batch", cfg.d_input]}
        if task_meta is not None:
            enc["normalisation"] = task_meta.get("normalisation")
            side = task_meta.get("resolution") or int(round(math.sqrt(task_meta.get("l_max", 0))))
            enc["image_side"] = side
            enc["order"] = "row-major"
    states = []
    for i, lay in enumerate(p.layers):
        for part in ("re", "im"):
            states.append(
                {
                    "name": f"state{i}_{part}",
                    "output": f"state{i}_{part}_out",
                    "dtype": "float32",
                    "shape": ["batch", p.H, lay.N],
                    "init": 0.0,
                }
            )
    if p.pool == "mean":
        states += [
            {"name": "pool_sum", "output": "pool_sum_out", "dtype": "float32", "shape": ["batch", p.H], "init": 0.0},
            {"name": "pool_count", "output": "pool_count_out", "dtype": "float32", "shape": ["batch", 1], "init": 0.0},
        ]
    state_floats = sum(int(np.prod([d for d in s["shape"] if d != "batch"])) for s in states)
    return {
        "format": FORMAT,
        "opset": OPSET,
        "task": task,
        "input": enc,
        "output": {"name": "logits", "shape": ["batch", p.d_output]},
        "classes": _classes(task_meta, p.d_output),
        "pool": p.pool,
        "activation": p.activation,
        "state": states,
        "state_bytes_per_sequence": 4 * state_floats,
        "weights": weights,
        "ssm_precision": ssm,
        "model_bytes": model_bytes(p, weights, ssm),
        "layer_orders": p.orders_by_layer(),
        "d_model": p.H,
        "n_layers": len(p.layers),
        "l_max": ckpt_meta.get("l_max"),
        "model_config": cfg.to_dict(),
        "source": {
            k: ckpt_meta.get(k) for k in ("task", "init", "seed", "reduced_from", "reduction") if k in ckpt_meta
        },
    }


def export_onnx(
    model: S4Model,
    out: str | os.PathLike,
    ckpt_meta: dict[str, Any] | None = None,
    task_meta: dict[str, Any] | None = None,
    weights: str = "fp32",
    ssm: str = "fp32",
) -> dict[str, Any]:
    """Write ``out`` (the ONNX step graph) and ``sidecar_path(out)`` (its JSON description), each atomically.

    ``ckpt_meta``: the checkpoint's metadata (task, l_max, ...); ``task_meta``: the prepared task's meta.json, whose
    vocabulary / pixel normalisation then goes into the JSON (what ``dssbt predict`` needs to encode an input).
    ``weights`` / ``ssm``: the precisions of ``build_graph``.
    Raises ValueError for a bidirectional or dual model, naming why. Returns the JSON description.
    """
    check_precision(weights, ssm)
    model = model.eval()
    p = real_step_params(model)
    info = describe(model, p, ckpt_meta or {}, task_meta, weights, ssm)
    proto = build_graph(p, weights=weights, ssm=ssm)
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(proto.SerializeToString())
    info["onnx_bytes"] = Path(out).stat().st_size
    write_json(sidecar_path(out), info)
    return info


def load_description(onnx_path: str | os.PathLike) -> dict[str, Any]:
    """The JSON beside an exported graph; ValueError naming the file if it is missing or not ours."""
    path = sidecar_path(onnx_path)
    if not path.exists():
        raise ValueError(f"{path}: missing; export writes it beside {onnx_path} (dssbt export)")
    info = json.loads(path.read_text())
    if info.get("format") != FORMAT:
        raise ValueError(f"{path}: not a dssbt step description (format {info.get('format')!r})")
    return info
