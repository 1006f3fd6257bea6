"""Batched Levenberg–Marquardt and L-BFGS: B independent problems as one computation.

The state of every problem (point, residuals, Jacobian, damping, memory, status)
lives in batched tensors on the objective's device. Each problem has its own
damping or step length, its own step acceptance and its own convergence tests;
a finished problem stops changing (``torch.where`` on a per-problem mask). There
is no Python loop over problems and no host round trip per iteration: the host
reads how many problems are still running every ``check_every`` iterations, and
then drops the finished ones from the working set, so that they stop costing work,
and lets waiting problems take their places (a working set of at most
``working_set`` problems, kept full).

Solvers see a :class:`BatchedObjective`: flat vectors ``z`` of shape ``(b, n)`` in
an unconstrained space, and the per-problem data as tensors with a leading axis,
so that the working set can be cut down to the problems still running.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["BatchedObjective", "BatchedSolution", "batched_lm", "batched_lbfgs", "MESSAGES",
           "SUCCESS_CODES"]

#: status code -> message; codes > 0 are successes, 0 is "still running"
MESSAGES = {
    1: "gradient test passed (max |cos(r, J_j)| <= gtol)",
    2: "relative reduction of the cost below ftol",
    3: "relative step below xtol",
    4: "zero cost reached",
    5: "cost reduction at machine precision",
    6: "gradient below gtol (relative to max(1, |f|))",
    7: "relative reduction of f below ftol",
    8: "step at machine precision",
    -1: "maximum number of iterations reached",
    -2: "non-finite objective at the starting point",
    -3: "non-finite Jacobian or gradient at the starting point",
    -4: "no finite step toward lower cost",
}
SUCCESS_CODES = frozenset(k for k in MESSAGES if k > 0)


class BatchedObjective:
    """B independent objectives of flat vectors, evaluated as one batch.

    Parameters
    ----------
    residual_fun : callable, optional
        ``residual_fun(z, data) -> (b, m)`` with ``f_i = 0.5 * sum(r_i**2) + const``;
        enables Levenberg–Marquardt.
    value_fun : callable, optional
        ``value_fun(z, data) -> (b,)``, the per-problem objective; enables L-BFGS.
    n : int
        Number of free parameters per problem.
    data : tuple of tensors
        Per-problem data, each with a leading batch axis (cut down with the working set).
    device, dtype :
        Where every tensor lives.
    normal_fun : callable, optional
        ``normal_fun(z, data) -> (cost (b,), JᵀJ (b, n, n), Jᵀr (b, n))``: the
        Gauss-Newton normal equations made directly (e.g. from the model's Jacobian
        columns, without forming J), used by Levenberg–Marquardt when given.
    """

    def __init__(self, residual_fun: Callable | None, value_fun: Callable | None, n: int,
                 data: tuple, device, dtype, normal_fun: Callable | None = None):
        self._res = residual_fun
        self._normal = normal_fun
        self._val = value_fun
        self.n = int(n)
        self.data = tuple(data)
        self.device = torch.device(device)
        self.dtype = dtype

    def subset(self, idx: torch.Tensor) -> BatchedObjective:
        """The same objective on the problems ``idx`` (a 1-D index tensor)."""
        return BatchedObjective(self._res, self._val, self.n,
                                tuple(d.index_select(0, idx) for d in self.data),
                                self.device, self.dtype, self._normal)

    @property
    def has_residuals(self) -> bool:
        return self._res is not None

    def normal_equations(self, z: torch.Tensor):
        """``(cost (b,), JᵀJ (b, n, n), Jᵀr (b, n))`` at ``z``, with ``cost = ½|r|²``.

        From ``normal_fun`` where given; else from the residuals and their Jacobian
        columns, stacked with r as one ``(b, n + 1, m)`` block whose Gram matrix (one
        batched matmul) holds JᵀJ, Jᵀr and |r|² at once.
        """
        if self._normal is not None:
            with torch.no_grad():
                cost, A, g = self._normal(z.detach(), self.data)
            return cost.detach(), A.detach(), g.detach()
        r, cols = jacobian_columns(lambda zz: self._res(zz, self.data), z, self.n)
        return normal_from_columns(cols, r)

    def value(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._val(z, self.data)

    def value_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-problem values ``(b,)`` and gradients ``(b, n)`` in one backward pass."""
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            f = self._val(z, self.data)
            if not f.requires_grad:
                return f.detach(), torch.zeros_like(z)
            (g,) = torch.autograd.grad(f.sum(), z)
        return f.detach(), g.detach()


