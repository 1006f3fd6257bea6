"""Honest noise on raster maps: correlated along scans, offset per scan, on a background.

Real beam maps are rasters of scans. Their noise is correlated along a scan (lag-1
0.75 is common), each scan has its own offset, and the map sits on a background. A
noise level from the map's edges or from neighbouring samples along a scan then comes
out about half the real scatter, and Hessian errors that assume independent samples are
far too small.

:func:`scan_noise` measures, from differences of neighbouring samples (which cancel a
background, a plane and, along a scan, the scan offsets) with robust spreads
(4-sigma-clipped variances, the clip set by the MAD):

- ``sigma`` (the noise along a scan) and ``lag1_along``, fitted to the variogram along
  the scans at lags 1-12, ``2 sigma^2 (1 - phi^k)`` (AR(1) along the scans): the long
  lags pin sigma, the short ones phi;
- ``lag1_across`` from differences between neighbouring scans with each pair's mean
  difference removed (which removes the scan offsets);
- ``offset_sd``, the scatter of the per-scan offsets, from the same differences with
  and without that removal.

It works on data (where the beam stands out it is masked after a first estimate; a
defocused beam that fills its map is not separable from noise: see
:func:`observation_noise`) and best on residuals of a fit. :func:`inflation_factor`
turns the correlations into the variance inflation of a mean (the effective sample
size), and
:func:`resample_over_scans` gives parameter errors that respect the correlation by a
jackknife over blocks of scans or a bootstrap of scans, for any fit callable.

Maps without ``shape`` are put on their raster first: a grid with flagged samples
removed, or recorded positions that jitter about a raster's nodes
(:func:`raster_indices`; :func:`raster_shape` says whether a map is one).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from gradfit.oof.observation import BeamMap, Observation

__all__ = [
    "ScanNoise",
    "scan_noise",
    "observation_noise",
    "detect_scan_axis",
    "scan_labels",
    "raster_indices",
    "raster_shape",
    "ar1_mean_factor",
    "inflation_factor",
    "resample_over_scans",
]

_MAD = 1.482602218505602  # 1 / Phi^-1(3/4): MAD -> standard deviation for a Gaussian
# variance of a unit Gaussian truncated to |x| < 4: 1 - 8 phi(4) / (2 Phi(4) - 1)
_CLIP4 = 1 - 8 * math.exp(-8) / math.sqrt(2 * math.pi) / math.erf(4 / math.sqrt(2))
_MAX_LAG = 12


def _robust_var(x: np.ndarray) -> float:
    """Variance of the core of ``x``: samples beyond 4 MAD-sigmas of the median dropped.

    The clip ignores the few large differences where the beam is (or outliers); the
    plain variance of the rest is twice as efficient as the MAD itself. The factor
    corrects the variance a Gaussian loses beyond 4 sigma (0.1%).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 3:
        raise ValueError("too few finite samples for a noise estimate")
    med = _median(x)
    s = _MAD * _median(np.abs(x - med))
    if s == 0:
        return 0.0
    for _ in range(2):
        core = x[np.abs(x - med) < 4 * s]
        med = float(core.sum()) / core.size
        d = core - med
        s = math.sqrt(float(d @ d) / core.size) / math.sqrt(_CLIP4)
    return s * s


def _median(x: np.ndarray) -> float:
    """``np.median`` of a 1-D array without NaN, by one partition (its generic machinery
    cost 3x the partition itself here: a scan-noise estimate takes ~100 medians)."""
    n = x.size
    k = n // 2
    if n % 2:
        return float(np.partition(x, k)[k])
    part = np.partition(x, (k - 1, k))
    return float(part[k - 1] + part[k]) / 2.0


def ar1_mean_factor(lag1: float, n: int | None = None) -> float:
    """Variance of the mean of ``n`` AR(1) samples over that of ``n`` independent ones.

    ``1 + 2 sum_{k=1}^{n-1} (1 - k/n) phi^k``; for ``n`` None the limit
    ``(1 + phi) / (1 - phi)``.
    """
    phi = float(lag1)
    if not -1 < phi < 1:
        raise ValueError(f"lag1 must be in (-1, 1), got {lag1}")
    if n is None:
        return (1 + phi) / (1 - phi)
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    k = np.arange(1, n)
    return float(1 + 2 * np.sum((1 - k / n) * phi**k))


