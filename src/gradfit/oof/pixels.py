"""The aperture phase at panel scale: one value per aperture cell, a smoothness prior (MAP).

A Zernike fit describes the dish with 20-35 numbers; the errors left after the
large-scale shape is set are panel-sized. Here the phase is a free value on every
illuminated cell of an :class:`~gradfit.oof.aperture.ApertureGrid` (10^4 and more
for a 128-cell grid), started from a Zernike solution:

    E_b = w * A * exp(i (phi + phi_dz,b + phi_point,b)),   P_b = amp * gain_b |F_b|^2 / F0^2 + bg_b

with ``phi`` the per-cell vector itself (no p x J basis matrix is ever built) and
``F_b`` the transform of :mod:`gradfit.oof.transforms` (the exact matrix Fourier
transform for maps on regular grids). The illumination, pointing, gains and
backgrounds are those of the starting Zernike solution; ``amp`` is fitted.

The fit maximises the posterior

    -log p = chi^2 / 2 + (smoothness / 2) sum_<ij> (phi_i - phi_j)^2 + (mean_w phi / s_p)^2 / 2

where ``<ij>`` runs over pairs of illuminated cells that share an edge (a
first-difference, i.e. discrete-Laplacian, prior: ``phi^T L phi``), ``smoothness`` is
in 1/rad^2 (equivalently, a Gaussian prior of standard deviation ``smoothness**-0.5``
radians on the phase step between neighbouring cells), and the last term pins the
unobservable piston (the open-fraction-weighted mean phase) to 0 with
``s_p = PISTON_SIGMA_RAD``. Every term is a squared residual, so the problem is a
least-squares problem for :func:`gradfit.fit`: the model returns the beams followed
by ``sqrt(smoothness) (phi_i - phi_j)`` and the weighted mean phase, with data 0 and
sigma 1 (resp. ``s_p``) for the prior rows. Jacobian-vector products then come from
autodiff, so the matrix-free solvers work and the Gauss-Newton errors are those of
the posterior.

How well the data pin the map down is said by the effective number of parameters
``n_eff = tr((J^T W J + smoothness L + piston)^-1 J^T W J)`` (the trace of the
influence operator, between 0 and the number of cells), estimated by Hutchinson
probes with conjugate-gradient solves against products ``J^T W J v`` from autodiff.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

import gradfit
from gradfit.objective import resolve_device

from .aperture import ApertureGrid, aperture_grid
from .model import flat_maps, torch_threads
from .nuisance import DEFAULTS, ILLUMINATIONS, illumination
from .observation import BeamMap, Observation
from .pixel_errors import jacobi_diagonal, pixel_uncertainty
from .progress import reporter
from .telescope import Telescope, get_telescope
from .transforms import make_transform

__all__ = ["PixelModel", "PixelSolution", "refine_pixels", "fit_basis", "neighbour_pairs",
           "CellBasis", "PanelBasis", "BASES", "remove_piston_tilt", "MIN_CELLS_FOR_TILT",
           "simulate_surface", "grid_cells", "PISTON_SIGMA_RAD", "DEFAULT_SMOOTHNESS",
           "DEFAULT_GRID"]

#: standard deviation (radians) of the prior that pins the mean phase (piston) to 0
PISTON_SIGMA_RAD = 1e-3
#: default smoothness weight (1/rad^2): neighbouring cells differ by ~0.1 rad a priori
DEFAULT_SMOOTHNESS = 100.0
#: default cells across the dish
DEFAULT_GRID = 128
#: sigma (in units of the in-focus peak) given to flagged samples in a pixel fit: their
#: weight (1/sigma^2) is ~1e-30 of a real sample's, and sigma^2 still fits in float32
MASKED_SIGMA = 1e15
#: panels with fewer cells than this get a piston but no tilts (see PanelBasis)
MIN_CELLS_FOR_TILT = 8


def grid_cells(telescope: Telescope | str, pixel_m: float | None = None,
               grid: int | None = None) -> int:
    """Cells across the dish for ``pixel_m`` (cell size, metres) or ``grid`` (a count).

    Exactly one of them may be given; neither gives :data:`DEFAULT_GRID`.
    """
    tel = get_telescope(telescope)
    if pixel_m is not None and grid is not None:
        raise ValueError("give pixel_m (cell size in metres) or grid (cells across the dish), "
                         "not both")
    if pixel_m is not None:
        if isinstance(pixel_m, bool) or not isinstance(pixel_m, (int, float, np.floating)) \
                or not (pixel_m > 0 and math.isfinite(pixel_m)):
            raise ValueError(f"pixel_m must be a positive cell size in metres, got {pixel_m!r}")
        n = int(round(2 * tel.primary_radius_m / float(pixel_m)))
    elif grid is not None:
        if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)):
            raise ValueError(f"grid must be an integer number of cells, got {grid!r}")
        n = int(grid)
    else:
        n = DEFAULT_GRID
    if not 8 <= n <= 4096:
        raise ValueError(f"the pixel grid needs 8 to 4096 cells across the dish, got {n} "
                         f"(pixel_m={pixel_m!r}, grid={grid!r}, dish diameter "
                         f"{2 * tel.primary_radius_m:g} m)")
    return n


def neighbour_pairs(grid: ApertureGrid) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)`` into the illuminated cells of every two that share an edge.

    Each pair appears once (right and lower neighbours); ``sum (phi_i - phi_j)^2`` over
    them is ``phi^T L phi`` with ``L`` the graph Laplacian of the illuminated cells.
    """
    n = grid.n
    pos = np.full(n * n, -1, dtype=np.int64)
    pos[grid.index] = np.arange(grid.index.size)
    P = pos.reshape(n, n)
    right = (P[:, :-1] >= 0) & (P[:, 1:] >= 0)
    down = (P[:-1, :] >= 0) & (P[1:, :] >= 0)
    i = np.concatenate([P[:, :-1][right], P[:-1, :][down]])
    j = np.concatenate([P[:, 1:][right], P[1:, :][down]])
    return i, j


