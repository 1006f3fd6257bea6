"""fit() and minimize(): build the objective, choose a solver, run it, attach errors."""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from . import solvers
from .likelihoods import Gaussian, get_likelihood
from .objective import Objective, resolve_device, separable_begin, separable_tol
from .params import Param, ParamSpace
from .priors import Prior, Uniform
from .result import FitResult
from .solvers.base import SolverOptions
from .solvers.batched import MESSAGES, SUCCESS_CODES
from .solvers.blas import single_threaded_blas
from .uncertainty import FitWarning, correlation, covariance_from_hessian
from .uncertainty_scale import DENSE_LIMIT, variances

__all__ = ["fit", "minimize", "FitError", "Problem", "DataTerms", "build_problem",
           "build_minimize_problem", "run_problem", "ERRORS"]

#: the choices of ``errors``: 'hessian' (the covariance from the Hessian or JᵀJ, dense up
#: to ``DENSE_LIMIT`` free parameters, else a stochastic diagonal), 'none', or how at scale
ERRORS = ("hessian", "none", "dense", "cg", "hutchinson")


class FitError(RuntimeError):
    """Raised by ``fit(..., strict=True)`` when a fit does not succeed."""


_DTYPES = {torch.float64: torch.float64, torch.float32: torch.float32,
           "float64": torch.float64, "float32": torch.float32,
           "double": torch.float64, "float": torch.float32}


def _resolve_dtype(dtype) -> torch.dtype:
    try:
        return _DTYPES[dtype]
    except (KeyError, TypeError):
        raise ValueError(f"unsupported dtype {dtype!r}; choose 'float64' or 'float32'") from None


class _ModelParams(dict):
    """The parameter dict handed to the model; a missing name gets a precise error."""

    def __missing__(self, key):
        raise ValueError(
            f"the model uses parameter {key!r}, which is not in params "
            f"(given: {', '.join(self.keys())})")


