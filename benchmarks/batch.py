"""Many small fits at once: gradfit.fit_batch against loops of gradfit.fit and curve_fit.

The standard batched-fitting problem (as Gpufit's): a rotated elliptical 2-D
Gaussian on a constant background, 7 parameters, 15 x 15 pixels, with Gaussian
noise (least squares) and with Poisson noise (Poisson likelihood), each problem
started from its own perturbed truth. Side by side in one run:

* ``fit_batch`` on the CPU (and on CUDA where a GPU is present) for B = 1e2 ... 1e5:
  the torch engine with autodiff columns and with the model's own Jacobian, and the
  compiled engine (``engine="numba"``, where Numba is installed: it uses Numba's threads,
  all cores by default, so compare per CPU second too);
* a loop of ``gradfit.fit`` and a loop of ``scipy.optimize.curve_fit``, timed on
  the first ``--loop-n`` problems and reported per fit;
* the largest relative difference of values and errors between ``fit_batch``
  and the ``gradfit.fit`` loop (and, for Gaussian noise, ``curve_fit`` run with
  tight tolerances) over the problems where both converged.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/batch.py --max-b 10000 --json out.json
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/batch.py --repeat 3   # shared machine

One small ``gradfit.fit`` beside ``curve_fit``, and where its time goes:
``benchmarks/small_fit.py``.

Gpufit (Przybylski et al. 2017, Sci. Rep. 7:15722): its abstract reports a speed-up
of up to 42x over the same LM algorithm on a CPU (Cpufit). The published throughput
found for it is the example output in the readme of its bundled benchmark
(examples/Gpufit_Cpufit_Performance_Comparison_readme.txt in github.com/gpufit/Gpufit,
read from the source of that program): a smaller problem than this one (GAUSS_2D,
5 parameters, circular, 5x5 points, single precision, at most 10 iterations, tolerance
1e-4), Cpufit about 6.0e4 fits/s and Gpufit about 2.5e6-3.0e6 fits/s for 1e6-1e7
fits. The readme does not name the CPU or GPU, so the hardware cannot be given; the
numbers are quoted as published, not measured here.
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
               "same LM on a CPU (abstract). Published example output of its bundled benchmark "
               "(a smaller problem: 5-parameter circular 2-D Gaussian, 5x5 points, float32, "
               "<= 10 iterations): Cpufit ~6.0e4 fits/s, Gpufit ~2.5e6-3.0e6 fits/s at 1e6-1e7 "
               "fits; hardware not named there; not measured here")


def gauss2d(p, x):
    dx, dy = x[0] - p["x0"], x[1] - p["y0"]
    c, s = torch.cos(p["th"]), torch.sin(p["th"])
    u, v = c * dx + s * dy, -s * dx + c * dy
    return p["amp"] * torch.exp(-0.5 * ((u / p["sx"]) ** 2 + (v / p["sy"]) ** 2)) + p["bg"]


def gauss2d_jac(p, x):
    """The model and its exact derivatives (as Gpufit's models carry them)."""
    dx, dy = x[0] - p["x0"], x[1] - p["y0"]
    c, s = torch.cos(p["th"]), torch.sin(p["th"])
    u, v = c * dx + s * dy, -s * dx + c * dy
    a, b = u / p["sx"], v / p["sy"]
    e = torch.exp(-0.5 * (a * a + b * b))
    g = p["amp"] * e
    gu, gv = -g * a / p["sx"], -g * b / p["sy"]  # dg/du, dg/dv
    d = {"amp": e, "x0": -c * gu + s * gv, "y0": -s * gu - c * gv,
         "sx": g * a * a / p["sx"], "sy": g * b * b / p["sy"], "th": gu * v - gv * u,
         "bg": torch.ones_like(e)}
    return g + p["bg"], d


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


def run_batch(Y, P0, lik, device, chunk, jac=False, dtype="float64", engine="torch"):
    import gradfit

    params = {n: P0[:, k] for k, n in enumerate(NAMES)}
    kw = {"jacobian": gauss2d_jac} if jac else {}
    kw["engine"] = engine
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gradfit.FitWarning)
        res = gradfit.fit_batch(gauss2d, X, Y, params=params, likelihood=lik, device=device,
                                chunk_size=chunk, dtype=dtype, **kw)
    if device == "cuda":
        torch.cuda.synchronize()
    return res, time.perf_counter() - t0


