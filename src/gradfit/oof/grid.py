"""The aperture grid size for a fit, from a convergence test above the model.

The model takes a grid; this module chooses it, by comparing the model's beams on
grids of ``n`` and ``2 n`` cells at the observation's own sample points.
"""

from __future__ import annotations

import numpy as np
import torch

from .model import BeamModel, torch_threads
from .nuisance import NUISANCE
from .telescope import Telescope, get_telescope
from .zernike import zernike_count

__all__ = ["choose_grid_size", "GRID_LADDER"]

#: edge taper of the test aperture: the fit's default
C_DB = NUISANCE["c_dB"].default
#: grid sizes (cells across the diameter) tried by :func:`choose_grid_size`
GRID_LADDER = (64, 96, 128, 192, 256, 384, 512)

_GRID_CHOICE: dict = {}


def choose_grid_size(
    obs,
    telescope: Telescope | str,
    sigma: float,
    *,
    tol_rms: float = 0.1,
    tol_max: float = 1.0,
    order: int = 5,
    illumination: str = "pedestal",
    ladder=GRID_LADDER,
    return_history: bool = False,
):
    """Pick the aperture grid from a convergence test on the observation's sample points.

    For each ``n`` of ``ladder`` the noiseless beams of all maps are computed with
    grids of ``n`` and ``2 n`` cells, at a test aperture (c_dB = -12, a fixed random
    phase of 0.1 waves rms per coefficient up to ``order``, the observation's own
    defocus values and sample points). The common amplitude is profiled out (it is
    always fitted). The first ``n`` whose change, in units of the peak in-focus
    power, has an rms below ``tol_rms * sigma`` and a maximum below
    ``tol_max * sigma`` is returned; the answer is cached.

    Parameters
    ----------
    obs : Observation
    telescope : Telescope or str
    sigma : float
        Noise level relative to the in-focus peak; it sets the tolerance.
    tol_rms, tol_max : float
        Allowed rms and maximum change between ``n`` and ``2 n``, in units of ``sigma``.
    order : int
        Zernike order of the test phase.
    illumination : str
        Illumination model of the test aperture.
    ladder : sequence of int
        Candidate grid sizes, increasing.
    return_history : bool
        Also return ``[(n, rms_change / sigma, max_change / sigma), ...]``.

    Returns
    -------
    int, or (int, list) with ``return_history``.
    """
    if not sigma > 0:
        raise ValueError(f"choose_grid_size needs a noise level sigma > 0, got {sigma}")
    tel = get_telescope(telescope)
    geom = tuple(
        (round(m.dz, 9), m.u.size, float(m.u.min()), float(m.u.max()),
         float(m.v.min()), float(m.v.max()), m.shape)
        for m in obs.maps
    )
    key = (tel, round(obs.wavelength_m, 12), geom, float(f"{sigma:.3g}"), tol_rms, tol_max,
           order, illumination, tuple(ladder))
    if key in _GRID_CHOICE:
        n, hist = _GRID_CHOICE[key]
        return (n, list(hist)) if return_history else n

    rng = np.random.default_rng(12345)
    K = rng.normal(0.0, 0.1, zernike_count(order))
    K[0] = 0.0
    ref = obs.infocus_index
    beams = {}

    def flat_beams(n):
        if n not in beams:
            m = BeamModel(obs, tel, order=order, grid=n, illumination=illumination)
            with torch.no_grad():
                beams[n] = m({"K": K[1:], "c_dB": C_DB}).cpu().numpy()
        return beams[n]

    sizes = np.cumsum([0] + [m.n for m in obs.maps])
    hist = []
    chosen = None
    with torch_threads(1):
        chosen = _climb(ladder, flat_beams, sizes, ref, sigma, tol_rms, tol_max, hist)
    if chosen is None:
        chosen = 2 * ladder[-1]
    _GRID_CHOICE[key] = (chosen, tuple(hist))
    return (chosen, hist) if return_history else chosen


def _climb(ladder, flat_beams, sizes, ref, sigma, tol_rms, tol_max, hist):
    for n in ladder:
        a, b = flat_beams(n), flat_beams(2 * n)
        scale = float(np.max(b[sizes[ref]:sizes[ref + 1]]))
        amp = float(a @ b) / float(a @ a)  # the fitted amplitude absorbs a common scale
        d = (amp * a - b) / scale
        rms, mx = float(np.sqrt(np.mean(d * d))), float(np.max(np.abs(d)))
        hist.append((n, rms / sigma, mx / sigma))
        if rms < tol_rms * sigma and mx < tol_max * sigma:
            return n
    return None