def _check_finite_array(arr: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(arr)
    if np.any(bad):
        idx = np.unravel_index(int(np.flatnonzero(bad)[0]), arr.shape) if arr.ndim else ()
        where = f"[{', '.join(map(str, idx))}]" if idx else ""
        raise ValueError(
            f"{what} contains {int(bad.sum())} non-finite value(s) (NaN or inf); "
            f"first at {what}{where} = {arr[idx] if arr.ndim else arr}")


def _to_tensor_tree(x, what: str, device, dtype):
    """Convert arrays (possibly inside tuples/lists/dicts) to tensors on device/dtype."""
    if isinstance(x, torch.Tensor):
        if x.is_floating_point():
            _check_finite_array(x.detach().cpu().numpy(), what)
            return x.to(device=device, dtype=dtype)
        return x.to(device=device)
    if isinstance(x, np.ndarray) or isinstance(x, (float, int)) and not isinstance(x, bool):
        arr = np.asarray(x)
        if arr.dtype.kind in "fiu":
            arr = arr.astype(np.float64)
            _check_finite_array(arr, what)
            return torch.as_tensor(arr, device=device, dtype=dtype)
        return x
    if isinstance(x, tuple):
        return tuple(_to_tensor_tree(v, f"{what}[{i}]", device, dtype) for i, v in enumerate(x))
    if isinstance(x, list) and all(isinstance(v, (np.ndarray, torch.Tensor)) for v in x):
        return [_to_tensor_tree(v, f"{what}[{i}]", device, dtype) for i, v in enumerate(x)]
    if isinstance(x, list):
        arr = np.asarray(x, dtype=np.float64)
        return _to_tensor_tree(arr, what, device, dtype)
    if isinstance(x, dict):
        return {k: _to_tensor_tree(v, f"{what}[{k!r}]", device, dtype) for k, v in x.items()}
    return x


class Problem:
    """A fitting problem in the flat free-parameter space ``theta`` (physical units).

    Attributes
    ----------
    space : ParamSpace
    nll : callable ``theta -> scalar tensor`` (−log L or −log posterior)
    residuals : callable ``theta -> 1-D tensor`` or None (``nll == 0.5 Σ r² + const``)
    device, dtype :
    ndata : number of data points (None for a bare −log posterior)
    likelihood : the Likelihood (None for minimize)
    gauss_newton : whether the covariance uses JᵀJ (Gaussian least squares)
    rebuild : callable ``ParamSpace -> Problem`` with the same data and model

    Follow-ups (profiles, intervals, MCMC) work through the public methods
    :meth:`run`, :meth:`covariance` and :meth:`theta_of`, so that they need not
    import this module (which would make an import cycle through ``result``).
    residual_jacobian : callable ``theta -> (r, dr/dtheta)`` or None (a model-supplied
        exact Jacobian, see ``fit(jacobian=...)``)
    in_memory : False when the data are chunked or distributed (:mod:`gradfit.data`)
    terms : :class:`DataTerms` of a :func:`fit` problem (data and prior terms apart)
    """

    in_memory = True
    reducer = None
    terms = None
    #: ``theta -> (r, finish)`` or None, ``finish() -> J`` or None: a cheaper Jacobian
    #: where it applies (see :func:`gradfit.objective.separable_begin`); None: never
    fast_jacobian = None

    def __init__(self, space, nll, residuals, device, dtype, ndata=None, likelihood=None,
                 gauss_newton=False, rebuild=None, lik_residuals=None, residual_jacobian=None):
        self.space = space
        self.nll = nll
        self.residuals = residuals
        self.device = device
        self.dtype = dtype
        self.ndata = ndata
        self.likelihood = likelihood
        self.gauss_newton = gauss_newton
        self.rebuild = rebuild
        self.lik_residuals = lik_residuals
        self.residual_jacobian = residual_jacobian

    def objective(self) -> Objective:
        """The objective in the unconstrained space the solvers see."""
        sp = self.space
        res = None
        if self.residuals is not None:
            r = self.residuals
            res = (lambda z: r(sp.to_external(z))) if sp.bounded else r
        f = (lambda z: self.nll(sp.to_external(z))) if sp.bounded else self.nll
        rj = self.residual_jacobian
        if rj is not None and sp.bounded:
            def rj(z, rj_theta=self.residual_jacobian):
                theta, dtheta = sp.external_slope(z)  # chain rule through theta(z)
                r_, J = rj_theta(theta)
                return r_, J * dtheta
        fj = self.fast_jacobian
        if fj is not None and sp.bounded:
            def fj(z, fj_theta=self.fast_jacobian):
                begun = fj_theta(sp.to_external(z))
                if begun is None:
                    return None

                def finish():
                    J = begun[1]()
                    if J is None:
                        return None
                    return J * sp.external_slope(z)[1]  # chain rule through theta(z)

                return begun[0], finish
        return Objective(f, sp.n_free, residual_fun=res, device=self.device, dtype=self.dtype,
                         residual_jacobian_fun=rj, fast_jacobian_fun=fj)

    def theta_objective(self) -> Objective:
        """The objective in physical units (for Hessians and errors)."""
        return Objective(self.nll, self.space.n_free, residual_fun=self.residuals,
                         device=self.device, dtype=self.dtype,
                         residual_jacobian_fun=self.residual_jacobian,
                         fast_jacobian_fun=self.fast_jacobian)

    def run(self, method="auto", **kwargs) -> FitResult:
        """Minimise this problem; the same as :func:`run_problem` ``(self, method, ...)``."""
        return run_problem(self, method, **kwargs)

    def theta_of(self, params: Mapping) -> np.ndarray:
        """Named values (as in ``FitResult.params``) -> the flat free vector ``theta``."""
        sp = self.space
        out = np.empty(sp.n_free)
        for k, label in enumerate(sp.labels):
            name, idx = sp.parse_label(label)
            out[k] = float(np.asarray(params[name], dtype=np.float64)[idx])
        return out

    def covariance(self, theta) -> tuple[np.ndarray, int]:
        """Covariance of the free parameters at ``theta`` (physical units; array or tensor).

        From JᵀJ for Gaussian least squares, else from the Hessian of ``nll``;
        scaled by RSS/(n−p) when the likelihood's sigma is unknown. Returns
        ``(cov, extra model evaluations)``; degenerate directions give NaN with a
        :class:`FitWarning` (see :func:`gradfit.uncertainty.covariance_from_hessian`).
        """
        return _covariance(self, torch.as_tensor(theta, device=self.device, dtype=self.dtype))

    def rss(self, theta) -> float | None:
        """Sum of the squared likelihood residuals at ``theta`` (None without them)."""
        if self.lik_residuals is None:
            return None
        with torch.no_grad():
            rl = self.lik_residuals(theta)
        return float((rl * rl).sum())


@dataclass(frozen=True)
class DataTerms:
    """The pieces of a :func:`fit` objective with the data as arguments.

    Lets :mod:`gradfit.data` evaluate the same likelihood chunk by chunk and add the
    prior once: ``nll = Σ_chunks data_nll(p, x_c, y_c) + prior_nll(p)``.
    """

    predict: Callable  # (p, x) -> model prediction
    data_nll: Callable  # (p, x, y) -> −log L of one chunk (nuisance parameters included)
    data_residuals: Callable  # (p, x, y) -> flat likelihood residuals of one chunk
    prior_nll: Callable | None  # p -> −log prior, or None
    prior_residuals: Callable | None  # p -> prior residuals, or None
    has_residuals: bool


def _normalise_priors(priors, space_params: dict) -> tuple[dict, Callable | None]:
    if priors is None:
        return {}, None
    if callable(priors) and not isinstance(priors, Mapping):
        return {}, priors
    if not isinstance(priors, Mapping):
        raise TypeError("priors must be a dict of name -> prior, or a callable log_prior(p)")
    out = {}
    for name, pr in priors.items():
        if name not in space_params:
            raise ValueError(
                f"prior given for unknown parameter {name!r}; parameters are: "
                f"{', '.join(space_params)}")
        if not (isinstance(pr, Prior) or callable(pr)):
            raise TypeError(f"prior for {name!r} must be a gradfit prior or a callable t -> log p")
        out[name] = pr
    return out, None


def _apply_uniform_bounds(params: dict, priors: dict) -> dict:
    """A Uniform prior bounds its parameter when the user gave no bounds."""
    out = dict(params)
    for name, pr in priors.items():
        if isinstance(pr, Uniform):
            spec = out[name] if isinstance(out[name], Param) else Param(out[name])
            if spec.bounds is None:
                out[name] = Param(spec.value, bounds=(pr.lo, pr.hi), fixed=spec.fixed)
    return out


def _log_prior_fn(priors: dict, whole: Callable | None):
    if not priors and whole is None:
        return None

    def log_prior(p):
        total = 0.0
        for name, pr in priors.items():
            total = total + (pr.log_prob(p[name]) if isinstance(pr, Prior) else pr(p[name]))
        if whole is not None:
            total = total + whole(p)
        return total

    return log_prior


def _prior_residual_fn(priors: dict, whole):
    if whole is not None or not all(getattr(pr, "residual_form", False)
                                    for pr in priors.values()):
        return None, False
    if not priors:
        return None, True

    def prior_res(p):
        return torch.cat([pr.residuals(p[name]) for name, pr in priors.items()])

    return prior_res, True


def build_problem(model, x, y, params, likelihood="gaussian", priors=None, device="cpu",
                  dtype=torch.float64, jacobian=None) -> Problem:
    """Check the inputs and build the :class:`Problem` behind :func:`fit`."""
    if not callable(model):
        raise TypeError(f"model must be a callable model(p, x), not {type(model).__name__}")
    if jacobian is not None and not callable(jacobian):
        raise TypeError(f"jacobian must be a callable jacobian(p, x) -> (model, {{name: "
                        f"d model / d p[name]}}), not {type(jacobian).__name__}")
    dev = resolve_device(device)
    dt = _resolve_dtype(dtype)
    lik = get_likelihood(likelihood)
    if isinstance(y, torch.Tensor):
        y_np = y.detach().cpu().numpy()
    else:
        try:
            y_np = np.asarray(y, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"y must be an array of numbers: {exc}") from exc
    y_np = y_np.astype(np.float64)
    if y_np.size == 0:
        raise ValueError(f"y has no data points (shape {y_np.shape}); a fit needs at least one")
    _check_finite_array(y_np, "y")
    lik.check_data(y_np)
    xt = _to_tensor_tree(x, "x", dev, dt)
    yt = torch.as_tensor(y_np, device=dev, dtype=dt)
    lik.prepare(yt)
    if not isinstance(params, Mapping) or not params:
        raise TypeError("params must be a non-empty dict of name -> initial value or gradfit.Param")
    prior_map, whole_prior = _normalise_priors(priors, params)
    params = _apply_uniform_bounds(dict(params), prior_map)
    user_names = list(params)

    # first evaluation at the start: shape, dtype, unused and missing parameters
    init_space = ParamSpace(params)
    leaves = {n: torch.as_tensor(init_space.init[n], device=dev, dtype=dt).requires_grad_(
        bool(init_space.free[n].any())) for n in user_names}
    with torch.enable_grad():
        mu0 = model(_ModelParams(leaves), xt)
    if not isinstance(mu0, torch.Tensor):
        raise TypeError(
            f"the model returned {type(mu0).__name__}; it must return a torch tensor built with "
            "torch operations (so that gradients flow)")
    if mu0.is_complex() or not mu0.is_floating_point():
        raise TypeError(f"the model returned dtype {mu0.dtype}; it must return real floats")
    if tuple(mu0.shape) != tuple(yt.shape):
        raise ValueError(
            f"the model returned shape {tuple(mu0.shape)} but y has shape {tuple(yt.shape)}")
    free_leaves = [n for n in user_names if leaves[n].requires_grad]
    reached = _leaves_reached(mu0) if free_leaves else set()
    unused = [n for n in free_leaves if id(leaves[n]) not in reached]
    if unused:
        raise ValueError(
            f"parameter(s) {', '.join(map(repr, unused))} are not used by the model; "
            "remove them or fix them with gradfit.Param(value, fixed=True)")
    mu0 = mu0.detach()
    if mu0.dtype != dt:
        raise TypeError(
            f"the model returned dtype {mu0.dtype} but the fit runs in {dt}; build tensors "
            "from the inputs (or pass dtype=...)")

    # nuisance parameters of the likelihood
    nuis0 = lik.initial_nuisance(yt, mu0)
    all_params = dict(params)
    for nname, (val, bounds) in lik.nuisance.items():
        if nname in all_params:
            raise ValueError(
                f"the {lik.name} likelihood fits a nuisance parameter {nname!r}, which clashes "
                "with a model parameter of that name; rename the model parameter or give the "
                "likelihood a fixed value")
        all_params[nname] = Param(nuis0[nname] if val is None else val, bounds=bounds)
    space = ParamSpace(all_params) if lik.nuisance else init_space
    nuis_names = list(lik.nuisance)
    log_prior = _log_prior_fn(prior_map, whole_prior)
    prior_res, prior_ok = _prior_residual_fn(prior_map, whole_prior)

    def predict(p):
        mp = _ModelParams({n: p[n] for n in user_names})
        return model(mp, xt)

    has_res = lik.has_residuals and prior_ok

    def predict_x(p, x_):
        return model(_ModelParams({n: p[n] for n in user_names}), x_)

    def lik_res_x(p, x_, y_):
        return lik.residuals(y_, predict_x(p, x_)).reshape(-1)

    terms = DataTerms(
        predict=predict_x,
        data_nll=lambda p, x_, y_: lik.nll(y_, predict_x(p, x_), {n: p[n] for n in nuis_names}),
        data_residuals=lik_res_x,
        prior_nll=None if log_prior is None else (lambda p: -log_prior(p)),
        prior_residuals=prior_res, has_residuals=has_res)

    def make(sp: ParamSpace) -> Problem:
        """The problem on parameter space ``sp``: the same model, data and likelihood."""

        def nll(theta):
            p = sp.unflatten(theta)
            out = lik.nll(yt, predict(p), {n: p[n] for n in nuis_names})
            return out - log_prior(p) if log_prior is not None else out

        residuals = lik_residuals = None
        if lik.has_residuals:  # (for the RSS of least squares' error scale, priors or not)
            def lik_residuals(theta):
                return lik.residuals(yt, predict(sp.unflatten(theta))).reshape(-1)
        if has_res:
            residuals = lik_residuals
            if prior_res is not None:
                def residuals(theta):
                    p = sp.unflatten(theta)
                    return torch.cat([lik.residuals(yt, predict(p)).reshape(-1), prior_res(p)])

        res_jac = None
        if jacobian is not None and has_res:
            def res_jac(theta):
                return _residual_jacobian(jacobian, sp, theta, user_names, xt, yt, lik,
                                          prior_res)

        prob = Problem(sp, nll, residuals, dev, dt, ndata=int(yt.numel()), likelihood=lik,
                       gauss_newton=isinstance(lik, Gaussian) and has_res, rebuild=make,
                       lik_residuals=lik_residuals, residual_jacobian=res_jac)
        if has_res and res_jac is None and prior_res is None and sp.all_scalars \
                and list(sp.names) == user_names:
            prob.fast_jacobian = _separable_jacobian_fn(
                lambda Q: lik.residuals(yt, predict(sp.unflatten(Q))), lik_residuals, yt)
        return prob

    prob = make(space)
    prob.terms = terms
    # what the compiled engine traces (fit(engine='numba')): the model and its tensors
    prob.model, prob.xt, prob.yt, prob.priors = model, xt, yt, priors
    with torch.no_grad():
        if not nuis_names and log_prior is None:
            f0 = lik.nll(yt, mu0, {})  # nll at the start is a function of mu0 alone
        else:
            f0 = prob.nll(torch.as_tensor(space.theta0, device=dev, dtype=dt))
    if not torch.isfinite(f0):
        nbad = int((~torch.isfinite(mu0)).sum())
        hint = (f" (the model returned non-finite values at {nbad} of {mu0.numel()} points)"
                if nbad else "")
        raise ValueError(
            f"the negative log-likelihood is {float(f0)} at the initial parameters{hint}; "
            "choose a starting point where the model and likelihood are finite")
    return prob


def _leaves_reached(t: torch.Tensor) -> set:
    """``id`` of every leaf tensor the autograd graph of ``t`` reaches.

    A leaf is reached exactly when ``autograd.grad(t.sum(), leaf, allow_unused=True)``
    is not None; walking the graph costs a fraction of that backward pass.
    """
    out, seen = set(), set()
    if t.grad_fn is None:  # t is a leaf itself, or no graph at all
        return {id(t)} if t.requires_grad else out
    stack = [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        var = getattr(node, "variable", None)  # an AccumulateGrad node holds its leaf
        if var is not None:
            out.add(id(var))
        stack.extend(nxt for nxt, _ in node.next_functions)
    return out


def _separable_jacobian_fn(residuals_of, plain_residuals, yt):
    """``theta -> (r, finish)`` or None, by :func:`gradfit.objective.separable_begin`.

    Once it has said no for a problem it is not tried again. Its first residuals are
    also checked against the plain ones (a model that reads its parameters' shape or
    detaches them could give other values with per-element parameters).
    """
    state = {"ok": True, "checked": False}

    def fast(theta):
        if not state["ok"]:
            return None
        begun = separable_begin(residuals_of, theta, tuple(yt.shape))
        if begun is not None and not state["checked"]:
            with torch.no_grad():
                r0 = plain_residuals(theta)
            tol = separable_tol(r0.dtype) * float(torch.maximum(r0.abs().max(),
                                                                   begun[0].abs().max()))
            if not float((begun[0] - r0).abs().max()) <= tol:
                begun = None
            state["checked"] = True
        if begun is None:
            state["ok"] = False
            return None

        def finish(fin=begun[1]):
            J = fin()
            if J is None:
                state["ok"] = False
            return J

        return begun[0], finish

    return fast


def _residual_jacobian(jacobian, sp: ParamSpace, theta, user_names, xt, yt, lik, prior_res):
    """Residuals and ``dr/dtheta`` from a model-supplied ``jacobian(p, x)``.

    The model's derivatives (one array per parameter) are reduced to the free
    elements in ``theta`` order and multiplied by the likelihood's ``dr/dmu``, which
    is diagonal: every built-in residual form is elementwise in the model.
    """
    p = sp.unflatten(theta)
    mu, d = jacobian(_ModelParams({n: p[n] for n in user_names}), xt)
    if not isinstance(mu, torch.Tensor) or tuple(mu.shape) != tuple(yt.shape):
        raise ValueError(f"jacobian returned a model of shape "
                         f"{tuple(getattr(mu, 'shape', ()))}; y has shape {tuple(yt.shape)}")
    m = mu.numel()
    cols = []
    for name in sp.names:
        free = sp.free[name].reshape(-1)
        if not free.any():
            continue
        if name not in d:
            raise ValueError(f"jacobian returned no derivative for the free parameter {name!r}")
        D = torch.as_tensor(d[name], dtype=theta.dtype, device=theta.device)
        if tuple(D.shape) != tuple(mu.shape) + tuple(sp.shapes[name]):
            raise ValueError(
                f"jacobian: the derivative for {name!r} has shape {tuple(D.shape)}; expected "
                f"{tuple(mu.shape) + tuple(sp.shapes[name])} (model shape + parameter shape)")
        D = D.reshape(m, free.size)
        cols.append(D if free.all() else D[:, torch.as_tensor(np.flatnonzero(free),
                                                              device=D.device)])
    J = torch.cat(cols, dim=1)
    with torch.enable_grad():
        mu_leaf = mu.detach().requires_grad_(True)
        r = lik.residuals(yt, mu_leaf).reshape(-1)
        (dr,) = torch.autograd.grad(r.sum(), mu_leaf)
    r = r.detach()
    J.mul_(dr.reshape(-1, 1))  # (J is torch.cat's own new tensor: scaled in place)
    if prior_res is not None:
        with torch.enable_grad():
            th = theta.detach().requires_grad_(True)
            rp = prior_res(sp.unflatten(th))
            rows = []
            for i in range(rp.numel()):
                (g,) = torch.autograd.grad(rp[i], th, retain_graph=True, allow_unused=True)
                rows.append(torch.zeros_like(th) if g is None else g)
        r = torch.cat([r, rp.detach()])
        J = torch.cat([J, torch.stack(rows)])
    return r, J


def build_minimize_problem(nll_fn, params, priors=None, device="cpu", dtype=torch.float64):
    """Check the inputs and build the :class:`Problem` behind :func:`minimize`."""
    if not callable(nll_fn):
        raise TypeError(f"nll must be a callable nll(p) -> scalar tensor, not "
                        f"{type(nll_fn).__name__}")
    dev = resolve_device(device)
    dt = _resolve_dtype(dtype)
    if not isinstance(params, Mapping) or not params:
        raise TypeError("params must be a non-empty dict of name -> initial value or gradfit.Param")
    prior_map, whole_prior = _normalise_priors(priors, params)
    params = _apply_uniform_bounds(dict(params), prior_map)
    log_prior = _log_prior_fn(prior_map, whole_prior)

    def make(space: ParamSpace) -> Problem:
        def nll(theta):
            p = _ModelParams(space.unflatten(theta))
            out = nll_fn(p)
            return out - log_prior(p) if log_prior is not None else out

        return Problem(space, nll, None, dev, dt, rebuild=make)

    space = ParamSpace(params)
    prob = make(space)
    theta0 = torch.as_tensor(space.theta0, device=dev, dtype=dt).requires_grad_(True)
    with torch.enable_grad():
        f0 = prob.nll(theta0)
    if not isinstance(f0, torch.Tensor):
        raise TypeError(f"nll returned {type(f0).__name__}; it must return a scalar torch tensor")
    if f0.numel() != 1:
        raise ValueError(f"nll must return a scalar, got shape {tuple(f0.shape)}")
    if not torch.isfinite(f0):
        raise ValueError(f"nll is {float(f0)} at the initial parameters; choose a starting "
                         "point where it is finite")
    # which parameters does the objective use at all?
    leaves = {n: torch.as_tensor(space.init[n], device=dev, dtype=dt).requires_grad_(True)
              for n in space.names if space.free[n].any()}
    with torch.enable_grad():
        full = {n: leaves.get(n, torch.as_tensor(space.init[n], device=dev, dtype=dt))
                for n in space.names}
        val = nll_fn(_ModelParams(full))
        grads = torch.autograd.grad(val.sum(), list(leaves.values()), allow_unused=True) \
            if val.requires_grad else [None] * len(leaves)
    unused = [n for n, g in zip(leaves, grads) if g is None]
    if unused:
        raise ValueError(
            f"parameter(s) {', '.join(map(repr, unused))} are not used by nll; remove them or "
            "fix them with gradfit.Param(value, fixed=True)")
    return prob


#: ``method='lm'`` runs the dense SVD Levenberg–Marquardt up to this many free parameters
#: and Jacobian elements (200 MB in float64); beyond either, the matrix-free 'lm-cg'.
LM_DENSE_MAX_PARAMS = 1000
LM_DENSE_MAX_JACOBIAN = 25_000_000


def _lm_variant(prob: Problem) -> tuple[str, str]:
    """Which Levenberg–Marquardt runs for ``method='lm'`` (dense, normal equations or
    matrix-free CG), and why ('' for the dense one)."""
    n = prob.space.n_free
    if n > LM_DENSE_MAX_PARAMS:
        return "lm-cg", f"matrix-free: {n} free parameters > {LM_DENSE_MAX_PARAMS}"
    if not prob.in_memory:
        return "lm-normal", "JᵀJ and Jᵀr summed over the data chunks"
    if n * (prob.ndata or 0) > LM_DENSE_MAX_JACOBIAN:
        return "lm-cg", (f"matrix-free: a dense Jacobian would have {n * prob.ndata:.3g} "
                         f"elements > {LM_DENSE_MAX_JACOBIAN:.3g}; with few parameters, "
                         "chunk_size=... is faster when the data rows are independent")
    return "lm", ""


def _choose_method(method: str, prob: Problem) -> tuple[str, str]:
    m = solvers.canonical_method(method, also=("auto",))
    if m != "auto":
        if m in solvers.RESIDUAL_METHODS and prob.residuals is None:
            raise ValueError(
                f"method {method!r} (Levenberg–Marquardt) needs a least-squares form: a "
                "Gaussian, Cauchy or Student-t likelihood with known scale, or Poisson, and only "
                "Normal priors; use method='bfgs' or 'lbfgs' instead")
        if m == "scipy-lm" and not prob.in_memory:
            raise ValueError("method 'scipy-lm' needs the full residual vector, which chunked "
                             "or distributed data do not form; use method='lm'")
        if m == "lm":
            m, why = _lm_variant(prob)
            return m, f"'lm' ran as '{m}' ({why})" if why else ""
        return m, ""
    n = prob.space.n_free
    if prob.residuals is not None:
        m, why = _lm_variant(prob)
        why = f"; {why}" if why else ""
        return m, f"auto chose '{m}' (least-squares form, {n} free parameters{why})"
    if n <= 200:
        return "bfgs", f"auto chose 'bfgs' (no least-squares form, {n} free parameters)"
    return "lbfgs", f"auto chose 'lbfgs' ({n} free parameters)"


def _errors_mode(errors, where: str) -> str:
    """The ``errors`` choice as a string; the old bool spelling still works, deprecated."""
    if isinstance(errors, bool):
        new = "hessian" if errors else "none"
        warnings.warn(f"{where}(errors={errors}) is deprecated; use errors={new!r}",
                      DeprecationWarning, stacklevel=3)
        return new
    if isinstance(errors, str) and errors.lower() in ERRORS:
        return errors.lower()
    if isinstance(errors, (list, tuple)) and errors and all(isinstance(e, str) for e in errors):
        return list(errors)
    raise ValueError(f"errors must be one of {', '.join(map(repr, ERRORS))} or a list of "
                     f"parameter labels, got {errors!r}")


def _progress_callback(progress):
    """The solver callback for ``progress``: False/None (off), True (stderr) or a callable."""
    if progress is None or progress is False:
        return None
    if callable(progress):
        def report(nit, z, f):
            progress({"stage": "fit", "nit": int(nit), "fun": float(f)})
            return False  # a progress report never stops the fit

        return report
    if progress is not True:
        raise TypeError(f"progress must be True, False or a callable progress(info), "
                        f"got {progress!r}")
    last = [0.0]

    def cb(nit, z, f):
        now = time.perf_counter()
        if now - last[0] > 0.25:
            last[0] = now
            sys.stderr.write(f"\r  iteration {nit:5d}   f = {float(f):.10g}   ")
            sys.stderr.flush()
        return False

    return cb


#: data points x free parameters from which a CPU fit runs NumPy's BLAS on one thread
#: (:func:`gradfit.solvers.blas.single_threaded_blas`)
BLAS_LIMIT_MIN = 20_000


def run_problem(prob: Problem, method="auto", *, max_iter=None, tol=None, progress=False,
                options=None, strict=False, errors="hessian", theta0=None) -> FitResult:
    """Minimise a built :class:`Problem` and return a :class:`FitResult`.

    Options are as for :func:`fit`; ``errors`` may also be a bool here (True is
    ``'hessian'``), without a warning, since this is the layer below the public API.
    """
    n = prob.space.n_free
    # the solver's and the errors' NumPy on one thread (see solvers.blas); not on the GPU,
    # where NumPy does no real work, nor for a small problem, whose calls stay below the
    # size where OpenBLAS starts threads (the limit costs 20-40 µs)
    limit = prob.device.type == "cpu" and ((prob.ndata or 0) * n >= BLAS_LIMIT_MIN or n >= 64)
    with single_threaded_blas() if limit else contextlib.nullcontext():
        return _run_problem(prob, method, max_iter, tol, progress, options, strict, errors,
                            theta0)


def _run_problem(prob, method, max_iter, tol, progress, options, strict, errors, theta0):
    t0 = time.perf_counter()
    if isinstance(errors, bool):
        errors = "hessian" if errors else "none"
    errors = _errors_mode(errors, "run_problem")
    meth, why = _choose_method(method, prob)
    space = prob.space
    how = _error_how(errors, space.n_free)
    obj = prob.objective()
    th0 = space.theta0 if theta0 is None else np.asarray(theta0, dtype=np.float64)
    z0 = obj.as_tensor(space.to_internal(th0))
    opts = SolverOptions(max_iter=max_iter, callback=_progress_callback(progress),
                         extra=dict(options or {}))
    if tol is not None:
        opts.gtol = opts.ftol = opts.xtol = float(tol)
    if space.n_free == 0:
        raw = solvers.base.RawSolution(z0, float(obj.value(z0)), True, "no free parameters", 0,
                                       meth)
    else:
        raw = solvers.solve(meth, obj, z0, opts)
    if progress is True:
        sys.stderr.write("\n")
    with torch.no_grad():
        theta_t = space.to_external(obj.as_tensor(raw.z))
        fun = float(prob.nll(theta_t))
    theta = theta_t.detach().cpu().numpy().astype(np.float64)
    success = bool(raw.success) and math.isfinite(fun)
    message = raw.message if math.isfinite(fun) else \
        f"the objective is not finite at the end ({raw.message})"
    if why:
        message = f"{message} [{why}]"
    n = space.n_free
    nfev, njev = obj.nfev, obj.ngev + obj.njev
    cov = np.full((n, n), np.nan) if n <= DENSE_LIMIT else None
    err_flat, error_method = np.full(n, np.nan), "none"
    if how is not None and n and math.isfinite(fun):
        if how == "dense":
            # unbounded: z is theta, and LM's last Jacobian (at z) serves the errors
            jac = obj.jacobian_at(raw.z) if prob.gauss_newton and not space.bounded else None
            cov, extra = _covariance(prob, theta_t, jac)
            error_method = "dense-gauss-newton" if prob.gauss_newton else "dense-hessian"
        else:
            err_flat, error_method, extra = _scale_errors(prob, theta_t, how, options)
            cov = None
        nfev += extra
    if cov is not None:
        err_flat = np.sqrt(np.diag(cov)) if n else np.zeros(0)
    corr = None if cov is None else (correlation(cov) if n else np.zeros((0, 0)))
    bounds_hit = _bounds_hit(space, theta, how is not None, stacklevel=3)
    ndata = prob.ndata
    res = FitResult(
        params=space.unflatten_numpy(theta),
        errors=space.unflatten_numpy(err_flat, fill_fixed=0.0),
        cov=cov, corr=corr, names=list(space.labels), fun=fun, success=success,
        message=message, method=raw.method or meth, nfev=nfev, njev=njev, nit=int(raw.nit),
        time_s=time.perf_counter() - t0, ndata=ndata,
        dof=None if ndata is None else ndata - n, at_bounds=bounds_hit, problem=prob,
        error_method=error_method)
    if strict and not success:
        raise FitError(f"fit did not succeed: {message}")
    return res


def _error_how(errors, n: int):
    """None (no errors), 'dense', 'cg', 'hutchinson', or a list of labels (CG for those)."""
    if errors is True or errors == "hessian":
        return "dense" if n <= DENSE_LIMIT else "hutchinson"
    if errors is False or errors is None or errors == "none":
        return None
    if isinstance(errors, str) and errors in ("dense", "cg", "hutchinson"):
        if errors == "dense" and n > DENSE_LIMIT:
            raise ValueError(
                f"errors='dense' would form a {n} x {n} matrix (limit {DENSE_LIMIT} free "
                "parameters); use errors='hutchinson', 'cg' or a list of parameter labels")
        return errors
    if isinstance(errors, (list, tuple)) and all(isinstance(e, str) for e in errors):
        return list(errors)
    raise ValueError(f"errors must be True, False, 'dense', 'cg', 'hutchinson' or a list of "
                     f"parameter labels, not {errors!r}")


def _variance_scale(prob: Problem, theta: torch.Tensor | None, rss: float | None = None,
                    stacklevel: int = 5) -> float:
    """RSS/(n−p) for least squares with unknown sigma, else 1 (NaN with a warning if no dof).

    ``rss``: the RSS where the caller has it (else it is evaluated at ``theta``)."""
    lik = prob.likelihood
    if lik is None or not lik.scale_errors:
        return 1.0
    n = prob.space.n_free
    if rss is None:
        rss = prob.rss(theta)
    dof = prob.ndata - n
    if rss is None or dof <= 0:
        warnings.warn(
            f"least squares with {prob.ndata} points and {n} free parameters leaves no "
            "degrees of freedom to estimate sigma; errors are NaN", FitWarning,
            stacklevel=stacklevel)
        return math.nan
    return rss / dof


def _bounds_hit(space, theta, warn: bool, stacklevel: int) -> tuple:
    """The free elements at a bound, with a warning (where ``warn``) that their errors
    from the Hessian are not reliable there."""
    hit = tuple(space.at_bound(theta)) if space.bounded else ()
    if hit and warn:
        warnings.warn(
            f"parameter(s) {', '.join(hit)} ended at a bound; their errors from the "
            "Hessian are not reliable there", FitWarning, stacklevel=stacklevel + 1)
    return hit


def _scale_errors(prob: Problem, theta: torch.Tensor, how, options) -> tuple:
    """Errors without the n x n matrix (:mod:`gradfit.uncertainty_scale`)."""
    opts = dict(options or {})
    tobj = prob.theta_objective()
    labels = list(prob.space.labels)
    which = how if isinstance(how, list) else None
    out = variances(tobj, theta, prob.gauss_newton, labels,
                    method="cg" if which is not None or how == "cg" else "hutchinson",
                    which=which, probes=int(opts.get("error_probes", 32)),
                    seed=int(opts.get("error_seed", 0)))
    var = out.var * _variance_scale(prob, theta)
    return np.sqrt(var), out.method, tobj.nfev


def _covariance(prob: Problem, theta: torch.Tensor, jac=None) -> tuple[np.ndarray, int]:
    """Covariance of the free parameters at theta; returns (cov, extra evaluations).

    ``jac``: the Jacobian of the residuals at theta where the solver has it already.
    """
    tobj = prob.theta_objective()
    labels = prob.space.labels
    if prob.gauss_newton and not prob.in_memory:
        H = tobj.normal_equations(theta)[1].cpu().numpy().astype(np.float64)
    elif prob.gauss_newton:
        J = jac if jac is not None else tobj.residuals_and_jacobian(theta)[1]
        Jn = J.detach().cpu().numpy().astype(np.float64)
        H = Jn.T @ Jn
    else:
        H = tobj.hessian(theta).cpu().numpy().astype(np.float64)
    cov = covariance_from_hessian(H, labels)
    scale = _variance_scale(prob, theta)
    if scale != 1.0:
        cov = cov * scale
    return cov, tobj.nfev


def fit(model, x, y, params, likelihood="gaussian", method="auto", *, priors=None,
        device="cpu", dtype=torch.float64, strict=False, max_iter=None, tol=None,
        progress=False, options=None, errors="hessian", jacobian=None, chunk_size=None,
        distributed=False, engine="torch") -> FitResult:
    """Fit ``model(p, x)`` to data ``y`` by maximum likelihood (or MAP with ``priors``).

    Parameters
    ----------
    model : callable
        ``model(p, x) -> tensor`` with the shape of ``y``; ``p`` maps names to tensors.
    x : array_like, tensor, or a tuple/dict of them
        Independent variables, passed to the model as tensors on ``device``.
    y : array_like
        Data.
    params : dict
        Name -> initial value (float or array) or :class:`gradfit.Param`.
    likelihood : str or Likelihood
        ``'gaussian'`` (least squares when no sigma), ``'cauchy'``, ``'student-t'``,
        ``'poisson'``, or an object such as ``gradfit.Gaussian(sigma=s)``.
    method : str
        ``'auto'`` (default), ``'lm'``, ``'bfgs'``, ``'lbfgs'``, ``'newton-cg'``,
        ``'trust-krylov'``, ``'trust-exact'``, ``'nelder-mead'``, ``'gd'``, ``'adam'``,
        or a ``'scipy-*'`` variant.
    priors : dict or callable, optional
        Name -> prior (``gradfit.Normal(0, 1)``, ...) or ``log_prior(p)``: MAP fit.
    device, dtype :
        Where the model runs (``'cpu'``, ``'cuda'``, ``'auto'``) and its float type.
    strict : bool
        Raise :class:`FitError` when the fit does not succeed.
    max_iter, tol, options :
        Solver limits; ``options`` is a dict of solver-specific settings.
    progress : bool or callable
        True prints the iteration and objective on stderr while fitting; a callable
        is called after each iteration as ``progress({"stage": "fit", "nit": ...,
        "fun": ...})``.
    errors : {'hessian', 'none', 'dense', 'cg', 'hutchinson'} or list of str
        'hessian' (default): the covariance from the Hessian (JᵀJ for least squares),
        dense up to ``DENSE_LIMIT`` (2000) free parameters, else a stochastic diagonal;
        'none': no errors (NaN); at scale, 'dense', 'cg' (exact marginal variances by CG
        solves), 'hutchinson' (stochastic diagonal), or a list of labels ('cg' for
        those). ``FitResult.error_method`` says which ran. The old bools True/False
        still work, with a DeprecationWarning.
    jacobian : callable, optional
        ``jacobian(p, x) -> (mu, {name: d mu / d p[name]})``, each derivative of shape
        ``mu.shape + p[name].shape``, for every parameter with a free element: an
        exact Jacobian of the model, used instead of autodiff by least-squares
        solvers (``'lm'``) and for the Gauss-Newton covariance. The bound transforms
        and the likelihood's residual derivative (elementwise in the model, as for
        every built-in likelihood) are applied by gradfit.
    chunk_size : int, optional
        Evaluate the likelihood this many rows of ``x``/``y`` at a time
        (:mod:`gradfit.data`): ``x``/``y`` may then be ``numpy.memmap`` or h5py
        datasets. With ``y=None``, ``x`` is a list of ``(x_c, y_c)`` chunks or a
        callable returning an iterator of them.
    distributed : bool
        Under ``torchrun``: this rank's ``x``/``y`` are its shard of the data and the
        ranks fit one likelihood together (:mod:`gradfit.distributed`).
    engine : {'torch', 'numba', 'auto'}
        ``'numba'``: the compiled engine of :func:`gradfit.fit_batch` for one small fit
        (a loop of many small fits: about a millisecond each); it takes what
        ``fit_batch(engine='numba')`` takes (scalar parameters, a model elementwise in its
        points, Gaussian or Poisson, bounds, Normal priors, float64 on the CPU) and
        ``method='auto'``/``'lm'``, with dense errors; its Levenberg–Marquardt is the
        batched one's, so its iterations and message differ from the torch solver's
        while the answer agrees to the tolerances. The first fit of a model compiles
        it (seconds; cached on disk). ``'auto'``: ``'numba'`` where it can, else
        ``'torch'``.

    Returns
    -------
    FitResult
    """
    errors = _errors_mode(errors, "fit")
    if chunk_size is not None or distributed or y is None:
        from .data import fit_data

        if jacobian is not None:
            raise ValueError("jacobian= is not supported with chunked or distributed data "
                             "(chunk_size=, distributed=True or y=None); the autodiff "
                             "Jacobian is used there")
        return fit_data(model, x, y, params, likelihood=likelihood, method=method,
                        priors=priors, device=device, dtype=dtype, chunk_size=chunk_size,
                        distributed=distributed, run_kwargs=dict(
                            max_iter=max_iter, tol=tol, progress=progress, options=options,
                            strict=strict, errors=errors),
                        build_problem=build_problem, run_problem=run_problem)
    if engine not in _ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of: {', '.join(_ENGINES)}")
    prob = build_problem(model, x, y, params, likelihood=likelihood, priors=priors,
                         device=device, dtype=dtype, jacobian=jacobian)
    if engine != "torch":
        res = _fit_native(prob, method, max_iter, tol, errors, strict, engine == "numba")
        if res is not None:
            return res
    return run_problem(prob, method, max_iter=max_iter, tol=tol, progress=progress,
                       options=options, strict=strict, errors=errors)


_ENGINES = ("torch", "numba", "auto")


def _fit_native(prob: Problem, method, max_iter, tol, errors, strict, required):
    """One fit on the compiled engine (:mod:`gradfit.solvers.native`): batched_lm's
    iteration in Numba, the errors from its JᵀJ (or, for Poisson, the exact Hessian it
    generates). None where the engine cannot take the fit and ``required`` is False."""
    from .solvers import native

    t0 = time.perf_counter()
    space, lik = prob.space, prob.likelihood
    if method not in ("auto", "lm"):
        why = f"it runs Levenberg–Marquardt (method 'lm'), and this fit asks for {method!r}"
    elif errors not in ("hessian", "dense", "none"):
        why = f"its errors are dense ('hessian') or 'none', not {errors!r}"
    elif space.n_free == 0:
        why = "there are no free parameters"
    elif space.n_free > 64:
        why = f"it is for small fits; this one has {space.n_free} free parameters"
    else:
        why = None
    names = list(space.names)
    free_pos = [k for k, nm in enumerate(names) if bool(np.asarray(space.free[nm]).all())]
    free_names = [names[k] for k in free_pos]
    if why is None:
        why = native.refusal(lik, priors=prob.priors, free=free_names, space=space,
                             device=prob.device, dtype=prob.dtype)
    kernel = None
    pri = native.prior_arrays(prob.priors, free_names) if why is None else None
    start = space.unflatten_numpy(space.theta0)
    P = np.array([[float(start[nm]) for nm in names]])
    Y = prob.yt.detach().cpu().numpy().astype(np.float64).reshape(1, -1)
    if why is None:
        def check(kern):
            tobj = prob.theta_objective()
            theta = torch.as_tensor(space.theta0, dtype=prob.dtype)
            r, J = (t.detach().numpy() for t in tobj.residuals_and_jacobian(theta))
            H_t = tobj.hessian(theta).detach().numpy()[None] if kern.has_hessian else None
            native.check_kernel(kern, P, Y, np.array([0.5 * r @ r]), (J.T @ J)[None],
                                (J.T @ r)[None], H_t, priors=pri)
        try:
            kernel = native.cached_kernel(prob.model, names, free_pos, prob.xt, P[0],
                                          tuple(prob.yt.shape), lik, params=_ModelParams,
                                          check=check)
        except native.NotCompilable as exc:
            why = str(exc)
    if why is not None:
        if required:
            raise ValueError(f"engine='numba' cannot fit this: {why}")
        return None
    tols = {"gtol": 1e-10, "ftol": 1e-15, "xtol": 1e-15}
    if tol is not None:
        tols = dict.fromkeys(tols, float(tol))
    bounds = (space.theta_lo, space.theta_hi) if space.bounded else None
    cost, code, nit, nfev, A, _ = kernel.run(
        P, Y, max_iter=1000 if max_iter is None else int(max_iter),
        Z=space.to_internal(space.theta0)[None], bounds=bounds, priors=pri, **tols)
    code, n = int(code[0]), space.n_free
    fun = float(cost[0])
    poisson = kernel.has_hessian
    theta = P[0, free_pos]
    theta_t = torch.as_tensor(theta, dtype=prob.dtype)
    if prob.priors:  # the objective with the priors' constants (and fixed parameters')
        with torch.no_grad():
            fun = float(prob.nll(theta_t)) if math.isfinite(fun) else fun
    elif poisson:
        fun += float(native.poisson_nll_offset(Y)[0])
    success = code in SUCCESS_CODES and math.isfinite(fun)
    message = MESSAGES.get(code, "unknown status") if math.isfinite(fun) else \
        f"the objective is not finite at the end ({MESSAGES.get(code, 'unknown')})"
    cov, error_method, extra = np.full((n, n), np.nan), "none", 0
    if errors != "none" and math.isfinite(fun):
        # (with bounds the solver's JᵀJ is in z: the errors want it in theta)
        H = kernel.hessians(P, Y, pri)[0] if poisson else \
            (kernel.normal(P[0], Y[0], pri)[1] if space.bounded else A[0])
        cov = covariance_from_hessian(H, list(space.labels))
        # (least squares: the RSS of the data, without the priors' residuals)
        cov = cov * _variance_scale(prob, theta_t if prob.priors else None,
                                    rss=None if prob.priors else 2.0 * fun, stacklevel=4)
        error_method = "dense-hessian" if poisson else "dense-gauss-newton"
        extra = 1 if poisson else 0
    err = np.sqrt(np.diag(cov))
    bounds_hit = _bounds_hit(space, theta, errors != "none", stacklevel=3)
    res = FitResult(
        params=space.unflatten_numpy(theta), errors=space.unflatten_numpy(err, fill_fixed=0.0),
        cov=cov, corr=correlation(cov), names=list(space.labels), fun=fun, success=success,
        message=message, method="lm", nfev=int(nfev[0]) + extra, njev=int(nfev[0]),
        nit=int(nit[0]), time_s=time.perf_counter() - t0, ndata=prob.ndata, dof=prob.ndata - n,
        at_bounds=bounds_hit, problem=prob, error_method=error_method, engine="numba")
    if strict and not success:
        raise FitError(f"fit did not succeed: {message}")
    return res


def minimize(nll, params, method="auto", *, priors=None, device="cpu", dtype=torch.float64,
             strict=False, max_iter=None, tol=None, progress=False, options=None,
             errors="hessian") -> FitResult:
    """Minimise any scalar ``nll(p)`` (e.g. a −log posterior) over named parameters.

    The errors are from the inverse Hessian of ``nll`` at the minimum, so ``nll``
    should be a negative log-likelihood or log-posterior for them to mean 1σ.
    Parameters are as for :func:`fit`.
    """
    errors = _errors_mode(errors, "minimize")
    prob = build_minimize_problem(nll, params, priors=priors, device=device, dtype=dtype)
    return run_problem(prob, method, max_iter=max_iter, tol=tol, progress=progress,
                       options=options, strict=strict, errors=errors)
