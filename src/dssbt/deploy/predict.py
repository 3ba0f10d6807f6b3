"""Stream inputs through an exported step graph with onnxruntime, and encode one raw input as its task does.

``OnnxStream`` is the one code path for ``dssbt predict``, the ONNX accuracy check and the latency measurements of
the deploy stage and the benchmark: ``reset(B)``, then ``step(x_t)`` per token -> logits (B, d_output).

Encodings (the prepared task's, recorded in the JSON beside the graph by ``dssbt export --data``):

- listops: LRA tokens (``]`` -> ``X``, parentheses dropped, whitespace split), ids from the vocabulary, unknown -> 1;
- text: characters, ids from the vocabulary, unknown -> 1;
- pixel tasks (image, pathfinder, pathx): an image file read as 8-bit grayscale (PIL ``convert("L")``), of the
  task's side length, row-major, normalised ``(g / scale - mean) / std``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .export import load_description


class OnnxStream:
    """An onnxruntime session of an exported step, with its state. ``threads``: intra-op threads (1 by default)."""

    def __init__(self, onnx_path: str | os.PathLike, threads: int = 1) -> None:
        import onnxruntime as ort

        self.info = load_description(onnx_path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.state_names = [s["name"] for s in self.info["state"]]
        self.output_names = ["logits"] + [s["output"] for s in self.info["state"]]
        self.tokens = self.info["input"]["kind"] == "token_ids"
        self.d_input = None if self.tokens else self.info["input"]["shape"][1]
        self.feed: dict[str, np.ndarray] = {}

    def reset(self, batch: int = 1) -> None:
        """Zero state for ``batch`` sequences."""
        self.feed = {}
        for s in self.info["state"]:
            shape = [batch if d == "batch" else d for d in s["shape"]]
            self.feed[s["name"]] = np.zeros(shape, np.float32)

    def step(self, x_t: np.ndarray) -> np.ndarray:
        """x_t: int64 (B,) token ids or float32 (B,) / (B, d_input) inputs -> logits float32 (B, d_output)."""
        if self.tokens:
            x_t = np.ascontiguousarray(x_t, dtype=np.int64)
        else:
            x_t = np.ascontiguousarray(x_t, dtype=np.float32).reshape(-1, self.d_input)
        self.feed["x"] = x_t
        out = self.session.run(self.output_names, self.feed)
        for name, value in zip(self.state_names, out[1:]):
            self.feed[name] = value
        return out[0]

    def run(self, x: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Logits after the last valid step of each sequence. x: (B, L) ids or pixels; lengths (B,) or None."""
        B, L = x.shape[:2]
        lengths = np.full(B, L) if lengths is None else np.asarray(lengths)
        self.reset(B)
        final = np.zeros((B, len(self.info["classes"])), np.float32)
        for t in range(int(lengths.max())):
            logits = self.step(x[:, t])
            done = lengths == t + 1
            final[done] = logits[done]
        return final


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def encode_input(info: dict[str, Any], source: str) -> np.ndarray:
    """One raw input -> the sequence the model reads: int64 (L,) ids or float32 (L, d_input) pixels.

    ``source``: a path to a file (text or image) or, for token tasks, the input text itself.
    Raises ValueError when the description lacks the encoding (exported without --data) or the input does not fit.
    """
    enc, task = info["input"], info.get("task")
    if enc["kind"] == "token_ids":
        vocab = enc.get("vocab")
        if not vocab:
            raise ValueError(
                "this graph was exported without the task's vocabulary; export again with --data data/prepared/<task>"
            )
        text = Path(source).read_text() if os.path.isfile(source) else source
        if enc.get("tokenizer") == "listops":
            from ..data.listops import tokenize

            tokens = tokenize(text.strip())
        elif enc.get("tokenizer") == "characters":
            tokens = list(text)
        else:
            tokens = text.split()
        if not tokens:
            raise ValueError(f"input {source[:60]!r} has no tokens")
        index = {tok: i for i, tok in enumerate(vocab)}
        ids = np.array([index.get(t, 1) for t in tokens], dtype=np.int64)
        cut = enc.get("cut") or info.get("l_max")
        return ids[:cut] if cut else ids  # the task cuts sequences there
    norm = enc.get("normalisation")
    side = enc.get("image_side")
    if not norm or not side:
        raise ValueError(
            "this graph was exported without the task's pixel normalisation; export again with --data "
            "data/prepared/<task>"
        )
    if not os.path.isfile(source):
        raise ValueError(f"{source}: no such image file (task {task} reads an image)")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as im:
            gray = np.asarray(im.convert("L"))
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"{source}: not a readable image ({e})") from None
    if gray.shape != (side, side):
        raise ValueError(f"{source}: image is {gray.shape[1]}x{gray.shape[0]}, task {task} reads {side}x{side}")
    x = ((gray.reshape(-1).astype(np.float64) / norm["scale"] - norm["mean"]) / norm["std"]).astype(np.float32)
    return x.reshape(-1, 1)


def predict(onnx_path: str | os.PathLike, source: str, every: int = 0, threads: int = 1, log=print) -> np.ndarray:
    """Stream one input through the graph, printing the running prediction every ``every`` tokens (0: never) and
    then the class probabilities. Returns the final probabilities (d_output,)."""
    stream = OnnxStream(onnx_path, threads)
    x = encode_input(stream.info, source)
    classes = stream.info["classes"]
    stream.reset(1)
    t0 = time.perf_counter()
    for t in range(len(x)):
        logits = stream.step(x[t : t + 1])
        if every and (t + 1) % every == 0 and t + 1 < len(x):
            p = softmax(logits)[0]
            k = int(p.argmax())
            log(f"after {t + 1} tokens: class {classes[k]} (p = {p[k]:.3f})")
    seconds = time.perf_counter() - t0
    p = softmax(logits)[0]
    k = int(p.argmax())
    log(f"{len(x)} tokens in {seconds * 1e3:.1f} ms ({seconds / len(x) * 1e6:.0f} us/token)")
    log("probabilities: " + ", ".join(f"{c}: {v:.4f}" for c, v in zip(classes, p)))
    log(f"predicted class: {classes[k]}")
    return p
