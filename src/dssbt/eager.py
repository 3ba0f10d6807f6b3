"""Training jobs run eager PyTorch only: keep ``torch.optim`` from importing ``torch._dynamo`` (1.5-2 s per job).

``AdamW``: torch's AdamW whose ``step`` runs torch's own step function (``Adam.step.__wrapped__``) with gradients
off, which is all that torch's decorator on it does outside ``torch.compile`` besides importing ``torch._dynamo``
for two graph breaks. On a torch where that body is not AdamW's (before 2.7) it runs torch's public ``step``.

``skip_dynamo_import``: ``torch.optim`` also wraps a few functions (``Optimizer.add_param_group``, ``zero_grad``, ``state_dict``,
``load_state_dict``, the functional ``adam`` behind ``AdamW.step``) in ``torch._disable_dynamo``. The wrapper, on its
first call, imports ``torch._dynamo`` only to build a "do not compile this" version of the function, caches it on
the function as ``__dynamo_disable`` and calls it; outside ``torch.compile`` that version runs the function
unchanged. ``skip_dynamo_import`` fills that cache with the function itself, so the first call finds it and runs the
same function without the import. Nothing else changes: same code, same numbers.

Only for a process that never calls ``torch.compile`` (the ``dssbt train`` command, which calls it first): there,
these functions would be traced by the compiler instead of skipped. The pinned torch (2.13) has these wrappers; on a
torch whose wrappers look different nothing is touched and the import simply happens.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable
from typing import Any

import torch

# code objects of torch's two lazy-import wrappers (torch/_compile.py, torch/optim/optimizer.py)
_WRAPPERS = (
    "_disable_dynamo.<locals>.inner",
    "_disable_dynamo_if_unsupported.<locals>.wrapper.<locals>.maybe_fallback",
)


def skip_dynamo_import() -> list[str]:
    """Pre-fill the ``__dynamo_disable`` cache of every torch.optim function that would import torch._dynamo;
    returns the names of the functions handled."""
    optimizer, adam, adamw = (importlib.import_module(f"torch.optim.{m}") for m in ("optimizer", "adam", "adamw"))
    candidates = [*vars(optimizer.Optimizer).items(), *vars(adam).items(), *vars(adamw).items()]
    done = []
    for name, f in candidates:  # inner wraps fn; maybe_fallback wraps func and calls _disable_dynamo(func)
        code = getattr(f, "__code__", None)
        inner = getattr(f, "__wrapped__", None)
        if code is None or code.co_qualname not in _WRAPPERS or not isinstance(inner, types.FunctionType):
            continue
        inner.__dynamo_disable = inner
        done.append(name)
    return done


def _adam_step_body() -> Callable[..., Any] | None:
    """torch's undecorated ``Adam.step``, where AdamW runs exactly it; None elsewhere. AdamW inherits Adam's step
    only since AdamW became a subclass of Adam (torch 2.7); before, AdamW had its own step and ``_init_group``, and
    Adam's body would call the wrong one (a TypeError)."""
    adam, adamw = torch.optim.Adam, torch.optim.AdamW
    body = getattr(adam.step, "__wrapped__", None)
    if issubclass(adamw, adam) and adamw.step is adam.step and isinstance(body, types.FunctionType):
        return body
    return None


# torch's step body, or None: then AdamW.step is torch's public, decorated step (same numbers; the first call imports
# torch._dynamo). tests/test_eager.py runs both.
ADAM_STEP_BODY = _adam_step_body()


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` (same state, state dict and update), stepped without importing torch._dynamo where
    this torch allows it (``ADAM_STEP_BODY``), else by torch's own ``step``."""

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if ADAM_STEP_BODY is None:
            return super().step(closure)
        prev = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(self.defaults["differentiable"])  # what torch's _use_grad decorator sets
            return ADAM_STEP_BODY(self, closure)
        finally:
            torch.set_grad_enabled(prev)
