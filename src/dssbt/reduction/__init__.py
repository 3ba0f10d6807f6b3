"""Reduction of the diagonal SSM channels of a model.

``reduce(Lambda, B, C, r, method="bt", dt=None)`` is the one entry point; arrays are complex (..., N), batched over
any leading dims. ``dt=None`` selects continuous Gramians, an array dt (...,) the discrete (ZOH) route; the result is
always in continuous DSS form.
"""

from __future__ import annotations

import numpy as np

from .balanced import BalancedFactors, ReducedSystem, balance, balanced_truncation, truncate
from .gramians import gramians_continuous, gramians_discrete, zoh

METHODS = ("bt", "bsp", "modal", "h2")


def reduce(
    Lambda: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    r: int,
    method: str = "bt",
    dt: np.ndarray | None = None,
    **options,
) -> ReducedSystem:
    """Reduce every system of the batch to order r with ``method`` (one of ``METHODS``, see ``methods.py``).

    ``options``: ``rank_rtol`` (BT-based methods), ``tol`` and ``max_iter`` (h2).
    """
    if method not in METHODS:
        raise ValueError(f"unknown reduction method {method!r}; choose one of {list(METHODS)}")
    from .methods import reduce_with

    return reduce_with(method, Lambda, B, C, r, dt=dt, **options)


__all__ = [
    "METHODS",
    "BalancedFactors",
    "ReducedSystem",
    "balance",
    "balanced_truncation",
    "gramians_continuous",
    "gramians_discrete",
    "reduce",
    "truncate",
    "zoh",
]