def inflation_factor(lag1_along: float, n_along: int | None = None, lag1_across: float = 0.0,
                     n_across: int | None = None, offset_ratio: float = 0.0) -> float:
    """Variance inflation of a map mean over the independent-sample formula.

    For noise that is AR(1) along scans (``lag1_along``) and between scans
    (``lag1_across``), plus per-scan offsets of ``offset_ratio`` times the noise sigma,
    the mean of ``n_along x n_across`` samples has a variance this many times
    ``sigma_total^2 / N``; ``N`` over it is the effective sample size. For a parameter
    whose template varies on scales shorter than a scan, the true inflation lies between
    1 and this value: errors scaled by its square root are conservative, and
    :func:`resample_over_scans` measures them instead.
    """
    fa = ar1_mean_factor(lag1_along, n_along)
    fx = ar1_mean_factor(lag1_across, n_across)
    r2 = float(offset_ratio) ** 2
    n = n_along if n_along is not None else math.inf
    if r2 and not math.isfinite(n):
        return math.inf
    return (fa * fx + (r2 * n if r2 else 0.0)) / (1 + r2)


@dataclass(frozen=True)
class ScanNoise:
    """Noise of a raster map, as measured by :func:`scan_noise`.

    sigma : standard deviation of the noise along a scan (offsets excluded).
    sigma_total : ``sqrt(sigma^2 + offset_sd^2)``, the scatter of one sample about the model.
    lag1_along, lag1_across : lag-1 correlation along the scans and between neighbouring scans.
    offset_sd : scatter of the per-scan offsets.
    scan_axis : 'u' or 'v', the direction of the scans.
    n_scans, n_along : raster size.
    inflation_ar : ``(1 + phi_a)/(1 - phi_a) (1 + phi_x)/(1 - phi_x)``: variance inflation of
        slowly varying quantities from the correlations alone.
    inflation_mean : :func:`inflation_factor` of the whole map's mean (offsets included).
    signal_fraction : fraction of the samples left out as beam signal (0 with a model);
        1 when the beam filled the map and every sample was used (then the estimate
        contains signal: use a model, or another map of the observation).
    """

    sigma: float
    sigma_total: float
    lag1_along: float
    lag1_across: float
    offset_sd: float
    scan_axis: str
    n_scans: int
    n_along: int
    inflation_ar: float
    inflation_mean: float
    signal_fraction: float = 0.0

    @property
    def n_eff(self) -> float:
        """Effective number of independent samples for the map mean."""
        return self.n_scans * self.n_along / self.inflation_mean

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["n_eff"] = self.n_eff
        return out

    def __str__(self) -> str:
        return (
            f"noise sigma {self.sigma:.4g} (with scan offsets {self.sigma_total:.4g}); "
            f"lag-1 correlation {self.lag1_along:.2f} along the scans ({self.scan_axis}), "
            f"{self.lag1_across:.2f} across; scan offsets scatter {self.offset_sd:.3g}; "
            f"variance inflation x{self.inflation_ar:.1f} (correlation), "
            f"x{self.inflation_mean:.1f} (map mean)"
        )


