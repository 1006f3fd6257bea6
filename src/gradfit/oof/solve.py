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

import dataclasses
import math
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
from .progress import reporter
from .solution import CONVENTION, Solution
from .telescope import Telescope, get_telescope
from .zernike import zernike_count, zernike_labels

__all__ = ["fit", "Solution", "estimate_noise", "CONVENTION", "NUISANCE", "ERRORS",
           "JACOBIANS", "IDEAL_FREE", "REAL_FREE", "default_free", "CHI2R_LIMIT"]

_LIKELIHOODS = ("gaussian", "cauchy")
#: choices of ``errors``
ERRORS = ("hessian", "none", "profile", "mcmc", "jackknife", "bootstrap")
#: choices of ``jacobian``
JACOBIANS = ("auto", "exact", "autodiff")
#: robust normalised residual above which 'auto' multi-start tries other starts; a
#: good fit gives 1 +- 0.05 for a few thousand points; local minima seen at 1.5-5
MISFIT_LIMIT = 1.25
#: two starts whose -log L differ by less than this (half a unit of chi^2) found the
#: same minimum: the multi-start stops
AGREE = 0.5
#: reduced chi^2 above which the model does not describe the data to the noise: the
#: errors are scaled by sqrt(chi2r) and the summary says so (a good fit of a few
#: thousand samples gives 1 +- 0.05; 1.5 is far outside that)
CHI2R_LIMIT = 1.5
#: LM's stall stop (``options["stall"]`` of :func:`gradfit.solvers.lm.levenberg_marquardt`):
#: (window, rtol, ratio). On hopeless data (peak SNR 1-5 at order 5, or pure noise) LM
#: crawls along a flat direction, -log L falling by 1e-9 to 1e-8 of itself per iteration
#: for as long as it is let (to the 1000-iteration limit, 6 s a start on 3 x 33 x 33
#: samples); fits that converge shrink their progress geometrically even in a linear tail.
#: Measured (benchmarks/oof_low_snr.py; Effelsberg, order 5, 33 x 33; peak SNR 1000 to 1
#: and noise, 40 LM runs): over 40 iterations the fall of each of 13 crawls reached 1.0-3.6 x
#: that of the 40 before (they stop after about 130-370 iterations), that of every
#: converging fit (8 to 460 iterations, 5 of them over 80) at most 0.09 x;
#: rtol 1e-6 of -log L ~ N/2 is 5e-7 N in -log L over 40 iterations (0.002 for N = 3267),
#: far below the 0.5 of a 1-sigma change. No fit under 80 iterations can stop here. A
#: stalled fit is not a success (its point along the flat direction is arbitrary); None
#: turns the stop off.
STALL = (40, 1e-6, 0.5)
#: no beam signal detected: the fitted beam's SNR (``fit["beam_snr"]``,
#: sqrt(sum((beam / sigma)^2)), amp / error(amp) with the other parameters held) below
#: this x sqrt(k), k the free parameters that shape the beam (all but backgrounds and
#: scan offsets; ``fit["beam_k"]``). A fit of pure noise finds the beam shape that best
#: matches the noise: its beam_snr^2 is the chi^2 those k parameters gain, about chi^2_k
#: (more, for the nonlinear shapes). Measured (benchmarks/oof_no_signal.py, Effelsberg,
#: 3 maps, oof.fit defaults; order 3 on 25 x 25, k = 11, 16 seeds; order 4 on 29 x 29,
#: k = 16, 8 seeds; order 5 on 33 x 33, k = 22, 8 seeds, and with measured noise, k = 28,
#: 5 seeds), beam_snr / sqrt(k): pure noise 0.67-1.73 (37 fits, 9 of them converged: a
#: "success" before this rule), peak SNR 10 3.63-6.27 (37 fits), SNR 30 10.1-18.3; at
#: SNR 3 the beam is lost in the noise (0.88-2.24 at order 3, 1.49-2.12 at order 5).
#: 2.5 sits 1.45x above the noise and 1.45x below SNR 10.
BEAM_SNR_LIMIT = 2.5
#: parameters that do not shape the beam (not counted in k above)
_NOT_BEAM = ("background", "background_plane", "scan_offset")
#: the optional per-scan offsets (``free=(..., "scan_offset")``): one offset per scan of
#: each map, relative to the map's first scan (whose offset the background holds)
SCAN_OFFSET = "scan_offset"
#: nuisance parameters freed by default for data of the model's own class (maps that
#: carry their noise sigma, as simulations do)
IDEAL_FREE = tuple(k for k, v in NUISANCE.items() if v.on_by_default)
#: freed by default for measured maps (no sigma given: data read from files or text):
#: amp, c_dB, pointing, gain, background
REAL_FREE = IDEAL_FREE + tuple(k for k, v in NUISANCE.items() if v.on_for_measured)


