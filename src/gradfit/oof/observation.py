"""The data of one OOF holography observation: any number of beam maps at known defocus.

The maps own their geometry: :meth:`BeamMap.grid_axes` (the one test for a regular
grid, used by the model), :func:`regular_grid` (the samples of a grid in any order),
:func:`place_samples` (the one path by which every reader puts a map's samples on their
grid and masks the flagged ones), :meth:`BeamMap.noise` (the noise estimate from the map
edges) and :attr:`Observation.infocus_index` (the reference map).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

__all__ = ["BeamMap", "Observation", "grid_shape", "grid_indices", "regular_grid",
           "place_samples", "PlacedSamples", "GRID_RTOL"]

#: samples within this fraction of the map extent of a regular grid count as on it
GRID_RTOL = 1e-6


def grid_shape(u: np.ndarray, v: np.ndarray, rtol: float = GRID_RTOL) -> tuple[int, int] | None:
    """``(n_v, n_u)`` if ``(u, v)`` is a regular grid with u varying fastest, else None.

    Rows must repeat the first row's u and columns the first column's v to ``rtol``
    times the map extent, and both axes must be strictly monotonic.
    """
    u = np.asarray(u, dtype=np.float64).ravel()
    v = np.asarray(v, dtype=np.float64).ravel()
    n = u.size
    if n < 4 or v.size != n or not (np.all(np.isfinite(u)) and np.all(np.isfinite(v))):
        return None
    # the first row ends where v leaves the first sample's v by more than the tolerance
    # (not at the first exact change: recorded coordinates jitter in the last digits)
    tol = rtol * max(np.ptp(u), np.ptp(v), 1e-300)
    change = np.flatnonzero(np.abs(v - v[0]) > tol)
    n_u = int(change[0]) if change.size else n
    if n_u < 2 or n % n_u:
        return None
    n_v = n // n_u
    if n_v < 2:
        return None
    if _axes(u, v, (n_v, n_u), rtol) is None:
        return None
    return (n_v, n_u)


def _axes(u, v, shape, rtol):
    n_v, n_u = shape
    if n_v * n_u != u.size:
        return None
    U = u.reshape(n_v, n_u)
    V = v.reshape(n_v, n_u)
    tol = rtol * max(np.ptp(u), np.ptp(v), 1e-300)
    if np.any(np.abs(U - U[0]) > tol) or np.any(np.abs(V - V[:, :1]) > tol):
        return None
    ua, va = U[0], V[:, 0]
    du, dv = np.diff(ua), np.diff(va)
    if not (np.all(du > 0) or np.all(du < 0)) or not (np.all(dv > 0) or np.all(dv < 0)):
        return None
    return ua, va


def _levels(x: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of x (clustered within tol) and the level index of each sample."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new = np.concatenate([[True], np.diff(xs) > tol])
    level_sorted = np.cumsum(new) - 1
    idx = np.empty(x.size, dtype=np.int64)
    idx[order] = level_sorted
    centres = np.bincount(level_sorted, weights=xs) / np.bincount(level_sorted)
    return centres, idx


def grid_indices(u, v):
    """``(u_axis, v_axis, iu, iv)``: the distinct u and v values and each sample's index.

    Values closer than :data:`GRID_RTOL` of the map's extent are one level. For samples on a grid
    (complete or with holes) ``u_axis[iu]``, ``v_axis[iv]`` give their grid positions.
    """
    u = np.asarray(u, dtype=np.float64).ravel()
    v = np.asarray(v, dtype=np.float64).ravel()
    if u.size == 0 or not (np.all(np.isfinite(u)) and np.all(np.isfinite(v))):
        raise ValueError("grid_indices needs finite coordinates")
    scale = max(float(np.ptp(u)), float(np.ptp(v)), 1e-300)
    tol = GRID_RTOL * scale
    ua, iu = _levels(u, tol)
    va, iv = _levels(v, tol)
    return ua, va, iu, iv


def regular_grid(u: np.ndarray, v: np.ndarray):
    """``(order, shape, u_axis, v_axis)`` if the samples fill a regular grid, else None.

    ``u[order]``, ``v[order]`` run with u fastest and both axes increasing, as
    :class:`BeamMap` expects for ``shape = (n_v, n_u)``. Coordinates within
    :data:`GRID_RTOL` of the map's extent of one value are one grid line; the placed
    samples must pass :meth:`BeamMap.grid_axes`'s test (so a shape found here is always
    one the model treats as a grid).
    """
    u = np.asarray(u, dtype=np.float64).ravel()
    v = np.asarray(v, dtype=np.float64).ravel()
    if u.size < 4 or v.size != u.size or not (np.all(np.isfinite(u))
                                              and np.all(np.isfinite(v))):
        return None
    shape = grid_shape(u, v)
    if shape is not None:
        # already u fastest (either direction): sort its rows and columns, no clustering
        nv, nu = shape
        cu = np.argsort(u[:nu], kind="stable")
        rv = np.argsort(v[::nu], kind="stable")
        order = (rv[:, None] * nu + cu[None, :]).ravel()
        return order, shape, u[:nu][cu], v[::nu][rv]
    ua, va, iu, iv = grid_indices(u, v)
    nu, nv = ua.size, va.size
    if nu < 2 or nv < 2 or nu * nv != u.size:
        return None
    cell = iv * nu + iu
    if np.unique(cell).size != u.size:
        return None
    order = np.argsort(cell, kind="stable")
    # levels chain values closer than the tolerance one to the next, so a level may spread
    # wider than the tolerance: check the placed samples as the model will
    if _axes(u[order], v[order], (nv, nu), GRID_RTOL) is None:
        return None
    return order, (nv, nu), ua, va


class PlacedSamples(NamedTuple):
    """One map's samples as :func:`place_samples` leaves them (the BeamMap fields)."""

    u: np.ndarray
    v: np.ndarray
    power: np.ndarray
    sigma: np.ndarray | None
    shape: tuple[int, int] | None
    mask: np.ndarray | None