def _holey_grid(m: BeamMap) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of each sample of a map on a grid with missing samples.

    The samples must be distinct points of a product grid that they fill to at least
    90% (a raster with a few flagged samples removed), or, failing that, lie near the
    nodes of a regular raster (recorded positions that jitter: :func:`raster_indices`).
    Raises ValueError naming the cause otherwise.
    """
    from gradfit.oof.observation import grid_indices

    ua, va, iu, iv = grid_indices(m.u, m.v)
    cells = iv * ua.size + iu
    if (ua.size >= 4 and va.size >= 4 and np.unique(cells).size == m.n
            and m.n >= 0.9 * ua.size * va.size):
        return iv, iu
    try:
        return raster_indices(m.u, m.v)
    except ValueError as err:
        raise ValueError(
            f"map {m.name!r} is not a raster: {err}; pass a 2-D array (NaN where a "
            "sample is missing), or scan labels"
        ) from None


def raster_shape(beam_map: BeamMap) -> tuple[int, int] | None:
    """``(n_rows, n_cols)`` of the raster a map's noise is measured on, or None.

    A gridded map's ``shape``; for a map without one, the grid its samples fill with a
    few missing, or the raster its recorded positions jitter about
    (:func:`raster_indices`); None for scattered samples.
    """
    if beam_map.grid_axes() is not None:
        return tuple(int(k) for k in beam_map.shape)
    try:
        rows, cols = _holey_grid(beam_map)
    except ValueError:
        return None
    return int(rows.max()) + 1, int(cols.max()) + 1


#: largest offset of a sample from its raster node along u or v, in raster steps
RASTER_TOL = 0.25
#: smallest share of the raster's nodes that the samples must fill
RASTER_FILL = 0.9


def raster_indices(u, v, *, tol: float = RASTER_TOL,
                   min_fill: float = RASTER_FILL) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)``: the node of a regular raster near which each sample lies.

    Real maps record where the telescope pointed, which jitters about the nominal raster
    by a few % of its step. The samples (in any order) are accepted as a raster when,
    along u and along v separately, each lies within ``tol`` steps of a node of one
    regular grid (step and origin fitted by least squares), no node holds two samples,
    and the samples fill at least ``min_fill`` of the nodes between the extreme ones
    (a raster with flagged samples removed). The positions themselves are not changed;
    rows number the v nodes from the smallest v, columns the u nodes from the smallest
    u (a missing scan leaves its number out).

    Raises
    ------
    ValueError
        Naming the cause: positions farther than ``tol`` from a node (jitter beyond
        it, a rotated or sheared raster, a drifting step), two samples on one node, a
        raster smaller than 4 x 4, or too few nodes filled.
    """
    u = np.asarray(u, dtype=np.float64).ravel()
    v = np.asarray(v, dtype=np.float64).ravel()
    if u.size != v.size:
        raise ValueError(f"u and v must have the same length, got {u.size} and {v.size}")
    if not (np.all(np.isfinite(u)) and np.all(np.isfinite(v))):
        raise ValueError("raster positions must be finite (u, v)")
    if not 0 < tol < 0.5:
        # beyond half a step a sample is as near to the next node as to its own
        raise ValueError(f"tol must be in (0, 0.5) raster steps, got {tol}")
    if not 0 < min_fill <= 1:
        raise ValueError(f"min_fill must be in (0, 1], got {min_fill}")
    n = u.size
    if n < 16:
        raise ValueError(f"{n} samples cannot form a raster of at least 4 x 4")
    cols = _raster_axis(u, "u", tol, min_fill)
    rows = _raster_axis(v, "v", tol, min_fill)
    n_u, n_v = int(cols.max()) + 1, int(rows.max()) + 1
    if n_u < 4 or n_v < 4:
        raise ValueError(f"its samples span a {n_v} x {n_u} raster; at least 4 x 4 needed")
    cells = rows * n_u + cols
    taken = np.unique(cells).size
    if taken != n:
        raise ValueError(
            f"{n - taken} of its {n} samples fall on a raster node taken by another "
            f"sample (a {n_v} x {n_u} raster): repeated positions or a finer raster"
        )
    if n < min_fill * n_u * n_v:
        raise ValueError(f"its {n} samples fill {n / (n_u * n_v):.0%} of a {n_v} x {n_u} "
                         f"grid (at least {min_fill:.0%} needed)")
    return rows, cols


