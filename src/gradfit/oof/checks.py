"""Sanity checks of an OOF observation before a fit, and an adequacy assessment after it.

A fit that converges is not necessarily a fit that describes the data: maps with U/V
in arcsec instead of radians, a defocus in millimetres read as metres, the wrong
telescope or a constant map all "converge" to nonsense. :func:`check_observation`
refuses such inputs before any work is done, with a message that names the map and the
likely unit problem; :func:`assess` judges a finished fit by the package's own
normalised residual (limit :data:`ADEQUACY_LIMIT`, the ``MISFIT_LIMIT`` of
:mod:`gradfit.oof.solve`) and lists the causes it can check.

Everything here is NumPy on the observation's public data (no torch), so bad input is
refused before the model is imported.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "ADEQUACY_LIMIT",
    "EXTENT_BEAMS",
    "DEFOCUS_WAVES",
    "STRUCTURE_SIGMA",
    "GLITCH_RATIO",
    "SanityError",
    "beam_width_rad",
    "map_extent_beams",
    "defocus_waves",
    "noise_sigma",
    "structure_sigma",
    "max_order",
    "check_observation",
    "check_order",
    "assess",
]

#: normalised residual (1.4826 MAD of r/sigma) above which a fit does not describe the
#: data; the same number as ``gradfit.oof.solve.MISFIT_LIMIT`` (a good fit gives 1 +- 0.05)
ADEQUACY_LIMIT = 1.25
#: plausible map extent, in beam widths lambda/D (OOF maps span about 10-50)
EXTENT_BEAMS = (2.0, 1000.0)
#: plausible defocus, as the path difference between the dish centre and its rim, in
#: wavelengths (OOF uses about 1-3): no map above the upper, some map above the lower
DEFOCUS_WAVES = (0.1, 50.0)
#: a map must differ from a constant by this many standard deviations (chi-square test)
STRUCTURE_SIGMA = 5.0
#: a sample this many times brighter (above the median) than every other sample of its map
#: is a glitch: a beam sampled coarsely (1.2 lambda/D) still gives a ratio below about 50
GLITCH_RATIO = 1000.0

# angle units a U/V column is mistaken for, radians per unit
_ANGLE_UNITS = (("arcsec", math.pi / 648000), ("arcmin", math.pi / 10800), ("degrees",
                math.pi / 180), ("milliradians", 1e-3), ("microradians", 1e-6))


class SanityError(ValueError):
    """An observation that no fit can describe (units, defocus, structure, order).

    The message names the map and the likely cause.
    """


def _label(m, i) -> str:
    return m.name or f"map {i + 1}"


def _telescope(telescope):
    from .telescope import get_telescope

    return get_telescope(telescope)


def beam_width_rad(obs, telescope) -> float:
    """lambda/D of the observation on ``telescope`` (radians)."""
    tel = _telescope(telescope)
    return float(obs.wavelength_m) / (2.0 * tel.primary_radius_m)


def map_extent_beams(m, obs, telescope) -> tuple[float, float]:
    """(shorter, longer) side of a map's bounding box, in beam widths lambda/D."""
    bw = beam_width_rad(obs, telescope)
    du = float(np.ptp(m.u)) if m.n else 0.0
    dv = float(np.ptp(m.v)) if m.n else 0.0
    return min(du, dv) / bw, max(du, dv) / bw


def defocus_waves(m, obs, telescope) -> float:
    """Defocus path difference between dish centre and rim, in wavelengths."""
    tel = _telescope(telescope)
    d0 = float(tel.defocus_path(0.0, m.dz))
    d1 = float(tel.defocus_path(tel.primary_radius_m, m.dz))
    return abs(d0 - d1) / float(obs.wavelength_m)


def _grid(m):
    """The power as an (n_v, n_u) array when the map is a regular grid, else None."""
    shape = getattr(m, "shape", None)
    if shape is None or shape[0] * shape[1] != m.n or min(shape) < 4:
        return None
    return m.masked_power().reshape(shape)  # flagged samples NaN


def noise_sigma(m) -> float:
    """The noise of one map: the median of its per-point sigma, else estimated.

    The estimate is the method of ``gradfit.oof.solve.estimate_noise``: for a regular
    grid, 1.4826 MAD / sqrt(2) of the first differences along the two outermost rows and
    columns; for scattered samples, 1.4826 MAD of the outer 10 % of samples.
    """
    if m.sigma is not None and m.sigma.size:
        return float(np.median(m.sigma[m.valid]))  # a flagged sample's sigma is NaN
    return m.noise()


