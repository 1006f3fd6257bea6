"""Second-order methods with exact autodiff curvature, torch-native.

* ``newton_cg``: truncated Newton; conjugate gradients on exact Hessian-vector
  products, stopped at negative curvature, then an Armijo backtracking search.
  Never forms the Hessian, so it scales to many parameters.
* ``trust_krylov``: trust region with a Steihaug–Toint truncated-CG subproblem
  on exact Hessian-vector products; handles negative curvature, never forms H.
* ``trust_exact``: trust region on the exact Hessian, with the subproblem solved
  through an eigendecomposition (Moré & Sorensen, including the hard case).
  Best for small, ill-conditioned or non-convex problems.

Stopping is as in :mod:`.quasi_newton` (relative gradient, f reduction, step).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..objective import Objective
from ._common import (
    call_back,
    extra,
    finish,
    max_iter,
    stalled_at_resolution,
    start_point,
)
from .base import RawSolution, SolverOptions
from .linesearch import armijo_backtracking

__all__ = ["newton_cg", "trust_exact", "trust_krylov"]

_NAN_WALL = ("trust region collapsed against a region where f is not finite (NaN or inf "
             "just beyond): not a minimum")


def _steihaug_free_cg(obj: Objective, z, g, gnorm, max_cg):
    """Approximately solve ``H p = -g`` by CG; stop at negative curvature.

    Returns the direction and the number of Hessian-vector products. Forcing
    term ``min(0.5, sqrt(|g|)) |g|`` (superlinear local convergence, Nocedal &
    Wright Alg. 7.1); one host sync per CG iteration.
    """
    tol = min(0.5, math.sqrt(gnorm)) * gnorm
    p = torch.zeros_like(g)
    r = g.clone()
    d = -r
    rr = r @ r
    for k in range(max_cg):
        Hd = obj.hvp(z, d)
        dHd_t = d @ Hd
        alpha = rr / dHd_t
        p_next = p + alpha * d
        r_next = r + alpha * Hd
        rr_next = r_next @ r_next
        dHd, rn = torch.stack([dHd_t, rr_next]).tolist()
        if not (dHd > 0 and math.isfinite(dHd)):
            # Negative curvature: the CG iterate so far is still a descent direction;
            # on the first iteration fall back to steepest descent.
            return (-g if k == 0 else p), k + 1
        p, r = p_next, r_next
        if math.sqrt(rn) <= tol:
            return p, k + 1
        d = -r + (rr_next / rr) * d
        rr = rr_next
    return p, max_cg


def newton_cg(obj: Objective, z0, opts: SolverOptions) -> RawSolution:
    """Truncated Newton (Newton–CG) with exact Hessian-vector products.

    ``opts.extra["max_cg"]``: CG iterations per step (default ``2 n``, at least 10).
    Default ``max_iter`` 1000.
    """
    method = "newton-cg"
    start = start_point(obj, z0, method)
    if isinstance(start, RawSolution):
        return start
    z, f_t, g, f, gmax = start
    maxit = max_iter(opts, 1000)
    max_cg = int(extra(opts, "max_cg", max(10, 2 * obj.n)))
    gtol, ftol, xtol = float(opts.gtol), float(opts.ftol), float(opts.xtol)
    nit = 0
    while True:
        if gmax <= gtol * max(1.0, abs(f)):
            return finish(z, f, True, f"gradient below gtol={gtol:g} (relative to max(1, |f|))",
                          nit, method)
        if nit >= maxit:
            return finish(z, f, False, f"maximum number of iterations ({maxit}) reached", nit,
                          method)
        nit += 1
        gnorm = float(torch.linalg.vector_norm(g))
        p, _ = _steihaug_free_cg(obj, z, g, gnorm, max_cg)
        gtd = float(g @ p)
        if not (gtd < 0 and math.isfinite(gtd)):
            p, gtd = -g, -gnorm**2
        # The Newton step has its natural length 1; steepest descent gets a bounded one.
        t0 = 1.0 if gtd != -gnorm**2 else min(1.0, 1.0 / gmax)
        ls = armijo_backtracking(obj, z, p, t0, f, gtd)
        if ls.t == 0.0:
            ok = stalled_at_resolution(gmax, -0.5 * gtd, f, obj.dtype)
            return finish(z, f, ok, "line search found no lower value (f at its float "
                          f"resolution; max|grad|={gmax:.3g})", nit - 1, method)
        s = ls.t * p
        z = z + s
        f_old = f
        f_t, g = obj.value_and_grad(z)
        f, gmax, smax, zmax = torch.stack([f_t, g.abs().max(), s.abs().max(),
                                           z.abs().max()]).tolist()
        if not math.isfinite(gmax):
            return finish(z, f, False, "gradient became non-finite", nit, method)
        if f_old - f <= ftol * max(1.0, abs(f_old), abs(f)):
            # f stopped falling: a minimum only if the gradient is small or the Newton
            # step promised no more than f resolves (not so at a wall of NaN, where the
            # backtracking cut a long step to nothing)
            ok = ls.t == t0 or stalled_at_resolution(gmax, -0.5 * gtd, f, obj.dtype)
            msg = (f"relative reduction of f below ftol={ftol:g}" if ok else
                   f"f stopped falling with max|grad|={gmax:.3g}: the line search cut the "
                   "Newton step to nothing (a region where f is not finite just beyond?)")
            return finish(z, f, ok, msg, nit, method)
        if smax <= xtol * (zmax + xtol):
            return finish(z, f, True, f"relative step below xtol={xtol:g}", nit, method)
        if call_back(opts, nit, z, f):
            return finish(z, f, False, "stopped by the callback", nit, method)


def _tr_subproblem(lam, gq, delta):
    """Solve ``min gᵀp + ½pᵀHp, |p| <= delta`` in the eigenbasis of H.

    ``lam``: eigenvalues (ascending), ``gq = Qᵀg``. Returns ``(pq, on_boundary)``
    with ``p = Q pq``.
    """
    n = lam.size
    scale = max(1.0, float(np.abs(lam).max()))
    tiny = 1e-14 * scale
    if lam[0] > tiny:
        pq = -gq / lam
        if np.linalg.norm(pq) <= delta:
            return pq, False
    lo = max(0.0, -lam[0])

    def norm_at(mu):
        return float(np.linalg.norm(gq / (lam + mu)))

    # Hard case: g has (almost) no weight on the lowest eigenvector and even the
    # shifted step stays inside; move along that eigenvector to the boundary.
    low = lam <= lam[0] + tiny
    if np.all(np.abs(gq[low]) <= 1e-12 * max(1.0, float(np.linalg.norm(gq)))):
        mu = lo
        with np.errstate(divide="ignore", invalid="ignore"):
            pq = np.where(low, 0.0, -gq / (lam + mu))
        rest = delta**2 - float(pq @ pq)
        if rest >= 0:
            e = np.zeros(n)
            e[int(np.argmin(lam))] = 1.0
            return pq + math.sqrt(rest) * e, True
    # Easy case: |p(mu)| = delta for one mu > lo; Newton on 1/|p| with bisection.
    hi = lo + float(np.linalg.norm(gq)) / delta + tiny
    mu = hi
    for _ in range(200):
        q = norm_at(mu)
        if abs(q - delta) <= 1e-10 * delta:
            break
        if q > delta:
            lo = mu
        else:
            hi = mu
        w = gq / (lam + mu)
        dq = -float(np.sum(w * w / (lam + mu))) / q
        mu_n = mu - (q - delta) / delta * q / dq if dq < 0 else -1.0
        if not lo < mu_n < hi:
            mu_n = 0.5 * (lo + hi)
        if mu_n == mu:
            break
        mu = mu_n
    return -gq / (lam + mu), True


def trust_exact(obj: Objective, z0, opts: SolverOptions) -> RawSolution:
    """Trust-region Newton on the exact Hessian; the subproblem solved by eigh.

    ``opts.extra``: ``initial_trust_radius`` (default 1), ``max_trust_radius``
    (default 1e10), ``eta`` (acceptance ratio, default 0.1). Default ``max_iter``
    1000. One Hessian (``n`` backward passes) per accepted step.
    """
    method = "trust-exact"
    start = start_point(obj, z0, method)
    if isinstance(start, RawSolution):
        return start
    z, f_t, g, f, gmax = start
    maxit = max_iter(opts, 1000)
    delta = float(extra(opts, "initial_trust_radius", 1.0))
    delta_max = float(extra(opts, "max_trust_radius", 1e10))
    eta = float(extra(opts, "eta", 0.1))
    gtol, ftol, xtol = float(opts.gtol), float(opts.ftol), float(opts.xtol)
    noise = 16 * torch.finfo(obj.dtype).eps

    H = obj.hessian(z)
    nit = 0
    hit_nonfinite = False
    fresh = True  # f, g and H belong to z and have not been tested yet
    while True:
        if fresh and gmax <= gtol * max(1.0, abs(f)):
            return finish(z, f, True, f"gradient below gtol={gtol:g} (relative to max(1, |f|))",
                          nit, method)
        if nit >= maxit:
            return finish(z, f, False, f"maximum number of iterations ({maxit}) reached", nit,
                          method)
        nit += 1
        if not bool(torch.isfinite(H).all()):
            return finish(z, f, False, "non-finite Hessian", nit, method)
        lam_t, Q = torch.linalg.eigh(H)
        gq_t = Q.T @ g
        host = torch.cat([lam_t, gq_t, z.abs().max()[None]]).cpu().numpy().astype(np.float64)
        lam, gq, zmax = host[: obj.n], host[obj.n: 2 * obj.n], float(host[-1])
        pq, on_boundary = _tr_subproblem(lam, gq, delta)
        pred = -(float(gq @ pq) + 0.5 * float(np.sum(lam * pq * pq)))
        pnorm = float(np.linalg.norm(pq))
        p = Q @ torch.as_tensor(pq, dtype=obj.dtype, device=obj.device)
        z_new = z + p
        f_new = float(obj.value(z_new))
        act = f - f_new if math.isfinite(f_new) else -math.inf
        # a radius shrunk by non-finite trials marks a wall of NaN, not a minimum
        hit_nonfinite = hit_nonfinite or not math.isfinite(f_new)
        rho = act / pred if pred > 0 else -math.inf
        if 0 <= pred <= noise * max(1.0, abs(f)) and act >= -noise * max(1.0, abs(f)):
            # f cannot tell this step from no step: trust the model, so that Newton's
            # quadratic convergence of the gradient is not stopped by rounding in f.
            rho = 1.0
        if rho < 0.25:
            delta = 0.25 * pnorm
        elif rho > 0.75 and on_boundary:
            delta = min(2.0 * delta, delta_max)
        fresh = False
        if rho > eta:
            hit_nonfinite = False
            f_old = f
            z = z_new
            f_t, g = obj.value_and_grad(z)
            f, gmax = torch.stack([f_t, g.abs().max()]).tolist()
            if not math.isfinite(gmax):
                return finish(z, f, False, "gradient became non-finite", nit, method)
            H = obj.hessian(z)
            fresh = True
            if gmax <= gtol * max(1.0, abs(f)):
                continue
            if f_old - f <= ftol * max(1.0, abs(f_old), abs(f)):
                return finish(z, f, True, f"relative reduction of f below ftol={ftol:g}", nit,
                              method)
            if call_back(opts, nit, z, f):
                return finish(z, f, False, "stopped by the callback", nit, method)
        if pnorm <= xtol * (zmax + xtol) or delta <= xtol * (zmax + xtol):
            ok = rho > eta or stalled_at_resolution(gmax, pred, f, obj.dtype)
            if hit_nonfinite:
                return finish(z, f, False, _NAN_WALL, nit, method)
            return finish(z, f, ok, f"trust radius below xtol={xtol:g} relative to max|z|",
                          nit, method)


def _to_boundary(p, d, pd, dd, pp, delta):
    """``p + tau d`` with ``tau > 0`` on ``|p + tau d| = delta``."""
    disc = max(pd * pd - dd * (pp - delta * delta), 0.0)
    return p + ((-pd + math.sqrt(disc)) / dd) * d


def _steihaug(obj: Objective, z, g, gnorm, delta, max_cg):
    """Steihaug–Toint truncated CG for ``min gᵀp + ½pᵀHp, |p| <= delta``.

    Returns ``(p, on_boundary)``. One host sync per CG iteration.
    """
    tol = min(0.5, math.sqrt(gnorm)) * gnorm
    p = torch.zeros_like(g)
    r = g.clone()
    d = -r
    rr = gnorm**2
    for _ in range(max_cg):
        Hd = obj.hvp(z, d)
        dHd, pd, dd, pp = torch.stack([d @ Hd, p @ d, d @ d, p @ p]).tolist()

        if not (dHd > 0 and math.isfinite(dHd)):
            return _to_boundary(p, d, pd, dd, pp, delta), True
        alpha = rr / dHd
        p_next = p + alpha * d
        if pp + 2 * alpha * pd + alpha * alpha * dd >= delta * delta:
            return _to_boundary(p, d, pd, dd, pp, delta), True
        r = r + alpha * Hd
        rr_next = float(r @ r)
        p = p_next
        if math.sqrt(rr_next) <= tol:
            return p, False
        d = -r + (rr_next / rr) * d
        rr = rr_next
    return p, False


def trust_krylov(obj: Objective, z0, opts: SolverOptions) -> RawSolution:
    """Trust-region Newton with a Krylov (Steihaug–Toint CG) subproblem solver.

    Uses exact Hessian-vector products only, so it scales like ``newton-cg`` but
    handles negative curvature and NaN regions through the trust region.
    ``opts.extra``: ``initial_trust_radius`` (default 1), ``max_trust_radius``
    (1e10), ``eta`` (0.1), ``max_cg`` (``2 n``, at least 10). Default
    ``max_iter`` 1000.
    """
    method = "trust-krylov"
    start = start_point(obj, z0, method)
    if isinstance(start, RawSolution):
        return start
    z, f_t, g, f, gmax = start
    maxit = max_iter(opts, 1000)
    delta = float(extra(opts, "initial_trust_radius", 1.0))
    delta_max = float(extra(opts, "max_trust_radius", 1e10))
    eta = float(extra(opts, "eta", 0.1))
    max_cg = int(extra(opts, "max_cg", max(10, 2 * obj.n)))
    gtol, ftol, xtol = float(opts.gtol), float(opts.ftol), float(opts.xtol)
    noise = 16 * torch.finfo(obj.dtype).eps
    nit = 0
    hit_nonfinite = False
    while True:
        if gmax <= gtol * max(1.0, abs(f)):
            return finish(z, f, True, f"gradient below gtol={gtol:g} (relative to max(1, |f|))",
                          nit, method)
        if nit >= maxit:
            return finish(z, f, False, f"maximum number of iterations ({maxit}) reached", nit,
                          method)
        nit += 1
        gnorm = float(torch.linalg.vector_norm(g))
        p, on_boundary = _steihaug(obj, z, g, gnorm, delta, max_cg)
        Hp = obj.hvp(z, p)
        pred_t = -(g @ p + 0.5 * (p @ Hp))
        f_new_t = obj.value(z + p)
        pred, f_new, pnorm, zmax = torch.stack([
            pred_t, f_new_t, torch.linalg.vector_norm(p), z.abs().max()]).tolist()
        act = f - f_new if math.isfinite(f_new) else -math.inf
        # a radius shrunk by non-finite trials marks a wall of NaN, not a minimum
        hit_nonfinite = hit_nonfinite or not math.isfinite(f_new)
        rho = act / pred if pred > 0 else -math.inf
        if 0 <= pred <= noise * max(1.0, abs(f)) and act >= -noise * max(1.0, abs(f)):
            # f cannot tell this step from no step: trust the model, so that Newton's
            # quadratic convergence of the gradient is not stopped by rounding in f.
            rho = 1.0
        if rho < 0.25:
            delta = 0.25 * (pnorm if pnorm > 0 else delta)
        elif rho > 0.75 and on_boundary:
            delta = min(2.0 * delta, delta_max)
        if rho > eta:
            hit_nonfinite = False
            f_old = f
            z = z + p
            f_t, g = obj.value_and_grad(z)
            f, gmax = torch.stack([f_t, g.abs().max()]).tolist()
            if not math.isfinite(gmax):
                return finish(z, f, False, "gradient became non-finite", nit, method)
            if gmax <= gtol * max(1.0, abs(f)):
                continue
            if f_old - f <= ftol * max(1.0, abs(f_old), abs(f)):
                return finish(z, f, True, f"relative reduction of f below ftol={ftol:g}", nit,
                              method)
            if call_back(opts, nit, z, f):
                return finish(z, f, False, "stopped by the callback", nit, method)
        if delta <= xtol * (zmax + xtol):
            ok = stalled_at_resolution(gmax, pred, f, obj.dtype)
            if hit_nonfinite:
                return finish(z, f, False, _NAN_WALL, nit, method)
            return finish(z, f, ok, f"trust radius below xtol={xtol:g} relative to max|z|",
                          nit, method)
