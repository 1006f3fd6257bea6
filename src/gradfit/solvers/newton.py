"""Second-order methods with exact autodiff curvature, torch-native.

* ``newton_cg``: truncated Newton; conjugate gradients on exact Hessian-vector
  products, stopped at negative curvature, then an Armijo backtracking search.
  Never forms the Hessian, so it scales to many parameters.
* ``trust_krylov``: trust region with the subproblem solved by Lanczos in a Krylov
  subspace (GLTR) on exact Hessian-vector products; handles negative curvature,
  never forms H.
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
    stop_claim,
)
from .base import RawSolution, SolverOptions
from .linesearch import armijo_backtracking, strong_wolfe

__all__ = ["newton_cg", "trust_exact", "trust_krylov"]

_NAN_WALL = ("trust region collapsed against a region where f is not finite (NaN or inf "
             "just beyond): not a minimum")


def _steihaug_free_cg(obj: Objective, z, g, gnorm, max_cg):
    """Approximately solve ``H p = -g`` by CG; stop at negative curvature.

    Returns the direction, the number of Hessian-vector products and whether CG
    met negative (or zero) curvature at once, so that the direction is -g with no
    natural length. Forcing
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
            return (-g, k + 1, True) if k == 0 else (p, k + 1, False)
        p, r = p_next, r_next
        if math.sqrt(rn) <= tol:
            return p, k + 1, False
        d = -r + (rr_next / rr) * d
        rr = rr_next
    return p, max_cg, False


def newton_cg(obj: Objective, z0, opts: SolverOptions) -> RawSolution:
    """Truncated Newton (Newton–CG) with exact Hessian-vector products.

    ``opts.extra["max_cg"]``: CG iterations per step (default ``2 n``, at least 10).
    Default ``max_iter`` 1000.
    """
    method = "newton-cg"
    start = start_point(obj, z0, method)
    if isinstance(start, RawSolution):
        return start
    z, f_t, g, f, gmax, origin = start
    maxit = max_iter(opts, 1000)
    max_cg = int(extra(opts, "max_cg", max(10, 2 * obj.n)))
    gtol, ftol, xtol = float(opts.gtol), float(opts.ftol), float(opts.xtol)

    nit = 0
    while True:
        if gmax <= gtol * origin.scale(f):
            return finish(z, f, True, f"gradient below gtol={gtol:g} (relative to max(1, |f|))",
                          nit, method)
        if nit >= maxit:
            return finish(z, f, False, f"maximum number of iterations ({maxit}) reached", nit,
                          method)
        nit += 1
        gnorm = float(torch.linalg.vector_norm(g))
        p, _, negative = _steihaug_free_cg(obj, z, g, gnorm, max_cg)
        gtd = float(g @ p)
        if not (gtd < 0 and math.isfinite(gtd)):
            p, gtd, negative = -g, -gnorm**2, True
        if negative:
            # No natural step length along a direction of negative or zero curvature:
            # a Wolfe search that can also lengthen the step (and so follow f to -inf).
            t0 = min(1.0, 1.0 / gmax) if gtd == -gnorm**2 else 1.0
            ls = strong_wolfe(obj, z, p, t0, f, g, gtd)
        else:
            ls = armijo_backtracking(obj, z, p, 1.0, f, gtd)
        if ls.t == 0.0:
            why = origin.diverged(f, float(z.abs().max()))
            if why is not None:
                return finish(z, f, False, why, nit - 1, method)
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
        why = origin.diverged(f, zmax)
        if why is not None:
            return finish(z, f, False, why, nit, method)
        if gmax <= gtol * origin.scale(f):
            continue
        stop = None
        if f_old - f <= ftol * max(1.0, abs(f_old), abs(f)):
            stop = f"relative reduction of f below ftol={ftol:g}"
        elif smax <= xtol * (zmax + xtol):
            stop = f"relative step below xtol={xtol:g}"
        if stop is not None:
            # Only the gradient decides: a truncated-CG model can promise almost nothing
            # far from a minimum (it did at f = 2294 on MGH's Meyer, with max|grad| 401).
            return stop_claim(z, f, gmax, -1.0, stop, nit, method, obj.dtype)
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


def _newton_decrease(H, g) -> float:
    """``½ gᵀH⁻¹g`` where H is positive definite, else -1 (no Newton model minimum)."""
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        return -1.0
    return 0.5 * float(g @ torch.cholesky_solve(g[:, None], L)[:, 0])


