"""gradfit.fit_batch: B fits at once agree with a loop of gradfit.fit and with SciPy."""

import json
import math

import numpy as np
import pytest
import scipy.optimize
import torch

import gradfit

N = 15
NAMES = ["amp", "x0", "y0", "sx", "sy", "th", "bg"]
TRUTH = np.array([500.0, 7.0, 7.0, 1.8, 1.4, 0.4, 20.0])
SPREAD = np.array([20.0, 0.3, 0.3, 0.1, 0.1, 0.05, 1.0])
_yy, _xx = np.meshgrid(np.arange(N, dtype=float), np.arange(N, dtype=float), indexing="ij")
X = np.stack([_xx.ravel(), _yy.ravel()])  # shared by all problems: (2, 225)


def gauss2d(p, x):
    """Rotated elliptical 2-D Gaussian on a constant background (7 parameters)."""
    dx, dy = x[0] - p["x0"], x[1] - p["y0"]
    c, s = torch.cos(p["th"]), torch.sin(p["th"])
    u, v = c * dx + s * dy, -s * dx + c * dy
    return p["amp"] * torch.exp(-0.5 * ((u / p["sx"]) ** 2 + (v / p["sy"]) ** 2)) + p["bg"]


def gauss2d_np(x, amp, x0, y0, sx, sy, th, bg):
    """The same model in NumPy (works on complex numbers, for complex-step derivatives)."""
    dx, dy = x[0] - x0, x[1] - y0
    c, s = np.cos(th), np.sin(th)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return amp * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2)) + bg


def jac_np(x, *p):
    """Complex-step Jacobian of gauss2d_np: exact to rounding, independent of torch."""
    p = np.asarray(p, dtype=complex)
    h = 1e-30
    cols = []
    for j in range(p.size):
        q = p.copy()
        q[j] += 1j * h
        cols.append(gauss2d_np(x, *q).imag / h)
    return np.stack(cols, axis=1)


def make_problems(B, noise, seed=7):
    rng = np.random.default_rng(seed)
    T = TRUTH + rng.normal(0, 1, (B, 7)) * SPREAD
    mu = np.stack([gauss2d_np(X, *t) for t in T])
    if noise == "poisson":
        Y = rng.poisson(mu).astype(float)
    else:
        Y = mu + rng.normal(0, 5.0, mu.shape)
    # per-problem starts, off the truth (and off integer values, see Poisson below)
    P0 = T * (1 + 0.03 * rng.standard_normal((B, 7))) + 0.01
    return T, Y, P0


def start(P0):
    return {n: P0[:, k] for k, n in enumerate(NAMES)}


def close(a, b, rel):
    return abs(a - b) <= rel * max(abs(a), abs(b))


@pytest.fixture(scope="module")
def gaussian_batch():
    T, Y, P0 = make_problems(5, "gaussian")
    res = gradfit.fit_batch(gauss2d, X, Y, params=start(P0))
    return T, Y, P0, res


def test_gaussian_batch_matches_fit_loop_and_curve_fit(gaussian_batch):
    T, Y, P0, res = gaussian_batch
    assert res.success.all(), res.failures()
    assert res.method == "lm"
    assert res.cov.shape == (5, 7, 7) and res.fun.shape == (5,) and res.nit.shape == (5,)
    for i in range(len(res)):
        one = gradfit.fit(gauss2d, X, Y[i], params=dict(zip(NAMES, P0[i])), method="lm")
        popt, pcov = scipy.optimize.curve_fit(
            gauss2d_np, X, Y[i], p0=P0[i], jac=jac_np, ftol=1e-14, xtol=1e-14, gtol=1e-14)
        for k, n in enumerate(NAMES):
            v, e = res.params[n][i], res.errors[n][i]
            assert close(v, one.params[n], 1e-6) and close(e, one.errors[n], 1e-6), (i, n)
            assert close(v, popt[k], 1e-6), (i, n, v, popt[k])
            assert close(e, math.sqrt(pcov[k, k]), 1e-6), (i, n, e, math.sqrt(pcov[k, k]))
        assert res.fun[i] == pytest.approx(one.fun, rel=1e-9)
        # errors are honest in scale: about 5/sqrt(225)-ish for the background
        assert 0.1 < res.errors["bg"][i] < 1.0