def structure_sigma(m) -> float:
    """How many standard deviations a map differs from a constant (chi-square test).

    ``(sum z^2 - N) / sqrt(2 N)`` with ``z = (P - median P) / sigma``: about 0 for a map of
    pure noise, hundreds for a beam; ``inf`` for a noiseless map with structure, ``0``
    for a constant one.
    """
    ok = m.valid  # flagged samples left out
    P = m.power[ok]
    if P.size == 0 or float(np.ptp(P)) == 0.0:
        return 0.0
    sigma = m.sigma[ok] if m.sigma is not None else noise_sigma(m)
    if np.all(np.asarray(sigma) == 0):
        return math.inf
    z = (P - np.median(P)) / sigma
    n = P.size
    return float((np.sum(z * z) - n) / math.sqrt(2 * n))


def max_order(obs, telescope) -> tuple[int, str]:
    """The highest Zernike order the maps' extent supports, and why.

    A Zernike term of radial order n puts its beam signature at about (n + 1)/pi beam
    widths lambda/D from the beam centre (the peak of J_{n+1} in its Fourier transform),
    so a fit of order N needs every map to reach that far: N <= pi R - 1, with R the
    half of the shorter map side in lambda/D. (The number of samples is checked by
    :func:`gradfit.oof.fit` itself: N + 2 per axis and 3 per free parameter.)
    """
    half = min(map_extent_beams(m, obs, telescope)[0] for m in obs.maps) / 2
    n = int(math.floor(math.pi * half - 1 + 1e-9))
    why = (f"a term of order N shows at about (N + 1)/pi beam widths from the beam centre; "
           f"these maps reach {half:.3g} lambda/D")
    return n, why


def check_order(obs, telescope, order: int) -> None:
    """Raise :class:`SanityError` if ``order`` exceeds :func:`max_order`."""
    n, why = max_order(obs, telescope)
    if order > n:
        limit = f"the highest order they support is {n}" if n >= 1 else "no order fits"
        raise SanityError(f"order {order} is too high for these maps ({why}); {limit}")


def _unit_hint(extent: float, too_big: bool) -> str:
    lo, hi = 5.0, 200.0  # where a typical OOF map would land
    hints = []
    if too_big:
        for name, f in _ANGLE_UNITS:
            if lo <= extent * f <= hi:
                hints.append(f"U/V look like {name}, not radians (in radians the map would "
                             f"span {extent * f:.3g} beam widths)")
        if not hints:
            hints.append("U/V must be in radians; check their unit and scale, and the "
                         "frequency (FREQ in Hz, WAVEL in m)")
    else:
        for name, f in (("GHz or MHz", 1e9), ("kHz", 1e3)):
            if lo <= extent * f <= hi * 1e3:
                hints.append(f"the frequency looks like it is in {name}, not Hz")
                break
        hints.append("U/V must be in radians; check their unit and scale, and FREQ/WAVEL")
    return "; ".join(hints)