def trust_exact(obj: Objective, z0, opts: SolverOptions) -> RawSolution:
    """Trust-region Newton on the exact Hessian; the subproblem solved by eigh.

    ``opts.extra``: ``initial_trust_radius`` (default 0.1: from 1, the MGH set's Biggs
    EXP6 crawls along a valley to infinity; from 3, Osborne 1 does), ``max_trust_radius``
    (default 1e10), ``eta`` (acceptance ratio, default 0.1). Default ``max_iter``
    1000. One Hessian (``n`` backward passes) per accepted step.
    """
    method = "trust-exact"
    start = start_point(obj, z0, method)
    if isinstance(start, RawSolution):
        return start
    z, f_t, g, f, gmax, origin = start
    maxit = max_iter(opts, 1000)
    delta = float(extra(opts, "initial_trust_radius", 0.1))
    delta_max = float(extra(opts, "max_trust_radius", 1e10))
    eta = float(extra(opts, "eta", 0.1))
    gtol, ftol, xtol = float(opts.gtol), float(opts.ftol), float(opts.xtol)
    noise = 16 * torch.finfo(obj.dtype).eps

    H = obj.hessian(z)
    nit = 0
    hit_nonfinite = False
    fresh = True  # f, g and H belong to z and have not been tested yet
    while True:
        if fresh and gmax <= gtol * origin.scale(f):
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
            f, gmax, zmax = torch.stack([f_t, g.abs().max(), z.abs().max()]).tolist()
            if not math.isfinite(gmax):
                return finish(z, f, False, "gradient became non-finite", nit, method)
            why = origin.diverged(f, zmax)
            if why is not None:
                return finish(z, f, False, why, nit, method)
            H = obj.hessian(z)
            fresh = True
            if gmax <= gtol * origin.scale(f):
                continue
            if f_old - f <= ftol * max(1.0, abs(f_old), abs(f)):
                return stop_claim(z, f, gmax, _newton_decrease(H, g), f"relative reduction of f "
                                  f"below ftol={ftol:g}", nit, method, obj.dtype)
            if call_back(opts, nit, z, f):
                return finish(z, f, False, "stopped by the callback", nit, method)
        if pnorm <= xtol * (zmax + xtol) or delta <= xtol * (zmax + xtol):
            if hit_nonfinite:
                return finish(z, f, False, _NAN_WALL, nit, method)
            dec = _newton_decrease(H, g) if fresh else pred
            return stop_claim(z, f, gmax, dec, f"trust radius below xtol={xtol:g} relative to "
                              "max|z|", nit, method, obj.dtype)


def _lanczos_tr(obj: Objective, z, g, gnorm, delta, max_k, eta_max=0.5):
    """The trust-region subproblem solved in a Krylov subspace (GLTR, Gould et al. 1999).

    Lanczos on exact Hessian-vector products builds ``H ≈ Q T Qᵀ`` from ``g``; the
    small tridiagonal problem ``min |g| e1ᵀy + ½ yᵀTy, |y| <= delta`` is solved exactly
    (:func:`_tr_subproblem`, hard case included) after every Lanczos step, until the
    residual ``|β_{k+1} y_k|`` meets the forcing term ``min(eta_max, sqrt|g|) |g|``.
    Unlike Steihaug–Toint CG (used here before) it does not stop at the first boundary
    crossing, which on badly scaled problems (MGH's Meyer) left it crawling. Returns
    ``(p, on_boundary)``; one host sync per Lanczos step, vectors kept for a full
    reorthogonalisation.
    """
    tol = min(eta_max, math.sqrt(gnorm)) * gnorm
    q = g / gnorm
    Q = []
    alphas, betas = [], []
    beta = 0.0
    q_prev = torch.zeros_like(g)
    y, on_boundary = np.zeros(1), False
    for _ in range(max_k):
        Hq = obj.hvp(z, q)
        alpha_t = q @ Hq
        w = Hq - alpha_t * q - beta * q_prev
        Q.append(q)
        Qm = torch.stack(Q)
        w = w - Qm.T @ (Qm @ w)
        w = w - Qm.T @ (Qm @ w)
        alpha, beta_next = torch.stack([alpha_t, torch.linalg.vector_norm(w)]).tolist()
        if not (math.isfinite(alpha) and math.isfinite(beta_next)):
            break
        alphas.append(alpha)
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        lam, V = np.linalg.eigh(T)
        gq = V[0] * gnorm  # Vᵀ (|g| e1)
        yq, on_boundary = _tr_subproblem(lam, gq, delta)
        y = V @ yq
        if beta_next * abs(y[-1]) <= tol or beta_next <= 1e-14 * max(1.0, abs(alpha)):
            break
        betas.append(beta_next)
        q_prev, q, beta = q, w / beta_next, beta_next
    Qm = torch.stack(Q[: y.size])
    p = Qm.T @ torch.as_tensor(y, dtype=g.dtype, device=g.device)
    return p, on_boundary