def default_free(obs) -> tuple:
    """The nuisance parameters :func:`fit` frees when ``free`` is not given.

    Maps that carry their noise (``sigma``) are taken as data of the model's own class,
    e.g. simulations: :data:`IDEAL_FREE`. Maps without it are measured maps, read from a
    file or text: :data:`REAL_FREE` adds a pointing offset and a gain per defocused map
    (relative to the in-focus map) and a background per map.
    """
    if all(m.sigma is not None for m in obs.maps):
        return IDEAL_FREE
    return REAL_FREE


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
    if isinstance(order, str) and order == "auto":
        pass
    elif isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
        raise ValueError(f"order must be an integer >= 1, got {order!r} (or 'auto': "
                         "chosen by BIC)")
    else:
        order = int(order)
    if free is None:
        free = default_free(obs)
    if isinstance(free, str):
        free = (free,)
    free = tuple(free)
    unknown = [f for f in free if f not in NUISANCE and f != SCAN_OFFSET]
    if unknown:
        raise ValueError(f"unknown free parameter(s) {', '.join(map(repr, unknown))}; choose "
                         f"from: {', '.join(NUISANCE)}, {SCAN_OFFSET}")
    start = dict(start or {})
    bad = [k for k in start if k not in NUISANCE and k != "K"]
    if bad:
        raise ValueError(f"unknown start value(s) {', '.join(map(repr, bad))}; choose from: K, "
                         f"{', '.join(NUISANCE)}")
    if order != "auto":
        _check_order(obs, order, _n_nuisance(obs, free))
    if n_starts != "auto" and (isinstance(n_starts, bool) or not isinstance(
            n_starts, (int, np.integer)) or n_starts < 1):
        raise ValueError(f"n_starts must be 'auto' or an integer >= 1, got {n_starts!r}")
    if jacobian == "exact" and transform == "fft":
        raise ValueError("jacobian='exact' needs transform='mft' or 'dft', not 'fft'; use "
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
        bad = ~np.isfinite(m.power) & m.valid
        if bad.any():
            raise ValueError(f"{label}: {int(bad.sum())} of {m.n} BEAM values are not finite; "
                             "mask them before fitting")
        if not np.any(m.power[m.valid] != 0):
            raise ValueError(f"{label}: the beam map is all zero")
        if m.n_used < 3:
            raise ValueError(f"{label}: {m.n_used} samples are too few for a fit")
    if len(obs.maps) < 2:
        raise ValueError(
            f"an OOF fit needs at least 2 maps at different defocus; got {len(obs.maps)}")
    if len({round(m.dz, 12) for m in obs.maps}) < 2:
        raise ValueError("all maps have the same defocus dz; OOF needs defocused maps")


def _n_nuisance(obs, free) -> int:
    """Free nuisance values (scan offsets: one per scan and map, less one per map)."""
    n = sum(NUISANCE[f].n_free(len(obs.maps)) for f in free if f in NUISANCE)
    if SCAN_OFFSET in free:
        from .noise import raster_shape  # gridded, or a raster whose positions jitter

        n += sum(max(min(sh) - 1, 0) for sh in map(raster_shape, obs.maps) if sh)
    return n


def _max_order(obs: Observation, n_free: int) -> int:
    """The highest order the maps can constrain (see :func:`_check_order`)."""
    max_order = min(m.side for m in obs.maps) - 2
    while max_order >= 0 and 3 * (zernike_count(max_order) - 1 + n_free) > obs.n_points:
        max_order -= 1
    return max_order


def _check_order(obs: Observation, order: int, n_free: int) -> None:
    side = min(m.side for m in obs.maps)
    npts = obs.n_points
    max_order = _max_order(obs, n_free)
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


# ----------------------------------------------------------------- 2. the data
@dataclass(frozen=True, eq=False)
class _Data:
    """The data in units of the in-focus peak, with per-point noise and the likelihood.

    ``keep`` holds the flat indices (into the model's output, map after map) of the
    samples that enter the likelihood, or None when no sample is masked; ``map_of``
    the map of each kept sample; ``noise`` the scan-noise estimate when it set sigma.
    """

    y: np.ndarray
    sigma: np.ndarray
    scale: float
    likelihood: object
    sigma_source: str
    keep: np.ndarray | None = None
    map_of: np.ndarray | None = None
    noise: object = None
    scan_index: np.ndarray | None = None
    scan_shape: tuple | None = None
    scan_axis: str | None = None

    def select(self, mu):
        """The model (flat, every sample) at the samples of the likelihood."""
        return mu if self.keep is None else mu[self.keep]


#: how sigma was set, for ``Solution.fit["sigma"]``
SIGMA_SCAN = "scan noise of the maps (gradfit.oof.noise.observation_noise)"
SIGMA_EDGES = "estimated from the map edges"


def _scan_axis(obs) -> str:
    """'u', 'v' (from ``obs.meta['scan_axis']``, as the text reader records it) or 'auto'."""
    axes = obs.meta.get("scan_axis") if isinstance(obs.meta, dict) else None
    if isinstance(axes, str):
        axes = [axes]
    if axes and len(set(axes)) == 1 and axes[0] in ("u", "v"):
        return axes[0]
    return "auto"


def _with_scans(obs, data: _Data, axis=None) -> _Data:
    """``data`` with the scan of every model sample (for the per-scan offsets)."""
    from .noise import detect_scan_axis, raster_shape, scan_labels

    if not all(raster_shape(m) is not None for m in obs.maps):
        raise ValueError(f"free={SCAN_OFFSET!r} needs maps on a regular grid (rasters of scans)")
    axis = axis or _scan_axis(obs)
    if axis == "auto":
        axis = detect_scan_axis(obs.maps[obs.infocus_index])
    labels = [scan_labels(m, axis) for m in obs.maps]
    S = int(max(lab.max() for lab in labels)) + 1
    index = np.concatenate([b * S + lab for b, lab in enumerate(labels)])
    return dataclasses.replace(data, scan_index=index, scan_shape=(len(obs.maps), S),
                               scan_axis=axis)


def _evaluate(model: BeamModel, p: dict, data: _Data, index=None):
    """The model at every sample, per-scan offsets included (flat, map after map)."""
    q = dict(p)
    so = q.pop(SCAN_OFFSET, None)
    mu = model(q)
    if so is not None:
        so = torch.as_tensor(so, dtype=mu.dtype, device=mu.device).reshape(-1)
        idx = index if index is not None else torch.as_tensor(data.scan_index,
                                                              device=mu.device)
        mu = mu + so[idx]
    return mu


def _honest_noise(obs, models=None):
    """The adopted :class:`~gradfit.oof.noise.ScanNoise` of gridded maps, else None."""
    from .noise import observation_noise, raster_shape

    # gridded maps, or rasters whose recorded positions jitter (the noise uses the raster)
    shapes = [raster_shape(m) for m in obs.maps]
    if not all(sh is not None and min(sh) >= 8 for sh in shapes):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            adopted, _ = observation_noise(obs, _scan_axis(obs), models=models)
    except ValueError:
        return None
    if not (math.isfinite(adopted.sigma_total) and adopted.sigma_total > 0):
        return None
    return adopted


def _data(obs: Observation, likelihood) -> _Data:
    ref = obs.maps[obs.infocus_index]
    scale = float(np.max(ref.power[ref.valid]))
    if not scale > 0:
        raise ValueError(f"{ref.name or 'in-focus map'}: its maximum is {scale}; "
                         "expected a positive beam peak")
    honest = None
    if any(m.sigma is None for m in obs.maps):
        honest = _honest_noise(obs)
    y_parts, sig_parts, keep, map_of = [], [], [], []
    source, offset = "given", 0
    for b, m in enumerate(obs.maps):
        ok = m.valid
        keep.append(offset + np.flatnonzero(ok))
        offset += m.n
        map_of.append(np.full(m.n_used, b))
        y_parts.append(m.power[ok] / scale)
        if m.sigma is not None:
            sig_parts.append(m.sigma[ok] / scale)
            continue
        if honest is not None:
            source = SIGMA_SCAN
            s = honest.sigma_total / scale
        else:
            source = SIGMA_EDGES
            s = m.noise() / scale
            if not s > 0:
                s = 1e-6  # noiseless data: any small sigma gives the same minimum
        sig_parts.append(np.full(m.n_used, s))
    y = np.concatenate(y_parts)
    sigma = np.concatenate(sig_parts)
    if np.any(~np.isfinite(sigma)) or np.any(sigma <= 0):
        raise ValueError("the noise sigma of some samples is not positive and finite")
    keep = np.concatenate(keep)
    return _Data(y, sigma, scale, _likelihood(likelihood, sigma), source,
                 keep=None if keep.size == offset else keep, map_of=np.concatenate(map_of),
                 noise=honest if source == SIGMA_SCAN else None)


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

    def __init__(self, model: BeamModel, const: dict, names: tuple, report, start_index,
                 keep=None, data=None):
        self.model, self.const, self.names = model, const, names
        self.data = data
        self.scan_index = (None if data is None or data.scan_index is None else
                           torch.as_tensor(data.scan_index, device=model.device))
        self.report, self.start_index = report, start_index
        self.calls, self.last = 0, 0.0
        # masked samples: the model runs on the full grid (fast transform), the
        # likelihood sees the kept samples only
        self.keep = None if keep is None else torch.as_tensor(keep, device=model.device)

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
        mu = _evaluate(self.model, self._merged(p), self.data, self.scan_index)
        return mu if self.keep is None else mu[self.keep]

    def jacobian(self, p, x):
        q = self._merged(p)
        so = q.pop(SCAN_OFFSET, None)
        names = tuple(n for n in self.names if n != SCAN_OFFSET)
        mu, d = self.model.jacobian(q, names)
        if so is not None:
            # offsets: one indicator column per scan
            so = torch.as_tensor(so, dtype=mu.dtype, device=mu.device)
            mu = mu + so.reshape(-1)[self.scan_index]
            if SCAN_OFFSET in self.names:
                D = mu.new_zeros(mu.numel(), so.numel())
                D[torch.arange(mu.numel(), device=mu.device), self.scan_index] = 1.0
                d[SCAN_OFFSET] = D.reshape(mu.numel(), *so.shape)
        if self.keep is None:
            return mu, d
        return mu[self.keep], {k: v[self.keep] for k, v in d.items()}


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
        if name == SCAN_OFFSET:
            fixed = np.zeros(data.scan_shape, dtype=bool)
            fixed[:, 0] = True  # the first scan's offset is the map's background
            params[name] = gradfit.Param(np.zeros(data.scan_shape), fixed=fixed)
            continue
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
                m0 = data.select(_evaluate(model, p0, data).cpu().numpy())
            w = 1 / data.sigma**2
            amp0 = float(np.sum(w * data.y * m0) / np.sum(w * m0 * m0))
        params["amp"] = float(amp0)
    else:
        const["amp"] = float(s.start.get("amp", NUISANCE["amp"].default))
    return params, const


def _fit_from(model: BeamModel, data: _Data, s: _Settings, K0, start_index: int):
    """One call of :func:`gradfit.fit` from full-length start coefficients ``K0``."""
    params, const = _parameters(model, data, s, K0)
    bound = _Bound(model, const, tuple(params), s.report, start_index, data.keep, data)
    jac = bound.jacobian if s.jacobian and model.tf.exact_jacobian else None
    with warnings.catch_warnings():
        # c_dB ending on its bound is reported in the fit message, not as a warning
        warnings.simplefilter("ignore", gradfit.FitWarning)
        # LM's polish (extra Gauss-Newton/Newton steps past convergence, for NIST-grade
        # digits) halves the speed here and changes no coefficient beyond the noise.
        # The first trust radius is 1x |D z0| (MINPACK-style), not the core's default 3x
        # (tuned on MGH's Biggs EXP6): from K = 0 the larger first step sent 2 of 12
        # Effelsberg simulations (33x33 and 49x49, order 5, seeds 200-205) into a valley
        # where LM crawled 1000 iterations (13 s); with 1x all 12 converged in 9-12.
        options = {"polish": False, "factor": 1.0, "stall": STALL} if s.method == "lm" \
            else None
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
        mu = data.select(_evaluate(model, p, data).cpu().numpy())
    r = (data.y - mu) / data.sigma
    return float(1.4826 * np.median(np.abs(r - np.median(r))))


def _minimise(model, data, s: _Settings, stepwise: bool, n_starts, seed: int, obs, grid_n,
              transform, illumination, start_time_factor: float = 2.0):
    """Fit (order by order with ``stepwise``), then the multi-start; returns
    ``(best, const, misfit, fits, starts)`` with ``fits`` every result in the order run
    and ``starts`` one record per start (the policy's log)."""
    order = s.order
    orders = list(range(1, order + 1)) if stepwise else [order]
    prev_K = _start_K(s.start.get("K"), order)
    fits = []
    t0 = time.perf_counter()
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
    first_time = time.perf_counter() - t0
    misfit = _misfit(best, const, model, data)
    starts = [{"start": 0, "neg_log_likelihood": float(best.fun), "success": bool(best.success),
               "normalised_residual": misfit, "time_s": first_time, "kept": True}]
    s.report(stage="start", start=0, fun=round(float(best.fun), 3),
             misfit=round(misfit, 3))

    # Multi-start policy ('auto'): other starts only when the first fit does not
    # describe the data (robust normalised residual above MISFIT_LIMIT, with the honest
    # noise of the maps, or no convergence); stop at the first start that describes it,
    # or that agrees with the best in -log L to AGREE (the same minimum found twice,
    # (both converged), or when the extra starts took start_time_factor x the first
    # fit's time. The kept start: see _keep (a converged local minimum is not kept over
    # a start lower by more than AGREE).
    auto = n_starts == "auto"

    def poor(res, mis):
        return not res.success or mis > MISFIT_LIMIT

    extra = (3 if poor(best, misfit) else 0) if auto else int(n_starts) - 1
    rng = np.random.default_rng(seed)
    t_extra = time.perf_counter()
    tried = [(best, const, misfit)]
    for i in range(extra):
        Ks = rng.normal(0.0, 0.1, zernike_count(order))
        Ks[0] = 0.0
        t1 = time.perf_counter()
        r, c = _fit_from(model, data, s, Ks, i + 1)
        fits.append(r)
        mis_r = _misfit(r, c, model, data)
        # the same minimum twice, and both converged: a model that does not describe
        # the data (a real map), not a local minimum (which a stalled fit may be)
        agree = (abs(float(r.fun) - float(best.fun)) <= AGREE and bool(r.success)
                 and bool(best.success))
        tried.append((r, c, mis_r))
        k = _keep([t[0] for t in tried])
        best, const, misfit = tried[k]
        starts.append({"start": i + 1, "neg_log_likelihood": float(r.fun),
                       "success": bool(r.success), "normalised_residual": mis_r,
                       "time_s": time.perf_counter() - t1, "kept": False,
                       "agrees_with_best": bool(agree)})
        _mark_kept(starts, k)
        s.report(stage="start", start=i + 1, of=extra, fun=round(float(r.fun), 3),
                 misfit=round(mis_r, 3), agree=agree)
        if auto:
            if not poor(best, misfit):
                starts[-1]["stop"] = "the best start describes the data"
                break
            if agree:
                starts[-1]["stop"] = "two starts agree: the same minimum"
                break
            if time.perf_counter() - t_extra > start_time_factor * first_time:
                starts[-1]["stop"] = (f"time cap: extra starts took more than "
                                      f"{start_time_factor:g} x the first fit")
                break
    return best, const, misfit, fits, starts


def _keep(results) -> int:
    """Index of the start to keep: the lowest -log L, or a converged start within
    :data:`AGREE` of it (the same minimum, and it converged); first on ties.

    A converged start that another beats by more than ``AGREE`` converged to a local
    minimum: it is not kept over the lower one, converged or not (which then reports
    its own success)."""
    funs = [float(r.fun) for r in results]
    low = min(funs)
    near = [i for i, f in enumerate(funs) if f <= low + AGREE]
    return max(near, key=lambda i: (bool(results[i].success), -funs[i]))


def _mark_kept(starts: list, k: int) -> None:
    """Set ``kept`` in the start log, and ``local_minimum`` on converged starts that
    another start beats by more than :data:`AGREE` in -log L."""
    low = min(rec["neg_log_likelihood"] for rec in starts)
    for j, rec in enumerate(starts):
        rec["kept"] = j == k
        if rec["success"] and rec["neg_log_likelihood"] > low + AGREE:
            rec["local_minimum"] = True
        else:
            rec.pop("local_minimum", None)


def _start_K(K, order):
    nk = zernike_count(order)
    if K is None:
        return np.zeros(nk)
    K = np.array(K, dtype=np.float64).ravel()  # a copy: piston is set below
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


# ------------------------------------------------------- 6. noise and chi^2
def _statistics(obs, model, data: _Data, best, const, likelihood_name: str) -> dict:
    """chi^2 per map and in all, the second-pass noise, and the error scale.

    With the scan noise of the maps (no sigma given), the noise is measured again on
    the residuals of every map (the first pass could only use the data), and the
    Gaussian errors scale with it. Then, when the reduced chi^2 exceeds
    :data:`CHI2R_LIMIT`, the model does not describe the data to the noise and the
    errors are scaled by ``sqrt(chi2r)``.
    """
    p = dict(const)
    p.update(best.params)
    with torch.no_grad():
        mu_full = _evaluate(model, p, data).cpu().numpy()
    mu = data.select(mu_full)
    resid = data.y - mu
    chi2_first = float(np.sum((resid / data.sigma) ** 2))
    n_free = len(best.names)
    N = data.y.size
    gaussian = likelihood_name.lower().startswith("gauss")
    ratio, noise = 1.0, data.noise
    if data.sigma_source == SIGMA_SCAN:
        models = np.split(mu_full * data.scale, np.cumsum(model.sizes)[:-1])
        again = _honest_noise(obs, models=models)
        if again is not None:
            noise = again
            ratio = (again.sigma_total / data.scale) / float(data.sigma[0])
    sigma = data.sigma * ratio
    r = resid / sigma
    beam_snr = _beam_snr(model, data, p, mu, sigma)
    k_beam = sum(1 for n in best.names if n.split("[")[0] not in _NOT_BEAM)
    chi2 = float(np.sum(r**2))
    dof = max(N - n_free, 1)
    chi2r = chi2 / dof
    maps = []
    for b, m in enumerate(obs.maps):
        sel = data.map_of == b
        n_b = int(sel.sum())
        c_b = float(np.sum(r[sel] ** 2))
        maps.append({"name": m.name, "n": n_b, "n_masked": m.n - m.n_used, "chi2": c_b,
                     "chi2r": c_b / max(n_b, 1),
                     "rms_residual_over_peak": float(np.sqrt(np.mean(resid[sel] ** 2)))})
    scale, notes = (ratio if gaussian else 1.0), []
    if gaussian and ratio != 1.0:
        notes.append(f"noise re-measured on the residuals: sigma x{ratio:.3f}")
    if chi2r > CHI2R_LIMIT:
        scale *= math.sqrt(chi2r)
        notes.append(f"chi2r = {chi2r:.2f} > {CHI2R_LIMIT:g}: the model does not describe "
                     f"the data to the noise; errors scaled by sqrt(chi2r) = "
                     f"{math.sqrt(chi2r):.2f}")
    # a constant (the background) averages noise that is correlated along and across
    # the scans and offset per scan: its variance grows by the map mean's inflation
    bg_scale = (math.sqrt(noise.inflation_mean) if noise is not None and gaussian
                and math.isfinite(noise.inflation_mean) and noise.inflation_mean > 1 else 1.0)
    if bg_scale != 1.0:
        notes.append(f"background errors x{bg_scale:.2f} for the correlated noise "
                     "(variance inflation of a map mean)")
    return {"chi2": chi2, "dof": dof, "chi2r": chi2r, "chi2_data_sigma": chi2_first,
            "background_error_scale": float(bg_scale),
            "maps": maps, "error_scale": float(scale), "error_note": "; ".join(notes),
            "sigma_value": float(np.median(sigma)) * data.scale,
            "noise": None if noise is None else noise.to_dict(), "beam_snr": beam_snr,
            "beam_k": k_beam, "beam_snr_limit": BEAM_SNR_LIMIT * math.sqrt(max(k_beam, 1))}


def _beam_snr(model, data: _Data, p: dict, mu, sigma) -> float:
    """Signal-to-noise of the fitted beam: ``sqrt(sum((beam / sigma)^2))`` over the
    samples of the likelihood, ``beam`` the model less its amp = 0 part (backgrounds,
    scan offsets). It is amp / error(amp) with the other parameters held (the matched
    filter's SNR of the fitted beam shape)."""
    q = dict(p)
    q["amp"] = 0.0
    with torch.no_grad():
        mu0 = data.select(_evaluate(model, q, data).cpu().numpy())
    return float(np.sqrt(np.sum(((mu - mu0) / sigma) ** 2)))


# -------------------------------------------------------------- 7. solution
def _nuisance_summary(res, const, error_scale: float = 1.0, bg_scale: float = 1.0) -> dict:
    """Name -> {"value", "error"} of the fitted nuisance parameters and the fixed ones
    the model used (error 0); units in :data:`gradfit.oof.nuisance.NUISANCE`."""
    out = {}
    for name in NUISANCE:
        if name in res.params:
            v = np.asarray(res.params[name])
            e = np.asarray(res.errors[name]) * error_scale
            if name in ("background", "background_plane"):
                e = e * bg_scale
            out[name] = {"value": v.tolist() if v.ndim else float(v),
                         "error": e.tolist() if e.ndim else float(e)}
        elif name in const and name != "amp":
            v = np.asarray(const[name])
            out[name] = {"value": v.tolist() if v.ndim else float(v),
                         "error": np.zeros_like(v).tolist() if v.ndim else 0.0}
    if SCAN_OFFSET in res.params:
        out[SCAN_OFFSET] = {"value": np.asarray(res.params[SCAN_OFFSET]).tolist(),
                            "error": (np.asarray(res.errors[SCAN_OFFSET]) * error_scale).tolist()}
    return out


def _message(best, misfit: float, starts=(), no_beam: str = "") -> str:
    """The minimiser's message; a stall (:data:`STALL`) also says whether the model
    describes the data (it may, with parameters the data do not pin down). Then, when
    a start that converged was beaten by the kept one (:func:`_keep`), that it found a
    local minimum; and the note ``no_beam`` of :func:`_no_beam`, when it fired."""
    msg = str(best.message)
    if msg.startswith("stalled"):
        if misfit <= MISFIT_LIMIT:
            msg = (f"{msg}; the model describes the data to the noise (normalised residual "
                   f"{misfit:.3g}) but the data do not pin down every parameter (too little "
                   "signal?)")
        else:
            msg = (f"{msg}; the model does not describe the data (normalised residual "
                   f"{misfit:.3g} > {MISFIT_LIMIT:g})")
    kept = [r for r in starts if r.get("kept")]
    local = [r for r in starts if r.get("local_minimum")]
    if kept and local and not best.success:
        low = kept[0]["neg_log_likelihood"]
        msg += "; " + "; ".join(
            f"start {r['start']} converged, but to a local minimum: its -log L is "
            f"{r['neg_log_likelihood'] - low:.3g} above the kept start's (> {AGREE:g})"
            for r in local)
    return f"{msg}; {no_beam}" if no_beam else msg


def _no_beam(stats) -> str:
    """'no beam signal detected: ...' when the fitted beam's SNR is below
    :data:`BEAM_SNR_LIMIT` x sqrt(k), else ''."""
    if not stats or "beam_snr" not in stats:
        return ""
    snr, limit = stats["beam_snr"], stats["beam_snr_limit"]
    if not snr < limit:  # NaN (a broken model) does not fire: nothing to judge
        return ""
    return (f"no beam signal detected: the fitted beam's SNR {snr:.3g} is below "
            f"{BEAM_SNR_LIMIT:g} sqrt(k) = {limit:.3g} (k = {stats['beam_k']} parameters "
            "shape the beam; "
            "fits of pure noise reach about sqrt(k)): the maps show no beam above the noise")


def _solution(obs, tel, model, data: _Data, s: _Settings, best, const, misfit, fits,
              stepwise, n_threads, extra, t_start, starts, stats) -> Solution:
    order = s.order
    scale = stats["error_scale"]
    K = np.concatenate([[0.0], np.asarray(best.params["K"], dtype=np.float64)])
    Ke = np.concatenate([[0.0], np.asarray(best.errors["K"], dtype=np.float64)]) * scale
    params = dict(const)
    params.update({k: v for k, v in best.params.items()})
    n_orders = order if stepwise else 1
    no_beam = _no_beam(stats)
    fit_info = {
        "success": bool(best.success) and not no_beam,
        "message": _message(best, misfit, starts, no_beam),
        "method": str(best.method),
        "nfev": int(sum(r.nfev for r in fits)),
        "nit": int(best.nit),
        "time_s": time.perf_counter() - t_start,
        "neg_log_likelihood": float(best.fun),
        "likelihood": getattr(data.likelihood, "name", str(data.likelihood)),
        "ndata": int(data.y.size),
        "n_masked": int(sum(m.n - m.n_used for m in obs.maps)),
        "n_free": len(best.names),
        "free": list(s.free),
        "sigma": data.sigma_source,
        "normalised_residual": float(misfit),
        "grid_cells": model.grid.n,
        "grid_pixels": model.grid.n_pixels,
        "transform": model.transform,
        "jacobian": "exact" if s.jacobian and model.tf.exact_jacobian else "autodiff",
        "threads": n_threads,
        "starts": len(fits) - (n_orders - 1),
        "start_log": starts,
        "stepwise": bool(stepwise),
        "at_bounds": list(getattr(best, "at_bounds", ())),
        "data_scale": data.scale,
    }
    fit_info.update(stats)
    if data.scan_axis is not None:
        fit_info["scan_axis"] = data.scan_axis
    offsets = None
    if SCAN_OFFSET in params:
        offsets = np.asarray(params.pop(SCAN_OFFSET)).reshape(-1)[data.scan_index]
    return Solution(
        telescope=tel, order=order, wavelength_m=float(obs.wavelength_m),
        frequency_hz=float(obs.frequency_hz), labels=zernike_labels(order), K_waves=K,
        K_err_waves=Ke,
        nuisance=_nuisance_summary(best, const, scale, stats["background_error_scale"]),
        fit=fit_info, result=best, extra_errors=extra, illumination=model.illumination,
        _model=model, _params=params, _scale=data.scale, _offsets=offsets)


# ------------------------------------------------------- 8. resampled errors
def _resampled_errors(obs, sol: Solution, kwargs: dict, method: str, opts: dict,
                      report) -> dict:
    """Jackknife or bootstrap over scans (:func:`~gradfit.oof.noise.resample_over_scans`).

    Each replicate refits from the full fit's solution with one start, the full fit's
    noise and grid, and no errors.
    """
    from .noise import detect_scan_axis, raster_shape, resample_over_scans

    n = int(opts.get("n", 10))
    axis = opts.get("scan_axis") or _scan_axis(obs)
    if axis == "auto":
        ref = obs.maps[obs.infocus_index]
        if raster_shape(ref) is None:
            raise ValueError(f"errors={method!r} needs gridded maps (or "
                             "error_options={'scan_axis': 'u'|'v'})")
        axis = detect_scan_axis(ref)
    free = [f for f in sol.fit["free"]]
    full_scale = float(sol.fit["data_scale"])
    sigma = sol.fit["sigma_value"]
    count = [0]
    # amp and background are in units of the in-focus peak, which a replicate that
    # lost the peak's scan measures anew: convert in and out through data units
    in_peak = ("amp", "background")

    def fit_fn(o):
        count[0] += 1
        report(stage=method, nit=count[0], of=n)
        ref = o.maps[o.infocus_index]
        rep_scale = float(np.max(ref.power[ref.valid]))
        start = {"K": sol.K_waves}
        for name, v in sol.nuisance.items():
            if name not in ("amp", SCAN_OFFSET):  # a replicate has other scans
                val = np.asarray(v["value"], dtype=np.float64)
                start[name] = val * full_scale / rep_scale if name in in_peak else val
        maps = [dataclasses.replace(m, sigma=np.full(m.n, sigma)) for m in o.maps]
        r = fit(dataclasses.replace(o, maps=maps), order=sol.order, free=tuple(free),
                start=start, n_starts=1, errors="none", grid=sol.fit["grid_cells"], **kwargs)
        out = {"K": r.K_waves}
        for name in free:
            if name == SCAN_OFFSET:
                continue
            val = r.nuisance.get(name, {}).get("value")
            if val is not None:
                val = np.asarray(val, dtype=np.float64)
                out[name] = val * rep_scale / full_scale if name in in_peak else val
        return out

    t0 = time.perf_counter()
    blocks = opts.get("blocks", "interleaved")
    sd = resample_over_scans(fit_fn, obs, axis, n=n, method=method,
                             seed=int(opts.get("seed", 0)), blocks=blocks)
    K_sd = np.asarray(sd.pop("K"), dtype=np.float64)
    return {"method": method, "n": n, "scan_axis": axis, "blocks": blocks,
            "time_s": time.perf_counter() - t0,
            "nuisance": {k: np.asarray(v).tolist() for k, v in sd.items()},
            "per_coefficient": {f"{method}_error_waves":
                                [None] + [float(x) for x in K_sd[1:]]}}


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
    free=None,
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
    start_time_factor: float = 2.0,
    max_auto_order: int = 10,
    scan_axis: str | None = None,
    basis: str = "zernike",
    pixel_m: float | None = None,
    smoothness: float | None = None,
    panels=None,
) -> Solution:
    """Fit the Zernike aperture phase (and nuisance parameters) to OOF beam maps.

    With ``basis='pixels'`` or ``'panels'`` the Zernike fit is refined on a grid of
    aperture cells (``pixel_m``, ``grid``) with a smoothness prior, or on one piston and
    two tilts per panel of the layout ``panels``: a
    :class:`~gradfit.oof.pixels.PixelSolution` (see :mod:`gradfit.oof.pixels`).

    Parameters
    ----------
    obs : Observation
        Two or more beam maps at known defocus.
    order : int or 'auto'
        Highest Zernike radial order; all coefficients but piston are fitted. 'auto'
        fits orders 1, 2, ... (up to ``max_auto_order``) and keeps the one of lowest BIC
        (:func:`gradfit.oof.order.select_order`, with the effective number of samples
        of correlated noise); the table and the reason are in ``fit["order_selection"]``.
    telescope : str or Telescope, optional
        Defaults to ``obs.telescope``.
    likelihood : {'gaussian', 'cauchy'} or gradfit likelihood
        Gaussian with per-point sigma, or Cauchy with that sigma as half width (robust to
        glitches). Sigma: given in the maps, else the scan noise of the gridded maps
        (:func:`gradfit.oof.noise.observation_noise`: survives backgrounds, scan
        offsets and correlation along scans; also for rasters whose recorded positions
        jitter, :func:`gradfit.oof.noise.raster_indices`), measured again on the
        residuals after the fit; else (scattered samples) from the map edges. Masked samples
        (``BeamMap.mask``) stay on the grid and are left out of the likelihood.
    method : str
        Minimiser of :func:`gradfit.fit` (default Levenberg-Marquardt).
    device, dtype :
        Where the model runs (default CPU, float64).
    priors : dict, optional
        Name -> gradfit prior, e.g. ``{"K": gradfit.Normal(0, 0.3)}`` (waves): MAP fit.
    free : iterable of str, optional
        Nuisance parameters to fit besides K, any of :data:`gradfit.oof.nuisance.NUISANCE`:
        'amp', 'c_dB', 'q', 'x0', 'y0', and per map 'pointing' (offsets in lambda/D),
        'gain' (relative to the in-focus map, which stays fixed) and 'background'. The
        others stay at ``start`` values or their defaults (c_dB -12 dB, q 2, x0 = y0 = 0,
        no pointing offset, gain 1, background 0). Default (:func:`default_free`): for
        measured maps (no ``sigma`` in the maps, as read from files or text)
        :data:`REAL_FREE` = amp, c_dB, pointing, gain, background; for maps that carry
        their noise (simulations of the model) :data:`IDEAL_FREE` = amp, c_dB. Pass
        ``free=("amp", "c_dB")`` to turn the real-map nuisance parameters off.
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
        normalised residual 1.4826 MAD(r / sigma) above ``MISFIT_LIMIT``, or no
        convergence); it stops at the first start that describes the data, at one that
        agrees with the best in -log L to ``AGREE`` (the same minimum), or when the
        extra starts took ``start_time_factor`` x the first fit's time. An integer runs
        exactly that many. The kept start is the one of lowest -log L, or a converged
        start within ``AGREE`` of it (the same minimum); a converged start that another
        beats by more than ``AGREE`` found a local minimum and is not kept: the lower
        start is, with its own success (False when it did not converge), and the
        message and ``fit["start_log"]`` (``local_minimum``) say so. Each start is
        reported through ``progress`` (stage 'start') and logged in ``fit["start_log"]``.
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
    errors : {'hessian', 'none', 'profile', 'mcmc', 'jackknife', 'bootstrap'}
        'hessian' (default): 1σ errors from the inverse Hessian (Gauss-Newton for the
        Gaussian likelihood), scaled by sqrt(chi2r) when chi2r > ``CHI2R_LIMIT`` (see
        ``fit["error_note"]``). 'jackknife' / 'bootstrap' add errors from refits with
        blocks of scans deleted / scans redrawn (:func:`~gradfit.oof.noise.
        resample_over_scans`; ``error_options`` ``n`` (10), ``scan_axis``, ``seed``,
        ``blocks`` ('interleaved': block k drops every n-th scan; or 'contiguous')),
        which respect noise correlated along the scans; reported beside the Hessian
        errors (``Solution.zernike[i]["jackknife_error_waves"]``).
        'none': no errors (NaN), a little faster. 'profile' adds
        the 68.27% profile-likelihood interval of every coefficient (about ten refits
        each). 'mcmc' adds posterior means and standard deviations from NUTS (pyro-ppl),
        and the surface-error map then comes from the posterior draws.
    start_time_factor : float
        Cap of the automatic multi-start: extra starts stop once they took this
        multiple of the first fit's time.
    max_auto_order : int
        Highest order tried by ``order='auto'``.
    scan_axis : {'u', 'v'}, optional
        Direction of the scans, for ``free=(..., 'scan_offset')`` and the jackknife /
        bootstrap; default ``obs.meta['scan_axis']`` (text maps record it), else
        detected (:func:`gradfit.oof.noise.detect_scan_axis`).
    error_options : dict, optional
        For 'mcmc': ``num_samples`` (default 300), ``warmup``, ``num_chains`` (2),
        ``method`` ('nuts', 'hmc' or 'emcee'), ``seed``.
    jacobian : {'auto', 'exact', 'autodiff'}
        'auto' (default) and 'exact': the model's exact Jacobian
        (:meth:`~gradfit.oof.model.BeamModel.jacobian`, a few batched transforms) for
        Levenberg-Marquardt and the errors, with transform 'mft' or 'dft'; 'autodiff': one
        autodiff pass per parameter (slower, the same numbers to rounding).

    Returns
    -------
    Solution
        ``success`` is the kept start's convergence, and False when no beam signal is
        detected: the fitted beam's SNR (``fit["beam_snr"]``) below
        ``BEAM_SNR_LIMIT`` x sqrt(k) (``fit["beam_snr_limit"]``; k, ``fit["beam_k"]``, the
        free parameters that shape the beam), which fits of pure noise reach; the
        message then says "no beam signal detected".
    """
    if basis != "zernike":
        from .pixels import fit_basis  # pixels does not import solve: no cycle

        return fit_basis(fit, obs, basis, order=order, telescope=telescope, grid=grid,
                         pixel_m=pixel_m, smoothness=smoothness, panels=panels,
                         progress=progress, threads=threads, seed=seed, device=device,
                         dtype=dtype)
    t_start = time.perf_counter()
    order, tel, free, start = _check_inputs(obs, order, telescope, free, start, n_starts,
                                            errors, jacobian, transform)
    report = reporter(progress)
    data = _data(obs, likelihood)
    if scan_axis not in (None, "u", "v"):
        raise ValueError(f"scan_axis must be 'u', 'v' or None, got {scan_axis!r}")
    if SCAN_OFFSET in free:
        data = _with_scans(obs, data, scan_axis)
    n_threads = 1 if threads is None else int(threads)
    common = dict(telescope=tel, likelihood=likelihood, method=method, device=device,
                  dtype=dtype, priors=priors, transform=transform, illumination=illumination,
                  threads=threads, max_iter=max_iter, jacobian=jacobian)

    def run(order_, grid_, extras=True):
        s = _Settings(order=order_, telescope=tel, free=free, start=start, method=method,
                      priors=priors, max_iter=max_iter, device=resolve_device(device),
                      dtype=dtype, jacobian=jacobian != "autodiff", report=report,
                      errors=errors != "none")
        report(stage="grid", order=order_)
        model = _build_model(obs, tel, order_, data, grid_, transform, illumination, s.device,
                             dtype)
        with torch_threads(n_threads):
            best, const, misfit, fits, starts = _minimise(
                model, data, s, stepwise, n_starts, seed, obs, model.grid.n, transform,
                illumination, start_time_factor)
            report(stage="done", fun=best.fun)
            extra = {}
            if errors == "none":
                extra = {"method": "none"}
            elif errors in ("profile", "mcmc") and best.success and extras:
                extra = _extra_errors(best, errors, dict(error_options or {}), report)
            stats = _statistics(obs, model, data, best, const,
                                getattr(data.likelihood, "name", str(likelihood)))
        return _solution(obs, tel, model, data, s, best, const, misfit, fits, stepwise,
                         n_threads, extra, t_start, starts, stats)

    if order == "auto":
        # every order with its Hessian errors; profile/MCMC only for the chosen one
        sol = _auto_order(obs, tel, data, free, grid, illumination, max_auto_order,
                          lambda o, g: run(o, g, extras=False), report)
        if errors in ("profile", "mcmc") and sol.success:
            with torch_threads(n_threads):
                extra = _extra_errors(sol.result, errors, dict(error_options or {}), report)
            sol = dataclasses.replace(sol, extra_errors=extra, _cache={})
    else:
        sol = run(order, grid)
    if errors in ("jackknife", "bootstrap"):
        opts = dict(error_options or {})
        if scan_axis is not None:
            opts.setdefault("scan_axis", scan_axis)
        extra = _resampled_errors(obs, sol, common, errors, opts, report)
        sol = dataclasses.replace(sol, extra_errors=extra, _cache={})
    return dataclasses.replace(sol, adequacy=_adequacy(obs, tel, sol), _cache={})


