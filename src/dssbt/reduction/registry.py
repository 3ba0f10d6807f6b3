"""The reduction methods by name: the one list from which the CLI choices, the workflow's ``{method}`` wildcard,
the hyper-parameter options (``reduction.<method>``) and the table labels are derived.

A method is called as ``run(factors, system, r, **options)``: ``system`` is the batch of channels
``(Lambda, B, C, dt)`` (complex128 (..., N), dt None or (...,)), ``factors`` its ``BalancedFactors`` when the method
``uses_balance`` (computed once per layer and shared by every order and every such method), else None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np

from .balanced import BalancedFactors, ReducedSystem, truncate
from .methods import h2_reduction, modal_truncation, singular_perturbation

ROUTES = ("continuous", "discrete")


class System(NamedTuple):
    """A batch of diagonal channels: Lambda, B, C complex128 (..., N); dt None (continuous route) or (...,)."""

    Lambda: np.ndarray
    B: np.ndarray
    C: np.ndarray
    dt: np.ndarray | None


@dataclass(frozen=True)
class Method:
    name: str  # the config / CLI / run folder name
    label: str  # the name in tables and plots
    uses_balance: bool  # starts from the balanced factorisation (shared across orders and methods)
    run: Callable[..., ReducedSystem]
    options: dict[str, type] = field(default_factory=dict)  # reduction.<name> keys and their types
    routes: tuple[str, ...] = ROUTES
    control: bool = False  # a control of the comparison (config `controls`), not a reduction (config `methods`)


def _bt(f: BalancedFactors, s: System, r: int) -> ReducedSystem:
    return truncate(f, r)


def _bsp(f: BalancedFactors, s: System, r: int) -> ReducedSystem:
    return singular_perturbation(f, r)


def _modal(f: None, s: System, r: int) -> ReducedSystem:
    return modal_truncation(s.Lambda, s.B, s.C, r, s.dt)


def _h2(f: BalancedFactors, s: System, r: int, **options: Any) -> ReducedSystem:
    return h2_reduction(f, s.Lambda, s.B, s.C, r, **options)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("bt", "BT", True, _bt),
        Method("bsp", "BSP", True, _bsp),
        Method("modal", "Modal", False, _modal),
        Method("h2", "H2 (IRKA)", True, _h2, options={"tol": float, "max_iter": int}),
    )
}


def get_method(name: str) -> Method:
    """The method called ``name``; ValueError listing the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown reduction method {name!r}; choose one of {list(METHODS)}")
    return METHODS[name]


def check_route(route: str) -> str:
    if route not in ROUTES:
        raise ValueError(f"unknown Gramian route {route!r}; choose one of {list(ROUTES)}")
    return route


__all__ = ["METHODS", "Method", "ROUTES", "System", "check_route", "get_method"]
