"""Seeded statistical checks: robust likelihoods resist outliers; errors are honest."""

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.optimize import minimize

import gradfit
from honest import assert_chi2, assert_coverage, assert_pulls, mahalanobis


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

    # against SciPy: the Cauchy -log L with gamma fitted is -sum of scipy.stats.cauchy's
    # log densities, and SciPy's own minimiser on that NumPy form finds the same optimum
    def nll(t):
        return -np.sum(stats.cauchy.logpdf(y, loc=t[0] * x + t[1], scale=t[2]))

    ref = minimize(nll, [1.5, 0.5, 1.0], method="Nelder-Mead",
                   options={"xatol": 1e-11, "fatol": 1e-12, "maxiter": 20000, "maxfev": 40000})
    assert ref.success
    got = [cauchy.params["m"], cauchy.params["b"], cauchy.params["gamma"]]
    assert cauchy.fun == pytest.approx(nll(got), rel=1e-12)
    assert cauchy.fun == pytest.approx(ref.fun, rel=1e-10)
    np.testing.assert_allclose(got, ref.x, rtol=1e-6)


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

    # with gamma known, -log L drops the constant n log(pi gamma); else it is SciPy's
    def nll(t):
        return -np.sum(stats.cauchy.logpdf(y, loc=t[0] * x + t[1], scale=0.1))

    sp = minimize(nll, [1.0, 0.0], method="Nelder-Mead",
                  options={"xatol": 1e-12, "fatol": 1e-14, "maxiter": 20000})
    for r in (res, ref):
        assert r.fun + x.size * np.log(np.pi * 0.1) == pytest.approx(
            nll([r.params["m"], r.params["b"]]), rel=1e-12)
        np.testing.assert_allclose([r.params["m"], r.params["b"]], sp.x, rtol=1e-6)


def _expo_pulls(n_sets, seed):
    """Fit n_sets seeded data sets of a 3-parameter model with known sigma.

    Returns the pulls (n_sets, 3), the per-fit d' C^-1 d and whether each 68.27 %
    interval value +- error held the truth."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 4, 40)
    truth = {"a": 2.0, "k": 0.8, "c": 0.3}
    sigma = 0.05
    mu = truth["a"] * np.exp(-truth["k"] * x) + truth["c"]

    def model(p, x):
        return p["a"] * torch.exp(-p["k"] * x) + p["c"]

    pulls, maha = [], []
    for _ in range(n_sets):
        y = mu + rng.normal(0, sigma, x.size)
        res = gradfit.fit(model, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0},
                          likelihood=gradfit.Gaussian(sigma=sigma))
        assert res.success
        d = np.array([res.params[n] - truth[n] for n in res.names])
        pulls.append(d / np.array([res.errors[n] for n in res.names]))
        maha.append(mahalanobis(d, res.cov))
    return np.array(pulls), np.array(maha)


def test_pulls_have_unit_width():
    """40 seeded data sets: the reported errors and covariance are neither too small nor
    too large (two-sided chi-square and binomial bands; catches a 30 % error in scale)."""
    pulls, maha = _expo_pulls(40, seed=2024)
    for j, n in enumerate("akc"):
        assert_pulls(pulls[:, j], f"parameter {n}")
    assert_chi2(maha.sum(), 3 * maha.size, "covariance")
    assert_coverage(int(np.sum(np.abs(pulls) <= 1)), pulls.size, 0.6827, "1 sigma")


@pytest.mark.slow
def test_pulls_have_unit_width_at_high_precision():
    """600 data sets: pull width 1 to about 5 %, coverage of +-1 sigma and +-2 sigma
    against the binomial expectation, and the full covariance through d' C^-1 d."""
    pulls, maha = _expo_pulls(600, seed=7)
    for j, n in enumerate("akc"):
        p = pulls[:, j]
        assert_pulls(p, f"parameter {n}")
        assert_coverage(int(np.sum(np.abs(p) <= 1)), p.size, 0.6827, f"{n} within 1 sigma")
        assert_coverage(int(np.sum(np.abs(p) <= 2)), p.size, 0.9545, f"{n} within 2 sigma")
    assert_chi2(maha.sum(), 3 * maha.size, "covariance")
    # the per-fit d' C^-1 d is chi-square(3): its distribution, not only its sum
    assert stats.kstest(maha, stats.chi2(3).cdf).pvalue > 1e-3
