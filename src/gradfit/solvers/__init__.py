"""Minimisers behind one interface: ``solve(method, objective, z0, options)``.

Every entry of :data:`METHODS` is a function
``(obj: Objective, z0: Tensor, opts: SolverOptions) -> RawSolution``.
Names without a prefix are torch-native loops whose state stays on the
objective's device (``lm``, ``bfgs``, ``lbfgs``, ``gd``, ``adam``, ``newton-cg``,
``trust-krylov``, ``trust-exact``, and ``lm-cg`` / ``lm-normal`` for many parameters or
chunked data), except ``nelder-mead``, which restarts SciPy's
adaptive simplex; ``scipy-*`` names run :func:`scipy.optimize.minimize` or
:func:`scipy.optimize.least_squares` through the objective's NumPy bridge.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..objective import Objective
from .base import RawSolution, SolverOptions
from .first_order import adam, gradient_descent
from .lm import levenberg_marquardt
from .lm_cg import lm_cg, lm_normal
from .newton import newton_cg, trust_exact, trust_krylov
from .quasi_newton import bfgs, lbfgs
from .scipy_bridge import SCIPY_METHODS
from .simplex import nelder_mead

__all__ = ["ALIASES", "METHODS", "RawSolution", "SolverOptions", "available_methods",
           "canonical_method", "solve"]

Solver = Callable[[Objective, torch.Tensor, SolverOptions], RawSolution]

METHODS: dict[str, Solver] = {
    "lm": levenberg_marquardt,
    "lm-cg": lm_cg,
    "lm-normal": lm_normal,
    "bfgs": bfgs,
    "lbfgs": lbfgs,
    "gd": gradient_descent,
    "adam": adam,
    "newton-cg": newton_cg,
    "newton": newton_cg,  # the name DESIGN.md's public API uses
    "trust-exact": trust_exact,
    "trust-krylov": trust_krylov,
    "nelder-mead": nelder_mead,
    **SCIPY_METHODS,
}

#: Other spellings accepted by :func:`solve` (not listed by :func:`available_methods`).
ALIASES = {"l-bfgs": "lbfgs", "levenberg-marquardt": "lm",
           "neldermead": "nelder-mead", "simplex": "nelder-mead"}

#: Methods that minimise ``0.5 * sum(r**2)`` and need ``obj.has_residuals``.
RESIDUAL_METHODS = frozenset({"lm", "lm-cg", "lm-normal", "scipy-lm"})


def available_methods() -> list[str]:
    """Names accepted by :func:`solve`, sorted."""
    return sorted(METHODS)


def canonical_method(method, also=()) -> str:
    """The :data:`METHODS` key for ``method`` (case-insensitive, aliases resolved).

    The one place method names are checked; ``also`` are further names the caller
    accepts (``fit`` adds ``'auto'``), returned as given in lower case.

    Raises
    ------
    TypeError, ValueError
        For a non-string or an unknown name (the message lists the choices).
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, not {type(method).__name__}")
    key = method.strip().lower()
    if key in also:
        return key
    key = ALIASES.get(key, key)
    if key not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: "
                         f"{', '.join([*also, *available_methods()])}")
    return key


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
    key = canonical_method(method)
    if key in RESIDUAL_METHODS and not obj.has_residuals:
        raise ValueError(
            f"method {key!r} needs an objective with residuals (Objective(..., residual_fun=...), "
            "as made for a Gaussian likelihood); use 'bfgs', 'lbfgs' or 'trust-exact' for a "
            "general objective"
        )
    return METHODS[key](obj, z0, SolverOptions() if opts is None else opts)
