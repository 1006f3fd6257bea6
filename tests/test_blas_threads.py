"""A CPU fit runs NumPy's BLAS on one thread (its small linear algebra stalls on a busy
machine otherwise: see gradfit.solvers.blas) and gives the threads back afterwards."""

from __future__ import annotations

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

import gradfit


def _blas_threads() -> list[int]:
    return [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]


def _data(n_points: int):
    x = np.linspace(0.0, 3.0, n_points)
    rng = np.random.default_rng(0)
    return x, 2.0 * np.exp(-1.3 * x) + 0.5 * np.cos(4.0 * x) + 0.01 * rng.standard_normal(x.size)


def _fit(n_points: int, seen: list):
    x, y = _data(n_points)

    def model(p, x):
        seen.append(_blas_threads())  # at every evaluation (set-up, solver, errors)
        return p["a"] * torch.exp(-p["k"] * x) + p["b"] * torch.cos(p["w"] * x)

    return gradfit.fit(model, x, y, params={"a": 1.5, "k": 1.0, "b": 0.4, "w": 3.9})


def test_a_large_cpu_fit_limits_blas_to_one_thread_and_restores_it():
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        assert before and all(n == 2 for n in before)
        seen: list = []
        res = _fit(6000, seen)  # 6000 x 4 = 24000 >= BLAS_LIMIT_MIN
        assert res.success
        # the solver's and the errors' evaluations (the set-up's come before)
        inside = [t for t in seen if t and all(n == 1 for n in t)]
        assert len(inside) >= res.nfev // 2 and seen[-1] == inside[-1]
        assert _blas_threads() == before
        # a small fit leaves the threads as they are (the limit would only cost time)
        seen = []
        _fit(200, seen)
        assert seen and all(t == before for t in seen)
    # the answer does not depend on it: a reference fit by scipy
    from scipy.optimize import curve_fit

    x, y = _data(6000)
    ref, _ = curve_fit(lambda x, a, k, b, w: a * np.exp(-k * x) + b * np.cos(w * x), x, y,
                       p0=[1.5, 1.0, 0.4, 3.9], xtol=1e-14, ftol=1e-14)
    got = [res.params[n] for n in ("a", "k", "b", "w")]
    np.testing.assert_allclose(got, ref, rtol=1e-7)
