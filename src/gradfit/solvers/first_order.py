"""First-order methods: gradient descent (Armijo backtracking) and Adam, torch-native.

Both are slow to converge tightly compared with the quasi-Newton and Newton
methods; they are here for very large problems, for noisy objectives and as
baselines. Stopping for gradient descent is as in :mod:`.quasi_newton`; Adam
stops on the gradient test or when its learning rate, cut on every plateau,
has decayed by ``lr_decay_stop`` (it cannot reach ``ftol``-level accuracy).
"""

from __future__ import annotations

import math

import torch

from ..objective import Objective
from ._common import (
    call_back,
    end_of_step,
    extra,
    finish,
    max_iter,
    stalled_at_resolution,
    start_point,
)
from .base import RawSolution, SolverOptions
from .linesearch import armijo_backtracking

__all__ = ["adam", "gradient_descent"]


def gradient_descent(obj: Objective, z0, opts: SolverOptions) -> RawSolution:
    """Steepest descent with a backtracking Armijo line search.

    The first trial step of each line search is the Barzilai–Borwein step
    ``sᵀs / sᵀy`` from the last iteration (the plain doubled previous step where
    that is not positive), which makes plain steepest descent usable on
    moderately ill-conditioned problems. Default ``max_iter`` 20000.
    """
    method = "gd"
    start = start_point(obj, z0, method)
    if isinstance(start, RawSolution):
        return start
    z, _, g, f, gmax, origin = start
    maxit = max_iter(opts, 20000)
    gtol = float(opts.gtol)
    if gmax <= gtol * max(1.0, abs(f)):
        return finish(z, f, True, f"gradient below gtol={gtol:g} at the start", 0, method)
    t = min(1.0, 1.0 / gmax)
    nit = 0
    while nit < maxit:
        nit += 1
        gg = float(g @ g)
        ls = armijo_backtracking(obj, z, -g, t, f, -gg)
        if ls.t == 0.0:
            why = origin.diverged(f, float(z.abs().max()))
            if why is not None:
                return finish(z, f, False, why, nit - 1, method)
            ok = stalled_at_resolution(gmax, 0.5 * t * gg, f, obj.dtype)
            return finish(z, f, ok, "line search found no lower value (f at its float "
                          f"resolution; max|grad|={gmax:.3g})", nit - 1, method)
        s = -ls.t * g
        z_new = z + s
        f_new_t, g_new = obj.value_and_grad(z_new)
        y = g_new - g
        f_new, gmax, sy, ss, smax, zmax = torch.stack([
            f_new_t, g_new.abs().max(), s @ y, s @ s, s.abs().max(), z_new.abs().max(),
        ]).tolist()
        if not math.isfinite(gmax):
            return finish(z, f, False, "gradient became non-finite", nit, method)
        f_old, f, z, g = f, f_new, z_new, g_new
        t = ss / sy if sy > 0 else 2.0 * ls.t
        done = end_of_step(opts, nit, z, f, f_old, gmax, smax, zmax, method, origin)
        if done is not None:
            return done
    return finish(z, f, False, f"maximum number of iterations ({maxit}) reached", nit, method)


