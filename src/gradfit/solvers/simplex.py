"""Nelder–Mead, derivative-free, on SciPy's implementation with restarts.

SciPy's simplex (adaptive coefficients of Gao & Han 2012, which keep it working
beyond a handful of dimensions) is restarted from its own answer with a fresh
simplex until a restart no longer improves f: a collapsed simplex is the classic
way Nelder–Mead stalls short of the minimum. Each evaluation is one host round
trip, which is fine for the small problems this method is for.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..objective import Objective
from ._common import Origin, as_start, extra, finish, max_iter, nonfinite_start
from .base import RawSolution, SolverOptions

__all__ = ["nelder_mead"]



def _so():
    # imported on first use: scipy.optimize costs ~0.9 s at start-up
    import scipy.optimize

    return scipy.optimize

def nelder_mead(obj: Objective, z0, opts: SolverOptions) -> RawSolution:
    """Adaptive Nelder–Mead with restarts.

    ``max_iter`` (default ``2000 * n``) counts simplex iterations over all
    restarts; ``opts.extra["max_restarts"]`` (default 10), ``"initial_step"``
    (relative size of the first simplex, default 0.05). ``xtol``/``ftol`` are
    floored at 1e-12/1e-14 (simplex tolerances below that only burn evaluations).
    """
    method = "nelder-mead"
    z = as_start(obj, z0)
    f0 = float(obj.value(z))
    if not math.isfinite(f0):
        return nonfinite_start(z, f0, method)
    if obj.n == 0:
        return finish(z, f0, True, "no free parameters", 0, method)
    budget = max_iter(opts, 2000 * obj.n)
    max_restarts = int(extra(opts, "max_restarts", 10))
    step = float(extra(opts, "initial_step", 0.05))
    xatol, fatol = max(float(opts.xtol), 1e-12), max(float(opts.ftol), 1e-14)
    count = [0]

    def fun(x):
        v = float(obj.value(torch.from_numpy(np.array(x, dtype=np.float64))))
        # The simplex ordering compares with <, which NaN would corrupt.
        return v if math.isfinite(v) else math.inf

    def cb(xk, *_):
        count[0] += 1
        if opts.callback is not None:
            xt = obj.as_tensor(xk)
            if opts.callback(count[0], xt, float(obj.value(xt))):
                raise StopIteration

    x = z.detach().cpu().numpy().astype(np.float64)
    origin = Origin(f0, float(np.max(np.abs(x))))
    f = f0
    nit = 0
    message = ""
    for restart in range(max_restarts + 1):
        left = budget - nit
        if left <= 0:
            return finish(obj.as_tensor(x), f, False,
                          f"maximum number of iterations ({budget}) reached", nit, method)
        # A fresh simplex around x, sized to x (or to `step` where x is zero).
        h = np.where(x != 0, step * np.abs(x), step if restart == 0 else step * 0.1)
        sim = np.vstack([x, x + np.diag(h)])
        try:
            with warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                res = _so().minimize(fun, x, method="Nelder-Mead", callback=cb, options={
                    "maxiter": left, "maxfev": 2 * left + obj.n + 1, "xatol": xatol,
                    "fatol": fatol, "adaptive": True, "initial_simplex": sim})
        except StopIteration:
            return finish(obj.as_tensor(x), f, False, "stopped by the callback", nit, method)
        nit += int(res.nit)
        message = str(res.message)
        improved = res.fun < f - fatol
        if res.fun <= f:
            x, f = np.asarray(res.x, np.float64), float(res.fun)
        why = origin.diverged(f, float(np.max(np.abs(x))))
        if why is not None:
            return finish(obj.as_tensor(x), f, False, why, nit, method)
        if not res.success and res.status != 0:
            return finish(obj.as_tensor(x), f, False, message, nit, method)
        if not improved and restart > 0:
            return finish(obj.as_tensor(x), f, True,
                          f"{message}; a restart did not lower f", nit, method)
    return finish(obj.as_tensor(x), f, True,
                  f"{message} (after {max_restarts} restarts)", nit, method)