# ------------------------------------------------------------------------- model
class PixelModel:
    """Beams of every map from a per-cell aperture phase.

    Parameters
    ----------
    obs : Observation
        Sample points, defocus of each map, wavelength.
    telescope : Telescope or str
    grid : int or ApertureGrid
        Cells across the dish.
    illumination : {'pedestal', 'gaussian'}
    nuisance : dict, optional
        Fixed values of ``c_dB``, ``q``, ``x0``, ``y0`` (scalars), ``pointing``
        ``(B, 2)`` in lambda/D, ``gain`` and ``background`` ``(B,)``,
        ``background_plane`` ``(B, 2)``; missing ones take their defaults
        (:data:`gradfit.oof.nuisance.DEFAULTS`).
    transform : {'mft', 'dft', 'fft'}
    device, dtype :
    """

    def __init__(self, obs: Observation, telescope: Telescope | str,
                 grid: int | ApertureGrid = DEFAULT_GRID, *, illumination: str = "pedestal",
                 nuisance: dict | None = None, transform: str = "mft", device="cpu",
                 dtype=torch.float64):
        if illumination not in ILLUMINATIONS:
            raise ValueError(f"unknown illumination {illumination!r}; choose one of: "
                             f"{', '.join(ILLUMINATIONS)}")
        if not isinstance(obs, Observation):
            raise TypeError(f"obs must be a gradfit.oof.Observation, not {type(obs).__name__}")
        if not obs.maps:
            raise ValueError("observation has no beam maps")
        self.telescope = tel = get_telescope(telescope)
        self.grid = g = grid if isinstance(grid, ApertureGrid) else aperture_grid(tel, int(grid))
        self.device, self.dtype = torch.device(device), dtype
        self.wavelength_m = lam = float(obs.wavelength_m)
        self.sizes = [m.n for m in obs.maps]
        self.n_maps = B = len(obs.maps)
        nu = dict(DEFAULTS)
        nu.update({k: v for k, v in (nuisance or {}).items() if v is not None})
        unknown = set(nu) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown nuisance value(s) {sorted(unknown)}; choose from: "
                             f"{', '.join(DEFAULTS)}")
        pr = tel.primary_radius_m
        r2 = ((g.x - nu["x0"]) ** 2 + (g.y - nu["y0"]) ** 2) / pr**2
        A = illumination_fn(illumination, float(nu["c_dB"]), r2, float(nu["q"]))
        t = self.tensor
        self.amplitude = t(g.weight * A)  # w * A on the cells
        # known phase of each map: defocus and pointing ramp (radians), (B, J)
        known = np.stack([g.defocus_phase(m.dz, lam) for m in obs.maps])
        pt = np.broadcast_to(np.asarray(nu["pointing"], dtype=np.float64).reshape(-1, 2)
                             if np.ndim(nu["pointing"]) else np.zeros((B, 2)), (B, 2))
        known = known + (np.pi / pr) * (pt[:, :1] * g.x + pt[:, 1:] * g.y)
        self.known_phase = t(known)
        self.gain = t(np.broadcast_to(np.asarray(nu["gain"], dtype=np.float64), (B,)).copy())
        self.background = t(np.broadcast_to(np.asarray(nu["background"], dtype=np.float64),
                                            (B,)).copy())
        # fixed background of every sample: background_b + plane_b . (u, v) / half-width_b
        # (as BeamModel), flat
        plane = np.broadcast_to(np.asarray(nu.get("background_plane", 0.0),
                                           dtype=np.float64), (B, 2))
        bgs = []
        for b, m in enumerate(obs.maps):
            h = max(float(np.max(np.abs(m.u))), float(np.max(np.abs(m.v))), 1e-300)
            bgs.append(self.background.cpu().numpy()[b] + plane[b, 0] * m.u / h
                       + plane[b, 1] * m.v / h)
        self._bg_flat = t(np.concatenate(bgs))
        self.norm = 1.0 / float(np.sum(g.weight) * g.step_m**2) ** 2
        self.tf = make_transform(transform, g, obs.maps, lam, device=self.device, dtype=dtype)
        self.transform = self.tf.name

    def tensor(self, a) -> torch.Tensor:
        """``a`` as a tensor on the model's device and dtype."""
        return torch.as_tensor(np.array(a, dtype=np.float64), dtype=self.dtype,
                               device=self.device)

    @property
    def n_cells(self) -> int:
        """Number of illuminated cells (the length of the phase vector)."""
        return self.grid.n_pixels

    def _flat(self, P: torch.Tensor) -> torch.Tensor:
        return flat_maps(P, self.sizes)

    def power(self, phase: torch.Tensor) -> torch.Tensor:
        """``gain_b |F_b|^2 / F0^2`` of every map, flat (map after map), for the cell
        phase (radians)."""
        ph = phase.unsqueeze(-2) + self.known_phase  # (B, J)
        er, ei = self.amplitude * torch.cos(ph), self.amplitude * torch.sin(ph)
        P = self.tf.power(er, ei) * self.norm
        return self._flat(P * self.gain.unsqueeze(-1))

    def background_flat(self) -> torch.Tensor:
        """The (fixed) background of each sample, flat: ``background`` and
        ``background_plane``."""
        return self._bg_flat

    def beams(self, phase: torch.Tensor, amp) -> torch.Tensor:
        """``amp * gain_b |F_b|^2 / F0^2 + background_b``, flat."""
        return amp * self.power(phase) + self.background_flat()

    def __call__(self, p: dict, x=None) -> torch.Tensor:
        """The beams of all maps, flat, for ``p = {"phase": (J,), "amp": float}``."""
        phase = torch.as_tensor(p["phase"], dtype=self.dtype, device=self.device)
        if phase.shape != (self.n_cells,):
            raise ValueError(f"phase must have one value per illuminated cell, shape "
                             f"({self.n_cells},), got {tuple(phase.shape)}")
        amp = torch.as_tensor(p.get("amp", 1.0), dtype=self.dtype, device=self.device)
        return self.beams(phase, amp)


