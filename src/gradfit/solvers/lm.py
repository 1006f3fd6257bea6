"""Levenberg–Marquardt on residuals and their Jacobian, torch-native.

A Moré (1978) trust-region LM, the algorithm of MINPACK's ``lmder``: the step
solves ``min |J p + r|`` subject to ``|D p| <= Δ``, with ``D = diag(running max of
the column norms of J)`` and Δ updated from the ratio of actual to predicted
reduction. Each Jacobian is factored once by a thin SVD, ``J D⁻¹ = U S Vᵀ``; the
damping λ that puts the step on the trust-region boundary then comes from a
scalar secular equation in ``S`` and ``Uᵀr`` (n numbers), and every trial step
costs one matrix-vector product. ``S`` and ``V`` come from ``JᵀJ`` (whose condition
number is the square of J's) only where J is well conditioned (CPU,
``cond(J D⁻¹)`` <= 3e4 in float64); elsewhere, as on the hard NIST StRD problems,
from the SVD of ``J D⁻¹`` itself.

The m-sized arrays (r, J, U) stay on the objective's device. Per Jacobian the
host reads ``S``, ``Uᵀr`` and a few norms (one sync); per trial step it reads
the new cost (one sync).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch

from ..objective import Objective
from ._common import Origin, as_start, call_back, extra, finish, max_iter, nonfinite_start
from .base import RawSolution, SolverOptions

__all__ = ["levenberg_marquardt"]


class _TorchOps:
    """The loop's array operations on the objective's device (torch)."""

    host = False

    def __init__(self, obj: Objective):
        self.obj = obj

    def arr(self, t):  # objective's tensor -> loop array
        return t

    def tensor(self, a):  # loop array -> objective's tensor
        return a

    def from_host(self, w):
        return torch.as_tensor(w, dtype=self.obj.dtype, device=self.obj.device)

    @staticmethod
    def norm(a):
        return torch.linalg.vector_norm(a)

    @staticmethod
    def colnorm(J):
        return torch.linalg.vector_norm(J, dim=0)

    @staticmethod
    def allfinite(a) -> bool:
        return bool(torch.isfinite(a).all())

    where = staticmethod(torch.where)
    maximum = staticmethod(torch.maximum)
    ones_like = staticmethod(torch.ones_like)
    zeros_like = staticmethod(torch.zeros_like)

    def zeros(self, n):
        return torch.zeros(n, dtype=self.obj.dtype, device=self.obj.device)

    @staticmethod
    def svd(A):
        """Thin SVD; for tall A through a QR first, which is faster on CPU and GPU alike."""
        m, n = A.shape
        if m >= 2 * n:
            Q, R = torch.linalg.qr(A)
            Ur, s, Vh = torch.linalg.svd(R)
            return Q @ Ur, s, Vh
        return torch.linalg.svd(A, full_matrices=False)

    def factor(self, A):
        """``(s, Vh, ut)`` of ``A = U diag(s) Vh``, where ``ut(x)`` is ``Uᵀx``."""
        U, s, Vh = self.svd(A)
        return s, Vh, lambda x: U.T @ x

    @staticmethod
    def to_host(*parts) -> np.ndarray:
        """Small tensors (1-D or 0-d) as one float64 array, in one device sync."""
        return torch.cat([q.reshape(-1) for q in parts]).cpu().numpy().astype(np.float64)

    @staticmethod
    def cho_solve(H, b):
        """``H⁻¹ b`` by Cholesky, or None if H is not positive definite."""
        L, info = torch.linalg.cholesky_ex(H)
        if int(info) != 0:
            return None
        return torch.cholesky_solve(b[:, None], L)[:, 0]

    def residuals(self, z, then_jacobian=False):
        return self.obj.residuals(z, then_jacobian=then_jacobian)

    def residuals_and_jacobian(self, z):
        return self.obj.residuals_and_jacobian(z)

    def hessian(self, z):
        return self.obj.hessian(z)


class _NumpyOps(_TorchOps):
    """The same operations in NumPy, for CPU objectives.

    For a small fit (a few parameters, a few hundred residuals) each torch call costs
    5-30 µs of dispatch, so that the loop's dozens of small operations per
    iteration cost about as much as a Jacobian; NumPy's are several times cheaper.
    The arrays share memory with the objective's CPU tensors (no copies).
    """

    host = True

    def arr(self, t):
        return t.detach().numpy()

    def tensor(self, a):
        return torch.from_numpy(a)

    def from_host(self, w):
        return np.asarray(w, dtype=self.np_dtype)

    def __init__(self, obj: Objective):
        super().__init__(obj)
        self.np_dtype = torch.empty(0, dtype=obj.dtype).numpy().dtype

    @staticmethod
    def norm(a):
        return _norm(a)

    @staticmethod
    def colnorm(J):
        return np.sqrt(np.einsum("ij,ij->j", J, J))

    @staticmethod
    def allfinite(a) -> bool:
        return bool(np.isfinite(a).all())

    where = staticmethod(np.where)
    maximum = staticmethod(np.maximum)
    ones_like = staticmethod(np.ones_like)
    zeros_like = staticmethod(np.zeros_like)

    def zeros(self, n):
        return np.zeros(n, dtype=self.np_dtype)

    @staticmethod
    def svd(A):
        # LAPACK's gesdd factors a tall A by QR first by itself: one call (a third of the
        # cost of np.linalg.qr + svd for 225 x 7)
        try:
            return np.linalg.svd(A, full_matrices=False)
        except np.linalg.LinAlgError:  # gesdd did not converge: the QR route
            Q, R = np.linalg.qr(A)
            Ur, s, Vh = np.linalg.svd(R)
            return Q @ Ur, s, Vh

    def factor(self, A):
        """``(s, Vh, ut)`` of ``A = U diag(s) Vh``, where ``ut(x)`` is ``Uᵀx``.

        Where ``A`` is well conditioned, from the eigenvalues of ``AᵀA`` (one m x n x n
        product and an n x n eigensolver: 8x cheaper than the SVD for 3267 x 36, the
        SVD having been 40% of a realistic OOF fit); ``U`` is then never formed, and
        ``Uᵀx = diag(1/s) Vh Aᵀx``. Squaring the condition number costs
        ``eps cond²`` in relative accuracy of the smallest ``s``: the eigenvalues are
        used only where that is below :data:`GRAM_REL_ACCURACY`, else (the hard NIST
        StRD problems, rank deficiency) the SVD of ``A`` itself. ``Uᵀx`` then carries
        rounding of ``eps cond |x|`` rather than ``eps |x|``, which ends LM's iterations
        a little earlier (5e-10 relative on a 30 x 4 test problem, where the polish
        then costs two more Jacobians): only a large ``A`` (:data:`GRAM_MIN_WORK`),
        whose SVD costs more than that, takes this route.
        """
        m, n = A.shape
        if m * n * n >= GRAM_MIN_WORK and m >= 2 * n:
            G = A.T @ A
            try:
                lam, V = np.linalg.eigh(G)
            except np.linalg.LinAlgError:
                lam = None
            if lam is not None and np.isfinite(lam).all() and lam[-1] > 0 \
                    and lam[0] > lam[-1] * np.finfo(A.dtype).eps / GRAM_REL_ACCURACY:
                s = np.sqrt(lam[::-1])
                Vh = np.ascontiguousarray(V[:, ::-1].T)
                return s, Vh, lambda x: (Vh @ (A.T @ x)) / s
        return super().factor(A)

    @staticmethod
    def to_host(*parts) -> np.ndarray:
        if parts[0].dtype == np.float64:  # already host float64: no copies needed
            s, utr = parts[0], parts[1]
            return np.concatenate((s, utr, np.array([float(q) for q in parts[2:]])))
        return np.concatenate([np.reshape(q, -1) for q in parts]).astype(np.float64)

    @staticmethod
    def cho_solve(H, b):
        try:
            L = np.linalg.cholesky(H)
        except np.linalg.LinAlgError:
            return None
        return np.linalg.solve(L.T, np.linalg.solve(L, b))

    def residuals(self, z, then_jacobian=False):
        return self.obj.residuals(torch.from_numpy(z), then_jacobian=then_jacobian).numpy()

    def residuals_and_jacobian(self, z):
        r, J = self.obj.residuals_and_jacobian(torch.from_numpy(z))
        return r.numpy(), J.numpy()

    def hessian(self, z):
        return self.obj.hessian(torch.from_numpy(z)).numpy()


def _ops(obj: Objective) -> _TorchOps:
    """NumPy for a CPU objective, torch elsewhere (the m-sized arrays stay on the device)."""
    return _NumpyOps(obj) if obj.device.type == "cpu" else _TorchOps(obj)


#: the relative accuracy of the smallest singular value below which
#: :meth:`_NumpyOps.factor` may use the eigenvalues of ``JᵀJ`` (``eps cond²`` <= this;
#: in float64, ``cond(J D⁻¹)`` <= 3e4); the steps need only a few digits, and where it
#: is worse the SVD of ``J D⁻¹`` is used, as MINPACK's QR would be
GRAM_REL_ACCURACY = 1e-6
#: ... and only where ``m n²`` is at least this (the SVD then costs about 0.3 ms or more;
#: the NIST StRD problems and small curve fits keep the SVD)
GRAM_MIN_WORK = 1_000_000


def _norm(a) -> float:
    """Euclidean norm of a 1-D NumPy array as a float (what ``np.linalg.norm`` computes
    for one, ``sqrt(a·a)``, without its dispatch)."""
    return math.sqrt(float(a @ a))


def _trust_region_weights(s, utr, delta, rank_tol):
    """Weights ``w`` with ``D p = -V w`` for the trust-region step, and its damping λ.

    ``w = s * utr / (s**2 + λ)``, with λ = 0 (Gauss–Newton, pseudo-inverse on
    the numerically zero singular values) when that step fits in ``delta``, else
    λ > 0 such that ``|w| = delta`` to 10 % (MINPACK's acceptance band).
    """
    keep = s > rank_tol
    w_gn = np.where(keep, utr / np.where(keep, s, 1.0), 0.0)
    q_gn = _norm(w_gn)
    if q_gn <= 1.1 * delta:
        return w_gn, 0.0
    su = s * utr
    hi = _norm(su) / delta  # at this λ, |w| <= delta for sure
    lo = 0.0
    lam = hi
    for _ in range(100):
        den = s * s + lam
        w = su / den
        q = _norm(w)
        if abs(q - delta) <= 0.1 * delta or hi - lo <= 1e-14 * hi:
            return w, lam
        if q > delta:
            lo = lam
        else:
            hi = lam
        # Newton on 1/|w(λ)| = 1/Δ, nearly linear in λ (Moré & Sorensen); from the
        # right of the root it converges monotonically, elsewhere bisect.
        dq = -float(np.sum(w * w / den)) / q
        lam_n = lam - (q - delta) / delta * q / dq if dq < 0 else -1.0
        if not lo < lam_n < hi:
            lam_n = math.sqrt(lo * hi) if lo > 0 else 1e-3 * hi
        lam = lam_n
    return su / (s * s + lam), lam


def _geodesic_correction(xp, z, r, J, v, ut, s, Vh, d, w, lam, rank_tol, alpha, h=0.1):
    """``v + a/2`` with Transtrum & Sethna's (2012) geodesic acceleration ``a``.

    ``a`` solves the damped system of ``v`` with ``r`` replaced by the second
    directional derivative ``r''[v, v]`` (a finite difference along ``v``: one
    residual evaluation); it bends the step along curved valleys such as those
    of NIST's Bennett5 or MGH10. It is used only where ``2|D a| <= alpha |D v|``;
    elsewhere (including where the difference is lost in rounding) ``v`` is kept.
    No host sync.
    """
    r_h = xp.residuals(z + h * v)
    rvv = (2.0 / h) * ((r_h - r) / h - J @ v)
    coef = xp.where((s > rank_tol) | (lam > 0), s / (s * s + lam), xp.zeros_like(s))
    wa = coef * ut(rvv)
    a = -(Vh.T @ wa) / d
    ok = xp.allfinite(wa) and bool(2 * xp.norm(wa) <= alpha * xp.norm(w))
    return v + 0.5 * a if ok else v


def _gcos(xp, J, r, fnorm, colnorm=None):
    """MINPACK's gradient test: max |cos| between ``r`` and a column of ``J`` (the column
    norms where the caller has them already)."""
    colnorm = xp.colnorm(J) if colnorm is None else colnorm
    g = J.T @ r
    return xp.where(colnorm > 0, abs(g) / (colnorm * fnorm), xp.zeros_like(g)).max()


def _gn_step(xp, J, r, d, rank_tol):
    """Gauss–Newton step (pseudo-inverse on numerically zero singular values)."""
    s, Vh, ut = xp.factor(J / d)
    keep = s > rank_tol
    w = xp.where(keep, ut(r) / xp.where(keep, s, xp.ones_like(s)), xp.zeros_like(s))
    return -(Vh.T @ w) / d


def _newton_step(xp, z, J, r, d):
    """Newton step on the exact Hessian of 0.5|r|², or None if it is not positive definite."""
    H = xp.hessian(z) / (d[:, None] * d[None, :])
    x = xp.cho_solve(H, (J.T @ r) / d)
    return None if x is None else -x / d


#: the polish runs only where the Gauss–Newton step would move a parameter by more
#: than this, relative to its value: below it the point is already good to about as
#: many digits. (LM's cost-based stops leave 1e-12 to 1e-7; on NIST StRD the polish
#: moved parameters by 6e-7 at most, on ENSO. On a Poisson fit the Gauss–Newton step
#: underestimates the distance by a factor of a few, hence the margin below 1e-9.)
POLISH_REL_STEP = 1e-10
#: ... and stops once that step is below this (the last digits of float64), rather than
#: trying steps (each with a Jacobian, and a Hessian for the Newton one) until one fails
POLISH_DONE_STEP = 1e-13


def _gauss_newton(xp, J, r, rank_tol):
    """The Gauss–Newton step at hand and its column scaling ``d`` (one thin SVD)."""
    d = xp.colnorm(J)
    d = xp.where(d > 0, d, xp.ones_like(d))
    return _gn_step(xp, J, r, d, rank_tol), d


def _step_matters(p, z, rel=None) -> bool:
    """Whether step ``p`` moves a parameter by more than ``rel`` (default
    :data:`POLISH_REL_STEP`) relative to its value."""
    rel = POLISH_REL_STEP if rel is None else rel
    return not bool((abs(p) <= rel * abs(z)).all())


def _polish(xp, z, r, J, fnorm, rank_tol, gn, steps=8):
    """Extra steps past the point where the cost stops resolving progress.

    Near the minimum the decrease of |r|² drowns in rounding while the gradient
    ``Jᵀr`` is still resolved, so a step is kept while the scale-free gradient
    halves and the cost does not rise beyond rounding. Gauss–Newton steps come
    first (one Jacobian each; ``gn`` is :func:`_gauss_newton` at ``z``). Where a
    Gauss–Newton step does not halve the gradient, the residuals are large enough
    for their curvature to matter, and a Newton step on the exact Hessian is tried
    instead (one Hessian); this buys the last digits on fits like NIST's ENSO,
    MGH09, Rat43 or Lanczos3.
    """
    eps = torch.finfo(xp.obj.dtype).eps

    def trial(p):
        z_new = z + p
        r_new, J_new = xp.residuals_and_jacobian(z_new)
        fn = float(xp.norm(r_new))
        # |r| can carry far more rounding than eps·|r| (r = model - data cancels), so
        # allow a rise up to sqrt(eps); the falling gradient is the real test.
        if not (math.isfinite(fn) and fn <= fnorm * (1 + math.sqrt(eps))
                and xp.allfinite(J_new)):
            return None
        return z_new, r_new, J_new, fn, float(_gcos(xp, J_new, r_new, fn))

    gc = float(_gcos(xp, J, r, fnorm))
    for _ in range(steps):
        if not gc > 0:
            break
        p, d = gn
        new = trial(p)
        if new is None or not new[4] < 0.5 * gc:
            # Gauss–Newton ignores the curvature of r, which large residuals make
            # matter (it can even raise the gradient, as on Rat43): try Newton.
            p = _newton_step(xp, z, J, r, d)
            new = None if p is None else trial(p)
            if new is None or not new[4] < 0.5 * gc:
                break
        z, r, J, fnorm, gc = new
        gn = _gauss_newton(xp, J, r, rank_tol)
        if not _step_matters(gn[0], z, POLISH_DONE_STEP):
            break
    return z, 0.5 * fnorm**2


def _stalled(costs, window: int, rtol: float, ratio: float) -> str | None:
    """A message when the accepted costs ``costs`` (oldest first) crawl, else None.

    The fit crawls when, over the last ``window`` accepted iterations, the cost fell by
    less than ``rtol`` of itself *and* by more than ``ratio`` times what it fell over
    the ``window`` iterations before: tiny progress that is not shrinking. A fit that
    converges, even linearly, shrinks its progress geometrically from one window to the
    next and is never stopped here; and no fit shorter than ``2 window`` iterations is.
    """
    if len(costs) <= 2 * window:
        return None
    c_old, c_mid, c_now = costs[-2 * window - 1], costs[-window - 1], costs[-1]
    scale = max(abs(c_now), 1e-300)
    recent, before = (c_mid - c_now) / scale, (c_old - c_mid) / scale
    if recent < rtol and recent > ratio * before:
        return (f"stalled: the cost fell by only {recent:.2g} (relative) over the last "
                f"{window} iterations, no faster than over the {window} before "
                f"({before:.2g}); crawling along a flat direction, not converging")
    return None


def levenberg_marquardt(obj: Objective, z0, opts: SolverOptions) -> RawSolution:
    """Minimise ``0.5 * sum(r(z)**2)`` by trust-region Levenberg–Marquardt.

    Parameters
    ----------
    obj : Objective
        Must have a residual form (``obj.has_residuals``).
    z0 : Tensor
        Starting point.
    opts : SolverOptions
        ``max_iter`` counts Jacobian evaluations (default 1000). ``ftol``: relative
        actual and predicted reductions of the cost; ``xtol``: trust radius relative
        to ``|D z|``; ``gtol``: the largest cosine between ``r`` and a column of
        ``J`` (MINPACK's scale-free gradient test). ``extra``: ``factor`` (initial
        trust radius relative to ``|D z0|``, default 3: on the MGH set 1 and 10 both
        end Biggs EXP6 at its local minimum, MINPACK's 100 loses NIST BoxBOD from start
        1), ``geodesic`` (default False:
        geodesic acceleration, one extra residual evaluation per trial step; on
        NIST StRD it cuts total iterations 3004 -> 1371, e.g. Bennett5 790 -> 43,
        but loses MGH09 from start 1, so it is opt-in), ``geodesic_alpha`` (0.75),
        ``max_nfev`` (residual evaluations, default ``1000 * (n + 1)``), ``polish``
        (default True: where the Gauss–Newton step at the end would still move a
        parameter by more than ``POLISH_REL_STEP`` = 1e-10 relative, finish with
        Gauss-Newton or exact-Hessian Newton steps, see ``_polish``), ``stall``
        (default None: off; ``(window, rtol, ratio)`` stops a fit whose cost fell by
        less than ``rtol`` relative over the last ``window`` accepted iterations and by
        more than ``ratio`` times its fall over the ``window`` before, see
        ``_stalled``; such a stop is not a success: its message starts "stalled").

    Returns
    -------
    RawSolution
        ``fun`` is ``0.5 * sum(r**2)`` at ``z``.
    """
    if not obj.has_residuals:
        raise ValueError(
            "method 'lm' needs an objective with residuals (Objective(..., residual_fun=...)); "
            "use 'bfgs', 'lbfgs' or 'trust-exact' for a general objective"
        )
    # NaN and inf propagate silently, as they do in torch: a trial step into a region
    # where the model overflows is rejected by the loop, not reported by NumPy
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        return _levenberg_marquardt(obj, z0, opts)


def _levenberg_marquardt(obj: Objective, z0, opts: SolverOptions) -> RawSolution:
    method = "lm"
    maxit = max_iter(opts, 1000)
    max_nfev = int(extra(opts, "max_nfev", 1000 * (obj.n + 1)))
    factor = float(extra(opts, "factor", 3.0))
    if not factor > 0:
        raise ValueError(f"LM option 'factor' must be > 0, got {factor}")
    ftol, xtol, gtol = float(opts.ftol), float(opts.xtol), float(opts.gtol)
    eps = float(torch.finfo(obj.dtype).eps)

    xp = _ops(obj)
    z0 = as_start(obj, z0)
    z = xp.arr(z0)
    r, J = xp.residuals_and_jacobian(z)
    fnorm = float(xp.norm(r))
    cost = 0.5 * fnorm**2
    if not math.isfinite(cost):
        return nonfinite_start(z0, cost, method)
    if not xp.allfinite(J):
        return finish(z0, cost, False, "non-finite Jacobian at the starting point", 0, method)
    if obj.n == 0 or fnorm == 0.0:
        return finish(z0, cost, True, "zero cost or no free parameters", 0, method)
    m = r.shape[0]

    def done(z, cost, success, message, nit, method):
        return finish(xp.tensor(z), cost, success, message, nit, method)

    polish = bool(extra(opts, "polish", True))
    stall = extra(opts, "stall", None)
    if stall is not None:
        try:
            window, stall_rtol, stall_ratio = stall
            window, stall_rtol, stall_ratio = int(window), float(stall_rtol), float(stall_ratio)
        except (TypeError, ValueError):
            window = 0
        if window < 1 or not stall_rtol > 0 or not stall_ratio >= 0:
            raise ValueError(f"LM option 'stall' must be (window >= 1, rtol > 0, ratio >= 0), "
                             f"got {stall!r}")
        costs = deque([cost], maxlen=2 * window + 1)  # the accepted costs the test needs
    geodesic = bool(extra(opts, "geodesic", False))
    geodesic_alpha = float(extra(opts, "geodesic_alpha", 0.75))

    def converged(message, nit, method):
        # Polish every converged fit: even a passed gradient test can leave a few
        # digits on the table when J is ill-conditioned.
        gn = _gauss_newton(xp, J, r, rank_tol) if polish else None
        zp, costp = _polish(xp, z, r, J, fnorm, rank_tol, gn) \
            if polish and _step_matters(gn[0], z) else (z, cost)
        return done(zp, costp, True, message, nit, method)

    jac_scale = str(extra(opts, "scale", "jac")) == "jac"
    fnorm0 = fnorm
    rank_tol = 0.0
    origin = None
    d = xp.zeros(obj.n)
    delta = None
    nfev = 1
    nit = 0
    # a trial since the last accepted step was non-finite: a collapsing trust region then
    # means a wall of NaN, not a minimum
    hit_nonfinite = False
    while True:
        if nit >= maxit:
            return done(z, cost, False, f"maximum number of iterations ({maxit}) reached",
                          nit, method)
        nit += 1
        colnorm = xp.colnorm(J)
        # MINPACK's running max keeps the scaling from collapsing where a column vanishes.
        d = xp.maximum(d, colnorm) if jac_scale else xp.ones_like(colnorm)
        d = xp.where(d > 0, d, xp.ones_like(d))
        s_t, Vh, ut = xp.factor(J / d)
        utr_t = ut(r)
        gcos = _gcos(xp, J, r, fnorm, colnorm)
        host = xp.to_host(s_t, utr_t, gcos, xp.norm(d * z), abs(z).max())
        k = s_t.shape[0]
        s, utr = host[:k], host[k: 2 * k]
        gnorm, xnorm, zmax = float(host[-3]), float(host[-2]), float(host[-1])
        if origin is None:
            origin = Origin(cost, zmax)
        why = origin.diverged(cost, zmax)  # the cost is >= 0: only a runaway can show
        if why is not None:
            return done(z, cost, False, why, nit - 1, method)
        rank_tol = eps * max(m, obj.n) * (float(s.max()) if s.size else 0.0)

        if gnorm <= gtol:
            return converged(
                          f"gradient test passed (max |cos(r, J_j)| <= gtol={gtol:g})",
                          nit, method)
        if delta is None:
            delta = factor * xnorm if xnorm > 0 else factor

        while True:  # trial steps with this Jacobian until one is accepted
            w, lam = _trust_region_weights(s, utr, delta, rank_tol)
            pnorm = _norm(w)
            if nit == 1 and nfev == 1:
                delta = min(delta, pnorm)
            w_dev = xp.from_host(w)
            p = -(Vh.T @ w_dev) / d
            if geodesic:
                p = _geodesic_correction(xp, z, r, J, p, ut, s_t, Vh, d, w_dev, lam,
                                         rank_tol, geodesic_alpha)
                nfev += 1
            z_new = z + p
            r_new = xp.residuals(z_new, then_jacobian=True)
            nfev += 1
            fnorm1 = float(xp.norm(r_new))
            finite = math.isfinite(fnorm1) and bool(np.isfinite(w).all())

            # Reductions relative to |r|², as MINPACK (NaN counts as a large increase).
            actred = 1.0 - (fnorm1 / fnorm) ** 2 if finite and 0.1 * fnorm1 < fnorm else -1.0
            jp2 = float(np.sum((s * w) ** 2)) / fnorm**2
            damp2 = lam * pnorm**2 / fnorm**2
            prered = jp2 + 2.0 * damp2
            dirder = -(jp2 + damp2)
            ratio = actred / prered if prered != 0 else 0.0

            if ratio <= 0.25:
                temp = 0.5 if actred >= 0 else 0.5 * dirder / (dirder + 0.5 * actred)
                if not finite or 0.1 * fnorm1 >= fnorm or not temp >= 0.1:
                    temp = 0.1
                delta = temp * min(delta, pnorm / 0.1)
            elif lam == 0.0 or ratio >= 0.75:
                delta = pnorm / 0.5

            accepted = ratio >= 1e-4
            if accepted:
                r_try, J_try = xp.residuals_and_jacobian(z_new)
                if not xp.allfinite(J_try):
                    # A NaN derivative is as bad as a NaN value: back off.
                    accepted = False
                    delta = 0.1 * min(delta, pnorm)
            if accepted:
                z, r, J, fnorm = z_new, r_try, J_try, fnorm1
                cost = 0.5 * fnorm**2
                hit_nonfinite = False
            else:
                hit_nonfinite = hit_nonfinite or not finite or ratio >= 1e-4  # NaN J

            if abs(actred) <= ftol and prered <= ftol and 0.5 * ratio <= 1:
                return converged(
                              f"relative reduction of the cost below ftol={ftol:g}", nit, method)
            if delta <= xtol * xnorm:
                if hit_nonfinite:
                    return done(z, cost, False,
                                  "trust region collapsed against a region where the model is "
                                  "not finite (NaN or inf just beyond): not a minimum", nit,
                                  method)
                return converged(
                              f"trust radius below xtol={xtol:g} relative to |D z|", nit, method)
            if fnorm == 0.0:
                return converged("zero cost reached", nit, method)
            if fnorm <= eps * fnorm0:
                # An exact fit to the float resolution: |r| fell 16 digits below its start.
                # With a singular Jacobian at the solution (e.g. Powell's function) LM only
                # converges linearly and no relative test would fire.
                return converged("zero residual to float precision (|r| <= eps |r at start|)",
                                 nit, method)
            if nfev >= max_nfev:
                return done(z, cost, False,
                              f"maximum number of function evaluations ({max_nfev}) reached",
                              nit, method)
            if abs(actred) <= eps and prered <= eps and 0.5 * ratio <= 1:
                return converged("cost reduction at machine precision", nit, method)
            if delta <= eps * xnorm or delta == 0.0:
                if finite and not hit_nonfinite:
                    return converged("step at machine precision", nit, method)
                return done(z, cost, False,
                              "step became non-finite: no step toward lower cost is finite",
                              nit, method)
            if accepted:
                if call_back(opts, nit, xp.tensor(z), cost):
                    return done(z, cost, False, "stopped by the callback", nit, method)
                if stall is not None:
                    costs.append(cost)
                    why = _stalled(costs, window, stall_rtol, stall_ratio)
                    if why is not None:
                        return done(z, cost, False, why, nit, method)
                break