def trust_krylov(obj: Objective, z0, opts: SolverOptions) -> RawSolution:
    """Trust-region Newton with a Krylov (Lanczos) subproblem solver.

    Uses exact Hessian-vector products only, so it scales like ``newton-cg`` but
    handles negative curvature and NaN regions through the trust region. The
    subproblem is solved by Lanczos in the Krylov subspace (:func:`_lanczos_tr`).
    ``opts.extra``: ``initial_trust_radius`` (default 0.1, as trust-exact),
    ``max_trust_radius`` (1e10), ``eta`` (0.1), ``max_cg`` (Lanczos steps, ``2 n``, at
    least 10, and at most ``max_lanczos``, default 200), ``forcing`` (relative residual
    of the subproblem, default 1e-8 up to n = 200, else ``min(0.5, sqrt|g|)``). Default
    ``max_iter`` 1000.
    """
    method = "trust-krylov"
    start = start_point(obj, z0, method)
    if isinstance(start, RawSolution):
        return start
    z, f_t, g, f, gmax, origin = start
    maxit = max_iter(opts, 1000)
    delta = float(extra(opts, "initial_trust_radius", 0.1))
    delta_max = float(extra(opts, "max_trust_radius", 1e10))
    eta = float(extra(opts, "eta", 0.1))
    max_cg = int(extra(opts, "max_cg", max(10, 2 * obj.n)))
    max_k = min(max_cg, obj.n, int(extra(opts, "max_lanczos", 200)))
    # Up to 200 parameters the subproblem is solved to 1e-8 (at most n Hessian-vector
    # products, the cost of one trust-exact Hessian): with the inexact forcing
    # min(0.5, sqrt|g|) it crawled on MGH's Meyer for 1000 iterations, or stopped at
    # F = 118 (F* = 87.9). Above, the inexact Newton forcing keeps each step cheap.
    eta_max = float(extra(opts, "forcing", 1e-8 if obj.n <= 200 else 0.5))
    gtol, ftol, xtol = float(opts.gtol), float(opts.ftol), float(opts.xtol)
    noise = 16 * torch.finfo(obj.dtype).eps

    def newton_decrease():
        q, _, neg = _steihaug_free_cg(obj, z, g, float(torch.linalg.vector_norm(g)), max_cg)
        return -1.0 if neg else -0.5 * float(g @ q)

    nit = 0
    hit_nonfinite = False
    while True:
        if gmax <= gtol * origin.scale(f):
            return finish(z, f, True, f"gradient below gtol={gtol:g} (relative to max(1, |f|))",
                          nit, method)
        if nit >= maxit:
            return finish(z, f, False, f"maximum number of iterations ({maxit}) reached", nit,
                          method)
        nit += 1
        gnorm = float(torch.linalg.vector_norm(g))
        p, on_boundary = _lanczos_tr(obj, z, g, gnorm, delta, max_k, eta_max)
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
            f, gmax, zmax = torch.stack([f_t, g.abs().max(), z.abs().max()]).tolist()
            if not math.isfinite(gmax):
                return finish(z, f, False, "gradient became non-finite", nit, method)
            why = origin.diverged(f, zmax)
            if why is not None:
                return finish(z, f, False, why, nit, method)
            if gmax <= gtol * origin.scale(f):
                continue
            if f_old - f <= ftol * max(1.0, abs(f_old), abs(f)):
                return stop_claim(z, f, gmax, newton_decrease(), f"relative reduction of f "
                                  f"below ftol={ftol:g}", nit, method, obj.dtype)
            if call_back(opts, nit, z, f):
                return finish(z, f, False, "stopped by the callback", nit, method)
        if delta <= xtol * (zmax + xtol):
            if hit_nonfinite:
                return finish(z, f, False, _NAN_WALL, nit, method)
            return stop_claim(z, f, gmax, pred, f"trust radius below xtol={xtol:g} relative to "
                              "max|z|", nit, method, obj.dtype)
