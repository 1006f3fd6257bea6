"""Objective: f, ∇f, Hessian-vector products, Hessians and Jacobians by autodiff.

An :class:`Objective` wraps a scalar function of one flat parameter vector ``z``
(a 1-D tensor on the objective's device and dtype) and, optionally, a residual
function ``r(z)`` with ``f(z) = 0.5 * sum(r(z)**2) + const`` for least-squares
solvers. Solvers see only this class; they never see names, bounds or data.

Jacobians cost about one model evaluation per parameter (double-backward
columns) and, unlike ``torch.func.jacfwd`` or forward-mode dual numbers, have
no multi-second first-call overhead in a fresh process.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["Objective", "Linearization", "resolve_device", "separable_begin",
           "separable_jacobian", "separable_tol"]

#: Jacobians up to this many entries get all their columns in one vectorised pass
_BATCHED_COLUMNS_MAX = 4_000_000
_batched_ok = True


def _batched_rows(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor | None:
    """``∂w_i/∂u`` for every element of a 1-D ``w`` as one ``(n, m)`` tensor, in one pass.

    The same backward pass as a loop over ``autograd.grad(w[i], u)``, batched over
    the unit vectors ``e_i`` with torch's own ``is_grads_batched`` machinery, called
    below ``torch.autograd.grad``: that function imports sympy (about 0.4 s CPU, once
    per process) to check the shape of ``grad_outputs``. Measured on a 7-parameter
    model with 225 residuals, 0.7-0.9 ms per Jacobian against 1.9-2.0 ms for the
    loop of n passes (whose cost is the autograd engine's per-node overhead). These
    are private torch functions: if they are missing or fail, None (and never
    again), and the caller runs the loop.
    """
    global _batched_ok
    if not _batched_ok:
        return None
    n = w.numel()
    try:
        eye = torch.eye(n, dtype=w.dtype, device=w.device)
        Jt = _vmapped_backward(w, u, eye, retain_graph=True)
    except (ImportError, AttributeError, TypeError):  # the private API has changed
        _batched_ok = False
        return None
    except RuntimeError:  # e.g. an op without a batching rule: the loop, this time
        return None
    if Jt is None:
        return torch.zeros(n, u.numel(), dtype=u.dtype, device=u.device)
    return Jt


def _vmapped_backward(out: torch.Tensor, inp: torch.Tensor, cot: torch.Tensor,
                      retain_graph: bool):
    """``cot[b] · ∂out/∂inp`` for every row ``b`` of ``cot`` in one backward pass, or None
    if ``out`` does not depend on ``inp``.

    What ``torch._vmap_internals._vmap`` does around a backward pass, without its pytree
    handling of the arguments (measured at a sixth of a small fit's Jacobian). Private
    torch functions: ImportError/AttributeError/TypeError where they have changed.
    """
    from torch import _add_batch_dim, _remove_batch_dim
    from torch._C import _vmapmode_decrement_nesting, _vmapmode_increment_nesting
    from torch.autograd.graph import _engine_run_backward

    b = cot.shape[0]
    level = _vmapmode_increment_nesting()
    try:
        # (an op without a batching rule runs a loop over the rows; torch says so only
        # where its vmap fallback warnings are switched on, off by default)
        (g,) = _engine_run_backward((out,), (_add_batch_dim(cot, 0, level),), retain_graph,
                                    False, (inp,), True, accumulate_grad=False)
        return None if g is None else _remove_batch_dim(g, level, b, 0)
    finally:
        _vmapmode_decrement_nesting()


#: relative disagreement (per Jacobian column) above which :func:`separable_jacobian`
#: declares the residuals coupled, in float64; rounding gives about 1e-15 (measured on
#: a 7-parameter model). Other dtypes: ``max(SEPARABLE_TOL, 1000 eps)`` (float32: 1.2e-4,
#: against rounding of about 6e-7)
SEPARABLE_TOL = 1e-10


#: the one-pass Jacobian holds about four Jacobian-sized arrays at once (the parameter
#: copies, the two cotangents' gradients, J); above this many elements of J (200 MB in
#: float64) the general path, which needs less memory
SEPARABLE_MAX_ELEMENTS = 25_000_000


def separable_tol(dtype) -> float:
    """The coupling tolerance of :func:`separable_jacobian` for ``dtype``."""
    return max(SEPARABLE_TOL, 1000.0 * torch.finfo(dtype).eps)


def separable_jacobian(residuals_of, theta: torch.Tensor, shape: tuple):
    """Residuals and their Jacobian in one backward pass, for a model whose element ``i``
    depends on the parameters only through element ``i`` of their broadcast.

    ``residuals_of(Q)`` evaluates the residuals (of shape ``shape``) with every scalar
    parameter given its own copy per element: ``Q`` has shape ``shape + (n,)``. For an
    elementwise model (most curve fits) ``∂r_i/∂Q_j = 0`` for ``i != j``, so one
    backward pass of ``Σ r`` gives the whole ``(m, n)`` Jacobian: about half the cost of
    the double-backward columns for a small model, where autograd's per-node overhead
    dominates. Whether the model *is* elementwise is checked at every call: a second
    cotangent ``v`` (fixed, irregular) rides in the same pass, and ``∂(v·r)/∂Q`` must
    equal ``v_i ∂r_i/∂Q_i`` row by row; any coupling across elements (a sum, a
    convolution, an FFT, a normalisation) breaks that (``Σ_j v_j ∂r_j/∂Q_i``).

    Returns ``(r, J)`` with ``r`` flat, or None when the model does not qualify (it
    fails or changes shape with per-element parameters, or its elements are coupled);
    the caller then differentiates it the general way.
    """
    begun = separable_begin(residuals_of, theta, shape)
    if begun is None:
        return None
    J = begun[1]()
    return None if J is None else (begun[0], J)


def separable_begin(residuals_of, theta: torch.Tensor, shape: tuple):
    """:func:`separable_jacobian` in two steps: ``(r, finish)`` now (the forward pass,
    its graph kept), where ``finish()`` is the Jacobian or None; or None.

    Levenberg–Marquardt evaluates each trial point this way, so that the Jacobian at
    an accepted point costs only its backward pass.
    """
    n = theta.numel()
    if math.prod(shape) * n > SEPARABLE_MAX_ELEMENTS:
        return None
    Q = theta.detach().expand(*shape, n).clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            r = residuals_of(Q)
            if not isinstance(r, torch.Tensor) or tuple(r.shape) != tuple(shape) \
                    or not r.requires_grad:
                return None
            r = r.reshape(-1)
    except Exception:  # noqa: BLE001 - a failure of the model with per-element
        return None    # parameters means: not this way

    def finish():
        m = r.numel()
        try:
            cot, v_host = _probe(m, r.dtype, r.device)
            GH = _vmapped_backward(r, Q, cot, retain_graph=False)
        except Exception:  # noqa: BLE001 - torch's private API, or a backward that fails
            return None
        if GH is None:
            return None
        G = GH[0].reshape(m, n)
        tol = separable_tol(G.dtype)
        if G.device.type == "cpu":  # a dozen small torch calls cost 3x their NumPy twins
            Gn, Hn = G.numpy(), GH[1].reshape(m, n).numpy()
            vG = v_host[:, None] * Gn
            with np.errstate(invalid="ignore"):
                ok = bool((np.abs(Hn - vG).max(axis=0) <= tol * np.abs(vG).max(axis=0)).all())
        else:
            vG = cot[1][:, None] * G
            ok = bool(((GH[1].reshape(m, n) - vG).abs().amax(dim=0)
                       <= tol * vG.abs().amax(dim=0)).all())
        return G if ok else None

    return r.detach(), finish


_probes: dict = {}


def _probe(m: int, dtype, device) -> tuple[torch.Tensor, np.ndarray]:
    """The cotangents ``[1, v]`` of :func:`separable_jacobian` (``(2, m)``, on the device)
    and ``v`` in NumPy: ``v`` is a fixed, irregular vector in [1, 2) (Weyl sequence of
    the golden ratio)."""
    key = (m, dtype, device)
    out = _probes.get(key)
    if out is None:
        v = 1.0 + torch.remainder(torch.arange(1, m + 1, dtype=torch.float64)
                                  * 0.6180339887498949, 1.0)
        cot = torch.stack([torch.ones_like(v), v]).to(dtype=dtype, device=device)
        out = (cot, cot[1].cpu().numpy())
        if len(_probes) > 64:
            _probes.clear()
        _probes[key] = out
    return out


def resolve_device(device) -> torch.device:
    """Turn ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:1'`` or a torch.device into a device."""
    if device is None or device == "cpu":
        return torch.device("cpu")
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(
                f"unknown device {device!r}; choose one of: 'cpu', 'cuda', 'cuda:N', 'auto'"
            ) from exc
    else:
        raise TypeError(f"device must be a string or torch.device, not {type(device).__name__}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but no CUDA GPU is available; "
            "use device='cpu' or device='auto'"
        )
    return dev


class Objective:
    """A scalar objective of a flat vector, with derivatives by autodiff.

    Parameters
    ----------
    fun : callable
        ``fun(z) -> 0-d tensor``, differentiable with torch autograd.
    n : int
        Length of ``z``.
    residual_fun : callable, optional
        ``residual_fun(z) -> 1-D tensor r`` such that ``fun(z) == 0.5 * sum(r**2) + const``.
        Enables Levenberg–Marquardt.
    device, dtype :
        Where every tensor of the problem lives.
    residual_jacobian_fun : callable, optional
        ``residual_jacobian_fun(z) -> (r, J)`` with ``J = dr/dz`` of shape ``(m, n)``:
        an exact Jacobian supplied by the model, used instead of autodiff columns.
    fast_jacobian_fun : callable, optional
        ``fast_jacobian_fun(z) -> (r, finish)`` or None, with ``finish() -> J`` or None:
        a cheaper autodiff Jacobian that may not apply (see :func:`separable_begin`);
        where it gives None, the double-backward columns.
    """

    def __init__(
        self,
        fun: Callable[[torch.Tensor], torch.Tensor],
        n: int,
        *,
        residual_fun: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
        residual_jacobian_fun: Callable | None = None,
        fast_jacobian_fun: Callable | None = None,
    ):
        self._fun = fun
        self._res = residual_fun
        self._res_jac = residual_jacobian_fun
        self._fast_jac = fast_jacobian_fun
        self.n = int(n)
        self.device = torch.device(device)
        self.dtype = dtype
        self.nfev = 0  # function evaluations (any pass that evaluates the model)
        self.ngev = 0  # gradient evaluations
        self.nhev = 0  # Hessian-vector products / Hessians
        self.njev = 0  # Jacobian evaluations
        self._np_cache: tuple[bytes, float, np.ndarray] | None = None
        self._last_jac: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pending = None  # (z, r, finish) of the last residuals(then_jacobian=True)

    # ------------------------------------------------------------------ helpers
    @property
    def has_residuals(self) -> bool:
        return self._res is not None

    def as_tensor(self, z) -> torch.Tensor:
        """A detached 1-D tensor on the objective's device and dtype."""
        t = torch.as_tensor(z, dtype=self.dtype, device=self.device)
        return t.detach().reshape(self.n)

    # ------------------------------------------------------------- derivatives
    def value(self, z: torch.Tensor) -> torch.Tensor:
        """f(z) as a 0-d tensor (no graph)."""
        self.nfev += 1
        with torch.no_grad():
            return self._fun(self.as_tensor(z))

    def value_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f(z) and ∇f(z) in one forward and one backward pass."""
        self.nfev += 1
        self.ngev += 1
        z = self.as_tensor(z).requires_grad_(True)
        with torch.enable_grad():
            f = self._fun(z)
            if not f.requires_grad:  # f does not depend on z
                return f.detach(), torch.zeros_like(z)
            (g,) = torch.autograd.grad(f, z)
        return f.detach(), g.detach()

    def grad(self, z: torch.Tensor) -> torch.Tensor:
        return self.value_and_grad(z)[1]

    def hvp(self, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Hessian-vector product H(z) v by reverse-over-reverse autodiff."""
        self.nhev += 1
        z = self.as_tensor(z).requires_grad_(True)
        v = self.as_tensor(v)
        with torch.enable_grad():
            f = self._fun(z)
            (g,) = torch.autograd.grad(f, z, create_graph=True)
            if not g.requires_grad:  # ∇f does not depend on z (f is linear): H = 0
                return torch.zeros_like(v)
            (hv,) = torch.autograd.grad((g * v).sum(), z, allow_unused=True)
        return torch.zeros_like(v) if hv is None else hv.detach()

    def hessian(self, z: torch.Tensor) -> torch.Tensor:
        """The full ``n x n`` Hessian: one gradient graph, ``n`` backward passes through it."""
        self.nhev += 1
        z = self.as_tensor(z).requires_grad_(True)
        with torch.enable_grad():
            f = self._fun(z)
            (g,) = torch.autograd.grad(f, z, create_graph=True)
            H = _batched_rows(g, z) \
                if g.requires_grad and self.n * self.n <= _BATCHED_COLUMNS_MAX else None
            if H is not None:
                H = H.detach()
                return 0.5 * (H + H.T)
            rows = []
            for i in range(self.n):
                if g.requires_grad:
                    (h,) = torch.autograd.grad(g[i], z, retain_graph=True, allow_unused=True)
                else:
                    h = None
                rows.append(torch.zeros_like(z) if h is None else h)
        H = torch.stack(rows).detach()
        return 0.5 * (H + H.T)

    def residuals(self, z: torch.Tensor, *, then_jacobian: bool = False) -> torch.Tensor:
        """r(z). ``then_jacobian``: the Jacobian at ``z`` may be asked for next (a trial
        step that may be accepted); where the fast Jacobian applies, the forward pass
        is kept for it, so that :meth:`residuals_and_jacobian` at ``z`` needs only the
        backward pass."""
        if self._res is None:
            raise TypeError("this objective has no residual form; Levenberg–Marquardt needs one")
        self.nfev += 1
        z = self.as_tensor(z)
        self._pending = None
        if then_jacobian and self._fast_jac is not None and self._res_jac is None:
            begun = self._fast_jac(z)
            if begun is not None:
                self._pending = (z.clone(), begun[0], begun[1])
                return begun[0]
        with torch.no_grad():
            return self._res(z)

    def residuals_and_jacobian(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals r(z) and the ``m x n`` Jacobian (see :meth:`_residuals_and_jacobian`).

        The last Jacobian is kept (:meth:`jacobian_at`), so that the errors after a
        Levenberg–Marquardt fit need no second one.
        """
        z = self.as_tensor(z)
        pending, self._pending = self._pending, None
        J = None
        if pending is not None and torch.equal(pending[0], z):
            J = pending[2]()  # the forward pass was the trial's: no new evaluation
            if J is not None:
                self.njev += 1
                r = pending[1]
        if J is None:
            r, J = self._residuals_and_jacobian(z)
        self._last_jac = (z.clone(), J)
        return r, J

    def jacobian_at(self, z) -> torch.Tensor | None:
        """The last Jacobian made by :meth:`residuals_and_jacobian` if it was at exactly
        ``z``, else None (nothing is evaluated)."""
        if self._last_jac is None:
            return None
        z0, J = self._last_jac
        return J if torch.equal(z0, self.as_tensor(z)) else None

    def _residuals_and_jacobian(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals r(z) and the ``m x n`` Jacobian, one column per backward pass.

        Columns come from the double-backward trick: ``w(u) = Jᵀu`` is linear in a
        dummy ``u``, so ``∂(w_i)/∂u`` is column ``i`` of J. This costs about one
        model evaluation per parameter, like forward mode, without forward-mode's
        one-off start-up (about 2 s for its decompositions in a fresh process).
        """
        if self._res is None:
            raise TypeError("this objective has no residual form; Levenberg–Marquardt needs one")
        self.nfev += 1
        self.njev += 1
        if self._res_jac is not None:
            with torch.no_grad():
                r, J = self._res_jac(self.as_tensor(z))
            return r.detach(), J.detach()
        if self._fast_jac is not None:
            begun = self._fast_jac(self.as_tensor(z))
            J = None if begun is None else begun[1]()
            if J is not None:
                return begun[0], J
        z = self.as_tensor(z).requires_grad_(True)
        with torch.enable_grad():
            r = self._res(z)
            if not r.requires_grad:
                return r.detach(), torch.zeros(r.numel(), self.n, dtype=self.dtype,
                                               device=self.device)
            u = torch.zeros_like(r, requires_grad=True)
            # scalar outputs only: passing grad_outputs makes torch import sympy (~1.5 s)
            (w,) = torch.autograd.grad((r * u).sum(), z, create_graph=True, allow_unused=True)
            if w is not None and w.requires_grad and r.numel() * self.n <= _BATCHED_COLUMNS_MAX:
                Jt = _batched_rows(w, u)
                if Jt is not None:
                    return r.detach(), Jt.detach().T.contiguous()
            cols = []
            for i in range(self.n):
                c = None
                if w is not None and w.requires_grad:
                    (c,) = torch.autograd.grad(w[i], u, retain_graph=True, allow_unused=True)
                cols.append(torch.zeros_like(r) if c is None else c)
        return r.detach(), torch.stack(cols, dim=1).detach()

    # ------------------------------------- Gauss–Newton products (matrix-free LM)
    def residual_cost(self, z: torch.Tensor) -> torch.Tensor:
        """``0.5 * sum(r(z)**2)`` as a 0-d tensor (no graph)."""
        r = self.residuals(z)
        return 0.5 * (r * r).sum()

    def linearize(self, z: torch.Tensor) -> Linearization:
        """The residuals at ``z`` with ``J v`` and ``Jᵀ u`` products on one retained graph."""
        if self._res is None:
            raise TypeError("this objective has no residual form; Levenberg–Marquardt needs one")
        self.nfev += 1
        self.njev += 1
        return Linearization(self._res, self.as_tensor(z))

    def normal_equations(self, z: torch.Tensor):
        """``(0.5 |r|², JᵀJ, Jᵀr)`` at ``z``: the dense Gauss–Newton system (small ``n``)."""
        r, J = self.residuals_and_jacobian(z)
        return 0.5 * (r * r).sum(), J.T @ J, J.T @ r

    # ------------------------------------------------------------ NumPy bridge
    def scipy_fun_and_grad(self, zn: np.ndarray) -> tuple[float, np.ndarray]:
        """``(f, ∇f)`` as float and float64 array, for ``scipy.optimize.minimize(jac=True)``.

        The last point is cached, so a SciPy method that asks for f and then ∇f at
        the same point costs one pass.
        """
        zn = np.asarray(zn, dtype=np.float64)
        key = zn.tobytes()
        if self._np_cache is not None and self._np_cache[0] == key:
            return self._np_cache[1], self._np_cache[2].copy()
        f, g = self.value_and_grad(torch.from_numpy(zn.copy()))
        fv = float(f)
        gv = g.detach().cpu().numpy().astype(np.float64)
        if not np.isfinite(fv):
            fv = np.inf  # lets SciPy's line searches back off instead of crashing
            gv = np.zeros_like(gv)
        self._np_cache = (key, fv, gv)
        return fv, gv.copy()

    def scipy_hvp(self, zn: np.ndarray, vn: np.ndarray) -> np.ndarray:
        t = self.hvp(torch.from_numpy(np.asarray(zn, np.float64).copy()),
                     torch.from_numpy(np.asarray(vn, np.float64).copy()))
        return t.cpu().numpy().astype(np.float64)

    def scipy_hess(self, zn: np.ndarray) -> np.ndarray:
        t = self.hessian(torch.from_numpy(np.asarray(zn, np.float64).copy()))
        return t.cpu().numpy().astype(np.float64)


class Linearization:
    """Residuals ``r(z)`` and products with their Jacobian ``J``, without forming ``J``.

    One forward pass builds ``r`` and, by the double-backward trick, ``w(u) = Jᵀu``
    as a graph linear in a dummy ``u``; then ``Jᵀu`` is one backward pass through
    ``r`` and ``J v = ∂(w·v)/∂u`` one backward pass through ``w``. Both reuse the
    retained graphs, so a conjugate-gradient iteration on ``JᵀJ`` costs two backward
    passes and no forward pass. (Forward-mode ``torch.func.jvp`` re-runs the model for
    every product: measured 5–6× slower per ``JᵀJ v`` on a 10⁴–10⁵-parameter
    deconvolution, plus seconds on its first call in a fresh process.)

    Attributes
    ----------
    r : Tensor
        The residuals (detached).
    cost : Tensor
        ``0.5 * sum(r**2)``.
    grad : Tensor
        ``Jᵀr``, the gradient of ``cost``.
    """

    def __init__(self, res_fun, z: torch.Tensor):
        self._z = z.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            self._r = res_fun(self._z).reshape(-1)
            if self._r.requires_grad:
                self._u = torch.zeros_like(self._r, requires_grad=True)
                (w,) = torch.autograd.grad((self._r * self._u).sum(), self._z,
                                           create_graph=True, allow_unused=True)
                self._w = w if w is not None and w.requires_grad else None
            else:
                self._u = self._w = None
        self.r = self._r.detach()
        self.cost = 0.5 * (self.r * self.r).sum()
        self.grad = self.vjp(self.r)

    @property
    def m(self) -> int:
        return self.r.numel()

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        """``Jᵀ u`` for ``u`` of the residuals' length."""
        if not self._r.requires_grad:
            return torch.zeros_like(self._z).detach()
        with torch.enable_grad():
            (g,) = torch.autograd.grad((self._r * u.reshape(-1)).sum(), self._z,
                                       retain_graph=True, allow_unused=True)
        return torch.zeros_like(self._z).detach() if g is None else g.detach()

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """``J v`` for ``v`` of the parameters' length."""
        if self._w is None:
            return torch.zeros_like(self.r)
        with torch.enable_grad():
            (jv,) = torch.autograd.grad((self._w * v).sum(), self._u, retain_graph=True,
                                        allow_unused=True)
        return torch.zeros_like(self.r) if jv is None else jv.detach()

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``JᵀJ v``, the Gauss–Newton matrix times ``v``."""
        return self.vjp(self.jvp(v))

    def diag(self, probes: int = 16, seed: int = 0) -> torch.Tensor:
        """``diag(JᵀJ)`` (squared column norms of ``J``).

        Exact (one product per column) when ``n <= probes``; otherwise the unbiased
        estimate ``mean_k (Jᵀu_k)²`` over Rademacher ``u_k`` (one ``Jᵀu`` each).
        """
        n = self._z.numel()
        if n <= probes:
            eye = torch.eye(n, dtype=self.r.dtype, device=self.r.device)
            return torch.stack([(self.jvp(e) ** 2).sum() for e in eye])
        gen = torch.Generator(device=self.r.device).manual_seed(int(seed))
        acc = torch.zeros_like(self._z).detach()
        for _ in range(probes):
            u = torch.randint(0, 2, (self.m,), generator=gen, device=self.r.device)
            acc += self.vjp(2.0 * u.to(self.r.dtype) - 1.0) ** 2
        return acc / probes
