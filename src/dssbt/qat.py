"""Quantisation-aware training (``optim.qat``): the forward pass through fake-quantised weights of exactly the linear
maps that ``dssbt export --weights int8 | int16`` stores as integers (``dssbt.deploy.quant``).

The maps: the encoder (linear weight (H, d_input), or embedding table (V, H) per token row), each block's output
linear (H_out, H) and the decoder's linear weight(s) (d_output, H). For a weight W (K, J) and b bits, per row k:

    s_k = max_j |W_kj| / (2^(b-1) - 1)   (1 where the row is zero),
    Wq_kj = s_k * clip(round(W_kj / s_k), -(2^(b-1) - 1), 2^(b-1) - 1)

with ``round`` half to even (``np.rint``), ``W / s`` and ``max |W|`` in float64 from the float32 W, ``s`` rounded
to float32 and the product in float32: bit for bit ``quant.dequantised(W, b)``, what the exported graph multiplies
with. Biases, norms and the SSM parameters stay float32, as in the export.

Gradient: the straight-through estimator (Bengio, Leonard & Courville 2013; Jacob et al. 2018),
``dL/dW := dL/dWq``. The optimiser updates the float32 *master* weights W; the model's parameters and state dict
stay those of a float model (same keys, float values), so ``dssbt export --weights int8`` quantises the trained
masters to the integers the training forward used. (``W + (Wq - W).detach()`` would give the same gradient but not
Wq exactly: the sum rounds in float32; a custom autograd function returns Wq itself.)

``enable(model, qat)`` makes every call of the model (training, validation, the final evaluation) run this way: a
forward pre-hook puts Wq in place of each master weight for the duration of the call, a forward hook puts the
master back (also when the forward raises). ``S4Model.step`` (the torch streaming step, not a forward call) is not
affected.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .deploy.quant import WEIGHTS

# optim.qat -> bits: the export's integer weight precisions (optim.qat "none": off)
QAT = {name: bits for name, bits in WEIGHTS.items() if bits is not None}


def fake_quantise_rows(w: Tensor, bits: int) -> Tensor:
    """Per-row symmetric quantise-dequantise, no gradient. w: float (K, J) -> float32 (K, J) = quant.dequantised."""
    qmax = 2 ** (bits - 1) - 1
    w64 = w.detach().double()  # (K, J)
    amax = w64.abs().amax(dim=1)  # (K,)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax)).float()  # (K,) float32
    q = torch.round(w64 / scale.double()[:, None]).clamp_(-qmax, qmax)  # (K, J) integers, half to even
    return q.float() * scale[:, None]  # (K, J) float32


class _FakeQuant(torch.autograd.Function):
    """Forward ``fake_quantise_rows(w, bits)``; backward the identity (straight-through)."""

    @staticmethod
    def forward(ctx, w: Tensor, bits: int) -> Tensor:  # type: ignore[override]
        return fake_quantise_rows(w, bits).to(w.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        return g, None


def fake_quantised(w: Tensor, bits: int) -> Tensor:
    """Wq of a float32 master weight w (K, J), differentiable with the straight-through gradient dL/dw = dL/dWq."""
    return _FakeQuant.apply(w, bits)


def quantised_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose ``weight`` the export quantises: encoder, each block's ``out``, the decoder's linears."""
    mods = [model.encoder, *(block.out for block in model.blocks)]
    return mods + [m for m in model.decoder.modules() if isinstance(m, nn.Linear)]


def enable(model: nn.Module, qat: str) -> nn.Module:
    """Run every forward call of ``model`` (an ``S4Model``) with fake-quantised weights (``qat``: int8 | int16; "none"
    does nothing). The parameters stay the float masters. Returns ``model``."""
    if qat == "none":
        return model
    if qat not in QAT:
        raise ValueError(f"optim.qat={qat!r} is not one of {list(QAT)} (or none: off)")
    if getattr(model, "qat", "none") != "none":
        raise ValueError(f"the model already runs fake-quantised ({model.qat}); enable it once")
    bits = QAT[qat]
    mods = quantised_modules(model)
    masters: list[Tensor] = []

    def swap_in(module: nn.Module, args) -> None:
        for m in mods:
            w = m._parameters["weight"]
            masters.append(w)
            m._parameters["weight"] = fake_quantised(w, bits)  # a plain tensor for the duration of the call

    def swap_back(module: nn.Module, args, output) -> None:
        for m, w in zip(mods, masters):
            m._parameters["weight"] = w
        masters.clear()

    model.register_forward_pre_hook(swap_in)
    model.register_forward_hook(swap_back, always_call=True)
    model.qat = qat  # what the model runs (not in its state dict)
    return model
