"""Levenberg–Marquardt for many parameters or data that are not in one array.

Both solvers take Marquardt steps ``(JᵀJ + λ D) δ = −Jᵀr`` with ``D`` the running
maximum of ``diag(JᵀJ)`` (scale invariance, as MINPACK) and Nielsen's (1999)
update of λ from the ratio of actual to predicted reduction. They differ in how
the linear system is solved:

* ``lm_cg`` (``'lm-cg'``): matrix-free. Preconditioned conjugate gradients on
  products ``JᵀJ v`` from :meth:`Objective.linearize` (no ``J``, no ``JᵀJ``: memory
  O(m + n)), with the Jacobi preconditioner ``diag(JᵀJ + λD)`` from exact column
  norms where ``n`` is small and Rademacher probes otherwise. The CG tolerance
  follows an Eisenstat–Walker forcing term, so steps are Newton-accurate near the
  solution. For 10³–10⁶ parameters.
* ``lm_normal`` (``'lm-normal'``): the dense ``n × n`` system from
  :meth:`Objective.normal_equations`, factored by Cholesky. For few parameters and
  data accumulated chunk by chunk or over processes (``JᵀJ`` and ``Jᵀr`` are sums
  over the data). It squares the condition number of ``J``; the SVD-based ``'lm'``
  is the better choice for in-memory data.

The predicted reduction uses ``JᵀJ δ`` as tracked by CG, so no extra product is needed.
"""

from __future__ import annotations

import math

import torch

from ..objective import Objective
from ._common import as_start, call_back, extra, finish, max_iter, nonfinite_start
from .base import RawSolution, SolverOptions

__all__ = ["lm_cg", "lm_normal", "pcg"]


def pcg(matvec, b: torch.Tensor, precond: torch.Tensor, rtol: float, max_iter: int):
    """Solve ``A x = b`` (A symmetric positive definite) by Jacobi-preconditioned CG.

    Parameters
    ----------
    matvec : callable ``v -> A v``
    b : Tensor
    precond : Tensor
        ``diag(A)`` or an estimate of it (positive).
    rtol : float
        Stop when ``|b − A x| <= rtol |b|``.
    max_iter : int

    Returns
    -------
    x, Ax, iterations, converged, positive : Tensor, Tensor, int, bool, bool
        ``positive`` is False when a direction of non-positive curvature was met
        (then ``x`` is the last iterate before it).
    """
    x = torch.zeros_like(b)
    Ax = torch.zeros_like(b)
    r = b.clone()
    zr = r / precond
    p = zr.clone()
    rz = r @ zr
    bnorm = float(torch.linalg.vector_norm(b))
    if bnorm == 0.0:
        return x, Ax, 0, True, True
    tol = rtol * bnorm
    for k in range(1, max_iter + 1):
        Ap = matvec(p)
        pAp_t = p @ Ap
        alpha = rz / pAp_t
        x_new = x + alpha * p
        Ax_new = Ax + alpha * Ap
        r_new = r - alpha * Ap
        pAp, rn = torch.stack([pAp_t, torch.linalg.vector_norm(r_new)]).tolist()
        if not (pAp > 0 and math.isfinite(pAp)):
            return x, Ax, k, False, False
        x, Ax, r = x_new, Ax_new, r_new
        if rn <= tol:
            return x, Ax, k, True, True
        zr = r / precond
        rz_new = r @ zr
        p = zr + (rz_new / rz) * p
        rz = rz_new
    return x, Ax, max_iter, False, True


def _gcos(g, dg, cost) -> float:
    """MINPACK's scale-free gradient test max_j |J_jᵀ r| / (|J_j| |r|)."""
    colnorm = torch.sqrt(torch.clamp(dg, min=0.0))
    rnorm = math.sqrt(2.0 * cost) if cost > 0 else 1.0
    return float(torch.where(colnorm > 0, g.abs() / (colnorm * rnorm),
                             torch.zeros_like(g)).max())