def jacobian(fun: Callable, z: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``fun(z) (b, m)`` and its per-problem Jacobians ``(b, m, n)`` (see
    :func:`jacobian_columns`)."""
    r, cols = jacobian_columns(fun, z, n)
    # stacked as (b, n, m) (a plain copy) and handed out as its (b, m, n) transpose
    return r, torch.stack(cols, dim=1).transpose(1, 2)


def jacobian_columns(fun: Callable, z: torch.Tensor, n: int) -> tuple[torch.Tensor, list]:
    """``fun(z) (b, m)`` and the n Jacobian columns ``d fun / d z[:, j]``, each ``(b, m)``.

    The problems are independent, so one double-backward pass per parameter gives
    column ``j`` of every problem's Jacobian at once: ``w = Jᵀu`` is linear in a dummy
    ``u``, and ``∂(Σ_b w_bj)/∂u`` is ``J[:, :, j]``. This has no first-call start-up
    (forward mode's is about 2 s) and, measured on a 7-parameter model, costs the same
    as ``vmap(jacfwd)`` once that is warm; ``vmap(jacrev)`` is 100x slower.
    """
    z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        r = fun(z)
        if not r.requires_grad:
            return r.detach(), torch.zeros(*r.shape, n, dtype=r.dtype, device=r.device)
        u = torch.zeros_like(r, requires_grad=True)
        (w,) = torch.autograd.grad((r * u).sum(), z, create_graph=True, allow_unused=True)
        cols = []
        for j in range(n):
            c = None
            if w is not None and w.requires_grad:
                (c,) = torch.autograd.grad(w[:, j].sum(), u, retain_graph=True,
                                           allow_unused=True)
            cols.append(torch.zeros_like(r) if c is None else c.detach())
    return r.detach(), cols


def normal_from_columns(cols: list, r: torch.Tensor, weight=None, sign: float = 1.0):
    """``(½|r|², JᵀJ, Jᵀr)`` per problem, J's columns given as ``(b, m)`` tensors.

    With ``weight`` (a ``(b, m)`` or broadcastable tensor) the columns are
    ``weight * cols[j]``; ``sign = -1`` flips them (``J = -cols``). One stack of
    ``[cols…, sign·r]`` into ``(b, n + 1, m)`` and one batched Gram matrix give all
    three: on a CPU one bmm of the stacked block costs about what JᵀJ alone did, and
    Jᵀr and |r|² come free (a separate matrix-vector bmm cost 2/3 of JᵀJ's time).
    """
    n = len(cols)
    if weight is not None:
        cols = [c * weight for c in cols]
    # (one stack measured 2x faster than filling a fresh torch.empty block column by
    # column, which first-touches its pages inside the copies)
    K = torch.stack(cols + [r if sign == 1.0 else r * sign], dim=1)
    G = torch.bmm(K, K.transpose(1, 2))
    return 0.5 * G[:, n, n], G[:, :n, :n], G[:, :n, n]


def hessian(fun: Callable, z: torch.Tensor, n: int) -> torch.Tensor:
    """Per-problem Hessians ``(b, n, n)`` of ``fun(z) -> (b,)``: n backward passes."""
    z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        f = fun(z)
        (g,) = torch.autograd.grad(f.sum(), z, create_graph=True)
        rows = []
        for j in range(n):
            h = None
            if g.requires_grad:
                (h,) = torch.autograd.grad(g[:, j].sum(), z, retain_graph=True,
                                           allow_unused=True)
            rows.append(torch.zeros_like(z) if h is None else h)
    H = torch.stack(rows, dim=1).detach()
    return 0.5 * (H + H.transpose(1, 2))


@dataclass
class BatchedSolution:
    """What a batched solver returns, one row per problem."""

    z: torch.Tensor       # (B, n)
    fun: torch.Tensor     # (B,) 0.5 |r|^2 (LM) or f (L-BFGS)
    code: torch.Tensor    # (B,) status codes (see MESSAGES)
    nit: torch.Tensor     # (B,)
    nfev: torch.Tensor    # (B,) objective evaluations (each with its derivatives)
    method: str
    jtj: torch.Tensor | None = None  # (B, n, n) JᵀJ at z (LM with keep_jtj)


def _all_finite(t):
    """Per problem: are all entries finite? (a sum is, unless one is not or it overflows)"""
    return torch.isfinite(t.sum(dim=tuple(range(1, t.dim()))))


def _where(mask, a, b):
    """``torch.where`` with a per-problem mask broadcast over trailing axes."""
    return torch.where(mask.reshape(mask.shape + (1,) * (a.dim() - 1)), a, b)


class _Driver:
    """Runs a per-iteration ``step`` on a working set of problems, kept full.

    ``init(obj_rows, z0_rows)`` makes the starting state of some problems (a dict of
    tensors with a leading batch axis, holding ``code``: 0 while running). At most
    ``size`` problems are in the working set. Every ``check_every`` iterations the
    host reads the number still running (the one host sync); when at most 3/4 of
    the working set (or of ``size``, while problems wait) still runs, the finished
    rows are written back to the full result and dropped, and waiting problems take
    their places. So the per-iteration cost of the many small tensor operations is
    shared by a full working set until the last problems, instead of every chunk
    ending in a long tail of iterations on a few slow problems.
    """

    def __init__(self, obj, init, z0, check_every, keep, size=None):
        self.obj_full = obj
        self.init = init
        self.z0 = z0
        self.keep = keep
        self.check_every = max(1, int(check_every))
        B = z0.shape[0]
        self.size = B if size is None else max(1, min(int(size), B))

    def run(self, step):
        B, size = self.z0.shape[0], self.size
        dev = self.z0.device
        order = torch.arange(B, device=dev)
        nxt = size
        idx = order[:nxt]
        obj = self.obj_full if nxt == B else self.obj_full.subset(idx)
        st = self.init(obj, self.z0[:nxt])
        # only these rows are written back (not A, g for L-BFGS memories etc.)
        self.full = {k: torch.empty((B,) + tuple(st[k].shape[1:]), dtype=st[k].dtype,
                                    device=dev) for k in self.keep}
        it = 0
        while True:
            st = step(obj, st)
            it += 1
            if it % self.check_every:
                continue
            running = st["code"] == 0
            n_run = int(running.sum())  # the one host sync
            if n_run == 0 and nxt == B:
                break
            refill = nxt < B and n_run <= int(_REFILL * size)
            if refill or n_run <= (3 * running.shape[0]) // 4:
                self._write_back(idx, st)
                keep = torch.nonzero(running).reshape(-1)
                idx = idx.index_select(0, keep)
                st = {k: v.index_select(0, keep) for k, v in st.items()}
                if refill:
                    take = min(size - n_run, B - nxt)
                    new = order[nxt:nxt + take]
                    st_new = self.init(self.obj_full.subset(new), self.z0[nxt:nxt + take])
                    nxt += take
                    st = {k: torch.cat([st[k], st_new[k]]) for k in st}
                    idx = torch.cat([idx, new])
                obj = self.obj_full.subset(idx)
        self._write_back(idx, st)
        return self.full

    def _write_back(self, idx, st):
        for k in self.full:
            self.full[k].index_copy_(0, idx, st[k])


#: waiting problems join when at most this fraction of the working set still runs
#: (measured on the 2-D Gaussian, B = 1e4: 0.75 and 0.5 alike, 0.25 and 0 (refill only
#: when all are done, the old chunks) 6-25% slower)
_REFILL = 0.75
_KEEP_LM = ("z", "cost", "code", "nit", "nfev")
_KEEP_LBFGS = ("z", "f", "code", "nit", "nfev")


def batched_lm(obj: BatchedObjective, z0: torch.Tensor, *, max_iter: int = 200,
               gtol: float = 1e-10, ftol: float = 1e-15, xtol: float = 1e-12,
               check_every: int = 2, keep_jtj: bool = False,
               working_set: int | None = None) -> BatchedSolution:
    """Minimise ``0.5 |r_i(z_i)|²`` for every problem i by Levenberg–Marquardt.

    With ``keep_jtj`` the Gauss-Newton matrix ``JᵀJ`` at each final point comes back
    too (it is at hand: every accepted point has one), so that errors need no second
    Jacobian. The state carries ``JᵀJ`` and ``Jᵀr`` (n² + n numbers per problem), not
    r and J (m·(n + 1)): the Jacobian is reduced as soon as it is made.

    Marquardt's scaled damping with Nielsen's (1999) update of λ: the step solves
    ``(JᵀJ + λ D) p = -Jᵀr`` with ``D = diag`` of the running max of ``diag(JᵀJ)``
    (the scaling MINPACK uses), through a Cholesky factor of the unit-diagonal
    scaled system. A step is accepted where it lowers the cost. Every trial point
    gets its residuals and Jacobian in one pass, so an accepted step needs no more.

    Tests per problem, after each step: MINPACK's scale-free gradient test
    ``max_j |cos(r, J_j)| <= gtol``; relative actual and predicted reductions
    ``<= ftol``; an accepted step ``|p| <= xtol (|z| + xtol)``; zero cost; a
    predicted reduction at machine precision (the cost can fall no further).

    ``working_set`` caps the problems iterated at once (default: all); finished
    problems leave it and waiting ones join (see :class:`_Driver`).
    """
    B, n = z0.shape
    eps = torch.finfo(z0.dtype).eps
    dev, dt = z0.device, z0.dtype

    def init(o, z0_rows):
        b = z0_rows.shape[0]
        z = z0_rows.detach().clone()
        cost, A, g = o.normal_equations(z)
        code = torch.zeros(b, dtype=torch.int64, device=dev)
        code = torch.where(~torch.isfinite(cost), torch.full_like(code, -2), code)
        code = torch.where((code == 0) & ~_all_finite(A),
                           torch.full_like(code, -3), code)
        code = torch.where((code == 0) & (cost == 0), torch.full_like(code, 4), code)
        return {
            "z": z, "A": A, "g": g, "cost": cost, "code": code,
            "lam": torch.full((b,), 1e-3, dtype=dt, device=dev),
            "nu": torch.full((b,), 2.0, dtype=dt, device=dev),
            "D": torch.zeros(b, n, dtype=dt, device=dev),
            "nit": torch.zeros(b, dtype=torch.int64, device=dev),
            "nfev": torch.ones(b, dtype=torch.int64, device=dev),
        }

    eye = torch.eye(n, dtype=dt, device=dev)

    def step(o, s):
        z, A, g, cost, code = s["z"], s["A"], s["g"], s["cost"], s["code"]
        run = code == 0
        diagA = torch.diagonal(A, dim1=1, dim2=2)
        # gradient test at the current point (MINPACK's gtol)
        colnorm = torch.sqrt(diagA)
        fnorm = torch.sqrt(2 * cost)
        gcos = torch.where(colnorm > 0, g.abs() / (colnorm * fnorm.unsqueeze(-1)),
                           torch.zeros_like(g)).amax(-1)
        code = torch.where(run & (gcos <= gtol), torch.full_like(code, 1), code)
        run = code == 0
        D = torch.maximum(s["D"], diagA)
        D = torch.where(D > 0, D, torch.ones_like(D))
        sd = torch.sqrt(D)
        As = A / (sd.unsqueeze(-1) * sd.unsqueeze(-2))
        lam = s["lam"]
        M = As + lam[:, None, None] * eye
        L, info = torch.linalg.cholesky_ex(M)
        gs = g / sd
        p = -torch.cholesky_solve(gs.unsqueeze(-1), L).squeeze(-1) / sd
        solved = (info == 0) & torch.isfinite(p).all(-1)
        p = torch.where(solved.unsqueeze(-1), p, torch.zeros_like(p))
        z_new = z + p
        cost_new, A_new, g_new = o.normal_equations(z_new)
        Ap = (A @ p.unsqueeze(-1)).squeeze(-1)
        pred = -((g * p).sum(-1) + 0.5 * (p * Ap).sum(-1))
        actred = cost - cost_new
        # (a non-finite J gives a non-finite JᵀJ; an overflow to inf counts as one too)
        finite = torch.isfinite(cost_new) & _all_finite(A_new)
        ok = run & solved & finite & (actred > 0)
        rho = torch.where(pred > 0, actred / pred, torch.zeros_like(pred))
        lam_ok = lam * torch.clamp(1 - (2 * rho - 1) ** 3, min=1.0 / 3.0)
        nu = s["nu"]
        lam = torch.where(ok, lam_ok, lam * nu)
        nu = torch.where(ok, torch.full_like(nu, 2.0), 2 * nu)
        z = _where(ok, z_new, z)
        A = _where(ok, A_new, A)
        g = _where(ok, g_new, g)
        rel_scale = torch.where(cost > 0, cost, torch.ones_like(cost))
        # tests on the step just taken (or refused)
        small_red = ok & (actred <= ftol * rel_scale) & (pred <= ftol * rel_scale)
        small_step = ok & (torch.linalg.vector_norm(p, dim=-1)
                           <= xtol * (torch.linalg.vector_norm(z, dim=-1) + xtol))
        cost = torch.where(ok, cost_new, cost)
        code = torch.where(run & small_red, torch.full_like(code, 2), code)
        code = torch.where((code == 0) & small_step, torch.full_like(code, 3), code)
        code = torch.where((code == 0) & run & (cost == 0), torch.full_like(code, 4), code)
        # refused, and the model promises no reduction the cost can resolve
        stuck = run & ~ok & solved & (pred <= 4 * eps * rel_scale)
        code = torch.where((code == 0) & stuck, torch.full_like(code, 5), code)
        code = torch.where((code == 0) & run & (lam > 1e16), torch.full_like(code, -4), code)
        nit = s["nit"] + run.to(s["nit"].dtype)
        code = torch.where((code == 0) & (nit >= max_iter), torch.full_like(code, -1), code)
        return {"z": z, "A": A, "g": g, "cost": cost, "code": code, "lam": lam, "nu": nu,
                "D": D, "nit": nit, "nfev": s["nfev"] + run.to(s["nit"].dtype)}

    if max_iter <= 0:
        final = init(obj, z0)
        final["code"] = torch.where(final["code"] == 0, -1, final["code"])
    else:
        keep = _KEEP_LM + (("A",) if keep_jtj else ())
        final = _Driver(obj, init, z0, check_every, keep, working_set).run(step)
    return BatchedSolution(final["z"], final["cost"], final["code"], final["nit"],
                           final["nfev"], "lm", final["A"] if keep_jtj else None)


def batched_lbfgs(obj: BatchedObjective, z0: torch.Tensor, *, max_iter: int = 1000,
                  memory: int = 10, gtol: float = 1e-10, ftol: float = 1e-15,
                  xtol: float = 1e-15, check_every: int = 8,
                  working_set: int | None = None) -> BatchedSolution:
    """Minimise every problem's ``f_i(z_i)`` by L-BFGS with per-problem step lengths.

    Each iteration makes one trial step per problem along its L-BFGS direction
    (the two-loop recursion, batched over problems and masked where a problem's
    memory is not yet full) and evaluates f and ∇f there. Where the Armijo test
    passes the step is accepted and the memory updated (if the curvature pair is
    positive); elsewhere the step length shrinks by quadratic interpolation and
    the problem tries again at the next iteration. A descent test failure resets
    that problem's memory to steepest descent.

    Tests per problem after an accepted step (those of :func:`gradfit.fit`'s
    L-BFGS): ``max|∇f| <= gtol max(1, |f|)``, relative reduction ``<= ftol``,
    relative step ``<= xtol``; a step length at machine precision stops the problem.
    """
    B, n = z0.shape
    dev, dt = z0.device, z0.dtype
    eps = torch.finfo(dt).eps
    M = max(1, int(memory))

    def init(o, z0_rows):
        b = z0_rows.shape[0]
        z = z0_rows.detach().clone()
        f, g = o.value_and_grad(z)
        code = torch.zeros(b, dtype=torch.int64, device=dev)
        code = torch.where(~torch.isfinite(f), torch.full_like(code, -2), code)
        code = torch.where((code == 0) & ~torch.isfinite(g).all(-1),
                           torch.full_like(code, -3), code)
        scale0 = torch.clamp(f.abs(), min=1.0)
        code = torch.where((code == 0) & (g.abs().amax(-1) <= gtol * scale0),
                           torch.full_like(code, 6), code)
        return {
            "z": z, "f": f, "g": g, "code": code,
            "S": torch.zeros(b, M, n, dtype=dt, device=dev),
            "Y": torch.zeros(b, M, n, dtype=dt, device=dev),
            "rho": torch.zeros(b, M, dtype=dt, device=dev),  # 0 marks an empty slot
            "alpha": torch.ones(b, dtype=dt, device=dev),
            "nit": torch.zeros(b, dtype=torch.int64, device=dev),
            "nfev": torch.ones(b, dtype=torch.int64, device=dev),
        }

    def direction(g, S, Y, rho):
        q = g.clone()
        a = []
        for i in range(M - 1, -1, -1):  # newest pair is in slot M-1
            ai = rho[:, i] * (S[:, i] * q).sum(-1)
            q = q - ai.unsqueeze(-1) * Y[:, i]
            a.append(ai)
        yy = (Y[:, -1] * Y[:, -1]).sum(-1)
        sy = (S[:, -1] * Y[:, -1]).sum(-1)
        gamma = torch.where((rho[:, -1] > 0) & (yy > 0), sy / torch.where(yy > 0, yy, 1.0),
                            1.0 / torch.clamp(torch.linalg.vector_norm(g, dim=-1), min=eps))
        d = gamma.unsqueeze(-1) * q
        for k, i in enumerate(range(M)):
            bi = rho[:, i] * (Y[:, i] * d).sum(-1)
            d = d + (a[M - 1 - k] - bi).unsqueeze(-1) * S[:, i]
        return -d

    def step(o, s):
        z, f, g, code = s["z"], s["f"], s["g"], s["code"]
        S, Y, rho, alpha = s["S"], s["Y"], s["rho"], s["alpha"]
        run = code == 0
        d = direction(g, S, Y, rho)
        dg = (d * g).sum(-1)
        bad = ~(dg < 0) | ~torch.isfinite(dg)
        # no descent: forget the memory, go down the gradient
        d = _where(bad, -g / torch.clamp(torch.linalg.vector_norm(g, dim=-1, keepdim=True),
                                         min=eps), d)
        rho = _where(bad, torch.zeros_like(rho), rho)
        dg = (d * g).sum(-1)
        z_t = z + alpha.unsqueeze(-1) * d
        f_t, g_t = o.value_and_grad(z_t)
        finite = torch.isfinite(f_t) & torch.isfinite(g_t).all(-1)
        ok = run & finite & (f_t <= f + 1e-4 * alpha * dg)
        sv = z_t - z
        yv = g_t - g
        sy = (sv * yv).sum(-1)
        upd = ok & (sy > eps * torch.linalg.vector_norm(sv, dim=-1)
                    * torch.linalg.vector_norm(yv, dim=-1))
        S = _where(upd, torch.cat([S[:, 1:], sv.unsqueeze(1)], 1), S)
        Y = _where(upd, torch.cat([Y[:, 1:], yv.unsqueeze(1)], 1), Y)
        rho = _where(upd, torch.cat([rho[:, 1:], (1.0 / torch.where(upd, sy, 1.0))
                                     .unsqueeze(1)], 1), rho)
        # a refused step: quadratic interpolation of f along d, kept in [0.1, 0.5] alpha
        curv = f_t - f - alpha * dg
        a_q = torch.where(finite & (curv > 0), -dg * alpha * alpha / (2 * curv),
                          0.1 * alpha)
        a_q = torch.minimum(torch.maximum(a_q, 0.1 * alpha), 0.5 * alpha)
        alpha = torch.where(ok, torch.ones_like(alpha), torch.where(run, a_q, alpha))
        scale = torch.clamp(torch.maximum(f.abs(), f_t.abs()), min=1.0)
        f_old = f
        z = _where(ok, z_t, z)
        f = torch.where(ok, f_t, f)
        g = _where(ok, g_t, g)
        smax = sv.abs().amax(-1)
        zmax = z.abs().amax(-1)
        new = torch.zeros_like(code)
        new = torch.where(ok & (g.abs().amax(-1) <= gtol * torch.clamp(f.abs(), min=1.0)),
                          torch.full_like(code, 6), new)
        new = torch.where((new == 0) & ok & (f_old - f <= ftol * scale),
                          torch.full_like(code, 7), new)
        new = torch.where((new == 0) & ok & (smax <= xtol * (zmax + xtol)),
                          torch.full_like(code, 3), new)
        tiny = run & ~ok & (alpha * torch.linalg.vector_norm(d, dim=-1)
                            <= eps * (torch.linalg.vector_norm(z, dim=-1) + eps))
        # a step length at machine precision: converged if the gradient is small
        # (gradfit's stalled_at_resolution), else stuck
        gsmall = g.abs().amax(-1) <= 70 * eps ** 0.5 * torch.clamp(f.abs(), min=1.0)
        new = torch.where((new == 0) & tiny, torch.where(gsmall, 8, -4), new)
        code = torch.where(run, new, code)
        nit = s["nit"] + run.to(s["nit"].dtype)
        code = torch.where((code == 0) & (nit >= max_iter), torch.full_like(code, -1), code)
        return {"z": z, "f": f, "g": g, "code": code, "S": S, "Y": Y, "rho": rho,
                "alpha": alpha, "nit": nit, "nfev": s["nfev"] + run.to(s["nit"].dtype)}

    if max_iter <= 0:
        final = init(obj, z0)
        final["code"] = torch.where(final["code"] == 0, -1, final["code"])
    else:
        final = _Driver(obj, init, z0, check_every, _KEEP_LBFGS, working_set).run(step)
    return BatchedSolution(final["z"], final["f"], final["code"], final["nit"],
                           final["nfev"], "lbfgs")