def test_poisson_batch_matches_fit_loop_and_scipy():
    T, Y, P0 = make_problems(4, "poisson", seed=3)
    res = gradfit.fit_batch(gauss2d, X, Y, params=start(P0), likelihood="poisson")
    assert res.success.all(), res.failures()

    def nll(p, y):
        mu = gauss2d_np(X, *p)
        return np.sum(mu - y * np.log(mu))

    def grad(p, y):  # complex step through the Poisson nll
        g = np.empty(7)
        for j in range(7):
            q = np.asarray(p, dtype=complex)
            q[j] += 1e-30j
            g[j] = nll(q, y).imag / 1e-30
        return g

    for i in range(len(res)):
        one = gradfit.fit(gauss2d, X, Y[i], params=dict(zip(NAMES, P0[i])),
                          likelihood="poisson", method="lm")
        ref = scipy.optimize.minimize(nll, P0[i], args=(Y[i],), jac=grad, method="BFGS",
                                      options={"gtol": 1e-9, "maxiter": 2000})
        ref = scipy.optimize.minimize(nll, ref.x, args=(Y[i],), jac=grad, method="trust-exact",
                                      hess=lambda p, y: _fd_hess(grad, p, y),
                                      options={"gtol": 1e-10})
        cov = np.linalg.inv(_fd_hess(grad, ref.x, Y[i]))
        for k, n in enumerate(NAMES):
            v, e = res.params[n][i], res.errors[n][i]
            assert close(v, one.params[n], 1e-6) and close(e, one.errors[n], 1e-6), (i, n)
            assert close(v, ref.x[k], 1e-6), (i, n, v, ref.x[k])
            assert close(e, math.sqrt(cov[k, k]), 1e-6), (i, n, e, math.sqrt(cov[k, k]))


def _fd_hess(grad, p, y):
    """Central differences of a complex-step gradient: Hessian to ~1e-9 relative."""
    H = np.empty((7, 7))
    for j in range(7):
        h = 1e-5 * max(abs(p[j]), 1.0)
        a, b = np.array(p, float), np.array(p, float)
        a[j] += h
        b[j] -= h
        H[:, j] = (grad(a, y) - grad(b, y)) / (2 * h)
    return 0.5 * (H + H.T)


def test_lbfgs_agrees_with_lm(gaussian_batch):
    T, Y, P0, res = gaussian_batch
    lb = gradfit.fit_batch(gauss2d, X, Y, params=start(P0), method="lbfgs")
    assert lb.method == "lbfgs" and lb.success.all(), lb.failures()
    for n in NAMES:
        np.testing.assert_allclose(lb.params[n], res.params[n], rtol=1e-6)
        np.testing.assert_allclose(lb.errors[n], res.errors[n], rtol=1e-6)


def test_one_hard_problem_does_not_change_the_others(gaussian_batch):
    T, Y, P0, res = gaussian_batch
    Y2 = Y.copy()
    P2 = P0.copy()
    P2[2] = TRUTH * np.array([0.3, 1.25, 0.8, 2.5, 0.5, 0.2, 3.0])  # far away: many steps
    hard = gradfit.fit_batch(gauss2d, X, Y2, params=start(P2))
    assert hard.nit[2] > res.nit.max()
    for i in (0, 1, 3, 4):
        assert hard.nit[i] == res.nit[i]
        for n in NAMES:
            assert hard.params[n][i] == pytest.approx(res.params[n][i], rel=1e-12, abs=0)
    # one problem stopped by max_iter fails with a message, and the others still succeed
    cut = gradfit.fit_batch(gauss2d, X, Y2, params=start(P2), max_iter=int(res.nit.max()) + 1)
    assert not cut.success[2] and "maximum number of iterations" in cut.messages[2]
    assert cut.success[[0, 1, 3, 4]].all()
    assert "problem" in cut.failures() and " 2 " in cut.failures()


def test_batch_result_interface(gaussian_batch):
    T, Y, P0, res = gaussian_batch
    r1 = res[1]
    assert isinstance(r1, gradfit.FitResult)
    assert r1.params["amp"] == res.params["amp"][1] and r1.names == NAMES
    np.testing.assert_array_equal(r1.cov, res.cov[1])
    assert res[-1].fun == res.fun[-1]
    with pytest.raises(IndexError, match="out of range"):
        res[5]
    d = json.loads(json.dumps(res.to_dict()))
    assert len(d["params"]["amp"]) == 5 and len(d["messages"]) == 5
    assert "5 of 5 fits succeeded" in str(res)
    assert res.failures() == "all 5 fits succeeded"
    np.testing.assert_allclose(np.diagonal(res.corr, axis1=1, axis2=2), 1.0)


