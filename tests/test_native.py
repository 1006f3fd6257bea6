"""fit_batch(engine="numba"): the traced, compiled Levenberg–Marquardt.

Its derivatives are checked against complex-step derivatives of a NumPy model (an
independent reference) and torch's autodiff; its fits against the torch engine (the same
iteration, so the same answers and status codes) and SciPy's curve_fit; and every
refusal names its reason.
"""

import math
import os

import numpy as np
import pytest
import scipy.optimize
import torch

import gradfit
from gradfit.solvers import native
from test_batch import NAMES, X, gauss2d, gauss2d_np, jac_np, make_problems


@pytest.fixture(autouse=True, scope="module")
def _cache_dir(tmp_path_factory):
    """Kernels cached in a folder of the test run's own, not the user's ~/.cache."""
    old = os.environ.get("GRADFIT_CACHE_DIR")
    os.environ["GRADFIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("native-cache"))
    yield
    if old is None:
        os.environ.pop("GRADFIT_CACHE_DIR")
    else:
        os.environ["GRADFIT_CACHE_DIR"] = old


def _params(P0):
    return {n: P0[:, k] for k, n in enumerate(NAMES)}


def _batch(Y, P0, **kw):
    return gradfit.fit_batch(gauss2d, X, Y, params=_params(P0), **kw)


# ------------------------------------------------------------------ derivatives
def test_normal_equations_against_complex_step():
    """JᵀJ and Jᵀr of the kernel from the complex-step Jacobian of a NumPy model."""
    _, Y, P0 = make_problems(3, "gauss", seed=3)
    x = torch.as_tensor(X)
    k = native.compile_lm(lambda *a: gauss2d(dict(zip(NAMES, a[:7])), a[7]), 7, range(7),
                          [x], P0[0], (225,), "gaussian", np.ones(225))
    for b in range(3):
        cost, A, g = k.normal(P0[b], Y[b])
        J = -jac_np(X, *P0[b])  # r = y - mu
        r = Y[b] - gauss2d_np(X, *P0[b])
        assert cost == pytest.approx(0.5 * r @ r, rel=1e-13)
        np.testing.assert_allclose(A, J.T @ J, rtol=1e-11, atol=1e-11 * np.abs(J.T @ J).max())
        np.testing.assert_allclose(g, J.T @ r, rtol=1e-9, atol=1e-10 * np.abs(J.T @ r).max())


def test_vectorised_exp_and_log_against_libm():
    """The kernel's loop exp and log (polynomials, not calls) against the C library's,
    within 2 ulp, and at the edges: overflow, underflow (0 below exp(-708.39), which
    documents its one difference: no subnormal results), subnormal input, 0, <0, inf, NaN."""
    k = native.compile_lm(lambda a, x: a * x, 1, [0], [torch.ones(3, dtype=torch.float64)],
                          [1.0], (3,), "gaussian", np.ones(3))
    rng = np.random.default_rng(5)
    x = np.concatenate([np.linspace(-760.0, 720.0, 20001), rng.uniform(-40, 40, 5000),
                        [709.782712893384, 709.7827128933841, -708.39, -708.3900001, 0.0,
                         -0.0, 1e-300, np.inf, -np.inf, np.nan]])
    v, kb = x.copy(), np.empty_like(x)
    k.module._vexp(v, kb)
    ref = np.array([math.exp(t) if t <= 709.782712893384 else math.inf for t in x[:-3]])
    normal = (x[:-3] >= -708.39) & np.isfinite(ref)
    ulp = np.abs(v[:-3][normal] - ref[normal]) / np.spacing(ref[normal])
    assert ulp.max() <= 2.0
    assert np.all(v[:-3][x[:-3] < -708.39] == 0.0) and np.all(ref[x[:-3] < -708.39] < 2.3e-308)
    assert np.all(np.isinf(v[:-3][x[:-3] > 709.782712893384]))
    assert v[-3] == np.inf and v[-2] == 0.0 and np.isnan(v[-1])
    assert np.isfinite(v[x == 709.782712893384]).all()

    y = np.concatenate([np.exp(rng.uniform(-744.0, 709.0, 20000)), rng.uniform(0.5, 2.0, 5000),
                        [5e-324, 1e-310, 1.0, 2.0, np.sqrt(2.0), 0.0, -0.0, -1.0, np.inf,
                         np.nan]])
    v, fb, kb = y.copy(), np.empty_like(y), np.empty_like(y)
    k.module._vlog(v, fb, kb)
    ref = np.array([math.log(t) for t in y[:-5]])
    good = ref != 0.0
    ulp = np.abs(v[:-5][good] - ref[good]) / np.spacing(np.abs(ref[good]))
    assert ulp.max() <= 2.0 and v[-8] == 0.0
    assert v[-5] == -np.inf and v[-4] == -np.inf and np.isnan(v[-3])
    assert v[-2] == np.inf and np.isnan(v[-1])


def test_poisson_hessian_against_complex_step_differences():
    """The kernel's exact Hessian of Poisson's nll against central differences of its
    complex-step gradient (a NumPy model, independent of the generated code)."""
    _, Y, P0 = make_problems(2, "poisson", seed=8)
    x = torch.as_tensor(X)
    k = native.compile_lm(lambda *a: gauss2d(dict(zip(NAMES, a[:7])), a[7]), 7, range(7),
                          [x], P0[0], (225,), "poisson", np.ones(225))
    H = k.hessians(P0, Y)

    def grad(th, y):
        out = np.empty(7)
        for j in range(7):
            q = th.astype(complex)
            q[j] += 1e-30j
            mu = gauss2d_np(X, *q)
            out[j] = (mu - y * np.log(mu)).sum().imag / 1e-30
        return out

    for b in range(2):
        eps = 1e-6 * np.maximum(np.abs(P0[b]), 1.0)
        Hfd = np.stack([(grad(P0[b] + e, Y[b]) - grad(P0[b] - e, Y[b])) / (2 * e.max())
                        for e in np.diag(eps)], axis=1)
        np.testing.assert_allclose(H[b], 0.5 * (Hfd + Hfd.T), rtol=1e-5,
                                   atol=1e-7 * np.abs(H[b]).max())
        assert np.abs(H[b] - H[b].T).max() == 0.0


def _every_op(p, x):
    """A model that uses every operation of the engine's table at least once."""
    a, b, c = p["a"], p["b"], p["c"]
    u = a * x + b
    t = (torch.exp(-u * u) + torch.log(c + x) + torch.log1p(x * c) + torch.expm1(0.1 * u)
         + torch.sin(u) * torch.cos(b * x) + torch.tan(0.2 * u) + torch.sinh(0.3 * u)
         + torch.cosh(0.2 * u) + torch.tanh(u) + torch.atan(u) + torch.sqrt(c + x * x)
         + torch.rsqrt(c + x) + torch.reciprocal(2.0 + torch.sigmoid(u)) + torch.square(u - c)
         + torch.erf(u) + torch.abs(u - 0.3) + torch.atan2(u, c + 1.0) + u ** 3
         + (c + x) ** 1.5 + (c + x) ** b + 2.0 ** (b * x) - u / (c + 2.0) + (1.0 - u)
         + torch.clamp(u, -0.5, 0.8) + torch.where(u > 0.2, u * c, -u))
    return t + torch.clamp_min(c * x, 0.1) + torch.clamp_max(a * x, 0.5) + torch.neg(b)


def test_every_operation_against_autodiff_and_finite_differences():
    x = torch.linspace(0.05, 1.5, 41, dtype=torch.float64)
    theta = np.array([0.7, -0.2, 0.9])
    names = ("a", "b", "c")

    def fn(*args):
        return _every_op(dict(zip(names, args[:3])), args[3])

    k = native.compile_lm(fn, 3, [0, 1, 2], [x], theta, (41,), "gaussian", np.ones(41))
    y = np.zeros(41)
    for th in (theta, np.array([1.3, 0.4, 0.5]), np.array([0.2, -0.6, 1.7])):
        cost, A, g = k.normal(th, y)
        t = torch.tensor(th, requires_grad=True)
        J = torch.autograd.functional.jacobian(lambda t: -fn(*t, x), t).numpy()
        mu = fn(*torch.tensor(th), x).numpy()
        assert cost == pytest.approx(0.5 * mu @ mu, rel=1e-13)
        np.testing.assert_allclose(A, J.T @ J, rtol=1e-11, atol=1e-12 * np.abs(J.T @ J).max())
        np.testing.assert_allclose(g, J.T @ (-mu), rtol=1e-10,
                                   atol=1e-12 * np.abs(J.T @ mu).max())
        # central differences, an independent check of the autodiff reference
        h = 1e-6
        Jfd = np.stack([(-(fn(*torch.tensor(th + h * e), x)
                           - fn(*torch.tensor(th - h * e), x)) / (2 * h)).numpy()
                        for e in np.eye(3)], axis=1)
        np.testing.assert_allclose(J, Jfd, rtol=1e-5, atol=1e-6)

    # the second derivatives of every operation: the Hessian of Poisson's nll of a
    # positive model, against torch's
    def pos(*args):
        return 50.0 + fn(*args)

    kp = native.compile_lm(pos, 3, [0, 1, 2], [x], theta, (41,), "poisson", np.ones(41))
    counts = np.round(pos(*torch.tensor(theta), x).numpy() * 1.1)
    for th in (theta, np.array([1.3, 0.4, 0.5])):
        def nll(t):
            mu = pos(*t, x)
            return (mu - torch.as_tensor(counts) * torch.log(mu)).sum()

        Ht = torch.autograd.functional.hessian(nll, torch.tensor(th)).numpy()
        H = kp.hessians(th[None], counts[None])[0]
        np.testing.assert_allclose(H, Ht, rtol=1e-9, atol=1e-10 * np.abs(Ht).max())


# ------------------------------------------------------------------------ fits
@pytest.mark.parametrize("noise", ["gauss", "poisson"])
def test_fits_agree_with_the_torch_engine(noise):
    _, Y, P0 = make_problems(300, noise, seed=11)
    lik = "poisson" if noise == "poisson" else "gaussian"
    nat = _batch(Y, P0, likelihood=lik, engine="numba")
    ref = _batch(Y, P0, likelihood=lik, engine="torch")
    assert nat.engine == "numba" and ref.engine == "torch"
    assert nat.success.all() and ref.success.all()
    for nm in NAMES:
        np.testing.assert_allclose(nat.params[nm], ref.params[nm], rtol=1e-7,
                                   atol=1e-7 * np.abs(ref.params[nm]).max())
        np.testing.assert_allclose(nat.errors[nm], ref.errors[nm], rtol=1e-6)
    np.testing.assert_allclose(nat.fun, ref.fun, rtol=1e-10)
    # the same iteration: the same number of steps (rounding may move a stop by one)
    assert np.mean(np.abs(nat.nit - ref.nit) <= 1) > 0.97
    assert abs(nat.nit.mean() - ref.nit.mean()) < 0.1


def test_gaussian_sigma_against_curve_fit():
    """Known per-point sigma: values and errors as curve_fit(absolute_sigma=True)."""
    _, Y, P0 = make_problems(20, "gauss", seed=5)
    sigma = np.linspace(3.0, 7.0, 225)
    res = _batch(Y, P0, likelihood=gradfit.Gaussian(sigma=sigma), engine="numba")
    assert res.engine == "numba" and res.success.all()
    for b in range(20):
        popt, pcov = scipy.optimize.curve_fit(
            gauss2d_np, X, Y[b], p0=P0[b], sigma=sigma, absolute_sigma=True,
            jac=jac_np, ftol=1e-14, xtol=1e-14, gtol=1e-14)
        got = np.array([res.params[nm][b] for nm in NAMES])
        err = np.array([res.errors[nm][b] for nm in NAMES])
        np.testing.assert_allclose(got, popt, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(err, np.sqrt(np.diag(pcov)), rtol=1e-5)


def test_fixed_parameters_and_skipped_problems():
    _, Y, P0 = make_problems(40, "gauss", seed=9)
    Y[3, 10] = np.nan
    params = _params(P0)
    params["bg"] = gradfit.Param(20.0, fixed=True)
    kw = dict(params=params, on_nan="skip")
    nat = gradfit.fit_batch(gauss2d, X, Y, engine="numba", **kw)
    ref = gradfit.fit_batch(gauss2d, X, Y, engine="torch", **kw)
    assert nat.names == ref.names and "bg" not in nat.names
    assert not nat.success[3] and "skipped" in nat.messages[3]
    ok = ref.success
    assert ok.sum() == 39 and (nat.success == ok).all()
    for nm in NAMES:
        np.testing.assert_allclose(nat.params[nm][ok], ref.params[nm][ok], rtol=1e-7)
    assert (nat.params["bg"][ok] == 20.0).all() and (nat.errors["bg"][ok] == 0).all()


def test_iteration_limit_and_status_codes_match():
    _, Y, P0 = make_problems(30, "gauss", seed=2)
    nat = _batch(Y, P0, engine="numba", max_iter=2)
    ref = _batch(Y, P0, engine="torch", max_iter=2)
    np.testing.assert_array_equal(nat.nit, ref.nit)
    assert nat.messages == ref.messages
    assert (nat.nit <= 2).all() and not nat.success.all()


def test_bad_start_is_refused_naming_the_problem():
    _, Y, P0 = make_problems(12, "poisson", seed=4)
    P0[5, 0], P0[5, 6] = -1e4, -50.0  # mu < 0 with counts: Poisson's nll is not finite
    with pytest.raises(ValueError, match=r"not finite at the initial parameters of "
                                         r"problem\(s\) 5;"):
        _batch(Y, P0, likelihood="poisson", engine="numba")


# ------------------------------------------------------------------- refusals
@pytest.mark.parametrize("change, reason", [
    (dict(priors={"amp": gradfit.Laplace(500.0, 50.0)}), "Normal priors only.*Laplace on 'amp'"),
    (dict(likelihood=gradfit.Cauchy(gamma=5.0)), "Gaussian and Poisson"),
    (dict(dtype="float32"), "float64"),
    (dict(method="lbfgs"), "method 'lm'"),
])
def test_refusals_name_the_reason(change, reason):
    _, Y, P0 = make_problems(4, "gauss", seed=1)
    params = _params(P0)
    with pytest.raises(ValueError, match=f"engine='numba' cannot fit this: .*{reason}"):
        gradfit.fit_batch(gauss2d, X, Y, params=params, engine="numba", **change)
    # 'auto' fits them with torch instead
    res = gradfit.fit_batch(gauss2d, X, Y, params=params, engine="auto", **change)
    assert res.engine == "torch"


def test_unsupported_operation_is_named():
    def summed(p, x):  # a sum over the points: not elementwise
        g = p["a"] * torch.exp(-x / p["b"])
        return g / g.sum()

    x = np.linspace(0, 5, 30)
    y = np.exp(-x / 2.0)[None].repeat(3, 0)
    y = y / y.sum(1, keepdims=True)
    kw = dict(params={"a": 1.0, "b": 1.5})
    with pytest.raises(ValueError, match=r"aten\.sum.*elementwise in their points"):
        gradfit.fit_batch(summed, x, y, engine="numba", **kw)

    def cumulative(p, x):
        return torch.cumsum(p["a"] * x, 0) + p["b"]
    with pytest.raises(ValueError, match=r"aten\.cumsum"):
        gradfit.fit_batch(cumulative, x, y, engine="numba", **kw)
    assert gradfit.fit_batch(summed, x, y, engine="auto", **kw).engine == "torch"


def test_shaped_parameter_and_batched_x_are_refused():
    def quad(p, x):
        return p["c"][0] + p["c"][1] * x + p["c"][2] * x * x

    x = np.linspace(0, 1, 20)
    y = np.stack([1 + 2 * x, 2 - x])
    with pytest.raises(ValueError, match="scalar parameters only; c has a shape"):
        gradfit.fit_batch(quad, x, y, params={"c": [0.0, 1.0, 0.0]}, engine="numba")

    def line2(p, x):
        return p["a"] + p["b"] * x
    xb = np.stack([x, x + 1])
    with pytest.raises(ValueError, match="x shared by all problems"):
        gradfit.fit_batch(line2, xb, y, params={"a": 0.0, "b": 1.0}, x_batched=True,
                          engine="numba")


def test_unknown_engine():
    _, Y, P0 = make_problems(2, "gauss", seed=1)
    with pytest.raises(ValueError, match="unknown engine 'jax'"):
        _batch(Y, P0, engine="jax")


def test_kernel_source_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADFIT_CACHE_DIR", str(tmp_path))
    x = torch.linspace(0, 1, 7, dtype=torch.float64)
    k = native.compile_lm(lambda a, b, x: a * x * x + torch.cos(b * x), 2, [0, 1], [x],
                          [1.0, 2.0], (7,), "gaussian", np.ones(7))
    files = list((tmp_path / "native").glob("gradfit_native_*.py"))
    assert len(files) == 1 and files[0].read_text() == k.source
    assert k.source.startswith("# generated by gradfit.solvers.native")
    # the cosine has its own loop, so that the main loop has no call left to vectorise
    src = k.source
    main = src[src.index("cost = 0.0"):src.index("_accumulate(D, R, A, g)\n    return")]
    assert "T[0, i]" in main and "math.cos" not in main


# ------------------------------------------------------------------ one small fit
def test_single_fit_agrees_with_curve_fit_and_the_torch_engine():
    _, Y, P0 = make_problems(6, "gauss", seed=21)
    for b in range(6):
        p = dict(zip(NAMES, P0[b]))
        nat = gradfit.fit(gauss2d, X, Y[b], params=p, engine="numba")
        ref = gradfit.fit(gauss2d, X, Y[b], params=p)
        popt, pcov = scipy.optimize.curve_fit(gauss2d_np, X, Y[b], p0=P0[b], jac=jac_np,
                                              ftol=1e-14, xtol=1e-14, gtol=1e-14)
        assert nat.engine == "numba" and ref.engine == "torch" and nat.success
        got = np.array([nat.params[k] for k in NAMES])
        err = np.array([nat.errors[k] for k in NAMES])
        np.testing.assert_allclose(got, popt, rtol=1e-7)
        np.testing.assert_allclose(err, np.sqrt(np.diag(pcov)), rtol=1e-5)
        np.testing.assert_allclose(got, [ref.params[k] for k in NAMES], rtol=1e-7)
        assert nat.fun == pytest.approx(ref.fun, rel=1e-10)
        assert nat.error_method == "dense-gauss-newton" and nat.problem is not None


def test_single_poisson_fit_agrees_with_the_torch_engine():
    _, Y, P0 = make_problems(3, "poisson", seed=22)
    for b in range(3):
        p = dict(zip(NAMES, P0[b]))
        nat = gradfit.fit(gauss2d, X, Y[b], params=p, likelihood="poisson", engine="numba")
        ref = gradfit.fit(gauss2d, X, Y[b], params=p, likelihood="poisson")
        assert nat.success and nat.error_method == "dense-hessian"
        for k in NAMES:
            assert nat.params[k] == pytest.approx(ref.params[k], rel=1e-7, abs=1e-9)
            assert nat.errors[k] == pytest.approx(ref.errors[k], rel=1e-6)
        assert nat.fun == pytest.approx(ref.fun, rel=1e-10)


def test_single_fit_refusals_and_auto():
    _, Y, P0 = make_problems(1, "gauss", seed=23)
    p = dict(zip(NAMES, P0[0]))
    cases = [(dict(method="bfgs"), "method 'lm'"), (dict(errors="cg"), "dense"),
             (dict(priors={"amp": gradfit.Laplace(500.0, 50.0)}), "Normal priors only"),
             (dict(priors=lambda q: -q["amp"] ** 2), "not a log_prior"),
             (dict(likelihood="cauchy"), "Gaussian and Poisson")]
    for kw, reason in cases:
        with pytest.raises(ValueError, match=f"engine='numba' cannot fit this: .*{reason}"):
            gradfit.fit(gauss2d, X, Y[0], params=p, engine="numba", **kw)
        assert gradfit.fit(gauss2d, X, Y[0], params=p, engine="auto", **kw).engine == "torch"
    with pytest.raises(ValueError, match="unknown engine 'fast'"):
        gradfit.fit(gauss2d, X, Y[0], params=p, engine="fast")
    assert gradfit.fit(gauss2d, X, Y[0], params=p, engine="auto").engine == "numba"


def test_poisson_offset_against_scipy():
    """lgamma(y+1) - y log y + y per row: whole counts by table, others by lgamma."""
    from scipy.special import gammaln, xlogy

    Y = np.random.default_rng(3).poisson(40.0, (6, 50)).astype(float)
    Y[0, :3] = [0.0, 2.5, 1e7]  # zero, not whole, beyond the table
    ref = (gammaln(Y + 1) - xlogy(Y, Y) + Y).sum(1)
    np.testing.assert_allclose(native.poisson_nll_offset(Y), ref, rtol=1e-13)


def test_single_fit_with_a_fixed_parameter():
    _, Y, P0 = make_problems(2, "gauss", seed=24)
    p = dict(zip(NAMES, P0[0]), bg=gradfit.Param(20.0, fixed=True))
    nat = gradfit.fit(gauss2d, X, Y[0], params=p, engine="numba")
    ref = gradfit.fit(gauss2d, X, Y[0], params=p)
    assert nat.engine == "numba" and "bg" not in nat.names and nat.params["bg"] == 20.0
    assert nat.errors["bg"] == 0.0
    for k in NAMES[:-1]:
        assert nat.params[k] == pytest.approx(ref.params[k], rel=1e-7)
        assert nat.errors[k] == pytest.approx(ref.errors[k], rel=1e-6)


def test_without_numba_the_engine_says_how_to_install(monkeypatch):
    monkeypatch.setattr(native, "available", lambda: False)
    _, Y, P0 = make_problems(3, "gauss", seed=25)
    with pytest.raises(ValueError, match=r"pip install 'gradfit\[native\]'"):
        _batch(Y, P0, engine="numba")
    assert _batch(Y, P0, engine="auto").engine == "torch"
    with pytest.raises(ValueError, match=r"pip install numba"):
        gradfit.fit(gauss2d, X, Y[0], params=dict(zip(NAMES, P0[0])), engine="numba")


def _outer(p, x):
    """A 2-D model built by broadcasting a column against a row (shape (15, 1) inside)."""
    return p["a"] * torch.exp(-((x[0] - p["x0"]) ** 2 + (x[1][:, None] - p["y0"]) ** 2)
                              / 4.0) + p["b"]


def test_broadcast_shapes_inside_the_model():
    u = np.arange(15.0)
    xx = (np.tile(u, (15, 1)), u)  # (15, 15) and (15,)
    true = 100 * np.exp(-((xx[0] - 7.2) ** 2 + (u[:, None] - 6.8) ** 2) / 4.0) + 5
    Y = true + np.random.default_rng(1).normal(0, 1, (40, 15, 15))
    P = {"a": 80.0, "x0": 7.0, "y0": 7.0, "b": 4.0}
    nat = gradfit.fit_batch(_outer, xx, Y, params=P, engine="numba", x_batched=False)
    ref = gradfit.fit_batch(_outer, xx, Y, params=P, x_batched=False)
    assert nat.engine == "numba" and nat.success.all()
    for k in P:
        np.testing.assert_allclose(nat.params[k], ref.params[k], rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(nat.errors[k], ref.errors[k], rtol=1e-6)

    def moved(p, x):  # a per-point value reshaped, so it lands on other points: refused
        r = (x[1] - p["y0"]) ** 2  # (15,), along the columns
        return p["a"] * torch.exp(-((x[0] - p["x0"]) ** 2 + r.unsqueeze(1)) / 4.0) + p["b"]

    with pytest.raises(ValueError, match=r"aten\.unsqueeze.*reshapes a value that depends"):
        gradfit.fit_batch(moved, xx, Y, params=P, engine="numba", x_batched=False)


@pytest.mark.parametrize("noise", ["gauss", "poisson"])
def test_bounds_agree_with_the_torch_engine(noise):
    """Two-sided, lower-only and upper-only bounds (sigmoid and softplus transforms), and a
    parameter held at its bound."""
    _, Y, P0 = make_problems(80, noise, seed=31)
    lik = "poisson" if noise == "poisson" else "gaussian"
    params = _params(P0)
    params["sx"] = gradfit.Param(P0[:, 3], bounds=(0.5, 5.0))
    params["amp"] = gradfit.Param(P0[:, 0], bounds=(0.0, None))
    params["sy"] = gradfit.Param(P0[:, 4], bounds=(None, 10.0))
    # the background's truth is about 20: an upper bound at 19.5 holds some problems there
    params["bg"] = gradfit.Param(np.minimum(P0[:, 6], 19.0), bounds=(None, 19.5))
    kw = dict(params=params, likelihood=lik)
    with pytest.warns(gradfit.FitWarning, match="ended at a bound"):
        nat = gradfit.fit_batch(gauss2d, X, Y, engine="numba", **kw)
    with pytest.warns(gradfit.FitWarning, match="ended at a bound"):
        ref = gradfit.fit_batch(gauss2d, X, Y, engine="torch", **kw)
    assert nat.engine == "numba"
    assert (nat.success == ref.success).all() and nat.success.mean() > 0.9
    assert nat.at_bounds == ref.at_bounds and any("bg" in a for a in nat.at_bounds)
    ok = nat.success & np.array([not a for a in nat.at_bounds])
    for k in NAMES:
        np.testing.assert_allclose(nat.params[k][ok], ref.params[k][ok], rtol=1e-7,
                                   atol=1e-8 * np.abs(ref.params[k]).max())
        np.testing.assert_allclose(nat.errors[k][ok], ref.errors[k][ok], rtol=1e-6)
    assert (nat.params["bg"] <= 19.5).all() and (nat.params["sx"] >= 0.5).all()


def test_single_fit_with_bounds_agrees_with_the_torch_engine():
    _, Y, P0 = make_problems(3, "gauss", seed=32)
    for b in range(3):
        p = dict(zip(NAMES, P0[b]), sx=gradfit.Param(P0[b, 3], bounds=(0.5, 5.0)),
                 amp=gradfit.Param(P0[b, 0], bounds=(0.0, None)))
        nat = gradfit.fit(gauss2d, X, Y[b], params=p, engine="numba")
        ref = gradfit.fit(gauss2d, X, Y[b], params=p)
        assert nat.engine == "numba" and nat.success and nat.at_bounds == ()
        for k in NAMES:
            assert nat.params[k] == pytest.approx(ref.params[k], rel=1e-7)
            assert nat.errors[k] == pytest.approx(ref.errors[k], rel=1e-6)


def test_a_kernel_refused_by_its_check_is_not_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADFIT_CACHE_DIR", str(tmp_path))
    x = torch.linspace(0, 1, 9, dtype=torch.float64)

    def model(p, x):
        return p["a"] * torch.sin(p["b"] * x)

    calls = []

    def refuse(kernel):
        calls.append(kernel)
        raise native.NotCompilable("disagrees")

    lik = gradfit.Gaussian()
    args = (model, ("a", "b"), [0, 1], x, [1.0, 2.0], (9,), lik)
    with pytest.raises(native.NotCompilable, match="disagrees"):
        native.cached_kernel(*args, check=refuse)
    with pytest.raises(native.NotCompilable, match="disagrees"):
        native.cached_kernel(*args, check=refuse)  # checked again, not served from the cache
    assert len(calls) == 2
    k = native.cached_kernel(*args, check=calls.append)
    assert native.cached_kernel(*args, check=refuse) is k and len(calls) == 3


# ---------------------------------------------------------------------- priors
def _line(p, x):
    return p["a"] + p["b"] * x


def test_normal_priors_against_the_closed_form():
    """A line with known sigma and Normal priors on both coefficients: the MAP answer and
    its covariance are ridge regression's closed form, (XᵀWX + Λ)⁻¹ (XᵀWy + Λm)."""
    rng = np.random.default_rng(31)
    x = np.linspace(-1.0, 2.0, 40)
    sig = 0.3
    B = 70  # the parallel kernel
    Y = 1.5 + 0.8 * x + rng.normal(0, sig, (B, x.size))
    pri = {"a": gradfit.Normal(1.0, 0.05), "b": gradfit.Normal(0.0, 0.2)}
    res = gradfit.fit_batch(_line, x, Y, params={"a": 0.0, "b": 0.0},
                            likelihood=gradfit.Gaussian(sigma=sig), priors=pri, engine="numba")
    assert res.engine == "numba" and res.success.all()
    Xd = np.stack([np.ones_like(x), x], axis=1)
    Lam, m = np.diag([1 / 0.05 ** 2, 1 / 0.2 ** 2]), np.array([1.0, 0.0])
    cov = np.linalg.inv(Xd.T @ Xd / sig ** 2 + Lam)
    ref = (cov @ (Xd.T @ Y.T / sig ** 2 + (Lam @ m)[:, None])).T
    np.testing.assert_allclose(res.params["a"], ref[:, 0], rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(res.params["b"], ref[:, 1], rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(res.cov, np.broadcast_to(cov, res.cov.shape), rtol=1e-9)
    # the objective: Gaussian's ½χ² (gradfit's nll) + the priors' -log p with constants
    r = (Y - ref[:, :1] - ref[:, 1:] * x) / sig
    fun = (0.5 * (r * r).sum(1) + 0.5 * ((ref - m) ** 2 / np.array([0.05, 0.2]) ** 2).sum(1)
           + np.log(0.05 * np.sqrt(2 * np.pi)) + np.log(0.2 * np.sqrt(2 * np.pi)))
    np.testing.assert_allclose(res.fun, fun, rtol=1e-10)
    # the prior moved the answer: without it, a is about 1.5, not 1.0
    free = gradfit.fit_batch(_line, x, Y, params={"a": 0.0, "b": 0.0},
                             likelihood=gradfit.Gaussian(sigma=sig), engine="numba")
    assert np.all(np.abs(free.params["a"] - res.params["a"]) > 0.1)
    one = gradfit.fit(_line, x, Y[0], params={"a": 0.0, "b": 0.0},
                      likelihood=gradfit.Gaussian(sigma=sig), priors=pri, engine="numba")
    assert one.engine == "numba"
    assert [one.params["a"], one.params["b"]] == pytest.approx(ref[0], rel=1e-9)
    np.testing.assert_allclose(one.cov, cov, rtol=1e-9)
    assert one.fun == pytest.approx(fun[0], rel=1e-10)


@pytest.mark.parametrize("noise", ["gauss", "poisson"])
def test_normal_priors_agree_with_the_torch_engine(noise):
    """Priors strong enough to move the answer, with bounds, on both likelihoods (least
    squares: errors scaled by the RSS of the data alone)."""
    _, Y, P0 = make_problems(80, noise, seed=32)
    lik = "poisson" if noise == "poisson" else "gaussian"
    pri = {"amp": gradfit.Normal(450.0, 1.0), "sx": gradfit.Normal(1.6, 0.05),
           "bg": gradfit.Normal(20.0, 1.0)}  # (on a fixed parameter: a constant)
    k_sx = NAMES.index("sx")
    params = _params(P0)
    params["sx"] = gradfit.Param(P0[:, k_sx], bounds=(0.5, 5.0))
    params["bg"] = gradfit.Param(20.0, fixed=True)
    nat = gradfit.fit_batch(gauss2d, X, Y, params=params, likelihood=lik, priors=pri,
                            engine="numba")
    ref = gradfit.fit_batch(gauss2d, X, Y, params=params, likelihood=lik, priors=pri)
    assert nat.engine == "numba" and ref.engine == "torch" and nat.success.all()
    for nm in NAMES:
        np.testing.assert_allclose(nat.params[nm], ref.params[nm], rtol=1e-7,
                                   atol=1e-7 * np.abs(ref.params[nm]).max())
        np.testing.assert_allclose(nat.errors[nm], ref.errors[nm], rtol=1e-6)
    np.testing.assert_allclose(nat.fun, ref.fun, rtol=1e-10)
    plain = gradfit.fit_batch(gauss2d, X, Y, params=params, likelihood=lik, engine="numba")
    assert np.median(np.abs(plain.params["amp"] - nat.params["amp"])) > 1.0
    p = {nm: P0[0, k] for k, nm in enumerate(NAMES)}
    p["sx"] = gradfit.Param(P0[0, k_sx], bounds=(0.5, 5.0))
    p["bg"] = gradfit.Param(20.0, fixed=True)
    one = gradfit.fit(gauss2d, X, Y[0], params=p, likelihood=lik, priors=pri, engine="numba")
    one_t = gradfit.fit(gauss2d, X, Y[0], params=p, likelihood=lik, priors=pri)
    assert one.engine == "numba" and one.success
    for nm in NAMES:
        assert one.params[nm] == pytest.approx(one_t.params[nm], rel=1e-7, abs=1e-9)
        assert one.errors[nm] == pytest.approx(one_t.errors[nm], rel=1e-6, abs=1e-12)
    assert one.fun == pytest.approx(one_t.fun, rel=1e-10)


# ------------------------------------------------------------------ threads
_THREADS = r'''
import sys, threading
import numpy as np
import numba
sys.path.insert(0, sys.argv[1])
import gradfit
from test_batch import NAMES, X, gauss2d, make_problems

out = {}
for noise, lik in (("gauss", "gaussian"), ("poisson", "poisson")):
    _, Y, P0 = make_problems(100, noise, seed=1)
    params = {n: P0[:, k] for k, n in enumerate(NAMES)}
    ref = gradfit.fit_batch(gauss2d, X, Y, params=params, likelihood=lik, engine="numba")

    def work(i):
        for _ in range(4):
            r = gradfit.fit_batch(gauss2d, X, Y, params=params, likelihood=lik,
                                  engine="numba")
            out[noise, i] = np.allclose(r.params["amp"], ref.params["amp"], rtol=1e-12) \
                and np.allclose(r.errors["amp"], ref.errors["amp"], rtol=1e-12)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    [t.start() for t in ts]
    [t.join() for t in ts]
print(numba.threading_layer(), len(out), all(out.values()))
'''


def test_concurrent_calls_under_the_workqueue_layer(tmp_path):
    """Numba's fallback threading layer ends the process when two Python threads launch
    a parallel kernel at once; the engine takes turns there (3 threads, both
    likelihoods: the fit, the Poisson Hessian and offset are parallel kernels)."""
    import subprocess
    import sys

    script = tmp_path / "threads.py"
    script.write_text(_THREADS)
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    out = subprocess.run([sys.executable, str(script), os.path.dirname(__file__)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["workqueue", "6", "True"], out.stdout + out.stderr[-2000:]


@pytest.mark.parametrize("nf", [1, 3, 4, 7, 8, 23, 24])
def test_blocked_normal_equation_sums(nf):
    """The generated A = D Dᵀ, g = D R (blocks of rows up to 23 parameters, one loop a
    sum beyond) against NumPy's products, on both sides of each block size."""
    ns = {}
    src = native._accumulate_source(nf).replace("cache=True", "cache=False")
    exec(f"import numba\nimport numpy as np\nM = 37\nNF = {nf}\n" + src, ns)
    rng = np.random.default_rng(nf)
    D, R = rng.normal(size=(nf, 37)), rng.normal(size=37)
    A, g = np.full((nf, nf), np.nan), np.full(nf, np.nan)
    ns["_accumulate"](D, R, A, g)
    np.testing.assert_allclose(A, D @ D.T, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(g, D @ R, rtol=1e-13, atol=1e-13)
