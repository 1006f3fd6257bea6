"""Figures for OOF holography: beam maps (observed / model / residual) and the surface map.

matplotlib is imported when a function is called, with the non-interactive Agg
backend, so that importing this module costs nothing and figures render headless.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from gradfit.oof.observation import BeamMap, Observation

__all__ = ["plot_maps", "plot_surface", "plot_dir"]

_ARCSEC = 180.0 / math.pi * 3600.0


def _pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError as exc:  # pragma: no cover - matplotlib is a dependency
        raise ModuleNotFoundError("plotting needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _axis_scale(units: str, beam_rad: float | None) -> tuple[float, str]:
    if units == "arcsec":
        return _ARCSEC, "arcsec"
    if units == "rad":
        return 1.0, "rad"
    if units == "beam":
        if not beam_rad or beam_rad <= 0:
            raise ValueError("units='beam' needs beam_rad, the beam width in radians")
        return 1.0 / beam_rad, "λ/D"
    raise ValueError(f"unknown units {units!r}; choose one of: arcsec, beam, rad")


def _gridded(m: BeamMap, values: np.ndarray):
    """(image, extent) on the map's grid, or None where the samples are scattered.

    A regular grid with some samples masked still grids (holes are NaN).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if m.shape is not None:
        n_v, n_u = m.shape
        img = values.reshape(n_v, n_u)
        ux, vy = m.u.reshape(n_v, n_u)[0], m.v.reshape(n_v, n_u)[:, 0]
    else:
        ux = np.unique(np.round(m.u, 12))
        vy = np.unique(np.round(m.v, 12))
        if ux.size < 2 or vy.size < 2 or ux.size * vy.size > 4 * m.n:
            return None
        du, dv = np.diff(ux), np.diff(vy)
        if np.ptp(du) > 1e-3 * du.mean() or np.ptp(dv) > 1e-3 * dv.mean():
            return None
        img = np.full((vy.size, ux.size), np.nan)
        i = np.clip(np.searchsorted(vy, np.round(m.v, 12)), 0, vy.size - 1)
        j = np.clip(np.searchsorted(ux, np.round(m.u, 12)), 0, ux.size - 1)
        img[i, j] = values
    if ux[0] > ux[-1]:
        img, ux = img[:, ::-1], ux[::-1]
    if vy[0] > vy[-1]:
        img, vy = img[::-1], vy[::-1]
    hu = (ux[-1] - ux[0]) / max(ux.size - 1, 1) / 2
    hv = (vy[-1] - vy[0]) / max(vy.size - 1, 1) / 2
    return img, (ux[0] - hu, ux[-1] + hu, vy[0] - hv, vy[-1] + hv)


