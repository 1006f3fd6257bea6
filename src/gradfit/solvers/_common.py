"""Helpers shared by the solver families: start checks, callbacks, results."""

from __future__ import annotations

import math

import torch

from ..objective import Objective
from .base import RawSolution, SolverOptions

__all__ = [
    "NONFINITE_START",
    "as_start",
    "call_back",
    "finish",
    "max_iter",
    "nonfinite_start",
    "stalled_at_resolution",
]

NONFINITE_START = "non-finite objective at the starting point"


def as_start(obj: Objective, z0) -> torch.Tensor:
    """``z0`` as a fresh 1-D tensor on the objective's device and dtype."""
    z = torch.as_tensor(z0).detach()
    if z.numel() != obj.n:
        raise ValueError(f"z0 has {z.numel()} elements but the objective has n={obj.n}")
    return z.to(device=obj.device, dtype=obj.dtype).reshape(obj.n).clone()


def max_iter(opts: SolverOptions, default: int) -> int:
    """The iteration limit: ``opts.max_iter`` or the solver's default."""
    if opts.max_iter is None:
        return default
    if int(opts.max_iter) < 0:
        raise ValueError(f"max_iter must be >= 0, got {opts.max_iter}")
    return int(opts.max_iter)


def call_back(opts: SolverOptions, nit: int, z: torch.Tensor, f: float) -> bool:
    """Run the user's callback; True means stop."""
    if opts.callback is None:
        return False
    return bool(opts.callback(nit, z.detach().clone(), float(f)))


def nonfinite_start(z0: torch.Tensor, f0: float, method: str) -> RawSolution:
    return RawSolution(z=z0, fun=float(f0), success=False, message=NONFINITE_START, nit=0,
                       method=method)


def finish(z, f, success: bool, message: str, nit: int, method: str) -> RawSolution:
    """Build a :class:`RawSolution`; a non-finite ``f`` is never reported as a success."""
    f = float(f)
    if success and not math.isfinite(f):
        success, message = False, f"non-finite objective at the solution ({message})"
    return RawSolution(z=z.detach().clone(), fun=f, success=bool(success), message=message,
                       nit=int(nit), method=method)


def extra(opts: SolverOptions, key: str, default):
    """A solver-specific option from ``opts.extra``."""
    return opts.extra.get(key, default) if opts.extra else default


def stalled_at_resolution(gmax: float, decrease: float, f: float, dtype) -> bool:
    """Whether a run that can no longer lower f counts as converged.

    True when the gradient is small (``max|∇f| <= 70 sqrt(eps) max(1, |f|)``,
    about 1e-6 in float64) or the local model promises a decrease f cannot
    resolve (``<= 1e4 eps max(1, |f|)``, about 2e-12 in float64).
    """
    eps = torch.finfo(dtype).eps
    scale = max(1.0, abs(float(f)))
    return gmax <= 70 * math.sqrt(eps) * scale or 0 <= decrease <= 1e4 * eps * scale


def start_point(obj: Objective, z0, method: str):
    """z, f (tensor), g, f (float), max|g|; or a RawSolution for a bad start."""
    z = as_start(obj, z0)
    f_t, g = obj.value_and_grad(z)
    f, gmax = torch.stack([f_t, g.abs().max() if obj.n else f_t * 0]).tolist()
    if not math.isfinite(f):
        return nonfinite_start(z, f, method)
    if not math.isfinite(gmax):
        return finish(z, f, False, "non-finite gradient at the starting point", 0, method)
    if obj.n == 0:
        return finish(z, f, True, "no free parameters", 0, method)
    return z, f_t, g, f, gmax


def end_of_step(opts: SolverOptions, nit: int, z, f: float, f_old: float, gmax: float,
                smax: float, zmax: float, method: str) -> RawSolution | None:
    """The convergence tests after an accepted line-search step (gtol, ftol, xtol and the
    callback, in that order); a finished RawSolution, or None to go on."""
    gtol, ftol, xtol = float(opts.gtol), float(opts.ftol), float(opts.xtol)
    if gmax <= gtol * max(1.0, abs(f)):
        return finish(z, f, True, f"gradient below gtol={gtol:g} (relative to max(1, |f|))",
                      nit, method)
    if f_old - f <= ftol * max(1.0, abs(f_old), abs(f)):
        return finish(z, f, True, f"relative reduction of f below ftol={ftol:g}", nit, method)
    if smax <= xtol * (zmax + xtol):
        return finish(z, f, True, f"relative step below xtol={xtol:g}", nit, method)
    if call_back(opts, nit, z, f):
        return finish(z, f, False, "stopped by the callback", nit, method)
    return None
