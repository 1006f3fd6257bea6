"""The result of an OOF fit: Zernike coefficients with errors, maps of phase and surface."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .model import torch_threads
from .nuisance import NUISANCE
from .nuisance import illumination as illumination_taper
from .telescope import Telescope
from .zernike import aperture_basis

__all__ = ["Solution", "CONVENTION"]

CONVENTION = (
    "pyoof: phase = 2*pi*(sum_nl K_nl U_n^l(rho, theta) + delta(r; dz)/lambda), K in waves; "
    "U_n^l Born & Wolf, not normalised (R_n^m(1) = 1), cos(|l| theta) for l >= 0, "
    "sin(|l| theta) for l < 0, rho = r/pr, theta = atan2(y, x); "
    "F(u, v) = integral E(x, y) exp(-2*pi*i*(x*u + y*v)/lambda) dx dy (numpy forward-FFT sign, "
    "x along u); defocus delta = dz*[(1 - a^2)/(1 + a^2) + (1 - b^2)/(1 + b^2)], "
    "a = r/(2 Fp), b = r/(2 F_eff) (prime focus: first term only); "
    "surface = phase*lambda/(4*pi)"
)


@dataclass(frozen=True, eq=False)
class Solution:
    """The result of :func:`gradfit.oof.fit`, built once and never changed.

    Attributes
    ----------
    telescope : Telescope
    order : int
    wavelength_m, frequency_hz : float
    labels : list of (n, l)
    K_waves, K_err_waves : numpy.ndarray
        All coefficients (piston included, fixed at 0) and their 1-sigma errors, waves.
    nuisance : dict
        Name -> {"value", "error"} of the other fitted (or fixed, error 0) parameters.
    fit : dict
        success, message, method, nfev, time_s, neg_log_likelihood and details.
    result : gradfit.FitResult
        The core library's result (covariance of all free parameters).
    extra_errors : dict
        Errors beyond the Hessian: ``{"method": "profile"|"mcmc"|"none", ...}`` with
        per-coefficient values; empty for the Hessian errors.
    illumination : str
        The illumination model of the fit.
    """

    telescope: Telescope
    order: int
    wavelength_m: float
    frequency_hz: float
    labels: list
    K_waves: np.ndarray
    K_err_waves: np.ndarray
    nuisance: dict
    fit: dict
    result: object = field(repr=False)
    extra_errors: dict = field(default_factory=dict, repr=False)
    illumination: str = "pedestal"
    #: does the model describe the data (``gradfit.oof.checks.assess``): ``adequate``,
    #: ``normalised_residual``, ``limit``, ``converged``, ``per_map`` and ``causes``
    adequacy: dict = field(default_factory=dict, repr=False)
    _model: object = field(default=None, repr=False)
    _params: dict = field(default_factory=dict, repr=False)
    _scale: float = field(default=1.0, repr=False)
    # per-scan offsets of every model sample (in-focus peak units), when fitted
    _offsets: object = field(default=None, repr=False)
    # memo of the phase grids (derived values only; the solution itself never changes)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        for arr in (self.K_waves, self.K_err_waves):
            arr.setflags(write=False)

    # ----------------------------------------------------------- coefficients
    @property
    def success(self) -> bool:
        return bool(self.fit["success"])

    @property
    def zernike(self) -> list[dict]:
        """``[{n, l, value_rad, error_rad, value_waves, error_waves}, ...]``.

        After ``errors='profile'`` each entry also has ``interval_waves`` and
        ``interval_rad`` (68.27% profile-likelihood interval); after ``errors='mcmc'``,
        ``posterior_mean_waves`` and ``posterior_std_waves``.
        """
        out = []
        extra = self.extra_errors.get("per_coefficient", {})
        for i, ((n, l), k, e) in enumerate(zip(self.labels, self.K_waves, self.K_err_waves)):
            d = {"n": n, "l": l, "value_rad": 2 * math.pi * float(k),
                 "error_rad": 2 * math.pi * float(e), "value_waves": float(k),
                 "error_waves": float(e)}
            for key, vals in extra.items():
                v = vals[i]
                d[key] = v
                if key.endswith("_waves"):
                    d[key[:-6] + "_rad"] = (None if v is None else
                                            [2 * math.pi * x for x in v] if isinstance(v, list)
                                            else 2 * math.pi * v)
            out.append(d)
        return out

    def surface_error_map(self, n: int = 256) -> np.ndarray:
        """Per-pixel 1σ surface-error uncertainty (µm) on the grid of :meth:`surface_map`.

        From the posterior samples when the fit ran with ``errors='mcmc'``, else from the
        coefficient covariance (other fitted parameters marginalised); NaN after
        ``errors='none'``.
        """
        from .uncertainty import solution_error_map

        if self.extra_errors.get("method") == "none":  # fitted with errors='none'
            return np.full((n, n), np.nan)
        key = ("error", int(n))
        if key not in self._cache:  # written to a file and summarised: computed once
            samples = self.extra_errors.get("samples")
            # the covariance is the minimiser's; the reported errors may be scaled (chi2r)
            scale = 1.0 if samples is not None else float(self.fit.get("error_scale", 1.0))
            self._cache[key] = solution_error_map(self, n, samples) * scale
        return self._cache[key].copy()

    @property
    def surface_error_rms_um(self) -> float:
        """rms over the open aperture of :meth:`surface_error_map` (NaN without errors)."""
        if self.extra_errors.get("method") == "none":
            return math.nan
        m = self.surface_error_map()
        return float(np.sqrt(np.nanmean(m ** 2)))

    @property
    def extent_m(self) -> tuple[float, float, float, float]:
        """``(x0, x1, y0, y1)`` of :meth:`phase_map` and :meth:`surface_map` (metres)."""
        pr = self.telescope.primary_radius_m
        return (-pr, pr, -pr, pr)

    # ------------------------------------------------------------------ maps
    def _phase_grid(self, n: int):
        key = ("phase", int(n))
        if key not in self._cache:
            U, open_, x, y = aperture_basis(self.telescope, self.order, n)
            ph = 2 * math.pi * (self.K_waves @ U)
            # remove piston and tilt by least squares over the open aperture
            A = np.stack([np.ones_like(x), x, y], axis=1)
            ph = ph - A @ np.linalg.lstsq(A, ph, rcond=None)[0]
            img = np.full(open_.shape, np.nan)
            img[open_] = ph
            self._cache[key] = (img, open_, x, y)
        return self._cache[key]

    def phase_map(self, n: int = 256) -> np.ndarray:
        """Aperture phase (radians) on an ``n x n`` grid of cell centres over ``[-pr, pr]^2``.

        Indexed ``[y, x]``; NaN where the aperture is blocked; piston and tilt removed
        (least squares over the open aperture). The extent is :attr:`extent_m`.
        """
        return self._phase_grid(n)[0].copy()

    def surface_map(self, n: int = 256) -> np.ndarray:
        """Surface error (micrometres), ``phase * lambda / (4 pi)``, as :meth:`phase_map`."""
        return self.phase_map(n) * self.wavelength_m / (4 * math.pi) * 1e6

    def _rms(self, weighted: bool, n: int = 256) -> float:
        key = ("rms", bool(weighted), int(n))
        if key not in self._cache:  # every summary asks for it several times
            self._cache[key] = self._rms_of_grid(weighted, n)
        return self._cache[key]

    def _rms_of_grid(self, weighted: bool, n: int) -> float:
        img, open_, x, y = self._phase_grid(n)
        ph = img[open_]
        if not weighted:
            return float(np.sqrt(np.mean((ph - ph.mean()) ** 2)))
        nuis = {k: self.nuisance.get(k, {}).get("value", NUISANCE[k].default)
                for k in ("c_dB", "q", "x0", "y0")}
        r2 = ((x - nuis["x0"]) ** 2 + (y - nuis["y0"]) ** 2) / self.telescope.primary_radius_m**2
        w = illumination_taper(self.illumination, nuis["c_dB"], r2, nuis["q"])
        mean = np.sum(w * ph) / np.sum(w)
        return float(np.sqrt(np.sum(w * (ph - mean) ** 2) / np.sum(w)))

    @property
    def phase_rms_rad(self) -> float:
        """Unweighted rms of the aperture phase (piston and tilt removed), radians."""
        return self._rms(False)

    @property
    def phase_rms_weighted_rad(self) -> float:
        """Illumination-weighted rms of the aperture phase (piston and tilt removed)."""
        return self._rms(True)

    @property
    def surface_rms_um(self) -> float:
        """Unweighted rms surface error over the open aperture (micrometres)."""
        return self.phase_rms_rad * self.wavelength_m / (4 * math.pi) * 1e6

    @property
    def surface_rms_weighted_um(self) -> float:
        """Illumination-weighted rms surface error (micrometres)."""
        return self.phase_rms_weighted_rad * self.wavelength_m / (4 * math.pi) * 1e6

    @property
    def ruze_efficiency(self) -> float:
        """Ruze aperture efficiency ``exp(-sigma^2)``, sigma the weighted phase rms."""
        return math.exp(-self.phase_rms_weighted_rad**2)

    def model_maps(self) -> list[np.ndarray]:
        """Model power at every observed sample, one 1-D array per map, in data units.

        The full model: ``amp * gain_b * P_b(K, pointing_b) + background_b``, so that
        ``map.power - model`` is the residual (masked samples included: the model is
        defined there too).
        """
        with torch.no_grad(), torch_threads(1):
            flat = self._model(self._params).cpu().numpy()
        if self._offsets is not None:
            flat = flat + self._offsets
        flat = flat * self._scale
        return np.split(flat, np.cumsum(self._model.sizes)[:-1])

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict:
        """JSON-ready summary (plain Python values)."""
        return {
            "telescope": self.telescope.blockage_dict(),
            "wavelength_m": self.wavelength_m,
            "frequency_hz": self.frequency_hz,
            "order": self.order,
            "zernike": self.zernike,
            "nuisance": {k: dict(v) for k, v in self.nuisance.items()},
            "fit": dict(self.fit),
            "surface_rms_um": self.surface_rms_um,
            "surface_rms_weighted_um": self.surface_rms_weighted_um,
            "phase_rms_rad": self.phase_rms_rad,
            "phase_rms_weighted_rad": self.phase_rms_weighted_rad,
            "ruze_efficiency": self.ruze_efficiency,
            "surface_error_rms_um": self.surface_error_rms_um,
            "errors": {k: v for k, v in self.extra_errors.items()
                       if k not in ("samples", "per_coefficient")} or {"method": "hessian"},
            "convention": CONVENTION,
            "adequacy": dict(self.adequacy),
        }

    def __str__(self) -> str:
        fit = self.fit
        lines = [
            f"OOF fit of {self.telescope.name} at {self.frequency_hz / 1e9:.4g} GHz, "
            f"order {self.order}: {'converged' if self.success else 'FAILED'} "
            f"({fit['message']}), {fit['time_s']:.2f} s",
        ]
        sel = fit.get("order_selection")
        if sel:
            lines += ["order selection (BIC):", sel["table"], f"picked: {sel['reason']}"]
        method = self.extra_errors.get("method")
        resampled = method in ("jackknife", "bootstrap")
        head = f"{'n':>3} {'l':>3} {'K (waves)':>12} {'error':>9}"
        lines.append(head + (f" {method:>10}" if resampled else ""))
        col = self.extra_errors.get("per_coefficient", {}).get(f"{method}_error_waves")
        for i, ((n, l), k, e) in enumerate(zip(self.labels, self.K_waves, self.K_err_waves)):
            row = f"{n:>3} {l:>3} {k:>+12.5f} {e:>9.5f}"
            if resampled and col is not None:
                row += f" {col[i]:>10.5f}" if col[i] is not None else f" {'':>10}"
            lines.append(row)
        jk = self.extra_errors.get("nuisance", {}) if resampled else {}
        free = fit.get("free")
        for name, v in self.nuisance.items():
            if name == "scan_offset":
                val, err = np.asarray(v["value"]), np.asarray(v["error"])
                lines.append(f"scan_offset: {val.shape[1]} scans per map (first fixed), rms "
                             f"{np.round(np.sqrt(np.mean(val**2, axis=1)), 5).tolist()} +- "
                             f"{np.round(np.median(err[:, 1:], axis=1), 5).tolist()} "
                             "in-focus peak")
                continue
            unit = f" {NUISANCE[name].unit}" if name in NUISANCE and NUISANCE[name].unit else ""
            fixed = " (fixed)" if free is not None and name not in free else ""
            line = (f"{name} = {np.round(v['value'], 5).tolist()} +- "
                    f"{np.round(v['error'], 5).tolist()}{unit}{fixed}")
            if name in jk:
                line += f" ({method} +- {np.round(jk[name], 5).tolist()})"
            lines.append(line)
        if "chi2r" in fit:
            lines.append(f"noise sigma {fit.get('sigma_value', float('nan')):.4g} (data units; "
                         f"{fit['sigma']}); chi2r {fit['chi2r']:.3f} over {fit['ndata']} samples"
                         f" ({fit.get('n_masked', 0)} masked)")
            for m in fit.get("maps", []):
                lines.append(f"  map {m['name']}: chi2r {m['chi2r']:.3f}, rms(data - model)/peak "
                             f"{m['rms_residual_over_peak']:.4f}, {m['n']} samples"
                             + (f", {m['n_masked']} masked" if m.get("n_masked") else ""))
        if fit.get("error_note"):
            lines.append(f"errors: {fit['error_note']}")
        log = fit.get("start_log") or []
        if len(log) > 1:
            stop = next((r["stop"] for r in log if r.get("stop")), "all starts run")
            lines.append(f"starts: {len(log)} (-log L " + ", ".join(
                f"{r['neg_log_likelihood']:.2f}" for r in log) + f"); {stop}")
        lines.append(f"surface rms {self.surface_rms_um:.1f} um (weighted "
                     f"{self.surface_rms_weighted_um:.1f} um), Ruze efficiency "
                     f"{self.ruze_efficiency:.3f}")
        a = self.adequacy
        if a:
            x, lim = a.get("normalised_residual", float("nan")), a.get("limit", float("nan"))
            if a.get("adequate"):
                lines.append(f"model adequate: normalised residual {x:.3g} (limit {lim:g})")
            else:
                lines.append(f"MODEL DOES NOT DESCRIBE THE DATA: normalised residual {x:.3g} "
                             f"(limit {lim:g}); likely causes: "
                             + ("; ".join(a.get("causes", [])) or "not identified"))
        return "\n".join(lines)


