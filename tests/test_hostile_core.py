"""Hostile input to the core (issue 10): empty data, unbounded objectives, false claims.

Each case asserts the exception or the success flag, and where a number is
involved, checks it from both sides against an independent reference.
"""

import math
import warnings

import numpy as np
import pytest
import torch

import gradfit
from gradfit import mgh
from gradfit.objective import Objective
from gradfit.solvers import SolverOptions, canonical_method, solve
from gradfit.solvers.linesearch import _cubic_min, strong_wolfe


def _line(p, x):
    return p["a"] + p["b"] * x


X = np.arange(6.0)
Y = np.array([1.0, 3.2, 4.9, 7.1, 9.0, 11.2])


# ------------------------------------------------------------------ zero data points

@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("shape", [(0,), (0, 3)])
def test_zero_data_points_is_a_value_error(strict, shape):
    with pytest.raises(ValueError, match="no data points"):
        gradfit.fit(lambda p, x: p["a"] * x, np.zeros(shape), np.zeros(shape),
                    params={"a": 1.0}, strict=strict)


# ------------------------------------------------------------------------ divergence

UNBOUNDED_METHODS = ["auto", "gd", "bfgs", "lbfgs", "newton-cg", "newton", "trust-exact",
                     "trust-krylov", "nelder-mead", "scipy-bfgs"]


@pytest.mark.parametrize("method", UNBOUNDED_METHODS)
def test_unbounded_objective_diverges_without_success(method):
    # errors="none": the Hessian of a linear f is singular, which would (rightly) warn
    res = gradfit.minimize(lambda p: -p["a"], params={"a": 0.0}, method=method, errors="none")
    assert res.success is False
    assert "diverged" in res.message
    # it did run away: far beyond any step a solver takes by accident, and finite
    assert 1e9 < res.params["a"] < math.inf
    assert res.fun == pytest.approx(-res.params["a"], rel=1e-12)


@pytest.mark.parametrize("method", ["bfgs", "trust-exact", "newton-cg"])
def test_unbounded_objective_with_loose_tol_is_not_a_success(method):
    # with tol=1e-6 the gradient test relative to |f| used to pass once |f| > 1e6
    res = gradfit.minimize(lambda p: -p["a"], params={"a": 0.0}, method=method, tol=1e-6,
                           errors="none")
    assert res.success is False and "diverged" in res.message


def test_objective_unbounded_in_f_with_bounded_parameters():
    # f -> -inf at a pole (a -> 1), the parameter stays small
    res = gradfit.minimize(lambda p: -1.0 / (p["a"] - 1.0) ** 2, params={"a": 0.0},
                           method="bfgs", errors="none")
    assert res.success is False and "diverged" in res.message
    assert abs(res.params["a"] - 1.0) < 1e-3


def test_adam_names_possible_divergence_at_its_iteration_limit():
    res = gradfit.minimize(lambda p: -p["a"], params={"a": 0.0}, method="adam", max_iter=500,
                           errors="none")
    assert res.success is False
    assert "diverging" in res.message and "still falling" in res.message
    # Adam moves about lr = 0.01 per step: 500 steps go about 5
    assert 2.0 < res.params["a"] < 10.0


def test_lm_reports_parameters_running_to_a_minimum_at_infinity():
    # 0.5 Σ r² >= 0 cannot fall without bound, but 1/a -> 0 only as a -> inf
    res = gradfit.fit(lambda p, x: 1.0 / p["a"] + 0 * x, X, np.zeros(X.size),
                      params={"a": 1.0}, method="lm", errors="none")
    assert res.success is False and "ran away" in res.message
    assert 1e10 < res.params["a"] < 1e12


def test_bounded_below_objective_still_converges():
    # the divergence guard must not fire on an ordinary problem with a large offset
    for method in ["bfgs", "lbfgs", "newton-cg", "trust-exact", "trust-krylov", "gd"]:
        res = gradfit.minimize(lambda p: 1e3 + (p["a"] - 3.0) ** 2 + 0.5 * (p["b"] + 1) ** 2,
                               params={"a": 0.0, "b": 0.0}, method=method)
        assert res.success, (method, res.message)
        assert abs(res.params["a"] - 3.0) < 1e-5 and abs(res.params["b"] + 1.0) < 1e-5, method


