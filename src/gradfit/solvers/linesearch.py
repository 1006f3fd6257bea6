"""Line searches shared by the gradient-based solvers.

``strong_wolfe`` is a compact port of ``_strong_wolfe`` from ``torch.optim.lbfgs``
(itself after Nocedal & Wright, Alg. 3.5/3.6 and minFunc), with non-finite trial
values treated as "too high" so the search backs off instead of failing.
Each trial point costs one ``value_and_grad`` and one host sync (the two scalars
that decide the branch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..objective import Objective

__all__ = ["LineSearchResult", "armijo_backtracking", "strong_wolfe"]


@dataclass
class LineSearchResult:
    """Step length and the objective there; ``t == 0`` means no decrease was found."""

    t: float
    f: float
    g: torch.Tensor | None
    f_t: torch.Tensor | None
    nfev: int
    wolfe: bool


def _probe(obj: Objective, z, d, t):
    """f, ∇f and the directional derivative at ``z + t d``; non-finite f becomes +inf."""
    f_t, g = obj.value_and_grad(z + t * d)
    f, gtd = torch.stack([f_t, g @ d]).tolist()
    if not (math.isfinite(f) and math.isfinite(gtd)):
        return math.inf, g, math.nan, f_t
    return f, g, gtd, f_t


def _cubic_min(x1, f1, g1, x2, f2, g2, lo=None, hi=None):
    """Minimiser of the cubic through two points with slopes, clipped to [lo, hi]."""
    if lo is None:
        lo, hi = (x1, x2) if x1 <= x2 else (x2, x1)
    if all(math.isfinite(v) for v in (f1, g1, f2, g2)) and x1 != x2:
        d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
        d2sq = d1 * d1 - g1 * g2
        if d2sq >= 0:
            d2 = math.sqrt(d2sq)
            num, den = (g2 + d2 - d1, g2 - g1 + 2 * d2) if x1 <= x2 else (
                g1 + d2 - d1, g1 - g2 + 2 * d2)
            # den == 0: equal slopes and no curvature (f linear along d), no minimiser
            if den != 0:
                m = x2 - (x2 - x1) * (num / den) if x1 <= x2 else x1 - (x1 - x2) * (num / den)
                if math.isfinite(m):
                    return min(max(m, lo), hi)
    # No usable cubic (a non-finite end point, or f linear): bisect.
    return (lo + hi) / 2


def strong_wolfe(obj: Objective, z, d, t, f0, g0, gtd0, c1=1e-4, c2=0.9,
                 max_ls=25) -> LineSearchResult:
    """Find ``t`` along ``d`` satisfying the strong Wolfe conditions.

    Parameters
    ----------
    obj, z, d :
        Objective, current point and a descent direction (``gtd0 < 0``).
    t : float
        Initial trial step.
    f0, g0, gtd0 :
        f, ∇f and ∇f·d at ``z``.

    Returns
    -------
    LineSearchResult
        The best point found; ``wolfe`` says whether the conditions hold there.
    """
    dmax = float(d.abs().max())
    zmax = float(z.abs().max())
    # Brackets narrower than the float resolution of z cannot change the point.
    tol = 4 * torch.finfo(z.dtype).eps * (zmax + 1e-300) / max(dmax, 1e-300)

    f_new, g_new, gtd_new, ft_new = _probe(obj, z, d, t)
    nfev = 1
    t_prev, f_prev, g_prev, gtd_prev, ft_prev = 0.0, f0, g0, gtd0, None
    done = False
    ls_iter = 0
    bracket = None
    while ls_iter < max_ls:
        if f_new > f0 + c1 * t * gtd0 or (ls_iter > 1 and f_new >= f_prev):
            bracket = [t_prev, t]
            bf, bg, bgtd, bft = [f_prev, f_new], [g_prev, g_new], [gtd_prev, gtd_new], [
                ft_prev, ft_new]
            break
        if abs(gtd_new) <= -c2 * gtd0:
            bracket, bf, bg, bgtd, bft = [t], [f_new], [g_new], [gtd_new], [ft_new]
            done = True
            break
        if gtd_new >= 0:
            bracket = [t_prev, t]
            bf, bg, bgtd, bft = [f_prev, f_new], [g_prev, g_new], [gtd_prev, gtd_new], [
                ft_prev, ft_new]
            break
        # Extrapolate: the minimum lies beyond t.
        t_next = _cubic_min(t_prev, f_prev, gtd_prev, t, f_new, gtd_new,
                            lo=t + 0.01 * (t - t_prev), hi=t * 10)
        t_prev, f_prev, g_prev, gtd_prev, ft_prev = t, f_new, g_new, gtd_new, ft_new
        t = t_next
        f_new, g_new, gtd_new, ft_new = _probe(obj, z, d, t)
        nfev += 1
        ls_iter += 1
    if bracket is None:  # ran out of trials while extrapolating
        bracket = [0.0, t]
        bf, bg, bgtd, bft = [f0, f_new], [g0, g_new], [gtd0, gtd_new], [None, ft_new]

    insuf_progress = False
    low, high = (0, 1) if bf[0] <= bf[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) < tol:
            break
        t = _cubic_min(bracket[0], bf[0], bgtd[0], bracket[1], bf[1], bgtd[1])
        # Keep trials away from the bracket ends so it shrinks (as torch.optim.lbfgs).
        bmax, bmin = max(bracket), min(bracket)
        eps = 0.1 * (bmax - bmin)
        if min(bmax - t, t - bmin) < eps:
            if insuf_progress or t >= bmax or t <= bmin:
                t = bmax - eps if abs(t - bmax) < abs(t - bmin) else bmin + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False
        f_new, g_new, gtd_new, ft_new = _probe(obj, z, d, t)
        nfev += 1
        ls_iter += 1
        if f_new > f0 + c1 * t * gtd0 or f_new >= bf[low]:
            bracket[high], bf[high], bg[high], bgtd[high], bft[high] = (
                t, f_new, g_new, gtd_new, ft_new)
            low, high = (0, 1) if bf[0] <= bf[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd0:
                done = True
            elif gtd_new * (bracket[high] - bracket[low]) >= 0:
                bracket[high], bf[high], bg[high], bgtd[high], bft[high] = (
                    bracket[low], bf[low], bg[low], bgtd[low], bft[low])
            bracket[low], bf[low], bg[low], bgtd[low], bft[low] = (
                t, f_new, g_new, gtd_new, ft_new)

    t, f = bracket[low], bf[low]
    if t == 0.0 or not f < f0:
        return LineSearchResult(0.0, f0, None, None, nfev, False)
    return LineSearchResult(t, f, bg[low], bft[low], nfev, done)


def armijo_backtracking(obj: Objective, z, d, t, f0, gtd0, c1=1e-4, shrink=0.5,
                        max_ls=60) -> LineSearchResult:
    """Backtrack from ``t`` until ``f(z + t d) <= f0 + c1 t ∇f·d`` (function values only).

    A non-finite trial value counts as a failed trial. Returns ``t == 0`` if no
    trial in ``max_ls`` satisfies the condition.
    """
    for k in range(1, max_ls + 1):
        f_t = obj.value(z + t * d)
        f = float(f_t)
        if math.isfinite(f) and f <= f0 + c1 * t * gtd0 and f < f0:
            return LineSearchResult(t, f, None, f_t, k, True)
        t *= shrink
    return LineSearchResult(0.0, f0, None, None, max_ls, False)