def illumination_fn(kind, c_dB, r2, q):
    """The illumination taper of :func:`gradfit.oof.nuisance.illumination` (numpy)."""
    return illumination(kind, c_dB, np.asarray(r2, dtype=np.float64), q)


class CellBasis:
    """The pixel basis: one parameter per illuminated cell, ``phase = theta``."""

    name = "pixels"

    def __init__(self, grid: ApertureGrid):
        self.n = grid.n_pixels

    def forward(self, theta):
        return theta

    def adjoint(self, w):
        return w

    def weigh_diag(self, d_cell):
        """``diag(B^T D B)`` for a diagonal ``D`` on the cells (here ``D`` itself)."""
        return d_cell

    def start(self, phase0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(theta0, offset)``: parameters for ``phase0`` and the fixed phase off the basis."""
        return np.array(phase0, dtype=np.float64), np.zeros_like(phase0)


class PanelBasis:
    """One piston and two tilts per panel: ``phase_i = p_k + t_x,k dx_i + t_y,k dy_i``
    for the cells ``i`` of panel ``k`` (``dx, dy`` from the panel's weighted centroid,
    metres; tilts in rad/m).

    A cell belongs to the panel that holds its centre. Panels without a cell have no
    parameter; panels with fewer than :data:`MIN_CELLS_FOR_TILT` cells get a piston
    only (tilts across 3-7 cells left L-BFGS unconverged after 5,000 iterations on a
    64-cell grid, 2.5 cells per panel, with no prior to hold them). Cells on no panel keep
    their starting phase. Parameters: all pistons, then the x tilts, then the y tilts.
    """

    name = "panels"

    def __init__(self, grid: ApertureGrid, layout, device, dtype):
        pid = layout.panel_of(grid.x, grid.y)
        on = np.flatnonzero(pid >= 0)
        if on.size == 0:
            raise ValueError("the panel layout covers no cell of the aperture grid; check "
                             "its radii (metres) against the dish radius")
        used, inv = np.unique(pid[on], return_inverse=True)
        P = used.size
        w = grid.weight[on]
        sw = np.bincount(inv, w, P)
        dx = grid.x[on] - (np.bincount(inv, w * grid.x[on], P) / sw)[inv]
        dy = grid.y[on] - (np.bincount(inv, w * grid.y[on], P) / sw)[inv]
        tilted = np.bincount(inv, minlength=P) >= MIN_CELLS_FOR_TILT
        tidx = np.cumsum(tilted) - 1
        has_t = tilted[inv]
        self.panel_ids = used
        self.n_pistons, self.n_tilts = P, int(tilted.sum())
        self.n = P + 2 * self.n_tilts
        self.J = grid.n_pixels
        self._np = {"on": on, "inv": inv, "dx": dx, "dy": dy, "has_t": has_t,
                    "tcell": np.where(has_t, tidx[inv], 0), "w": w}

        def t(a, integer=False):
            return torch.as_tensor(a, device=device, dtype=None if integer else dtype)

        self.on, self.inv = t(on, True), t(inv, True)
        self.tcell = t(self._np["tcell"], True)
        m = has_t.astype(np.float64)
        self.mdx, self.mdy = t(dx * m), t(dy * m)

    def forward(self, theta):
        P, T = self.n_pistons, self.n_tilts
        vals = theta[:P][self.inv]
        if T:  # cells without tilts point at tilt 0 with a zero lever arm
            vals = (vals + theta[P:P + T][self.tcell] * self.mdx
                    + theta[P + T:][self.tcell] * self.mdy)
        return theta.new_zeros(self.J).index_copy(0, self.on, vals)

    def adjoint(self, w):
        P, T = self.n_pistons, self.n_tilts
        wv = w[self.on]
        z = w.new_zeros
        if not T:
            return z(P).index_add(0, self.inv, wv)
        return torch.cat([z(P).index_add(0, self.inv, wv),
                          z(T).index_add(0, self.tcell, wv * self.mdx),
                          z(T).index_add(0, self.tcell, wv * self.mdy)])

    def weigh_diag(self, d_cell):
        P, T = self.n_pistons, self.n_tilts
        d = d_cell[self.on]
        z = d.new_zeros
        if not T:
            return z(P).index_add(0, self.inv, d)
        return torch.cat([z(P).index_add(0, self.inv, d),
                          z(T).index_add(0, self.tcell, d * self.mdx**2),
                          z(T).index_add(0, self.tcell, d * self.mdy**2)])

    def start(self, phase0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted least-squares plane of ``phase0`` on each panel; the offset holds
        ``phase0`` on the cells off every panel."""
        a = self._np
        P = self.n_pistons
        inv, w, ph = a["inv"], a["w"], np.asarray(phase0, dtype=np.float64)[a["on"]]
        dx, dy = a["dx"] * a["has_t"], a["dy"] * a["has_t"]

        def s(v):
            return np.bincount(inv, w * v, P)

        sw = s(np.ones_like(ph))
        piston = s(ph) / sw  # dx, dy sum to 0 (weighted) on each panel
        sxx, sxy, syy, sxp, syp = s(dx * dx), s(dx * dy), s(dy * dy), s(dx * ph), s(dy * ph)
        det = sxx * syy - sxy**2
        ok = det > 1e-12 * np.maximum(sxx * syy, 1e-300)
        safe = np.where(ok, det, 1.0)
        tx = np.where(ok, (syy * sxp - sxy * syp) / safe, 0.0)
        ty = np.where(ok, (sxx * syp - sxy * sxp) / safe, 0.0)
        tilted = np.bincount(inv, a["has_t"].astype(np.float64), P) > 0
        theta = np.concatenate([piston, tx[tilted], ty[tilted]])
        offset = np.array(phase0, dtype=np.float64)
        offset[a["on"]] = 0.0
        return theta, offset


class _Posterior:
    """The beam model with its prior rows appended, as :func:`gradfit.fit` sees it.

    ``phase = offset + B theta`` for the basis ``B`` (:class:`CellBasis` or
    :class:`PanelBasis`). The fitted parameters are scaled, ``theta = u * c_theta`` and
    ``amp = amp0 + a * c_amp``, with ``c = diag(A)^-1/2`` at the start
    (:func:`~gradfit.oof.pixel_errors.jacobi_diagonal`): a diagonal preconditioner by a
    change of variables. The illumination taper makes the curvature of rim cells
    100 times smaller than that of central ones; unscaled, L-BFGS needed 5-10 times
    more iterations.
    """

    def __init__(self, model: PixelModel, smoothness: float, report, basis=None):
        self.model = model
        self.basis = basis if basis is not None else CellBasis(model.grid)
        if smoothness > 0:
            i, j = neighbour_pairs(model.grid)
        else:
            i = j = np.zeros(0, dtype=np.int64)
        self.i = torch.as_tensor(i, device=model.device)
        self.j = torch.as_tensor(j, device=model.device)
        self.n_pairs = i.size
        self.sqrt_s = math.sqrt(smoothness)
        w = model.grid.weight
        self.wmean = model.tensor(w / w.sum())
        self.piston_sigma = PISTON_SIGMA_RAD
        self.report = report
        self.calls, self.last = 0, 0.0
        self.offset = torch.zeros(model.n_cells, dtype=model.dtype, device=model.device)
        self.c_theta = torch.ones(self.basis.n, dtype=model.dtype, device=model.device)
        self.c_amp, self.amp0 = 1.0, 0.0

    def phase_of(self, theta):
        """The cell phase for basis parameters ``theta``."""
        return self.offset + self.basis.forward(theta)

    def set_start(self, phase0, amp0, sigma) -> dict:
        """Fix the offset and the scaling at the start; returns the fit's start values."""
        theta0, offset = self.basis.start(phase0)
        self.offset = self.model.tensor(offset)
        d = jacobi_diagonal(self, theta0, amp0, sigma)
        self.c_theta = 1.0 / torch.sqrt(d[:-1])
        self.c_amp = float(1.0 / torch.sqrt(d[-1]))
        self.amp0 = float(amp0)
        return {"u": (self.model.tensor(theta0) / self.c_theta).cpu().numpy(), "a": 0.0}

    def physical(self, p) -> tuple:
        """``(theta, amp)`` from fit parameters ``{"u", "a"}`` (tensors or arrays)."""
        u = torch.as_tensor(p["u"], dtype=self.model.dtype, device=self.model.device)
        a = torch.as_tensor(p["a"], dtype=self.model.dtype, device=self.model.device)
        return u * self.c_theta, self.amp0 + a * self.c_amp

    def prior_rows(self, phase):
        d = (phase[self.i] - phase[self.j]) * self.sqrt_s
        return torch.cat([d, (phase @ self.wmean).reshape(1)])

    def __call__(self, p, x=None):
        self.calls += 1
        now = time.perf_counter()
        if now - self.last > 0.5:
            self.last = now
            self.report(stage=f"{self.basis.name} fit", nfev=self.calls)
        theta, amp = self.physical(p)
        phase = self.phase_of(theta)
        return torch.cat([self.model.beams(phase, amp), self.prior_rows(phase)])


# ---------------------------------------------------------------------- the data
def _data(obs: Observation):
    """Data in units of the in-focus peak, their sigma (given, or from the map edges) and
    the mask of the samples that count.

    Flagged samples (``BeamMap.mask``) stay on the grid, as the model is computed there,
    with the value 0 and a sigma of :data:`MASKED_SIGMA`: their weight in the likelihood
    and in the errors is ~1e-30 of a real sample's, without a second code path.
    """
    ref = obs.maps[obs.infocus_index]
    scale = float(np.max(ref.power[ref.valid]))
    if not scale > 0:
        raise ValueError(f"{ref.name or 'in-focus map'}: its maximum is {scale}; expected a "
                         "positive beam peak")
    valid = np.concatenate([m.valid for m in obs.maps])
    y = np.concatenate([m.power for m in obs.maps]) / scale
    parts = []
    for m in obs.maps:
        if m.sigma is not None:
            parts.append(m.sigma / scale)
        else:
            s = m.noise() / scale
            parts.append(np.full(m.n, s if s > 0 else 1e-6))
    sigma = np.concatenate(parts)
    if not np.all(np.isfinite(y[valid])):
        raise ValueError("some beam values are not finite; mask them before fitting")
    if np.any(~np.isfinite(sigma[valid])) or np.any(sigma[valid] <= 0):
        raise ValueError("the noise sigma of some samples is not positive and finite")
    y = np.where(valid, y, 0.0)
    sigma = np.where(valid, sigma, MASKED_SIGMA)
    return y, sigma, scale, valid


# ------------------------------------------------------------------ the solution
@dataclass(frozen=True, eq=False)
class PixelSolution:
    """The result of a pixel-basis fit (:func:`refine_pixels`, ``oof.fit_pixels``).

    Attributes
    ----------
    telescope : Telescope
    wavelength_m : float
    grid : ApertureGrid
        The cells; ``phase_rad[k]`` is the phase of cell ``grid.index[k]``.
    phase_rad, phase_err_rad : numpy.ndarray
        Per-cell phase (radians, as fitted: mean 0, tilt kept) and its 1-sigma error
        (NaN when errors were not computed).
    smoothness : float
        Weight of the first-difference prior, 1/rad^2.
    n_eff : float
        Effective number of parameters the data determine,
        ``tr((J^T W J + prior)^-1 J^T W J)`` (NaN when not computed).
    zernike : Solution
        The Zernike fit the pixel fit started from.
    fit : dict
        success, message, method, nit, nfev, time_s, chi2, ndata, n_cells, errors, ...
    result : gradfit.FitResult
    basis : {'pixels', 'panels'}
    panels : dict or None
        For the panel basis: ``layout``, ``panel`` (layout numbers of the fitted panels),
        ``piston_um`` and ``piston_err_um`` (surface pistons, as fitted: mean phase 0)
        and ``n_tilted`` (panels with tilts).
    """

    telescope: Telescope
    wavelength_m: float
    grid: ApertureGrid
    phase_rad: np.ndarray
    phase_err_rad: np.ndarray
    smoothness: float
    n_eff: float
    zernike: object
    fit: dict
    result: object = field(repr=False)
    basis: str = "pixels"
    panels: dict | None = field(default=None, repr=False)
    _model: object = field(default=None, repr=False)

    def __post_init__(self):
        for a in (self.phase_rad, self.phase_err_rad):
            a.setflags(write=False)

    @property
    def success(self) -> bool:
        return bool(self.fit["success"])

    @property
    def n_cells(self) -> int:
        return self.grid.n_pixels

    @property
    def extent_m(self) -> tuple[float, float, float, float]:
        """``(x0, x1, y0, y1)`` of the maps (metres)."""
        pr = self.telescope.primary_radius_m
        return (-pr, pr, -pr, pr)

    def _image(self, values: np.ndarray) -> np.ndarray:
        n = self.grid.n
        img = np.full(n * n, np.nan)
        img[self.grid.index] = values
        return img.reshape(n, n)

    def phase_cells(self) -> np.ndarray:
        """Per-cell phase (radians) with piston and tilt removed (least squares, weighted
        by the open fraction, as :func:`remove_piston_tilt`)."""
        g = self.grid
        return remove_piston_tilt(self.phase_rad, g.x, g.y, g.weight)

    def phase_map(self) -> np.ndarray:
        """Phase (radians) on the fit's ``n x n`` grid, ``[y, x]``, NaN outside the aperture;
        piston and tilt removed."""
        return self._image(self.phase_cells())

    def surface_map(self) -> np.ndarray:
        """Surface error (micrometres), ``phase * lambda / (4 pi)``, as :meth:`phase_map`."""
        return self.phase_map() * self.wavelength_m / (4 * math.pi) * 1e6

    def surface_error_map(self) -> np.ndarray:
        """Per-cell 1-sigma surface error (micrometres), as :meth:`surface_map`."""
        return self._image(self.phase_err_rad) * self.wavelength_m / (4 * math.pi) * 1e6

    @property
    def surface_rms_um(self) -> float:
        """Open-fraction-weighted rms surface error (piston and tilt removed), micrometres."""
        ph = self.phase_cells()
        w = self.grid.weight
        return float(np.sqrt(np.sum(w * ph**2) / np.sum(w))) * self.wavelength_m / (
            4 * math.pi) * 1e6

    def model_maps(self) -> list[np.ndarray]:
        """Model power at every observed sample, one array per map, in data units."""
        p = {"phase": self._model.tensor(self.phase_rad), "amp": self.fit["amp"]}
        with torch.no_grad(), torch_threads(1):
            flat = self._model(p).cpu().numpy() * self.fit["data_scale"]
        return np.split(flat, np.cumsum(self._model.sizes)[:-1])

    def to_dict(self) -> dict:
        """JSON-ready summary (the maps themselves are left out; see :meth:`surface_map`)."""
        err = self.phase_err_rad
        return {
            "basis": self.basis,
            "telescope": self.telescope.blockage_dict(),
            "wavelength_m": self.wavelength_m,
            "grid_cells": self.grid.n,
            "pixel_m": self.grid.step_m,
            "n_cells": self.n_cells,
            "smoothness_per_rad2": self.smoothness,
            "n_eff": self.n_eff,
            "surface_rms_um": self.surface_rms_um,
            "surface_error_median_um": (float(np.nanmedian(err)) * self.wavelength_m
                                        / (4 * math.pi) * 1e6 if np.isfinite(err).any()
                                        else None),
            "zernike_order": self.zernike.order,
            "zernike_surface_rms_um": self.zernike.surface_rms_um,
            "fit": dict(self.fit),
        }

    def __str__(self) -> str:
        f = self.fit
        if self.basis == "panels":
            what = (f"panel fit of {self.telescope.name}: {f['n_params'] - 1} panel "
                    f"parameters on {self.n_cells} cells of {self.grid.step_m:.3g} m")
            prior = "no smoothness prior"
        else:
            what = (f"pixel fit of {self.telescope.name}: {self.n_cells} cells of "
                    f"{self.grid.step_m:.3g} m")
            prior = f"smoothness {self.smoothness:g} /rad^2"
        return "\n".join([
            f"OOF {what}, {'converged' if self.success else 'FAILED'} "
            f"({f['message']}), {f['time_s']:.1f} s, method {f['method']}",
            f"{prior}, effective parameters n_eff = {self.n_eff:.0f} of "
            f"{f['n_params']}, chi2/ndata = {f['chi2'] / f['ndata']:.3f}",
            f"surface rms {self.surface_rms_um:.1f} um (Zernike order {self.zernike.order}: "
            f"{self.zernike.surface_rms_um:.1f} um); errors: {f['errors']}",
        ])


def remove_piston_tilt(values, x, y, weight=None) -> np.ndarray:
    """``values`` minus their (weighted) least-squares plane ``a + b x + c y``."""
    v = np.asarray(values, dtype=np.float64)
    A = np.stack([np.ones_like(x), x, y], axis=1)
    w = np.ones_like(v) if weight is None else np.asarray(weight, dtype=np.float64)
    sw = np.sqrt(w)
    coef = np.linalg.lstsq(A * sw[:, None], v * sw, rcond=None)[0]
    return v - A @ coef


# -------------------------------------------------------------------------- fit
def _nuisance_from(sol) -> dict:
    """Fixed nuisance values from a Zernike solution (its public ``nuisance`` summary)."""
    known = ("c_dB", "q", "x0", "y0", "pointing", "gain", "background", "background_plane")
    other = [k for k in sol.nuisance if k not in known and k != "amp"]
    if other:
        raise ValueError(f"the pixel model does not include the start's nuisance "
                         f"parameter(s) {', '.join(map(repr, other))}; it keeps fixed: "
                         f"{', '.join(known)} (and fits amp)")
    return {k: sol.nuisance[k]["value"] for k in known if k in sol.nuisance}


def refine_pixels(
    obs: Observation,
    start,
    *,
    pixel_m: float | None = None,
    grid: int | None = None,
    smoothness: float = DEFAULT_SMOOTHNESS,
    panels=None,
    method: str = "lbfgs",
    max_iter: int | None = None,
    errors: str = "none",
    error_probes: int = 16,
    n_eff_probes: int = 8,
    seed: int = 0,
    transform: str = "mft",
    progress=None,
    threads: int | None = None,
    device="cpu",
    dtype=torch.float64,
) -> PixelSolution:
    """Fit the per-cell aperture phase, starting from a Zernike solution.

    Parameters
    ----------
    obs : Observation
        Two or more maps at different defocus (any number; more maps constrain more).
    start : Solution
        The Zernike fit (:func:`gradfit.oof.fit`) whose phase starts the pixel map and
        whose illumination, pointing, gains and backgrounds are kept fixed.
    pixel_m, grid :
        Cell size in metres, or cells across the dish (default 128; see
        :func:`grid_cells`).
    smoothness : float
        Weight of the first-difference prior in 1/rad^2 (``> 0``): adds
        ``smoothness/2 * sum (phi_i - phi_j)^2`` over neighbouring cells to
        ``chi^2/2``; a prior step of ``smoothness**-0.5`` rad between neighbours.
        Not used with ``panels``.
    panels : PanelLayout or path, optional
        Fit one piston and two tilts per panel of this layout
        (:mod:`gradfit.oof.panels`, :class:`PanelBasis`) instead of one phase per cell.
    method : str
        Minimiser of :func:`gradfit.fit` (matrix-free ones only at this size). The
        default 'lbfgs' (in the scaled variables of :class:`_Posterior`) reached the
        same optimum as 'lm' (run as the matrix-free 'lm-cg') 85 times faster on 2,910
        cells and 7 maps of 65 x 65 (6.2 s against 532 s, 703 against 446 iterations
        of far costlier steps).
    max_iter : int, optional
    errors : {'none', 'hutchinson'}
        Per-cell errors of the posterior (see :func:`pixel_errors`).
    error_probes, n_eff_probes : int
        Hutchinson probes for the per-cell variances and for ``n_eff`` (0: skip).
    seed : int
        Seed of the probes.
    transform : {'mft', 'dft', 'fft'}
    progress : bool or callable, optional
    threads : int, optional
        Torch CPU threads during the fit (default 1, as :func:`gradfit.oof.fit`).
    device, dtype :

    Returns
    -------
    PixelSolution
    """
    t0 = time.perf_counter()
    if not isinstance(obs, Observation):
        raise TypeError(f"obs must be a gradfit.oof.Observation, not {type(obs).__name__}")
    if len(obs.maps) < 2 or len({round(m.dz, 12) for m in obs.maps}) < 2:
        raise ValueError("a pixel fit needs at least 2 maps at different defocus, got "
                         f"{len(obs.maps)} map(s) at dz = {[m.dz for m in obs.maps]}")
    if not hasattr(start, "K_waves") or not hasattr(start, "nuisance"):
        raise TypeError("start must be the gradfit.oof.Solution of a Zernike fit, not "
                        f"{type(start).__name__}")
    if isinstance(smoothness, bool) or not isinstance(smoothness, (int, float, np.floating)) \
            or not (smoothness > 0 and math.isfinite(smoothness)):
        raise ValueError(f"smoothness must be a positive weight in 1/rad^2, got {smoothness!r}")
    if errors not in ("none", "hutchinson"):
        raise ValueError(f"unknown errors {errors!r}; choose one of: none, hutchinson")
    for name, v in (("error_probes", error_probes), ("n_eff_probes", n_eff_probes)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 or v == 1:
            raise ValueError(f"{name} must be 0 or an integer >= 2, got {v!r}")
    layout = None
    if panels is not None:
        from .panels import PanelLayout, read_panel_layout

        layout = panels if isinstance(panels, PanelLayout) else read_panel_layout(panels)
    tel = start.telescope
    n = grid_cells(tel, pixel_m, grid)
    report = reporter(progress)
    dev = resolve_device(device)
    y, sigma, scale, valid = _data(obs)
    with torch_threads(1 if threads is None else int(threads)):
        report(stage="pixel grid", cells=n)
        model = PixelModel(obs, tel, n, illumination=start.illumination,
                           nuisance=_nuisance_from(start), transform=transform, device=dev,
                           dtype=dtype)
        g = model.grid
        K = np.asarray(start.K_waves, dtype=np.float64)
        phase0 = 2 * np.pi * (K @ g.zernike(start.order))
        phase0 = phase0 - np.sum(g.weight * phase0) / np.sum(g.weight)
        basis = None if layout is None else PanelBasis(g, layout, dev, dtype)
        post = _Posterior(model, float(smoothness) if layout is None else 0.0, report, basis)
        n_prior = post.n_pairs + 1
        y_aug = np.concatenate([y, np.zeros(n_prior)])
        s_aug = np.concatenate([sigma, np.ones(post.n_pairs), [PISTON_SIGMA_RAD]])
        amp0 = float(start.nuisance.get("amp", {}).get("value", 1.0))
        p0 = post.set_start(phase0, amp0, sigma)
        res = gradfit.fit(post, None, y_aug, params=p0,
                          likelihood=gradfit.Gaussian(sigma=s_aug), method=method,
                          max_iter=max_iter, device=dev, dtype=dtype, errors="none")
        with torch.no_grad():
            th_t, amp_t = post.physical(res.params)
            phase = post.phase_of(th_t).cpu().numpy().astype(np.float64)
        theta = th_t.cpu().numpy().astype(np.float64)
        amp = float(amp_t)
        with torch.no_grad():
            mu = model({"phase": model.tensor(phase), "amp": amp}).cpu().numpy()
        chi2 = float(np.sum((((y - mu) / sigma)[valid]) ** 2))
        err = np.full(phase.size, np.nan)
        theta_err = np.full(theta.size, np.nan)
        n_eff = math.nan
        err_info = "none"
        if errors == "hutchinson" or n_eff_probes:
            report(stage=f"{post.basis.name} errors")
            unc = pixel_uncertainty(post, theta, amp, sigma,
                                    var_probes=error_probes if errors == "hutchinson" else 0,
                                    n_eff_probes=n_eff_probes, seed=seed)
            if errors == "hutchinson":
                err = np.sqrt(unc.variance)
                theta_err = np.sqrt(unc.basis_variance)
                err_info = unc.method
            n_eff = unc.n_eff
        report(stage="done")
    fit_info = {
        "success": bool(res.success),
        "message": str(res.message),
        "method": str(res.method),
        "nit": int(res.nit),
        "nfev": int(res.nfev),
        "time_s": time.perf_counter() - t0,
        "fit_time_s": float(res.time_s),
        "chi2": chi2,
        "ndata": int(valid.sum()),
        "n_cells": int(phase.size),
        "n_params": int(theta.size) + 1,
        "n_prior_rows": int(n_prior),
        "amp": amp,
        "data_scale": scale,
        "grid_cells": int(n),
        "pixel_m": float(g.step_m),
        "transform": model.transform,
        "errors": err_info,
    }
    panel_info = None
    if layout is not None:
        b = post.basis
        P, T = b.n_pistons, b.n_tilts
        to_um = float(obs.wavelength_m) / (4 * math.pi) * 1e6
        panel_info = {"layout": layout, "panel": b.panel_ids,
                      "piston_um": theta[:P] * to_um, "piston_err_um": theta_err[:P] * to_um,
                      "n_tilted": T}
    return PixelSolution(telescope=tel, wavelength_m=float(obs.wavelength_m), grid=g,
                         phase_rad=phase, phase_err_rad=err,
                         smoothness=float(smoothness) if layout is None else 0.0,
                         n_eff=float(n_eff), zernike=start, fit=fit_info, result=res,
                         basis=post.basis.name, panels=panel_info, _model=model)


BASES = ("pixels", "panels")


def fit_basis(zernike_fit, obs, basis: str = "pixels", *, order: int = 5, telescope=None,
              pixel_m: float | None = None, grid: int | None = None,
              smoothness: float | None = None, panels=None, zernike=None,
              zernike_options: dict | None = None, **refine_options) -> PixelSolution:
    """A Zernike fit by ``zernike_fit`` (:func:`gradfit.oof.fit`), then :func:`refine_pixels`.

    ``zernike_fit`` is passed in (not imported) so that :mod:`gradfit.oof.solve` can route
    ``oof.fit(obs, basis="pixels" | "panels", ...)`` here without an import cycle. The
    Zernike fit runs on the pixel grid; ``zernike`` (a Solution) skips it. ``basis``
    'panels' needs ``panels`` (a layout or its file). Other keywords go to
    :func:`refine_pixels`.
    """
    if basis not in BASES:
        raise ValueError(f"unknown basis {basis!r}; choose one of: zernike, {', '.join(BASES)}")
    if basis == "panels" and panels is None:
        raise ValueError("basis='panels' needs panels=<PanelLayout or layout file>")
    if basis == "pixels" and panels is not None:
        raise ValueError("panels=... is for basis='panels'")
    if zernike is None:
        if telescope is None:
            telescope = getattr(obs, "telescope", None)
            if not telescope:
                raise ValueError("the observation names no telescope; pass telescope=... "
                                 "(e.g. 'effelsberg' or a Telescope)")
        tel = get_telescope(telescope)
        opts = {"grid": grid_cells(tel, pixel_m, grid)}
        for k in ("device", "dtype", "threads"):
            if k in refine_options:
                opts[k] = refine_options[k]
        opts.update(zernike_options or {})
        zernike = zernike_fit(obs, order=order, telescope=tel, **opts)
    return refine_pixels(obs, zernike, pixel_m=pixel_m, grid=grid,
                         smoothness=DEFAULT_SMOOTHNESS if smoothness is None else smoothness,
                         panels=panels, **refine_options)


# -------------------------------------------------------------------- simulation
def simulate_surface(
    telescope: Telescope | str,
    phase_fn,
    dz,
    *,
    freq_hz: float = 32e9,
    npix: int = 65,
    half_width_beams: float = 8.0,
    grid: int = 256,
    snr: float = 1e4,
    c_dB: float = -14.0,
    seed: int = 0,
    device="cpu",
    dtype=torch.float64,
) -> Observation:
    """Simulate maps of a surface given as a phase function, by the pixel forward model.

    Parameters
    ----------
    telescope : Telescope or str
    phase_fn : callable
        ``phase_fn(x, y) -> phase`` (radians) at aperture points in metres (arrays).
    dz : sequence of float
        Defocus of each map (metres); any number of maps.
    freq_hz, npix, half_width_beams :
        Frequency, samples per map side, map half width in beams of 1.22 lambda/D.
    grid : int
        Cells across the dish of the simulation grid: make it finer than the fit's so
        the fit does not see its own discretisation (the "inverse crime").
    snr : float
        In-focus peak over the noise sigma.
    c_dB : float
        Edge taper of the pedestal illumination.
    seed : int
        Seed of the noise.

    Returns
    -------
    Observation
        ``obs.truth`` holds ``dz_m``, ``c_dB``, the noise and the grid.
    """
    from .simulate import C_LIGHT

    tel = get_telescope(telescope)
    dzs = [float(d) for d in np.atleast_1d(dz)]
    if len(dzs) < 1:
        raise ValueError("dz must hold at least one defocus value")
    if not callable(phase_fn):
        raise TypeError("phase_fn must be a callable phase_fn(x, y) -> radians")
    if not snr > 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    lam = C_LIGHT / float(freq_hz)
    beam = 1.22 * lam / (2 * tel.primary_radius_m)
    axis = np.linspace(-half_width_beams * beam, half_width_beams * beam, int(npix))
    U, V = np.meshgrid(axis, axis)
    maps = [BeamMap(U.ravel(), V.ravel(), np.zeros(U.size), d, name=f"DZ {d:+g}",
                    shape=(int(npix), int(npix))) for d in dzs]
    obs = Observation(maps, lam, float(freq_hz), telescope=tel.name, layout="gradfit")
    with torch_threads(1):
        model = PixelModel(obs, tel, int(grid), nuisance={"c_dB": c_dB}, device=device,
                           dtype=dtype)
        g = model.grid
        ph = np.asarray(phase_fn(g.x, g.y), dtype=np.float64)
        if ph.shape != g.x.shape:
            raise ValueError(f"phase_fn returned shape {ph.shape} for {g.x.shape} points")
        with torch.no_grad():
            P = model({"phase": model.tensor(ph)}).cpu().numpy().reshape(len(dzs), -1)
    P = P / P[obs.infocus_index].max()
    sigma = 1.0 / float(snr)
    rng = np.random.default_rng(seed)
    for m, row in zip(maps, P):
        m.power = row + rng.normal(0.0, sigma, row.size)
        m.sigma = np.full(row.size, sigma)
    obs.truth = {"telescope": tel.name, "dz_m": dzs, "wavelength_m": lam, "grid": int(grid),
                 "illumination": {"model": "pedestal", "c_dB": float(c_dB)},
                 "noise": {"sigma": sigma, "snr": float(snr), "seed": int(seed)}}
    return obs