def test_strong_wolfe_on_a_linear_function_does_not_divide_by_zero():
    obj = Objective(lambda z: -z.sum(), 2)
    z = torch.zeros(2, dtype=torch.float64)
    d = torch.ones(2, dtype=torch.float64)
    f0, g0 = obj.value_and_grad(z)
    ls = strong_wolfe(obj, z, d, 1.0, float(f0), g0, float(g0 @ d))
    # f keeps falling along d: the search extrapolates and returns a lower point
    assert ls.t > 1.0 and ls.f < float(f0) and math.isfinite(ls.f)
    # the cubic through two points of a line has no minimiser: bisect within the bracket
    assert _cubic_min(0.0, 0.0, -1.0, 2.0, -2.0, -1.0) == pytest.approx(1.0)
    assert _cubic_min(1.0, -1.0, -1.0, 3.0, -3.0, -1.0, lo=3.0, hi=30.0) == \
        pytest.approx(16.5)


def test_hvp_of_a_linear_function_is_zero():
    obj = Objective(lambda z: -z.sum(), 3)
    hv = obj.hvp(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    assert torch.equal(hv, torch.zeros(3, dtype=torch.float64))


# ------------------------------------------------------------------- no false success

def _objective(p):
    return Objective(lambda z: 0.5 * (p.residuals(z) ** 2).sum(), p.n,
                     residual_fun=p.residuals)


def test_newton_cg_on_meyer_makes_no_false_claim():
    p = mgh.problem(10)
    run = mgh.run_gradfit(p, "newton-cg")
    assert not run.false_claim(p)
    if run.success:  # a success must be at the published minimum
        assert run.F == pytest.approx(p.fstar, rel=1e-5)
    else:
        assert "stalled" in run.message or "maximum" in run.message


def test_tiny_step_with_a_large_gradient_is_a_stall():
    # xtol=1e-3 stops on the first short step, far from the minimum of this valley
    obj = Objective(lambda z: (z[0] - 1e4) ** 2 + 1e6 * (z[1] - z[0] / 1e4) ** 2, 2)
    raw = solve("newton-cg", obj, torch.zeros(2, dtype=torch.float64),
                SolverOptions(xtol=0.5, ftol=0.0, max_iter=50))
    g = obj.grad(raw.z).abs().max()
    assert raw.success is bool(g <= 1e-6 * max(1.0, raw.fun))


# ------------------------------------------------------------- LM on exact solutions

def test_lm_stops_at_an_exact_solution_with_a_singular_jacobian():
    # Extended Powell singular, n = 20: the Jacobian is singular at the solution 0, so LM
    # converges only linearly; it must stop once |r| reaches the float floor.
    p = mgh.MghProblem(22, "Extended Powell singular", 20, 20, mgh.problem(22).residuals,
                       (3.0, -1.0, 0.0, 1.0) * 5, 0.0)
    obj = _objective(p)
    raw = solve("lm", obj, p.start())
    F = float(p.cost(raw.z))
    assert raw.success, raw.message
    assert F < 1e-24                                  # at the floor: 16 digits below F0
    assert F <= 1e-30 * float(p.cost(p.start())) * 1e3
    assert raw.nit < 100                              # no crawl to the iteration limit


def test_lm_reaches_zero_on_biggs_exp6():
    p = mgh.problem(18)
    run = mgh.run_gradfit(p, "lm")
    assert run.success and run.solved(p), (run.F, run.message)
    assert run.F < 1e-20                              # not the local minimum 5.66e-3


def test_default_fit_on_mgh_problem_reaches_published_minimum():
    p = mgh.problem(8)  # Bard, F* = 8.21487e-3
    run = mgh.run_gradfit(p, "default")
    assert run.success
    assert p.fstar * (1 - 1e-5) <= run.F <= p.fstar * (1 + 1e-5)


# ------------------------------------------------------------------- small things

def test_poisson_lm_where_the_model_equals_a_count():
    y = np.array([3.0, 1.0, 4.0, 1.0, 5.0])
    res = gradfit.fit(lambda p, x: p["c"] + 0 * x, X[:5], y, params={"c": 3.0},
                      likelihood="poisson", method="lm")
    assert res.success, res.message
    # Poisson ML of a constant rate: the mean, with error sqrt(mean / n)
    assert res.params["c"] == pytest.approx(y.mean(), rel=1e-10)
    assert res.errors["c"] == pytest.approx(math.sqrt(y.mean() / y.size), rel=1e-6)


@pytest.mark.parametrize("mu0", [3.0, 3.0 + 1e-9, 3.0 - 1e-5, 3.1, 0.5])
def test_poisson_residual_is_smooth_and_matches_the_deviance(mu0):
    lik = gradfit.Poisson()
    y = torch.tensor([0.0, 1.0, 3.0, 3.0, 10.0], dtype=torch.float64)
    mu = torch.full_like(y, mu0).requires_grad_(True)
    r = lik.residuals(y, mu)
    (g,) = torch.autograd.grad(r.sum(), mu)
    with torch.no_grad():
        ylogy = torch.where(y > 0, y * torch.log(torch.where(y > 0, y, 1.0) / mu), 0.0)
        dev = 2 * (mu - y + ylogy)
        h = 1e-6
        fd = (lik.residuals(y, mu + h) - lik.residuals(y, mu - h)) / (2 * h)
    assert torch.all(torch.isfinite(g))
    assert torch.allclose(r.detach() ** 2, dev, rtol=1e-9, atol=1e-14)
    assert torch.allclose(torch.sign(r.detach()), torch.sign(y - mu.detach()))
    assert torch.allclose(g, fd, rtol=1e-5, atol=1e-8)
    # where mu == y the slope is -1/sqrt(y) (the deviance is (y - mu)^2 / y to second order)
    at = (y == mu0) & (y > 0)
    assert torch.allclose(g[at], -1 / torch.sqrt(y[at]), rtol=1e-10)


@pytest.mark.parametrize("bounds", [(float("nan"), 1.0), (0.0, float("nan")),
                                    (np.array([0.0, np.nan]), None)])
def test_nan_bounds_are_a_value_error_naming_the_parameter(bounds):
    with pytest.raises(ValueError, match="'w'.*NaN"):
        gradfit.fit(lambda p, x: p["w"].sum() * x, X, Y,
                    params={"w": gradfit.Param(np.array([0.5, 0.5]), bounds=bounds)})


def test_method_aliases_are_accepted_by_fit_and_checked_in_one_place():
    ref = gradfit.fit(_line, X, Y, params={"a": 0.0, "b": 1.0}, method="lbfgs")
    for alias in ["l-bfgs", "L-BFGS", " lbfgs "]:
        res = gradfit.fit(_line, X, Y, params={"a": 0.0, "b": 1.0}, method=alias)
        assert res.success and res.method == "lbfgs"
        assert res.params["b"] == pytest.approx(ref.params["b"], rel=1e-8)
    # closed-form least squares
    b, a = np.polyfit(X, Y, 1)
    assert ref.params["a"] == pytest.approx(a, rel=1e-7)
    assert canonical_method("levenberg-marquardt") == "lm"
    assert canonical_method("AUTO", also=("auto",)) == "auto"
    with pytest.raises(ValueError, match="unknown method 'bgfs'; choose one of: auto, adam"):
        gradfit.fit(_line, X, Y, params={"a": 0.0, "b": 1.0}, method="bgfs")
    with pytest.raises(TypeError, match="method must be a string"):
        gradfit.fit(_line, X, Y, params={"a": 0.0, "b": 1.0}, method=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradfit.minimize(lambda p: (p["a"] - 1) ** 2, params={"a": 0.0}, method="simplex")
