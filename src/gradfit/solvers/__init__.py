"""Minimisers behind one interface: ``solve(method, objective, z0, options)``.

Every entry of :data:`METHODS` is a function
``(obj: Objective, z0: Tensor, opts: SolverOptions) -> RawSolution``.
Names without a prefix are torch-native loops (state on the objective's device)
or, for Nelder–Mead and the Krylov trust region, thin wrappers noted in their
modules; ``scipy-*`` names run :func:`scipy.optimize.minimize` or
:func:`scipy.optimize.least_squares` through the objective's NumPy bridge.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..objective import Objective
from .base import RawSolution, SolverOptions
from .lm import levenberg_marquardt
from .quasi_newton import bfgs, lbfgs

__all__ = ["METHODS", "RawSolution", "SolverOptions", "available_methods", "solve"]

Solver = Callable[[Objective, torch.Tensor, SolverOptions], RawSolution]

METHODS: dict[str, Solver] = {
    "lm": levenberg_marquardt,
    "bfgs": bfgs,
    "lbfgs": lbfgs,
}

#: Methods that minimise ``0.5 * sum(r**2)`` and need ``obj.has_residuals``.
RESIDUAL_METHODS = frozenset({"lm", "scipy-lm"})


def available_methods() -> list[str]:
    """Names accepted by :func:`solve`, sorted."""
    return sorted(METHODS)


def solve(method: str, obj: Objective, z0, opts: SolverOptions | None = None) -> RawSolution:
    """Minimise ``obj`` from ``z0`` with the named method.

    Parameters
    ----------
    method : str
        One of :func:`available_methods` (case-insensitive).
    obj : Objective
        The objective; ``'lm'`` and ``'scipy-lm'`` need its residual form.
    z0 : Tensor
        Starting point, length ``obj.n``.
    opts : SolverOptions, optional
        Tolerances, limits, callback and solver-specific ``extra`` options.

    Returns
    -------
    RawSolution

    Raises
    ------
    ValueError
        For an unknown method, or a least-squares method on an objective
        without residuals.
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, not {type(method).__name__}")
    key = method.strip().lower()
    if key not in METHODS:
        raise ValueError(
            f"unknown method {method!r}; choose one of: {', '.join(available_methods())}"
        )
    if key in RESIDUAL_METHODS and not obj.has_residuals:
        raise ValueError(
            f"method {key!r} needs an objective with residuals (Objective(..., residual_fun=...), "
            "as made for a Gaussian likelihood); use 'bfgs', 'lbfgs' or 'trust-exact' for a "
            "general objective"
        )
    return METHODS[key](obj, z0, SolverOptions() if opts is None else opts)