def adam(obj: Objective, z0, opts: SolverOptions) -> RawSolution:
    """Adam with plateau learning-rate decay; returns the best point seen.

    ``opts.extra``: ``lr`` (default 1e-2), ``betas`` (0.9, 0.999), ``eps`` (1e-8),
    ``check_every`` (iterations between host syncs, default 25), ``patience``
    (checks without improvement before the rate is cut, default 4),
    ``lr_factor`` (0.3), ``lr_decay_stop`` (stop once the rate fell by this
    factor, default 1e-6). Default ``max_iter`` 20000.

    A step that lands on a non-finite f or gradient is undone and the learning
    rate halved, on the device and without a sync.
    """
    method = "adam"
    start = start_point(obj, z0, method)
    if isinstance(start, RawSolution):
        return start
    z, f_t, g, f, gmax, origin = start
    maxit = max_iter(opts, 20000)
    gtol = float(opts.gtol)
    lr0 = float(extra(opts, "lr", 1e-2))
    b1, b2 = extra(opts, "betas", (0.9, 0.999))
    eps = float(extra(opts, "eps", 1e-8))
    every = max(1, int(extra(opts, "check_every", 25)))
    patience = int(extra(opts, "patience", 4))
    lr_factor = float(extra(opts, "lr_factor", 0.3))
    lr_stop = lr0 * float(extra(opts, "lr_decay_stop", 1e-6))
    if not lr0 > 0:
        raise ValueError(f"Adam option 'lr' must be > 0, got {lr0}")
    if gmax <= gtol * max(1.0, abs(f)):
        return finish(z, f, True, f"gradient below gtol={gtol:g} at the start", 0, method)

    kw = dict(dtype=obj.dtype, device=obj.device)
    lr = torch.tensor(lr0, **kw)
    m = torch.zeros_like(z)
    v = torch.zeros_like(z)
    b1t = torch.ones((), **kw)
    b2t = torch.ones((), **kw)
    z_best, f_best, g_best = z.clone(), f_t.clone(), g.clone()
    z_prev = z.clone()
    best_at_check = f
    stale = 0
    nit = 0
    while nit < maxit:
        nit += 1
        bad = ~(torch.isfinite(f_t) & torch.isfinite(g).all())
        # Undo a step into a non-finite region and halve the rate; no host sync.
        z = torch.where(bad, z_prev, z)
        lr = torch.where(bad, lr * 0.5, lr)
        g = torch.where(bad, torch.zeros_like(g), g)
        better = ~bad & (f_t < f_best)
        z_best = torch.where(better, z, z_best)
        f_best = torch.where(better, f_t, f_best)
        g_best = torch.where(better, g, g_best)
        m = torch.where(bad, m, b1 * m + (1 - b1) * g)
        v = torch.where(bad, v, b2 * v + (1 - b2) * g * g)
        b1t = torch.where(bad, b1t, b1t * b1)
        b2t = torch.where(bad, b2t, b2t * b2)
        step = lr * (m / (1 - b1t)) / (torch.sqrt(v / (1 - b2t)) + eps)
        z_prev = z
        z = z - step
        f_t, g = obj.value_and_grad(z)
        if nit % every and nit < maxit:
            continue
        fb, gb, lr_now, zb = torch.stack([f_best, g_best.abs().max(), lr,
                                          z_best.abs().max()]).tolist()
        why = origin.diverged(fb, zb)
        if why is not None:
            return finish(z_best, fb, False, why, nit, method)
        if gb <= gtol * origin.scale(fb):
            return finish(z_best, fb, True,
                          f"gradient below gtol={gtol:g} (relative to max(1, |f|))", nit, method)
        if fb < best_at_check - 1e-12 * max(1.0, abs(best_at_check)):
            best_at_check, stale = fb, 0
        else:
            stale += 1
            if stale >= patience:
                stale = 0
                lr = lr * lr_factor
                lr_now *= lr_factor
                # Restart from the best point with fresh moments at the lower rate.
                z, z_prev = z_best.clone(), z_best.clone()
                m.zero_()
                v.zero_()
                b1t.fill_(1.0)
                b2t.fill_(1.0)
                f_t, g = f_best.clone(), g_best.clone()
        if lr_now < lr_stop:
            return finish(z_best, fb, True,
                          f"learning rate decayed below {lr_stop:.3g} on a plateau "
                          f"(max|grad|={gb:.3g})", nit, method)
        if call_back(opts, nit, z_best, fb):
            return finish(z_best, fb, False, "stopped by the callback", nit, method)
    fb = float(f_best)
    message = f"maximum number of iterations ({maxit}) reached"
    if stale == 0 and fb < origin.f0:
        # Adam moves about lr per step, so it cannot run far enough to prove divergence.
        message += (f"; f was still falling (from {origin.f0:.6g} to {fb:.6g}): it needs more "
                    "iterations, or the objective is unbounded below (diverging)")
    return finish(z_best, fb, False, message, nit, method)
