"""Order specs: how a reduced order is asked for, named in run folders, and written in tables.

A spec is one entry of the config's ``orders`` list:

- an integer ``r``: every layer gets r modes (run folder part ``8``, label ``8``);
- ``"tol:<x>"``: one order per layer, the smallest whose discarded HSV energy is at most x of the layer's
  (folder part ``tol0.3``, label ``tol:0.3``);
- ``"budget:<f>"``: keep a share f of all the model's states, allocated across layers so that the total discarded
  HSV energy is least (``reduction.budget.allocate_budget``; folder part ``budget0.25``).

Every non-integer spec is *per layer*: its orders are chosen once per pretrained model (``dssbt orders``) and
written to an orders file that the reduce, baseline and retrain jobs of that spec read. New kinds (a global budget,
say) are one more entry in ``PER_LAYER_KINDS`` and a branch in ``ModelReducer.choose_orders``.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def n_states(layer_orders: list[int], d_model: int, bidirectional: bool) -> int:
    """The number of states of a model (complex modes of every channel, direction and layer) whose layers have
    ``layer_orders`` modes per channel: the unit of the budgets and of the compressibility study's tables."""
    return sum(int(r) for r in layer_orders) * d_model * (2 if bidirectional else 1)


# kind -> (allowed range of its value, what it means)
PER_LAYER_KINDS = {
    "tol": ((0.0, 1.0), "discarded share of each layer's HSV energy"),
    "budget": ((0.0, 1.0), "kept share of all the model's states"),
}
_WILDCARD = re.compile(r"^(?:(\d+)|([a-z]+)([0-9][0-9.eE+-]*))$")


@dataclass(frozen=True)
class OrderSpec:
    """One reduced order as asked for: ``kind`` "fixed" (value r) or a per-layer kind (value its parameter)."""

    kind: str
    value: float

    @property
    def per_layer(self) -> bool:
        return self.kind != "fixed"

    @property
    def r(self) -> int:
        """The order of a fixed spec (error for a per-layer one)."""
        if self.per_layer:
            raise ValueError(f"order {self.label} has one order per layer, not one r")
        return int(self.value)

    @property
    def wildcard(self) -> str:
        """The ``{order}`` part of run folder names: ``8``, ``tol0.3``."""
        return str(self.r) if not self.per_layer else f"{self.kind}{self.value:g}"

    @property
    def label(self) -> str:
        """The name in metrics and tables (``order_spec``): ``8``, ``tol:0.3``."""
        return str(self.r) if not self.per_layer else f"{self.kind}:{self.value:g}"


def parse_order(value: Any) -> OrderSpec:
    """A config entry (int r, or "tol:<x>") -> OrderSpec; ValueError naming the value."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"order {value!r}: a reduced order must be >= 1")
        return OrderSpec("fixed", value)
    if isinstance(value, str) and ":" in value:
        kind, _, x = value.partition(":")
        return _per_layer(kind, x, value)
    raise ValueError(f"order {value!r}: expected an integer r or one of {[k + ':<x>' for k in PER_LAYER_KINDS]}")


def from_wildcard(text: str) -> OrderSpec:
    """The inverse of ``OrderSpec.wildcard``: ``"8"`` or ``"tol0.3"`` -> OrderSpec."""
    m = _WILDCARD.match(text)
    if not m:
        raise ValueError(f"order {text!r}: not an order folder name (e.g. 8 or tol0.3)")
    if m.group(1):
        return parse_order(int(m.group(1)))
    return _per_layer(m.group(2), m.group(3), text)


def _per_layer(kind: str, x: str, original: str) -> OrderSpec:
    if kind not in PER_LAYER_KINDS:
        raise ValueError(f"order {original!r}: unknown kind {kind!r}; known: {sorted(PER_LAYER_KINDS)}")
    try:
        v = float(x)
    except ValueError:
        raise ValueError(f"order {original!r}: {x!r} is not a number") from None
    lo, hi = PER_LAYER_KINDS[kind][0]
    if not (math.isfinite(v) and lo < v < hi):
        raise ValueError(f"order {original!r}: the {kind} must lie in ({lo:g}, {hi:g})")
    return OrderSpec(kind, v)


def load_orders_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by ``dssbt orders``; errors name the file and the key."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the layer orders file: {e}") from None
    orders = d.get("layer_orders") if isinstance(d, dict) else None
    if not (isinstance(orders, list) and orders and all(isinstance(r, int) and r >= 1 for r in orders)):
        raise ValueError(f"{path}: key layer_orders must be a non-empty list of positive integers, got {orders!r}")
    # files written before order_spec existed carry only the tolerance
    label = d.get("order_spec") or (f"tol:{d['tol']}" if "tol" in d else None)
    try:
        spec = parse_order(label)
        if not spec.per_layer:
            raise ValueError("a fixed order needs no orders file")
    except ValueError as e:
        raise ValueError(f"{path}: key order_spec: {e}") from None
    return d | {"order_spec": spec.label}


__all__ = ["OrderSpec", "PER_LAYER_KINDS", "from_wildcard", "load_orders_file", "parse_order"]