def _adequacy(obs, tel, sol: Solution) -> dict:
    """Does the fit describe the data (:func:`gradfit.oof.checks.assess`)? A fact beside
    convergence, with the likely causes the checks can name when it does not."""
    from .checks import assess
    from .textio import compact

    models = [p[m.valid] for m, p in zip(obs.maps, sol.model_maps())]
    return assess(compact(obs), tel, normalised_residual=sol.fit.get(
        "normalised_residual", float("nan")), model_maps=models, success=sol.success)


def _auto_order(obs, tel, data: _Data, free, grid, illumination, max_auto_order: int, run,
                report) -> Solution:
    """``order='auto'``: orders upwards, the lowest BIC (:func:`.order.select_order`)."""
    from .order import select_order

    n_nuis = _n_nuisance(obs, free)
    top = min(_max_order(obs, n_nuis), int(max_auto_order))
    if top < 1:
        raise ValueError("order='auto': the maps are too small for any order")
    N = int(data.y.size)
    infl = data.noise.inflation_ar if data.noise is not None else 1.0
    n_eff = max(min(N / max(infl, 1.0), float(N)), 2.0)
    # one aperture grid for every order (chosen for the highest), so the chi^2 compare
    grid_n = grid
    if grid_n is None:
        with torch_threads(1):
            grid_n = choose_grid_size(obs, tel, float(np.median(data.sigma)),
                                      order=max(min(top, 6), 3), illumination=illumination)

    def fit_at(o):
        sol = run(o, grid_n)
        return sol.fit["chi2_data_sigma"], sol.fit["n_free"], sol

    def progress(step):
        report(stage="order", order=step.order, chi2=round(step.chi2, 2),
               chi2r=round(step.chi2r, 3), bic=round(step.bic, 2))

    choice = select_order(fit_at, range(1, top + 1), N, n_eff=n_eff, progress=progress)
    sol = choice.result
    info = dict(sol.fit)
    info["order_selection"] = {
        "orders": [{"order": st.order, "n_params": st.n_params, "chi2": st.chi2,
                    "chi2r": st.chi2r, "bic": st.bic} for st in choice.steps],
        "chosen": choice.order, "reason": choice.reason, "table": choice.table(),
        "n_eff": n_eff}
    return dataclasses.replace(sol, fit=info, _cache={})
