"""Profiles and intervals never give numbers that look right and mean nothing: a failed
fit is refused, and a parameter without curvature has no interval (NaN, with a warning)."""

import math
import warnings

import numpy as np
import pytest
import torch

import gradfit
from gradfit.profile import interval, profile2d

X = np.linspace(0.0, 1.0, 20)
Y = 2.0 * X + 0.05 * np.random.default_rng(0).normal(size=X.size)


def _degenerate_fit(errors="hessian"):
    """a and b enter only as a + b: the data fix the sum, nothing fixes the difference."""
    with pytest.warns(gradfit.FitWarning, match="not constrained") if errors == "hessian" \
            else warnings.catch_warnings():
        res = gradfit.fit(lambda p, x: (p["a"] + p["b"]) * x, X, Y, {"a": 1.0, "b": 0.5},
                          errors=errors)
    assert res.success
    return res


def test_failed_fit_is_refused():
    res = gradfit.fit(lambda p, x: p["a"] * torch.exp(p["b"] * x), X, Y, {"a": 1.0, "b": 1.0},
                      max_iter=1)
    assert not res.success
    for call in (lambda: res.interval("a"), lambda: res.profile("a"),
                 lambda: interval(res, "b", cl=0.95), lambda: profile2d(res, "a", "b")):
        with pytest.raises(ValueError, match=r"the fit did not succeed \(maximum number of "
                                             r"iterations.*refit until it converges"):
            call()


@pytest.mark.parametrize("errors", ["hessian", "none"])
def test_degenerate_parameter_has_nan_interval_with_a_warning(errors):
    res = _degenerate_fit(errors)
    assert math.isnan(res.errors["a"])
    # without the guard the walk ends in float round-off at |a| ~ 1e16 and returns that
    # as a finite "interval", without a word
    with pytest.warns(gradfit.FitWarning, match=r"'a' has no curvature at the best fit.*"
                                                 r"interval is \(nan, nan\)"):
        lo, hi = res.interval("a")
    assert math.isnan(lo) and math.isnan(hi)


def test_degenerate_parameter_profile_needs_an_explicit_range():
    res = _degenerate_fit()
    with pytest.raises(ValueError, match="'b' has no curvature.*give the range explicitly"):
        res.profile("b")
    with pytest.raises(ValueError, match=r"profile\(cl=...\): 'b' has no curvature"):
        res.profile("b", cl=0.68)
    # an explicit range is a real profile: flat, since a + b is all the data see
    prof = res.profile("b", bound=(-1.0, 2.0), size=4)
    assert prof.success.all()
    np.testing.assert_allclose(prof.nll, res.fun, rtol=1e-9, atol=1e-12)


def test_curvature_is_measured_when_the_fit_skipped_errors():
    """errors='none' leaves no covariance; a well-determined parameter still gets its
    interval (the curvature is measured on demand), equal to the one with errors."""
    lik = gradfit.Gaussian(sigma=0.05)
    full = gradfit.fit(lambda p, x: p["a"] * x + p["c"], X, Y, {"a": 1.0, "c": 0.0},
                       likelihood=lik)
    bare = gradfit.fit(lambda p, x: p["a"] * x + p["c"], X, Y, {"a": 1.0, "c": 0.0},
                       likelihood=lik, errors="none")
    assert math.isnan(bare.errors["a"])
    lo, hi = bare.interval("a")
    # a linear model with known sigma: the profile interval is the Hessian error exactly
    assert lo == pytest.approx(full.params["a"] - full.errors["a"], rel=1e-6)
    assert hi == pytest.approx(full.params["a"] + full.errors["a"], rel=1e-6)
