"""Where one small gradfit.fit spends its time, beside scipy's curve_fit.

The problem of ``benchmarks/batch.py``: a rotated 2-D Gaussian on a constant
background, 7 parameters, 15 x 15 pixels, Gaussian noise, least squares, default
method. In one process it times, alternating rounds and keeping each one's fastest
(the machine may be shared):

* a loop of ``gradfit.fit`` and a loop of ``scipy.optimize.curve_fit`` (ms per fit, wall
  clock and CPU time) and their ratio; where Numba is installed, also a loop of
  ``gradfit.fit(..., engine="numba")`` (the compiled engine; its first fit compiles the
  model, outside the timing) and its ratio;
* the breakdown of a fit, timed inside the fits: set-up (``build_problem``), the
  Jacobians, the trial residuals, the rest of the Levenberg–Marquardt loop and polish,
  and what follows the solver (the value at the end, the covariance, the result);
  beside it the cost of one Jacobian and one residual vector, and the solver alone
  (the same fits replayed with their residuals and Jacobians cached);
* the largest relative difference of values and errors from ``curve_fit`` run at
  tight tolerances (1e-14), for both engines.

``--compare SRC`` runs this script again under ``PYTHONPATH=SRC`` (another checkout's
``src``, e.g. the code before a change) in alternation with this one, so that both
lines come from the same minutes of a noisy machine::

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/small_fit.py
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/small_fit.py --compare ../main/src
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch import NAMES, X, gauss2d, problems, run_curve_fit_loop  # noqa: E402


def _best_of(runs: dict, rounds: int) -> dict:
    """Alternate the callables over ``rounds`` rounds; fastest (wall, cpu) seconds of each."""
    best = {k: (math.inf, math.inf) for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            w, c = time.perf_counter() - t0, time.process_time() - c0
            best[k] = (min(best[k][0], w), min(best[k][1], c))
    return best


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))
                        / np.maximum(np.abs(np.asarray(b)), 1e-300)))


def measure(n: int = 20, rounds: int = 7, breakdown: bool = True) -> dict:
    import torch

    import gradfit
    from gradfit.fitting import build_problem

    Y, P0 = problems(n, "gaussian", seed=1)
    starts = [dict(zip(NAMES, P0[i])) for i in range(n)]

    def fits():
        return [gradfit.fit(gauss2d, X, Y[i], params=starts[i]) for i in range(n)]

    fits()  # warm-up
    run_curve_fit_loop(Y[:2], P0[:2])
    runs = {"fit": fits, "curve_fit": lambda: run_curve_fit_loop(Y, P0)}
    # (an older checkout under --compare has no engine; Numba is an optional extra)
    has_numba = "engine" in inspect.signature(gradfit.fit).parameters and \
        importlib.util.find_spec("numba") is not None
    if has_numba:
        def fits_numba():
            return [gradfit.fit(gauss2d, X, Y[i], params=starts[i], engine="numba")
                    for i in range(n)]

        fits_numba()  # its compile (cached on disk), outside the timing
        runs["fit_numba"] = fits_numba
    best = _best_of(runs, rounds)
    out = {"gradfit": gradfit.__file__, "torch_threads": torch.get_num_threads(), "n": n}
    for k, (w, c) in best.items():
        out[f"{k}_ms"] = 1e3 * w / n
        out[f"{k}_cpu_ms"] = 1e3 * c / n
    out["ratio"] = out["fit_ms"] / out["curve_fit_ms"]
    out["ratio_cpu"] = out["fit_cpu_ms"] / out["curve_fit_cpu_ms"]
    if has_numba:
        out["ratio_numba"] = out["fit_numba_ms"] / out["curve_fit_ms"]
        out["ratio_numba_cpu"] = out["fit_numba_cpu_ms"] / out["curve_fit_cpu_ms"]
        nat = fits_numba()

    res = fits()
    ref = run_curve_fit_loop(Y, P0, tight=True)[0]
    ok = [i for i in range(n) if res[i].success and ref[i] is not None]
    out["max_rel_value_vs_curve_fit"] = max(
        _rel([res[i].params[k] for k in NAMES], ref[i][0]) for i in ok)
    out["max_rel_error_vs_curve_fit"] = max(
        _rel([res[i].errors[k] for k in NAMES], ref[i][1]) for i in ok)
    out["jacobians_per_fit"] = float(np.mean([r.njev for r in res]))
    if has_numba:
        out["max_rel_value_numba_vs_curve_fit"] = max(
            _rel([nat[i].params[k] for k in NAMES], ref[i][0]) for i in ok)
        out["max_rel_error_numba_vs_curve_fit"] = max(
            _rel([nat[i].errors[k] for k in NAMES], ref[i][1]) for i in ok)
    if not breakdown:
        return out

    # the same fits with timers around their parts: fastest round of the whole loop
    out.update(_parts(fits, rounds, n))
    prob = build_problem(gauss2d, X, Y[0], starts[0])
    obj = prob.objective()
    z = obj.as_tensor(P0[0])
    k = 20
    one = _best_of({"jacobian": lambda: [obj.residuals_and_jacobian(z) for _ in range(k)],
                    "residuals": lambda: [obj.residuals(z) for _ in range(k)]}, rounds)
    out["one_jacobian_ms"] = 1e3 * one["jacobian"][0] / k
    out["one_residuals_ms"] = 1e3 * one["residuals"][0] / k
    out["lm_replayed_ms"] = _lm_overhead(Y, P0, starts, rounds)
    return out


def _parts(fits, rounds: int, n: int) -> dict:
    """ms per fit in set-up, solver (Jacobians, residuals, the rest of LM) and after it,
    timed inside real fits (the round with the fastest total)."""
    import gradfit.fitting as fitting
    from gradfit import solvers
    from gradfit.objective import Objective

    acc: dict = {}
    calls: dict = {}

    def timed(fn, key):
        def call(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                acc[key] = acc.get(key, 0.0) + time.perf_counter() - t0
                calls[key] = calls.get(key, 0) + 1
        return call

    saved = [(fitting, "build_problem"), (solvers, "solve"),
             (Objective, "residuals_and_jacobian"), (Objective, "residuals")]
    originals = [getattr(o, a) for o, a in saved]
    for (o, a), f in zip(saved, originals):
        setattr(o, a, timed(f, a))
    best = None
    try:
        for _ in range(rounds):
            acc.clear()
            calls.clear()
            t0 = time.perf_counter()
            fits()
            total = time.perf_counter() - t0
            if best is None or total < best[0]:
                best = (total, dict(acc), dict(calls))
    finally:
        for (o, a), f in zip(saved, originals):
            setattr(o, a, f)
    total, acc, calls = best
    ms = {k: 1e3 * v / n for k, v in acc.items()}
    return {"trial_residuals_per_fit": calls["residuals"] / n,
            "timed_fit_ms": 1e3 * total / n,
            "setup_ms": ms["build_problem"],
            "jacobians_ms": ms["residuals_and_jacobian"],
            "trial_residuals_ms": ms["residuals"],
            "lm_rest_ms": ms["solve"] - ms["residuals_and_jacobian"] - ms["residuals"],
            "after_solver_ms": 1e3 * total / n - ms["build_problem"] - ms["solve"]}


def _lm_overhead(Y, P0, starts, rounds) -> float:
    """ms per fit of the solver alone: the fits replayed with every residual vector and
    Jacobian they asked for cached (a dictionary look-up remains)."""
    from gradfit.fitting import build_problem
    from gradfit.solvers import SolverOptions, solve

    runs = []
    for i in range(len(Y)):
        prob = build_problem(gauss2d, X, Y[i], starts[i])
        obj = prob.objective()
        cache = {}

        def cached(fn, tag, obj=obj, cache=cache):
            def call(z, **_):
                key = (tag, obj.as_tensor(z).numpy().tobytes())
                if key not in cache:
                    cache[key] = fn(z)
                return cache[key]
            return call

        obj.residuals_and_jacobian = cached(obj.residuals_and_jacobian, "J")
        obj.residuals = cached(obj.residuals, "r")
        z0 = obj.as_tensor(P0[i])
        solve("lm", obj, z0, SolverOptions())  # fills the cache
        runs.append((obj, z0))
    best = _best_of({"lm": lambda: [solve("lm", o, z, SolverOptions()) for o, z in runs]},
                    rounds)
    return 1e3 * best["lm"][0] / len(runs)


def compare(other_src: str, repeats: int = 3) -> dict:
    """This script under ``PYTHONPATH=other_src`` and under this checkout's ``src``, in
    alternation, ``repeats`` times each; the fastest ratio of each."""
    here = str(Path(__file__).resolve().parents[1] / "src")
    lines = {"before": [], "after": []}
    for _ in range(repeats):
        for tag, src in (("before", other_src), ("after", here)):
            env = dict(os.environ, PYTHONPATH=src, OMP_NUM_THREADS="1")
            proc = subprocess.run([sys.executable, __file__, "--json-stdout", "--no-breakdown"],
                                  env=env, capture_output=True, text=True, check=True)
            lines[tag].append(json.loads(proc.stdout))
    out = {}
    for tag, rows in lines.items():
        row = min(rows, key=lambda r: r["ratio"])
        out[tag] = {k: row[k] for k in ("gradfit", "fit_ms", "curve_fit_ms", "ratio",
                                         "fit_cpu_ms", "curve_fit_cpu_ms", "ratio_cpu",
                                         "jacobians_per_fit", "max_rel_value_vs_curve_fit",
                                         "max_rel_error_vs_curve_fit")}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20, help="fits per timed loop (default 20)")
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    ap.add_argument("--compare", metavar="SRC", default=None,
                    help="also run under PYTHONPATH=SRC, alternating with this checkout")
    ap.add_argument("--no-breakdown", action="store_true", help="only the loops")
    ap.add_argument("--json", default=None, help="write the results as JSON to this file")
    ap.add_argument("--json-stdout", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.compare:
        result = compare(args.compare)
        for tag, row in result.items():
            print(f"{tag}: {row['gradfit']}")
            for k, v in row.items():
                if k != "gradfit":
                    print(f"  {k:30s} {v:10.3g}")
    else:
        result = measure(args.n, args.rounds, breakdown=not args.no_breakdown)
        if args.json_stdout:
            print(json.dumps(result))
            return 0
        for k, v in result.items():
            print(f"{k:30s} {v:10.3g}" if isinstance(v, float) else f"{k:30s} {v}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