def _raster_axis(x: np.ndarray, name: str, tol: float, min_fill: float) -> np.ndarray:
    """Node index (from 0) of each value of ``x`` on a regular 1-D grid, within ``tol`` steps.

    The samples of one node differ by less than ``2 tol`` steps and those of
    neighbouring nodes by more than ``1 - 2 tol``, so a large jump in the sorted gaps
    between sorted values separates the two (the gaps within a node are zero for exact
    positions). The six largest jumps (ratios >= 1.25 of consecutive sorted gaps, with
    at most one level per two samples) are tried in turn, and the first whose levels lie
    on one regular grid within ``tol`` (:func:`_lattice`) is taken; a split level or two
    merged ones cannot. Without a clear jump every distinct value is a level.
    """
    xs = np.sort(x)
    gaps = np.diff(xs)
    extent = float(xs[-1] - xs[0])
    if not extent > 0:
        raise ValueError(f"every sample has the same {name}")
    tiny = 1e-9 * extent  # rounding in exact positions
    g = np.sort(gaps)[::-1]
    n = x.size
    cuts = []
    top = n // 2  # B breaks, 1 <= B <= n/2: the smallest gaps' ratios are noise
    if top >= 1:
        big, small = g[:top], g[1:top + 1]  # the B-th and (B+1)-th largest gap
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(small > tiny, big / np.maximum(small, tiny),
                             np.where(big > tiny, np.inf, 0.0))
        for b in np.argsort(-ratio, kind="stable")[:6]:
            if ratio[b] >= 1.25:  # (a wrong split or merge fails the grid's check)
                cuts.append(gaps >= big[b])
    cuts.append(gaps > tiny)
    errors = []
    for cut in cuts:
        try:
            return _lattice(x, xs, cut, name, tol, min_fill)
        except ValueError as err:
            errors.append(err)
    # the levels that did lie on a grid, if any, say best how far the positions are off
    raise next((e for e in errors if isinstance(e, _BeyondTolerance)), errors[0])


_CAUSES = "jitter beyond the tolerance, a rotated or sheared raster, or a drifting step"


class _BeyondTolerance(ValueError):
    """Levels on a regular grid, but samples farther than the tolerance from its nodes."""


def _lattice(x, xs, cut, name, tol, min_fill) -> np.ndarray:
    """Node index of each ``x`` given the level breaks ``cut`` between sorted values ``xs``.

    The levels' centres fix a first step (their median spacing, which a few missing
    rows do not move) and so the node of each level; the levels must fill ``min_fill``
    of the nodes (as the raster's rows or columns must). Origin and step are then fitted
    to every sample by least squares, and each sample must lie within ``tol`` steps of
    its node.
    """
    level = np.concatenate([[0], np.cumsum(cut)])
    centres = np.bincount(level, weights=xs) / np.bincount(level)
    if centres.size < 2:
        raise ValueError(f"the {name} positions do not spread over a raster")
    spacing = np.diff(centres)
    step0 = float(np.median(spacing))
    # node numbers from neighbour to neighbour (1, or 2 past a missing row): a step
    # carried across the whole map would accumulate the error of the first estimate
    hops = np.rint(spacing / step0)
    node = np.concatenate([[0.0], np.cumsum(hops)])
    if np.any(hops < 1):
        raise ValueError(f"the {name} positions do not cluster on a regular raster "
                         f"(levels closer than half a step): {_CAUSES}")
    if centres.size < min_fill * (node[-1] + 1):
        raise ValueError(f"the {name} positions fill {centres.size / (node[-1] + 1):.0%} of "
                         f"the nodes of a regular grid (step {step0:.3g}), not a raster's "
                         f"rows or columns: {_CAUSES}")
    k = node[level]
    kc = k - k.mean()
    step = float(kc @ (xs - xs.mean()) / (kc @ kc))
    origin = float(xs.mean() - step * k.mean())
    index = np.rint((x - origin) / step)
    dev = np.abs(x - origin - step * index) / step
    worst = float(dev.max())
    if worst > tol:
        raise _BeyondTolerance(
            f"its {name} positions lie up to {worst:.2f} steps (step {step:.3g}) from the "
            f"nodes of a regular raster, more than the tolerance {tol:g}: {_CAUSES}"
        )
    index -= index.min()
    return index.astype(np.int64)


def _map_to_grid(m: BeamMap, values: np.ndarray) -> np.ndarray:
    if m.shape is not None:
        return values.reshape(m.shape)
    rows, cols = _holey_grid(m)
    z = np.full((rows.max() + 1, cols.max() + 1), np.nan)
    z[rows, cols] = values
    return z


def _grid(values, model=None) -> np.ndarray:
    if isinstance(values, BeamMap):
        # the residual first, so that the map's raster is worked out once
        r = values.masked_power()
        if model is not None:
            r = r - np.asarray(model, dtype=np.float64).ravel()
            model = None
        z = _map_to_grid(values, r)
    else:
        z = np.asarray(values, dtype=np.float64)
        if z.ndim != 2:
            raise ValueError(f"scan_noise needs a 2-D array (n_v, n_u), got shape {z.shape}")
    if model is not None:
        m = np.asarray(model, dtype=np.float64).reshape(z.shape)
        z = z - m
    if min(z.shape) < 4:
        raise ValueError(f"scan_noise needs at least 4 x 4 samples, got {z.shape}")
    return z