def _panel(fig, ax, m, values, scale, cmap, title, symmetric=False, limits=None,
           clabel=None):
    values = np.asarray(values, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    if symmetric:
        lim = float(np.max(np.abs(finite))) if finite.size else 1.0
        vmin, vmax = -lim or -1.0, lim or 1.0
    elif limits is not None:
        vmin, vmax = limits
    else:
        vmin = vmax = None
    g = _gridded(m, values)
    if g is not None:
        img, ext = g
        art = ax.imshow(
            img,
            origin="lower",
            extent=[e * scale for e in ext],
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            interpolation="nearest",
            aspect="equal",
        )
    else:
        art = ax.scatter(m.u * scale, m.v * scale, c=values, s=6, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_aspect("equal")
    bar = fig.colorbar(art, ax=ax, fraction=0.046, pad=0.04)
    if clabel:
        bar.set_label(clabel, fontsize=8)
    ax.set_title(title, fontsize=9)


def plot_maps(
    obs: Observation,
    model=None,
    path: str | os.PathLike | None = None,
    *,
    units: str = "arcsec",
    beam_rad: float | None = None,
    title: str | None = None,
    power_units: str | None = None,
):
    """Draw every beam map: observed, and where a model is given, model and residual.

    All three panels are in the data's units (``power_units``, default
    ``obs.meta['BUNIT']`` or 'data units'); masked samples are blank.

    Parameters
    ----------
    obs : Observation
    model : sequence of 1-D arrays, optional
        Model power for each map at the observed samples (``sol.model_maps()``).
    path : str or path-like, optional
        Save the figure here (PNG).
    units : {'arcsec', 'beam', 'rad'}
        Units of the u, v axes; 'beam' needs ``beam_rad``.
    beam_rad : float, optional
        Beam width (e.g. λ/D) in radians.
    title : str, optional
        Figure title.
    power_units : str, optional
        Label of the colour bars.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    if power_units is None:
        power_units = str((obs.meta or {}).get("BUNIT") or "data units")
    scale, label = _axis_scale(units, beam_rad)
    if model is not None:
        model = [np.asarray(p, dtype=np.float64).ravel() for p in model]
        if len(model) != len(obs.maps):
            raise ValueError(f"plot_maps: {len(model)} model maps for {len(obs.maps)} maps")
        for m, p in zip(obs.maps, model, strict=True):
            if p.size != m.n:
                raise ValueError(
                    f"plot_maps: model for map {m.name!r} has {p.size} values, map has {m.n}"
                )
    ncol = 3 if model is not None else 1
    nrow = len(obs.maps)
    # a fixed layout in inches: constrained layout costs seconds with this many colourbars
    width, height = 4.6 * ncol, 3.7 * nrow + 0.8
    fig, axes = plt.subplots(nrow, ncol, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(
        left=0.7 / width,
        right=1 - 0.75 / width,
        bottom=0.5 / height,
        top=1 - 0.75 / height,
        wspace=0.45,
        hspace=0.4,
    )
    for r, m in enumerate(obs.maps):
        name = m.name or f"map {r + 1}"
        head = f"{name}, dz = {m.dz * 1e3:+.1f} mm"
        # observed and model share one colour scale so that they compare by eye
        data = m.masked_power()  # masked samples blank
        both = data if model is None else np.concatenate([data, model[r]])
        both = both[np.isfinite(both)]
        limits = (float(both.min()), float(both.max())) if both.size else None
        _panel(fig, axes[r, 0], m, data, scale, "viridis", f"{head}: observed", limits=limits,
               clabel=power_units)
        if model is not None:
            p = model[r]
            _panel(fig, axes[r, 1], m, p, scale, "viridis", f"{head}: model", limits=limits,
                   clabel=power_units)
            res = data - p
            rms = float(np.sqrt(np.nanmean(res**2)))
            note = f"rms {rms:.3g}"
            if m.sigma is not None:
                note += f" = {rms / float(np.sqrt(np.mean(m.sigma[m.valid]**2))):.2f} σ"
            peak = float(np.nanmax(obs.maps[obs.infocus_index].masked_power()))
            if peak > 0:
                note += f", {100 * rms / peak:.2g}% of peak"
            _panel(fig, axes[r, 2], m, res, scale, "RdBu_r", f"residual ({note})", symmetric=True,
                   clabel=power_units)
        for ax in axes[r]:
            ax.set_xlabel(f"u ({label})")
        axes[r, 0].set_ylabel(f"v ({label})")
    if title:
        fig.suptitle(title, y=1 - 0.2 / height)
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def plot_surface(
    surface_um,
    extent_m=None,
    path: str | os.PathLike | None = None,
    *,
    radius_m: float | None = None,
    inner_radius_m: float | None = None,
    title: str | None = None,
    rms_um: float | None = None,
    telescope=None,
    weighted_rms_um: float | None = None,
    uncertainty: bool = False,
):
    """Draw the surface-error map (µm) with the aperture outline.

    With ``uncertainty=True`` the map is a 1σ uncertainty (non-negative): it gets a
    sequential colour scale from zero and its rms is quoted without removing a mean.

    Parameters
    ----------
    surface_um : 2-D array
        Surface error in micrometres, NaN outside the aperture; rows are y.
    extent_m : (x0, x1, y0, y1), optional
        Aperture-plane extent of the image edges in metres. Without it the axes are
        in pixels.
    path : str or path-like, optional
        Save the figure here (PNG).
    radius_m, inner_radius_m : float, optional
        Radii of the dish rim and of the central blockage, drawn as circles. The rim
        defaults to the largest circle inside ``extent_m``.
    title : str, optional
    rms_um : float, optional
        Quoted in the title; by default the rms of the finite pixels.
    telescope : Telescope, optional
        When given (with ``extent_m``), the outline of its illuminated aperture (rim,
        central blockage, support-leg shadows) is drawn instead of plain circles.
    weighted_rms_um : float, optional
        Illumination-weighted rms, quoted in the title beside the plain rms.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    data = np.asarray(surface_um, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"plot_surface: expected a 2-D map, got shape {data.shape}")
    finite = data[np.isfinite(data)]
    if rms_um is None and finite.size:
        centre = 0.0 if uncertainty else finite.mean()
        rms_um = float(np.sqrt(np.mean((finite - centre) ** 2)))
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    fig.subplots_adjust(left=0.12, right=0.94, bottom=0.1, top=0.88)
    lim = float(np.max(np.abs(finite))) if finite.size else 1.0
    kw = dict(origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    if uncertainty:
        kw.update(cmap="viridis", vmin=0.0)
    if extent_m is not None:
        art = ax.imshow(data, extent=list(extent_m), **kw)
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
        if telescope is not None and hasattr(telescope, "illuminated"):
            _outline(ax, telescope)
        else:
            if radius_m is None:
                x0, x1, y0, y1 = extent_m
                radius_m = min(abs(x1 - x0), abs(y1 - y0)) / 2
            from matplotlib.patches import Circle

            for r in (radius_m, inner_radius_m):
                if r:
                    ax.add_patch(Circle((0.0, 0.0), r, fill=False, ec="k", lw=1.0))
    else:
        art = ax.imshow(data, **kw)
        ax.set_xlabel("x (pixel)")
        ax.set_ylabel("y (pixel)")
    ax.set_aspect("equal")
    cb = fig.colorbar(art, ax=ax)
    cb.set_label("surface-error uncertainty, 1σ (µm)" if uncertainty else "surface error (µm)")
    head = title or ("Surface-error uncertainty" if uncertainty else "Surface error")
    if rms_um is not None:
        head += f"\nrms {rms_um:.1f} µm"
        if weighted_rms_um is not None:
            head += f" (illumination-weighted {weighted_rms_um:.1f} µm)"
    ax.set_title(head, fontsize=11)
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def _outline(ax, telescope, n: int = 501) -> None:
    """Contour of the telescope's illuminated aperture (rim, blockage, legs)."""
    r = float(telescope.primary_radius_m) * 1.02
    x = np.linspace(-r, r, n)
    X, Y = np.meshgrid(x, x)
    mask = np.asarray(telescope.illuminated(X, Y), dtype=np.float64)
    ax.contour(X, Y, mask, levels=[0.5], colors="k", linewidths=0.8)


def _get_telescope(name):
    if not name:
        return None
    try:
        from gradfit.oof.telescope import get_telescope

        return get_telescope(name)
    except (ImportError, KeyError, ValueError, TypeError):
        return None


def _telescope_radii(name):
    """(rim radius, central-blockage radius) of a known telescope, else (None, None)."""
    if not name:
        return None, None
    try:
        from gradfit.oof.telescope import get_telescope

        tel = get_telescope(name)
    except (ImportError, KeyError, ValueError):
        return None, None
    rim = None
    for attr in ("radius_m", "pr", "radius", "primary_radius_m"):
        if getattr(tel, attr, None):
            rim = float(getattr(tel, attr))
            break
    if rim is None and getattr(tel, "diameter_m", None):
        rim = float(tel.diameter_m) / 2
    inner = None
    for attr in ("sub_radius_m", "subreflector_radius_m", "inner_radius_m", "block_radius_m"):
        if getattr(tel, attr, None):
            inner = float(getattr(tel, attr))
            break
    return rim, inner


def _at_samples(model_map: BeamMap, m: BeamMap) -> np.ndarray:
    """``model_map``'s power at the sample positions of ``m`` (a subset of its samples);
    the model unchanged when they are not a subset (the caller then reports it)."""
    scale = max(float(np.ptp(model_map.u)), float(np.ptp(model_map.v)), 1e-300) * 1e-9
    key = {(round(u / scale), round(v / scale)): i
           for i, (u, v) in enumerate(zip(model_map.u, model_map.v))}
    idx = [key.get((round(u / scale), round(v / scale))) for u, v in zip(m.u, m.v)]
    if any(i is None for i in idx):
        return model_map.power
    return model_map.power[np.asarray(idx, dtype=int)]


def _number(x):
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def plot_dir(
    outdir: str | os.PathLike, obs: Observation | None = None, *, units: str = "arcsec"
) -> list[Path]:
    """Re-draw the figures of a fit output directory.

    Reads ``solution.json``, ``surface.fits`` and ``model.fits`` from ``outdir`` and the
    observation from ``obs`` or from the path recorded in ``solution.json``
    (``input.path``); writes ``maps.png`` and ``surface.png`` there.

    Parameters
    ----------
    outdir : str or path-like
    obs : Observation, optional
    units : {'arcsec', 'beam', 'rad'}
        Units of the map axes; 'beam' is lambda/D of the fitted telescope.

    Returns
    -------
    list of Path
        The figures written.
    """
    import json

    from gradfit.oof import io

    outdir = Path(outdir)
    sol_path = outdir / "solution.json"
    if not sol_path.exists():
        raise io.OOFDataError(f"{outdir}: no solution.json; is this a 'gradfit oof fit' output?")
    try:
        sol = json.loads(sol_path.read_text())
    except ValueError as exc:
        raise io.OOFDataError(f"{sol_path}: not valid JSON ({exc})") from None
    if obs is None:
        src = (sol.get("input") or {}).get("path")
        if not src:
            raise io.OOFDataError(
                f"{sol_path}: no 'input.path' recording the observation; pass it explicitly"
            )
        src = Path(src)
        if not src.is_absolute():
            src = outdir / src
        obs = io.read(src)
    written = []
    model = None
    if (outdir / "model.fits").exists():
        mobs = io.read(outdir / "model.fits")
        model = [m.power for m in mobs.maps]
        if len(mobs.maps) == len(obs.maps):
            # an observation read back without its few flagged samples (a reader that
            # drops NaN): the model at the samples it kept
            model = [_at_samples(mm, m) if m.n < mm.n <= 1.1 * m.n else p
                     for mm, m, p in zip(mobs.maps, obs.maps, model)]
        if [p.size for p in model] != [m.n for m in obs.maps]:
            raise io.OOFDataError(
                f"{outdir / 'model.fits'}: model maps do not match the observation's "
                f"({[m.n for m in mobs.maps]} vs {[m.n for m in obs.maps]} samples)"
            )
    tel = sol.get("telescope")
    tel_name = tel.get("name") if isinstance(tel, dict) else tel
    title = f"{tel_name or obs.telescope or 'OOF'} at {obs.frequency_hz / 1e9:.3g} GHz"
    beam_rad = None
    if units == "beam":
        radius = tel.get("primary_radius_m") if isinstance(tel, dict) else None
        if not radius:
            radius, _ = _telescope_radii(tel_name or obs.telescope)
        if not radius:
            raise io.OOFDataError(
                f"{sol_path}: the telescope's radius is unknown, so beam widths are too; "
                "use units 'arcsec'"
            )
        beam_rad = obs.wavelength_m / (2 * float(radius))
    p = outdir / "maps.png"
    plot_maps(obs, model, p, title=title, units=units, beam_rad=beam_rad)
    written.append(p)
    if (outdir / "surface.fits").exists():
        data, extent, header = io.read_image(outdir / "surface.fits")
        tel = _get_telescope(tel_name or obs.telescope)
        rim, inner = _telescope_radii(tel_name or obs.telescope)
        rms = sol.get("surface_rms_um")
        p = outdir / "surface.png"
        plot_surface(
            data,
            extent,
            p,
            radius_m=rim,
            inner_radius_m=inner,
            title=f"Surface error, {tel_name or obs.telescope or 'telescope'}",
            rms_um=_number(rms),
            telescope=tel,
            weighted_rms_um=_number(sol.get("surface_rms_weighted_um")),
        )
        written.append(p)
    if (outdir / "surface_error.fits").exists():
        data, extent, header = io.read_image(outdir / "surface_error.fits")
        method = (sol.get("errors") or {}).get("method", "hessian")
        p = outdir / "surface_error.png"
        plot_surface(
            data,
            extent,
            p,
            title=f"Surface-error uncertainty ({method}), "
                  f"{tel_name or obs.telescope or 'telescope'}",
            rms_um=_number(sol.get("surface_error_rms_um")),
            telescope=_get_telescope(tel_name or obs.telescope),
            uncertainty=True,
        )
        written.append(p)
    return written
