"""Seeded statistical checks: robust likelihoods resist outliers; errors are honest."""

import numpy as np
import pytest
import torch

import gradfit


def line(p, x):
    return p["m"] * x + p["b"]


def test_robust_likelihoods_resist_gross_outliers():
    rng = np.random.default_rng(7)
    x = np.linspace(0, 10, 100)
    y = 2.0 * x + 1.0 + rng.normal(0, 0.5, x.size)
    bad = rng.choice(x.size, 20, replace=False)
    y[bad] += rng.uniform(15, 40, bad.size)  # 20% gross outliers, one-sided
    start = {"m": 1.0, "b": 0.0}
    gauss = gradfit.fit(line, x, y, params=start, likelihood=gradfit.Gaussian(sigma=0.5))
    cauchy = gradfit.fit(line, x, y, params=start, likelihood="cauchy")
    student = gradfit.fit(line, x, y, params=start, likelihood=gradfit.StudentT(nu=2))
    for res in (cauchy, student):
        assert res.success, res.message
        assert abs(res.params["m"] - 2.0) < 3 * res.errors["m"]
        assert abs(res.params["b"] - 1.0) < 3 * res.errors["b"]
    # the Gaussian fit (told the true noise) is pulled up by the outliers: far off
    assert abs(gauss.params["b"] - 1.0) > 3 * gauss.errors["b"]
    assert abs(gauss.params["b"] - 1.0) > 5 * abs(cauchy.params["b"] - 1.0)
    assert "gamma" in cauchy.params and cauchy.params["gamma"] > 0


def test_known_scale_robust_fits_use_least_squares_form():
    rng = np.random.default_rng(3)
    x = np.linspace(0, 1, 30)
    y = 3 * x + rng.standard_cauchy(x.size) * 0.1
    res = gradfit.fit(line, x, y, params={"m": 1.0, "b": 0.0},
                      likelihood=gradfit.Cauchy(gamma=0.1))
    ref = gradfit.fit(line, x, y, params={"m": 1.0, "b": 0.0},
                      likelihood=gradfit.Cauchy(gamma=0.1), method="bfgs")
    assert res.method == "lm"
    assert res.params["m"] == pytest.approx(ref.params["m"], rel=1e-6)
    assert res.fun == pytest.approx(ref.fun, rel=1e-9)


def test_pulls_have_unit_width():
    """200 seeded data sets of a 3-parameter model: pull mean ~ 0, width ~ 1."""
    rng = np.random.default_rng(2024)
    x = np.linspace(0, 4, 40)
    truth = {"a": 2.0, "k": 0.8, "c": 0.3}
    sigma = 0.05
    mu = truth["a"] * np.exp(-truth["k"] * x) + truth["c"]

    def model(p, x):
        return p["a"] * torch.exp(-p["k"] * x) + p["c"]

    pulls = {n: [] for n in truth}
    for _ in range(200):
        y = mu + rng.normal(0, sigma, x.size)
        res = gradfit.fit(model, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0},
                          likelihood=gradfit.Gaussian(sigma=sigma))
        assert res.success
        for n in truth:
            pulls[n].append((res.params[n] - truth[n]) / res.errors[n])
    for n, p in pulls.items():
        p = np.array(p)
        assert abs(p.mean()) < 0.15, (n, p.mean())
        assert 0.85 < p.std() < 1.15, (n, p.std())
