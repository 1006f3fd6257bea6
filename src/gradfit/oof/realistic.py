"""Simulated OOF observations that look like real ones, with a known truth.

:func:`simulate_realistic` starts from :func:`gradfit.oof.simulate` (the noiseless beams
of gradfit's own model) and adds what real maps carry, each effect switchable:

- a background per map, 3-8% of the peak (a constant, optionally a plane);
- a gain per map, +-3% relative to the in-focus map;
- a pointing drift of 0.3 lambda/D between maps (an aperture phase tilt: the same as the
  fit's ``pointing`` parameter, in lambda/D);
- noise on a raster of scans, correlated along each scan (AR(1), lag-1 0.75), with an
  offset per scan (0.5 sigma);
- one flagged sample per map (NaN, or an exact zero as raw counts have);
- beams made with a Gaussian illumination taper, which a fit models with its pedestal.

The data are in "counts" (``peak`` at the in-focus beam's peak). It returns the
:class:`~gradfit.oof.observation.Observation` (flagged samples masked, as the text reader
would) and a truth dict; with ``text_dir`` it also writes one text map per file, in scan
order, to exercise :func:`gradfit.oof.textio.read_text`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from gradfit.oof.simulate import defocus_values, simulate, true_coefficients
from gradfit.oof.telescope import get_telescope
from gradfit.oof.textio import from_arrays, write_text
from gradfit.oof.zernike import zernike_labels

__all__ = ["simulate_realistic", "ar1_scan_noise"]


def ar1_scan_noise(rng, n_scans: int, n_along: int, sigma: float, lag1: float,
                   offset_sd: float = 0.0, lag1_across: float = 0.0) -> np.ndarray:
    """Noise of a raster: ``(n_scans, n_along)``, AR(1) along each scan, offsets per scan.

    Each scan is a stationary AR(1) series of marginal standard deviation ``sigma`` and
    lag-1 correlation ``lag1``; neighbouring scans are correlated by ``lag1_across`` at
    the same position (a separable field); each scan gets its own offset drawn from
    ``N(0, offset_sd^2)``.
    """
    if not -1 < lag1 < 1 or not -1 < lag1_across < 1:
        raise ValueError(f"lag1 and lag1_across must be in (-1, 1), got {lag1}, {lag1_across}")
    z = rng.standard_normal((n_scans, n_along))
    if lag1_across:
        w = np.empty_like(z)
        w[0] = z[0]
        c = math.sqrt(1 - lag1_across**2)
        for i in range(1, n_scans):
            w[i] = lag1_across * w[i - 1] + c * z[i]
        z = w
    x = np.empty_like(z)
    x[:, 0] = z[:, 0]
    c = math.sqrt(1 - lag1**2)
    for j in range(1, n_along):
        x[:, j] = lag1 * x[:, j - 1] + c * z[:, j]
    return sigma * x + offset_sd * rng.standard_normal((n_scans, 1))


def simulate_realistic(
    telescope="srt",
    order: int = 4,
    *,
    npix: int = 41,
    freq_hz: float = 22.23e9,
    dz=0.027,
    rms_waves: float = 0.1,
    seed: int = 0,
    peak: float = 1000.0,
    snr: float = 200.0,
    background=(0.03, 0.08),
    background_plane: float = 0.0,
    gain: float = 0.03,
    drift: float = 0.3,
    scan_axis: str = "u",
    scan_lag1: float = 0.75,
    scan_lag1_across: float = 0.0,
    scan_offset: float = 0.5,
    flags: int = 1,
    flag_value: str = "nan",
    illumination: str = "gaussian",
    c_dB: float = -12.0,
    K_waves=None,
    grid: int = 128,
    half_width_beams: float = 8.0,
    text_dir=None,
    text_units: str = "arcsec",
):
    """A simulated observation with the effects of real maps, and its truth.

    Parameters
    ----------
    telescope, order, npix, freq_hz, dz, rms_waves, grid, half_width_beams :
        As in :func:`gradfit.oof.simulate` (``dz``: a number d for -d, 0, +d, or a list).
    seed : int
        Seeds everything (coefficients, effects, noise).
    peak : float
        In-focus peak of the beam in data units ("counts").
    snr : float
        ``peak / sigma``, sigma being the standard deviation of the along-scan noise.
    background : (float, float) or None
        Each map's constant background is drawn uniformly from this range, as a
        fraction of ``peak``; None for none.
    background_plane : float
        Each map's background also gets a plane rising by up to this fraction of the
        peak from the map centre to its edge along u and along v (0: constant).
    gain : float
        Gains of the maps other than the in-focus one drawn uniformly from
        ``1 +- gain`` (0: all 1).
    drift : float
        Pointing offset of each other map relative to the in-focus one, in lambda/D, in
        a random direction (0: none).
    scan_axis : {'u', 'v'}
        Direction of the scans of the raster.
    scan_lag1, scan_lag1_across : float
        Lag-1 correlation of the noise along the scans, and between neighbouring scans.
    scan_offset : float
        Standard deviation of the per-scan offsets, in units of sigma.
    flags : int
        Flagged samples per map (0: none).
    flag_value : {'nan', 'zero'}
        How a flagged sample looks in the data.
    illumination, c_dB :
        Illumination the beams are made with (default: a Gaussian taper of -12 dB, which
        the usual pedestal fit cannot reproduce exactly).
    K_waves : array_like, optional
        True coefficients (waves); default drawn with ``rms_waves``.
    text_dir : str or path-like, optional
        If given, write one text map per file there (``map{k}.txt``, in scan order, with
        the flagged samples) and put the paths in ``truth['text_files']``.
    text_units : str
        Coordinate unit of the text files.

    Returns
    -------
    obs : Observation
        Flagged samples masked (``BeamMap.mask``; the maps keep their grid and
        ``shape``, NaN at the flags); ``layout='gradfit'``; maps named as
        :func:`~gradfit.oof.simulate` names them.
    truth : dict
        ``K_waves``, ``zernike``, ``order``, ``telescope``, ``illumination``,
        ``gain``, ``background`` (data units), ``background_fraction``,
        ``background_plane`` (per map: slope along u and v, data units per map
        half-width), ``pointing_lambda_over_D`` (per map, the fit's convention),
        ``pointing_rad``, ``noise`` (sigma, lag1 along and across, scan offset sd,
        scan axis), ``flagged`` (per map, indices in the u-fastest grid), ``scans``
        (per map, the scan number of each sample), ``model`` (per map, the
        noiseless data with every effect, at every sample of the grid), ``dz_m``,
        ``wavelength_m``, ``peak``, ``seed`` and, with ``text_dir``, ``text_files``.
    """
    tel = get_telescope(telescope)
    if scan_axis not in ("u", "v"):
        raise ValueError(f"scan_axis must be 'u' or 'v', got {scan_axis!r}")
    if flag_value not in ("nan", "zero"):
        raise ValueError(f"flag_value must be 'nan' or 'zero', got {flag_value!r}")
    if not snr > 0 or not peak > 0:
        raise ValueError(f"snr and peak must be > 0, got {snr}, {peak}")
    for name, value in (("gain", gain), ("drift", drift), ("scan_offset", scan_offset),
                        ("background_plane", background_plane)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be >= 0, got {value}")
    if int(flags) != flags or flags < 0:
        raise ValueError(f"flags must be an integer >= 0, got {flags}")
    rng = np.random.default_rng(seed)
    K = true_coefficients(rng, order, rms_waves, K_waves)
    dzs = defocus_values(dz)
    ref = int(np.argmin(np.abs(dzs)))
    if dzs[ref] != 0.0:
        raise ValueError(f"dz needs an in-focus map (0) for the gains and drift; got {dzs}")
    common = dict(order=order, snr=1e15, npix=npix, freq_hz=freq_hz, grid=grid,
                  half_width_beams=half_width_beams, illumination=illumination, c_dB=c_dB,
                  with_sigma=False, seed=seed)
    # noiseless beams (snr 1e15: noise 1e-15 of the peak, far below every effect here)
    base = simulate(tel, K_waves=K, dz=dzs, **common)
    lam = base.wavelength_m
    beams = [m.power.copy() for m in base.maps]
    s_ref = float(beams[ref].sum())
    labels = zernike_labels(order)
    i_u, i_v = labels.index((1, 1)), labels.index((1, -1))
    pointing = np.zeros((len(dzs), 2))
    for k, d in enumerate(dzs):
        if k == ref or drift == 0:
            continue
        angle = rng.uniform(0, 2 * math.pi)
        pointing[k] = drift * math.cos(angle), drift * math.sin(angle)
        Kk = K.copy()
        # a pointing offset (pu, pv) lambda/D is the aperture phase 2 pi (pu x + pv y)/D,
        # i.e. K(1, 1) += pu / 2 and K(1, -1) += pv / 2 (U(1, 1) = x / r_primary)
        Kk[i_u] += pointing[k, 0] / 2
        Kk[i_v] += pointing[k, 1] / 2
        tilted = simulate(tel, K_waves=Kk, dz=[0.0, d], **common)
        # simulate scales each call to its own sampled in-focus peak, which moves with the
        # beam; the sum of a beam sampled finer than lambda/D does not (Poisson summation),
        # so rescale to the untilted in-focus sum
        scale = s_ref / float(tilted.maps[0].power.sum())
        beams[k] = tilted.maps[1].power * scale

    shape = base.maps[0].shape
    n_v, n_u = shape
    u, v = base.maps[0].u, base.maps[0].v
    half = max(float(np.max(np.abs(u))), float(np.max(np.abs(v))))
    sigma = peak / snr
    gains, backs, back_frac, planes, models, datas, scans, flagged = [], [], [], [], [], [], [], []
    for k in range(len(dzs)):
        g = 1.0 if (k == ref or gain == 0) else 1.0 + rng.uniform(-gain, gain)
        frac = 0.0 if background is None else rng.uniform(*background)
        plane = (rng.uniform(-background_plane, background_plane, 2) * peak
                 if background_plane else np.zeros(2))
        model = peak * g * beams[k] + frac * peak + (plane[0] * u + plane[1] * v) / half
        if scan_axis == "u":  # scans are rows (fixed v): u-fastest order is scan order
            noise = ar1_scan_noise(rng, n_v, n_u, sigma, scan_lag1, scan_offset * sigma,
                                   scan_lag1_across).ravel()
            scan = np.repeat(np.arange(n_v), n_u)
        else:  # scans are columns (fixed u)
            noise = ar1_scan_noise(rng, n_u, n_v, sigma, scan_lag1, scan_offset * sigma,
                                   scan_lag1_across).T.ravel()
            scan = np.tile(np.arange(n_u), n_v)
        data = model + noise
        bad = np.sort(rng.choice(data.size, size=int(flags), replace=False))
        data[bad] = np.nan if flag_value == "nan" else 0.0
        gains.append(g)
        backs.append(frac * peak)
        back_frac.append(frac)
        planes.append(plane.tolist())
        models.append(model)
        datas.append(data)
        scans.append(scan)
        flagged.append(bad.tolist())

    names = [m.name for m in base.maps]
    with warnings.catch_warnings():
        # the flags are deliberate and recorded in the truth
        warnings.filterwarnings("ignore", message=".*masked .* flagged sample")
        obs = from_arrays([u] * len(dzs), [v] * len(dzs), datas, dzs, wavelength=lam,
                          telescope=tel, names=names, zero_is_flag=(flag_value == "zero"),
                          layout="gradfit", sources=names)
    truth = {
        "telescope": tel.name,
        "order": int(order),
        "K_waves": K.tolist(),
        "zernike": [{"n": n, "l": l, "K_waves": float(c)} for (n, l), c in zip(labels, K)],
        "illumination": {"model": illumination, "c_dB": float(c_dB)},
        "gain": gains,
        "background": backs,
        "background_fraction": back_frac,
        "background_plane": planes,
        "pointing_lambda_over_D": pointing.tolist(),
        "pointing_rad": (pointing * lam / (2 * tel.primary_radius_m)).tolist(),
        "noise": {"sigma": sigma, "lag1_along": float(scan_lag1),
                  "lag1_across": float(scan_lag1_across), "scan_offset_sd": scan_offset * sigma,
                  "scan_axis": scan_axis, "snr": float(snr)},
        "flagged": flagged,
        # on every sample of the grid, masked ones included, as the maps hold them
        "scans": scans,
        "model": models,
        "dz_m": dzs,
        "wavelength_m": lam,
        "peak": float(peak),
        "seed": int(seed),
    }
    obs.truth = {k: v for k, v in truth.items() if k not in ("scans", "model")}
    obs.meta.update({"OBJECT": "simulated realistic observation", "SEED": int(seed),
                     "scan_axis": [scan_axis] * len(dzs)})
    if text_dir is not None:
        folder = Path(text_dir)
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for k, data in enumerate(datas):
            order_ = (np.arange(data.size) if scan_axis == "u"
                      else np.arange(data.size).reshape(n_v, n_u).T.ravel())
            path = folder / f"map{k}.txt"
            write_text(path, u[order_], v[order_], data[order_], units=text_units,
                       comment=f"simulated realistic map {k}: dz = {dzs[k]} m, scans along "
                       f"{scan_axis}")
            files.append(str(path))
        truth["text_files"] = files
    return obs, truth