def check_observation(obs, telescope, order: int | None = None,
                      likelihood: str | None = None) -> list[str]:
    """Refuse an observation that no fit can describe; return notes about the rest.

    Checks, for every map: its extent in beam widths (:data:`EXTENT_BEAMS`, naming the
    likely unit problem), its defocus (:data:`DEFOCUS_WAVES`), that it is not constant, and
    that the in-focus map has structure above its noise (:data:`STRUCTURE_SIGMA`; a weak
    defocused map gets a note); with ``order``, :func:`check_order`.

    Parameters
    ----------
    obs : Observation
    telescope : str or Telescope
    order : int, optional
    likelihood : str, optional
        With 'gaussian', a single sample :data:`GLITCH_RATIO` times brighter than every
        other sample of its map (a glitch: no sampled beam looks like that) is refused;
        it would set the data scale and the required model precision, and the fit would
        run for hours. Other likelihoods (Cauchy) are robust to it.

    Returns
    -------
    list of str
        Notes that do not stop a fit (e.g. a weak defocused map).

    Raises
    ------
    SanityError
        With a message naming the map and the problem.
    """
    tel = _telescope(telescope)
    if not obs.maps:
        raise SanityError("the observation has no beam maps")
    bw = beam_width_rad(obs, tel)
    notes = []
    for i, m in enumerate(obs.maps):
        label = _label(m, i)
        short, long_ = map_extent_beams(m, obs, tel)
        if long_ > EXTENT_BEAMS[1]:
            raise SanityError(
                f"{label}: the map spans {long_:.3g} beam widths (lambda/D = {bw:.3g} rad for "
                f"{tel.name} at {obs.wavelength_m:.4g} m); OOF maps span about 10-50, at most "
                f"{EXTENT_BEAMS[1]:g}: {_unit_hint(long_, True)}")
        if short < EXTENT_BEAMS[0]:
            raise SanityError(
                f"{label}: the map spans only {short:.3g} beam widths along its shorter side "
                f"(lambda/D = {bw:.3g} rad for {tel.name} at {obs.wavelength_m:.4g} m); "
                f"OOF maps span about 10-50, at least {EXTENT_BEAMS[0]:g}: "
                f"{_unit_hint(short, False)}")
    waves = [defocus_waves(m, obs, tel) for m in obs.maps]
    for i, (m, w) in enumerate(zip(obs.maps, waves)):
        if w > DEFOCUS_WAVES[1]:
            raise SanityError(
                f"{_label(m, i)}: dz = {m.dz:g} m gives {w:.3g} wavelengths of defocus path "
                f"across the {tel.name} dish; OOF uses about 1-3, at most "
                f"{DEFOCUS_WAVES[1]:g} (is DZ in millimetres instead of metres?)")
    if max(waves) < DEFOCUS_WAVES[0]:
        raise SanityError(
            f"no map is defocused: the largest |dz| = {max(abs(m.dz) for m in obs.maps):g} m "
            f"gives {max(waves):.3g} wavelengths of defocus path across the {tel.name} dish; "
            f"OOF needs about 1-3, at least {DEFOCUS_WAVES[0]:g} (is DZ in metres?)")
    focus = int(np.argmin([abs(m.dz) for m in obs.maps]))
    for i, m in enumerate(obs.maps):
        label = _label(m, i)
        good = m.power[m.valid]  # flagged samples (NaN) left out
        if float(np.ptp(good)) == 0.0:
            raise SanityError(f"{label}: the map is constant (every sample is "
                              f"{good[0]:g}); there is no beam to fit")
        s = structure_sigma(m)
        # the in-focus map must show its beam; a weak defocused map is legitimate
        # (its beam is spread out) but carries little information: a note
        if s < STRUCTURE_SIGMA and i == focus:
            raise SanityError(
                f"{label}: the in-focus map has no structure above its noise (it differs "
                f"from a constant by {s:.2g} sigma, noise {noise_sigma(m):.3g}; at least "
                f"{STRUCTURE_SIGMA:g} needed): a noise-only map, or a wrong NOISE/SIGMA")
        used = np.flatnonzero(m.valid)  # flagged samples (NaN) left out
        dev = np.abs(m.power[used] - np.median(m.power[used]))
        top = np.argsort(dev)[-2:]
        if (likelihood == "gaussian" and top.size == 2 and dev[top[1]] > 0
                and dev[top[1]] > GLITCH_RATIO * dev[top[0]]):
            k = int(used[top[1]])
            raise SanityError(
                f"{label}: sample {k} (u = {m.u[k]:.3g}, v = {m.v[k]:.3g} "
                f"rad) is {m.power[k]:.3g}, {dev[top[1]] / dev[top[0]]:.3g} times brighter "
                "than any other sample: a glitch; remove it, or use the Cauchy likelihood "
                "(--likelihood cauchy), which is robust to it")
        if s < STRUCTURE_SIGMA:
            notes.append(f"{label}: the map barely differs from a constant ({s:.2g} sigma, "
                         f"noise {noise_sigma(m):.3g}); it adds little information")
    if order is not None:
        check_order(obs, tel, int(order))
    return notes


def _fwhm_beams(m, obs, tel) -> float | None:
    """Equivalent FWHM of a gridded map's main beam (area above half maximum), lambda/D."""
    P = _grid(m)
    if P is None:
        return None
    du = float(np.ptp(m.u)) / max(m.shape[1] - 1, 1)
    dv = float(np.ptp(m.v)) / max(m.shape[0] - 1, 1)
    base = float(np.nanmedian(P))  # (flagged samples are NaN)
    peak = float(np.nanmax(P)) - base
    if not peak > 0:
        return None
    area = np.count_nonzero(P - base > peak / 2) * du * dv
    return 2 * math.sqrt(area / math.pi) / beam_width_rad(obs, tel)


def _normalised(r) -> float:
    return float(1.4826 * np.median(np.abs(r - np.median(r))))


