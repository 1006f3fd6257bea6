"""The public API of fit/minimize: results, parameters, likelihoods, priors, bad input."""

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

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
        "fit_batch", "BatchResult",
    }
    assert set(gradfit.__all__) == expected
    public = {n for n in dir(gradfit) if not n.startswith("_")}
    modules = {"fitting", "likelihoods", "objective", "params", "priors", "result", "solvers",
               "uncertainty", "nist", "mgh", "profile", "sampling", "oof", "bench", "cli",
               "serialize", "batch", "uncertainty_scale", "data", "distributed",
               "termination"}
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


def _printed_rows(res):
    """parameter -> (value text, error text) from the table that str(res) prints."""
    rows = {}
    for line in str(res).splitlines()[3:]:
        parts = line.split()
        if len(parts) >= 3:
            rows[parts[0]] = (parts[1], parts[2])
    return rows


def _decimals(text):
    mantissa = text.split("e")[0]
    return len(mantissa.split(".")[1]) if "." in mantissa else 0


def test_printed_values_are_rounded_to_their_errors(expo_data):
    # the error is shown to two significant digits and the value to the same decimal place
    x, y = expo_data
    res = gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0})
    sd = {"a": 31.4159, "k": 1.234e-7, "c": 0.5}
    big = dataclasses.replace(res, params={"a": 123456.789, "k": 2.5e-5, "c": -7.25},
                              errors=sd, cov=np.diag(list(sd.values())) ** 2)
    for r in (res, big):
        rows = _printed_rows(r)
        assert set(rows) == {"a", "k", "c"}
        for n, (vs, es) in rows.items():
            v, e = r.params[n], r.errors[n]
            unit = 10.0 ** (math.floor(math.log10(e)) - 1)  # the error's second digit
            assert 10 <= round(float(es) / unit) <= 100, (n, es)
            assert abs(float(es) - e) <= 0.5 * unit * (1 + 1e-9), (n, es, e)
            assert abs(float(vs) - v) <= 0.5 * unit * (1 + 1e-9), (n, vs, v)
            assert _decimals(vs) == _decimals(es), (n, vs, es)
    assert _printed_rows(big)["a"] == ("123457", "31")
    assert _printed_rows(big)["c"] == ("-7.25", "0.50")


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


@pytest.mark.parametrize("prior, ref", [
    (gradfit.Normal(0.3, 2.0), stats.norm(0.3, 2.0)),
    (gradfit.Laplace(-0.5, 0.7), stats.laplace(-0.5, 0.7)),
    (gradfit.Uniform(-1.0, 3.0), stats.uniform(-1.0, 4.0)),
    (gradfit.LogNormal(0.2, 0.6), stats.lognorm(0.6, scale=math.exp(0.2))),
])
def test_prior_log_densities_match_scipy(prior, ref):
    t = np.array([0.05, 0.4, 1.0, 2.5, 2.99])
    for v in t:
        assert float(prior(torch.tensor(v))) == pytest.approx(ref.logpdf(v), rel=1e-12)
    # a vector parameter: the log densities of its elements are summed
    assert float(prior(torch.tensor(t))) == pytest.approx(ref.logpdf(t).sum(), rel=1e-12)
    if isinstance(prior, gradfit.Uniform):
        assert float(prior(torch.tensor(3.5))) == -math.inf == ref.logpdf(3.5)