def detect_scan_axis(values) -> str:
    """'u' or 'v': the direction along which neighbouring samples differ least.

    ``values`` is a 2-D array ``(n_v, n_u)`` (u along the rows) or a gridded BeamMap.
    Noise correlated along the scans and offsets between scans both make neighbours
    along a scan more alike than neighbours across.
    """
    z = _grid(values)
    du = _robust_var(np.diff(z, axis=1))
    dv = _robust_var(np.diff(z, axis=0))
    return "u" if du <= dv else "v"


def scan_noise(values, scan_axis: str = "auto", *, model=None,
               signal_threshold: float | None = 3.0) -> ScanNoise:
    """Noise level and correlations of a raster map (see the module notes).

    Parameters
    ----------
    values : 2-D array ``(n_v, n_u)`` or BeamMap
        The map on its grid (u varying along the rows, as ``BeamMap.shape``); NaN marks a
        missing sample. A BeamMap without ``shape`` whose samples are a raster with a few
        samples missing (flagged), or whose recorded positions jitter about a raster
        (:func:`raster_indices`), is put on its grid.
    scan_axis : {'auto', 'u', 'v'}
        Direction of the scans; 'auto' uses :func:`detect_scan_axis`.
    model : array_like, optional
        Subtracted first (a fit's model: the estimate then uses residuals).
    signal_threshold : float or None
        Samples where the map, smoothed over 3 x 3 samples, stands more than this many
        noise sigmas above its median (and their neighbours) are left out, after a first
        estimate; None keeps every sample (right for residuals).

    Returns
    -------
    ScanNoise

    Notes
    -----
    The along-scan correlation is taken to be AR(1) (its lag-2 value the square of its
    lag-1 value). The beam enters the differences only where it is; the MAD ignores it
    while it covers a minority of the samples (in-focus maps easily; strongly defocused
    maps that fill the map do not: pass ``model`` for those).
    """
    z = _grid(values, model)
    if scan_axis == "auto":
        scan_axis = detect_scan_axis(z)
    if scan_axis not in ("u", "v"):
        raise ValueError(f"scan_axis must be 'auto', 'u' or 'v', got {scan_axis!r}")
    Z = z if scan_axis == "u" else z.T  # rows are scans
    n_scans, n = Z.shape
    phi, sigma2 = _fit_ar1_variogram(Z)
    fraction = 0.0
    if signal_threshold is not None:
        # where the beam stands above the noise its gradients would count as noise
        Z, fraction = _mask_signal(Z, math.sqrt(sigma2), signal_threshold)
        if fraction < 1.0:
            phi, sigma2 = _fit_ar1_variogram(Z)
    across = Z[1:, :] - Z[:-1, :]
    # nan-aware mean without numpy's warning for a row masked entirely
    finite = np.isfinite(across)
    count = finite.sum(axis=1, keepdims=True)
    row_mean = np.where(count > 0, np.where(finite, across, 0.0).sum(axis=1, keepdims=True)
                        / np.maximum(count, 1), np.nan)
    v_raw = _robust_var(across)
    v_rem = _robust_var(across - row_mean)
    # removing each pair's mean difference also removes this share of the noise variance
    share = ar1_mean_factor(phi, n) / n
    a = v_rem / (1 - share)  # 2 sigma^2 (1 - rho_across)
    rho = float(np.clip(1 - a / (2 * sigma2), -0.95, 0.98))
    offset_var = max(0.0, (v_raw - a) / 2)
    sigma = math.sqrt(sigma2)
    offset_sd = math.sqrt(offset_var)
    return ScanNoise(
        sigma=sigma,
        sigma_total=math.sqrt(sigma2 + offset_var),
        lag1_along=phi,
        lag1_across=rho,
        offset_sd=offset_sd,
        scan_axis=scan_axis,
        n_scans=int(n_scans),
        n_along=int(n),
        inflation_ar=ar1_mean_factor(phi) * ar1_mean_factor(rho),
        inflation_mean=inflation_factor(phi, n, rho, n_scans, offset_sd / sigma),
        signal_fraction=fraction,
    )


