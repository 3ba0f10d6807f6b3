"""The recurrent step of a unidirectional model with precomputed real parameters, and a fused streamer.

``real_step_params(model)`` reads everything the step needs out of an ``S4Model`` once, in float64 numpy, in eval
mode (batch norm folded into a per-channel scale and shift, dropout gone):

    per layer: Lambda_bar = exp(dt Lambda), B_bar = (Lambda_bar - 1) / Lambda * B (complex (H, N_i)), C, D,
               the norm, the output linear (H -> H, or H -> 2H followed by a GLU);
    encoder (embedding table or linear), final norm, pooling, decoder, activation.

One step of layer i, for the block input ``h`` (B, H):

    z = norm(h) (prenorm) | h;   x <- Lambda_bar x + B_bar z;   y = Re(sum_n C_n x_n) + D z
    h <- h + out(act(y)) [GLU];  (postnorm: h <- norm(h))

``FusedStream`` runs this with as few calls per layer as it can. The diagonal system (state update, output and
feedthrough) is either one compiled C call (backend "c", ``ckernel.py``; needs a C compiler) or four numpy ufunc
calls on preallocated buffers (backend "numpy": ``x *= Lambda_bar``, ``t = B_bar * z`` and ``x += t`` on real
pairs, ``y = vecdot(x as real pairs, [Re C, -Im C])``); the dense parts are torch calls sharing memory with them.
The unfused reference is ``S4Model.step`` (``DSS.step``), kept as it is; tests check all three against convolution
mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model import S4Model

ACTIVATIONS = ("gelu", "gelu_tanh")


def activation_name(cfg: Any) -> str:
    """The activation a model applies after each DSS layer: ``cfg.activation`` where the config has that field
    ("gelu" exact erf form, "gelu_tanh" tanh approximation), else "gelu" (what ``Block`` applies without it)."""
    name = getattr(cfg, "activation", "gelu")
    if name not in ACTIVATIONS:
        raise ValueError(f"model config: activation {name!r} is not one of {list(ACTIVATIONS)}")
    return name


@dataclass
class NormParams:
    """A norm in eval mode. layer: (x - mean) / sqrt(var + eps) * weight + bias over H; batch: x * scale + shift."""

    kind: str  # "layer" | "batch"
    weight: np.ndarray  # float64 (H,): layer weight, or the folded batch-norm scale
    bias: np.ndarray  # float64 (H,): layer bias, or the folded batch-norm shift
    eps: float = 0.0  # layer norm only


@dataclass
class LayerParams:
    """One residual block's step parameters (float64 / complex128 numpy)."""

    Lambda_bar: np.ndarray  # complex (H, N)
    B_bar: np.ndarray  # complex (H, N)
    C: np.ndarray  # complex (H, N)
    D: np.ndarray  # real (H,)
    norm: NormParams
    out_weight: np.ndarray  # real (H_out, H), H_out = 2H for a GLU output
    out_bias: np.ndarray  # real (H_out,)
    glu: bool

    @property
    def N(self) -> int:
        return self.Lambda_bar.shape[-1]


@dataclass
class StepParams:
    """Everything one step of the whole model needs (float64 numpy)."""

    encoder: str  # "embedding" (weight (V, H)) | "linear" (weight (H, d_input), bias (H,))
    enc_weight: np.ndarray
    enc_bias: np.ndarray | None
    layers: list[LayerParams]
    prenorm: bool
    final_norm: NormParams | None  # prenorm models only
    pool: str  # "mean" | "last"
    dec_weight: np.ndarray  # (d_output, H)
    dec_bias: np.ndarray  # (d_output,)
    activation: str
    d_input: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def H(self) -> int:
        return self.dec_weight.shape[1]

    @property
    def d_output(self) -> int:
        return self.dec_weight.shape[0]

    def orders_by_layer(self) -> list[int]:
        return [lay.N for lay in self.layers]


def check_streamable(model: S4Model) -> None:
    """ValueError unless ``model`` can run one token at a time (unidirectional, one sequence)."""
    cfg = model.cfg
    if cfg.bidirectional:
        raise ValueError(
            "a bidirectional model cannot run step by step: its reverse direction at time t needs the "
            "inputs after t (the future of the sequence); export works for unidirectional models only"
        )
    if cfg.dual:
        raise ValueError(
            "a dual (two-tower Retrieval) model cannot run step by step: its head combines the pooled "
            "features of two whole documents; export works for single-sequence models only"
        )


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy().copy()


