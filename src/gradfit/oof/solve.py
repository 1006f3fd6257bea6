"""oof.fit: the Zernike aperture phase from OOF beam maps, by maximum likelihood.

The fit is a pipeline of named steps, each a small function below:

1. :func:`_check_inputs`: the observation, the order, the options;
2. :func:`_data`: the data in units of the in-focus peak, their noise, the likelihood;
3. :func:`_build_model`: the aperture grid size (:mod:`~gradfit.oof.grid`) and the
   :class:`~gradfit.oof.model.BeamModel`;
4. :func:`_minimise`: :func:`gradfit.fit` from one start (or order by order), and the
   multi-start when the first fit does not describe the data;
5. :func:`_extra_errors`: profile intervals or MCMC, when asked;
6. :func:`_solution`: the immutable :class:`~gradfit.oof.solution.Solution`.

The minimiser, the likelihood and the errors are the core library's; this module only
builds the parameters (:mod:`~gradfit.oof.nuisance`) and hands the model's exact
Jacobian (:meth:`~gradfit.oof.model.BeamModel.jacobian`) to :func:`gradfit.fit`.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

import gradfit
from gradfit.likelihoods import Likelihood
from gradfit.objective import resolve_device

from .grid import choose_grid_size
from .model import BeamModel, torch_threads
from .nuisance import NUISANCE
from .observation import Observation
from .solution import CONVENTION, Solution
from .telescope import Telescope, get_telescope
from .zernike import zernike_count, zernike_labels

__all__ = ["fit", "Solution", "estimate_noise", "CONVENTION", "NUISANCE", "ERRORS",
           "JACOBIANS"]

_LIKELIHOODS = ("gaussian", "cauchy")
#: choices of ``errors``
ERRORS = ("hessian", "none", "profile", "mcmc")
#: choices of ``jacobian``
JACOBIANS = ("auto", "exact", "autodiff")
#: robust normalised residual above which 'auto' multi-start tries other starts; a
#: good fit gives 1 +- 0.05 for a few thousand points; local minima seen at 1.5-5
MISFIT_LIMIT = 1.25


def estimate_noise(m) -> float:
    """Noise sigma of one beam map from its edges (see :meth:`BeamMap.noise`)."""
    return m.noise()


# -------------------------------------------------------------- 1. the inputs
@dataclass(frozen=True)
class _Settings:
    """The checked options of one fit (what every step after the checks needs)."""

    order: int
    telescope: Telescope
    free: tuple
    start: dict
    method: str
    priors: dict | None
    max_iter: int | None
    device: torch.device
    dtype: torch.dtype
    jacobian: bool
    report: object
    errors: bool


def _check_inputs(obs, order, telescope, free, start, n_starts, errors, jacobian,
                  transform) -> tuple:
    """Check everything a user passes; returns ``(order, telescope, free, start)``."""
    if errors not in ERRORS:
        raise ValueError(f"unknown errors {errors!r}; choose one of: {', '.join(ERRORS)}")
    if jacobian not in JACOBIANS:
        raise ValueError(f"unknown jacobian {jacobian!r}; choose one of: {', '.join(JACOBIANS)}")
    _check_obs(obs)
    tel = get_telescope(telescope if telescope is not None else _need_telescope(obs))
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
        raise ValueError(f"order must be an integer >= 1, got {order!r}")
    order = int(order)
    if isinstance(free, str):
        free = (free,)
    free = tuple(free)
    unknown = [f for f in free if f not in NUISANCE]
    if unknown:
        raise ValueError(f"unknown free parameter(s) {', '.join(map(repr, unknown))}; choose "
                         f"from: {', '.join(NUISANCE)}")
    start = dict(start or {})
    bad = [k for k in start if k not in NUISANCE and k != "K"]
    if bad:
        raise ValueError(f"unknown start value(s) {', '.join(map(repr, bad))}; choose from: K, "
                         f"{', '.join(NUISANCE)}")
    _check_order(obs, order, sum(NUISANCE[f].n_free(len(obs.maps)) for f in free))
    if n_starts != "auto" and (isinstance(n_starts, bool) or not isinstance(
            n_starts, (int, np.integer)) or n_starts < 1):
        raise ValueError(f"n_starts must be 'auto' or an integer >= 1, got {n_starts!r}")
    if jacobian == "exact" and transform != "mft":
        raise ValueError(f"jacobian='exact' needs transform='mft', not {transform!r}; use "
                         "jacobian='auto' or 'autodiff'")
    return order, tel, free, start


def _check_obs(obs: Observation) -> None:
    if not isinstance(obs, Observation):
        raise TypeError(f"obs must be a gradfit.oof.Observation, not {type(obs).__name__}")
    if not obs.maps:
        raise ValueError("observation has no beam maps")
    if not (obs.wavelength_m > 0 and math.isfinite(obs.wavelength_m)):
        raise ValueError(f"observation wavelength must be > 0, got {obs.wavelength_m}")
    for i, m in enumerate(obs.maps):
        label = m.name or f"map {i}"
        bad = ~np.isfinite(m.power)
        if bad.any():
            raise ValueError(f"{label}: {int(bad.sum())} of {m.n} BEAM values are not finite; "
                             "mask them before fitting")
        if not np.any(m.power != 0):
            raise ValueError(f"{label}: the beam map is all zero")
        if m.n < 3:
            raise ValueError(f"{label}: {m.n} samples are too few for a fit")
    if len(obs.maps) < 2:
        raise ValueError(
            f"an OOF fit needs at least 2 maps at different defocus; got {len(obs.maps)}")
    if len({round(m.dz, 12) for m in obs.maps}) < 2:
        raise ValueError("all maps have the same defocus dz; OOF needs defocused maps")


def _check_order(obs: Observation, order: int, n_free: int) -> None:
    side = min(m.side for m in obs.maps)
    max_order = side - 2
    npts = obs.n_points
    while max_order >= 0 and 3 * (zernike_count(max_order) - 1 + n_free) > npts:
        max_order -= 1
    if order > max_order:
        raise ValueError(
            f"order {order} is too high for the map size ({side} samples along the shortest "
            f"map axis, {npts} samples in all): a fit of order N needs N + 2 samples per "
            f"axis and 3 samples per free parameter; the highest possible order here is "
            f"{max(max_order, 0) if max_order >= 1 else 'none (maps too small)'}"
        )


def _need_telescope(obs):
    if not obs.telescope:
        raise ValueError("the observation names no telescope; pass telescope=... "
                         "(e.g. 'effelsberg' or a Telescope)")
    return obs.telescope


def _reporter(progress):
    """``report(**info)`` for ``progress``: None/False (silent), True (stderr) or a callable."""
    if progress is None or progress is False:
        return lambda **info: None
    if progress is True:
        def report(**info):
            parts = [str(info.get("stage", ""))]
            parts += [f"{k} {v}" for k, v in info.items() if k != "stage" and v is not None]
            sys.stderr.write("\r  " + ", ".join(parts) + " " * 8)
            if info.get("stage") == "done":
                sys.stderr.write("\n")
            sys.stderr.flush()

        return report
    if callable(progress):
        return lambda **info: progress(info)
    raise TypeError(f"progress must be a bool or a callable progress(info), not "
                    f"{type(progress).__name__}")


# ----------------------------------------------------------------- 2. the data
@dataclass(frozen=True, eq=False)
class _Data:
    """The data in units of the in-focus peak, with per-point noise and the likelihood."""

    y: np.ndarray
    sigma: np.ndarray
    scale: float
    likelihood: object
    sigma_source: str


def _data(obs: Observation, likelihood) -> _Data:
    ref = obs.maps[obs.infocus_index]
    scale = float(np.max(ref.power))
    if not scale > 0:
        raise ValueError(f"{ref.name or 'in-focus map'}: its maximum is {scale}; "
                         "expected a positive beam peak")
    y = np.concatenate([m.power for m in obs.maps]) / scale
    sig_parts, source = [], "given"
    for m in obs.maps:
        if m.sigma is not None:
            sig_parts.append(m.sigma / scale)
        else:
            source = "estimated from the map edges"
            s = m.noise() / scale
            if not s > 0:
                s = 1e-6  # noiseless data: any small sigma gives the same minimum
            sig_parts.append(np.full(m.n, s))
    sigma = np.concatenate(sig_parts)
    if np.any(~np.isfinite(sigma)) or np.any(sigma <= 0):
        raise ValueError("the noise sigma of some samples is not positive and finite")
    return _Data(y, sigma, scale, _likelihood(likelihood, sigma), source)


def _likelihood(likelihood, sigma_flat):
    if isinstance(likelihood, Likelihood):
        return likelihood
    if not isinstance(likelihood, str) or likelihood.lower() not in _LIKELIHOODS:
        raise ValueError(
            f"unknown likelihood {likelihood!r}; choose one of: {', '.join(_LIKELIHOODS)} "
            "(or pass a gradfit likelihood object)"
        )
    if likelihood.lower() == "gaussian":
        return gradfit.Gaussian(sigma=sigma_flat)
    return gradfit.Cauchy(gamma=sigma_flat)


# ---------------------------------------------------------------- 3. the model
def _build_model(obs, tel, order, data: _Data, grid, transform, illumination, device,
                 dtype) -> BeamModel:
    """The aperture grid (given, or the converged one for this noise) and the model."""
    with torch_threads(1):
        n_grid = int(grid) if grid is not None else choose_grid_size(
            obs, tel, float(np.median(data.sigma)), order=max(order, 3),
            illumination=illumination)
        return BeamModel(obs, tel, order, n_grid, transform=transform,
                         illumination=illumination, device=device, dtype=dtype)


# ------------------------------------------------------------------ 4. minimise
class _Bound:
    """The model as :func:`gradfit.fit` sees it: fixed values merged in, progress reported.

    ``jacobian`` is the hook of ``gradfit.fit(jacobian=...)``: the model's exact
    derivatives for the fitted parameters ``names``.
    """

    def __init__(self, model: BeamModel, const: dict, names: tuple, report, start_index):
        self.model, self.const, self.names = model, const, names
        self.report, self.start_index = report, start_index
        self.calls, self.last = 0, 0.0

    def _merged(self, p):
        self.calls += 1
        now = time.perf_counter()
        if now - self.last > 0.2:
            self.last = now
            self.report(stage="fit", nit=self.calls, start=self.start_index)
        q = dict(self.const)
        q.update(p)
        return q

    def __call__(self, p, x):
        return self.model(self._merged(p))

    def jacobian(self, p, x):
        return self.model.jacobian(self._merged(p), self.names)


def _parameters(model: BeamModel, data: _Data, s: _Settings, K0) -> tuple[dict, dict]:
    """``(params, const)``: the fitted parameters (gradfit.Param) and the fixed values."""
    B, ref = model.n_maps, model.infocus_index
    params = {"K": np.asarray(K0[1:], dtype=np.float64)}
    const = {}
    for name, spec in NUISANCE.items():
        if name in s.free or name == "amp":
            continue
        if name in ("c_dB", "q", "x0", "y0"):
            const[name] = float(s.start.get(name, spec.default))
        elif name in s.start:
            const[name] = np.broadcast_to(np.asarray(s.start[name], dtype=np.float64),
                                          spec.shape(B)).copy()
    for name in s.free:  # in the order given; amp last (its start needs the others)
        spec = NUISANCE[name]
        if name == "amp":
            continue
        shape = spec.shape(B)
        value = np.broadcast_to(np.asarray(s.start.get(name, spec.default), dtype=np.float64),
                                shape).copy()
        if not shape:
            params[name] = gradfit.Param(float(value), bounds=spec.bounds)
            continue
        fixed = np.zeros(shape, dtype=bool)
        if spec.infocus_fixed:
            fixed[ref] = True
            value[ref] = spec.default
        params[name] = gradfit.Param(value, bounds=spec.bounds, fixed=fixed)
    if "amp" in s.free:
        amp0 = s.start.get("amp")
        if amp0 is None:  # the linear least-squares amplitude at the start
            p0 = {k: (v.value if isinstance(v, gradfit.Param) else v) for k, v in params.items()}
            p0.update(const)
            with torch.no_grad():
                m0 = model(p0).cpu().numpy()
            w = 1 / data.sigma**2
            amp0 = float(np.sum(w * data.y * m0) / np.sum(w * m0 * m0))
        params["amp"] = float(amp0)
    else:
        const["amp"] = float(s.start.get("amp", NUISANCE["amp"].default))
    return params, const


def _fit_from(model: BeamModel, data: _Data, s: _Settings, K0, start_index: int):
    """One call of :func:`gradfit.fit` from full-length start coefficients ``K0``."""
    params, const = _parameters(model, data, s, K0)
    bound = _Bound(model, const, tuple(params), s.report, start_index)
    jac = bound.jacobian if s.jacobian and model.transform == "mft" else None
    with warnings.catch_warnings():
        # c_dB ending on its bound is reported in the fit message, not as a warning
        warnings.simplefilter("ignore", gradfit.FitWarning)
        # LM's polish (extra Gauss-Newton/Newton steps past convergence, for NIST-grade
        # digits) halves the speed here and changes no coefficient beyond the noise
        options = {"polish": False} if s.method == "lm" else None
        kw = {} if s.errors else {"errors": "none"}
        # the sample points live in the model; gradfit.fit's x is not used
        res = gradfit.fit(bound, None, data.y, params=params, likelihood=data.likelihood,
                          method=s.method, priors=s.priors, device=s.device, dtype=s.dtype,
                          max_iter=s.max_iter, options=options, jacobian=jac, **kw)
    return res, const


def _misfit(res, const, model, data: _Data) -> float:
    """Robust normalised residual: 1.4826 MAD(r / sigma); about 1 for a good fit."""
    p = dict(const)
    p.update(res.params)
    with torch.no_grad():
        mu = model(p).cpu().numpy()
    r = (data.y - mu) / data.sigma
    return float(1.4826 * np.median(np.abs(r - np.median(r))))


def _minimise(model, data, s: _Settings, stepwise: bool, n_starts, seed: int, obs, grid_n,
              transform, illumination):
    """Fit (order by order with ``stepwise``), then the multi-start; returns
    ``(best, const, misfit, fits)`` with ``fits`` every result in the order run."""
    order = s.order
    orders = list(range(1, order + 1)) if stepwise else [order]
    prev_K = _start_K(s.start.get("K"), order)
    fits = []
    for o in orders:
        m_o = model if o == order else BeamModel(
            obs, s.telescope, o, grid_n, transform=transform, illumination=illumination,
            device=s.device, dtype=s.dtype)
        Ko = np.zeros(zernike_count(o))
        k = min(len(prev_K), len(Ko))
        Ko[:k] = prev_K[:k]
        best, const = _fit_from(m_o, data, s, Ko, 0)
        fits.append(best)
        prev_K = np.concatenate([[0.0], best.params["K"]])
    misfit = _misfit(best, const, model, data)

    # multi-start: other starting points when the fit does not describe the data
    auto = n_starts == "auto"

    def poor(res, mis):
        return not res.success or mis > MISFIT_LIMIT

    extra = (3 if poor(best, misfit) else 0) if auto else int(n_starts) - 1
    rng = np.random.default_rng(seed)
    for i in range(extra):
        Ks = rng.normal(0.0, 0.1, zernike_count(order))
        Ks[0] = 0.0
        r, c = _fit_from(model, data, s, Ks, i + 1)
        fits.append(r)
        if (r.success, -r.fun) > (best.success, -best.fun):
            best, const, misfit = r, c, _misfit(r, c, model, data)
        if auto and not poor(best, misfit):
            break
    return best, const, misfit, fits


def _start_K(K, order):
    nk = zernike_count(order)
    if K is None:
        return np.zeros(nk)
    K = np.asarray(K, dtype=np.float64).ravel()
    if K.size == nk - 1:
        K = np.concatenate([[0.0], K])
    if K.size > nk:
        K = K[:nk]
    if K.size < nk:
        K = np.concatenate([K, np.zeros(nk - K.size)])
    K[0] = 0.0
    return K


# ---------------------------------------------------------- 5. extra errors
def _extra_errors(res, errors: str, opts: dict, report) -> dict:
    """Profile intervals or posterior summaries of every free coefficient."""
    nk = len(np.asarray(res.params["K"]))
    labels = [f"K[{i}]" for i in range(nk)]
    free = [lab in res.names for lab in labels]
    t0 = time.perf_counter()
    if errors == "profile":
        from gradfit.profile import interval

        iv = [None]
        for i, lab in enumerate(labels):
            report(stage="profile", nit=i + 1, of=nk)
            iv.append(list(map(float, interval(res, lab, cl=0.6827))) if free[i] else None)
        return {"method": "profile", "cl": 0.6827, "time_s": time.perf_counter() - t0,
                "per_coefficient": {"interval_waves": iv}}
    from gradfit.sampling import sample_result

    method = opts.pop("method", "nuts")
    opts.setdefault("num_samples", 300)
    opts.setdefault("num_chains", 2)
    report(stage="mcmc")
    smp = sample_result(res, method=method, **opts)
    draws = np.asarray(smp.samples["K"], dtype=np.float64).reshape(-1, nk)
    mean = [None] + [float(v) for v in draws.mean(axis=0)]
    std = [None] + [float(v) for v in draws.std(axis=0, ddof=1)]
    rhat = np.asarray(smp.rhat.get("K", np.nan), dtype=np.float64)
    return {"method": "mcmc", "sampler": method, "num_samples": int(draws.shape[0]),
            "max_rhat": float(np.nanmax(rhat)) if rhat.size else None,
            "time_s": time.perf_counter() - t0, "samples": draws,
            "per_coefficient": {"posterior_mean_waves": mean, "posterior_std_waves": std}}


# -------------------------------------------------------------- 6. solution
def _nuisance_summary(res, const) -> dict:
    """Name -> {"value", "error"} of the fitted nuisance parameters and the fixed ones
    the model used (error 0)."""
    out = {}
    for name in NUISANCE:
        if name in res.params:
            v, e = np.asarray(res.params[name]), np.asarray(res.errors[name])
            out[name] = {"value": v.tolist() if v.ndim else float(v),
                         "error": e.tolist() if e.ndim else float(e)}
        elif name in const and name != "amp":
            v = np.asarray(const[name])
            out[name] = {"value": v.tolist() if v.ndim else float(v),
                         "error": np.zeros_like(v).tolist() if v.ndim else 0.0}
    return out


def _solution(obs, tel, model, data: _Data, s: _Settings, best, const, misfit, fits,
              stepwise, n_threads, extra, t_start) -> Solution:
    order = s.order
    K = np.concatenate([[0.0], np.asarray(best.params["K"], dtype=np.float64)])
    Ke = np.concatenate([[0.0], np.asarray(best.errors["K"], dtype=np.float64)])
    params = dict(const)
    params.update({k: v for k, v in best.params.items()})
    n_orders = order if stepwise else 1
    fit_info = {
        "success": bool(best.success),
        "message": str(best.message),
        "method": str(best.method),
        "nfev": int(sum(r.nfev for r in fits)),
        "nit": int(best.nit),
        "time_s": time.perf_counter() - t_start,
        "neg_log_likelihood": float(best.fun),
        "likelihood": getattr(data.likelihood, "name", str(data.likelihood)),
        "ndata": int(data.y.size),
        "n_free": len(best.names),
        "sigma": data.sigma_source,
        "normalised_residual": float(misfit),
        "grid_cells": model.grid.n,
        "grid_pixels": model.grid.n_pixels,
        "transform": model.transform,
        "jacobian": "exact" if s.jacobian and model.transform == "mft" else "autodiff",
        "threads": n_threads,
        "starts": len(fits) - (n_orders - 1),
        "stepwise": bool(stepwise),
        "at_bounds": list(getattr(best, "at_bounds", ())),
        "data_scale": data.scale,
    }
    return Solution(
        telescope=tel, order=order, wavelength_m=float(obs.wavelength_m),
        frequency_hz=float(obs.frequency_hz), labels=zernike_labels(order), K_waves=K,
        K_err_waves=Ke, nuisance=_nuisance_summary(best, const), fit=fit_info, result=best,
        extra_errors=extra, illumination=model.illumination, _model=model, _params=params,
        _scale=data.scale)


# ------------------------------------------------------------------------ fit
def fit(
    obs: Observation,
    order: int = 5,
    telescope: str | Telescope | None = None,
    likelihood="gaussian",
    method: str = "lm",
    device="cpu",
    dtype=torch.float64,
    priors: dict | None = None,
    free=("amp", "c_dB"),
    progress=None,
    *,
    start: dict | None = None,
    grid: int | None = None,
    transform: str = "mft",
    illumination: str = "pedestal",
    n_starts="auto",
    stepwise: bool = False,
    threads: int | None = None,
    max_iter: int | None = None,
    seed: int = 0,
    errors: str = "hessian",
    error_options: dict | None = None,
    jacobian: str = "auto",
) -> Solution:
    """Fit the Zernike aperture phase (and nuisance parameters) to OOF beam maps.

    Parameters
    ----------
    obs : Observation
        Two or more beam maps at known defocus.
    order : int
        Highest Zernike radial order; all coefficients but piston are fitted.
    telescope : str or Telescope, optional
        Defaults to ``obs.telescope``.
    likelihood : {'gaussian', 'cauchy'} or gradfit likelihood
        Gaussian with per-point sigma (given in the maps, else estimated from the map
        edges), or Cauchy with that sigma as half width (robust to glitches).
    method : str
        Minimiser of :func:`gradfit.fit` (default Levenberg-Marquardt).
    device, dtype :
        Where the model runs (default CPU, float64).
    priors : dict, optional
        Name -> gradfit prior, e.g. ``{"K": gradfit.Normal(0, 0.3)}`` (waves): MAP fit.
    free : iterable of str
        Nuisance parameters to fit besides K, any of :data:`gradfit.oof.nuisance.NUISANCE`:
        'amp', 'c_dB', 'q', 'x0', 'y0', and per map 'pointing' (offsets in lambda/D),
        'gain' (relative to the in-focus map, which stays fixed) and 'background'. The
        others stay at ``start`` values or their defaults (c_dB -12 dB, q 2, x0 = y0 = 0,
        no pointing offset, gain 1, background 0).
    progress : bool or callable, optional
        True prints the stage and iteration on stderr; a callable is called as
        ``progress({"stage": ..., "nit": ..., "fun": ...})`` while fitting.
    start : dict, optional
        Start (or fixed) values: ``'K'`` (waves, full length with piston, or without)
        and any nuisance parameter (per-map ones broadcast to one value per map).
    grid : int, optional
        Aperture cells across the dish; default from
        :func:`~gradfit.oof.grid.choose_grid_size`.
    transform : {'mft', 'dft', 'fft'}
        Beam evaluation (see :mod:`gradfit.oof.model`); 'mft' is exact and fastest.
    illumination : {'pedestal', 'gaussian'}
    n_starts : int or 'auto'
        Starts of a multi-start: 'auto' refits from up to 3 other starts (random K of
        0.1 waves rms) only when the first fit does not describe the data (robust
        normalised residual 1.4826 MAD(r / sigma) above ``MISFIT_LIMIT``), stopping at
        the first good one; an integer runs exactly that many and keeps the best.
    stepwise : bool
        Fit orders 1, 2, ..., ``order`` in turn, each seeded by the last.
    threads : int, optional
        Torch CPU threads during the fit (restored afterwards); default 1: on the
        2-core development machine one thread beat two at every size tried, from 33 x 33
        points on a 64-cell grid to 129 x 129 on a 512-cell grid, and two threads showed
        erratic stalls (``benchmarks/oof_vs_pyoof.py``). Pass more on bigger machines.
    max_iter : int, optional
        Iteration limit of the minimiser.
    seed : int
        Seed of the extra starts.
    errors : {'hessian', 'none', 'profile', 'mcmc'}
        'hessian' (default): 1σ errors from the inverse Hessian (Gauss-Newton for the
        Gaussian likelihood). 'none': no errors (NaN), a little faster. 'profile' adds
        the 68.27% profile-likelihood interval of every coefficient (about ten refits
        each). 'mcmc' adds posterior means and standard deviations from NUTS (pyro-ppl),
        and the surface-error map then comes from the posterior draws.
    error_options : dict, optional
        For 'mcmc': ``num_samples`` (default 300), ``warmup``, ``num_chains`` (2),
        ``method`` ('nuts', 'hmc' or 'emcee'), ``seed``.
    jacobian : {'auto', 'exact', 'autodiff'}
        'auto' (default) and 'exact': the model's exact Jacobian
        (:meth:`~gradfit.oof.model.BeamModel.jacobian`, a few batched transforms) for
        Levenberg-Marquardt and the errors, with transform 'mft'; 'autodiff': one
        autodiff pass per parameter (slower, the same numbers to rounding).

    Returns
    -------
    Solution
    """
    t_start = time.perf_counter()
    order, tel, free, start = _check_inputs(obs, order, telescope, free, start, n_starts,
                                            errors, jacobian, transform)
    s = _Settings(order=order, telescope=tel, free=free, start=start, method=method,
                  priors=priors, max_iter=max_iter, device=resolve_device(device), dtype=dtype,
                  jacobian=jacobian != "autodiff", report=_reporter(progress),
                  errors=errors != "none")
    data = _data(obs, likelihood)
    s.report(stage="grid")
    model = _build_model(obs, tel, order, data, grid, transform, illumination, s.device, dtype)
    n_threads = 1 if threads is None else int(threads)
    with torch_threads(n_threads):
        best, const, misfit, fits = _minimise(model, data, s, stepwise, n_starts, seed, obs,
                                              model.grid.n, transform, illumination)
        s.report(stage="done", fun=best.fun)
        extra = {}
        if errors == "none":
            extra = {"method": "none"}
        elif errors != "hessian" and best.success:
            extra = _extra_errors(best, errors, dict(error_options or {}), s.report)
    return _solution(obs, tel, model, data, s, best, const, misfit, fits, stepwise,
                     n_threads, extra, t_start)
