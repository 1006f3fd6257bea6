"""Every solver on analytic problems with known minima, plus failure modes.

Tolerances are on ``max |z - z*|`` (all minimisers are O(1) here), by family:

* second-order, quasi-Newton and LM methods: 1e-6;
* Nelder–Mead (both): 1e-5;
* gradient descent and Adam: 1e-4 (first-order methods converge linearly
  at best; Adam runs with a shorter learning-rate schedule to keep this fast).

``scipy-trust-krylov`` runs with ``gtol=1e-8``: SciPy's own trust-krylov does not
reach ``gtol=1e-10`` on 2-D Rosenbrock (it stops at ``maxiter``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize as so
import torch

from gradfit import nist
from gradfit.objective import Objective
from gradfit.solvers import METHODS, available_methods, solve
from gradfit.solvers.base import RawSolution, SolverOptions

F64 = torch.float64
# 'newton' is registered as the same function as 'newton-cg'; test it once.
ALL = [m for m in available_methods() if m != "newton"]
LEAST_SQUARES = {"lm", "scipy-lm"}
TOL = {"nelder-mead": 1e-5, "scipy-nelder-mead": 1e-5, "gd": 1e-4, "adam": 1e-4}


def options(method: str, **kw) -> SolverOptions:
    opts = SolverOptions(**kw)
    if method == "adam":
        opts.extra.update(lr=0.05, lr_decay_stop=1e-4, patience=2)
    if method == "scipy-trust-krylov":
        opts.gtol = 1e-8
    return opts


def rosenbrock(n: int):
    """Chained Rosenbrock as 0.5*|r|^2; minimum 0 at ones."""

    def res(z):
        return math.sqrt(2.0) * torch.cat([10.0 * (z[1:] - z[:-1] ** 2), 1.0 - z[:-1]])

    obj = Objective(lambda z: 0.5 * (res(z) ** 2).sum(), n, residual_fun=res)
    # The classic start in 2-D; from zeros in higher dimension, which avoids the
    # local minimum near (-1, 1, ..., 1) that exists for 4 <= n <= 7.
    z0 = torch.tensor([-1.2, 1.0], dtype=F64) if n == 2 else torch.zeros(n, dtype=F64)
    return obj, z0, torch.ones(n, dtype=F64)


def quadratic(n: int = 6, cond: float = 1e3):
    """0.5 (z-c)^T A (z-c) with eigenvalues 1..cond, residuals L^T (z-c)."""
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    A = Q @ torch.diag(torch.logspace(0, math.log10(cond), n, dtype=F64)) @ Q.T
    A = 0.5 * (A + A.T)
    c = torch.randn(n, generator=g, dtype=F64)
    L = torch.linalg.cholesky(A)

    def res(z):
        return L.T @ (z - c)

    obj = Objective(lambda z: 0.5 * (z - c) @ (A @ (z - c)), n, residual_fun=res)
    return obj, torch.zeros(n, dtype=F64), c


def gaussian_peak(dtype=F64):
    """Fit a * exp(-0.5 ((x - mu) / exp(w))^2) + b to seeded noisy data."""
    rng = np.random.default_rng(1)
    xn = np.linspace(-5, 5, 101)
    yn = 3.0 * np.exp(-0.5 * ((xn - 0.5) / 0.8) ** 2) + 0.2 + rng.normal(0, 0.05, xn.size)
    x, y = torch.tensor(xn, dtype=dtype), torch.tensor(yn, dtype=dtype)

    def res(z):
        return z[0] * torch.exp(-0.5 * ((x - z[1]) / torch.exp(z[2])) ** 2) + z[3] - y

    def res_np(z):
        return z[0] * np.exp(-0.5 * ((xn - z[1]) / np.exp(z[2])) ** 2) + z[3] - yn

    z0 = np.array([2.0, 0.0, math.log(1.2), 0.0])
    ref = so.least_squares(res_np, z0, method="trf", xtol=1e-15, ftol=1e-15, gtol=1e-15).x
    obj = Objective(lambda z: 0.5 * (res(z) ** 2).sum(), 4, residual_fun=res, dtype=dtype)
    return obj, torch.tensor(z0, dtype=dtype), torch.tensor(ref, dtype=F64)


PROBLEMS = {
    "rosenbrock2": lambda: rosenbrock(2),
    "rosenbrock5": lambda: rosenbrock(5),
    "rosenbrock10": lambda: rosenbrock(10),
    "quadratic-cond1e3": quadratic,
    "gaussian-peak": gaussian_peak,
}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("method", ALL)
def test_known_minimum(method, problem):
    obj, z0, z_star = PROBLEMS[problem]()
    sol = solve(method, obj, z0, options(method))
    assert isinstance(sol, RawSolution)
    assert sol.method == method
    assert sol.success, sol.message
    assert math.isfinite(sol.fun)
    assert sol.z.dtype == F64 and sol.z.shape == (obj.n,)
    err = float((sol.z - z_star).abs().max())
    assert err <= TOL.get(method, 1e-6), f"{method} on {problem}: error {err:.2e} ({sol.message})"
    # fun is the objective at z (for LM: 0.5 |r|^2, which these objectives equal).
    assert sol.fun == pytest.approx(float(obj.value(sol.z)), rel=1e-9, abs=1e-20)


def test_registry_lists_every_required_method():
    required = {
        "nelder-mead", "gd", "adam", "bfgs", "lbfgs", "newton-cg", "trust-krylov",
        "trust-exact", "lm", "scipy-bfgs", "scipy-lbfgs", "scipy-nelder-mead",
        "scipy-newton-cg", "scipy-trust-krylov", "scipy-trust-exact", "scipy-lm",
    }
    assert required <= set(ALL)
    assert available_methods() == sorted(METHODS)
    assert METHODS["newton"] is METHODS["newton-cg"]


def test_unknown_method_lists_choices():
    obj, z0, _ = quadratic()
    with pytest.raises(ValueError) as err:
        solve("bgfs", obj, z0)
    msg = str(err.value)
    assert "unknown method 'bgfs'" in msg
    assert "choose one of: adam, bfgs," in msg
    for name in available_methods():
        assert name in msg


@pytest.mark.parametrize("method", sorted(LEAST_SQUARES))
def test_least_squares_needs_residuals(method):
    obj = Objective(lambda z: (z**2).sum(), 2)
    with pytest.raises(ValueError, match="residual"):
        solve(method, obj, torch.ones(2, dtype=F64))


def test_aliases_and_default_options():
    obj, z0, z_star = quadratic()
    sol = solve(" Newton ", obj, z0)
    assert sol.method == "newton-cg" and sol.success
    assert solve("L-BFGS", obj, z0).method == "lbfgs"
    assert float((sol.z - z_star).abs().max()) < 1e-6


def sqrt_problem():
    """Minimum at (2, 1); sqrt is NaN for x < 0, where Newton-type first steps land."""

    def res(z):
        return torch.stack([10.0 * (torch.sqrt(z[0]) - math.sqrt(2.0)), z[1] - 1.0])

    obj = Objective(lambda z: 0.5 * (res(z) ** 2).sum(), 2, residual_fun=res)
    return obj, torch.tensor([2.0, 1.0], dtype=F64)


@pytest.mark.parametrize("method", ALL)
def test_nonfinite_start_fails_cleanly(method):
    obj, _ = sqrt_problem()
    sol = solve(method, obj, torch.tensor([-1.0, 0.0], dtype=F64), options(method))
    assert not sol.success
    assert "non-finite" in sol.message and "start" in sol.message
    assert sol.nit == 0


@pytest.mark.parametrize("method", ALL)
def test_nan_region_is_backed_out_of(method):
    # From x = 10 a (Gauss-)Newton step lands at x < 0, where f is NaN. Every
    # method must back off and still converge (today all do; a clean failure
    # would be acceptable by contract, but would be a regression).
    obj, z_star = sqrt_problem()
    sol = solve(method, obj, torch.tensor([10.0, 0.0], dtype=F64), options(method))
    assert sol.success, sol.message
    assert math.isfinite(sol.fun) and bool(torch.isfinite(sol.z).all())
    assert float((sol.z - z_star).abs().max()) <= 10 * TOL.get(method, 1e-6), sol.message


def test_lm_nonfinite_jacobian_at_start():
    obj, _ = sqrt_problem()  # d sqrt(x)/dx is infinite at x = 0
    sol = solve("lm", obj, torch.tensor([0.0, 0.0], dtype=F64))
    assert not sol.success and "non-finite Jacobian" in sol.message


def test_lm_reports_iteration_limit():
    obj, z0, _ = rosenbrock(10)
    sol = solve("lm", obj, z0, SolverOptions(max_iter=3))
    assert not sol.success
    assert sol.message == "maximum number of iterations (3) reached"
    assert sol.nit == 3 and math.isfinite(sol.fun)


@pytest.mark.parametrize("method", ["lm", "bfgs", "lbfgs", "newton-cg", "trust-exact",
                                    "trust-krylov", "gd", "adam"])
def test_callback_can_stop(method):
    obj, z0, _ = rosenbrock(5)
    seen = []

    def cb(nit, z, f):
        seen.append((nit, z, f))
        return nit >= 2

    sol = solve(method, obj, z0, options(method, callback=cb))
    assert not sol.success and "callback" in sol.message
    # called after accepted steps (every check_every iterations for Adam), with a rising
    # iteration count; the solver stopped at the first call that asked it to, and returns
    # the iteration, point and value that call saw
    nits = [nit for nit, _, _ in seen]
    assert nits == sorted(set(nits)) and nits[-1] >= 2 and all(n < 2 for n in nits[:-1])
    nit, z, f = seen[-1]
    assert sol.nit == nit
    assert torch.equal(sol.z, z) and sol.fun == f
    assert f == pytest.approx(float(obj.value(z)), rel=1e-12)
    assert f < float(obj.value(z0))  # it had made progress: two real iterations


def test_lm_on_rank_deficient_jacobian():
    # r depends on z0 + z1 only: J has rank 1; LM must still reduce to the minimum.
    def res(z):
        return torch.stack([z[0] + z[1] - 3.0, 2.0 * (z[0] + z[1]) - 6.0])

    obj = Objective(lambda z: 0.5 * (res(z) ** 2).sum(), 2, residual_fun=res)
    sol = solve("lm", obj, torch.tensor([0.0, 0.0], dtype=F64))
    assert sol.success, sol.message
    assert float(sol.z.sum()) == pytest.approx(3.0, abs=1e-10)


@pytest.mark.parametrize("method", ["lm", "bfgs", "lbfgs", "newton-cg", "trust-exact",
                                    "trust-krylov", "gd"])
def test_float32_objective_keeps_dtype_and_converges(method):
    obj, z0, z_star = gaussian_peak(torch.float32)
    sol = solve(method, obj, z0, options(method))
    assert sol.success, sol.message
    assert sol.z.dtype == torch.float32
    assert float((sol.z.double() - z_star).abs().max()) <= 1e-3


@pytest.mark.parametrize("method", ["trust-exact", "scipy-trust-exact"])
def test_trust_exact_leaves_a_saddle(method):
    # At (0, 1) the gradient has no component along the negative-curvature
    # direction x (the "hard case"); only an exact trust region sees it.
    obj = Objective(lambda z: z[0] ** 4 - z[0] ** 2 + z[1] ** 2, 2)
    sol = solve(method, obj, torch.tensor([0.0, 1.0], dtype=F64))
    assert sol.success, sol.message
    assert sol.fun == pytest.approx(-0.25, abs=1e-12)
    assert abs(float(sol.z[0])) == pytest.approx(math.sqrt(0.5), abs=1e-7)


NIST_DIR = Path(__file__).parent / "data" / "nist-strd"


def nist_objective(name):
    prob = nist.load(NIST_DIR / f"{name}.dat")
    x, y = torch.tensor(prob.x, dtype=F64), torch.tensor(prob.y, dtype=F64)
    model = nist.MODELS[name]

    def res(b):
        return model(b, x) - y

    return prob, Objective(lambda b: 0.5 * (res(b) ** 2).sum(), prob.n_params, residual_fun=res)


@pytest.mark.parametrize("start", [1, 2])
@pytest.mark.parametrize("name", ["MGH09", "MGH10", "BoxBOD", "Eckerle4", "Rat43", "Thurber"])
def test_lm_nist_hard_problems(name, start):
    # The solver alone (no parameter transform): >= 9.3 digits measured on every
    # StRD problem from both starts; 8 asserted to leave room for BLAS differences.
    prob, obj = nist_objective(name)
    b0 = torch.tensor(prob.start1 if start == 1 else prob.start2, dtype=F64)
    sol = solve("lm", obj, b0)
    assert sol.success, sol.message
    assert nist.digits(sol.z.numpy(), prob.certified).min() >= 8
    assert nist.digits(2 * sol.fun, prob.certified_rss) >= 8


@pytest.mark.parametrize("start", [1, 2])
def test_lm_geodesic_acceleration_option(start):
    # Bennett5 creeps along a curved valley: 790 iterations from start 1 without
    # geodesic acceleration, about 45 with it.
    prob, obj = nist_objective("Bennett5")
    b0 = torch.tensor(prob.start1 if start == 1 else prob.start2, dtype=F64)
    sol = solve("lm", obj, b0, SolverOptions(extra={"geodesic": True}))
    assert sol.success, sol.message
    assert sol.nit < 150
    assert nist.digits(sol.z.numpy(), prob.certified).min() >= 8


def test_underdetermined_least_squares():
    # One residual, three parameters: 'lm' finds a zero-cost point; MINPACK refuses.
    def res(z):
        return torch.stack([z[0] + z[1] ** 2 + z[2] - 3.0])

    obj = Objective(lambda z: 0.5 * (res(z) ** 2).sum(), 3, residual_fun=res)
    sol = solve("lm", obj, torch.zeros(3, dtype=F64))
    assert sol.success and sol.fun <= 1e-25
    with pytest.raises(ValueError, match="at least as many residuals"):
        solve("scipy-lm", obj, torch.zeros(3, dtype=F64))