def assess(obs, telescope, *, normalised_residual: float, model_maps=None,
           success: bool = True, limit: float = ADEQUACY_LIMIT) -> dict:
    """Does a fit describe the data? Convergence and adequacy are two facts.

    Parameters
    ----------
    obs : Observation
        The fitted observation.
    telescope : str or Telescope
        The telescope the fit used.
    normalised_residual : float
        The fit's robust normalised residual, 1.4826 MAD(r / sigma)
        (``Solution.fit["normalised_residual"]``); about 1 for a good fit.
    model_maps : sequence of arrays, optional
        The fitted model at every sample, one array per map, in data units
        (``Solution.model_maps()``); gives each map's own residual and the glitch count.
    success : bool
        Whether the minimiser converged (reported beside, not mixed in).
    limit : float
        Adequacy limit of the normalised residual (default :data:`ADEQUACY_LIMIT`).

    Returns
    -------
    dict
        ``adequate`` (bool; False also for a non-finite residual), ``normalised_residual``,
        ``limit``, ``converged``, ``per_map`` (name, extent_beams, defocus_waves,
        structure_sigma and, with ``model_maps``, normalised_residual of each map) and
        ``causes``: the likely causes the checks found when the fit is inadequate (empty
        when it is adequate).
    """
    tel = _telescope(telescope)
    x = float(normalised_residual)
    adequate = bool(math.isfinite(x) and x <= limit)
    per_map = []
    for i, m in enumerate(obs.maps):
        short, long_ = map_extent_beams(m, obs, tel)
        d = {"name": _label(m, i), "extent_beams": [short, long_],
             "defocus_waves": defocus_waves(m, obs, tel), "structure_sigma": structure_sigma(m)}
        if model_maps is not None:
            mu = np.asarray(model_maps[i], dtype=np.float64).ravel()
            sigma = m.sigma if m.sigma is not None else noise_sigma(m)
            r = (m.power - mu) / np.where(np.asarray(sigma) > 0, sigma, np.nan)
            d["normalised_residual"] = _normalised(r[np.isfinite(r)]) if np.isfinite(r).any() \
                else math.nan
            d["glitches"] = int(np.sum(np.abs(r[np.isfinite(r)]) > 50))
        per_map.append(d)
    causes = [] if adequate else _causes(obs, tel, per_map, limit)
    return {"adequate": adequate, "normalised_residual": x, "limit": float(limit),
            "converged": bool(success), "per_map": per_map, "causes": causes}


def _causes(obs, tel, per_map, limit) -> list[str]:
    causes = []
    bw = beam_width_rad(obs, tel)
    for d in per_map:
        short, long_ = d["extent_beams"]
        if long_ > EXTENT_BEAMS[1] or short < EXTENT_BEAMS[0]:
            causes.append(f"units: {d['name']} spans {short:.3g}-{long_:.3g} beam widths "
                          f"(lambda/D = {bw:.3g} rad); expected about 10-50 "
                          "(U/V in radians, FREQ in Hz?)")
    waves = [d["defocus_waves"] for d in per_map]
    if max(waves) > DEFOCUS_WAVES[1] or max(waves) < DEFOCUS_WAVES[0]:
        causes.append(f"defocus: {max(waves):.3g} wavelengths of path across the dish at the "
                      f"largest |dz|; OOF uses about 1-3 (DZ in metres?)")
    if obs.telescope and str(obs.telescope).strip().lower() != tel.name.lower():
        causes.append(f"telescope mismatch: the file names {obs.telescope!r}, the fit used "
                      f"{tel.name!r}")
    focus = int(np.argmin([abs(m.dz) for m in obs.maps]))
    fwhm = _fwhm_beams(obs.maps[focus], obs, tel)
    if fwhm is not None and not 0.8 <= fwhm <= 2.0:
        causes.append(f"telescope mismatch: the in-focus beam is {fwhm:.3g} lambda/D wide for "
                      f"{tel.name} (a {2 * tel.primary_radius_m:g} m dish); a tapered dish "
                      "gives about 1-1.3 (wrong --telescope, or a wrong FREQ?)")
    flat = [d["name"] for d in per_map if d["structure_sigma"] < STRUCTURE_SIGMA]
    if flat:
        causes.append(f"no structure above the noise in {', '.join(flat)} "
                      "(constant or noise-only maps)")
    resid = [(d["name"], d.get("normalised_residual")) for d in per_map]
    bad = [(n, r) for n, r in resid if r is not None and (not math.isfinite(r) or r > limit)]
    good = [n for n, r in resid if r is not None and math.isfinite(r) and r <= limit]
    if bad and good:
        causes.append("maps inconsistent with the others: " + ", ".join(
            f"{n} (normalised residual {r:.3g})" for n, r in bad) + "; wrong dz, pointing "
            "or source for those maps?")
    elif bad and len(bad) == len(resid) and len(resid) > 3:
        causes.append("no map is described (normalised residuals "
                      + ", ".join(f"{r:.3g}" for _, r in bad)
                      + "): maps from different observations or mutually inconsistent?")
    n_glitch = sum(d.get("glitches", 0) for d in per_map)
    n_all = sum(m.n for m in obs.maps)
    if 0 < n_glitch <= 0.01 * n_all:
        causes.append(f"{n_glitch} sample(s) lie more than 50 sigma from the model "
                      "(glitches): use the Cauchy likelihood")
    if not causes:
        causes.append("none of the checks found a cause: the noise may be underestimated, "
                      "the order too low, or the fit stuck in a local minimum")
    return causes