def test_shared_start_batched_x_vectorized_model_and_float32(gaussian_batch):
    T, Y, P0, res = gaussian_batch
    # x batched (a leading B axis) and a shared start
    Xb = np.broadcast_to(X, (5,) + X.shape).copy()
    shared = dict(zip(NAMES, TRUTH * 1.01 + 0.01))
    a = gradfit.fit_batch(gauss2d, Xb, Y, params=shared)
    assert a.success.all()
    for n in NAMES:
        np.testing.assert_allclose(a.params[n], res.params[n], rtol=1e-6)

    def vec(p, x):  # handles the batch axis itself
        q = {k: v[:, None] for k, v in p.items()}
        return gauss2d(q, x)

    b = gradfit.fit_batch(vec, X, Y, params=start(P0), vectorized=True)
    for n in NAMES:
        np.testing.assert_allclose(b.params[n], res.params[n], rtol=1e-6)
        np.testing.assert_allclose(b.errors[n], res.errors[n], rtol=1e-6)
    c = gradfit.fit_batch(gauss2d, X, Y, params=start(P0), dtype="float32")
    assert c.success.all()
    for n in NAMES:
        np.testing.assert_allclose(c.params[n], res.params[n], rtol=2e-3, atol=2e-3)


def test_bounds_fixed_and_known_sigma_follow_fit():
    T, Y, P0 = make_problems(3, "gaussian", seed=11)
    params = start(P0)
    params["sx"] = gradfit.Param(P0[:, 3], bounds=(0.5, 5.0))
    params["th"] = gradfit.Param(0.4, fixed=True)
    res = gradfit.fit_batch(gauss2d, X, Y, params=params, likelihood=gradfit.Gaussian(sigma=5.0))
    assert res.success.all(), res.failures()
    assert "th" not in res.names and np.all(res.errors["th"] == 0)
    for i in range(3):
        pi = {n: (gradfit.Param(v[i], bounds=(0.5, 5.0)) if n == "sx" else
                  gradfit.Param(0.4, fixed=True) if n == "th" else v[i])
              for n, v in start(P0).items()}
        one = gradfit.fit(gauss2d, X, Y[i], params=pi, likelihood=gradfit.Gaussian(sigma=5.0))
        for n in NAMES:
            assert close(res.params[n][i], one.params[n], 1e-6)
            assert close(res.errors[n][i], one.errors[n], 1e-6) or one.errors[n] == 0


def test_singular_hessian_is_nan_with_a_warning_naming_the_problem():
    x = np.linspace(0, 1, 20)
    xb = np.stack([np.stack([x, x**2]), np.stack([x, x])])  # problem 1: columns identical

    def lin(p, x):
        return p["a"] * x[0] + p["b"] * x[1]

    y = np.stack([2 * x + 3 * x**2, 5 * x]) + 0.01 * np.cos(7 * x)
    with pytest.warns(gradfit.FitWarning, match="problem 1: .*singular"):
        res = gradfit.fit_batch(lin, xb, y, params={"a": 1.0, "b": 1.0}, x_batched=True)
    assert np.isfinite(res.errors["a"][0]) and np.isfinite(res.errors["b"][0])
    assert np.isnan(res.errors["a"][1]) and np.isnan(res.errors["b"][1])


# ---------------------------------------------------------------------- bad input
def test_bad_input_is_named():
    T, Y, P0 = make_problems(4, "gaussian")
    with pytest.raises(ValueError, match="B = 0"):
        gradfit.fit_batch(gauss2d, X, Y[:0], params=start(P0[:0]) | {"amp": 1.0})
    Xb = np.broadcast_to(X, (3,) + X.shape).copy()
    with pytest.raises(ValueError, match="leading axis of length 3.*B = 4"):
        gradfit.fit_batch(gauss2d, Xb, Y, params=start(P0), x_batched=True)
    with pytest.raises(ValueError, match=r"leading axis \(3\) must equal y's batch axis"):
        gradfit.fit_batch(gauss2d, Xb, Y, params=start(P0))
    params = start(P0)
    sx = P0[:, 3].copy()
    sx[2] = -1.0
    params["sx"] = gradfit.Param(sx, bounds=(0.1, 10))
    with pytest.raises(ValueError, match="'sx' for problem 2 .* outside its bounds"):
        gradfit.fit_batch(gauss2d, X, Y, params=params)
    Yn = Y.copy()
    Yn[3, 17] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf in 1 of 4 problem\(s\): 3.*on_nan='skip'"):
        gradfit.fit_batch(gauss2d, X, Yn, params=start(P0))
    with pytest.raises(ValueError, match="leading batch axis"):
        gradfit.fit_batch(gauss2d, X, Y[0], params=start(P0))
    with pytest.raises(ValueError, match="unknown method 'bfgs'.*auto, lm, lbfgs"):
        gradfit.fit_batch(gauss2d, X, Y, params=start(P0), method="bfgs")
    with pytest.raises(ValueError, match="on_nan must be one of"):
        gradfit.fit_batch(gauss2d, X, Y, params=start(P0), on_nan="drop")
    with pytest.raises(ValueError, match="nuisance"):
        gradfit.fit_batch(gauss2d, X, Y, params=start(P0), likelihood="cauchy")
    with pytest.raises(ValueError, match="not used by the model"):
        gradfit.fit_batch(gauss2d, X, Y, params=start(P0) | {"zz": 1.0})
    with pytest.raises(ValueError, match=r"problem 1: Poisson data"):
        Yp = np.abs(Y)
        Yp[1, 0] = -1
        gradfit.fit_batch(gauss2d, X, Yp, params=start(P0), likelihood="poisson")


