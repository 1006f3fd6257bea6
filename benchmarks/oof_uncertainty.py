"""OOF surface-error uncertainty: predicted per-pixel σ against Monte Carlo refits.

Simulates one telescope surface, then ``--realisations`` noise realisations of the
OOF maps of that same surface, fits each with ``gradfit.oof.fit`` (started at the
truth, one start), and compares the pixel-by-pixel scatter of the fitted surface maps
with the map propagated from the fit's coefficient covariance
(:func:`gradfit.oof.uncertainty.solution_error_map`). Prints the ratio of their rms
over the aperture (the acceptance asks for 0.8–1.2) and writes JSON.

    python benchmarks/oof_uncertainty.py [--realisations 50] [--order 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from gradfit import oof
from gradfit.oof.uncertainty import solution_error_map


def run(realisations=50, order=5, snr=300.0, npix=33, grid=96, n_map=96, telescope="effelsberg",
        seed=0, verbose=True):
    truth = oof.simulate(telescope, order=order, snr=snr, seed=seed, npix=npix)
    K_true = np.array(truth.truth["K_waves"])
    maps, predicted = [], []
    t0 = time.perf_counter()
    for i in range(realisations):
        obs = oof.simulate(telescope, order=order, snr=snr, seed=seed + 1000 + i, npix=npix,
                           K_waves=K_true)
        sol = oof.fit(obs, order=order, telescope=telescope, n_starts=1,
                      start={"K": K_true}, grid=grid)
        if not sol.success:
            raise RuntimeError(f"realisation {i}: the fit failed: {sol.fit['message']}")
        maps.append(sol.surface_map(n_map))
        predicted.append(solution_error_map(sol, n_map))
        if verbose:
            print(f"\r  {i + 1}/{realisations} fits, {time.perf_counter() - t0:.1f} s",
                  end="", flush=True)
    if verbose:
        print()
    maps = np.stack(maps)
    open_ = np.all(np.isfinite(maps), axis=0)
    scatter = maps.std(axis=0, ddof=1)
    pred = np.mean(np.stack(predicted), axis=0)  # the covariance barely changes between fits
    rms_scatter = float(np.sqrt(np.mean(scatter[open_] ** 2)))
    rms_pred = float(np.sqrt(np.mean(pred[open_] ** 2)))
    ratio_px = scatter[open_] / pred[open_]
    return {
        "telescope": telescope, "order": order, "snr": snr, "npix": npix, "grid": grid,
        "realisations": realisations, "map_cells": n_map,
        "rms_scatter_um": rms_scatter, "rms_predicted_um": rms_pred,
        "ratio_rms": rms_scatter / rms_pred,
        "pixel_ratio_median": float(np.median(ratio_px)),
        "pixel_ratio_p05_p95": [float(np.percentile(ratio_px, 5)),
                                float(np.percentile(ratio_px, 95))],
        "time_s": time.perf_counter() - t0,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realisations", type=int, default=50)
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--snr", type=float, default=300.0)
    ap.add_argument("--npix", type=int, default=33)
    ap.add_argument("--grid", type=int, default=96)
    ap.add_argument("--telescope", default="effelsberg")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the numbers to this file")
    a = ap.parse_args()
    out = run(a.realisations, a.order, a.snr, a.npix, a.grid, telescope=a.telescope,
              seed=a.seed)
    print(f"{out['telescope']} order {out['order']}, SNR {out['snr']:g}, "
          f"{out['realisations']} realisations: rms of the pixel scatter "
          f"{out['rms_scatter_um']:.3f} µm, predicted {out['rms_predicted_um']:.3f} µm, "
          f"ratio {out['ratio_rms']:.3f} (pixel ratios: median {out['pixel_ratio_median']:.3f}"
          f", 5–95 % {out['pixel_ratio_p05_p95'][0]:.2f}–{out['pixel_ratio_p05_p95'][1]:.2f})"
          f"; {out['time_s']:.1f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