def observation_noise(obs: Observation, scan_axis: str = "auto", *, models=None,
                      signal_threshold: float | None = 3.0) -> tuple[ScanNoise, list[ScanNoise]]:
    """The noise of an observation's gridded maps: one adopted estimate and each map's.

    The maps of one observation share receiver and scan speed, so one noise describes
    them. Without models, beam signal can only add to the differences (defocused beams
    can fill a map, and their gradients then pass for noise), so the maps whose sigma is
    within 15% of the lowest are pooled (usually the in-focus one, where the beam is
    small and masked). With ``models`` (one per map, e.g. a fit's), the residuals of all
    maps are pooled. Pooling averages variances and correlations, weighted by size.

    Returns
    -------
    (adopted, per_map)
    """
    if models is not None and len(models) != len(obs.maps):
        raise ValueError(f"models has {len(models)} entries for {len(obs.maps)} maps")
    per_map = []
    for k, m in enumerate(obs.maps):
        per_map.append(scan_noise(m, scan_axis, model=None if models is None else models[k],
                                  signal_threshold=None if models is not None
                                  else signal_threshold))
    use = per_map
    if models is None:
        # beam signal only adds to the differences: the lowest estimates are the clean ones
        low = min(s.sigma for s in per_map)
        use = [s for s in per_map if s.sigma <= 1.15 * low]
    w = np.array([s.n_scans * s.n_along for s in use], dtype=float)
    w /= w.sum()

    def avg(name):
        return float(np.sum(w * np.array([getattr(s, name) for s in use])))

    sigma2 = float(np.sum(w * np.array([s.sigma**2 for s in use])))
    off2 = float(np.sum(w * np.array([s.offset_sd**2 for s in use])))
    phi, rho = avg("lag1_along"), avg("lag1_across")
    first = use[0]
    adopted = ScanNoise(
        sigma=math.sqrt(sigma2), sigma_total=math.sqrt(sigma2 + off2), lag1_along=phi,
        lag1_across=rho, offset_sd=math.sqrt(off2), scan_axis=first.scan_axis,
        signal_fraction=float(np.sum(w * np.array([s.signal_fraction for s in use]))),
        n_scans=first.n_scans, n_along=first.n_along,
        inflation_ar=ar1_mean_factor(phi) * ar1_mean_factor(rho),
        inflation_mean=inflation_factor(phi, first.n_along, rho, first.n_scans,
                                        math.sqrt(off2 / sigma2)),
    )
    return adopted, per_map


def _mask_signal(Z: np.ndarray, sigma: float, threshold: float) -> tuple[np.ndarray, float]:
    """Z with NaN where its smoothed excess over the median exceeds ``threshold`` sigma."""
    filled = np.where(np.isfinite(Z), Z, np.nanmedian(Z))
    excess = np.abs(_box3(filled - np.median(filled)))
    # the 3 x 3 mean of correlated noise scatters by at most sigma: threshold it in sigmas
    signal = _dilate_cross(excess > threshold * sigma)
    if signal.mean() > 0.75:
        return Z, 1.0  # the beam fills the map: nothing to gain, keep every sample
    return np.where(signal, np.nan, Z), float(signal.mean())


def _box3(Z: np.ndarray) -> np.ndarray:
    """3 x 3 running mean, edges repeated (scipy.ndimage.uniform_filter(size=3,
    mode='nearest'), without its import: 2 s of a fresh CLI process)."""
    P = np.pad(Z, 1, mode="edge")
    rows = (P[:-2] + P[1:-1] + P[2:]) / 3.0
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) / 3.0


def _dilate_cross(B: np.ndarray) -> np.ndarray:
    """One binary dilation with the 4-neighbour cross (scipy's default structure)."""
    out = B.copy()
    out[1:] |= B[:-1]
    out[:-1] |= B[1:]
    out[:, 1:] |= B[:, :-1]
    out[:, :-1] |= B[:, 1:]
    return out


