"""BFGS (dense inverse Hessian) and L-BFGS (two-loop recursion), torch-native.

Both use a strong-Wolfe line search, so every accepted step satisfies the
curvature condition and the updates stay positive definite. The inverse-Hessian
state lives on the objective's device; the host reads only the line-search
scalars and one convergence vector per iteration.

Stopping (all relative, so that a negative log-likelihood of any size converges):

* ``max|∇f| <= gtol * max(1, min(|f|, |f0|))`` (f0: f at the start, so that f falling
  without bound never makes a gradient look small);
* ``(f_old - f) <= ftol * max(|f_old|, |f|)``;
* ``max|Δz| <= xtol * (max|z| + xtol)``.

The last two claim success only where the gradient (or the decrease the quasi-Newton
model still promises) is at f's float resolution; otherwise the run ends as a stall.
A run whose f falls by more than 1e10 max(1, |f0|), or whose parameters grow beyond
1e10 max(1, max|z0|) while f falls, ends with ``success=False`` as diverged.

If the line search finds no lower value even along the steepest-descent
direction, f has hit its float resolution; whether that counts as converged is decided by
:func:`._common.stalled_at_resolution` (small gradient, or a model decrease
below the resolution of f).
"""

from __future__ import annotations

import math

import torch

from ..objective import Objective
from ._common import (
    end_of_step,
    extra,
    finish,
    max_iter,
    stalled_at_resolution,
    start_point,
)
from .base import RawSolution, SolverOptions
from .linesearch import strong_wolfe

__all__ = ["bfgs", "lbfgs"]


class _DenseInverse:
    """BFGS inverse-Hessian approximation."""

    def __init__(self, n, like):
        self.H = torch.eye(n, dtype=like.dtype, device=like.device)
        self.fresh = True

    def direction(self, g):
        return -(self.H @ g)

    def reset(self):
        self.H = torch.eye(self.H.shape[0], dtype=self.H.dtype, device=self.H.device)
        self.fresh = True

    def update(self, s, y, ys):
        if self.fresh:
            # Nocedal & Wright (6.20): size H0 from the first step before updating.
            self.H = self.H * (ys / (y @ y))
            self.fresh = False
        Hy = self.H @ y
        yHy = y @ Hy
        self.H = (self.H + ((ys + yHy) / (ys * ys)) * torch.outer(s, s)
                  - (torch.outer(Hy, s) + torch.outer(s, Hy)) / ys)


class _TwoLoop:
    """L-BFGS inverse-Hessian approximation from the last ``m`` pairs."""

    def __init__(self, m):
        self.m = int(m)
        if self.m < 1:
            raise ValueError(f"L-BFGS history must be >= 1, got {m}")
        self.reset()

    def reset(self):
        self.s, self.y, self.rho = [], [], []
        self.gamma = None

    def direction(self, g):
        q = -g
        alphas = []
        for s, y, rho in zip(reversed(self.s), reversed(self.y), reversed(self.rho)):
            a = rho * (s @ q)
            q = q - a * y
            alphas.append(a)
        if self.gamma is not None:
            q = q * self.gamma
        for (s, y, rho), a in zip(zip(self.s, self.y, self.rho), reversed(alphas)):
            b = rho * (y @ q)
            q = q + (a - b) * s
        return q

    def update(self, s, y, ys):
        if len(self.s) == self.m:
            self.s.pop(0)
            self.y.pop(0)
            self.rho.pop(0)
        self.s.append(s)
        self.y.append(y)
        self.rho.append(1.0 / ys)
        self.gamma = ys / (y @ y)


def _quasi_newton(obj: Objective, z0, opts: SolverOptions, method: str, approx) -> RawSolution:
    maxit = max_iter(opts, int(extra(opts, "max_iter_default", 2000 if method == "bfgs" else 5000)))
    gtol = float(opts.gtol)
    eps = torch.finfo(obj.dtype).eps

    start = start_point(obj, z0, method)
    if isinstance(start, RawSolution):
        return start
    z, f_t, g, f, gmax, origin = start
    if gmax <= gtol * max(1.0, abs(f)):
        return finish(z, f, True, f"gradient below gtol={gtol:g} at the start", 0, method)

    nit = 0
    first = True
    while nit < maxit:
        nit += 1
        d = approx.direction(g)
        gtd = float(g @ d)
        if not (gtd < 0 and math.isfinite(gtd)):
            # Lost descent (rounding in the update): restart from steepest descent.
            approx.reset()
            d = -g
            gtd = float(g @ d)
        # The first step has no curvature information: keep its length <= 1 (as SciPy,
        # 1/|g|; with 1/max|g| both BFGS variants ended on MGH's Broyden banded at a local
        # minimum, F = 3.06, instead of 0).
        t0 = min(1.0, 1.0 / float(torch.linalg.vector_norm(g))) if first else 1.0
        ls = strong_wolfe(obj, z, d, t0, f, g, gtd)
        qn_decrease = -0.5 * gtd  # what the quadratic model still promises
        if ls.t == 0.0 and not first:
            approx.reset()
            d = -g
            gtd = float(g @ d)
            ls = strong_wolfe(obj, z, d, min(1.0, 1.0 / gmax), f, g, gtd)
        if ls.t == 0.0:
            why = origin.diverged(f, float(z.abs().max()))
            if why is not None:
                return finish(z, f, False, why, nit - 1, method)
            ok = stalled_at_resolution(gmax, qn_decrease, f, obj.dtype)
            return finish(z, f, ok,
                          "line search found no lower value (f at its float resolution; "
                          f"max|grad|={gmax:.3g}, predicted decrease {qn_decrease:.3g})",
                          nit - 1, method)
        first = False
        s = ls.t * d
        y = ls.g - g
        ys_t = y @ s
        z = z + s
        f_old, f = f, ls.f
        g = ls.g
        gmax, smax, zmax, ys, yn, sn = torch.stack([
            g.abs().max(), s.abs().max(), z.abs().max(), ys_t,
            torch.linalg.vector_norm(y), torch.linalg.vector_norm(s),
        ]).tolist()
        # Skip pairs without safe positive curvature (possible when Wolfe was not met).
        if ys > eps * yn * sn and ys > 0:
            approx.update(s, y, ys_t)
        if not math.isfinite(gmax):
            return finish(z, f, False, "gradient became non-finite", nit, method)
        done = end_of_step(opts, nit, z, f, f_old, gmax, smax, zmax, method, origin,
                           decrease=lambda g=g: -0.5 * float(g @ approx.direction(g)))
        if done is not None:
            return done
    return finish(z, f, False, f"maximum number of iterations ({maxit}) reached", nit, method)


def bfgs(obj: Objective, z0, opts: SolverOptions) -> RawSolution:
    """BFGS with a dense inverse Hessian and a strong-Wolfe line search.

    Default ``max_iter`` 2000. Suits up to a few thousand parameters.
    """
    return _quasi_newton(obj, z0, opts, "bfgs", _DenseInverse(obj.n, torch.empty(
        0, dtype=obj.dtype, device=obj.device)))


def lbfgs(obj: Objective, z0, opts: SolverOptions) -> RawSolution:
    """L-BFGS (two-loop recursion) with a strong-Wolfe line search.

    Default ``max_iter`` 5000; ``opts.extra["history"]`` sets the memory (default 20).
    """
    return _quasi_newton(obj, z0, opts, "lbfgs", _TwoLoop(extra(opts, "history", 20)))
