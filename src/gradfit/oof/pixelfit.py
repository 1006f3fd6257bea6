"""``oof.fit_pixels``: a Zernike fit, then the per-cell (or per-panel) phase from it.

The model, its prior and its errors are in :mod:`gradfit.oof.pixels` and
:mod:`gradfit.oof.pixel_errors`; this module only hands :func:`gradfit.oof.fit` to
:func:`~gradfit.oof.pixels.fit_basis` (``pixels`` does not import ``solve``, so that
``solve`` can route ``oof.fit(obs, basis="pixels")`` to it without a cycle).
"""

from __future__ import annotations

import torch

from .pixels import DEFAULT_SMOOTHNESS, PixelSolution, fit_basis
from .solve import fit

__all__ = ["fit_pixels"]


def fit_pixels(
    obs,
    *,
    telescope=None,
    pixel_m: float | None = None,
    grid: int | None = None,
    smoothness: float = DEFAULT_SMOOTHNESS,
    panels=None,
    order: int = 5,
    zernike=None,
    zernike_options: dict | None = None,
    method: str = "lbfgs",
    max_iter: int | None = None,
    errors: str = "hutchinson",
    error_probes: int = 16,
    n_eff_probes: int = 16,
    seed: int = 0,
    progress=None,
    threads: int | None = None,
    device="cpu",
    dtype=torch.float64,
) -> PixelSolution:
    """Fit the aperture phase on a grid of cells (pixel basis, MAP with a smoothness prior).

    First a Zernike fit of ``order`` (:func:`gradfit.oof.fit`, on the same aperture
    grid) gives the large-scale phase and the nuisance parameters; then every cell's
    phase is fitted from there (:func:`gradfit.oof.pixels.refine_pixels`).

    Parameters
    ----------
    obs : Observation
        Any number (>= 2) of maps at different defocus; panel-scale detail needs maps
        wide enough to sample it (half width >~ lambda / (2 pixel_m)) and many defocus
        settings.
    telescope : str or Telescope, optional
        Defaults to ``obs.telescope``.
    pixel_m, grid :
        Cell size (metres) or cells across the dish (default 128).
    smoothness : float
        Weight (1/rad^2) of the first-difference prior ``smoothness/2 sum (phi_i - phi_j)^2``
        over neighbouring cells; a prior step of ``smoothness**-0.5`` rad per cell.
    panels : PanelLayout or path, optional
        Fit one piston and two tilts per panel of this layout instead of one phase
        per cell (:mod:`gradfit.oof.panels`; ``smoothness`` is then not used).
    order : int
        Zernike order of the starting fit.
    zernike : Solution, optional
        A Zernike solution to start from instead (``order`` is then ignored).
    zernike_options : dict, optional
        More keyword arguments of :func:`gradfit.oof.fit` (e.g. ``free``).
    method, max_iter :
        Minimiser of the pixel fit (:func:`gradfit.fit`; matrix-free ones only).
    errors : {'hutchinson', 'none'}
        Per-cell errors from Hutchinson probes of the posterior covariance
        (:mod:`gradfit.oof.pixel_errors`).
    error_probes, n_eff_probes : int
        Probes for the per-cell variances and for the effective number of parameters
        (the same CG solves serve both; 0 skips).
    seed, progress, threads, device, dtype :
        As for :func:`gradfit.oof.fit`.

    Returns
    -------
    PixelSolution
    """
    return fit_basis(fit, obs, "pixels" if panels is None else "panels", order=order,
                     telescope=telescope, pixel_m=pixel_m, grid=grid, smoothness=smoothness,
                     panels=panels, zernike=zernike, zernike_options=zernike_options,
                     method=method, max_iter=max_iter, errors=errors,
                     error_probes=error_probes, n_eff_probes=n_eff_probes, seed=seed,
                     progress=progress, threads=threads, device=device, dtype=dtype)
