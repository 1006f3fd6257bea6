"""Poisson deviance residuals in float32: the series is used where float32's direct
formula cancels (before, 4.5% of float32 Poisson batch fits failed with a non-finite
Jacobian at the start, and one converged 2.7 sigma away)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

import gradfit
from gradfit.batch import _poisson_residual_and_slope
from gradfit.likelihoods import Poisson, poisson_series_limit
from test_batch import NAMES, X, gauss2d, make_problems, start


def _reference(y, mu):
    """The deviance residual and its slope in mu, in float64 NumPy, by a formula that
    does not cancel: with u = (mu - y)/y, dev = 2 y (u - log1p(u)), r = -sign(u) sqrt(dev)
    and dr/dmu = (u / (1 + u)) / r (all y > 0 here)."""
    u = (mu - y) / y
    dev = 2.0 * y * (u - np.log1p(u))
    r = -np.sign(u) * np.sqrt(dev)
    return r, (u / (1.0 + u)) / r


def test_series_limit_by_dtype():
    assert poisson_series_limit(torch.float64) == 1e-4
    assert poisson_series_limit(torch.float32) == 0.05


def test_float32_residuals_and_slopes_near_the_data_are_finite_and_right():
    rng = np.random.default_rng(0)
    y = rng.integers(1, 600, 4000).astype(np.float64)
    t = rng.uniform(-0.08, 0.08, y.size) * rng.choice([1.0, 1e-2, 1e-4], y.size)
    mu = y * (1 - t)  # mu within 8% of y, many within 1e-3 and 1e-5
    mu = np.where(mu == y, y * (1 + 1e-9), mu)  # (the reference's slope is 0/0 at mu = y)
    ref, slope_ref = _reference(y, mu)
    for fn in (_poisson_residual_and_slope, None):
        y32, mu32 = torch.tensor(y, dtype=torch.float32), torch.tensor(mu, dtype=torch.float32)
        if fn is None:  # the likelihood's own residuals (the path of gradfit.fit)
            m = mu32.clone().requires_grad_(True)
            r = Poisson().residuals(y32, m)
            (dr,) = torch.autograd.grad(r.sum(), m)
        else:
            r, dr = fn(y32, mu32)
        r, dr = r.detach().double().numpy(), dr.double().numpy()
        assert np.isfinite(r).all() and np.isfinite(dr).all()
        scale = np.abs(ref).max()
        assert np.abs(r - ref).max() <= 2e-4 * scale
        # the slope is about -1/sqrt(mu) here; float32 leaves ~1e-4 of it
        err = np.abs(dr - slope_ref) * np.sqrt(mu)
        assert err.max() < 1e-3


def test_float32_poisson_batch_fits_all_converge_to_the_float64_answers():
    _, Y, P0 = make_problems(300, "poisson", seed=3)  # (the benchmark's problems)
    params = start(P0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gradfit.FitWarning)
        a = gradfit.fit_batch(gauss2d, X, Y, params=params, likelihood="poisson")
        b = gradfit.fit_batch(gauss2d, X, Y, params=params, likelihood="poisson",
                              dtype="float32")
    assert a.success.all()
    assert b.success.all(), b.failures()
    dz = []
    for n in NAMES:
        d = np.abs(b.params[n] - a.params[n])
        if n == "th":  # the same ellipse at th + k pi
            d = np.abs((b.params[n] - a.params[n] + np.pi / 2) % np.pi - np.pi / 2)
        dz.append(d / a.errors[n])
    assert np.max(dz) < 0.05