def test_map_with_normal_priors_is_the_closed_form(rng):
    # linear model, known sigma, Normal priors: the posterior is Gaussian, its mode and
    # covariance are (X'X/s^2 + T^-1)^-1 (X'y/s^2 + T^-1 m) and (X'X/s^2 + T^-1)^-1
    x = np.linspace(-1, 1, 15)
    s = 0.4
    y = 0.5 - 1.2 * x + 0.8 * x**2 + rng.normal(0, s, x.size)
    X = np.stack([np.ones_like(x), x, x**2], axis=1)
    m, tau = np.array([0.0, 0.0, 2.0]), np.array([0.3, 0.3, 0.2])
    cov = np.linalg.inv(X.T @ X / s**2 + np.diag(1 / tau**2))
    mode = cov @ (X.T @ y / s**2 + m / tau**2)
    ml = np.linalg.lstsq(X, y, rcond=None)[0]
    assert np.all(np.abs(mode - ml) > 0.05)  # the priors matter here

    def model(p, x):
        return p["a"] + p["b"] * x + p["c"] * x**2

    names = ("a", "b", "c")
    priors = {n: gradfit.Normal(m[i], tau[i]) for i, n in enumerate(names)}
    for method in ("lm", "bfgs"):
        res = gradfit.fit(model, x, y, params=dict.fromkeys(names, 0.0), method=method,
                          likelihood=gradfit.Gaussian(sigma=s), priors=priors)
        assert res.success and res.method == method
        np.testing.assert_allclose([res.params[n] for n in names], mode, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(res.cov, cov, rtol=1e-6, atol=1e-12)
    # a per-parameter callable prior (t -> log p) and a whole-dict callable give the same
    lam = {n: (lambda t, i=i: -0.5 * ((t - m[i]) / tau[i]) ** 2) for i, n in enumerate(names)}
    whole = gradfit.fit(model, x, y, params=dict.fromkeys(names, 0.0),
                        likelihood=gradfit.Gaussian(sigma=s),
                        priors=lambda p: sum(lam[n](p[n]) for n in names))
    for res in (gradfit.fit(model, x, y, params=dict.fromkeys(names, 0.0),
                            likelihood=gradfit.Gaussian(sigma=s), priors=lam), whole):
        assert res.success, res.message
        np.testing.assert_allclose([res.params[n] for n in names], mode, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(res.cov, cov, rtol=1e-5, atol=1e-12)
    # a Normal prior keeps the least-squares form (LM), a callable does not
    assert gradfit.fit(model, x, y, params=dict.fromkeys(names, 0.0), priors=priors,
                       likelihood=gradfit.Gaussian(sigma=s)).method == "lm"


def test_least_squares_errors_with_a_prior_without_residual_form(rng):
    """Unknown sigma (errors scaled by RSS/(n-p) of the data) and a prior that is not a
    residual (Laplace, or a whole-dict callable): the errors are the closed form's, not NaN
    for want of the likelihood's residuals (a bug until this test). The priors are too
    wide to matter: the answer is ordinary least squares, cov = s²(XᵀX)⁻¹."""
    x = np.linspace(-1, 1, 25)
    y = 0.5 - 1.2 * x + rng.normal(0, 0.3, x.size)
    X = np.stack([np.ones_like(x), x], axis=1)
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    r = y - X @ beta
    cov = (r @ r) / (x.size - 2) * np.linalg.inv(X.T @ X)

    def line(p, x):
        return p["a"] + p["b"] * x

    for priors in ({"a": gradfit.Laplace(0.0, 1e9)}, lambda p: -1e-18 * p["a"] ** 2):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            res = gradfit.fit(line, x, y, params={"a": 0.0, "b": 0.0}, priors=priors)
        assert res.success and res.method != "lm"
        np.testing.assert_allclose([res.params["a"], res.params["b"]], beta, rtol=1e-6)
        np.testing.assert_allclose(res.cov, cov, rtol=1e-5, atol=1e-9 * cov.max())
    Y = np.stack([y, y[::-1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bat = gradfit.fit_batch(line, x, Y, params={"a": 0.0, "b": 0.0},
                                priors={"a": gradfit.Laplace(0.0, 1e9)})
    np.testing.assert_allclose(bat.cov[0], cov, rtol=1e-5, atol=1e-9 * cov.max())


def test_map_with_laplace_uniform_lognormal_priors_matches_scipy(expo_data):
    """The MAP of -log L - sum log p, against SciPy's minimiser on the NumPy form built from
    scipy.stats densities."""
    from scipy.optimize import minimize

    x, y = expo_data
    s = 0.05
    laplace, uniform, lognorm = (stats.laplace(0.4, 0.05), stats.uniform(0.0, 10.0),
                                 stats.lognorm(0.3, scale=1.0))

    def neg_log_post(t):
        a, k, c = t
        r = (y - (a * np.exp(-k * x) + c)) / s
        return 0.5 * np.sum(r**2) - laplace.logpdf(c) - uniform.logpdf(a) - lognorm.logpdf(k)

    ref = minimize(neg_log_post, [2.5, 1.0, 0.45], method="Nelder-Mead",
                   options={"xatol": 1e-12, "fatol": 1e-14, "maxiter": 20000, "maxfev": 40000})
    assert ref.success
    res = gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0},
                      likelihood=gradfit.Gaussian(sigma=s),
                      priors={"c": gradfit.Laplace(0.4, 0.05), "a": gradfit.Uniform(0, 10),
                              "k": gradfit.LogNormal(0.0, 0.3)})
    assert res.success and res.method != "lm", res.message
    np.testing.assert_allclose([res.params[n] for n in "akc"], ref.x, rtol=1e-6)
    ml = gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0},
                     likelihood=gradfit.Gaussian(sigma=s))
    assert abs(res.params["k"] - ml.params["k"]) > 3e-3  # the priors matter here


def _poisson_nll_numpy(t, x, y):
    return -np.sum(stats.poisson.logpmf(y, t[0] * np.exp(-t[1] * x)))


def _fd_hessian(f, t, rel=1e-4):
    t = np.asarray(t, dtype=float)
    h = rel * np.maximum(np.abs(t), 1.0)
    n = t.size
    H = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            ei, ej = np.eye(n)[i] * h[i], np.eye(n)[j] * h[j]
            H[i, j] = (f(t + ei + ej) - f(t + ei - ej) - f(t - ei + ej) + f(t - ei - ej)) \
                / (4 * h[i] * h[j])
    return H


def test_poisson_fit_matches_scipy(rng):
    from scipy.optimize import minimize

    x = np.linspace(0, 4, 40)
    y = rng.poisson(20 * np.exp(-0.5 * x)).astype(float)

    def m(p, x):
        return p["n"] * torch.exp(-p["k"] * x)

    ref = minimize(_poisson_nll_numpy, [10.0, 1.0], args=(x, y), method="Nelder-Mead",
                   options={"xatol": 1e-12, "fatol": 1e-14, "maxiter": 20000})
    assert ref.success
    err = np.sqrt(np.diag(np.linalg.inv(_fd_hessian(lambda t: _poisson_nll_numpy(t, x, y),
                                                    ref.x))))
    for method in ("auto", "bfgs"):
        res = gradfit.fit(m, x, y, params={"n": 10.0, "k": 1.0}, likelihood="poisson",
                          method=method)
        assert res.success, res.message
        # -log L is the full Poisson log-likelihood (log y! included)
        mu = res.params["n"] * np.exp(-res.params["k"] * x)
        assert res.fun == pytest.approx(-np.sum(stats.poisson.logpmf(y, mu)), rel=1e-12)
        assert res.fun == pytest.approx(ref.fun, rel=1e-10)
        np.testing.assert_allclose([res.params["n"], res.params["k"]], ref.x, rtol=1e-6)
        np.testing.assert_allclose([res.errors["n"], res.errors["k"]], err, rtol=1e-4)


def test_float32_matches_float64(expo_data):
    x, y = expo_data
    r64 = gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0})
    r32 = gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0}, dtype="float32")
    for n in "akc":
        assert r32.params[n] == pytest.approx(r64.params[n], abs=1e-3 * r64.errors[n] + 1e-5)
        assert r32.errors[n] == pytest.approx(r64.errors[n], rel=1e-2)