def _fit_ar1_variogram(Z: np.ndarray) -> tuple[float, float]:
    """``(phi, sigma^2)`` of AR(1) noise along the rows from the variogram at lags 1..12.

    ``var(Z[j + k] - Z[j]) = 2 sigma^2 (1 - phi^k)``: the long lags pin sigma (the sill)
    and the short ones phi, far more stably than lags 1 and 2 alone.
    """
    n = Z.shape[1]
    lags = np.arange(1, min(_MAX_LAG, n - 2) + 1)
    gamma = np.array([_robust_var(Z[:, k:] - Z[:, :-k]) for k in lags])
    if not gamma[0] > 0:
        raise ValueError("scan_noise: the map has no noise (neighbouring samples are equal)")
    # the grid of phi at once (one row per phi; the first minimum, as a loop would take)
    phis = np.linspace(-0.9, 0.98, 189)
    shape = 2 * (1 - phis[:, None] ** lags)
    s2 = (shape @ gamma) / np.einsum("ij,ij->i", shape, shape)  # least squares for the sill
    cost = np.sum((gamma - s2[:, None] * shape) ** 2, axis=1)
    i = int(np.argmin(cost))
    return float(phis[i]), float(s2[i])


# ---------------------------------------------------------------- resampling
def scan_labels(beam_map: BeamMap, scan_axis: str) -> np.ndarray:
    """The scan number of each sample of a raster map (scans along ``scan_axis``).

    Scans along u are the grid's rows (one v each); scans along v its columns. A map
    without ``shape`` (flagged samples removed, or jittered positions) is placed on its
    raster first.
    """
    if scan_axis not in ("u", "v"):
        raise ValueError(f"scan_axis must be 'u' or 'v', got {scan_axis!r}")
    if beam_map.shape is None:
        rows, cols = _holey_grid(beam_map)  # a raster with flagged samples removed
    else:
        n_v, n_u = beam_map.shape
        rows, cols = np.divmod(np.arange(n_v * n_u), n_u)
    return rows if scan_axis == "u" else cols


