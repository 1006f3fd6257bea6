"""SciPy minimisers through the objective's NumPy bridge.

``scipy.optimize.minimize`` gets f and ∇f from one autodiff pass
(``obj.scipy_fun_and_grad`` with ``jac=True``), Hessian-vector products from
``obj.scipy_hvp`` and Hessians from ``obj.scipy_hess``; ``scipy-lm`` runs
MINPACK (``least_squares(method='lm')``) on the autodiff Jacobian. Every call
crosses to the host, so these suit small problems and cross-checks; the
torch-native methods keep the state on the device.

Warnings that SciPy raises on the way (line-search failures, overflow while it
probes a region where f is infinite) are recorded and named in the message
rather than printed.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..objective import Objective
from ._common import Origin, as_start, finish, max_iter, nonfinite_start, stalled_at_resolution
from .base import RawSolution, SolverOptions

__all__ = ["SCIPY_METHODS", "scipy_lm"]

_EPS = float(np.finfo(np.float64).eps)



def _so():
    # imported on first use: scipy.optimize costs ~0.9 s at start-up
    import scipy.optimize

    return scipy.optimize

def _start(obj: Objective, z0):
    z = as_start(obj, z0)
    return z, z.detach().cpu().numpy().astype(np.float64), float(obj.value(z))


def _run(call):
    """Run a SciPy call, collecting its warnings into a short note."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = call()
    kinds = sorted({w.category.__name__ for w in caught})
    return out, (f" [SciPy warned: {', '.join(kinds)}]" if kinds else "")


def _verdict(obj, res, f):
    """SciPy's success, except that "precision loss" at a tiny gradient counts as converged.

    BFGS-type methods report a line-search failure (status 2) when f can no longer
    be reduced in floating point, which is how a tight ``gtol`` usually ends.
    """
    if res.success:
        return True
    jac = getattr(res, "jac", None)
    if getattr(res, "status", None) == 2 and jac is not None and math.isfinite(f):
        return stalled_at_resolution(float(np.max(np.abs(jac))), -1.0, f, torch.float64)
    return False


def _minimize(scipy_method, name, default_iter, options, use_grad=True, hessp=False,
              hess=False, restarts=2):
    def solver(obj: Objective, z0, opts: SolverOptions) -> RawSolution:
        z, zn, f0 = _start(obj, z0)
        if not math.isfinite(f0):
            return nonfinite_start(z, f0, name)
        o = {k: v(opts) for k, v in options.items()}
        o["maxiter"] = max_iter(opts, default_iter(obj.n) if callable(default_iter)
                                else default_iter)
        if not use_grad:
            o["maxfev"] = 2 * o["maxiter"]
        kw = {}
        if use_grad:
            fun, kw["jac"] = obj.scipy_fun_and_grad, True
        else:
            def fun(x):
                v = float(obj.value(torch.from_numpy(np.array(x, dtype=np.float64))))
                # Nelder–Mead compares with <; NaN would poison the simplex ordering.
                return v if math.isfinite(v) else math.inf
        if hessp:
            kw["hessp"] = obj.scipy_hvp
        if hess:
            kw["hess"] = obj.scipy_hess
        if opts.callback is not None:
            it = [0]

            def cb(xk, *_):
                it[0] += 1
                xt = obj.as_tensor(xk)
                if opts.callback(it[0], xt, float(obj.value(xt))):
                    raise StopIteration

            kw["callback"] = cb
        x, nit, notes = zn, 0, ""
        for attempt in range(restarts + 1 if use_grad else 1):
            try:
                res, note = _run(lambda x=x: _so().minimize(fun, x, method=scipy_method,
                                                         options=o, **kw))
            except StopIteration:
                return finish(z, f0, False, "stopped by the callback", nit, name)
            x, notes = res.x, notes + note
            nit += int(getattr(res, "nit", 0) or 0)
            f = float(res.fun)
            ok = _verdict(obj, res, f)
            msg = str(res.message)
            why = Origin(f0, float(np.max(np.abs(zn)))).diverged(f, float(np.max(np.abs(x))))
            if why is not None:
                ok, msg = False, why
                break
            if not (ok and use_grad):
                break
            # Check a claimed success against the gradient: L-BFGS-B, for one, can
            # report "relative reduction of f" after its line search met an
            # infinite f, far from any minimum. Restart from there if so.
            gmax = float(np.max(np.abs(obj.scipy_fun_and_grad(res.x)[1])))
            if stalled_at_resolution(gmax, -1.0, f, torch.float64):
                break
            ok = False
            msg = (f"{msg}, but max|grad|={gmax:.3g} is not small"
                   + (f" after {attempt} restarts" if attempt else ""))
        return finish(obj.as_tensor(x), f, ok, msg + notes, nit, name)

    solver.__name__ = name.replace("-", "_")
    solver.__doc__ = (f"``scipy.optimize.minimize(method={scipy_method!r})`` through the "
                      "NumPy bridge.")
    return solver