def _norm_params(norm: nn.Module) -> NormParams:
    if isinstance(norm, nn.LayerNorm):
        H = norm.normalized_shape[-1]
        w = _np(norm.weight) if norm.weight is not None else np.ones(H)
        b = _np(norm.bias) if norm.bias is not None else np.zeros(H)
        return NormParams("layer", w, b, float(norm.eps))
    if isinstance(norm, nn.BatchNorm1d):
        if norm.running_mean is None:
            raise ValueError("batch norm without running statistics has no eval-mode form to export")
        scale = 1.0 / np.sqrt(_np(norm.running_var) + norm.eps)
        if norm.weight is not None:
            scale = scale * _np(norm.weight)
        shift = -_np(norm.running_mean) * scale
        if norm.bias is not None:
            shift = shift + _np(norm.bias)
        return NormParams("batch", scale, shift)
    raise ValueError(f"unsupported norm {type(norm).__name__}")


def real_step_params(model: S4Model) -> StepParams:
    """The step parameters of ``model`` (see the module docstring), computed in float64 from its weights.

    Raises ValueError for a bidirectional or dual model (``check_streamable``).
    """
    check_streamable(model)
    cfg = model.cfg
    layers = []
    with torch.no_grad():
        for block in model.blocks:
            ss = block.dss.ss_params()  # Lambda, B, C (1, H, N) complex128; D, dt (H,) float64
            dtL = ss["Lambda"][0] * ss["dt"].unsqueeze(-1)  # (H, N)
            Lambda_bar = torch.exp(dtL)
            B_bar = torch.expm1(dtL) / ss["Lambda"][0] * ss["B"][0]
            layers.append(
                LayerParams(
                    Lambda_bar=Lambda_bar.numpy().copy(),
                    B_bar=B_bar.numpy().copy(),
                    C=ss["C"][0].numpy().copy(),
                    D=ss["D"].numpy().copy(),
                    norm=_norm_params(block.norm),
                    out_weight=_np(block.out.weight),
                    out_bias=_np(block.out.bias),
                    glu=block.glu,
                )
            )
        if cfg.encoder == "embedding":
            enc_w, enc_b = _np(model.encoder.weight), None
        else:
            enc_w, enc_b = _np(model.encoder.weight), _np(model.encoder.bias)
    return StepParams(
        encoder=cfg.encoder,
        enc_weight=enc_w,
        enc_bias=enc_b,
        layers=layers,
        prenorm=cfg.prenorm,
        final_norm=_norm_params(model.final_norm) if cfg.prenorm else None,
        pool=cfg.pool,
        dec_weight=_np(model.decoder.weight),
        dec_bias=_np(model.decoder.bias),
        activation=activation_name(cfg),
        d_input=cfg.d_input,
    )


# ----- fused streamer ----------------------------------------------------------------------------------------------