def _stalled(z, cost, gcos, eps, nit, method, message) -> RawSolution:
    """Finish where the cost no longer resolves progress: converged only if the gradient
    test agrees loosely (``eps**0.25``: 1e-4 in float64, 0.02 in float32)."""
    if gcos <= eps**0.25:
        return finish(z, cost, True, message, nit, method)
    return finish(z, cost, False,
                  "no step lowers the cost beyond rounding, but the gradient test fails "
                  f"(max |cos(r, J_j)| = {gcos:.2g}): stuck at a degenerate point or a "
                  "parameter running off to infinity", nit, method)


def _marquardt(obj: Objective, z0, opts: SolverOptions, method: str, system) -> RawSolution:
    """The Levenberg–Marquardt loop shared by both solvers.

    ``system(z)`` returns ``(cost, g, diag, solve)`` with ``solve(lam, D, eta)`` giving
    ``(δ, JᵀJ δ)`` for ``(JᵀJ + lam·diag(D)) δ = −g``, or None if the system failed.
    """
    if not obj.has_residuals:
        raise ValueError(
            f"method {method!r} needs an objective with residuals (a least-squares form); "
            "use 'lbfgs' for a general objective")
    maxit = max_iter(opts, 1000)
    ftol, xtol, gtol = float(opts.ftol), float(opts.xtol), float(opts.gtol)
    eps = float(torch.finfo(obj.dtype).eps)
    lam = float(extra(opts, "lambda0", 1e-3))
    max_trials = int(extra(opts, "max_trials", 60))

    z = as_start(obj, z0)
    cost_t, g, dg, solve = system(z)
    cost = float(cost_t)
    if not math.isfinite(cost):
        return nonfinite_start(z, cost, method)
    if obj.n == 0 or cost == 0.0:
        return finish(z, cost, True, "zero cost or no free parameters", 0, method)
    D = torch.where(dg > 0, dg, torch.ones_like(dg))
    nu = 2.0
    nit = 0
    stalled = None  # gcos when the cost reduction fell below ftol (then polish)
    while True:
        gcos = _gcos(g, dg, cost)
        xnorm, gfinite = torch.stack([torch.linalg.vector_norm(torch.sqrt(D) * z),
                                      torch.isfinite(g).all().to(g.dtype)]).tolist()
        if not gfinite:
            return finish(z, cost, False, "non-finite gradient Jᵀr", nit, method)
        if gcos <= gtol:
            return finish(z, cost, True,
                          f"gradient test passed (max |cos(r, J_j)| <= gtol={gtol:g})",
                          nit, method)
        if stalled is not None and not gcos < 0.5 * stalled:
            # The cost stopped resolving progress and the gradient stopped halving.
            return _stalled(z, cost, gcos, eps, nit, method,
                            f"relative reduction of the cost below ftol={ftol:g}")
        if nit >= maxit:
            return finish(z, cost, False, f"maximum number of iterations ({maxit}) reached",
                          nit, method)
        nit += 1
        # Eisenstat–Walker forcing: loose solves far away, Newton-accurate ones near the end.
        eta = min(0.1, max(math.sqrt(gcos), 1e-12))
        for _ in range(max_trials):
            out = solve(lam, D, eta)
            if out is None:
                lam, nu = lam * nu, 2.0 * nu
                continue
            step, jtj_step = out
            pred_t = -(g @ step) - 0.5 * (step @ jtj_step)
            z_new = z + step
            new_t = obj.residual_cost(z_new)
            pred, new, snorm = torch.stack([
                pred_t, new_t, torch.linalg.vector_norm(torch.sqrt(D) * step)]).tolist()
            actred = cost - new if math.isfinite(new) else -math.inf
            rho = actred / pred if pred > 0 else -1.0
            small = (abs(actred) <= ftol * cost and 0 <= pred <= ftol * cost) or (
                abs(actred) <= eps * cost and 0 <= pred <= 1e4 * eps * cost)
            sys_new = None
            if not rho > 1e-4 and small and new <= cost * (1.0 + math.sqrt(eps)):
                # Predicted and actual reductions are lost in rounding, so rho is noise;
                # the gradient is still resolved: keep the step if it halves max|cos|.
                sys_new = system(z_new)
                if _gcos(sys_new[1], sys_new[2], float(sys_new[0])) < 0.5 * gcos:
                    rho = 0.5
                else:
                    sys_new = None
            if rho > 1e-4:
                z, cost = z_new, new
                lam *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
                nu = 2.0
                cost_t, g, dg, solve = system(z) if sys_new is None else sys_new
                cost = float(cost_t)
                D = torch.maximum(D, dg)
                # Below ftol the cost drowns in rounding while Jᵀr is still resolved:
                # keep stepping while the gradient halves (checked at the loop's top).
                stalled = gcos if small else None
                if snorm <= xtol * (xnorm + xtol):
                    return finish(z, cost, True, f"relative step below xtol={xtol:g}", nit,
                                  method)
                if cost == 0.0:
                    return finish(z, cost, True, "zero cost reached", nit, method)
                if call_back(opts, nit, z, cost):
                    return finish(z, cost, False, "stopped by the callback", nit, method)
                break
            if small or snorm <= eps * (xnorm + eps):
                # The model promises no decrease that f can resolve.
                return _stalled(z, cost, gcos, eps, nit, method,
                                "cost reduction at machine precision")
            lam, nu = lam * nu, 2.0 * nu
        else:
            return finish(z, cost, False,
                          f"no step lowered the cost in {max_trials} trials (λ = {lam:.3g})",
                          nit, method)