def scipy_lm(obj: Objective, z0, opts: SolverOptions) -> RawSolution:
    """MINPACK Levenberg–Marquardt (``least_squares(method='lm')``), autodiff Jacobian.

    ``max_iter`` bounds residual evaluations as ``max_nfev = 100 * max_iter``
    (default ``max_iter`` 1000). Tolerances below machine epsilon are raised to it,
    which MINPACK requires.
    """
    name = "scipy-lm"
    if not obj.has_residuals:
        raise ValueError("method 'scipy-lm' needs an objective with residuals")
    z = as_start(obj, z0)
    r0 = obj.residuals(z)
    f0 = 0.5 * float(r0 @ r0)
    if not math.isfinite(f0):
        return nonfinite_start(z, f0, name)
    if r0.numel() < obj.n:
        raise ValueError(
            f"method 'scipy-lm' (MINPACK) needs at least as many residuals as parameters, "
            f"got {r0.numel()} residuals for {obj.n} parameters; use method 'lm'")
    zn = z.detach().cpu().numpy().astype(np.float64)
    cache = {}

    def resid(x):
        r = obj.residuals(torch.from_numpy(np.array(x, dtype=np.float64)))
        rn = r.detach().cpu().numpy().astype(np.float64)
        # MINPACK treats a huge residual as a failed step and shrinks its trust region;
        # NaN would propagate instead.
        return np.where(np.isfinite(rn), rn, 1e150)

    def jac(x):
        key = np.asarray(x, np.float64).tobytes()
        if key not in cache:
            cache.clear()
            _, J = obj.residuals_and_jacobian(torch.from_numpy(np.array(x, dtype=np.float64)))
            Jn = J.detach().cpu().numpy().astype(np.float64)
            cache[key] = np.where(np.isfinite(Jn), Jn, 0.0)
        return cache[key]

    tol = {k: max(float(getattr(opts, k)), _EPS) for k in ("ftol", "xtol", "gtol")}
    res, note = _run(lambda: _so().least_squares(resid, zn, jac=jac, method="lm",
                                              x_scale="jac",
                                              max_nfev=100 * max_iter(opts, 1000), **tol))
    zt = obj.as_tensor(res.x)
    r = obj.residuals(zt)
    f = 0.5 * float(r @ r)
    return finish(zt, f, bool(res.success), str(res.message) + note, int(res.nfev), name)


SCIPY_METHODS = {
    "scipy-bfgs": _minimize("BFGS", "scipy-bfgs", 2000, {"gtol": lambda o: o.gtol}),
    "scipy-lbfgs": _minimize("L-BFGS-B", "scipy-lbfgs", 5000, {
        "gtol": lambda o: o.gtol, "ftol": lambda o: max(o.ftol, _EPS),
        "maxcor": lambda o: int(o.extra.get("history", 20)),
        "maxfun": lambda o: 10 * (o.max_iter or 5000)}),
    "scipy-nelder-mead": _minimize("Nelder-Mead", "scipy-nelder-mead", lambda n: 2000 * max(n, 1), {
        "xatol": lambda o: max(o.xtol, 1e-12), "fatol": lambda o: max(o.ftol, 1e-14),
        "adaptive": lambda o: bool(o.extra.get("adaptive", False))}, use_grad=False),
    "scipy-newton-cg": _minimize("Newton-CG", "scipy-newton-cg", 1000, {
        "xtol": lambda o: max(o.xtol, 1e-12)}, hessp=True),
    # SciPy's trust-krylov stalls short of gradient norms near 1e-10 (it then runs to
    # its iteration limit), so it gets a floor of 1e-8
    "scipy-trust-krylov": _minimize("trust-krylov", "scipy-trust-krylov", 1000, {
        "gtol": lambda o: max(o.gtol, 1e-8)}, hessp=True),
    "scipy-trust-exact": _minimize("trust-exact", "scipy-trust-exact", 1000, {
        "gtol": lambda o: o.gtol}, hess=True),
    "scipy-lm": scipy_lm,
}