@pytest.mark.parametrize("how", ["explicit", "auto"])
def test_device_option_gives_the_default_answer(expo_data, device, how):
    # device="auto" picks CUDA where a GPU exists, else the CPU: same answer either way
    x, y = expo_data
    start = {"a": 1.0, "k": 1.0, "c": 0.0}
    ref = gradfit.fit(expo, x, y, params=start)
    res = gradfit.fit(expo, x, y, params=start, device=device if how == "explicit" else "auto")
    assert res.success and isinstance(res.params["a"], float)
    # the same float64 arithmetic on the CPU; GPU reductions may round differently
    tol = 1e-12 if device == "cpu" else 1e-9
    for n in "akc":
        assert res.params[n] == pytest.approx(ref.params[n], rel=tol)
        assert res.errors[n] == pytest.approx(ref.errors[n], rel=1e3 * tol)
    assert res.fun == pytest.approx(ref.fun, rel=1e3 * tol)


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
    for bad, shape in ((lambda p, x: p["a"] * x[:-1], r"\(59,\)"),
                       (lambda p, x: (p["a"] * x)[:, None], r"\(60, 1\)")):
        with pytest.raises(ValueError, match=rf"model returned shape {shape} but y has shape "
                                             r"\(60,\)"):
            gradfit.fit(bad, x, y, params={"a": 1.0})


