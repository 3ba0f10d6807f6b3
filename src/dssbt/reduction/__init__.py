"""Reduction of the diagonal SSM channels of a model.

``reduce(Lambda, B, C, r, method="bt", dt=None)`` reduces one batch of channels; arrays are complex (..., N),
batched over any leading dims. ``dt=None`` selects continuous Gramians, an array dt (...,) the discrete (ZOH) route;
the result is always in continuous DSS form. The methods are listed once, in ``registry.METHODS``; a whole model
is reduced by ``apply.ModelReducer``.
"""

from __future__ import annotations

import numpy as np

from .balanced import BalancedFactors, ReducedSystem, balance, balanced_truncation, check_system, truncate
from .gramians import gramians_continuous, gramians_discrete, zoh
from .registry import METHODS, ROUTES, System, get_method


def reduce(
    Lambda: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    r: int,
    method: str = "bt",
    dt: np.ndarray | None = None,
    rank_rtol: float = 1e-10,
    **options,
) -> ReducedSystem:
    """Reduce every system of the batch to order r with ``method`` (a name of ``METHODS``, see ``methods.py``).

    ``rank_rtol``: numerical rank threshold of the balanced factorisation; ``options``: the method's own
    (``METHODS[method].options``, e.g. h2: ``tol``, ``max_iter``).
    """
    m = get_method(method)
    if m.control:  # transplant, random_modes act on a model's stored parameters: ModelReducer.reduce
        raise ValueError(
            f"{method!r} is a control, not a reduction of channel arrays; reduce a model with "
            f"dssbt.reduction.apply.ModelReducer(model).reduce({method!r}, r, seed=seed)"
        )
    m.check_options(options)
    Lambda, B, C = (np.asarray(a, dtype=np.complex128) for a in (Lambda, B, C))
    if dt is not None:
        dt = np.broadcast_to(np.asarray(dt, dtype=np.float64), Lambda.shape[:-1])
    check_system(Lambda, B, C, dt)
    f = balance(Lambda, B, C, dt=dt, rank_rtol=rank_rtol) if m.uses_balance else None
    return m.run(f, System(Lambda, B, C, dt), r, **options)


__all__ = [
    "METHODS",
    "ROUTES",
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
