"""Per-token latency at batch 1, sizes and accuracy of one exported model (one row of the deploy table)."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..model import S4Model
from .predict import OnnxStream
from .stream import FusedStream, real_step_params


def per_token_seconds(step: Callable[[int], Any], reset: Callable[[], None], steps: int, repeats: int) -> list[float]:
    """Seconds per call of ``step(t)`` over ``steps`` consecutive steps after ``reset()``, once per repeat
    (a first, untimed block warms up)."""
    out = []
    for k in range(repeats + 1):
        reset()
        t0 = time.perf_counter()
        for t in range(steps):
            step(t)
        if k:
            out.append((time.perf_counter() - t0) / steps)
    return out


def latencies(
    model: S4Model, onnx_path: str | os.PathLike, x: np.ndarray, steps: int, repeats: int
) -> dict[str, list[float]]:
    """Per-token seconds at batch 1 of onnxruntime (1 thread), the fused torch step and ``S4Model.step``, timed
    interleaved (one block of each per repeat) on the sequence ``x`` (L,) or (L, d_input), cycled to ``steps``."""
    L = len(x)
    ort_stream = OnnxStream(onnx_path, threads=1)
    fused = FusedStream(real_step_params(model))
    xt = torch.from_numpy(np.ascontiguousarray(x))
    st: dict[str, Any] = {}
    runs = {
        "onnxruntime": (lambda t: ort_stream.step(x[t % L][None]), lambda: ort_stream.reset(1)),
        "torch_fused": (lambda t: fused.step(xt[t % L][None], st["f"]), lambda: st.update(f=fused.init_state(1))),
        "torch_step": (lambda t: model.step(xt[t % L][None], st["m"]), lambda: st.update(m=model.init_state(1))),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, (step, reset) in runs.items():
            times[name] += per_token_seconds(step, reset, steps, 1)
    return times


def measure(
    model: S4Model,
    onnx_path: str | os.PathLike,
    test,
    metrics: dict[str, Any] | None,
    subset: int,
    steps: int,
    repeats: int,
) -> dict[str, Any]:
    """The deploy-table row of one model: latencies (median, microseconds), ONNX size, state bytes per sequence,
    weight precision and parameter bytes, test accuracy (from the run's metrics; for int8 / int16 weights the
    graph's own over the whole test split) and the ONNX model's accuracy on the first ``subset`` test examples,
    beside the torch model's on the same examples (a check that the export predicts what the model predicts)."""
    model.eval()
    info = json.loads(Path(onnx_path).with_suffix(".json").read_text())
    quantised = info.get("weights", "fp32") != "fp32"
    # a quantised graph is not the model the run's metrics measured: its test accuracy is its own, over the whole
    # test split (streamed through onnxruntime)
    n = len(test) if quantised else min(subset, len(test))
    idx = np.arange(n)
    lengths = test.lengths[idx]
    L = int(lengths.max())
    x = np.ascontiguousarray(test.batch_inputs(idx, L))  # (n, L) ids or pixels
    ort_logits = OnnxStream(onnx_path, threads=1).run(x, lengths)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x), torch.from_numpy(lengths)).numpy()
    labels = test.labels[idx]
    seq = x[0, : int(lengths[0])]
    t = latencies(model, onnx_path, seq if info["input"]["kind"] == "token_ids" else seq[:, None], steps, repeats)
    return {
        "latency_us": {k: 1e6 * statistics.median(v) for k, v in t.items()},
        "latency_us_min": {k: 1e6 * min(v) for k, v in t.items()},
        "onnx_bytes": Path(onnx_path).stat().st_size,
        "weights": info.get("weights", "fp32"),
        "model_bytes": info.get("model_bytes"),
        "state_bytes": info["state_bytes_per_sequence"],
        "layer_orders": info["layer_orders"],
        "accuracy_test": float((ort_logits.argmax(-1) == labels).mean())
        if quantised
        else (None if metrics is None else metrics.get("accuracy", {}).get("test")),
        "accuracy_test_source": "onnx, whole test split" if quantised else "run metrics (torch)",
        "onnx_accuracy_subset": float((ort_logits.argmax(-1) == labels).mean()),
        "torch_accuracy_subset": float((torch_logits.argmax(-1) == labels).mean()),
        "onnx_torch_agreement": float((ort_logits.argmax(-1) == torch_logits.argmax(-1)).mean()),
        "subset": n,
        "steps": steps,
        "repeats": repeats,
        "threads": 1,
    }
