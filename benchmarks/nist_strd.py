"""NIST StRD nonlinear regression: digits reached by gradfit's default least-squares path.

For every problem and both NIST starting points, prints the minimum log relative
error (number of matching significant digits) over the parameters and over the
standard errors, beside scipy.optimize.least_squares(method='lm') with
finite-difference Jacobians (errors from its J at the end, as curve_fit does).

    python benchmarks/nist_strd.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import least_squares

from gradfit import nist

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "nist-strd"


def scipy_fd(prob: nist.NistProblem, start: int):
    model = nist.MODELS[prob.name]

    def resid(b):
        with torch.no_grad():
            return (model(torch.as_tensor(b), torch.as_tensor(prob.x)).numpy() - prob.y)

    b0 = prob.start1 if start == 1 else prob.start2
    t = time.perf_counter()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            r = least_squares(resid, b0, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
            J = r.jac
            dof = prob.y.size - b0.size
            cov = np.linalg.inv(J.T @ J) * (2 * r.cost / dof)
            err = np.sqrt(np.diag(cov))
            b = r.x
        except Exception:  # a crash counts as zero digits
            b = np.full_like(b0, np.nan)
            err = np.full_like(b0, np.nan)
    return b, err, time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the table as JSON to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    print(f"{'problem':10s} {'start':>5s} | {'gradfit: params':>15s} {'errors':>7s} "
          f"{'time s':>7s} | {'scipy-lm FD: params':>19s} {'errors':>7s} {'time s':>7s}")
    for prob in nist.load_all(DATA):
        for start in (1, 2):
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = nist.fit_problem(prob, start)
            tg = time.perf_counter() - t
            dp = float(nist.digits(res.params["b"], prob.certified).min())
            de = float(nist.digits(res.errors["b"], prob.certified_sd).min())
            b, err, ts = scipy_fd(prob, start)
            sp = float(nist.digits(b, prob.certified).min())
            se = float(nist.digits(err, prob.certified_sd).min())
            rows.append(dict(problem=prob.name, start=start, gradfit_param_digits=dp,
                             gradfit_error_digits=de, gradfit_time_s=tg,
                             gradfit_success=bool(res.success), gradfit_nit=res.nit,
                             scipy_param_digits=sp, scipy_error_digits=se, scipy_time_s=ts))
            print(f"{prob.name:10s} {start:5d} | {dp:15.1f} {de:7.1f} {tg:7.3f} | "
                  f"{sp:19.1f} {se:7.1f} {ts:7.3f}")
    n = len(rows)
    g_ok = sum(r["gradfit_param_digits"] >= 7 and r["gradfit_error_digits"] >= 4 for r in rows)
    g_p = sum(r["gradfit_param_digits"] >= 7 for r in rows)
    s_p6 = sum(r["scipy_param_digits"] >= 6 for r in rows)
    g_p6 = sum(r["gradfit_param_digits"] >= 6 for r in rows)
    summary = (f"summary: gradfit {g_ok}/{n} fits with >= 7 digits in every parameter and >= 4 "
               f"in every error ({g_p}/{n} for parameters alone; >= 6 digits: {g_p6}/{n}); "
               f"scipy least_squares(lm, finite differences) >= 6 digits: {s_p6}/{n}")
    print(summary)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
