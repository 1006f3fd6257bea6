"""Simulated OOF observations with known truth, from gradfit's own forward model."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .model import ILLUMINATIONS, BeamModel, torch_threads
from .observation import BeamMap, Observation
from .telescope import Telescope, get_telescope
from .zernike import zernike_count, zernike_labels

__all__ = ["simulate", "simulate_noise", "C_LIGHT", "phase_rms_notilt", "defocus_values",
           "true_coefficients"]


def defocus_values(dz) -> list[float]:
    """A number d as the maps' defocus ``[-d, 0, +d]`` (metres), or the given values."""
    dzs = [-float(dz), 0.0, float(dz)] if np.ndim(dz) == 0 else [float(d) for d in dz]
    if not dzs:
        raise ValueError("dz must be a number or a non-empty sequence of defocus values")
    return dzs


def true_coefficients(rng, order: int, rms_waves: float, K_waves=None) -> np.ndarray:
    """A simulation's Zernike coefficients (waves, piston 0): ``K_waves`` checked for
    its length, or drawn from ``rng`` with ``rms_waves`` each."""
    nk = zernike_count(order)
    if K_waves is None:
        K = rng.normal(0.0, rms_waves, nk)
    else:
        K = np.array(K_waves, dtype=np.float64).ravel()
        if K.size != nk:
            raise ValueError(f"K_waves has {K.size} values; order {order} needs {nk}")
    K[0] = 0.0
    return K

C_LIGHT = 299_792_458.0
MAP_NAMES = {-1: "MINUS OOF", 0: "ZERO OOF", 1: "PLUS OOF"}


def phase_rms_notilt(K_waves, order: int, npix: int = 512) -> float:
    """rms (radians) of ``2 pi sum K U`` over the unit disc, piston and tilt removed.

    Parameters
    ----------
    K_waves : array_like
        Coefficients in waves, in :func:`~gradfit.oof.zernike.zernike_labels` order.
    order : int
    npix : int
        Grid points across the disc.
    """
    from .zernike import zernike_basis

    K = np.array(K_waves, dtype=np.float64)
    labels = zernike_labels(order)
    if K.size != len(labels):
        raise ValueError(f"K has {K.size} values; order {order} needs {len(labels)}")
    for i, (n, _) in enumerate(labels):
        if n <= 1:
            K[i] = 0.0
    ax = np.linspace(-1, 1, npix)
    X, Y = np.meshgrid(ax, ax)
    inside = X**2 + Y**2 <= 1
    U = zernike_basis(order, np.hypot(X[inside], Y[inside]), np.arctan2(Y[inside], X[inside]))
    ph = 2 * np.pi * (K @ U.numpy())
    return float(np.std(ph))


