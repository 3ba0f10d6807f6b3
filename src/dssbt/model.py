"""The S4 backbone with DSS layers: encoder, residual DSS blocks, pooling decoder, optional two-tower head.

Two implementations of the same network share every parameter (and the state-dict keys):

- the training path (``S4Model.forward``, ``Block.forward``) keeps the backbone channel-major, (H, B, L) in
  memory: the DSS layer's FFTs run over contiguous rows of L, every position-wise linear map (output map, GLU) is
  ONE matmul (H_out, H) @ (H, B*L), layer norm normalises dim 0 (``layer_norm_h``, a hand-written autograd
  function whose means over H are matrix-vector products), batch norm sees the same data as a (1, H, B*L) input.
  No (B, L, H) <-> (B, H, L) transposes are taken, and every elementwise op sees inputs of one memory layout
  (with a transposed input, GELU's backward alone took ~29 ms per call instead of ~1.7 ms at B=50, L=1024, H=32).
- the reference path (``forward(..., reference=True)``, ``Block.forward_reference``) is the original
  implementation: backbone in (B, L, H), transposes around the DSS layer, ``DSS.forward_reference``.
  Recurrent mode (``recurrent=True``) and ``step`` build on it. Tests require both paths to agree.

Dropout masks are drawn in each path's own element order (same distribution, different draws).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dss import DSS
from .hippo import INITS

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
    d_state: int = 64  # N, complex modes per channel
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
    # was chosen per layer by tolerance; empty: every layer has d_state modes
    layer_states: tuple = ()

    def __post_init__(self) -> None:
        if isinstance(self.layer_states, list):  # from JSON
            object.__setattr__(self, "layer_states", tuple(self.layer_states))
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "layer_states":
                if not (isinstance(v, tuple) and all(isinstance(n, int) and not isinstance(n, bool) for n in v)):
                    raise ValueError(f"model config: layer_states must be a list of ints, got {v!r}")
                continue
            want = {"int": int, "float": (int, float), "str": str, "bool": bool}[str(f.type)]
            if isinstance(v, bool) and f.type != "bool" or not isinstance(v, want):
                raise ValueError(f"model config: {f.name} must be {f.type}, got {v!r}")
            if f.name in _CHOICES and v not in _CHOICES[f.name]:
                raise ValueError(f"model config: {f.name}={v!r} is not one of {list(_CHOICES[f.name])}")
        for name in ("d_input", "d_output", "d_model", "d_state", "n_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"model config: {name} must be >= 1, got {getattr(self, name)}")
        if self.layer_states and (
            len(self.layer_states) != self.n_layers or not all(1 <= n <= self.d_state for n in self.layer_states)
        ):
            raise ValueError(
                f"model config: layer_states must hold n_layers={self.n_layers} sizes in [1, d_state={self.d_state}],"
                f" got {list(self.layer_states)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model config: dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.dt_min <= self.dt_max:
            raise ValueError(f"model config: need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Build from a dict; unknown keys are an error naming them."""
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
        d["layer_states"] = list(self.layer_states)
        return d

    def with_state_sizes(self, sizes: list[int]) -> "ModelConfig":
        """The same architecture with ``sizes[i]`` modes in layer i (d_state = the largest; uniform sizes need no
        layer_states, so an order-r reduction and a fresh order-r model have equal configs)."""
        sizes = [int(n) for n in sizes]
        uniform = len(set(sizes)) == 1
        return self.replace(d_state=max(sizes), layer_states=() if uniform else tuple(sizes))

    def state_sizes(self) -> list[int]:
        """The number of complex modes of each layer (length n_layers)."""
        return list(self.layer_states) or [self.d_state] * self.n_layers

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


class _LayerNormH(torch.autograd.Function):
    """Layer norm over dim 0 of a channel-major (H, M) tensor (see ``layer_norm_h``)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        H = x.shape[0]
        xc = x - x.mean(0)  # (H, M); reductions over the outer dim run vectorised along M
        rstd = torch.rsqrt(xc.square().sum(0).div_(H).add_(eps))  # (M,), biased variance as nn.LayerNorm
        xhat = xc.mul_(rstd)
        ctx.save_for_backward(xhat, rstd, weight)
        return (xhat * weight.unsqueeze(-1)).add_(bias.unsqueeze(-1))

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        xhat, rstd, weight = ctx.saved_tensors
        H = xhat.shape[0]
        t = g * xhat  # (H, M)
        # Per column m: dx = rstd * (w g - mean_H(w g) - xhat * mean_H(w g xhat)); the weighted means over H are
        # matrix-vector products (each reads its tensor once).
        m1 = torch.mv(g.t(), weight).mul_(rstd).div_(H)  # (M,): rstd * mean_H(w g)
        m2 = torch.mv(t.t(), weight).mul_(rstd).div_(H)  # (M,): rstd * mean_H(w g xhat)
        dx = (g * weight.unsqueeze(-1)).mul_(rstd).sub_(m1).addcmul_(xhat, m2, value=-1.0)
        dw = t.sum(1) if ctx.needs_input_grad[1] else None
        db = g.sum(1) if ctx.needs_input_grad[2] else None
        return dx, dw, db, None


def layer_norm_h(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    """``nn.LayerNorm`` over H of a channel-major tensor: x real (H, ...) -> (H, ...), norm's weight, bias and eps.

    Equals ``norm`` applied to the (..., H) transpose of x, without transposing.
    """
    H = x.shape[0]
    return _LayerNormH.apply(x.reshape(H, -1), norm.weight, norm.bias, norm.eps).view(x.shape)


def norm_h(x: Tensor, norm: nn.Module) -> Tensor:
    """A block's norm (LayerNorm or BatchNorm1d over H channels) on channel-major x, real (H, B, L) -> (H, B, L)."""
    if isinstance(norm, nn.BatchNorm1d):
        # (1, H, B*L) is a valid BatchNorm1d input with the same per-channel statistics (over B and L) and the
        # same running-statistics update (unbiased variance over B*L values) as the (B, H, L) input.
        return norm(x.view(1, x.shape[0], -1)).view(x.shape)
    return layer_norm_h(x, norm)