def run_fit_loop(Y, P0, lik):
    import gradfit

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gradfit.FitWarning)
        gradfit.fit(gauss2d, X, Y[0], params=dict(zip(NAMES, P0[0])), likelihood=lik)  # warm-up
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gradfit.FitWarning)
        for i in range(len(Y)):
            r = gradfit.fit(gauss2d, X, Y[i], params=dict(zip(NAMES, P0[i])), likelihood=lik)
            out.append(r)
    return out, (time.perf_counter() - t0) / len(Y)


def run_curve_fit_loop(Y, P0, tight=False, cpu=False):
    from scipy.optimize import OptimizeWarning, curve_fit

    out = []
    kw = {"ftol": 1e-14, "xtol": 1e-14, "gtol": 1e-14} if tight else {}
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        for i in range(len(Y)):
            try:
                popt, pcov = curve_fit(gauss2d_np, X, Y[i], p0=P0[i], **kw)
                out.append((popt, np.sqrt(np.diag(pcov))))
            except RuntimeError:
                out.append(None)
    if cpu:
        return out, (time.perf_counter() - t0) / len(Y), (time.process_time() - c0) / len(Y)
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-b", type=float, default=1e5,
                    help="largest batch size (B = 1e2, 1e3, ... up to this); default 1e5")
    ap.add_argument("--loop-n", type=int, default=30,
                    help="problems timed in the loops of gradfit.fit and curve_fit (default 30)")
    ap.add_argument("--noise", default="gaussian,poisson", help="gaussian,poisson")
    ap.add_argument("--chunk", type=int, default=None, help="fit_batch chunk_size")
    ap.add_argument("--repeat", type=int, default=1,
                    help="time each row this many times beside curve_fit's loop, keep the "
                         "fastest of each (default 1)")
    ap.add_argument("--json", default=None, help="write the results as JSON to this file")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: as torch starts, 1 with OMP_NUM_THREADS=1)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [b for b in (100, 1000, 10_000, 100_000) if b <= args.max_b]
    if not sizes:
        ap.error("--max-b must be at least 100")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    from gradfit.solvers import native
    has_numba = native.available()
    if not has_numba:
        print("Numba is not installed: no engine='numba' rows (pip install numba)",
              file=sys.stderr)
    rows = []
    report = {"problem": "rotated 2-D Gaussian + background, 7 parameters, 15x15 pixels",
              "torch_threads": torch.get_num_threads(), "devices": devices,
              "numba_threads": native.numba_threads() if has_numba else None,
              "gpufit": GPUFIT_NOTE, "rows": rows}
    print(f"threads={torch.get_num_threads()}  devices={devices}  "
          f"numba threads={report['numba_threads']}", file=sys.stderr)
    for noise in args.noise.split(","):
        lik = "poisson" if noise == "poisson" else "gaussian"
        Ymax, P0max = problems(max(sizes + [args.loop_n]), noise)
        nl = args.loop_n
        loop_fit, t_fit = run_fit_loop(Ymax[:nl], P0max[:nl], lik)
        loop_cf, t_cf = run_curve_fit_loop(Ymax[:nl], P0max[:nl])
        ref_cf = run_curve_fit_loop(Ymax[:nl], P0max[:nl], tight=True)[0] \
            if noise == "gaussian" else None
        for jac in (False, True):
            run_batch(Ymax[:10], P0max[:10], lik, "cpu", args.chunk, jac)  # warm-up
        if has_numba:  # its compile (cached on disk) and its threads, outside the timing
            run_batch(Ymax[:100], P0max[:100], lik, "cpu", args.chunk, engine="numba")
        ways = [(False, "torch"), (True, "torch")] + ([(False, "numba")] if has_numba else [])
        for dev, B, (jac, eng) in [(d, b, w) for d in devices for b in sizes for w in ways
                                   if d == "cpu" or w[1] == "torch"]:
            # curve_fit's loop is re-timed beside each row (the load changes), and with
            # --repeat both alternate and each keeps its fastest round
            t_cf = c_cf = t = cpu = math.inf
            for _ in range(max(1, args.repeat)):
                _, tc, cc = run_curve_fit_loop(Ymax[:nl], P0max[:nl], cpu=True)
                t_cf, c_cf = min(t_cf, tc), min(c_cf, cc)
                c0 = time.process_time()
                res, tb = run_batch(Ymax[:B], P0max[:B], lik, dev, args.chunk, jac,
                                    engine=eng)
                t, cpu = min(t, tb), min(cpu, time.process_time() - c0)
            sub = res if B >= nl else None
            row = {"noise": noise, "device": dev, "B": B,
                   "jacobian": "model" if jac else "autodiff", "engine": eng,
                   "how": "numba" if eng == "numba" else ("model J" if jac else "autodiff"),
                   "time_s": t, "cpu_s": cpu, "fits_per_s": B / t,
                   "success_frac": float(res.success.mean()),
                   "median_nit": float(np.median(res.nit)),
                   "loop_fit_per_s": 1 / t_fit, "loop_curve_fit_per_s": 1 / t_cf,
                   "speedup_vs_fit_loop": (B / t) * t_fit,
                   "speedup_vs_curve_fit_loop": (B / t) * t_cf,
                   # per CPU second of this process (steadier on a shared machine)
                   "fits_per_cpu_s": B / cpu, "loop_curve_fit_per_cpu_s": 1 / c_cf,
                   "speedup_vs_curve_fit_loop_cpu": (B / cpu) * c_cf}
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
    return (f"{r['noise']:8s} {r['device']:4s} {r['how']:8s} B={r['B']:>6d}  "
            f"{r['fits_per_s']:9.0f} fits/s  "
            f"x{r['speedup_vs_curve_fit_loop']:.1f} vs curve_fit loop, "
            f"x{r['speedup_vs_fit_loop']:.1f} vs fit loop")


