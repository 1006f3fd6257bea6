"""Timing helpers shared by ``gradfit bench`` and the scripts in ``benchmarks/``."""

from __future__ import annotations

import statistics
import time

import numpy as np

__all__ = ["median_time", "fd_value_and_grad"]


def median_time(fn, repeats: int, sync=None, budget_s: float = 10.0, warmup=None,
                 with_min=False):
    """Median wall time of ``fn()`` after one warm-up call (of ``warmup`` if given).

    Stops early (at least one timed call) once ``budget_s`` is spent, so the slow
    NumPy finite-difference cases do not dominate the run. With ``with_min``,
    returns ``(median, min)``: the minimum is the figure least disturbed by other
    processes on a shared machine.
    """
    (warmup or fn)()
    if sync is not None:
        sync()
    times = []
    t_start = time.perf_counter()
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - t_start > budget_s:
            break
    if with_min:
        return float(statistics.median(times)), float(min(times))
    return float(statistics.median(times))


def fd_value_and_grad(f, x):
    """f and its forward-difference gradient with SciPy's '2-point' step: P + 1 calls."""
    x = np.asarray(x, np.float64)
    f0 = f(x)
    h = np.sqrt(np.finfo(np.float64).eps) * np.maximum(1.0, np.abs(x))
    g = np.empty_like(x)
    for i in range(x.size):
        xi = x.copy()
        xi[i] += h[i]
        g[i] = (f(xi) - f0) / h[i]
    return f0, g