def place_samples(u, v, power, sigma=None, flagged=None) -> PlacedSamples:
    """Put one map's samples on their regular grid and mask the flagged ones.

    The one code path of every map reader (FITS and text), so that they agree on what is a
    grid and on what a flagged sample holds.

    - A sample is flagged where ``flagged`` is True or any of its u, v, power or sigma is
      not finite.
    - Grid: the samples fill a regular grid to :data:`GRID_RTOL` of the map's extent
      (:func:`regular_grid`; every u and v finite). They keep their order if it already
      runs u fastest (either direction along each axis), else they are put in u-fastest,
      increasing order. Every sample stays, with ``shape = (n_v, n_u)`` (the fast
      separable transform); a flagged one is masked (``mask`` False) and holds NaN in
      ``power`` and in ``sigma``: it carries no data.
    - Otherwise (scattered samples, or a coordinate not finite) the flagged samples are
      dropped, the rest keep their order and ``shape`` is None.

    Parameters
    ----------
    u, v, power : array_like
        One value per sample.
    sigma : array_like, optional
        Per-sample noise, one per sample.
    flagged : array_like of bool, optional
        Samples the reader flags beyond non-finite values (e.g. exact zeros).

    Returns
    -------
    PlacedSamples
        ``mask`` is None when no sample is flagged.
    """
    u = np.asarray(u, dtype=np.float64).ravel()
    v = np.asarray(v, dtype=np.float64).ravel()
    power = np.asarray(power, dtype=np.float64).ravel()
    sigma = None if sigma is None else np.asarray(sigma, dtype=np.float64).ravel()
    n = power.size
    sizes = {"u": u.size, "v": v.size, "power": n}
    if sigma is not None:
        sizes["sigma"] = sigma.size
    if flagged is not None:
        flagged = np.asarray(flagged)
        if flagged.dtype != bool:
            raise TypeError(f"place_samples: flagged must be boolean, got {flagged.dtype}")
        sizes["flagged"] = flagged.size
        flagged = flagged.ravel()
    if len(set(sizes.values())) > 1:
        raise ValueError("place_samples: lengths differ ("
                         + ", ".join(f"{k} {s}" for k, s in sizes.items()) + ")")
    bad = ~(np.isfinite(u) & np.isfinite(v) & np.isfinite(power))
    if sigma is not None:
        bad |= ~np.isfinite(sigma)
    if flagged is not None:
        bad |= flagged
    # a file already in u-fastest order keeps it (sample k is the file's sample k)
    shape, order = grid_shape(u, v), None
    if shape is None:
        grid = regular_grid(u, v)
        if grid is not None:
            order, shape = grid[0], grid[1]
    if shape is not None:
        if order is not None:
            u, v, power, bad = u[order], v[order], power[order], bad[order]
            sigma = None if sigma is None else sigma[order]
        mask = None
        if bad.any():
            mask = ~bad
            power = np.where(mask, power, np.nan)
            sigma = None if sigma is None else np.where(mask, sigma, np.nan)
        return PlacedSamples(u, v, power, sigma, shape, mask)
    if bad.any():
        keep = ~bad
        u, v, power = u[keep], v[keep], power[keep]
        sigma = None if sigma is None else sigma[keep]
    return PlacedSamples(u, v, power, sigma, None, None)