def _walled_expo(wall, seen):
    """expo, NaN for k < wall; ``seen`` records every k the fit evaluates (where readable)."""

    def m(p, x):
        k = p["k"]
        try:  # under vmap (batched Jacobians) the value cannot be read: skip the record
            seen.append(float(k.detach()))
        except RuntimeError:
            pass
        return p["a"] * torch.exp(-k * x) + torch.sqrt(k - wall) * 0 + p["c"]

    return m


@pytest.mark.parametrize("method", ["lm", "bfgs", "lbfgs"])
def test_nan_during_fit_is_backed_out_of(expo_data, method):
    # From a = 10, k = 3 every method's early steps land at k < 0.8, where the model is
    # NaN; each must back off and still reach the optimum (which lies at k = 1.28).
    x, y = expo_data
    seen = []
    res = gradfit.fit(_walled_expo(0.8, seen), x, y, params={"a": 10.0, "k": 3.0, "c": 0.0},
                      method=method)
    assert min(seen) < 0.8, f"{method} never met the NaN region"
    ref = gradfit.fit(expo, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0})
    assert res.success, res.message
    assert math.isfinite(res.fun) and res.fun == pytest.approx(ref.fun, rel=1e-10)
    for n in "akc":
        assert res.params[n] == pytest.approx(ref.params[n], rel=1e-6)
        assert res.errors[n] == pytest.approx(ref.errors[n], rel=1e-4)


@pytest.mark.parametrize("start", [1.0, 10.0])
@pytest.mark.parametrize("method", ["lm", "bfgs", "lbfgs", "newton-cg", "trust-exact",
                                    "trust-krylov"])
def test_nan_wall_before_the_optimum_is_a_failure(expo_data, method, start):
    # NaN for k < 1.4 and the optimum at k = 1.28: every method runs into the wall and
    # stops there, at a point that is not a minimum; none may report success.
    x, y = expo_data
    seen = []
    with warnings.catch_warnings():
        # stopped right at the wall, the Hessian there may be NaN: NaN errors, said so
        warnings.filterwarnings("ignore", "the Hessian is not finite", gradfit.FitWarning)
        res = gradfit.fit(_walled_expo(1.4, seen), x, y,
                          params={"a": start, "k": 3.0, "c": 0.0}, method=method)
        assert min(seen) < 1.4, f"{method} never met the NaN region"
        assert not res.success, res.message
        assert math.isfinite(res.fun) and res.params["k"] >= 1.4
        with pytest.raises(gradfit.FitError, match="did not succeed"):
            gradfit.fit(_walled_expo(1.4, []), x, y, params={"a": start, "k": 3.0, "c": 0.0},
                        method=method, strict=True)


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
