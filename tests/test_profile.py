"""Profile likelihoods and MINOS-like intervals: analytic cases and coverage."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import chi2

import gradfit
from figures import assert_png
from gradfit.profile import Profile, Profile2D, interval, profile, profile2d
from honest import assert_coverage


def _poisson_fit(n, bounds=(0.0, None)):
    def model(p, x):
        return p["mu"] * torch.ones_like(x)

    return gradfit.fit(model, np.zeros(1), np.array([float(n)]),
                       {"mu": gradfit.Param(max(n, 0.5), bounds=bounds)},
                       likelihood="poisson", method="bfgs")


def _poisson_interval(n, cl):
    """Solve mu - n log mu - (n - n log n) = chi2.ppf(cl, 1) / 2 on both sides of n."""
    d = chi2.ppf(cl, 1) / 2

    def f(m):
        return m - n * math.log(m) - (n - n * math.log(n)) - d

    return brentq(f, 1e-12, n, xtol=1e-14), brentq(f, n, 10 * n + 20, xtol=1e-14)


@pytest.mark.parametrize("n", [1, 3, 7, 20])
@pytest.mark.parametrize("cl", [0.6827, 0.95])
def test_poisson_interval_matches_analytic(n, cl):
    res = _poisson_fit(n)
    lo, hi = res.interval("mu", cl=cl)
    alo, ahi = _poisson_interval(n, cl)
    # the acceptance asks for 1e-3 relative; the root finder gives far better
    assert lo == pytest.approx(alo, rel=1e-5)
    assert hi == pytest.approx(ahi, rel=1e-5)
    assert hi - n > n - lo  # the Poisson interval is asymmetric


def test_poisson_profile_values_and_grid_interval():
    n = 3
    res = _poisson_fit(n)
    prof = res.profile("mu", bound=(0.5, 9.0), size=40)
    assert isinstance(prof, Profile)
    assert prof.success.all() and not prof.interrupted
    exact = prof.grid - n * np.log(prof.grid) + math.lgamma(n + 1)
    np.testing.assert_allclose(prof.nll, exact, rtol=1e-10)
    lo, hi = prof.interval_from_grid(0.6827)
    alo, ahi = _poisson_interval(n, 0.6827)
    assert lo == pytest.approx(alo, rel=2e-2) and hi == pytest.approx(ahi, rel=2e-2)
    d = prof.to_dict()
    assert d["name"] == "mu" and len(d["grid"]) == 40


def _linear_fit(seed=1, n=12, sigma=0.3):
    rng = np.random.default_rng(seed)
    x = np.linspace(-1.0, 2.0, n)
    y = 0.7 + 1.3 * x - 0.4 * x**2 + sigma * rng.normal(size=n)

    def model(p, x):
        return p["a"] + p["b"] * x + p["c"] * x**2

    res = gradfit.fit(model, x, y, {"a": 0.0, "b": 1.0, "c": 0.0},
                      likelihood=gradfit.Gaussian(sigma=sigma), method="bfgs")
    return res


def test_interval_of_quadratic_likelihood_is_the_hessian_error():
    # Gaussian linear model: −log L is exactly quadratic, so the profile interval at
    # 2Δ = q is best ± sqrt(q)·σ, with σ from the full covariance (nuisances profiled)
    res = _linear_fit()
    for name in ("a", "b", "c"):
        for cl in (0.6827, 0.9):
            lo, hi = interval(res, name, cl=cl)
            half = math.sqrt(chi2.ppf(cl, 1)) * res.errors[name]
            assert lo == pytest.approx(res.params[name] - half, rel=1e-6, abs=1e-8)
            assert hi == pytest.approx(res.params[name] + half, rel=1e-6, abs=1e-8)


def test_profile_reminimises_the_other_parameters():
    res = _linear_fit()
    prof = profile(res, "b", bound=2, size=9)
    i = res.names.index("b")
    # the conditional optimum of a Gaussian: others = best + cov[:, b] / cov[b, b] (v − best)
    shift = (prof.grid - res.params["b"]) / res.cov[i, i]
    for name in ("a", "c"):
        j = res.names.index(name)
        expected = res.params[name] + res.cov[j, i] * shift
        np.testing.assert_allclose(prof.params[name], expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(prof.chi2, (prof.grid - res.params["b"]) ** 2 / res.cov[i, i],
                               rtol=1e-6, atol=1e-8)
    assert prof.grid[0] == pytest.approx(res.params["b"] - 2 * res.errors["b"])


def test_profile_with_cl_spans_the_interval():
    res = _poisson_fit(4)
    prof = res.profile("mu", cl=0.9, size=11)
    alo, ahi = _poisson_interval(4, 0.9)
    assert prof.limits[0] == pytest.approx(alo, rel=1e-6)
    assert prof.limits[1] == pytest.approx(ahi, rel=1e-6)
    assert prof.grid[0] < alo and prof.grid[-1] > ahi
    assert "interval" in str(prof)


def test_vector_parameter_element_and_minimize_result():
    def nll(p):
        c = p["c"]
        return 0.5 * ((c - torch.tensor([1.0, 2.0], dtype=c.dtype)) ** 2 / 0.25).sum() \
            + 0.5 * (p["s"] - 3.0) ** 2

    res = gradfit.minimize(nll, {"c": np.zeros(2), "s": 0.0}, method="bfgs")
    lo, hi = res.interval("c[1]")
    assert lo == pytest.approx(2.0 - 0.5 * math.sqrt(chi2.ppf(0.6827, 1)), rel=1e-6)
    assert hi == pytest.approx(2.0 + 0.5 * math.sqrt(chi2.ppf(0.6827, 1)), rel=1e-6)


def test_interval_reaching_a_bound_warns_and_returns_the_bound():
    res = _poisson_fit(1, bounds=(0.5, 50.0))
    with pytest.warns(gradfit.FitWarning, match="reaches its lower bound"):
        lo, hi = res.interval("mu")
    assert lo == 0.5
    assert hi == pytest.approx(_poisson_interval(1, 0.6827)[1], rel=1e-6)


def test_profile2d_is_the_quadratic_form():
    res = _linear_fit()
    p2 = profile2d(res, "a", "c", bound=2, size=(5, 4))
    assert isinstance(p2, Profile2D) and p2.nll.shape == (5, 4) and p2.success.all()
    ia, ic = res.names.index("a"), res.names.index("c")
    sub = res.cov[np.ix_([ia, ic], [ia, ic])]
    inv = np.linalg.inv(sub)
    da = p2.x[:, None] - res.params["a"]
    dc = p2.y[None, :] - res.params["c"]
    expected = inv[0, 0] * da**2 + 2 * inv[0, 1] * da * dc + inv[1, 1] * dc**2
    np.testing.assert_allclose(p2.chi2, expected, rtol=1e-6, atol=1e-8)
    assert p2.level(0.6827) == pytest.approx(chi2.ppf(0.6827, 2))
    assert p2.to_dict()["names"] == ["a", "c"]


def test_ctrl_c_keeps_the_points_done(monkeypatch):
    import gradfit.profile as gp

    res = _linear_fit()
    calls = {"n": 0}
    orig = gp._Profiler.__call__

    def interrupting(self, values, warm):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return orig(self, values, warm)

    monkeypatch.setattr(gp._Profiler, "__call__", interrupting)
    prof = profile(res, "b", size=10)
    assert prof.interrupted
    assert int(np.isfinite(prof.nll).sum()) == 4
    assert "interrupted" in str(prof)
    p2 = profile2d(res, "a", "b", size=3)
    assert p2.interrupted and int(np.isfinite(p2.nll).sum()) == 0


def test_plots(tmp_path):
    res = _linear_fit()
    prof = res.profile("a", size=5)
    ax = prof.plot(path=tmp_path / "p.png")
    # what is drawn: the profile curve 2Δ(−log L) against the grid, and the best value
    np.testing.assert_allclose(ax.lines[0].get_xydata(), np.c_[prof.grid, prof.chi2])
    assert ax.get_xlabel() == "a"
    fig = ax.figure
    assert_png(tmp_path / "p.png", fig.get_size_inches() * fig.dpi)
    p2 = profile2d(res, "a", "b", size=4)
    ax2 = p2.plot(path=tmp_path / "p2.png")
    assert [ax2.get_xlabel(), ax2.get_ylabel()] == ["a", "b"]
    # one contour set at the 68.27 % and 95.45 % levels of chi-square with 2 dof
    levels = [c for c in ax2.get_children() if hasattr(c, "levels")][0].levels
    np.testing.assert_allclose(levels, chi2.ppf([0.6827, 0.9545], 2))
    fig2 = ax2.figure
    assert_png(tmp_path / "p2.png", fig2.get_size_inches() * fig2.dpi)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"name": "zz"}, ValueError, "unknown parameter 'zz'"),
        ({"name": "a", "bound": (1.0, 0.0)}, ValueError, "lo < hi"),
        ({"name": "a", "bound": -1}, ValueError, "positive"),
        ({"name": "a", "bound": "x"}, TypeError, "number of sigmas"),
        ({"name": "a", "size": 1}, ValueError, "size must be an integer >= 2"),
        ({"name": "a", "cl": 68.0}, ValueError, r"must be in \(0, 1\)"),
    ],
)
def test_bad_input(kwargs, exc, match):
    res = _linear_fit()
    with pytest.raises(exc, match=match):
        profile(res, **kwargs)


def test_bad_names():
    def model(p, x):
        return p["a"] + p["v"][0] * x + p["v"][1] * x**2 + p["k"]

    x = np.linspace(0, 1, 10)
    res = gradfit.fit(model, x, 1 + x, {"a": 0.0, "v": np.zeros(2),
                                         "k": gradfit.Param(0.0, fixed=True)},
                      likelihood=gradfit.Gaussian(sigma=1.0), method="bfgs")
    with pytest.raises(ValueError, match=r"has shape \(2,\); profile one element"):
        res.interval("v")
    with pytest.raises(ValueError, match="'k' is fixed"):
        res.interval("k")
    with pytest.raises(ValueError, match="must differ"):
        profile2d(res, "a", "a")
    bare = gradfit.FitResult(**{**{f: getattr(res, f) for f in (
        "params", "errors", "cov", "corr", "names", "fun", "success", "message", "method",
        "nfev", "njev", "nit", "time_s")}})
    with pytest.raises(ValueError, match="carries no fitting problem"):
        bare.interval("a")


@pytest.mark.slow
def test_coverage_of_68_percent_intervals():
    """Over 600 seeded simulations the 68.27 % profile intervals cover the truth as often
    as the binomial expectation allows (two-sided: about 68 % +- 6 %)."""
    x = np.linspace(0.0, 2.0, 8)
    sigma, a0, b0 = 0.2, 1.0, 1.5

    def model(p, x):
        return p["a"] * torch.exp(-p["b"] * x)

    rng = np.random.default_rng(2024)
    lik = gradfit.Gaussian(sigma=sigma)
    hits = opened = 0
    asym = []
    n_sets = 600
    for _ in range(n_sets):
        y = a0 * np.exp(-b0 * x) + sigma * rng.normal(size=x.size)
        res = gradfit.fit(model, x, y, {"a": a0, "b": b0}, likelihood=lik, method="bfgs")
        with warnings.catch_warnings(record=True) as caught:
            # a few data sets leave b without an upper limit (the decay can be arbitrarily
            # fast): that end is +inf, with a FitWarning
            warnings.simplefilter("always", gradfit.FitWarning)
            lo, hi = res.interval("b", xtol=1e-4)
        opened += any("has no upper limit" in str(w.message) for w in caught)
        hits += lo <= b0 <= hi
        asym.append((hi - res.params["b"]) / (res.params["b"] - lo))
    assert_coverage(hits, n_sets, 0.6827, "68.27 % profile intervals of b")
    assert opened < n_sets // 20
    assert np.median(asym) > 1.05  # the nonlinear model gives asymmetric intervals


def test_progress_on_stderr(monkeypatch, capsys):
    import functools

    import gradfit.profile as gp

    monkeypatch.setattr(gp, "_Progress", functools.partial(gp._Progress, delay=0.0))
    profile(_linear_fit(), "a", size=4, progress=True)
    err = capsys.readouterr().err
    assert "profile a:" in err and "/4 points" in err
    profile(_linear_fit(), "a", size=4, progress=False)
    assert capsys.readouterr().err == ""
