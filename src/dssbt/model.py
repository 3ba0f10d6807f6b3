"""The S4 backbone with DSS layers: encoder, residual DSS blocks, pooling decoder, optional two-tower head.

Two implementations of the same network share every parameter (and the state-dict keys):

- the training path (``S4Model.forward``, ``Block.forward``): the backbone is (B, L, H) as in the reference, and
  the DSS layer runs on channel-major (H, B, L) memory: one 2-D transpose copy of the block's normalised input
  feeds ``DSS.forward`` (``FFTConv``: FFTs over contiguous rows of L, hand-written backward), GELU acts on the
  channel-major output, and the output map reads it as the transposed operand of a matmul (one per GLU half,
  ``linear_from_channel_major``), whose backward hands the GELU its gradient in the same channel-major layout.
  So every elementwise op sees inputs of one memory layout (with mixed layouts GELU's backward alone took ~29 ms
  per call instead of ~1.7 ms at B=50, L=1024, H=32), and layer norm, GLU, residual and pooling keep torch's
  fused (B, L, H) kernels.
- the reference path (``forward(..., reference=True)``, ``Block.forward_reference``) is the original
  implementation: transposed views around the DSS layer, ``DSS.forward_reference``. Recurrent mode
  (``recurrent=True``) and ``step`` build on it. Tests require both paths to agree.

(A fully channel-major backbone, with layer norm over dim 0 by a hand-written function, was measured no faster
(image step 148 vs 146 ms): what it saves in transposes, its layer norm loses -- torch's fused layer norm on
(B*L, H) took 4.7 ms forward + backward, the best composition of ops over dim 0 11.7 ms.)

Dropout masks are drawn in each path's own element order (same distribution, different draws).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fused
from .dss import DSS
from .hippo import INITS
from .hparams import DEFAULT_D_STATE
from .orders import n_states

_CHOICES = {
    "encoder": ("embedding", "linear"),
    "norm": ("layer", "batch"),
    "output": ("linear", "glu"),
    "pool": ("mean", "last"),
    "init": tuple(INITS),
}


@dataclass(frozen=True)
class ModelConfig:
    """Complete description of a model's architecture (two equal configs build interchangeable models)."""

    d_input: int  # vocabulary size (encoder "embedding", token 0 is padding) or input features per step ("linear")
    d_output: int  # number of classes
    encoder: str = "linear"  # "embedding" | "linear"
    d_model: int = 64  # H, channels
    d_state: int = DEFAULT_D_STATE  # N, complex modes per channel
    n_layers: int = 4
    dropout: float = 0.0
    norm: str = "layer"  # "layer" | "batch"
    prenorm: bool = True
    output: str = "glu"  # position-wise output map after the DSS layer: "linear" (H -> H) | "glu" (H -> 2H -> GLU)
    pool: str = "mean"  # "mean" over valid positions | "last" valid position
    bidirectional: bool = False
    init: str = "skew_hippo"  # Lambda init, see dssbt.hippo.INITS
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dual: bool = False  # two-tower Retrieval head: inputs (B, 2, L), features [a, b, a*b, a-b] -> MLP
    # per-layer state sizes (one per layer, each <= d_state) where layers differ, e.g. after a reduction whose order
    # was chosen per layer by tolerance; empty: every layer has d_state modes (read them with orders_by_layer())
    layer_orders: tuple = ()

    def __post_init__(self) -> None:
        if isinstance(self.layer_orders, list):  # from JSON
            object.__setattr__(self, "layer_orders", tuple(self.layer_orders))
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "layer_orders":
                if not (isinstance(v, tuple) and all(isinstance(n, int) and not isinstance(n, bool) for n in v)):
                    raise ValueError(f"model config: layer_orders must be a list of ints, got {v!r}")
                continue
            want = {"int": int, "float": (int, float), "str": str, "bool": bool}[str(f.type)]
            if isinstance(v, bool) and f.type != "bool" or not isinstance(v, want):
                raise ValueError(f"model config: {f.name} must be {f.type}, got {v!r}")
            if f.name in _CHOICES and v not in _CHOICES[f.name]:
                raise ValueError(f"model config: {f.name}={v!r} is not one of {list(_CHOICES[f.name])}")
        for name in ("d_input", "d_output", "d_model", "d_state", "n_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"model config: {name} must be >= 1, got {getattr(self, name)}")
        if self.layer_orders and (
            len(self.layer_orders) != self.n_layers or not all(1 <= n <= self.d_state for n in self.layer_orders)
        ):
            raise ValueError(
                f"model config: layer_orders must hold n_layers={self.n_layers} sizes in [1, d_state={self.d_state}],"
                f" got {list(self.layer_orders)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model config: dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.dt_min <= self.dt_max:
            raise ValueError(f"model config: need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a dict; unknown keys are an error naming them."""
        if "layer_states" in d:  # the name of layer_orders in model files written before 0.2
            d = {("layer_orders" if k == "layer_states" else k): v for k, v in d.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model config: unknown key(s) {unknown}; known keys are {sorted(known)}")
        try:
            return cls(**d)
        except TypeError as e:  # a missing required key
            raise ValueError(f"model config: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layer_orders"] = list(self.layer_orders)
        return d

    def with_layer_orders(self, orders: list[int]) -> ModelConfig:
        """The same architecture with ``orders[i]`` modes in layer i (d_state = the largest; uniform orders are
        stored as d_state alone, so an order-r reduction and a fresh order-r model have equal configs)."""
        orders = [int(n) for n in orders]
        uniform = len(set(orders)) == 1
        return self.replace(d_state=max(orders), layer_orders=() if uniform else tuple(orders))

    def orders_by_layer(self) -> list[int]:
        """The number of complex modes of each layer (length n_layers)."""
        return list(self.layer_orders) or [self.d_state] * self.n_layers

    def n_states(self, layer_orders: list[int] | None = None) -> int:
        """States of this architecture (``orders.n_states``) at ``layer_orders``, default its own."""
        orders = self.orders_by_layer() if layer_orders is None else layer_orders
        return n_states(orders, self.d_model, self.bidirectional)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


class _LinearFromChannelMajor(torch.autograd.Function):
    """Row blocks of ``y = z^T W^T + b`` for channel-major z (see ``linear_from_channel_major``)."""

    # Under autocast (optim.amp, CPU or CUDA) the matmuls run in autocast's dtype, as nn.Linear's would: forward casts
    # z, weight and bias to it and runs with autocast off (the out= writes need operands of one dtype); backward
    # computes in that dtype, and autograd casts the gradients to the dtypes of the inputs (the float32 parameters).
    @staticmethod
    def forward(ctx, z: Tensor, weight: Tensor, bias: Tensor | None, parts: int) -> Tensor:  # type: ignore[override]
        device = z.device.type
        if not torch.is_autocast_enabled(device):
            return _LinearFromChannelMajor._forward(ctx, z, weight, bias, parts)
        dtype = torch.get_autocast_dtype(device)
        z, weight, bias = z.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
        with torch.autocast(device_type=device, enabled=False):
            return _LinearFromChannelMajor._forward(ctx, z, weight, bias, parts)

    @staticmethod
    def _forward(ctx, z: Tensor, weight: Tensor, bias: Tensor | None, parts: int) -> Tensor:
        H_in, M = z.shape
        W = weight.view(parts, -1, H_in)  # (parts, H_part, H_in)
        y = z.new_empty(parts, M, W.shape[1])
        for i in range(parts):  # z.t() is a transposed operand of the matmul, not a copy
            if bias is None:
                torch.mm(z.t(), W[i].t(), out=y[i])
            else:
                torch.addmm(bias.view(parts, -1)[i], z.t(), W[i].t(), out=y[i])
        ctx.save_for_backward(z, weight)
        ctx.parts = parts
        return y  # (parts, M, H_part)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        z, weight = ctx.saved_tensors
        g = g.to(z.dtype)  # the forward's compute dtype (autocast's, or z's own)
        W = weight.view(ctx.parts, -1, z.shape[0])
        dz = dw = db = None
        if ctx.needs_input_grad[0]:  # (H_in, M): z's own layout
            dz = torch.mm(W[0].t(), g[0].t())
            for i in range(1, ctx.parts):
                dz.addmm_(W[i].t(), g[i].t())
        if ctx.needs_input_grad[1]:
            dw = torch.cat([torch.mm(g[i].t(), z.t()) for i in range(ctx.parts)])  # (H_out, H_in)
        if ctx.needs_input_grad[2]:
            db = g.sum(1, dtype=torch.promote_types(g.dtype, torch.float32)).view(-1)  # a low-precision sum overflows
        return dz, dw, db, None


def linear_from_channel_major(z: Tensor, lin: nn.Linear, parts: int = 1, bias: bool = True) -> Tensor:
    """``lin`` at every position of channel-major z: real (H_in, B, L) -> (parts, B, L, H_out / parts), one matmul
    per part of the output features (parts=2: the two halves a, b of a GLU's input, each contiguous, so
    ``F.glu(y, dim=0)`` runs on contiguous tensors; on the interleaved (B, L, 2H) halves its backward was ~5x slower).
    ``bias=False``: without ``lin.bias`` (the fused GLU adds it).

    The backward returns dLoss/dz channel-major (H_in, B, L), the layout of z, so an elementwise op before it
    (GELU) meets its gradient in its own layout.
    """
    H, Bsz, L = z.shape
    y = _LinearFromChannelMajor.apply(z.reshape(H, Bsz * L), lin.weight, lin.bias if bias else None, parts)
    return y.view(parts, Bsz, L, -1)


class _ToChannelMajor(torch.autograd.Function):
    """(B, L, H) -> contiguous (H, B, L), whose backward hands back a contiguous (B, L, H) gradient.

    Autograd's own backward of ``.t().contiguous()`` returns the gradient as a transposed view; batch norm's
    backward on such a view took ~37 ms instead of ~9 ms (copy included) at B*L = 51200, H = 32.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        Bsz, L, H = x.shape
        return x.reshape(Bsz * L, H).t().contiguous().view(H, Bsz, L)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        H, Bsz, L = g.shape
        return g.reshape(H, Bsz * L).t().contiguous().view(Bsz, L, H)


def to_channel_major(x: Tensor) -> Tensor:
    """(B, L, H) -> contiguous (H, B, L): one 2-D transpose copy of the (B*L, H) matrix (and one in the backward)."""
    return _ToChannelMajor.apply(x)


class Block(nn.Module):
    """Residual block: [norm] -> DSS -> GELU -> dropout -> output map -> dropout -> + residual [-> norm]."""

    def __init__(self, cfg: ModelConfig, d_state: int | None = None) -> None:
        super().__init__()
        H = cfg.d_model
        self.prenorm = cfg.prenorm
        self.norm = nn.LayerNorm(H) if cfg.norm == "layer" else nn.BatchNorm1d(H)
        self.dss = DSS(H, d_state or cfg.d_state, cfg.init, cfg.dt_min, cfg.dt_max, cfg.bidirectional)
        self.dropout = nn.Dropout(cfg.dropout)
        self.glu = cfg.output == "glu"
        self.out = nn.Linear(H, 2 * H if self.glu else H)

    def _norm(self, x: Tensor) -> Tensor:
        if isinstance(self.norm, nn.BatchNorm1d):
            return self.norm(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(x)

    def _after_dss(self, x: Tensor, z: Tensor) -> Tensor:
        """Everything after the DSS layer. x: block input, z: DSS output, both (B, L, H)."""
        z = self.dropout(F.gelu(z))
        z = self.out(z)  # (B, L, H) or (B, L, 2H)
        if self.glu:
            z = F.glu(z, dim=-1)
        x = x + self.dropout(z)
        return x if self.prenorm else self._norm(x)

    # ----- training path ------------------------------------------------------------------------------------

    def _norm_rows(self, x: Tensor) -> Tensor:
        """The block's norm on (B, L, H); batch norm sees (B*L, H) rows (same statistics as (B, H, L), no transpose)."""
        if isinstance(self.norm, nn.BatchNorm1d):
            return self.norm(x.reshape(-1, x.shape[-1])).view(x.shape)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        """Training path. x: (B, L, H) -> (B, L, H); equals ``forward_reference``. Where ``fused.applies(x)``
        (CPU, optim.kernels not torch), a prenorm layer or batch norm and the GLU with the residual add are
        compiled kernels (dssbt.fused)."""
        # fused kernels take float32 / float64 operands of one dtype; under autocast the output map is low precision
        c = fused.applies(x) and not torch.is_autocast_enabled(x.device.type)
        if c and self.prenorm and isinstance(self.norm, nn.LayerNorm):
            z = fused.layer_norm_channel_major(x, self.norm)  # (H, B, L)
        elif c and self.prenorm and isinstance(self.norm, nn.BatchNorm1d) and fused.batch_norm_applies(self.norm):
            z = fused.batch_norm_channel_major(x, self.norm)  # (H, B, L)
        else:
            z = to_channel_major(self._norm_rows(x) if self.prenorm else x)  # (H, B, L)
        z = self.dss(z.transpose(0, 1)).transpose(0, 1)  # (H, B, L), contiguous
        z = self.dropout(F.gelu(z))
        if c and self.glu and (self.dropout.p == 0 or not self.training):
            x = fused.glu_residual(linear_from_channel_major(z, self.out, 2, bias=False), self.out.bias, x)
            return x if self.prenorm else self._norm_rows(x)
        z = linear_from_channel_major(z, self.out, 2 if self.glu else 1)  # (1 or 2, B, L, H)
        z = (F.glu(z, dim=0) if self.glu else z).squeeze(0)  # (B, L, H); a view (indexing [0] would cost a
        # zero-filled copy in the backward)
        x = x + self.dropout(z)
        return x if self.prenorm else self._norm_rows(x)

    # ----- reference path, (B, L, H) -------------------------------------------------------------------------

    def forward_reference(self, x: Tensor) -> Tensor:
        """The original implementation. x: (B, L, H) -> (B, L, H)."""
        z = self._norm(x) if self.prenorm else x
        z = self.dss.forward_reference(z.transpose(1, 2)).transpose(1, 2)  # (B, L, H)
        return self._after_dss(x, z)

    def step(self, x_t: Tensor, state: Tensor, params: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """One time step. x_t: (B, H), state: complex (B, H, N), params: ``dss.step_params()`` -> (y_t (B, H), state)."""
        z = self._norm_step(x_t) if self.prenorm else x_t
        z, state = self.dss.step(z, state, params)  # (B, H)
        return self._after_dss(x_t.unsqueeze(1), z.unsqueeze(1)).squeeze(1), state

    def _norm_step(self, x_t: Tensor) -> Tensor:
        return self._norm(x_t.unsqueeze(1)).squeeze(1)  # batch norm in eval mode is per position anyway

    def forward_recurrent(self, x: Tensor) -> Tensor:
        """Same as ``forward`` with the DSS layer run step by step. x: (B, L, H) -> (B, L, H)."""
        z = self._norm(x) if self.prenorm else x
        z = self.dss.forward_recurrent(z.transpose(1, 2)).transpose(1, 2)
        return self._after_dss(x, z)


class S4Model(nn.Module):
    """Encoder -> n_layers residual DSS blocks -> final norm (prenorm) -> pooling -> decoder."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        H = cfg.d_model
        if cfg.encoder == "embedding":
            self.encoder: nn.Module = nn.Embedding(cfg.d_input, H, padding_idx=0)
        else:
            self.encoder = nn.Linear(cfg.d_input, H)
        self.blocks = nn.ModuleList(Block(cfg, n) for n in cfg.orders_by_layer())
        self.final_norm = nn.LayerNorm(H) if cfg.prenorm else nn.Identity()
        if cfg.dual:
            self.decoder: nn.Module = nn.Sequential(nn.Linear(4 * H, H), nn.GELU(), nn.Linear(H, cfg.d_output))
        else:
            self.decoder = nn.Linear(H, cfg.d_output)

    def dss_layers(self) -> list[DSS]:
        return [b.dss for b in self.blocks]

    def init_state(self, batch: int) -> dict[str, Any]:
        """Recurrent inference state: per-layer SSM states, discretised parameters, running sum for mean pooling."""
        if self.cfg.bidirectional or self.cfg.dual:
            raise ValueError("step-by-step inference needs a unidirectional single-sequence model")
        layers = self.dss_layers()
        return {
            "ssm": [layer.initial_state(batch) for layer in layers],  # complex (B, H, N) each
            "params": [layer.step_params() for layer in layers],  # computed once per sequence
            "sum": torch.zeros(batch, self.cfg.d_model, dtype=layers[0].log_dt.dtype, device=layers[0].log_dt.device),
            "t": 0,
        }

    @torch.no_grad()
    def step(self, x_t: Tensor, state: dict[str, Any]) -> Tensor:
        """Consume one input step and return the logits of the sequence so far (B, d_output); updates ``state``.

        x_t: long (B,) token ids or float (B,) / (B, d_input). Equals ``forward`` on the prefix (mean or last pooling).
        """
        if self.cfg.encoder == "linear" and x_t.dim() == 1:
            x_t = x_t.unsqueeze(-1)
        h = self.encoder(x_t)  # (B, H)
        for i, block in enumerate(self.blocks):
            h, state["ssm"][i] = block.step(h, state["ssm"][i], state["params"][i])
        h = self.final_norm(h)
        state["sum"] += h
        state["t"] += 1
        pooled = h if self.cfg.pool == "last" else state["sum"] / state["t"]
        return self.decoder(pooled)

    def features(
        self, x: Tensor, lengths: Tensor | None = None, recurrent: bool = False, reference: bool = False
    ) -> Tensor:
        """Pooled features (B, H) of one sequence batch.

        x: long (B, L) token ids (embedding) or float (B, L) / (B, L, d_input) (linear); lengths: long (B,) or None.
        ``reference``: the reference blocks; ``recurrent``: blocks with the DSS layer run step by step.
        """
        if self.cfg.encoder == "linear" and x.dim() == 2:
            x = x.unsqueeze(-1)  # (B, L, 1)
        Bsz, L = x.shape[0], x.shape[1]
        if lengths is None:
            lengths = torch.full((Bsz,), L, dtype=torch.long, device=x.device)
        h = self.encoder(x)  # (B, L, H)
        for block in self.blocks:
            h = block.forward_recurrent(h) if recurrent else block.forward_reference(h) if reference else block(h)
        if (
            not reference
            and not recurrent
            and self.cfg.pool == "mean"
            and isinstance(self.final_norm, nn.LayerNorm)
            and fused.applies(h)
        ):
            return fused.layer_norm_mean_pool(h, lengths, self.final_norm)  # (B, H): final norm + pooling, fused
        h = self.final_norm(h)
        if self.cfg.pool == "last":
            return h[torch.arange(Bsz, device=h.device), lengths - 1]  # (B, H)
        mask = (torch.arange(L, device=h.device) < lengths.unsqueeze(-1)).to(h.dtype)  # (B, L)
        if reference or recurrent:
            pooled = (h * mask.unsqueeze(-1)).sum(1)
        else:  # the masked sum as one batched matrix-vector product: no (B, L, H) temporary
            pooled = torch.bmm(mask.unsqueeze(1), h).squeeze(1)
        return pooled / lengths.clamp(min=1).unsqueeze(-1).to(h.dtype)  # (B, H)

    def forward(
        self, x: Tensor, lengths: Tensor | None = None, recurrent: bool = False, reference: bool = False
    ) -> Tensor:
        """Class logits (B, d_output). For ``dual``, x is (B, 2, L) and lengths (B, 2).

        Dual (two-tower retrieval): the training path runs both documents through the backbone as ONE batch of
        2B sequences and splits the features afterwards, so in training mode batch-norm statistics (and one
        running-statistics update per step) come from all 2B sequences, as in the state-spaces/s4 reference. The
        reference path (``reference=True``) and recurrent mode run the two towers one after the other (batch-norm
        statistics per tower; identical results for layer norm, and for batch norm in eval mode).
        """
        if not self.cfg.dual:
            return self.decoder(self.features(x, lengths, recurrent, reference))
        if recurrent or reference:
            la, lb = (None, None) if lengths is None else (lengths[:, 0], lengths[:, 1])
            a = self.features(x[:, 0], la, recurrent, reference)  # (B, H)
            b = self.features(x[:, 1], lb, recurrent, reference)
        else:
            Bsz = x.shape[0]
            both = torch.cat([x[:, 0], x[:, 1]])  # (2B, L, ...): documents a then b
            ln = None if lengths is None else torch.cat([lengths[:, 0], lengths[:, 1]])
            a, b = self.features(both, ln).split(Bsz)  # (B, H) each
        return self.decoder(torch.cat([a, b, a * b, a - b], dim=-1))


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Real parameter counts: total, and the SSM part (Lambda, B, C, D, log_dt of every DSS layer)."""
    total = sum(p.numel() for p in model.parameters())
    ssm = sum(p.numel() for m in model.modules() if isinstance(m, DSS) for p in m.parameters())
    return {"total": total, "ssm": ssm}
