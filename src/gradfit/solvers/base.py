"""The one narrow interface every solver family implements."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["RawSolution", "SolverOptions"]


@dataclass
class SolverOptions:
    """Options common to all solvers; each solver reads what it understands.

    max_iter : iteration limit (None: the solver's default).
    gtol : gradient test. Gradient-based solvers stop when
        max|∇f| <= gtol * max(1, min(|f|, |f at the start|));
        Levenberg–Marquardt uses MINPACK's scale-free test max|cos(r, J_j)| <= gtol.
    ftol : stop when the relative decrease of f over an iteration falls below this.
    xtol : stop when the relative step falls below this.
    callback : called as ``callback(nit, z, f)`` after each iteration; returning True stops.
    extra : solver-specific options (e.g. ``{"lr": 0.01}`` for Adam).
    """

    max_iter: int | None = None
    gtol: float = 1e-10
    ftol: float = 1e-15
    xtol: float = 1e-15
    callback: object = None
    extra: dict = field(default_factory=dict)


@dataclass
class RawSolution:
    """What a solver returns: a point in the flat unconstrained space and its status."""

    z: torch.Tensor
    fun: float
    success: bool
    message: str
    nit: int
    method: str