@dataclass
class BeamMap:
    """One total-power beam map.

    u, v : 1-D float64 arrays of the sky offsets of each sample (radians).
    power : 1-D float64 array of the measured power at each sample (same length).
    dz : axial defocus of the subreflector (or feed) for this map (metres).
    sigma : per-point noise (same length) or None when unknown.
    name : label, e.g. 'MINUS OOF'.
    shape : (n_v, n_u) when the samples form a regular grid with u varying fastest, else None.
    mask : boolean array (same length) or None: False marks a flagged sample, which stays
        on the grid (so a gridded map keeps its ``shape`` and the fast separable
        transform) but is left out of the likelihood and of noise estimates. Its
        ``power`` and ``sigma`` may be anything (NaN as read: :func:`place_samples`).
        None: every sample counts.
    """

    u: np.ndarray
    v: np.ndarray
    power: np.ndarray
    dz: float
    sigma: np.ndarray | None = None
    name: str = ""
    shape: tuple[int, int] | None = None
    mask: np.ndarray | None = None

    def __post_init__(self):
        self.u = np.asarray(self.u, dtype=np.float64).ravel()
        self.v = np.asarray(self.v, dtype=np.float64).ravel()
        self.power = np.asarray(self.power, dtype=np.float64).ravel()
        if not (self.u.size == self.v.size == self.power.size):
            raise ValueError(
                f"map {self.name or '?'}: U, V and BEAM lengths differ "
                f"({self.u.size}, {self.v.size}, {self.power.size})"
            )
        if self.sigma is not None:
            self.sigma = np.asarray(self.sigma, dtype=np.float64).ravel()
            if self.sigma.size != self.power.size:
                raise ValueError(
                    f"map {self.name or '?'}: sigma has {self.sigma.size} values "
                    f"for {self.power.size} samples"
                )
        self.dz = float(self.dz)
        if self.mask is not None:
            self.mask = np.asarray(self.mask).ravel()
            if self.mask.dtype != bool or self.mask.size != self.power.size:
                raise ValueError(
                    f"map {self.name or '?'}: mask must be a boolean array of "
                    f"{self.power.size} values, got {self.mask.dtype} of {self.mask.size}"
                )
            if not self.mask.any():
                raise ValueError(f"map {self.name or '?'}: every sample is masked")
            if self.mask.all():
                self.mask = None

    @property
    def n(self) -> int:
        """Samples on the map, masked ones included (the model is computed at all)."""
        return self.power.size

    @property
    def n_used(self) -> int:
        """Samples that enter the fit (not masked)."""
        return self.power.size if self.mask is None else int(self.mask.sum())

    @property
    def valid(self) -> np.ndarray:
        """Boolean array: True for the samples that enter the fit."""
        return np.ones(self.n, dtype=bool) if self.mask is None else self.mask

    def masked_power(self) -> np.ndarray:
        """``power`` with NaN at the masked samples (for noise estimates and plots)."""
        return self.power if self.mask is None else np.where(self.mask, self.power, np.nan)

    def grid_axes(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(u_axis, v_axis)`` when the map is a regular grid of :attr:`shape`, else None."""
        if self.shape is None:
            return None
        return _axes(self.u, self.v, tuple(self.shape), GRID_RTOL)

    @property
    def side(self) -> int:
        """Samples along the shortest grid axis (``sqrt(n)`` for scattered samples)."""
        return min(self.shape) if self.grid_axes() is not None else int(math.sqrt(self.n))

    def noise(self) -> float:
        """Noise sigma of the map from its edges (same units as ``power``).

        For a regular grid, the first differences along each axis of the two outermost
        rows and columns (the beam is smooth there, the noise is white):
        ``sigma = 1.4826 MAD(diff) / sqrt(2)``. For scattered samples, the robust spread
        (1.4826 MAD) of the 10 % of samples farthest from the map centre.
        """
        if self.grid_axes() is not None and min(self.shape) >= 4:
            P = self.masked_power().reshape(self.shape)
            k = 2
            diffs = [np.diff(P[:k], axis=1), np.diff(P[-k:], axis=1),
                     np.diff(P[:, :k], axis=0), np.diff(P[:, -k:], axis=0)]
            d = np.concatenate([x.ravel() for x in diffs])
            d = d[np.isfinite(d)]  # differences touching a masked sample
            return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2))
        ok = self.valid
        u, v, pw = self.u[ok], self.v[ok], self.power[ok]
        r = np.hypot(u - np.median(u), v - np.median(v))
        edge = pw[r >= np.quantile(r, 0.9)]
        return float(1.4826 * np.median(np.abs(edge - np.median(edge))))


@dataclass
class Observation:
    """All maps of one observation plus the metadata a fit needs.

    maps : the beam maps, any number (usually three: -dz, 0, +dz).
    wavelength_m, frequency_hz : observing wavelength and frequency.
    telescope : telescope name if known (e.g. 'effelsberg'), else None.
    layout : 'pyoof' or 'oof' for data read from a file, 'gradfit' for simulations.
        Sign conventions follow pyoof for 'pyoof' data (see DESIGN.md).
    meta : free-form header values (OBJECT, DATE_OBS, MEANEL, ...).
    truth : for simulations, the true parameters (JSON-ready dict), else None.
    """

    maps: list[BeamMap]
    wavelength_m: float
    frequency_hz: float
    telescope: str | None = None
    layout: str = "gradfit"
    meta: dict = field(default_factory=dict)
    truth: dict | None = None

    @property
    def n_points(self) -> int:
        """Samples that enter a fit (masked samples excluded)."""
        return sum(m.n_used for m in self.maps)

    @property
    def infocus_index(self) -> int:
        """Index of the map closest to focus (the reference for amplitude and pointing)."""
        return int(np.argmin([abs(m.dz) for m in self.maps]))