def table(rows):
    head = (f"{'noise':8s} {'dev':4s} {'how':8s} {'B':>6s} {'fits/s':>9s} "
            f"{'fit loop/s':>10s} "
            f"{'curve_fit/s':>11s} {'x curve_fit':>11s} {'x fit':>7s} "
            f"{'fits/cpu-s':>10s} {'x cf (cpu)':>10s} {'ok':>5s} "
            f"{'dv(fit)':>8s} {'de(fit)':>8s} {'dv(cf)':>8s} {'de(cf)':>8s}")
    lines = [head]
    for r in rows:
        def g(k, r=r):
            v = r.get(k)
            return f"{v:8.1e}" if v is not None else f"{'-':>8s}"
        lines.append(
            f"{r['noise']:8s} {r['device']:4s} {r['how']:8s} {r['B']:>6d} "
            f"{r['fits_per_s']:9.0f} "
            f"{r['loop_fit_per_s']:10.1f} {r['loop_curve_fit_per_s']:11.1f} "
            f"{r['speedup_vs_curve_fit_loop']:11.1f} {r['speedup_vs_fit_loop']:7.1f} "
            f"{r['fits_per_cpu_s']:10.0f} {r['speedup_vs_curve_fit_loop_cpu']:10.1f} "
            f"{r['success_frac']:5.3f} {g('max_rel_value_vs_fit')} {g('max_rel_error_vs_fit')} "
            f"{g('max_rel_value_vs_curve_fit')} {g('max_rel_error_vs_curve_fit')}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