def lm_cg(obj: Objective, z0, opts: SolverOptions) -> RawSolution:
    """Matrix-free Levenberg–Marquardt: Marquardt steps by preconditioned CG.

    Parameters
    ----------
    obj : Objective
        With a residual form; only ``obj.linearize`` and ``obj.residual_cost`` are used.
    z0 : Tensor
    opts : SolverOptions
        ``max_iter``: linearisations (default 1000); ``gtol``: max |cos(r, J_j)| with
        ``|J_j|`` from the (estimated) diagonal; ``ftol``, ``xtol`` as for ``'lm'``.
        ``extra``: ``max_cg`` (CG iterations per solve, default ``min(max(2n, 20), 2000)``),
        ``probes`` (Rademacher probes for ``diag(JᵀJ)``, default 16; exact columns when
        ``n <= probes``), ``lambda0`` (initial damping, default 1e-3), ``seed``.

    Returns
    -------
    RawSolution
    """
    max_cg = int(extra(opts, "max_cg", min(max(2 * obj.n, 20), 2000)))
    probes = int(extra(opts, "probes", 16))
    seed = int(extra(opts, "seed", 0))
    if max_cg < 1 or probes < 1:
        raise ValueError(f"lm-cg options max_cg and probes must be >= 1, got {max_cg}, {probes}")
    count = [0]

    def system(z):
        lin = obj.linearize(z)
        count[0] += 1
        dg = lin.diag(probes, seed + count[0])

        def solve(lam, D, eta):
            def mv(v):
                return lin.matvec(v) + lam * D * v

            x, Ax, _, _, _ = pcg(mv, -lin.grad, dg + lam * D, eta, max_cg)
            return x, Ax - lam * D * x

        return lin.cost, lin.grad, dg, solve

    return _marquardt(obj, z0, opts, "lm-cg", system)


def lm_normal(obj: Objective, z0, opts: SolverOptions) -> RawSolution:
    """Levenberg–Marquardt on the dense normal equations ``JᵀJ``, ``Jᵀr``.

    For few parameters when the data are summed chunk by chunk or over processes
    (:meth:`Objective.normal_equations`). Options as for ``'lm-cg'`` (``lambda0``).
    """
    def system(z):
        cost, H, g = obj.normal_equations(z)
        dg = torch.diagonal(H).clone()

        def solve(lam, D, eta):
            s = torch.sqrt(D)
            A = H / torch.outer(s, s) + lam * torch.eye(H.shape[0], dtype=H.dtype,
                                                        device=H.device)
            L, info = torch.linalg.cholesky_ex(A)
            if int(info) != 0:
                return None
            x = torch.cholesky_solve((-g / s)[:, None], L)[:, 0] / s
            return x, H @ x

        return cost, g, dg, solve

    return _marquardt(obj, z0, opts, "lm-normal", system)
