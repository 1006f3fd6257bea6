"""The telescope surface at panel scale: a pixel-basis OOF fit against a Zernike fit.

Truth: a random Zernike surface (order 5, 0.03 waves rms per coefficient: about
200 um rms at 32 GHz) plus a random piston of 100-300 um (random sign) on every panel of an
Effelsberg-like layout (17 rings, panels about 2.75 m x 2.5 m; the layout file is
written next to the JSON). The beam maps (several defocus settings, high SNR) are made
by the pixel forward model on a grid FINER than the fit's (``--sim-grid`` cells across,
default twice the fit grid), where the panel edges are sharp, so the fit never sees its
own discretisation (no inverse crime).

Fits: ``oof.fit`` to Zernike order 7 on the fit grid, then ``oof.fit_pixels`` (started
from it) in the pixel basis and in the panel basis (piston and two tilts per panel of
the same layout). Both are compared with the truth on the fit grid's fully open cells, piston and
tilt removed: rms of (recovered - true) surface in micrometres. Also reported: n_eff,
the per-cell errors (Hutchinson) against the actual errors, wall and CPU time, and the
peak resident memory of the process. Writes JSON and a figure (true, Zernike and pixel
surfaces, the pixel fit's error and its predicted 1-sigma map).

    python benchmarks/oof_pixels.py                         # full: 128-cell grid, 7 maps
    python benchmarks/oof_pixels.py --grid 64 --npix 65 --half-width 16   # quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time

import numpy as np

from gradfit import oof
from gradfit.oof import panels, pixels
from gradfit.oof.simulate import C_LIGHT
from gradfit.oof.telescope import get_telescope
from gradfit.oof.zernike import zernike_basis, zernike_count


def truth_surface(telescope, layout, freq_hz, order=5, rms_waves=0.03, low_um=100.0,
                  high_um=300.0, seed=0):
    """``phase_fn(x, y)`` of the true surface, its Zernike coefficients and panel offsets."""
    tel = get_telescope(telescope)
    pr = tel.primary_radius_m
    lam = C_LIGHT / freq_hz
    rng = np.random.default_rng(seed)
    K = rng.normal(0.0, rms_waves, zernike_count(order))
    K[0] = 0.0
    off_um = panels.panel_offsets_um(layout, low_um, high_um, seed=seed + 1)

    def phase_fn(x, y):
        U = zernike_basis(order, np.hypot(x, y) / pr, np.arctan2(y, x)).numpy()
        pid = layout.panel_of(x, y)
        d = np.where(pid >= 0, off_um[np.maximum(pid, 0)], 0.0) * 1e-6
        return 2 * np.pi * (K @ U) + 4 * np.pi * d / lam

    return phase_fn, K, off_um


def rms_um(diff_rad, x, y, lam):
    """rms (um) of a phase difference with its least-squares piston and tilt removed."""
    d = pixels.remove_piston_tilt(diff_rad, x, y)
    return float(np.sqrt(np.mean(d**2)) * lam / (4 * math.pi) * 1e6)


def run(grid=128, sim_grid=None, npix=129, half_width=32.0, dz=(-0.05, -0.03, -0.015, 0.0,
        0.015, 0.03, 0.05), snr=1e4, freq_hz=32e9, smoothness=10.0,
        zernike_order=7, method="lbfgs", max_iter=None, error_probes=8, panel_errors=False,
        seed=0, out=None,
        figure=None, verbose=True):
    t_all = time.perf_counter()
    tel = get_telescope("effelsberg")
    lam = C_LIGHT / freq_hz
    layout = panels.effelsberg_like()
    sim_grid = sim_grid or 2 * grid
    phase_fn, K, off_um = truth_surface(tel, layout, freq_hz, seed=seed)
    t = time.perf_counter()
    obs = pixels.simulate_surface(tel, phase_fn, list(dz), freq_hz=freq_hz, npix=npix,
                                  half_width_beams=half_width, grid=sim_grid, snr=snr,
                                  seed=seed + 2)
    t_sim = time.perf_counter() - t
    cpu0 = time.process_time()
    t = time.perf_counter()
    zsol = oof.fit(obs, order=zernike_order, telescope=tel, grid=grid)
    t_zern = time.perf_counter() - t
    rss_zern_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if verbose:
        print(f"Zernike order {zernike_order}: {zsol.fit['message']}, {t_zern:.1f} s")
    t = time.perf_counter()
    psol = oof.fit_pixels(obs, zernike=zsol, grid=grid, smoothness=smoothness, method=method,
                          max_iter=max_iter, errors="hutchinson" if error_probes else "none",
                          error_probes=error_probes, n_eff_probes=error_probes, seed=seed,
                          progress=verbose)
    t_pix = time.perf_counter() - t
    rss_pix_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if verbose:
        print(psol, flush=True)
    t = time.perf_counter()
    pan = oof.fit_pixels(obs, zernike=zsol, grid=grid, panels=layout, method=method,
                         max_iter=max_iter, errors="hutchinson" if panel_errors else "none",
                         error_probes=error_probes, n_eff_probes=error_probes if panel_errors
                         else 0, seed=seed, progress=verbose)
    t_pan = time.perf_counter() - t
    if verbose:
        print(pan, flush=True)
    cpu = time.process_time() - cpu0
    g = psol.grid
    true_ph = phase_fn(g.x, g.y)
    full = g.weight >= 1.0
    x, y = g.x[full], g.y[full]
    zern_ph = 2 * np.pi * (zsol.K_waves @ g.zernike(zernike_order))
    start_ph = zern_ph
    rms_true = rms_um(true_ph[full], x, y, lam)
    rms_zern = rms_um((zern_ph - true_ph)[full], x, y, lam)
    rms_pix = rms_um((psol.phase_rad - true_ph)[full], x, y, lam)
    rms_pan = rms_um((pan.phase_rad - true_ph)[full], x, y, lam)
    # predicted vs actual error of the pixel map (per cell, um)
    err_um = psol.phase_err_rad * lam / (4 * math.pi) * 1e6
    actual = pixels.remove_piston_tilt((psol.phase_rad - true_ph)[full], x, y) * lam / (
        4 * math.pi) * 1e6
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "telescope": tel.name, "frequency_hz": freq_hz, "wavelength_m": lam,
        "panels": layout.n_panels, "panel_rings": len(layout.rings),
        "panel_offsets_rms_um": float(np.sqrt(np.mean(off_um**2))),
        "maps": len(dz), "dz_m": list(dz), "npix": npix, "half_width_beams": half_width,
        "ndata": int(obs.n_points), "snr": snr, "sim_grid": sim_grid, "fit_grid": grid,
        "pixel_m": g.step_m, "n_cells": g.n_pixels, "smoothness_per_rad2": smoothness,
        "method": psol.fit["method"], "message": psol.fit["message"],
        "nit": psol.fit["nit"], "nfev": psol.fit["nfev"],
        "chi2_per_point": psol.fit["chi2"] / psol.fit["ndata"],
        "zernike_normalised_residual": zsol.fit["normalised_residual"],
        "true_surface_rms_um": rms_true,
        "rms_zernike_minus_true_um": rms_zern,
        "rms_pixels_minus_true_um": rms_pix,
        "improvement_factor": rms_zern / rms_pix,
        "rms_panel_basis_minus_true_um": rms_pan,
        "panel_basis_params": pan.fit["n_params"], "panel_basis_n_eff": pan.n_eff,
        "panel_basis_message": pan.fit["message"],
        "panel_piston_err_median_um": float(np.nanmedian(pan.panels["piston_err_um"]))
        if panel_errors else None,
        "panel_basis_nit": pan.fit["nit"],
        "time_panels_s": t_pan,
        "n_eff": psol.n_eff,
        "errors": psol.fit["errors"],
        "predicted_error_rms_um": float(np.sqrt(np.nanmean(err_um[full] ** 2)))
        if np.isfinite(err_um).any() else None,
        "actual_error_rms_um": float(np.sqrt(np.mean(actual**2))),
        "time_simulate_s": t_sim, "time_zernike_s": t_zern, "time_pixels_s": t_pix,
        "cpu_time_fits_s": cpu, "peak_rss_mb": peak_rss_mb,
        "peak_rss_after_pixels_mb": rss_pix_mb,
        "peak_rss_after_zernike_mb": rss_zern_mb,
        "time_total_s": time.perf_counter() - t_all,
        "command": "python benchmarks/oof_pixels.py " + " ".join(
            f"--{k} {v}" for k, v in (("grid", grid), ("npix", npix),
                                      ("half-width", half_width))),
    }
    if verbose:
        for k in ("n_cells", "ndata", "rms_zernike_minus_true_um", "rms_pixels_minus_true_um",
                  "improvement_factor", "rms_panel_basis_minus_true_um", "panel_basis_n_eff",
                  "n_eff", "predicted_error_rms_um",
                  "actual_error_rms_um", "time_zernike_s", "time_pixels_s",
                  "time_panels_s", "peak_rss_after_zernike_mb", "peak_rss_after_pixels_mb",
                  "peak_rss_mb"):
            print(f"  {k}: {report[k]}")
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(report, f, indent=1)
        with open(os.path.splitext(out)[0] + "_panels.txt", "w") as f:
            f.write(layout.to_text())
    if figure:
        _figure(figure, g, true_ph, start_ph, psol, lam, rms_zern, rms_pix)
    return report


def _figure(path, g, true_ph, zern_ph, psol, lam, rms_zern, rms_pix):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    to_um = lam / (4 * math.pi) * 1e6

    def img(v):
        a = np.full(g.n * g.n, np.nan)
        a[g.index] = pixels.remove_piston_tilt(v, g.x, g.y, g.weight) * to_um
        return a.reshape(g.n, g.n)

    top = [("true surface", img(true_ph)),
           ("Zernike order 7 fit", img(zern_ph)),
           ("pixel fit", img(psol.phase_rad))]
    bottom = [(f"Zernike - true (rms {rms_zern:.0f} um)", img(zern_ph - true_ph)),
              (f"pixels - true (rms {rms_pix:.0f} um)", img(psol.phase_rad - true_ph)),
              ("pixel fit: predicted 1-sigma", psol.surface_error_map())]
    fig, axes = plt.subplots(2, 3, figsize=(15, 9.5))
    pr = g.telescope.primary_radius_m
    ext = (-pr, pr, -pr, pr)
    lim = np.nanpercentile(np.abs(top[0][1]), 99)
    dlim = np.nanpercentile(np.abs(bottom[0][1]), 99)
    for row, (items, vlim) in enumerate(((top, lim), (bottom, dlim))):
        for col, (title, a) in enumerate(items):
            ax = axes[row, col]
            if title.startswith("pixel fit: predicted"):
                im = ax.imshow(a, origin="lower", extent=ext, cmap="magma")
            else:
                im = ax.imshow(a, origin="lower", extent=ext, cmap="RdBu_r", vmin=-vlim,
                               vmax=vlim)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("x (m)")
            ax.set_ylabel("y (m)")
            fig.colorbar(im, ax=ax, shrink=0.85, label="surface (um)")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", type=int, default=128)
    ap.add_argument("--sim-grid", type=int, default=None)
    ap.add_argument("--npix", type=int, default=129)
    ap.add_argument("--half-width", type=float, default=32.0)
    ap.add_argument("--snr", type=float, default=1e4)
    ap.add_argument("--smoothness", type=float, default=10.0)
    ap.add_argument("--method", default="lbfgs")
    ap.add_argument("--max-iter", type=int, default=None)
    ap.add_argument("--error-probes", type=int, default=8)
    ap.add_argument("--panel-errors", action="store_true",
                    help="also Hutchinson errors and n_eff for the panel basis (slow)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="benchmarks/results/oof_pixels.json")
    ap.add_argument("--figure", default="benchmarks/results/oof_pixels.png")
    a = ap.parse_args()
    run(grid=a.grid, sim_grid=a.sim_grid, npix=a.npix, half_width=a.half_width, snr=a.snr,
        smoothness=a.smoothness, method=a.method, max_iter=a.max_iter,
        error_probes=a.error_probes, panel_errors=a.panel_errors, seed=a.seed, out=a.json,
        figure=a.figure)


if __name__ == "__main__":
    main()