def _sub_grid(shape, idx: np.ndarray) -> tuple[np.ndarray, tuple[int, int] | None]:
    """``idx`` in u-fastest order and its shape, if whole rows or columns were taken.

    ``idx`` comes grouped by scan. Whole rows or whole columns of a u-fastest grid
    (repeats allowed, as a bootstrap draws them) form a product grid, which keeps the
    model's fast separable transform; anything else is returned sorted, without shape.
    """
    if shape is not None and idx.size:
        n_v, n_u = shape
        rows, cols = np.divmod(idx, n_u)
        if idx.size % n_u == 0:  # blocks of whole rows, each in u order
            r, c = rows.reshape(-1, n_u), cols.reshape(-1, n_u)
            if np.all(r == r[:, :1]) and np.all(c == np.arange(n_u)):
                return idx, (idx.size // n_u, n_u)
        if idx.size % n_v == 0:  # blocks of whole columns, each in v order
            r, c = rows.reshape(-1, n_v), cols.reshape(-1, n_v)
            if np.all(c == c[:, :1]) and np.all(r == np.arange(n_v)):
                return idx.reshape(-1, n_v).T.ravel(), (n_v, idx.size // n_v)
    return np.sort(idx, kind="stable"), None


def _subset(obs: Observation, picks: list[np.ndarray]) -> Observation:
    maps = []
    for m, idx in zip(obs.maps, picks):
        idx, shape = _sub_grid(m.shape, idx)
        mask = None if m.mask is None else m.mask[idx]
        if mask is not None and not mask.any():
            raise ValueError(f"map {m.name!r}: a replicate holds only masked samples")
        maps.append(BeamMap(u=m.u[idx], v=m.v[idx], power=m.power[idx], dz=m.dz,
                            sigma=None if m.sigma is None else m.sigma[idx], name=m.name,
                            shape=shape, mask=mask))
    return dataclasses.replace(obs, maps=maps)


def _as_params(result) -> dict:
    if isinstance(result, Mapping):
        return {k: np.asarray(v, dtype=np.float64) for k, v in result.items()}
    arr = np.asarray(result, dtype=np.float64)
    if arr.ndim > 1:
        raise ValueError(f"fit_fn must return a mapping or a 1-D array, got shape {arr.shape}")
    return {"theta": arr}


def resample_over_scans(
    fit_fn: Callable[[Observation], Mapping | np.ndarray],
    obs: Observation,
    scans,
    n: int = 10,
    *,
    method: str = "jackknife",
    seed: int = 0,
    return_samples: bool = False,
    blocks: str = "contiguous",
):
    """Parameter standard deviations that respect the correlation along and within scans.

    Parameters
    ----------
    fit_fn : callable
        ``fit_fn(obs) -> {name: value or array}`` (or a 1-D array): fits one observation
        and returns the parameters.
    obs : Observation
    scans : str or sequence of arrays
        Per map, the scan number of each sample; or ``'u'``/``'v'`` to derive them from
        gridded maps with :func:`scan_labels`.
    n : int
        Jackknife: number of blocks of neighbouring scans, deleted in turn (each map's
        scans split into ``n`` blocks; block ``k`` of every map is dropped together).
        Bootstrap: number of replicates, each drawing every map's scans with replacement.
    method : {'jackknife', 'bootstrap'}
    seed : int
        Seeds the bootstrap.
    return_samples : bool
        Also return the per-replicate parameters.
    blocks : {'contiguous', 'interleaved'}
        Jackknife blocks: ``n`` runs of neighbouring scans, or every ``n``-th scan
        (block ``k`` = scans ``k, k + n, ...``). Scans are the resampled units either
        way (the correlation along a scan and the scan offsets stay inside a unit);
        interleaved blocks each take a representative share of the map, so that a
        compact beam never loses its whole core to one replicate.

    Notes
    -----
    Replicates of a gridded map that drop or repeat whole scans keep a ``shape`` (a
    product grid, with the samples in u-fastest order), so a model's separable transform
    still applies; other subsets are passed as scattered samples.

    Returns
    -------
    dict
        ``{name: standard deviation}`` (arrays keep the shape of the parameter); with
        ``return_samples``, ``(sd, samples)`` where ``samples[name]`` stacks the
        replicates.
    """
    if method not in ("jackknife", "bootstrap"):
        raise ValueError(f"method must be 'jackknife' or 'bootstrap', got {method!r}")
    if blocks not in ("contiguous", "interleaved"):
        raise ValueError(f"blocks must be 'contiguous' or 'interleaved', got {blocks!r}")
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n}")
    n = int(n)
    if isinstance(scans, str):
        scans = [scan_labels(m, scans) for m in obs.maps]
    scans = [np.asarray(s).ravel() for s in scans]
    if len(scans) != len(obs.maps):
        raise ValueError(f"scans has {len(scans)} entries for {len(obs.maps)} maps")
    ids = []
    for m, s in zip(obs.maps, scans):
        if s.size != m.n:
            raise ValueError(f"map {m.name!r}: {s.size} scan labels for {m.n} samples")
        u = np.unique(s)
        if method == "jackknife" and u.size < n:
            raise ValueError(
                f"map {m.name!r} has {u.size} scans, fewer than the {n} jackknife blocks"
            )
        ids.append(u)
    rng = np.random.default_rng(seed)
    members = [{sid: np.flatnonzero(s == sid) for sid in u} for s, u in zip(scans, ids)]
    replicates = []
    for k in range(n):
        picks = []
        for u, mem in zip(ids, members):
            if method == "jackknife":
                part = u[k::n] if blocks == "interleaved" else np.array_split(u, n)[k]
                drop = set(part.tolist())
                chosen = [sid for sid in u if sid not in drop]
            else:
                chosen = np.sort(rng.choice(u, size=u.size, replace=True))
            picks.append(np.concatenate([mem[sid] for sid in chosen]))
        replicates.append(_as_params(fit_fn(_subset(obs, picks))))
    names = list(replicates[0])
    samples = {}
    for name in names:
        try:
            samples[name] = np.stack([r[name] for r in replicates])
        except (KeyError, ValueError):
            raise ValueError(f"fit_fn returned parameter {name!r} inconsistently "
                             "across replicates") from None
    sd = {}
    for name, s in samples.items():
        if method == "jackknife":
            dev = s - s.mean(axis=0)
            value = np.sqrt((n - 1) / n * np.sum(dev**2, axis=0))
        else:
            value = s.std(axis=0, ddof=1)
        sd[name] = float(value) if np.ndim(value) == 0 else value
    return (sd, samples) if return_samples else sd
