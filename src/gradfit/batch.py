"""fit_batch(): B independent fits of one model as one batched computation.

The model is written for one problem and vectorised over the batch with
``torch.func.vmap`` (or declares that it handles a leading batch axis itself);
the batched Levenberg–Marquardt or L-BFGS of :mod:`gradfit.solvers.batched`
runs every problem at once, and the errors follow :func:`gradfit.fit`'s rules.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping

import numpy as np
import torch

from .likelihoods import Cauchy, Gaussian, Poisson, StudentT, get_likelihood, poisson_deviance_parts
from .objective import resolve_device
from .params import Param, ParamSpace
from .priors import Prior, Uniform
from .result import BatchResult
from .solvers import native
from .solvers.batched import (
    MESSAGES,
    SUCCESS_CODES,
    BatchedObjective,
    BatchedSolution,
    batched_lbfgs,
    batched_lm,
    hessian,
)
from .solvers.batched import jacobian as _jacobian
from .solvers.batched import jacobian_columns as _jacobian_columns
from .solvers.batched import normal_from_columns as _normal_from_columns
from .solvers.native import NotCompilable, poisson_nll_offset
from .solvers.native import refusal as native_refusal
from .uncertainty import FitWarning, covariance_from_hessian

__all__ = ["fit_batch"]

_DTYPES = {torch.float64: torch.float64, torch.float32: torch.float32,
           "float64": torch.float64, "float32": torch.float32,
           "double": torch.float64, "float": torch.float32}
_METHODS = ("auto", "lm", "lbfgs")
_ENGINES = ("torch", "numba", "auto")
_ON_NAN = ("raise", "skip")


class _ModelParams(dict):
    """The parameter dict handed to the model; a missing name gets a precise error."""

    def __missing__(self, key):
        raise ValueError(
            f"the model uses parameter {key!r}, which is not in params "
            f"(given: {', '.join(self.keys())})")


def _indices(idx: np.ndarray, limit: int = 10) -> str:
    idx = [int(i) for i in idx]
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return ", ".join(map(str, idx[:limit])) + more


# ------------------------------------------------------------------------- x tree
def _leaves(x, path="x"):
    """(path, array) for every array leaf of x (an array or a tuple/list/dict of them)."""
    if isinstance(x, torch.Tensor | np.ndarray):
        return [(path, x)]
    if isinstance(x, tuple | list) and x and not all(isinstance(v, int | float) for v in x):
        return [leaf for i, v in enumerate(x) for leaf in _leaves(v, f"{path}[{i}]")]
    if isinstance(x, dict):
        return [leaf for k, v in x.items() for leaf in _leaves(v, f"{path}[{k!r}]")]
    if isinstance(x, list | float | int) and not isinstance(x, bool):
        return [(path, np.asarray(x, dtype=np.float64))]
    return []


def _map_tree(x, fn, path="x"):
    """x with every array leaf replaced by ``fn(path, leaf)``."""
    if isinstance(x, torch.Tensor | np.ndarray):
        return fn(path, x)
    if isinstance(x, tuple | list) and x and not all(isinstance(v, int | float) for v in x):
        return type(x)(_map_tree(v, fn, f"{path}[{i}]") for i, v in enumerate(x))
    if isinstance(x, dict):
        return {k: _map_tree(v, fn, f"{path}[{k!r}]") for k, v in x.items()}
    if isinstance(x, list | float | int) and not isinstance(x, bool):
        return fn(path, np.asarray(x, dtype=np.float64))
    return x


def _to_tensor(path, a, dev, dt):
    if isinstance(a, torch.Tensor):
        if not a.is_floating_point():
            return a.to(device=dev)
        arr = a.detach()
    else:
        arr = np.asarray(a)
        if arr.dtype.kind not in "fiu":
            return a
        arr = torch.as_tensor(arr.astype(np.float64))
    bad = ~torch.isfinite(arr)
    if bool(bad.any()):
        first = tuple(int(i) for i in torch.nonzero(bad)[0]) if arr.ndim else ()
        raise ValueError(f"{path} contains {int(bad.sum())} non-finite value(s) (NaN or inf); "
                         f"first at {path}[{', '.join(map(str, first))}]")
    return arr.to(device=dev, dtype=dt)


# --------------------------------------------------------------------- parameters
def _parse_params(params, B, priors):
    """Split params into shared specs and per-problem initial values.

    Returns ``(space, values, per_problem)``: the template ParamSpace (problem 0's
    start), ``values[name]`` of shape ``(B, *shape)`` and the names given per problem.
    """
    if not isinstance(params, Mapping) or not params:
        raise TypeError("params must be a non-empty dict of name -> initial value or gradfit.Param")
    specs, values, per_problem = {}, {}, []
    for name, spec in params.items():
        p = spec if isinstance(spec, Param) else Param(spec)
        try:
            v = np.array(p.value.detach().cpu() if isinstance(p.value, torch.Tensor) else p.value,
                         dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"initial value of parameter {name!r} must be a number or an array "
                            f"of numbers, got {p.value!r}") from exc
        pr = priors.get(name) if priors else None
        if isinstance(pr, Uniform) and p.bounds is None:
            p = Param(p.value, bounds=(pr.lo, pr.hi), fixed=p.fixed)
        if v.ndim >= 1 and v.shape[0] == B:
            per_problem.append(name)
            vb = v
        else:
            # a writable copy, not a read-only broadcast view (torch warns on those)
            vb = np.broadcast_to(v, (B,) + v.shape).copy()
        if not np.all(np.isfinite(vb)):
            i = int(np.flatnonzero(~np.isfinite(vb).reshape(B, -1).all(1))[0])
            raise ValueError(f"initial value of parameter {name!r} for problem {i} is not "
                             f"finite")
        _check_bounds(name, p.bounds, vb)
        specs[name] = Param(vb[0], bounds=p.bounds, fixed=p.fixed)
        values[name] = vb
    return ParamSpace(specs), values, per_problem


def _check_bounds(name, bounds, vb):
    """Name the first problem whose initial value lies outside the bounds."""
    if not (isinstance(bounds, tuple | list) and len(bounds) == 2):
        return  # ParamSpace gives the error for malformed bounds
    shape = vb.shape[1:]
    try:
        lo = np.broadcast_to(np.asarray(-np.inf if bounds[0] is None else bounds[0],
                                        dtype=np.float64), shape)
        hi = np.broadcast_to(np.asarray(np.inf if bounds[1] is None else bounds[1],
                                        dtype=np.float64), shape)
    except (TypeError, ValueError):
        return
    out = ((vb < lo) | (vb > hi)).reshape(vb.shape[0], -1).any(1)
    if out.any():
        bad = np.flatnonzero(out)
        i = int(bad[0])
        raise ValueError(
            f"initial value of parameter {name!r} for problem {i} ({vb[i]!s}) is outside its "
            f"bounds ({bounds[0]}, {bounds[1]}); {bad.size} problem(s) are: {_indices(bad)}")


def _to_internal_batch(space: ParamSpace, theta0: np.ndarray) -> np.ndarray:
    """Per-problem ``space.to_internal`` (one call per distinct start)."""
    if not space.bounded:
        return theta0.copy()
    uniq, inverse = np.unique(theta0, axis=0, return_inverse=True)
    z = np.stack([space.to_internal(row) for row in uniq])
    return z[inverse.reshape(-1)]


# --------------------------------------------------------------------- covariance
def _batched_covariance(H: torch.Tensor, labels, rows: np.ndarray) -> np.ndarray:
    """Invert per-problem Hessians as :func:`covariance_from_hessian` does, batched.

    Problems whose Hessian is non-finite, singular or not positive definite go to
    :func:`covariance_from_hessian` one by one (NaN errors for the parameters
    concerned); its warnings are re-issued naming the problem.
    """
    b, n, _ = H.shape
    Hn = H.detach().cpu().double()
    finite = torch.isfinite(Hn).flatten(1).all(-1)
    Hf = torch.where(finite[:, None, None], Hn, torch.eye(n, dtype=Hn.dtype))
    d = torch.sqrt(torch.diagonal(Hf, dim1=1, dim2=2).abs())
    d = torch.where(d == 0, torch.ones_like(d), d)
    Hs = Hf / (d.unsqueeze(-1) * d.unsqueeze(-2))
    pos_diag = (torch.diagonal(Hf, dim1=1, dim2=2) > 0).all(-1)
    # First by Cholesky (20x cheaper than eigh at n = 7): where it succeeds and
    # 1/trace(Hs⁻¹) <= w_min clears the eigenvalue test's threshold (n·max(w_max, 1)
    # ·1e-12 <= n²·1e-12, as w_max <= trace(Hs) = n), the problem passes that test for
    # sure. The others (nearly singular, indefinite) take the eigenvalue route below.
    L, info = torch.linalg.cholesky_ex(Hs)
    inv = torch.cholesky_inverse(L)
    sure = finite & pos_diag & (info == 0) & (
        torch.diagonal(inv, dim1=1, dim2=2).sum(-1) * (n * n * 1e-12) < 1.0)
    cov = inv / (d.unsqueeze(-1) * d.unsqueeze(-2))
    good = sure.clone()
    rest = torch.nonzero(~sure).reshape(-1)
    if rest.numel():
        w, V = torch.linalg.eigh(Hs[rest])
        tol = torch.clamp(w.abs().amax(-1), min=1.0) * n * 1e-12
        good[rest] = finite[rest] & (w > tol.unsqueeze(-1)).all(-1) & pos_diag[rest]
        dr = d[rest]
        cov[rest] = (V / w.unsqueeze(-2)) @ V.transpose(1, 2) / (dr.unsqueeze(-1)
                                                                 * dr.unsqueeze(-2))
    cov = 0.5 * (cov + cov.transpose(1, 2))
    out = cov.numpy().copy()
    for i in np.flatnonzero(~good.numpy()):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out[i] = covariance_from_hessian(Hn[i].numpy(), labels)
        for wmsg in caught:
            warnings.warn(f"problem {int(rows[i])}: {wmsg.message}", FitWarning, stacklevel=4)
    return out


# --------------------------------------------------------------------------- main
def fit_batch(model, x, y, params, likelihood="gaussian", method="auto", *, priors=None,
              device="cpu", dtype=torch.float64, x_batched=None, vectorized=None,
              on_nan="raise", max_iter=None, tol=None, errors=True, chunk_size=None,
              options=None, jacobian=None, engine="torch") -> BatchResult:
    """Fit B independent problems of one model at once.

    Parameters
    ----------
    model : callable
        ``model(p, x)`` written for one problem (vectorised over the batch with
        ``torch.func.vmap``: no Python branching on tensor values, no in-place
        ops on inputs). With ``vectorized=True`` (or a ``model.vectorized = True``
        attribute) the model itself takes ``p[name]`` with a leading batch axis
        (and ``x`` as given) and returns ``(b, *y.shape[1:])``.
    x : array_like, tensor, or a tuple/dict of them
        Shared by all problems, or batched with a leading axis of length B.
    y : array_like
        Data with a leading batch axis: shape ``(B, ...)``.
    params : dict
        Name -> initial value or :class:`gradfit.Param`. A value with a leading
        axis of length B is per problem (shape ``(B, *shape)``); anything else is
        shared. Bounds and fixed masks are shared.
    likelihood : str or Likelihood
        ``'gaussian'`` (least squares when no sigma: errors scaled by RSS/(n−p)),
        ``gradfit.Gaussian(sigma=...)`` with a sigma shared by the problems,
        ``'poisson'``, ``gradfit.Cauchy(gamma=...)``, ``gradfit.StudentT(nu, scale=...)``
        (known scales only: a fitted nuisance scale is not batched).
    method : str
        ``'auto'`` (``'lm'`` where a least-squares form exists, else ``'lbfgs'``),
        ``'lm'`` or ``'lbfgs'``.
    priors : dict, optional
        Name -> prior (``gradfit.Normal``, ``Laplace``, ``Uniform``, ``LogNormal``,
        or a callable ``t -> log p``), the same for every problem.
    device, dtype :
        Where the batch runs and its float type.
    x_batched : bool, optional
        Whether ``x`` has a leading batch axis; ``None`` works it out from shapes.
    vectorized : bool, optional
        See ``model``.
    on_nan : {'raise', 'skip'}
        A problem with NaN or inf in ``y`` raises (naming it), or with ``'skip'`` is
        left out of the fit and reported as failed with NaN values.
    max_iter, tol, options :
        Iteration limit per problem; ``tol`` sets gtol, ftol and xtol together;
        ``options``: ``{"check_every": k, "memory": m, "pixelwise": bool}`` (how often
        the host checks convergence; the L-BFGS memory; whether autodiff may take the
        whole Jacobian of an elementwise model from one backward pass, default True:
        used only where it agrees with the n-pass Jacobian on the first problems).
    errors : bool
        Compute the covariances (default True).
    chunk_size : int, optional
        Problems iterated at once (default 16384 on a GPU, 512 on a CPU): a finished
        problem leaves this working set and a waiting one takes its place; the
        starting values and the errors are also computed this many at a time.
    jacobian : callable, optional
        ``jacobian(p, x) -> (mu, {name: d mu / d p[name]})`` for one problem (vectorised
        like ``model``; batched itself with ``vectorized=True``), each derivative of
        shape ``mu.shape + p[name].shape``: the model's exact derivatives, as in
        :func:`gradfit.fit`. Used by ``'lm'`` and the Gauss-Newton covariance instead
        of autodiff columns, which cost about ten model evaluations on small models;
        checked once against autodiff on the first problem.
    engine : {'torch', 'numba', 'auto'}
        What runs the Levenberg–Marquardt iterations. ``'torch'`` (default): batched
        tensors, any model, likelihood, bounds and priors, CPU or GPU. ``'numba'``: the
        model is traced once and compiled with its forward-mode derivatives into one
        kernel that fits each problem in registers and cache, on all cores
        (:mod:`gradfit.solvers.native`; ``pip install 'gradfit[native]'``); it takes
        scalar parameters, a shared ``x``, a model elementwise in its points, the
        Gaussian or Poisson likelihood, bounds, Normal priors, float64 on the CPU, and
        refuses anything else with the reason. The first call with a new model
        compiles for a few seconds; the machine code is cached on disk
        (``$GRADFIT_CACHE_DIR`` or ``~/.cache/gradfit``). Its iterations are the torch
        engine's, so the answers agree to the tolerances. ``'auto'``: ``'numba'``
        where it is installed and takes the problem, else ``'torch'``.

    Returns
    -------
    BatchResult
    """
    t0 = time.perf_counter()
    call = dict(model=model, x=x, y=y, params=params, likelihood=likelihood, method=method,
                priors=priors, device=device, dtype=dtype, x_batched=x_batched,
                vectorized=vectorized, on_nan=on_nan, max_iter=max_iter, tol=tol,
                errors=errors, chunk_size=chunk_size, options=options, jacobian=jacobian)
    jac_how = None  # how the residual Jacobian is made (least-squares forms only)
    if not callable(model):
        raise TypeError(f"model must be a callable model(p, x), not {type(model).__name__}")
    dev = resolve_device(device)
    try:
        dt = _DTYPES[dtype]
    except (KeyError, TypeError):
        raise ValueError(f"unsupported dtype {dtype!r}; choose 'float64' or 'float32'") from None
    if not isinstance(method, str) or method.lower() not in _METHODS:
        raise ValueError(f"unknown method {method!r} for fit_batch; choose one of: "
                         f"{', '.join(_METHODS)}")
    method = method.lower()
    if engine not in _ENGINES:
        raise ValueError(f"unknown engine {engine!r} for fit_batch; choose one of: "
                         f"{', '.join(_ENGINES)}")
    if on_nan not in _ON_NAN:
        raise ValueError(f"on_nan must be one of: {', '.join(_ON_NAN)}; got {on_nan!r}")
    if vectorized is None:
        vectorized = bool(getattr(model, "vectorized", False))
    lik = get_likelihood(likelihood)
    if lik.nuisance:
        raise ValueError(
            f"fit_batch does not fit the nuisance scale ({', '.join(lik.nuisance)}) of the "
            f"{lik.name} likelihood; give it a known value, e.g. gradfit.Cauchy(gamma=1.0), "
            "or use gradfit.fit per problem")
    opts = dict(options or {})

    # ---------------------------------------------------------------- data
    if isinstance(y, torch.Tensor):
        y_np = y.detach().cpu().numpy().astype(np.float64)
    else:
        try:
            y_np = np.asarray(y, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"y must be an array of numbers: {exc}") from exc
    if y_np.ndim < 2:
        raise ValueError(
            f"y must have a leading batch axis and the data of one problem after it, shape "
            f"(B, ...); got shape {y_np.shape} (for one problem use gradfit.fit)")
    B = int(y_np.shape[0])
    if B == 0:
        raise ValueError(f"y has shape {y_np.shape}: B = 0 problems; give at least one")
    if y_np[0].size == 0:
        raise ValueError(f"y has shape {y_np.shape}: each problem has no data")
    finite = np.isfinite(y_np.reshape(B, -1)).all(1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        if on_nan == "raise":
            raise ValueError(
                f"y contains NaN or inf in {bad.size} of {B} problem(s): {_indices(bad)}; "
                "fix or drop them, or pass on_nan='skip' to leave them out of the fit")
        if bad.size == B:
            raise ValueError(f"y contains NaN or inf in all {B} problems; nothing to fit")
    keep = np.flatnonzero(finite)
    try:
        lik.check_data(y_np[keep])
    except ValueError:
        for i in keep:
            try:
                lik.check_data(y_np[i])
            except ValueError as exc:
                raise ValueError(f"problem {int(i)}: {exc}") from None
        raise

    prior_map = dict(priors or {})
    if priors is not None and not isinstance(priors, Mapping):
        raise TypeError("priors must be a dict of name -> prior for fit_batch (a whole-dict "
                        "log_prior(p) callable is not batched)")
    space, values, per_problem = _parse_params(params, B, prior_map)
    for name, pr in prior_map.items():
        if name not in space.names:
            raise ValueError(f"prior given for unknown parameter {name!r}; parameters are: "
                             f"{', '.join(space.names)}")
        if not (isinstance(pr, Prior) or callable(pr)):
            raise TypeError(f"prior for {name!r} must be a gradfit prior or a callable "
                            "t -> log p")
    n = space.n_free
    names = space.names

    # x: shared or batched
    x_leaves = _leaves(x)
    lead = {p: (a.shape[0] if getattr(a, "ndim", 0) >= 1 else None) for p, a in x_leaves}
    if x_batched:
        wrong = {p: s for p, s in lead.items() if s != B}
        if not x_leaves or wrong:
            p, s = next(iter(wrong.items())) if wrong else ("x", None)
            raise ValueError(
                f"x_batched=True but {p} has a leading axis of length {s}, while y has a batch "
                f"axis of B = {B}; the batch axes of x and y must agree")
    xt_all = _map_tree(x, lambda p, a: _to_tensor(p, a, dev, dt))

    # ------------------------------------------------- one problem, checked
    y0 = torch.tensor(y_np[keep[0]], device=dev, dtype=dt)  # a copy: y may be read-only
    try:
        lik.prepare(y0)
    except ValueError as exc:
        raise ValueError(f"{exc} (in fit_batch a known scale is shared by all problems and "
                         "has the shape of one problem's data)") from None
    ydata_shape = tuple(y_np.shape[1:])

    fixed_shared = {}
    for name in names:
        if name not in per_problem:
            fixed_shared[name] = torch.as_tensor(values[name][0], device=dev, dtype=dt)
    free_idx = {}
    k = 0
    for name in names:
        fr = space.free[name].reshape(-1)
        nf = int(fr.sum())
        free_idx[name] = (k, nf, torch.as_tensor(np.flatnonzero(fr), device=dev))
        k += nf
    free_names = [nm for nm in names if free_idx[nm][1]]

    def unflatten(theta, pp):
        """(b, n) free vector + per-problem values (b, *shape) -> dict of (b, *shape)."""
        b = theta.shape[0]
        out = {}
        for name in names:
            shape = space.shapes[name]
            size = int(np.prod(shape)) if shape else 1
            k0, nf, fi = free_idx[name]
            if nf == size:
                t = theta[:, k0:k0 + nf]
            else:
                base = pp[name] if name in pp else fixed_shared[name].expand(b, *shape)
                t = base.reshape(b, size)
                if nf:
                    t = t.index_copy(1, fi, theta[:, k0:k0 + nf])
            out[name] = t.reshape((b,) + tuple(shape))
        return out

    def single(p, xx):
        return model(_ModelParams(p), xx)

    def make_predict(batched_x: bool):
        if vectorized:
            return lambda P, xx: model(_ModelParams(P), xx)
        vm = torch.func.vmap(single, in_dims=(0, 0 if batched_x else None))
        return vm

    def try_shape(batched_x: bool):
        """Evaluate problem ``keep[0]``'s model; its output, or the exception."""
        i = int(keep[0])
        th = torch.as_tensor(_theta0_rows([i]), device=dev, dtype=dt)
        pp = {nm: torch.as_tensor(values[nm][[i]], device=dev, dtype=dt) for nm in per_problem}
        P = unflatten(th, pp)
        xx = _map_tree(xt_all, lambda p, a: a[i:i + 1] if isinstance(a, torch.Tensor) else a) \
            if batched_x else xt_all
        try:
            with torch.no_grad():
                if vectorized:
                    mu = model(_ModelParams(P), xx)
                elif batched_x:
                    mu = single({kk: v[0] for kk, v in P.items()},
                                _map_tree(xx, lambda p, a: a[0]
                                          if isinstance(a, torch.Tensor) else a))
                    mu = mu.unsqueeze(0) if isinstance(mu, torch.Tensor) else mu
                else:
                    mu = single({kk: v[0] for kk, v in P.items()}, xx)
                    mu = mu.unsqueeze(0) if isinstance(mu, torch.Tensor) else mu
        except ValueError as exc:
            if "not in params" in str(exc):
                raise
            return exc
        except (RuntimeError, IndexError, TypeError) as exc:
            return exc
        return mu

    def _theta0_rows(rows):
        out = np.empty((len(rows), n))
        for name in names:
            k0, nf, fi = free_idx[name]
            if nf:
                v = values[name][rows].reshape(len(rows), -1)
                out[:, k0:k0 + nf] = v[:, space.free[name].reshape(-1)]
        return out

    def ok_shape(mu):
        return isinstance(mu, torch.Tensor) and tuple(mu.shape) == (1,) + ydata_shape

    if x_batched is None:
        all_lead = bool(x_leaves) and all(s == B for s in lead.values())
        mu_s = try_shape(False)
        mu_b = try_shape(True) if all_lead else None
        if ok_shape(mu_s) and ok_shape(mu_b):
            raise ValueError(
                f"cannot tell whether x is shared or batched: x's leading axis has the length "
                f"of the batch (B = {B}) and the model works either way; pass "
                "x_batched=True or x_batched=False")
        x_batched = ok_shape(mu_b)
        mu0 = mu_b if x_batched else mu_s
        if not ok_shape(mu0):
            hint = ""
            shapes = sorted({s for s in lead.values() if s is not None})
            if shapes and B not in shapes and any(getattr(a, "ndim", 0) >= 2
                                                  for _, a in x_leaves):
                hint = (f"; if x is batched, its leading axis ({shapes[0]}) must equal y's "
                        f"batch axis (B = {B})")
            _model_output_error(mu0, ydata_shape, hint)
    else:
        x_batched = bool(x_batched)
        mu0 = try_shape(x_batched)
        if not ok_shape(mu0):
            _model_output_error(mu0, ydata_shape, "")
    if mu0.dtype != dt:
        raise TypeError(f"the model returned dtype {mu0.dtype} but the fit runs in {dt}; build "
                        "tensors from the inputs (or pass dtype=...)")
    _check_used(model, vectorized, x_batched, xt_all, keep, values, space, dev, dt)
    predict = make_predict(x_batched)
    if jacobian is not None:
        if not callable(jacobian):
            raise TypeError(f"jacobian must be a callable jacobian(p, x) -> (model, {{name: "
                            f"d model / d p[name]}}), not {type(jacobian).__name__}")
        if not lik.has_residuals:
            raise ValueError(f"jacobian= serves least squares ('lm'); the {lik.name} "
                             "likelihood has no residual form")
        if vectorized:
            predict_jac = lambda P, xx: jacobian(_ModelParams(P), xx)  # noqa: E731
        else:
            predict_jac = torch.func.vmap(lambda p, xx: jacobian(_ModelParams(p), xx),
                                          in_dims=(0, 0 if x_batched else None))

    # per-problem data tensors (cut down with the working set)
    x_paths = [p for p, a in x_leaves] if x_batched else []

    def pack(rows):
        ridx = torch.as_tensor(rows, device=dev)
        # all problems, in order: y's own memory (a float64 CPU tensor shares it; torch
        # warns on a read-only array, so that one is copied)
        whole = y_np.flags.writeable and len(rows) == B and \
            bool(np.all(np.asarray(rows) == np.arange(B)))
        Yb = torch.as_tensor(y_np if whole else y_np[rows], device=dev, dtype=dt)
        xs = [a.index_select(0, ridx) for a in _batched_leaf_tensors(xt_all)] if x_batched \
            else []
        pp = [torch.as_tensor(values[nm][rows], device=dev, dtype=dt) for nm in per_problem]
        return (Yb, *xs, *pp)

    def unpack(data):
        Yb = data[0]
        nx = len(x_paths)
        xs = list(data[1:1 + nx])
        pp = dict(zip(per_problem, data[1 + nx:]))
        if x_batched:
            it = iter(xs)
            xx = _map_tree(xt_all, lambda p, a: next(it) if isinstance(a, torch.Tensor) else a)
        else:
            xx = xt_all
        return Yb, xx, pp

    nll_one = torch.func.vmap(lambda yy, mu: lik.nll(yy, mu, {}))
    has_res = lik.has_residuals and all(getattr(pr, "residual_form", False)
                                        for pr in prior_map.values())

    def log_prior(P):
        total = 0.0
        for name, pr in prior_map.items():
            fn = pr.log_prob if isinstance(pr, Prior) else pr
            total = total + torch.func.vmap(fn)(P[name])
        return total

    def theta_fns():
        def mu_of(theta, data):
            Yb, xx, pp = unpack(data)
            P = unflatten(theta, pp)
            return Yb, P, predict(P, xx)

        def lik_res(theta, data):
            Yb, P, mu = mu_of(theta, data)
            return lik.residuals(Yb, mu).reshape(Yb.shape[0], -1)

        def res(theta, data):
            Yb, P, mu = mu_of(theta, data)
            r = lik.residuals(Yb, mu).reshape(Yb.shape[0], -1)
            if prior_map:
                r = torch.cat([r] + [torch.func.vmap(pr.residuals)(P[name])
                                     .reshape(Yb.shape[0], -1)
                                     for name, pr in prior_map.items()], dim=1)
            return r

        def val(theta, data):
            Yb, P, mu = mu_of(theta, data)
            f = nll_one(Yb, mu)
            return f - log_prior(P) if prior_map else f

        # RSS for the error scale comes from the likelihood's residuals alone, even
        # where a prior without a residual form leaves the whole objective without one
        return (res if has_res else None), val, (lik_res if lik.has_residuals else None)

    res_t, val_t, lik_res_t = theta_fns()
    to_ext = space.to_external
    res_z = (lambda z, d: res_t(to_ext(z), d)) if res_t is not None else None
    res_jac_t = normal_z = hess_fn = None
    ndata = int(np.prod(ydata_shape))
    if res_t is not None:
        def prior_res_jac(theta, pp, b):
            def prior_res(th):
                Q = unflatten(th, pp)
                return torch.cat([torch.func.vmap(pr.residuals)(Q[nm]).reshape(b, -1)
                                  for nm, pr in prior_map.items()], dim=1)
            return _jacobian(prior_res, theta, n)

        def mu_cols(theta, data, how):
            """``(Yb, pp, mu (b, m), [dmu/dtheta_j (b, m)] * n)``.

            ``how``: ``'model'`` (the model's ``jacobian=``), ``'pixelwise'`` (one
            backward pass, see :func:`_pixelwise_columns`) or ``'columns'`` (n
            double-backward passes). Autodiff runs through the model alone: the
            likelihood's residual form (about 15 operations for Poisson's deviance)
            stays out of the backward passes, which cost in proportion to their graph.
            """
            Yb, xx, pp = unpack(data)
            b = theta.shape[0]
            if how == "columns":
                mu, cols = _jacobian_columns(
                    lambda th: predict(unflatten(th, pp), xx).reshape(b, -1), theta, n)
                return Yb, pp, mu, cols
            if how == "pixelwise":
                mu, cols = _pixelwise_columns(predict, unflatten(theta, pp), xx,
                                              free_names, ydata_shape)
                return Yb, pp, mu, cols
            P = unflatten(theta, pp)
            mu, dmu = predict_jac(P, xx)
            _check_jacobian_output(mu, dmu, b, ydata_shape, space, dt)
            cols = []
            for name in names:
                k0, nf, fi = free_idx[name]
                if nf:
                    D = dmu[name].reshape(b, ndata, -1)
                    D = D if nf == D.shape[-1] else D.index_select(2, fi)
                    cols.extend(D.unbind(2))
            return Yb, pp, mu.reshape(b, -1), cols

        def residual_and_slope(Yb, mu):
            """``r (b, m)``, and ``dr/dmu`` as ``(weight, sign)``: ``dr/dmu = sign * weight``.

            Every built-in residual form is elementwise in mu, so dr/dmu is diagonal.
            Gaussian's is ``-1/sigma``, known without autodiff (and ``-1`` costs nothing).
            """
            b = Yb.shape[0]
            if isinstance(lik, Gaussian):
                r = lik.residuals(Yb, mu.reshape(Yb.shape)).reshape(b, -1)
                s = lik.sigma_tensor
                if s is None:
                    return r, None, -1.0
                w = torch.reciprocal(s)
                w = w.reshape(-1) if w.numel() == ndata else w.reshape(())
                return r, w, -1.0
            if type(lik) is Poisson:
                r, dr = _poisson_residual_and_slope(Yb, mu.reshape(Yb.shape))
                return r.reshape(b, -1), dr.reshape(b, -1), 1.0
            with torch.enable_grad():
                mu_leaf = mu.detach().reshape(Yb.shape).requires_grad_(True)
                r = lik.residuals(Yb, mu_leaf).reshape(b, -1)
                (dr,) = torch.autograd.grad(r.sum(), mu_leaf)
            return r.detach(), dr.reshape(b, -1), 1.0

        def res_jac_t(theta, data, how=None):
            """Residuals and ``dr/dtheta (b, m, n)``: ``dr/dmu · dmu/dtheta``."""
            Yb, pp, mu, cols = mu_cols(theta, data, how or jac_how)
            b = Yb.shape[0]
            r, w, sign = residual_and_slope(Yb, mu)
            Jt = torch.stack(cols, dim=1) * sign
            if w is not None:
                Jt = Jt * (w.unsqueeze(-2) if w.dim() == 2 else w)
            J = Jt.transpose(1, 2)
            if prior_map:
                rp, Jp = prior_res_jac(theta, pp, b)
                r, J = torch.cat([r, rp], dim=1), torch.cat([J, Jp], dim=1)
            return r, J

        def normal_t(theta, data):
            """``(½|r|², JᵀJ, Jᵀr)`` without forming J (see ``normal_from_columns``)."""
            Yb, pp, mu, cols = mu_cols(theta, data, jac_how)
            r, w, sign = residual_and_slope(Yb, mu)
            cost, A, g = _normal_from_columns(cols, r, w, sign)
            if prior_map:
                rp, Jp = prior_res_jac(theta, pp, Yb.shape[0])
                Jpt = Jp.transpose(1, 2)
                cost = cost + 0.5 * (rp * rp).sum(-1)
                A = A + Jpt @ Jp
                g = g + (Jpt @ rp.unsqueeze(-1)).squeeze(-1)
            return cost, A, g

        def normal_z(z, data):
            if not space.bounded:
                return normal_t(z, data)
            th, dth = space.external_slope(z)  # chain rule through theta(z)
            cost, A, g = normal_t(th, data)
            return cost, A * dth.unsqueeze(-1) * dth.unsqueeze(-2), g * dth

        if jacobian is not None:
            jac_how = "model"
            _check_jacobian_values(res_jac_t, res_t, pack, keep, _theta0_rows, space, dev, dt)
            if errors and not prior_map and type(lik) in _ELEMENTWISE_NLL:
                def hess_t(theta, data):
                    return _hessian_from_model_jacobian(
                        lambda th: mu_cols(th, data, "model"), nll_one, data[0], theta)
                # its derivatives of the model's Jacobian must be autodiff's (a jacobian
                # computed outside torch's graph would give a wrong second term)
                rows0 = keep[:4]
                d0 = pack(rows0)
                t0_ = torch.as_tensor(_theta0_rows(list(rows0)), device=dev, dtype=dt)
                H_ref = hessian(lambda th: val_t(th, d0), t0_, n)
                try:
                    H_new = hess_t(t0_, d0)
                    ok = bool(torch.isfinite(H_new).all()) and float(
                        (H_new - H_ref).abs().amax()) <= 1e-8 * float(H_ref.abs().amax())
                except RuntimeError:
                    ok = False
                hess_fn = hess_t if ok else None
        else:
            jac_how = "columns"
            # (engine='numba' fits without it, or not at all)
            if opts.get("pixelwise", True) and engine != "numba" and \
                    _pixelwise_possible(vectorized, space):
                if _pixelwise_agrees(res_jac_t, pack, keep, _theta0_rows, space, dev, dt):
                    jac_how = "pixelwise"

    def val_z(z, d):
        return val_t(to_ext(z), d)

    if method == "auto":
        method = "lm" if has_res else "lbfgs"
    elif method == "lm" and not has_res:
        raise ValueError(
            f"method 'lm' needs a least-squares form; the {lik.name} likelihood"
            f"{' with these priors' if prior_map else ''} has none: use method='lbfgs'")

    gauss_newton = isinstance(lik, Gaussian) and has_res
    tol_kw = {}
    if tol is not None:
        tol_kw = {"gtol": float(tol), "ftol": float(tol), "xtol": float(tol)}
    if chunk_size is None:
        # a GPU is saturated well before 16384 problems of a few hundred points each,
        # and a bounded working set keeps the Jacobian graph's memory in check
        chunk_size = 16384 if dev.type == "cuda" else 512
    chunk_size = max(1, int(chunk_size))

    theta0_all = _theta0_rows(list(range(B)))
    z0_all = _to_internal_batch(space, theta0_all) if n else theta0_all
    nK = keep.size
    theta_out = np.full((B, n), np.nan)
    fun_out = np.full(B, np.nan)
    code_out = np.zeros(B, dtype=np.int64)
    nit_out = np.zeros(B, dtype=np.int64)
    nfev_out = np.zeros(B, dtype=np.int64)
    cov_out = np.full((B, n, n), np.nan)
    warn_dof = False
    data_all = pack(keep)
    z0_keep = torch.as_tensor(z0_all[keep], device=dev, dtype=dt)

    def part(c0, size):
        return tuple(d[c0:c0 + size] for d in data_all)

    kernel = None
    if engine != "torch":
        why = native_refusal(lik, priors=prior_map, free=free_names, space=space, device=dev,
                             dtype=dt, x_batched=x_batched, vectorized=vectorized)
        if why is None and not (n and method == "lm"):
            why = ("it runs Levenberg–Marquardt (method 'lm'), and this fit is "
                   f"{method!r}" + (" with no free parameters" if not n else ""))
        native_priors = native.prior_arrays(prior_map, free_names) if why is None else None
        if why is None:
            try:
                kernel = _native_fit(model, space, values, keep, xt_all, ydata_shape, lik,
                                     free_idx, normal_t, val_t, pack, dev, dt, native_priors)
            except NotCompilable as exc:
                why = str(exc)
        if why is not None and engine == "numba":
            raise ValueError(f"engine='numba' cannot fit this: {why}")
    # every start checked first (a chunk at a time in torch)
    f0_parts = []
    # (the compiled engine's kernel tests its starts itself: code -2, below)
    for c0 in range(0, nK, chunk_size) if kernel is None else ():
        with torch.no_grad():
            f0 = val_z(z0_keep[c0:c0 + chunk_size], part(c0, chunk_size))
        badf = ~torch.isfinite(f0)
        if bool(badf.any()):
            _bad_starts(keep[c0 + torch.nonzero(badf).reshape(-1).cpu().numpy()])
        f0_parts.append(f0)
    # one solver run over all problems, chunk_size of them iterated at a time: a
    # finished problem's place goes to a waiting one (no per-chunk tail of iterations)
    obj = BatchedObjective(res_z, val_z, n, data_all, dev, dt, normal_fun=normal_z)
    check = int(opts.get("check_every", 2 if method == "lm" else 8))
    sol = None
    if kernel is not None:
        reuse = errors and gauss_newton
        sol, P_end = _native_solve(kernel, space, values, keep, y_np, z0_all[keep], max_iter,
                                   tol_kw, reuse and not space.bounded, dev, dt, native_priors)
        if bool((sol.code == -2).any()):
            _bad_starts(keep[torch.nonzero(sol.code == -2).reshape(-1).cpu().numpy()])
    elif n == 0:
        z_all = z0_keep
        code_all = torch.full((nK,), 4, dtype=torch.int64)
        nit_all = nfev_all = torch.zeros(nK, dtype=torch.int64)
    elif method == "lm":
        # unbounded: z is theta, and the solver's last JᵀJ serves the errors
        reuse = errors and gauss_newton and not space.bounded
        sol = batched_lm(obj, z0_keep, max_iter=200 if max_iter is None else int(max_iter),
                         check_every=check, keep_jtj=reuse, working_set=chunk_size, **tol_kw)
    else:
        sol = batched_lbfgs(obj, z0_keep, max_iter=1000 if max_iter is None else int(max_iter),
                            memory=int(opts.get("memory", 10)), check_every=check,
                            working_set=chunk_size, **tol_kw)
    if sol is not None:
        z_all, code_all, nit_all, nfev_all = sol.z, sol.code, sol.nit, sol.nfev
    if kernel is None and jac_how == "pixelwise" and n and nK:
        # checked at the starts; a coupling across points that only switches on
        # elsewhere (torch.where on a parameter) would make the one-pass Jacobian
        # wrong there: check again at the answers, and refit without it if it is
        idx = np.unique(np.linspace(0, nK - 1, min(nK, 4)).round().astype(int))
        idx_t = torch.as_tensor(idx, device=dev)
        theta_end = to_ext(z_all[idx_t]).detach()
        data_end = tuple(d[idx_t] for d in data_all)
        if not _pixelwise_agrees_at(res_jac_t, theta_end, data_end, dt):
            warnings.warn("fit_batch: the model's points are coupled at the fitted values "
                          "(the one-pass Jacobian disagreed with the per-parameter one); "
                          "refitting with options['pixelwise'] = False", FitWarning,
                          stacklevel=2)
            call["options"] = dict(opts, pixelwise=False)
            return fit_batch(**call)
    # Gaussian without priors: the LM's ½|r|² at its last point is the nll there
    # (and 2x it the RSS), so neither needs another model evaluation
    ls_cost = method == "lm" and n and isinstance(lik, Gaussian) and not prior_map
    post = chunk_size if kernel is None else max(chunk_size, 8192)  # (no graph to hold)
    native_hess = kernel is not None and kernel.has_hessian  # (Poisson)

    def y_rows(c0, rows):
        """y of the kept problems ``rows`` (a view where every problem is kept)."""
        return y_np[c0:c0 + rows.size] if nK == B else y_np[rows]
    for k_part, c0 in enumerate(range(0, nK, post)):
        rows = keep[c0:c0 + post]
        sl = slice(c0, c0 + rows.size)
        data = part(c0, rows.size)
        z, code, nit, nfev = z_all[sl], code_all[sl], nit_all[sl], nfev_all[sl]
        H_end = sol.jtj[sl] if sol is not None and sol.jtj is not None else None
        theta = to_ext(z).detach()
        if ls_cost:
            fun_t = sol.fun[sl]
        elif native_hess and not prior_map:
            # Poisson's nll = ½ deviance + sum(lgamma(y + 1) - y log y + y)
            const = poisson_nll_offset(y_rows(c0, rows).reshape(rows.size, -1))
            fun_t = sol.fun[sl] + torch.as_tensor(const, device=dev, dtype=dt)
        elif n == 0:
            fun_t = f0_parts[k_part]
        else:
            with torch.no_grad():
                fun_t = val_t(theta, data)
        if errors and n:
            if gauss_newton:
                if H_end is not None:
                    H = H_end
                else:  # (gauss_newton implies residuals, hence normal_t)
                    with torch.no_grad():
                        H = normal_t(theta, data)[1]
            elif native_hess:
                H = torch.as_tensor(kernel.hessians(P_end[sl],
                                                    y_rows(c0, rows).reshape(rows.size, -1),
                                                    native_priors),
                                    device=dev, dtype=dt)
            elif hess_fn is not None:
                H = hess_fn(theta, data)
            else:
                H = hessian(lambda th, d=data: val_t(th, d), theta, n)
            cov = _batched_covariance(H, space.labels, rows)
            if lik.scale_errors:
                dof = ndata - n
                if dof <= 0:
                    warn_dof = True
                    cov = np.full_like(cov, np.nan)
                else:
                    if ls_cost:
                        rss = 2.0 * fun_t.cpu().numpy().astype(np.float64)
                    else:
                        with torch.no_grad():
                            rl = lik_res_t(theta, data)
                        rss = (rl * rl).sum(-1).cpu().numpy().astype(np.float64)
                    cov = cov * (rss / dof)[:, None, None]
            cov_out[rows] = cov
        theta_out[rows] = theta.cpu().numpy()
        fun_out[rows] = fun_t.cpu().numpy()
        code_out[rows] = code.cpu().numpy()
        nit_out[rows] = nit.cpu().numpy()
        nfev_out[rows] = nfev.cpu().numpy() + (1 if errors and n and H_end is None else 0)
    if warn_dof:
        warnings.warn(
            f"least squares with {ndata} points and {n} free parameters leaves no degrees of "
            "freedom to estimate sigma; errors are NaN", FitWarning, stacklevel=2)

    success = np.isin(code_out, list(SUCCESS_CODES)) & np.isfinite(fun_out)
    # one message per problem, looked up per status (a Python test per problem cost
    # ~0.1 s at B = 1e5)
    kind = np.where(~finite, 0, np.where(np.isfinite(fun_out), 2, 1))
    span = int(np.abs(code_out).max()) + 1 if B else 1
    keys, inverse = np.unique(kind * (2 * span + 1) + code_out + span, return_inverse=True)
    texts = []
    for k, c in zip(keys // (2 * span + 1), keys % (2 * span + 1) - span):
        if k == 0:
            texts.append("skipped: y contains NaN or inf (on_nan='skip')")
        elif k == 1:
            texts.append(f"the objective is not finite at the end "
                         f"({MESSAGES.get(int(c), 'unknown')})")
        else:
            texts.append(MESSAGES.get(int(c), "unknown status"))
    messages = [texts[j] for j in inverse.reshape(-1)]
    success &= finite

    at_bounds = ()
    if space.bounded:
        both = np.isfinite(space.theta_lo) & np.isfinite(space.theta_hi)
        span = np.where(both, space.theta_hi - space.theta_lo, 1.0)
        tolb = 1e-6 * np.maximum(span, np.abs(theta_out) + 1e-300)
        near = (np.abs(theta_out - space.theta_lo) <= tolb) | \
            (np.abs(space.theta_hi - theta_out) <= tolb)
        at_bounds = tuple(tuple(lab for lab, f in zip(space.labels, row) if f) for row in near)
        hit = np.flatnonzero(near.any(1))
        if hit.size and errors:
            warnings.warn(
                f"in {hit.size} problem(s) ({_indices(hit)}) a parameter ended at a bound; "
                "its errors from the Hessian are not reliable there", FitWarning, stacklevel=2)

    err_flat = np.sqrt(np.einsum("bii->bi", cov_out)) if n else np.zeros((B, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = err_flat
        corr = cov_out / (sd[:, :, None] * sd[:, None, :])
    params_out, errors_out = {}, {}
    for name in names:
        shape = space.shapes[name]
        k0, nf, _ = free_idx[name]
        val = np.array(values[name], dtype=np.float64).reshape(B, -1).copy()
        err = np.zeros_like(val)
        fr = space.free[name].reshape(-1)
        val[:, fr] = theta_out[:, k0:k0 + nf]
        err[:, fr] = err_flat[:, k0:k0 + nf]
        val[~finite] = np.nan
        err[~finite] = np.nan
        params_out[name] = val.reshape((B,) + tuple(shape))
        errors_out[name] = err.reshape((B,) + tuple(shape))
    return BatchResult(
        params=params_out, errors=errors_out, cov=cov_out, corr=corr,
        names=list(space.labels), fun=fun_out, success=success, messages=messages,
        method=method, nit=nit_out, nfev=nfev_out, time_s=time.perf_counter() - t0,
        ndata=ndata, dof=ndata - n, at_bounds=at_bounds,
        engine="numba" if kernel is not None else "torch")


def _batched_leaf_tensors(xt):
    return [a for _, a in _leaves(xt) if isinstance(a, torch.Tensor)]


def _model_output_error(mu, ydata_shape, hint):
    if isinstance(mu, Exception):
        raise ValueError(f"the model failed on problem 0's parameters and x: "
                         f"{type(mu).__name__}: {mu}{hint}") from mu
    if not isinstance(mu, torch.Tensor):
        raise TypeError(f"the model returned {type(mu).__name__}; it must return a torch tensor "
                        "built with torch operations")
    raise ValueError(f"the model returned shape {tuple(mu.shape[1:])} for one problem but "
                     f"each problem's y has shape {ydata_shape}{hint}")


def _check_used(model, vectorized, x_batched, xt, keep, values, space, dev, dt):
    """Every free parameter must reach the model's output (as :func:`gradfit.fit` checks)."""
    i = int(keep[0])
    leaves = {}
    for nm in space.names:
        v = torch.as_tensor(values[nm][i], device=dev, dtype=dt)
        leaves[nm] = (v.unsqueeze(0) if vectorized else v).requires_grad_(
            bool(space.free[nm].any()))
    if vectorized:
        xx = _map_tree(xt, lambda p, a: a[i:i + 1] if isinstance(a, torch.Tensor) else a) \
            if x_batched else xt
    else:
        xx = _map_tree(xt, lambda p, a: a[i] if isinstance(a, torch.Tensor) else a) \
            if x_batched else xt
    free = [nm for nm in space.names if leaves[nm].requires_grad]
    with torch.enable_grad():
        mu = model(_ModelParams(leaves), xx)
        grads = torch.autograd.grad(mu.sum(), [leaves[nm] for nm in free], allow_unused=True) \
            if free and mu.requires_grad else [None] * len(free)
    unused = [nm for nm, g in zip(free, grads) if g is None]
    if unused:
        raise ValueError(
            f"parameter(s) {', '.join(map(repr, unused))} are not used by the model; remove "
            "them or fix them with gradfit.Param(value, fixed=True)")


def _check_jacobian_output(mu, dmu, b, ydata_shape, space, dt):
    """The shapes a model-supplied jacobian must return (a clear error otherwise)."""
    if not isinstance(mu, torch.Tensor) or tuple(mu.shape) != (b,) + ydata_shape:
        got = tuple(mu.shape[1:]) if isinstance(mu, torch.Tensor) else type(mu).__name__
        raise ValueError(f"jacobian returned a model of shape {got} for one problem; each "
                         f"problem's y has shape {ydata_shape}")
    if not isinstance(dmu, Mapping):
        raise TypeError(f"jacobian must return (mu, dict of derivatives), got "
                        f"{type(dmu).__name__} as the second item")
    for name in space.names:
        if not space.free[name].any():
            continue
        if name not in dmu:
            raise ValueError(f"jacobian returned no derivative for the free parameter {name!r}")
        D = dmu[name]
        want = (b,) + ydata_shape + tuple(space.shapes[name])
        if not isinstance(D, torch.Tensor) or tuple(D.shape) != want or D.dtype != dt:
            got = (tuple(D.shape[1:]), D.dtype) if isinstance(D, torch.Tensor) \
                else type(D).__name__
            raise ValueError(
                f"jacobian: the derivative for {name!r} is {got} for one problem; expected "
                f"shape {want[1:]} (model shape + parameter shape) and dtype {dt}")


def _check_jacobian_values(res_jac_t, res_t, pack, keep, theta0_rows, space, dev, dt):
    """A model-supplied Jacobian must agree with autodiff on the first problem."""
    rows = keep[:1]
    data = pack(rows)
    theta = torch.as_tensor(theta0_rows(list(rows)), device=dev, dtype=dt)
    with torch.no_grad():
        r1, J1 = res_jac_t(theta, data)
    r0, J0 = _jacobian(lambda th: res_t(th, data), theta, space.n_free)
    scale = float(J0.abs().amax()) if J0.numel() else 0.0
    tol = 1e-6 if dt == torch.float64 else 1e-3
    if not torch.allclose(r1, r0, rtol=tol, atol=tol * float(r0.abs().amax())):
        raise ValueError("jacobian's model values differ from model(p, x) on problem "
                         f"{int(rows[0])}; both must compute the same model")
    err = (J1 - J0).abs()
    if J0.numel() and float(err.amax()) > tol * max(scale, 1e-300):
        col = int(err.amax(dim=(0, 1)).argmax())
        raise ValueError(
            f"jacobian's derivative for {space.labels[col]!r} differs from autodiff on problem "
            f"{int(rows[0])} (max abs difference {float(err.amax()):.3g}, largest entry "
            f"{scale:.3g}); check its formula")


# ------------------------------------------------- Hessian from the model's Jacobian
#: likelihoods whose nll is a sum of one term per data point (a diagonal d²nll/dmu²)
_ELEMENTWISE_NLL = (Poisson, Cauchy, StudentT)


def _hessian_from_model_jacobian(mu_cols_fn, nll_one, Yb, theta):
    """Per-problem Hessians of ``nll(y, mu(theta))`` from the model's own Jacobian.

    ``H = Jᵀ diag(ℓ'') J + Σ_k ℓ'_k ∇²mu_k`` with ``ℓ' = d nll / d mu`` and ``ℓ''``
    its (diagonal) derivative. The second term is the gradient of ``Σ_k ℓ'_k J_kj``
    (ℓ' held fixed) for each j: n single backward passes through the model's
    Jacobian function, instead of n double-backward passes through the model and
    the likelihood (about half the time on the 2-D Gaussian).
    """
    b, n = theta.shape
    th = theta.detach().requires_grad_(True)
    with torch.enable_grad():
        _, _, mu, cols = mu_cols_fn(th)
        mu_leaf = mu.detach().requires_grad_(True)
        f = nll_one(Yb, mu_leaf.reshape(Yb.shape))
        (w1,) = torch.autograd.grad(f.sum(), mu_leaf, create_graph=True)
        (w2,) = torch.autograd.grad(w1.sum(), mu_leaf)
        w1 = w1.detach()
        Jt = torch.stack([c.detach() for c in cols], dim=1)
        H = torch.bmm(Jt * w2.unsqueeze(1), Jt.transpose(1, 2))
        rows = []
        for c in cols:
            h = None
            if c.requires_grad:
                (h,) = torch.autograd.grad((c * w1).sum(), th, retain_graph=True,
                                           allow_unused=True)
            rows.append(torch.zeros_like(theta) if h is None else h)
    H = H + torch.stack(rows, dim=1).detach()
    return 0.5 * (H + H.transpose(1, 2))


# ------------------------------------------------------ pixelwise autodiff columns
def _pixelwise_possible(vectorized, space) -> bool:
    """The one-pass Jacobian needs a vmapped model and scalar free parameters."""
    free = [nm for nm in space.names if space.free[nm].any()]
    return (not vectorized) and bool(free) and all(tuple(space.shapes[nm]) == ()
                                                  for nm in free)


def _pixelwise_columns(predict, P, xx, free_names, ydata_shape):
    """``mu (b, m)`` and its n Jacobian columns from ONE backward pass.

    Each free scalar parameter is handed to the model as a copy per data point
    (an expanded, broadcast-shaped leaf of shape ``(b, *ydata_shape)``). For a
    model whose point k depends on the parameters only through their copy k (any
    elementwise model: broadcasting arithmetic, ``torch.where``, no reduction or
    reshape across the data axis), the gradient of ``sum(mu)`` with respect to
    copy k of parameter j is exactly ``d mu_k / d theta_j``: the whole Jacobian
    from one backward pass, instead of n double-backward passes (about 2.5x faster
    on the 7-parameter 2-D Gaussian). Whether a model is elementwise is checked
    against the n-pass Jacobian before use (:func:`_pixelwise_agrees`).
    """
    b = next(iter(P.values())).shape[0]
    Q = dict(P)
    view = (b,) + (1,) * len(ydata_shape)
    leaves = []
    for nm in free_names:
        t = P[nm].detach().reshape(view).expand((b,) + tuple(ydata_shape)).requires_grad_(True)
        Q[nm] = t
        leaves.append(t)
    with torch.enable_grad():
        mu = predict(Q, xx)
        grads = torch.autograd.grad(mu.sum(), leaves, allow_unused=True) \
            if mu.requires_grad else [None] * len(leaves)
    mu = mu.detach().reshape(b, -1)
    cols = [torch.zeros_like(mu) if g is None else g.reshape(b, -1) for g in grads]
    return mu, cols


def _pixelwise_agrees_at(res_jac_t, theta, data, dt, need_finite: bool = False) -> bool:
    """The one-pass and n-pass Jacobians (and residuals) at ``theta``: equal where finite
    (and, with ``need_finite``, some problem finite there)."""
    tol = 1e-8 if dt == torch.float64 else 1e-3
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r0, J0 = res_jac_t(theta, data, "columns")
            r1, J1 = res_jac_t(theta, data, "pixelwise")
    except Exception:  # noqa: BLE001 - any failure means: not elementwise
        return False
    if tuple(J1.shape) != tuple(J0.shape) or tuple(r1.shape) != tuple(r0.shape):
        return False
    fin = torch.isfinite(J0).flatten(1).all(1) & torch.isfinite(r0).all(1)
    if not bool(fin.any()):
        return not need_finite  # nothing to compare
    r0, r1, J0, J1 = r0[fin], r1[fin], J0[fin], J1[fin]
    rs = float(r0.abs().amax()) or 1.0
    js = float(J0.abs().amax()) or 1.0
    return not (float((r1 - r0).abs().amax()) > tol * rs or not bool(torch.isfinite(J1).all())
                or float((J1 - J0).abs().amax()) > tol * js)


def _pixelwise_agrees(res_jac_t, pack, keep, theta0_rows, space, dev, dt) -> bool:
    """Does the one-pass Jacobian equal the n-pass one (values and derivatives)?

    Checked on up to 4 problems at their starts and at a perturbed point each; a
    model that is not elementwise in the data points gives different columns (or
    fails to broadcast the per-point copies) and keeps the n-pass Jacobian.
    """
    rows = keep[:4]
    data = pack(rows)
    theta = torch.as_tensor(theta0_rows(list(rows)), device=dev, dtype=dt)
    k = torch.arange(theta.shape[1], device=dev, dtype=dt)
    pert = 1e-3 * (k + 1) / theta.shape[1] * torch.where(k % 2 == 0, 1.0, -1.0)
    # the starts must give something to compare; the perturbed point may not
    return all(_pixelwise_agrees_at(res_jac_t, th, data, dt, need_finite=(i == 0))
               for i, th in enumerate((theta, theta * (1 + pert) + pert)))


def _poisson_residual_and_slope(y, mu):
    """Poisson's deviance residuals (as :meth:`Poisson.residuals`) and ``dr/dmu`` in closed form.

    The residuals are ``r = d sqrt(q)``, ``d = y - mu``, with ``q = dev / d²`` or, near
    ``d = 0``, its series in ``t = d / y``; the same operations as the likelihood's, so
    the same numbers. Their derivative, which autodiff would get from a backward pass
    through ~20 operations, is short: ``-1 / (mu sqrt(q))`` away from ``d = 0`` (there
    ``d dev/d mu = -2 d / mu``), and ``-sqrt(q) + d q' / (2 sqrt(q))`` with
    ``q' = -(2/3 + t + 1.2 t²) / y²`` on the series.
    """
    d, t, y_safe, near, q = poisson_deviance_parts(y, mu)
    sq = torch.sqrt(torch.clamp(q, min=0.0))
    r = d * sq
    dq_near = -(2.0 / 3 + t * (1.0 + 1.2 * t)) / (y_safe * y_safe)
    dr = torch.where(near, -sq + d * dq_near / (2 * sq), -1.0 / (mu * sq))
    return r, dr


# ------------------------------------------------------------ the compiled engine
def _bad_starts(bad):
    raise ValueError(
        f"the negative log-likelihood is not finite at the initial parameters of "
        f"problem(s) {_indices(bad)}; choose starting points where the model and "
        "likelihood are finite")


def _native_fit(model, space, values, keep, xt_all, ydata_shape, lik, free_idx, normal_t,
                val_t, pack, dev, dt, priors):
    """The model's compiled fit; one made now is checked against torch's normal equations
    (and, for Poisson, its Hessian) at the first problems' starts (with the fit's Normal
    ``priors``, :func:`native.prior_arrays`)."""
    names = space.names
    free_pos = [k for k, nm in enumerate(names) if free_idx[nm][1]]
    rows = keep[:3]
    P0 = np.stack([np.asarray(values[nm], dtype=np.float64)[rows] for nm in names], axis=1)

    def check(kernel):
        data = pack(rows)
        theta = torch.as_tensor(P0[:, free_pos], device=dev, dtype=dt)
        with torch.no_grad():
            ref = [v.cpu().numpy() for v in normal_t(theta, data)]
        H_t = hessian(lambda th: val_t(th, data), theta, len(free_pos)).cpu().numpy() \
            if kernel.has_hessian else None
        native.check_kernel(kernel, P0, data[0].reshape(len(rows), -1).cpu().numpy(), *ref,
                            H_t, rows=rows, priors=priors)

    return native.cached_kernel(model, names, free_pos, xt_all, P0[0], ydata_shape, lik,
                                params=_ModelParams, check=check)


def _native_rows(space, values, keep, y_np):
    """The kept problems' starts ``(b, n_all)`` and data ``(b, m)`` as the kernel takes them
    (y itself where every problem is kept: no copy)."""
    P = np.stack([np.asarray(values[nm], dtype=np.float64)[keep] for nm in space.names],
                 axis=1)
    Y = y_np if keep.size == y_np.shape[0] else y_np[keep]
    return P, np.ascontiguousarray(Y.reshape(keep.size, -1), dtype=np.float64)


def _native_solve(kernel, space, values, keep, y_np, z0, max_iter, tol_kw, keep_jtj, dev,
                  dt, priors):
    """Run the compiled LM on every kept problem from ``z0`` (the unconstrained starts):
    a :class:`BatchedSolution` (z unconstrained) and the answers ``P (b, n_all)``."""
    P, Y = _native_rows(space, values, keep, y_np)
    tols = {"gtol": 1e-10, "ftol": 1e-15, "xtol": 1e-12, **tol_kw}
    bounds = (space.theta_lo, space.theta_hi) if space.bounded else None
    cost, code, nit, nfev, A, z = kernel.run(
        P, Y, max_iter=200 if max_iter is None else int(max_iter), Z=z0, bounds=bounds,
        priors=priors, **tols)

    def t(a, dtype=dt):
        return torch.as_tensor(a, device=dev, dtype=dtype)

    sol = BatchedSolution(t(z), t(cost), t(code, torch.int64), t(nit, torch.int64),
                          t(nfev, torch.int64), "lm", t(A) if keep_jtj else None)
    return sol, P