def test_nan_problem_skipped_on_request(gaussian_batch):
    T, Y, P0, res = gaussian_batch
    Yn = Y.copy()
    Yn[3, 17] = np.nan
    sk = gradfit.fit_batch(gauss2d, X, Yn, params=start(P0), on_nan="skip")
    assert list(sk.success) == [True, True, True, False, True]
    assert "skipped" in sk.messages[3] and np.isnan(sk.params["amp"][3])
    for n in NAMES:
        np.testing.assert_allclose(sk.params[n][[0, 1, 2, 4]], res.params[n][[0, 1, 2, 4]],
                                   rtol=1e-12)


def test_device_cuda_without_a_gpu_says_so(gaussian_batch):
    T, Y, P0, res = gaussian_batch
    if torch.cuda.is_available():
        g = gradfit.fit_batch(gauss2d, X, Y, params=start(P0), device="cuda")
        for n in NAMES:
            np.testing.assert_allclose(g.params[n], res.params[n], rtol=1e-6)
            np.testing.assert_allclose(g.errors[n], res.errors[n], rtol=1e-6)
    else:
        with pytest.raises(ValueError, match="no CUDA GPU"):
            gradfit.fit_batch(gauss2d, X, Y, params=start(P0), device="cuda")


def test_readme_example_runs(capsys):
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("## Many fits at once", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    batch = ns["batch"]
    assert batch.success.all() and batch.params["a"].shape == (500,)
    np.testing.assert_allclose(batch.params["a"], ns["a"], atol=0.2)
    assert "FitResult" in capsys.readouterr().out


@pytest.mark.parametrize("lik, priors, method", [
    (gradfit.StudentT(nu=3.0, scale=0.3), None, "lm"),
    (gradfit.Cauchy(gamma=0.2), None, "lbfgs"),
    ("gaussian", {"k": gradfit.Normal(1.0, 0.05)}, "lm"),
    (gradfit.Gaussian(sigma=0.3), {"k": gradfit.LogNormal(0.0, 0.1)}, "lbfgs"),
])
def test_other_likelihoods_and_priors_follow_fit(lik, priors, method):
    rng = np.random.default_rng(4)
    x = np.linspace(0, 3, 30)
    amp = rng.uniform(1, 3, 4)
    Y = amp[:, None] * np.exp(-1.1 * x) + 0.3 * rng.standard_t(3, (4, 30))

    def expo(p, x):
        return p["a"] * torch.exp(-p["k"] * x)

    res = gradfit.fit_batch(expo, x, Y, params={"a": 2.0, "k": 1.0}, likelihood=lik,
                            priors=priors, method=method)
    assert res.success.all(), res.failures()
    for i in range(4):
        one = gradfit.fit(expo, x, Y[i], params={"a": 2.0, "k": 1.0}, likelihood=lik,
                          priors=priors, method="bfgs")
        for n in ("a", "k"):
            assert close(res.params[n][i], one.params[n], 1e-6), (i, n)
            assert close(res.errors[n][i], one.errors[n], 1e-5), (i, n)
        assert res.fun[i] == pytest.approx(one.fun, rel=1e-9)


def test_vector_parameter_shared_start_raises_no_warning():
    """A vector parameter with one start for all problems (broadcast over the batch)
    must not hand torch a read-only view (a UserWarning, an error in this suite)."""
    x = np.linspace(0, 4, 40)
    rng = np.random.default_rng(0)
    Y = 2 * np.exp(-1.3 * x)[None] * np.ones((20, 1)) + rng.normal(0, 0.05, (20, 40))
    r = gradfit.fit_batch(lambda p, x: p["a"][0] * torch.exp(-p["a"][1] * x), x, Y,
                          params={"a": np.array([2.0, 1.0])})
    assert r.success.all() and r.params["a"].shape == (20, 2)
    np.testing.assert_allclose(np.median(r.params["a"], axis=0), [2.0, 1.3], rtol=0.05)
