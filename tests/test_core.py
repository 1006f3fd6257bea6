"""The public API of fit/minimize: results, parameters, likelihoods, priors, bad input."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import gradfit
from gradfit import Param


def expo(p, x):
    return p["a"] * torch.exp(-p["k"] * x) + p["c"]


@pytest.fixture
def expo_data(rng):
    x = np.linspace(0, 5, 60)
    y = 3.0 * np.exp(-1.3 * x) + 0.5 + rng.normal(0, 0.05, x.size)
    return x, y


def test_public_surface():
    expected = {
        "fit", "minimize", "sample", "Param", "FitResult", "FitError", "FitWarning",
        "Likelihood", "Gaussian", "Cauchy", "StudentT", "Poisson",
        "Prior", "Normal", "Laplace", "Uniform", "LogNormal", "Samples",
    }
    assert set(gradfit.__all__) == expected
    public = {n for n in dir(gradfit) if not n.startswith("_")}
    modules = {"fitting", "likelihoods", "objective", "params", "priors", "result", "solvers",
               "uncertainty", "nist", "mgh", "profile", "sampling", "oof", "bench", "cli",
               "models"}
    assert public - modules == expected


def test_least_squares_matches_curve_fit(expo_data):
    from scipy.optimize import curve_fit

    x, y = expo_data
    res = gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0})
    assert res.success, res.message
    popt, pcov = curve_fit(lambda x, a, k, c: a * np.exp(-k * x) + c, x, y, p0=[1, 1, 0])
    for i, n in enumerate(["a", "k", "c"]):
        assert res.params[n] == pytest.approx(popt[i], rel=1e-7)
        assert res.errors[n] == pytest.approx(math.sqrt(pcov[i, i]), rel=1e-5)
    assert res.names == ["a", "k", "c"]
    assert res.cov.shape == (3, 3)
    assert np.allclose(np.diag(res.corr), 1.0)
    assert res.ndata == 60 and res.dof == 57
    assert res.method == "lm"
    assert isinstance(res.params["a"], float)


def test_result_printing_and_json(expo_data):
    x, y = expo_data
    res = gradfit.fit(expo, x, y, params={"a": 1.0, "k": Param(1.0, bounds=(0, 10)), "c": 0.0})
    text = str(res)
    assert "parameter" in text and "a" in text and "success" in text
    assert "FitResult(" in repr(res)
    assert "<table>" in res._repr_html_()
    d = json.loads(json.dumps(res.to_dict()))
    assert set(d) >= {"params", "errors", "cov", "fun", "success", "message", "nfev", "time_s"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.fun = 3.0  # frozen


def test_known_sigma_and_fixed_and_bounds(expo_data):
    x, y = expo_data
    res = gradfit.fit(expo, x, y, params={"a": 1.0, "k": Param(1.0, bounds=(0.1, 5)),
                                          "c": Param(0.5, fixed=True)},
                      likelihood=gradfit.Gaussian(sigma=0.05))
    assert res.success
    assert res.names == ["a", "k"]
    assert res.errors["c"] == 0.0 and res.params["c"] == 0.5
    assert 0.1 < res.params["k"] < 5
    # known sigma: errors are not rescaled by the residuals
    res2 = gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": Param(0.5, fixed=True)},
                       likelihood=gradfit.Gaussian(sigma=0.1))
    assert res2.errors["a"] == pytest.approx(2 * res.errors["a"], rel=1e-3)


def test_vector_parameter_with_partial_fixed(rng):
    x = np.linspace(-1, 1, 80)
    coef = np.array([0.3, -1.0, 2.0, 0.5])
    y = np.polynomial.polynomial.polyval(x, coef) + rng.normal(0, 0.01, x.size)

    def poly(p, x):
        c = p["c"]
        return c[0] + c[1] * x + c[2] * x**2 + c[3] * x**3

    res = gradfit.fit(poly, x, y, params={"c": Param(np.zeros(4), fixed=[False, False, True,
                                                                          False])})
    assert res.names == ["c[0]", "c[1]", "c[3]"]
    assert res.params["c"].shape == (4,)
    assert res.params["c"][2] == 0.0 and res.errors["c"][2] == 0.0
    full = gradfit.fit(poly, x, y, params={"c": np.zeros(4)})
    assert np.allclose(full.params["c"], coef, atol=0.02)


def test_minimize_bare_nll():
    def nll(p):
        return 0.5 * ((p["m"] - 2.0) / 0.5) ** 2 + 0.5 * ((p["s"] + 1.0) / 2.0) ** 2

    res = gradfit.minimize(nll, params={"m": 0.0, "s": 0.0}, method="bfgs")
    assert res.success
    assert res.params["m"] == pytest.approx(2.0, abs=1e-8)
    assert res.errors["m"] == pytest.approx(0.5, rel=1e-6)
    assert res.errors["s"] == pytest.approx(2.0, rel=1e-6)
    assert res.ndata is None


def test_map_prior_shifts_estimate(expo_data):
    x, y = expo_data
    ml = gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0},
                     likelihood=gradfit.Gaussian(sigma=0.05))
    mp = gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0},
                     likelihood=gradfit.Gaussian(sigma=0.05),
                     priors={"c": gradfit.Normal(0.0, 0.01)})
    assert abs(mp.params["c"]) < abs(ml.params["c"])
    assert mp.errors["c"] < 0.01
    # a Normal prior keeps the least-squares form; a Laplace prior does not
    assert mp.method == "lm"
    lp = gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0},
                     likelihood=gradfit.Gaussian(sigma=0.05),
                     priors={"c": gradfit.Laplace(0.0, 0.01), "a": gradfit.Uniform(0, 10),
                             "k": gradfit.LogNormal(0.0, 1.0)})
    assert lp.success and lp.method != "lm"
    cp = gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0},
                     likelihood=gradfit.Gaussian(sigma=0.05),
                     priors=lambda p: -0.5 * (p["c"] / 0.01) ** 2)
    assert cp.params["c"] == pytest.approx(mp.params["c"], abs=1e-6)


def test_poisson_fit(rng):
    x = np.linspace(0, 4, 40)
    y = rng.poisson(20 * np.exp(-0.5 * x)).astype(float)

    def m(p, x):
        return p["n"] * torch.exp(-p["k"] * x)

    res = gradfit.fit(m, x, y, params={"n": 10.0, "k": 1.0}, likelihood="poisson")
    bf = gradfit.fit(m, x, y, params={"n": 10.0, "k": 1.0}, likelihood="poisson",
                     method="bfgs")
    assert res.success and bf.success
    assert res.params["n"] == pytest.approx(bf.params["n"], rel=1e-6)
    assert res.errors["n"] == pytest.approx(bf.errors["n"], rel=1e-4)
    assert abs(res.params["k"] - 0.5) < 4 * res.errors["k"]


def test_float32_matches_float64(expo_data):
    x, y = expo_data
    r64 = gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0})
    r32 = gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0}, dtype="float32")
    for n in "akc":
        assert r32.params[n] == pytest.approx(r64.params[n], abs=1e-3 * r64.errors[n] + 1e-5)
        assert r32.errors[n] == pytest.approx(r64.errors[n], rel=1e-2)


def test_device_option(expo_data, device):
    x, y = expo_data
    res = gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0}, device=device)
    assert res.success and isinstance(res.params["a"], float)


def test_every_method_fits_the_same_optimum(expo_data):
    x, y = expo_data
    ref = gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0})
    for method in gradfit.solvers.available_methods():
        res = gradfit.fit(expo, x, y, params={"a": 2.5, "k": 1.0, "c": 0.3}, method=method,
                          max_iter=5000)
        assert res.success, (method, res.message)
        loose = method in ("adam", "gd", "nelder-mead", "scipy-nelder-mead")
        tol = 1e-2 if loose else 1e-5
        assert res.params["k"] == pytest.approx(ref.params["k"], rel=tol), method


# ---------------------------------------------------------------- bad input
def test_nan_in_data_names_array_and_index(expo_data):
    x, y = expo_data
    y = y.copy()
    y[7] = np.nan
    with pytest.raises(ValueError, match=r"y.*first at y\[7\]"):
        gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0})
    x = x.copy()
    x[3] = np.inf
    with pytest.raises(ValueError, match=r"x.*x\[3\]"):
        gradfit.fit(expo, x, np.ones_like(x), params={"a": 1.0, "k": 1.0, "c": 0.0})


def test_shape_mismatch_names_both_shapes(expo_data):
    x, y = expo_data
    with pytest.raises(ValueError, match=r"\(60,\).*\(59,\)"):
        gradfit.fit(expo, x, y[:-1], params={"a": 1.0, "k": 1.0, "c": 0.0})


def test_unknown_method_and_likelihood_list_choices(expo_data):
    x, y = expo_data
    with pytest.raises(ValueError, match="unknown method 'bgfs'; choose one of: .*bfgs"):
        gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0}, method="bgfs")
    with pytest.raises(ValueError, match="unknown likelihood 'gauss'.*cauchy"):
        gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0}, likelihood="gauss")
    with pytest.raises(ValueError, match="Levenberg"):
        gradfit.minimize(lambda p: p["a"] ** 2, params={"a": 1.0}, method="lm")


def test_initial_value_outside_bounds(expo_data):
    x, y = expo_data
    with pytest.raises(ValueError, match="parameter 'k'.*outside its bounds"):
        gradfit.fit(expo, x, y, params={"a": 1.0, "k": Param(-1.0, bounds=(0, 5)), "c": 0.0})


def test_unused_and_missing_parameters(expo_data):
    x, y = expo_data
    with pytest.raises(ValueError, match="'zz'.*not used by the model"):
        gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0, "zz": 1.0})
    with pytest.raises(ValueError, match="uses parameter 'c', which is not in params"):
        gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0})


def test_not_finite_at_start(expo_data):
    x, y = expo_data

    def m(p, x):
        return p["a"] * torch.log(p["k"] * x - 10)

    with pytest.raises(ValueError, match="not finite|at the initial parameters"):
        gradfit.fit(m, x, y, params={"a": 1.0, "k": 1.0})


def test_model_wrong_type_or_dtype(expo_data):
    x, y = expo_data
    with pytest.raises(TypeError, match="must return a torch tensor"):
        gradfit.fit(lambda p, x: np.ones(60), x, y, params={"a": 1.0})
    with pytest.raises(TypeError, match="real floats"):
        gradfit.fit(lambda p, x: (p["a"] * x).to(torch.complex128), x, y, params={"a": 1.0})
    with pytest.raises(TypeError, match="dtype"):
        gradfit.fit(lambda p, x: (p["a"] * x).float(), x, y, params={"a": 1.0})


def test_nan_during_fit_never_reports_success(expo_data):
    x, y = expo_data

    def m(p, x):  # NaN for k < 0.5: the fit must step back or fail, never succeed with NaN
        return p["a"] * torch.exp(-p["k"] * x) + torch.sqrt(p["k"] - 0.5) * 0 + p["c"]

    for method in ("lm", "bfgs", "lbfgs"):
        res = gradfit.fit(m, x, y, params={"a": 1.0, "k": 3.0, "c": 0.0}, method=method)
        assert math.isfinite(res.fun) or not res.success
        if res.success:
            assert res.params["k"] >= 0.5


def test_strict_raises_on_failure(expo_data):
    x, y = expo_data
    res = gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0}, max_iter=1)
    assert not res.success and "maximum" in res.message
    with pytest.raises(gradfit.FitError, match="did not succeed"):
        gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0}, max_iter=1, strict=True)


def test_degenerate_parameters_give_nan_errors_with_warning(expo_data):
    x, y = expo_data

    def m(p, x):  # only the product a*b is determined
        return p["a"] * p["b"] * torch.exp(-p["k"] * x) + p["c"]

    with pytest.warns(gradfit.FitWarning, match="a, b"):
        res = gradfit.fit(m, x, y, params={"a": 1.0, "b": 1.0, "k": 1.0, "c": 0.0})
    assert math.isnan(res.errors["a"]) and math.isnan(res.errors["b"])
    assert math.isfinite(res.errors["c"])


def test_bad_device_and_dtype(expo_data):
    x, y = expo_data
    with pytest.raises(ValueError, match="dtype"):
        gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0}, dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0}, device="cuda")


def test_param_space_with_fixed_scalar_and_element():
    from gradfit.params import ParamSpace

    sp = ParamSpace({"a": 1.0, "b": 2.0}).with_fixed({"a": 3.0})
    assert sp.labels == ["b"] and float(sp.init["a"]) == 3.0
    sp = ParamSpace({"c": np.zeros(3), "b": 2.0}).with_fixed({"c[1]": 3.0})
    assert sp.labels == ["c[0]", "c[2]", "b"] and sp.init["c"][1] == 3.0
    with pytest.raises(KeyError, match="unknown parameter 'z'"):
        sp.with_fixed({"z": 1.0})
