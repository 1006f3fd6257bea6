"""Observing-strategy design: time to evaluate and to optimise a plan, and a Monte Carlo
check of the predicted errors (simulated and refitted observations).

    python benchmarks/oof_plan.py                 # timings + 3 plans x 50 refits
    python benchmarks/oof_plan.py --mc 0          # timings only
    python benchmarks/oof_plan.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from gradfit.oof import plan as P


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--telescope", default="effelsberg")
    ap.add_argument("--frequency", type=float, default=32e9)
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--snr", type=float, default=300.0)
    ap.add_argument("--criterion", default="A", choices=P.CRITERIA)
    ap.add_argument("--mc", type=int, default=50, help="refits per plan (0: none)")
    ap.add_argument("--json", default=None, help="write the numbers to this file")
    a = ap.parse_args(argv)

    rng = np.random.default_rng(5)
    K = rng.normal(0.0, 0.05, (a.order + 1) * (a.order + 2) // 2)
    K[0] = 0.0
    kw = dict(order=a.order, snr=a.snr, nominal_K=K)
    P.evaluate_plan(a.telescope, a.frequency, **kw)  # warm the aperture grid cache
    t = time.perf_counter()
    P.evaluate_plan(a.telescope, a.frequency, **kw)
    t_eval = time.perf_counter() - t
    t = time.perf_counter()
    r = P.plan(a.telescope, a.frequency, criterion=a.criterion, **kw)
    t_plan = time.perf_counter() - t
    out = {"t_evaluate_s": t_eval, "t_optimise_s": t_plan,
           "n_candidates": len(r.candidates), "plan": r.to_dict()}
    print(r)
    print(f"\none plan evaluated in {t_eval:.3f} s; optimised over {len(r.candidates)} "
          f"candidates in {t_plan:.2f} s")
    if a.mc > 0:
        d = abs(r.recommended.dz_m[2])
        rows = []
        print(f"\nMonte Carlo: {a.mc} simulated and refitted observations per plan "
              f"(SNR {a.snr:g}, order {a.order})")
        print(f"{'plan':<16}{'dz (mm)':>9}{'pred rms σ':>12}{'emp rms err':>13}{'ratio':>8}"
              f"{'worst coeff ratio':>19}")
        for name, dz in (("recommended/2", d / 2), ("recommended", d), ("recommended×2", 2 * d),
                         ("default", P.DEFAULT_DZ_M)):
            ev = P.evaluate_plan(a.telescope, a.frequency, dz=(-dz, 0.0, dz), **kw)
            t = time.perf_counter()
            ks = P.simulate_refits(ev, a.telescope, a.frequency, order=a.order, n=a.mc,
                                   nominal_K=K, seed=11)
            dt = time.perf_counter() - t
            emp = np.sqrt(np.mean((ks - K[1:]) ** 2, axis=0))
            pred = ev.sigma_K_waves
            rp, re_ = float(np.sqrt(np.mean(pred**2))), float(np.sqrt(np.mean(emp**2)))
            worst = float(np.max(np.abs(emp / pred - 1)))
            rows.append({"plan": name, "dz_m": dz, "pred_rms_sigma_waves": rp,
                         "emp_rms_error_waves": re_, "ratio": re_ / rp,
                         "worst_coeff_rel_dev": worst, "fit_time_s": dt / a.mc})
            print(f"{name:<16}{dz * 1e3:>9.3f}{rp:>12.5f}{re_:>13.5f}{re_ / rp:>8.3f}"
                  f"{worst:>19.2f}")
        out["monte_carlo"] = rows
        b = {r_["plan"]: r_ for r_ in rows}
        for other in ("recommended/2", "recommended×2", "default"):
            pg = b[other]["pred_rms_sigma_waves"] / b["recommended"]["pred_rms_sigma_waves"]
            eg = b[other]["emp_rms_error_waves"] / b["recommended"]["emp_rms_error_waves"]
            print(f"recommended vs {other}: predicted {pg:.3f}x smaller error, "
                  f"measured {eg:.3f}x (MC standard error about "
                  f"{100 * np.sqrt(1 / a.mc):.0f}% per ratio)")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