def simulate(
    telescope: str | Telescope = "effelsberg",
    order: int = 5,
    snr: float = 1000.0,
    npix: int = 33,
    freq_hz: float = 32e9,
    dz=0.022,
    rms_waves: float = 0.1,
    seed: int = 0,
    c_dB: float = -14.0,
    *,
    q: float = 2.0,
    x0: float = 0.0,
    y0: float = 0.0,
    illumination: str = "pedestal",
    K_waves=None,
    half_width_beams: float = 8.0,
    grid: int = 256,
    with_sigma: bool = True,
    device="cpu",
    dtype=torch.float64,
) -> Observation:
    """Simulate an OOF observation: beam maps at ``-dz, 0, +dz`` with Gaussian noise.

    The beams come from :class:`~gradfit.oof.model.BeamModel` on a fine aperture grid,
    sampled on a regular ``npix x npix`` grid of sky offsets (u varying fastest),
    normalised so that the noiseless in-focus map peaks at 1, plus i.i.d. noise of
    ``sigma = 1/snr``. Conventions are pyoof's (see ``tests/data/oof-pyoof/README.md``).

    Parameters
    ----------
    telescope : str or Telescope
    order : int
        Zernike order of the true phase.
    snr : float
        In-focus peak over noise sigma.
    npix : int
        Samples per map side.
    freq_hz : float
        Observing frequency.
    dz : float or sequence of float
        Defocus (metres): a number ``d`` gives the three maps ``-d, 0, +d``.
    rms_waves : float
        Standard deviation of each true coefficient (waves); K(0,0) is 0.
    seed : int
        Seed of ``numpy.random.default_rng``: first K, then the noise.
    c_dB, q, x0, y0, illumination :
        True illumination (edge taper in dB, pedestal exponent, offsets in metres).
        The default taper, -14 dB, is that of the pyoof reference data; a fit starts
        from ``gradfit.oof.nuisance.NUISANCE["c_dB"].default`` (-12 dB), so that a
        simulation does not hand the fit its own truth.
    K_waves : array_like, optional
        Explicit true coefficients (waves), overriding the random ones.
    half_width_beams : float
        Map half width in beam widths of ``1.22 lambda / D``.
    grid : int
        Aperture cells across the dish for the simulation (finer than a fit needs).
    with_sigma : bool
        Store the known per-point sigma in the maps (else the fit estimates it).
    device, dtype :
        Where the forward model runs.

    Returns
    -------
    Observation
        With ``layout='gradfit'`` and the truth in ``obs.truth``.
    """
    tel = get_telescope(telescope)
    if illumination not in ILLUMINATIONS:
        raise ValueError(
            f"unknown illumination {illumination!r}; choose one of: {', '.join(ILLUMINATIONS)}"
        )
    if not snr > 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    if int(npix) != npix or npix < 3:
        raise ValueError(f"npix must be an integer >= 3, got {npix}")
    if not freq_hz > 0:
        raise ValueError(f"freq_hz must be > 0, got {freq_hz}")
    npix = int(npix)
    dzs = defocus_values(dz)
    rng = np.random.default_rng(seed)
    K = true_coefficients(rng, order, rms_waves, K_waves)
    lam = C_LIGHT / float(freq_hz)
    beam = 1.22 * lam / (2 * tel.primary_radius_m)
    axis = np.linspace(-half_width_beams * beam, half_width_beams * beam, npix)
    U, V = np.meshgrid(axis, axis)
    names = [MAP_NAMES.get(int(np.sign(d)), f"DZ {d:+g}") for d in dzs]
    if len(dzs) != 3:
        names = [f"DZ {d:+g}" for d in dzs]
    maps = [
        BeamMap(U.ravel(), V.ravel(), np.zeros(U.size), d, name=nm, shape=(npix, npix))
        for d, nm in zip(dzs, names)
    ]
    obs = Observation(maps, lam, float(freq_hz), telescope=tel.name, layout="gradfit")
    with torch_threads(1):
        model = BeamModel(obs, tel, order, grid, illumination=illumination, device=device,
                          dtype=dtype)
        p = {"K": K[1:], "c_dB": c_dB, "q": q, "x0": x0, "y0": y0}
        with torch.no_grad():
            P = model(p).cpu().numpy().reshape(len(dzs), -1)
        rms_notilt = phase_rms_notilt(K, order)
    ref = obs.infocus_index
    peak = float(P[ref].max())
    P = P / peak
    sigma = 1.0 / float(snr)
    noisy = P + rng.normal(0.0, sigma, P.shape)
    for m, row in zip(maps, noisy):
        m.power = row.copy()
        if with_sigma:
            m.sigma = np.full(row.size, sigma)
    obs.truth = {
        "telescope": tel.name,
        "order": int(order),
        "zernike": [
            {"n": n, "l": l, "K_waves": float(k)} for (n, l), k in zip(zernike_labels(order), K)
        ],
        "K_waves": K.tolist(),
        "illumination": {"model": illumination, "i_amp": 1.0, "c_dB": float(c_dB),
                         "q": float(q), "x0_m": float(x0), "y0_m": float(y0)},
        "noise": {"sigma": sigma, "snr": float(snr), "seed": int(seed)},
        "dz_m": dzs,
        "wavelength_m": lam,
        "grid": int(grid),
        "power_noiseless": P.tolist(),
        "phase_rms_rad_notilt": rms_notilt,
    }
    obs.meta = {"OBJECT": "simulated point source", "TELESCOP": tel.name, "SEED": int(seed),
                "SNR": float(snr), "NOISE": sigma}
    return obs


def simulate_noise(telescope: str | Telescope = "effelsberg", order: int = 5, npix: int = 33,
                   seed: int = 0, **kwargs) -> Observation:
    """Maps of unit Gaussian noise and no beam (sigma 1 stored), on the geometry of
    :func:`simulate` with the same arguments: the pure-noise case of the checks that a
    fit of no signal is not called a success. The noise is drawn from
    ``numpy.random.default_rng(seed + 1000)``; ``obs.truth`` is None."""
    obs = simulate(telescope, order=order, snr=1.0, npix=npix, seed=seed, **kwargs)
    rng = np.random.default_rng(seed + 1000)
    maps = [dataclasses.replace(m, power=rng.normal(0.0, 1.0, m.n), sigma=np.ones(m.n))
            for m in obs.maps]
    return dataclasses.replace(obs, maps=maps, truth=None)
