"""OOF fits with and without a beam: is the fitted beam detected?

Simulated Effelsberg observations (``gradfit.oof.simulate``, 3 maps) at in-focus peak
SNR 1000, 30, 10 and 3, and pure noise (the same maps with the beam taken out, unit
noise), each fitted by ``gradfit.oof.fit`` at its defaults (multi-start 'auto').
Printed per fit: the verdict and message, the starts, and the detection statistic
``beam_snr`` (``fit["beam_snr"]``: sqrt(sum((beam / sigma)^2)), the fitted beam's
matched-filter SNR), that over sqrt(k) (k the free parameters that shape the beam;
the rule fires below ``gradfit.oof.solve.BEAM_SNR_LIMIT``), and the amplitude over its
Hessian error. ``--measured``
drops the maps' sigma (the noise is then measured from the maps, and pointing, gain
and background are freed, as for maps read from files).

    python benchmarks/oof_no_signal.py --seeds 0 1 2 3 4
    python benchmarks/oof_no_signal.py --order 3 --npix 25 --seeds 0 1 2 3 4 5 6 7
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

NOISE = 0.0  # "SNR" of the pure-noise case


def observation(snr: float, seed: int, npix: int, order: int, measured: bool):
    from gradfit.oof.simulate import simulate, simulate_noise

    obs = (simulate_noise("effelsberg", order=order, npix=npix, seed=seed) if snr == NOISE
           else simulate("effelsberg", order=order, snr=snr, npix=npix, seed=seed))
    if measured:
        obs = dataclasses.replace(obs, maps=[dataclasses.replace(m, sigma=None)
                                             for m in obs.maps])
    return obs


def run(snr, seed, npix, order, measured):
    from gradfit.oof import solve

    obs = observation(snr, seed, npix, order, measured)
    t0 = time.perf_counter()
    sol = solve.fit(obs, order=order)
    dt = time.perf_counter() - t0
    amp = sol.nuisance.get("amp", {"value": np.nan, "error": np.nan})
    log = sol.fit["start_log"]
    return {"data": "noise" if snr == NOISE else f"SNR {snr:g}", "seed": seed,
            "time_s": dt, "success": sol.success, "starts": len(log),
            "funs": "/".join(f"{r['neg_log_likelihood']:.1f}{'c' if r['success'] else ''}"
                             f"{'*' if r['kept'] else ''}" for r in log),
            "beam_snr": sol.fit["beam_snr"],
            "per_root_k": sol.fit["beam_snr"] * solve.BEAM_SNR_LIMIT / sol.fit["beam_snr_limit"],
            "k": round((sol.fit["beam_snr_limit"] / solve.BEAM_SNR_LIMIT) ** 2),
            "amp_sig": amp["value"] / amp["error"] if amp["error"] else np.nan,
            "misfit": sol.fit["normalised_residual"], "message": sol.fit["message"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--snr", type=float, nargs="+", default=[1000, 30, 10, 3, NOISE],
                    help="in-focus peak SNRs (0: pure noise)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--npix", type=int, default=33)
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--measured", action="store_true",
                    help="maps without sigma (noise measured, real-map nuisance freed)")
    a = ap.parse_args(argv)
    print(f"Effelsberg, order {a.order}, 3 maps of {a.npix} x {a.npix}, oof.fit defaults"
          f"{', measured noise' if a.measured else ''}")
    head = (f"{'data':>9} {'seed':>4} {'time s':>6} {'success':>7} {'beam_snr':>8} "
            f"{'k':>3} {'/sqrt(k)':>8} {'amp/err':>8} {'misfit':>6}  -log L per start "
            "(c converged, * kept) | message")
    print(head)
    print("-" * len(head))
    rows = []
    for snr in a.snr:
        for seed in a.seeds:
            r = run(snr, seed, a.npix, a.order, a.measured)
            rows.append(r)
            print(f"{r['data']:>9} {seed:>4} {r['time_s']:>6.1f} {str(r['success']):>7} "
                  f"{r['beam_snr']:>8.2f} {r['k']:>3} {r['per_root_k']:>8.2f} "
                  f"{r['amp_sig']:>8.2f} {r['misfit']:>6.3f}  {r['funs']} | "
                  f"{r['message'][:110]}", flush=True)
    from gradfit.oof.solve import BEAM_SNR_LIMIT

    print(f"\nbeam_snr / sqrt(k) per data set (the rule fires below {BEAM_SNR_LIMIT:g}):")
    for d in dict.fromkeys(r["data"] for r in rows):
        v = [r["per_root_k"] for r in rows if r["data"] == d]
        ok = sum(r["success"] for r in rows if r["data"] == d)
        print(f"{d:>9}: {min(v):.2f} - {max(v):.2f}  (success {ok} of {len(v)})")


if __name__ == "__main__":
    main()
