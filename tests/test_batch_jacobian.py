"""fit_batch(jacobian=...): a model-supplied Jacobian gives the same fits as autodiff."""

import numpy as np
import pytest
import scipy.optimize
import torch

import gradfit
from test_batch import NAMES, X, gauss2d, gauss2d_np, jac_np, make_problems, start


def gauss2d_jac(p, x):
    """gauss2d and its derivatives by hand."""
    dx, dy = x[0] - p["x0"], x[1] - p["y0"]
    c, s = torch.cos(p["th"]), torch.sin(p["th"])
    u, v = c * dx + s * dy, -s * dx + c * dy
    a, b = u / p["sx"], v / p["sy"]
    e = torch.exp(-0.5 * (a * a + b * b))
    g = p["amp"] * e
    gu, gv = -g * a / p["sx"], -g * b / p["sy"]
    d = {"amp": e, "x0": -c * gu + s * gv, "y0": -s * gu - c * gv,
         "sx": g * a * a / p["sx"], "sy": g * b * b / p["sy"], "th": gu * v - gv * u,
         "bg": torch.ones_like(e)}
    return g + p["bg"], d


def rel(a, b):
    return np.max(np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-300))


def test_jacobian_matches_autodiff_and_curve_fit():
    T, Y, P0 = make_problems(6, "gaussian", seed=3)
    auto = gradfit.fit_batch(gauss2d, X, Y, params=start(P0))
    hand = gradfit.fit_batch(gauss2d, X, Y, params=start(P0), jacobian=gauss2d_jac)
    assert hand.success.all() and auto.success.all()
    for n in NAMES:
        assert rel(hand.params[n], auto.params[n]) < 1e-6
        assert rel(hand.errors[n], auto.errors[n]) < 1e-6
    # an independent reference: curve_fit with a complex-step Jacobian, tight tolerances
    for i in range(len(Y)):
        popt, pcov = scipy.optimize.curve_fit(gauss2d_np, X, Y[i], p0=P0[i], jac=jac_np,
                                              ftol=1e-14, xtol=1e-14, gtol=1e-14)
        got = np.array([hand.params[n][i] for n in NAMES])
        err = np.array([hand.errors[n][i] for n in NAMES])
        assert rel(got, popt) < 1e-6
        assert rel(err, np.sqrt(np.diag(pcov))) < 1e-6
    # the fit is a fit: values move from the start, toward the truth
    assert np.all(np.abs(hand.params["x0"] - T[:, 1]) < np.abs(P0[:, 1] - T[:, 1]) + 0.1)


@pytest.mark.parametrize("case", ["poisson_bounded", "prior"])
def test_jacobian_with_bounds_poisson_and_priors(case):
    T, Y, P0 = make_problems(4, "poisson" if case == "poisson_bounded" else "gaussian",
                             seed=5)
    params = start(P0)
    kw = {}
    if case == "poisson_bounded":
        params["sx"] = gradfit.Param(P0[:, 3], bounds=(0.5, 5.0))
        kw["likelihood"] = "poisson"
    else:
        kw["priors"] = {"sy": gradfit.Normal(1.4, 0.05)}
        params["th"] = gradfit.Param(0.4, fixed=True)
    auto = gradfit.fit_batch(gauss2d, X, Y, params=params, **kw)
    hand = gradfit.fit_batch(gauss2d, X, Y, params=params, jacobian=gauss2d_jac, **kw)
    assert hand.success.all() and auto.success.all()
    for n in NAMES:
        assert rel(hand.params[n], auto.params[n]) < 1e-6
        assert rel(hand.errors[n], auto.errors[n]) < 1e-6


def test_wrong_or_malformed_jacobian_is_named():
    T, Y, P0 = make_problems(2, "gaussian", seed=1)

    def wrong(p, x):
        mu, d = gauss2d_jac(p, x)
        d["th"] = 2 * d["th"]
        return mu, d

    with pytest.raises(ValueError, match="derivative for 'th' differs from autodiff"):
        gradfit.fit_batch(gauss2d, X, Y, params=start(P0), jacobian=wrong)

    def missing(p, x):
        mu, d = gauss2d_jac(p, x)
        del d["bg"]
        return mu, d

    with pytest.raises(ValueError, match="no derivative for the free parameter 'bg'"):
        gradfit.fit_batch(gauss2d, X, Y, params=start(P0), jacobian=missing)

    def shape(p, x):
        mu, d = gauss2d_jac(p, x)
        d["amp"] = d["amp"][:10]
        return mu, d

    with pytest.raises(ValueError, match="derivative for 'amp'.*expected shape"):
        gradfit.fit_batch(gauss2d, X, Y, params=start(P0), jacobian=shape)
    with pytest.raises(TypeError, match="jacobian must be a callable"):
        gradfit.fit_batch(gauss2d, X, Y, params=start(P0), jacobian=3)


def test_poisson_autodiff_through_the_model_with_bounds_and_prior_follows_fit():
    """The autodiff path that keeps the residual form out of the backward passes."""
    T, Y, P0 = make_problems(3, "poisson", seed=11)
    params = start(P0)
    params["sx"] = gradfit.Param(P0[:, 3], bounds=(0.5, 5.0))
    priors = {"sy": gradfit.Normal(1.4, 0.05)}
    res = gradfit.fit_batch(gauss2d, X, Y, params=params, likelihood="poisson",
                            priors=priors)
    assert res.method == "lm" and res.success.all()
    for i in range(len(Y)):
        one = gradfit.fit(gauss2d, X, Y[i], likelihood="poisson", priors=priors,
                          params={**{n: P0[i, k] for k, n in enumerate(NAMES)},
                                  "sx": gradfit.Param(P0[i, 3], bounds=(0.5, 5.0))})
        for n in NAMES:
            assert abs(res.params[n][i] - one.params[n]) <= 1e-6 * abs(one.params[n])
            assert abs(res.errors[n][i] - one.errors[n]) <= 1e-6 * one.errors[n]
    # the prior pulls sy toward 1.4 (two-sided: it moved, and not past the prior mean)
    plain = gradfit.fit_batch(gauss2d, X, Y, params=params, likelihood="poisson")
    assert np.all(np.abs(res.params["sy"] - 1.4) <= np.abs(plain.params["sy"] - 1.4))
    assert np.any(res.params["sy"] != plain.params["sy"])
