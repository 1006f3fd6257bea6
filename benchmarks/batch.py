"""Many small fits at once: gradfit.fit_batch against loops of gradfit.fit and curve_fit.

The standard batched-fitting problem (as Gpufit's): a rotated elliptical 2-D
Gaussian on a constant background, 7 parameters, 15 x 15 pixels, with Gaussian
noise (least squares) and with Poisson noise (Poisson likelihood), each problem
started from its own perturbed truth. Side by side in one run:

* ``fit_batch`` on the CPU (and on CUDA where a GPU is present) for B = 1e2 ... 1e5;
* a loop of ``gradfit.fit`` and a loop of ``scipy.optimize.curve_fit``, timed on
  the first ``--loop-n`` problems and reported per fit;
* the largest relative difference of values and errors between ``fit_batch``
  and the ``gradfit.fit`` loop (and, for Gaussian noise, ``curve_fit`` run with
  tight tolerances) over the problems where both converged.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/batch.py --max-b 10000 --json out.json
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/batch.py --single   # one small fit

Gpufit (Przybylski et al. 2017, Sci. Rep. 7:15722): its abstract reports a speed-up
of up to 42x over the same LM algorithm on a CPU (Cpufit). Its absolute throughput
for this problem, and the hardware it was measured on, were not verified here
(not found in the reference material available to this benchmark), so no number
is quoted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings

import numpy as np
import torch

N = 15
NAMES = ["amp", "x0", "y0", "sx", "sy", "th", "bg"]
TRUTH = np.array([500.0, 7.0, 7.0, 1.8, 1.4, 0.4, 20.0])
SPREAD = np.array([20.0, 0.3, 0.3, 0.1, 0.1, 0.05, 1.0])
_yy, _xx = np.meshgrid(np.arange(N, dtype=float), np.arange(N, dtype=float), indexing="ij")
X = np.stack([_xx.ravel(), _yy.ravel()])
GPUFIT_NOTE = ("Gpufit (Przybylski et al. 2017, Sci. Rep. 7:15722): up to 42x faster than the "
               "same LM on a CPU (abstract); its fits/s for this problem and the hardware were "
               "not verified here")


def gauss2d(p, x):
    dx, dy = x[0] - p["x0"], x[1] - p["y0"]
    c, s = torch.cos(p["th"]), torch.sin(p["th"])
    u, v = c * dx + s * dy, -s * dx + c * dy
    return p["amp"] * torch.exp(-0.5 * ((u / p["sx"]) ** 2 + (v / p["sy"]) ** 2)) + p["bg"]


def gauss2d_np(x, amp, x0, y0, sx, sy, th, bg):
    dx, dy = x[0] - x0, x[1] - y0
    c, s = np.cos(th), np.sin(th)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return amp * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2)) + bg


def problems(B, noise, seed=0):
    rng = np.random.default_rng(seed)
    T = TRUTH + rng.normal(0, 1, (B, 7)) * SPREAD
    dx, dy = X[0][None] - T[:, 1:2], X[1][None] - T[:, 2:3]
    c, s = np.cos(T[:, 5:6]), np.sin(T[:, 5:6])
    u, v = c * dx + s * dy, -s * dx + c * dy
    mu = T[:, :1] * np.exp(-0.5 * ((u / T[:, 3:4]) ** 2 + (v / T[:, 4:5]) ** 2)) + T[:, 6:7]
    Y = rng.poisson(mu).astype(float) if noise == "poisson" else mu + rng.normal(0, 5.0, mu.shape)
    P0 = T * (1 + 0.03 * rng.standard_normal((B, 7))) + 0.01
    return Y, P0


def run_batch(Y, P0, lik, device, chunk):
    import gradfit

    params = {n: P0[:, k] for k, n in enumerate(NAMES)}
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gradfit.FitWarning)
        res = gradfit.fit_batch(gauss2d, X, Y, params=params, likelihood=lik, device=device,
                                chunk_size=chunk)
    if device == "cuda":
        torch.cuda.synchronize()
    return res, time.perf_counter() - t0


def run_fit_loop(Y, P0, lik):
    import gradfit

    out = []
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gradfit.FitWarning)
        for i in range(len(Y)):
            r = gradfit.fit(gauss2d, X, Y[i], params=dict(zip(NAMES, P0[i])), likelihood=lik)
            out.append(r)
    return out, (time.perf_counter() - t0) / len(Y)


def run_curve_fit_loop(Y, P0, tight=False):
    from scipy.optimize import OptimizeWarning, curve_fit

    out = []
    kw = {"ftol": 1e-14, "xtol": 1e-14, "gtol": 1e-14} if tight else {}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        for i in range(len(Y)):
            try:
                popt, pcov = curve_fit(gauss2d_np, X, Y[i], p0=P0[i], **kw)
                out.append((popt, np.sqrt(np.diag(pcov))))
            except RuntimeError:
                out.append(None)
    return out, (time.perf_counter() - t0) / len(Y)


def _rel(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def max_rel_diff(batch, refs, getter):
    """Largest relative difference of values and errors where both converged."""
    worst_v = worst_e = 0.0
    n = 0
    for i, ref in enumerate(refs):
        got = getter(ref)
        if got is None or not batch.success[i]:
            continue
        vals, errs = got
        n += 1
        for k, name in enumerate(NAMES):
            worst_v = max(worst_v, _rel(batch.params[name][i], vals[k]))
            if math.isfinite(errs[k]):
                worst_e = max(worst_e, _rel(batch.errors[name][i], errs[k]))
    return worst_v, worst_e, n


def single_fit_profile(n=20):
    """Where one small gradfit.fit spends its time, beside curve_fit (ms per fit)."""
    import gradfit
    from gradfit.fitting import build_problem

    Y, P0 = problems(n, "gaussian", seed=1)
    gradfit.fit(gauss2d, X, Y[0], params=dict(zip(NAMES, P0[0])))  # warm-up
    out = {}
    for label, opts in (("fit", None), ("fit_no_polish", {"polish": False})):
        t0 = time.perf_counter()
        for i in range(n):
            r = gradfit.fit(gauss2d, X, Y[i], params=dict(zip(NAMES, P0[i])), options=opts)
        out[label + "_ms"] = 1e3 * (time.perf_counter() - t0) / n
        out[label + "_jacobians_per_fit"] = r.njev
    out["curve_fit_ms"] = 1e3 * run_curve_fit_loop(Y, P0)[1]
    prob = build_problem(gauss2d, X, Y[0], dict(zip(NAMES, P0[0])))
    obj = prob.objective()
    z = obj.as_tensor(P0[0])
    k = 50
    t0 = time.perf_counter()
    for _ in range(k):
        obj.residuals(z)
    out["residuals_ms"] = 1e3 * (time.perf_counter() - t0) / k
    t0 = time.perf_counter()
    for _ in range(k):
        obj.residuals_and_jacobian(z)
    out["jacobian_ms"] = 1e3 * (time.perf_counter() - t0) / k
    t0 = time.perf_counter()
    for i in range(n):
        build_problem(gauss2d, X, Y[i], dict(zip(NAMES, P0[i])))
    out["setup_ms"] = 1e3 * (time.perf_counter() - t0) / n
    out["fit_over_curve_fit"] = out["fit_ms"] / out["curve_fit_ms"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-b", type=float, default=1e5,
                    help="largest batch size (B = 1e2, 1e3, ... up to this); default 1e5")
    ap.add_argument("--loop-n", type=int, default=30,
                    help="problems timed in the loops of gradfit.fit and curve_fit (default 30)")
    ap.add_argument("--noise", default="gaussian,poisson", help="gaussian,poisson")
    ap.add_argument("--chunk", type=int, default=None, help="fit_batch chunk_size")
    ap.add_argument("--json", default=None, help="write the results as JSON to this file")
    ap.add_argument("--single", action="store_true",
                    help="only profile one small gradfit.fit beside curve_fit")
    args = ap.parse_args(argv)
    if args.single:
        prof = single_fit_profile()
        for k, v in prof.items():
            print(f"{k:32s} {v:10.3f}")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(prof, fh, indent=2)
        return 0
    sizes = [b for b in (100, 1000, 10_000, 100_000) if b <= args.max_b]
    if not sizes:
        ap.error("--max-b must be at least 100")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    report = {"problem": "rotated 2-D Gaussian + background, 7 parameters, 15x15 pixels",
              "torch_threads": torch.get_num_threads(), "devices": devices,
              "gpufit": GPUFIT_NOTE, "rows": rows}
    print(f"threads={torch.get_num_threads()}  devices={devices}", file=sys.stderr)
    for noise in args.noise.split(","):
        lik = "poisson" if noise == "poisson" else "gaussian"
        Ymax, P0max = problems(max(sizes + [args.loop_n]), noise)
        nl = args.loop_n
        loop_fit, t_fit = run_fit_loop(Ymax[:nl], P0max[:nl], lik)
        loop_cf, t_cf = run_curve_fit_loop(Ymax[:nl], P0max[:nl])
        ref_cf = run_curve_fit_loop(Ymax[:nl], P0max[:nl], tight=True)[0] \
            if noise == "gaussian" else None
        run_batch(Ymax[:10], P0max[:10], lik, "cpu", args.chunk)  # warm-up
        for dev in devices:
            for B in sizes:
                res, t = run_batch(Ymax[:B], P0max[:B], lik, dev, args.chunk)
                sub = res if B >= nl else None
                row = {"noise": noise, "device": dev, "B": B, "time_s": t, "fits_per_s": B / t,
                       "success_frac": float(res.success.mean()),
                       "median_nit": float(np.median(res.nit)),
                       "loop_fit_per_s": 1 / t_fit, "loop_curve_fit_per_s": 1 / t_cf,
                       "speedup_vs_fit_loop": (B / t) * t_fit,
                       "speedup_vs_curve_fit_loop": (B / t) * t_cf}
                if sub is not None:
                    head = _Head(res, nl)
                    v, e, n = max_rel_diff(head, loop_fit, lambda r: (
                        [r.params[k] for k in NAMES], [r.errors[k] for k in NAMES])
                        if r.success else None)
                    row.update(max_rel_value_vs_fit=v, max_rel_error_vs_fit=e, compared_fit=n)
                    if ref_cf is not None:
                        v, e, n = max_rel_diff(head, ref_cf, lambda r: r)
                        row.update(max_rel_value_vs_curve_fit=v, max_rel_error_vs_curve_fit=e,
                                   compared_curve_fit=n)
                rows.append(row)
                print(_fmt(row), file=sys.stderr)
    print(table(rows))
    print(GPUFIT_NOTE)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


class _Head:
    """The first n problems of a BatchResult (params, errors, success)."""

    def __init__(self, res, n):
        self.params = {k: v[:n] for k, v in res.params.items()}
        self.errors = {k: v[:n] for k, v in res.errors.items()}
        self.success = res.success[:n]


def _fmt(r):
    return (f"{r['noise']:8s} {r['device']:4s} B={r['B']:>6d}  {r['fits_per_s']:9.0f} fits/s  "
            f"x{r['speedup_vs_curve_fit_loop']:.1f} vs curve_fit loop, "
            f"x{r['speedup_vs_fit_loop']:.1f} vs fit loop")


def table(rows):
    head = (f"{'noise':8s} {'dev':4s} {'B':>6s} {'fits/s':>9s} {'fit loop/s':>10s} "
            f"{'curve_fit/s':>11s} {'x curve_fit':>11s} {'x fit':>7s} {'ok':>5s} "
            f"{'dv(fit)':>8s} {'de(fit)':>8s} {'dv(cf)':>8s} {'de(cf)':>8s}")
    lines = [head]
    for r in rows:
        def g(k, r=r):
            v = r.get(k)
            return f"{v:8.1e}" if v is not None else f"{'-':>8s}"
        lines.append(
            f"{r['noise']:8s} {r['device']:4s} {r['B']:>6d} {r['fits_per_s']:9.0f} "
            f"{r['loop_fit_per_s']:10.1f} {r['loop_curve_fit_per_s']:11.1f} "
            f"{r['speedup_vs_curve_fit_loop']:11.1f} {r['speedup_vs_fit_loop']:7.1f} "
            f"{r['success_frac']:5.3f} {g('max_rel_value_vs_fit')} {g('max_rel_error_vs_fit')} "
            f"{g('max_rel_value_vs_curve_fit')} {g('max_rel_error_vs_curve_fit')}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
