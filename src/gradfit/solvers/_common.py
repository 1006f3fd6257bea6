"""Helpers shared by the solver families: start checks, callbacks, results."""

from __future__ import annotations

import math

import torch

from ..objective import Objective
from .base import RawSolution, SolverOptions

__all__ = [
    "NONFINITE_START",
    "RUNAWAY",
    "Origin",
    "as_start",
    "call_back",
    "finish",
    "max_iter",
    "nonfinite_start",
    "stalled_at_resolution",
]

NONFINITE_START = "non-finite objective at the starting point"

#: A run has diverged once f fell by more than this many times max(1, |f0|), or once
#: max|z| grew past this many times max(1, max|z0|) while f kept falling.
RUNAWAY = 1e10


class Origin:
    """The start of a run: what divergence and the relative gradient test compare with."""

    def __init__(self, f0: float, z0max: float):
        self.f0 = float(f0) + 0.0  # no "-0" in messages
        self.z0max = float(z0max)

    def scale(self, f: float) -> float:
        """``max(1, min(|f|, |f0|))``: the size of f for relative tests.

        The size f *had* bounds it, so that f falling without limit does not make
        any gradient look small relative to it (an unbounded objective would
        otherwise pass the gradient test once |f| ≳ 1/gtol).
        """
        return max(1.0, min(abs(float(f)), abs(self.f0)))

    def diverged(self, f: float, zmax: float) -> str | None:
        """A message if the run diverges (f → −∞, or the parameters run away), else None."""
        f = float(f)
        if f == -math.inf or f < self.f0 - RUNAWAY * max(1.0, abs(self.f0)):
            return (f"diverged: f fell from {self.f0:.6g} to {f:.6g}; the objective looks "
                    "unbounded below")
        if not math.isfinite(zmax) or (zmax > RUNAWAY * max(1.0, self.z0max) and f < self.f0):
            return (f"diverged: the parameters ran away (max|z| grew from {self.z0max:.3g} to "
                    f"{zmax:.3g}) while f kept falling (from {self.f0:.6g} to {f:.6g}); the "
                    "objective looks unbounded below, or its minimum lies at infinity")
        return None


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


def stop_claim(z, f: float, gmax: float, decrease: float, stop: str, nit: int,
               method: str, dtype) -> RawSolution:
    """Finish on an ftol/xtol/trust-radius stop: a success only if f is at a minimum as far
    as its float resolution can tell (:func:`stalled_at_resolution`), else a stall."""
    if stalled_at_resolution(gmax, decrease, f, dtype):
        return finish(z, f, True, stop, nit, method)
    return finish(z, f, False, f"stalled: {stop}, but max|grad|={gmax:.3g} is not small",
                  nit, method)


def start_point(obj: Objective, z0, method: str):
    """z, f (tensor), g, f (float), max|g|, :class:`Origin`; or a RawSolution for a bad start."""
    z = as_start(obj, z0)
    f_t, g = obj.value_and_grad(z)
    f, gmax, zmax = torch.stack([f_t, g.abs().max() if obj.n else f_t * 0,
                                 z.abs().max() if obj.n else f_t * 0]).tolist()
    if not math.isfinite(f):
        return nonfinite_start(z, f, method)
    if not math.isfinite(gmax):
        return finish(z, f, False, "non-finite gradient at the starting point", 0, method)
    if obj.n == 0:
        return finish(z, f, True, "no free parameters", 0, method)
    return z, f_t, g, f, gmax, Origin(f, zmax)


def end_of_step(opts: SolverOptions, nit: int, z, f: float, f_old: float, gmax: float,
                smax: float, zmax: float, method: str, origin: Origin,
                decrease=-1.0) -> RawSolution | None:
    """The tests after an accepted line-search step (divergence, the callback, gtol, ftol
    and xtol, in that order: a progress callback sees every accepted step, the last one
    included); a finished RawSolution, or None to go on.

    ``decrease`` is what the local model promises from the new point (-1 if unknown),
    or a callable computing it, called only when an ftol/xtol stop needs it.
    An ftol or xtol stop claims success only where :func:`stalled_at_resolution` agrees:
    a tiny step with a large gradient is a stall, not a minimum.
    """
    gtol, ftol, xtol = float(opts.gtol), float(opts.ftol), float(opts.xtol)
    why = origin.diverged(f, zmax)
    if why is not None:
        return finish(z, f, False, why, nit, method)
    if call_back(opts, nit, z, f):
        return finish(z, f, False, "stopped by the callback", nit, method)
    if gmax <= gtol * origin.scale(f):
        return finish(z, f, True, f"gradient below gtol={gtol:g} (relative to max(1, |f|))",
                      nit, method)
    stop = None
    # relative to |f| itself (no floor at 1): on a zero-residual problem f -> 0 and a floor
    # would stop at the absolute decrease ftol, e.g. at F = 5e-12 on Powell's singular
    # function; a stall at f's resolution ends in the line search instead
    if f_old - f <= ftol * max(abs(f_old), abs(f)):
        stop = f"relative reduction of f below ftol={ftol:g}"
    elif smax <= xtol * (zmax + xtol):
        stop = f"relative step below xtol={xtol:g}"
    if stop is not None:
        return stop_claim(z, f, gmax, decrease() if callable(decrease) else decrease, stop, nit,
                          method, z.dtype)
    return None