def linear_h(x: Tensor, lin: nn.Linear) -> Tensor:
    """``nn.Linear`` at every position of channel-major x: real (H_in, B, L) -> (H_out, B, L), one matmul."""
    H = x.shape[0]
    y = torch.addmm(lin.bias.unsqueeze(-1), lin.weight, x.reshape(H, -1))  # (H_out, B*L)
    return y.view(-1, *x.shape[1:])


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

    # ----- training path, channel-major (H, B, L) -----------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """Training path. x: real (H, B, L) channel-major -> (H, B, L); equals ``forward_reference`` on (B, L, H)."""
        z = norm_h(x, self.norm) if self.prenorm else x
        z = self.dss(z.transpose(0, 1)).transpose(0, 1)  # the layer sees (B, H, L) views; (H, B, L) memory
        z = self.dropout(F.gelu(z))
        z = linear_h(z, self.out)  # (H, B, L) or (2H, B, L)
        if self.glu:
            z = F.glu(z, dim=0)
        x = x + self.dropout(z)
        return x if self.prenorm else norm_h(x, self.norm)

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
        self.blocks = nn.ModuleList(Block(cfg, n) for n in cfg.state_sizes())
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
            "sum": torch.zeros(batch, self.cfg.d_model, device=layers[0].log_dt.device),  # (B, H)
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
        ``reference`` (or ``recurrent``): the original (B, L, H) implementation; else the channel-major path.
        """
        if self.cfg.encoder == "linear" and x.dim() == 2:
            x = x.unsqueeze(-1)  # (B, L, 1)
        Bsz, L = x.shape[0], x.shape[1]
        if lengths is None:
            lengths = torch.full((Bsz,), L, dtype=torch.long, device=x.device)
        if recurrent or reference:
            return self._features_reference(x, lengths, recurrent)
        h = self._encode_h(x)  # (H, B, L)
        for block in self.blocks:
            h = block(h)
        if self.cfg.prenorm:
            h = layer_norm_h(h, self.final_norm)
        if self.cfg.pool == "last":
            return h[:, torch.arange(Bsz, device=h.device), lengths - 1].t()  # (B, H)
        mask = (torch.arange(L, device=h.device) < lengths.unsqueeze(-1)).to(h.dtype)  # (B, L)
        pooled = (h * mask).sum(-1).t()  # (B, H)
        return pooled / lengths.clamp(min=1).unsqueeze(-1).to(h.dtype)

    def _encode_h(self, x: Tensor) -> Tensor:
        """Encoder output channel-major, real (H, B, L). x: long (B, L) or float (B, L, d_input)."""
        if self.cfg.encoder == "embedding":
            return self.encoder(x).permute(2, 0, 1).contiguous()  # the one transposed copy
        W, b = self.encoder.weight, self.encoder.bias  # (H, d_input), (H,)
        if x.shape[-1] == 1:  # pixels: an outer product, one elementwise pass
            return torch.addcmul(b.view(-1, 1, 1), W.view(-1, 1, 1), x.squeeze(-1).unsqueeze(0))
        Bsz, L = x.shape[:2]
        return torch.addmm(b.unsqueeze(-1), W, x.reshape(-1, x.shape[-1]).t()).view(-1, Bsz, L)

    def _features_reference(self, x: Tensor, lengths: Tensor, recurrent: bool) -> Tensor:
        """The original implementation of ``features``: backbone in (B, L, H)."""
        h = self.encoder(x)  # (B, L, H)
        for block in self.blocks:
            h = block.forward_recurrent(h) if recurrent else block.forward_reference(h)
        h = self.final_norm(h)
        L = h.shape[1]
        if self.cfg.pool == "last":
            return h[torch.arange(h.shape[0], device=h.device), lengths - 1]  # (B, H)
        mask = (torch.arange(L, device=h.device) < lengths.unsqueeze(-1)).to(h.dtype)  # (B, L)
        return (h * mask.unsqueeze(-1)).sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(h.dtype)  # (B, H)

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
