"""MCMC through pyro (NUTS/HMC) and emcee against closed-form posteriors."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

import gradfit
from figures import assert_png
from gradfit.sampling import (
    Samples,
    _Posterior,
    effective_sample_size,
    sample,
    sample_posterior,
    split_rhat,
)

pytest.importorskip("pyro")
pytest.importorskip("emcee")

SIGMA, S0 = 0.5, 2.0


@pytest.fixture(scope="module")
def linear():
    """y = a + b x + N(0, 0.5²) with N(0, 2²) priors: the posterior is Gaussian."""
    rng = np.random.default_rng(3)
    x = np.linspace(-1.0, 1.0, 20)
    y = 1.0 + 2.0 * x + SIGMA * rng.normal(size=x.size)
    X = np.stack([np.ones_like(x), x], axis=1)
    cov = np.linalg.inv(X.T @ X / SIGMA**2 + np.eye(2) / S0**2)
    mean = cov @ X.T @ y / SIGMA**2

    def model(p, x):
        return p["a"] + p["b"] * x

    kw = dict(params={"a": 0.0, "b": 0.0}, likelihood=gradfit.Gaussian(sigma=SIGMA),
              priors={"a": gradfit.Normal(0.0, S0), "b": gradfit.Normal(0.0, S0)})
    return model, x, y, kw, mean, np.sqrt(np.diag(cov))


def _check_posterior(s: Samples, mean, sd):
    for i, name in enumerate(("a", "b")):
        # the acceptance: within 5 % (relative); and, more telling, within 0.1 σ
        assert s.mean[name] == pytest.approx(mean[i], rel=0.05)
        assert abs(s.mean[name] - mean[i]) < 0.1 * sd[i], (name, s.mean[name], mean[i])
        assert s.std[name] == pytest.approx(sd[i], rel=0.05)
        assert s.rhat[name] < 1.01
        assert s.ess[name] > 300


def test_nuts_matches_closed_form(linear):
    model, x, y, kw, mean, sd = linear
    s = gradfit.sample(model, x, y, method="nuts", num_samples=1000, warmup=200, num_chains=2,
                       seed=1, **kw)
    assert isinstance(s, Samples) and s.method == "nuts"
    assert s.chains.shape == (2, 1000, 2)
    _check_posterior(s, mean, sd)
    assert s.divergences == 0
    assert 0.5 < s.accept_rate <= 1.0
    assert s.map is not None and s.map.success


def test_emcee_matches_closed_form(linear):
    model, x, y, kw, mean, sd = linear
    s = sample(model, x, y, method="emcee", num_samples=1500, warmup=300, num_walkers=16,
               seed=2, **kw)
    assert s.chains.shape == (16, 1500, 2)
    _check_posterior(s, mean, sd)
    assert 0.1 < s.accept_rate < 0.9
    assert not s.notes


def test_emcee_evaluates_each_half_ensemble_in_one_batched_call(linear, monkeypatch):
    # emcee's moves update the walkers in two halves: one batched (vmapped) call of the
    # posterior for each half, per step, plus one for all walkers at the start; the model
    # itself runs once per call, on the whole batch, never once per walker
    model, x, y, kw, _, _ = linear
    calls, model_calls = [], []
    orig = _Posterior.potential_batch

    def counting(self, Z):
        calls.append(tuple(Z.shape))
        return orig(self, Z)

    def counted_model(p, x):
        model_calls.append(1)
        return model(p, x)

    monkeypatch.setattr(_Posterior, "potential_batch", counting)
    W, steps = 8, 30
    s = sample(counted_model, x, y, method="emcee", num_samples=20, warmup=10, num_walkers=W,
               seed=3, **kw)
    assert s.chains.shape == (W, 20, 2) and not s.notes
    assert calls == [(W, 2)] + [(W // 2, 2)] * (2 * steps)
    n_map = len(model_calls) - len(calls)  # the MAP fit that starts the sampler
    n_fit = len(model_calls)
    model_calls.clear()
    gradfit.fit(counted_model, x, y, **kw)
    assert n_map == len(model_calls) and n_fit == len(calls) + n_map


def test_bounded_parameters_use_the_jacobian():
    # flat priors on mu > 0 and 0 < f < 1: posteriors Gamma(n + 1, 1) and Beta(k + 1, m - k + 1)
    n, k, m = 3.0, 2.0, 10.0

    def nll(p):
        return p["mu"] - n * torch.log(p["mu"]) - k * torch.log(p["f"]) \
            - (m - k) * torch.log1p(-p["f"])

    params = {"mu": gradfit.Param(2.0, bounds=(0.0, None)),
              "f": gradfit.Param(0.3, bounds=(0.0, 1.0))}
    s = sample_posterior(nll, params, method="emcee", num_samples=2000, warmup=300,
                         num_walkers=16, seed=3)
    a, b = k + 1, m - k + 1
    assert s.mean["mu"] == pytest.approx(n + 1, rel=0.05)
    assert s.std["mu"] == pytest.approx(math.sqrt(n + 1), rel=0.05)
    assert s.mean["f"] == pytest.approx(a / (a + b), rel=0.05)
    assert s.std["f"] == pytest.approx(math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1))), rel=0.05)
    assert s.samples["mu"].min() > 0 and 0 < s.samples["f"].min() < s.samples["f"].max() < 1


def test_log_jacobian_matches_autograd():
    def nll(p):
        return (p["u"] ** 2).sum() + p["v"] ** 2 + p["w"] ** 2 + p["t"] ** 2

    prob = gradfit.fit.__globals__["build_minimize_problem"](
        nll, {"u": gradfit.Param([0.5, 0.2], bounds=(0.0, 1.0)),
              "v": gradfit.Param(1.0, bounds=(0.0, None)),
              "w": gradfit.Param(-1.0, bounds=(None, 0.0)), "t": 0.3})
    post = _Posterior(prob)
    z = torch.tensor([0.3, -1.2, 2.0, -0.7, 0.4], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(prob.space.to_external, z)
    expected = torch.log(torch.abs(torch.diagonal(jac))).sum()
    assert float(post.log_jacobian(z)) == pytest.approx(float(expected), rel=1e-12)
    # batched rows give the same values
    Z = torch.stack([z, 0.5 * z])
    lj = post.log_jacobian(Z)
    assert float(lj[0]) == pytest.approx(float(expected), rel=1e-12)
    pb = post.potential_batch(Z)
    assert float(pb[1]) == pytest.approx(float(post.potential(0.5 * z)), rel=1e-12)


def test_hmc_and_bare_nll():
    def nll(p):
        return 0.5 * ((p["m"] - 1.0) / 0.3) ** 2

    s = gradfit.sample(nll=nll, params={"m": 0.0}, method="hmc", num_samples=300, warmup=150,
                       num_chains=2, seed=4, options={"num_steps": 3})
    # static HMC on a 1-D Gaussian resonates (draws anticorrelated): loose checks only
    assert s.mean["m"] == pytest.approx(1.0, abs=0.06)
    assert s.std["m"] == pytest.approx(0.3, rel=0.15)


def test_samples_api(tmp_path):
    def nll(p):
        c = p["c"]
        return 0.5 * ((c - torch.tensor([1.0, 2.0, 3.0], dtype=c.dtype)) ** 2).sum() \
            + 0.5 * (p["s"] / 2.0) ** 2

    params = {"c": gradfit.Param(np.zeros(3), fixed=[False, True, False]), "s": 0.0}
    s = sample(nll=nll, params=params, method="emcee", num_samples=200, warmup=50,
               num_walkers=8, seed=5)
    assert s.names == ["c[0]", "c[2]", "s"]
    assert s.samples["c"].shape == (8 * 200, 3) and s.samples["s"].shape == (8 * 200,)
    assert np.all(s.samples["c"][:, 1] == 0.0)  # the fixed element keeps its value
    assert s.mean["c"].shape == (3,) and isinstance(s.mean["s"], float)
    assert s.std["c"][1] == 0.0
    q = s.quantiles([0.16, 0.5, 0.84])
    assert q["c"].shape == (3, 3) and q["s"].shape == (3,)
    assert np.all(np.diff(q["s"]) > 0)
    assert isinstance(s.quantiles(0.5)["s"], float)
    assert math.isnan(s.rhat["c"][1]) and np.isfinite(s.rhat["s"])
    assert s.cov.shape == (3, 3)
    d = s.to_dict(samples=True)
    json.dumps(d)
    assert d["names"] == s.names and len(d["samples"]["s"]) == 1600
    text = str(s)
    assert "R-hat" in text and "c[2]" in text
    fig = s.corner(tmp_path / "corner.png", truths={"s": 0.0})
    assert len(fig.axes) == 9
    assert_png(tmp_path / "corner.png", fig.get_size_inches() * fig.dpi)
    assert [fig.axes[6 + i].get_xlabel() for i in range(3)] == s.names
    with pytest.raises(ValueError, match="unknown name"):
        s.corner(names=["zz"])
    with pytest.raises(ValueError, match=r"quantiles must be in \[0, 1\]"):
        s.quantiles(50)


def test_seed_reproducible_and_global_rng_untouched():
    def nll(p):
        return 0.5 * p["m"] ** 2

    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    s1 = sample(nll=nll, params={"m": 0.0}, method="nuts", num_samples=30, warmup=20,
                num_chains=1, seed=7)
    after = torch.rand(3)
    assert torch.equal(before, after)
    s2 = sample(nll=nll, params={"m": 0.0}, method="nuts", num_samples=30, warmup=20,
                num_chains=1, seed=7)
    np.testing.assert_array_equal(s1.chains, s2.chains)
    e1 = sample(nll=nll, params={"m": 0.0}, method="emcee", num_samples=30, num_walkers=4,
                seed=7)
    e2 = sample(nll=nll, params={"m": 0.0}, method="emcee", num_samples=30, num_walkers=4,
                seed=7)
    np.testing.assert_array_equal(e1.chains, e2.chains)


def test_model_that_cannot_batch_falls_back_to_a_loop(linear):
    _, x, y, kw, mean, sd = linear

    def model(p, x):
        # Python control flow on a tensor value cannot run under vmap
        if p["a"] > -1e9:
            return p["a"] + p["b"] * x
        return p["b"] * x

    with pytest.warns(gradfit.FitWarning, match="evaluated in turn"):
        s = sample(model, x, y, method="emcee", num_samples=100, warmup=50, num_walkers=8,
                   seed=1, **kw)
    assert s.notes and "vmap" in s.notes[0]
    assert s.chains.shape == (8, 100, 2)


def test_ctrl_c_keeps_the_draws(monkeypatch, linear):
    model, x, y, kw, _, _ = linear
    calls = {"n": 0}
    orig = _Posterior.potential

    def interrupting(self, z):
        calls["n"] += 1
        if calls["n"] > 400:
            raise KeyboardInterrupt
        return orig(self, z)

    monkeypatch.setattr(_Posterior, "potential", interrupting)
    s = sample(model, x, y, method="nuts", num_samples=1000, warmup=20, num_chains=2, seed=0,
               **kw)
    assert s.interrupted and 0 < s.num_draws < 1000 and s.num_chains == 1
    assert "interrupted" in str(s)
    calls["n"] = 400 - 80  # emcee evaluates once per half-ensemble: 40 more steps
    e = sample(model, x, y, method="emcee", num_samples=1000, warmup=10, num_walkers=8,
               seed=0, **kw)
    assert e.interrupted and 0 < e.num_draws < 1000


def test_diagnostics_agree_with_pyro():
    from pyro.ops.stats import effective_sample_size as pyro_ess
    from pyro.ops.stats import split_gelman_rubin

    rng = np.random.default_rng(0)
    c, n = 4, 500
    x = np.zeros((c, n, 2))
    for t in range(1, n):  # AR(1) chains with different autocorrelation per column
        x[:, t] = np.array([0.5, 0.9]) * x[:, t - 1] + rng.normal(size=(c, 2))
    x[1] += 0.3  # one chain shifted: R-hat above 1
    ours_r = split_rhat(x)
    ours_e = effective_sample_size(x)
    t = torch.as_tensor(x)
    np.testing.assert_allclose(ours_r, split_gelman_rubin(t, chain_dim=0, sample_dim=1).numpy(),
                               rtol=1e-6)
    # pyro normalises the lag-k autocovariance by n − k, Stan (and we) by n
    np.testing.assert_allclose(ours_e, pyro_ess(t, chain_dim=0, sample_dim=1).numpy(),
                               rtol=0.03)
    assert ours_r[1] > 1.01


def test_ess_of_ar1_chains():
    # AR(1) with coefficient phi: integrated autocorrelation time (1 + phi) / (1 - phi)
    rng = np.random.default_rng(1)
    c, n, phi = 4, 20000, np.array([0.0, 0.5, 0.9])
    x = np.zeros((c, n, 3))
    e = rng.normal(size=(c, n, 3))
    x[:, 0] = e[:, 0] / np.sqrt(1 - phi**2)
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    expected = c * n * (1 - phi) / (1 + phi)
    # the estimator itself scatters by several per cent at phi = 0.9
    np.testing.assert_allclose(effective_sample_size(x), expected, rtol=0.15)
    assert np.all(np.abs(split_rhat(x) - 1) < 0.005)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"method": "gibbs"}, ValueError, "unknown method 'gibbs'; choose one of: nuts"),
        ({"method": "emcee", "num_walkers": 3}, ValueError, "even number of walkers"),
        ({"num_samples": 0}, ValueError, "num_samples must be an integer >= 1"),
        ({"init": {"zz": 1.0}}, ValueError, "unknown parameter 'zz'"),
    ],
)
def test_bad_input(linear, kwargs, exc, match):
    model, x, y, kw, _, _ = linear
    with pytest.raises(exc, match=match):
        sample(model, x, y, **{**kw, **kwargs})


def test_least_squares_and_argument_errors(linear):
    model, x, y, kw, _, _ = linear
    with pytest.raises(ValueError, match="known noise scale"):
        sample(model, x, y, params={"a": 0.0, "b": 0.0})
    with pytest.raises(TypeError, match="not both"):
        sample(model, x, y, nll=lambda p: p["a"] ** 2, params={"a": 0.0})
    with pytest.raises(TypeError, match="needs model, x and y"):
        sample(params={"a": 0.0})
    with pytest.raises(ValueError, match="nothing to sample"):
        sample(nll=lambda p: p["a"] ** 2, params={"a": gradfit.Param(0.0, fixed=True)})


@pytest.mark.parametrize("missing, method", [("pyro", "nuts"), ("emcee", "emcee")])
def test_missing_backend_names_the_extra(monkeypatch, missing, method):
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(ImportError, match=r"pip install 'gradfit\[mcmc\]'"):
        sample(nll=lambda p: p["a"] ** 2, params={"a": 0.0}, method=method)


def test_lazy_export():
    assert gradfit.sample is sample and gradfit.Samples is Samples


def test_laplace_is_exact_for_a_linear_gaussian_model(linear, monkeypatch):
    model, x, y, kw, mean, sd = linear
    monkeypatch.setitem(sys.modules, "pyro", None)  # needs no optional package
    monkeypatch.setitem(sys.modules, "emcee", None)
    s = sample(model, x, y, method="laplace", num_samples=4000, num_chains=2, seed=6, **kw)
    assert s.chains.shape == (2, 4000, 2)
    _check_posterior(s, mean, sd)
    # the MAP's covariance is the posterior's, exactly, for this model
    np.testing.assert_allclose(np.sqrt(np.diag(s.map.cov)), sd, rtol=1e-8)


def test_laplace_notes_draws_outside_bounds():
    def nll(p):
        return 0.5 * ((p["m"] - 0.1) / 0.2) ** 2

    s = sample(nll=nll, params={"m": gradfit.Param(0.5, bounds=(0.0, None))},
               method="laplace", num_samples=500, num_chains=1, seed=0)
    assert any("outside the parameter bounds" in n for n in s.notes)


def test_sample_result_starts_from_the_fit(linear):
    from gradfit.sampling import sample_result

    model, x, y, kw, mean, sd = linear
    res = gradfit.fit(model, x, y, **kw)
    s = sample_result(res, method="emcee", num_samples=1000, warmup=200, num_walkers=16,
                      seed=8)
    assert s.map is res
    for i, name in enumerate(("a", "b")):
        assert abs(s.mean[name] - mean[i]) < 0.1 * sd[i]
        assert s.std[name] == pytest.approx(sd[i], rel=0.06)
    bare = gradfit.FitResult(**{f: getattr(res, f) for f in (
        "params", "errors", "cov", "corr", "names", "fun", "success", "message", "method",
        "nfev", "njev", "nit", "time_s")})
    with pytest.raises(ValueError, match="carries no fitting problem"):
        sample_result(bare, method="laplace")