class FusedStream:
    """Token-by-token inference with precomputed parameters. ``dtype``: torch.float32 (default) or torch.float64.

    ``state = s.init_state(B)``; ``logits = s.step(x_t, state)`` with x_t long (B,) token ids or float (B,) /
    (B, d_input) inputs; returns the logits of the sequence so far, float (B, d_output). The SSM states are complex
    numpy arrays (B, H, N_i) inside ``state``.
    """

    def __init__(self, params: StepParams, dtype: torch.dtype = torch.float32, backend: str = "auto") -> None:
        from . import ckernel

        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"FusedStream: dtype must be float32 or float64, got {dtype}")
        if backend not in ("auto", "c", "numpy"):
            raise ValueError(f"FusedStream: backend must be auto, c or numpy, got {backend!r}")
        if backend == "c" and not ckernel.available():
            raise ValueError(f"FusedStream: backend c is unavailable: {ckernel.error()}")
        self.backend = backend if backend != "auto" else "c" if ckernel.available() else "numpy"
        self.p, self.dtype = params, dtype
        self.np_real = np.float32 if dtype == torch.float32 else np.float64
        self.np_cplx = np.complex64 if dtype == torch.float32 else np.complex128
        t = lambda a: torch.tensor(a, dtype=dtype)  # noqa: E731
        self.enc_w, self.enc_b = t(params.enc_weight), None if params.enc_bias is None else t(params.enc_bias)
        self.layers = []
        for lay in params.layers:
            C_pairs = np.stack([lay.C.real, -lay.C.imag], axis=-1).reshape(lay.C.shape[0], -1)  # (H, 2N)
            self.layers.append(
                {
                    "Lambda_bar": lay.Lambda_bar.astype(self.np_cplx),
                    # B_bar as interleaved (re, im) pairs: real B_bar * real u, then added to the state seen as pairs
                    "B_pairs": np.stack([lay.B_bar.real, lay.B_bar.imag], -1)
                    .reshape(lay.C.shape[0], -1)
                    .astype(self.np_real),
                    "C_pairs": C_pairs.astype(self.np_real),
                    "D": lay.D.astype(self.np_real),
                    "norm": self._norm(lay.norm),
                    "W": t(lay.out_weight),
                    "b": t(lay.out_bias),
                    "glu": lay.glu,
                }
            )
        self.final_norm = None if params.final_norm is None else self._norm(params.final_norm)
        self.dec_w, self.dec_b = t(params.dec_weight), t(params.dec_bias)
        self.gelu_approx = "tanh" if params.activation == "gelu_tanh" else "none"

    def _norm(self, n: NormParams) -> tuple:
        return (n.kind, torch.tensor(n.weight, dtype=self.dtype), torch.tensor(n.bias, dtype=self.dtype), n.eps)

    @staticmethod
    def _apply_norm(norm: tuple, h: Tensor) -> Tensor:
        kind, w, b, eps = norm
        if kind == "layer":
            return F.layer_norm(h, (h.shape[-1],), w, b, eps)
        return torch.addcmul(b, h, w)

    def init_state(self, batch: int) -> dict[str, Any]:
        """Zero state for ``batch`` sequences: SSM states (complex numpy (B, H, N_i)), work buffers, pooling sum."""
        H = self.p.H
        state: dict[str, Any] = {"sum": torch.zeros(batch, H, dtype=self.dtype), "t": 0}
        if self.backend == "c":
            from .ckernel import CLayer

            state["c"] = [CLayer(lay.Lambda_bar, lay.B_bar, lay.C, lay.D, batch, self.np_real) for lay in self.p.layers]
            state["y"] = [torch.zeros(batch, H, dtype=self.dtype) for _ in self.p.layers]
        else:
            state["ssm"] = [np.zeros((batch, H, lay.N), self.np_cplx) for lay in self.p.layers]
            state["tmp"] = [np.zeros((batch, H, 2 * lay.N), self.np_real) for lay in self.p.layers]
        return state

    @torch.no_grad()
    def step(self, x_t: Tensor, state: dict[str, Any]) -> Tensor:
        """Consume one input step; returns the logits (B, d_output) of the prefix. Updates ``state`` in place."""
        if self.p.encoder == "embedding":
            h = F.embedding(x_t, self.enc_w)  # (B, H)
        else:
            x_t = x_t.to(self.dtype)
            h = F.linear(x_t.unsqueeze(-1) if x_t.dim() == 1 else x_t, self.enc_w, self.enc_b)
        for i, lay in enumerate(self.layers):
            z = self._apply_norm(lay["norm"], h) if self.p.prenorm else h
            if self.backend == "c":  # one foreign call: state update, output and D u
                z = z.contiguous()
                y = state["y"][i]
                state["c"][i].step(z.data_ptr(), y.data_ptr())
            else:
                y = torch.from_numpy(self._ssm(lay, z.numpy(), state["ssm"][i], state["tmp"][i]))
                y = y.addcmul_(z, torch.from_numpy(lay["D"]))  # + D u
            y = F.linear(F.gelu(y, approximate=self.gelu_approx), lay["W"], lay["b"])
            if lay["glu"]:
                y = F.glu(y, dim=-1)
            h = h + y
            if not self.p.prenorm:
                h = self._apply_norm(lay["norm"], h)
        if self.final_norm is not None:
            h = self._apply_norm(self.final_norm, h)
        state["t"] += 1
        if self.p.pool == "last":
            pooled = h
        else:
            state["sum"] += h
            pooled = state["sum"] / state["t"]
        return F.linear(pooled, self.dec_w, self.dec_b)

    def _ssm(self, lay: dict, u: np.ndarray, x: np.ndarray, tmp: np.ndarray) -> np.ndarray:
        """x <- Lambda_bar x + B_bar u (in place); returns Re(sum_n C_n x_n) real (B, H). u real (B, H) (shares
        memory with the torch input), x complex (B, H, N), tmp real (B, H, 2N) work buffer."""
        np.multiply(x, lay["Lambda_bar"], out=x)
        xr = x.view(self.np_real)  # (B, H, 2N): (re, im) pairs
        np.multiply(lay["B_pairs"], u[..., None], out=tmp)
        np.add(xr, tmp, out=xr)
        return np.vecdot(xr, lay["C_pairs"])

    def ssm_step(self, i: int, u: np.ndarray, x: np.ndarray, tmp: np.ndarray) -> np.ndarray:
        """Layer i's diagonal system with its feedthrough, alone (what the benchmark times per layer): u real (B, H),
        x complex (B, H, N) state (updated in place), tmp real (B, H, 2N). Returns y real (B, H)."""
        lay = self.layers[i]
        y = self._ssm(lay, u, x, tmp)
        y += lay["D"] * u
        return y
