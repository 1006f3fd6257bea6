"""fit_batch's fast paths: normal equations from columns, the pixelwise one-pass Jacobian.

Each fast path is checked against an independent computation (dense JᵀJ in NumPy,
complex-step derivatives, curve_fit), and the pixelwise Jacobian must switch itself
off for a model that is not elementwise in the data points.
"""

import numpy as np
import pytest
import scipy.optimize
import torch

import gradfit
import gradfit.batch as gb
from gradfit.solvers.batched import jacobian_columns, normal_from_columns
from test_batch import NAMES, X, gauss2d, gauss2d_np, jac_np, make_problems, start
from test_batch_jacobian import gauss2d_jac


def rel(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.max(np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-300))


@pytest.mark.parametrize("weight, sign", [(None, 1.0), (None, -1.0), ("per_problem", 1.0),
                                          ("shared", -1.0), ("scalar", 1.0)])
def test_normal_from_columns_equals_dense_products(weight, sign):
    rng = np.random.default_rng(1)
    b, m, n = 6, 40, 5
    C = rng.normal(size=(b, n, m))
    C[0, 4] = C[0, 3] * (1 + 1e-9)  # a near-singular JᵀJ in problem 0
    r = rng.normal(size=(b, m))
    w = {None: None, "per_problem": rng.uniform(0.5, 2, (b, m)),
         "shared": rng.uniform(0.5, 2, m), "scalar": np.array(0.7)}[weight]
    cols = [torch.tensor(C[:, j]) for j in range(n)]
    cost, A, g = normal_from_columns(cols, torch.tensor(r),
                                     None if w is None else torch.tensor(w), sign)
    J = sign * (C if w is None else C * (w[:, None, :] if w.ndim == 2 else w))
    J = J.transpose(0, 2, 1)  # (b, m, n)
    A_ref = np.einsum("bmi,bmj->bij", J, J)
    g_ref = np.einsum("bmi,bm->bi", J, r)
    assert A.shape == (b, n, n) and g.shape == (b, n) and cost.shape == (b,)
    assert rel(A.numpy(), A_ref) < 1e-12
    assert rel(g.numpy(), g_ref) < 1e-12
    assert rel(cost.numpy(), 0.5 * (r * r).sum(1)) < 1e-12


def test_pixelwise_columns_equal_complex_step():
    T, Y, P0 = make_problems(5, "gaussian", seed=11)
    th = torch.tensor(P0)
    x = torch.tensor(X)
    vm = torch.func.vmap(gauss2d, in_dims=(0, None))
    P = {nm: th[:, k] for k, nm in enumerate(NAMES)}
    mu, cols = gb._pixelwise_columns(vm, P, x, NAMES, (X.shape[1],))
    J = torch.stack(cols, 2).numpy()
    for i in range(len(P0)):
        assert rel(mu[i].numpy(), gauss2d_np(X, *P0[i])) < 1e-12
        ref = jac_np(X, *P0[i])
        assert np.max(np.abs(J[i] - ref)) < 1e-10 * np.abs(ref).max()
    # and the n-pass columns agree with it
    mu2, cols2 = jacobian_columns(
        lambda z: vm({nm: z[:, k] for k, nm in enumerate(NAMES)}, x), th, len(NAMES))
    assert rel(torch.stack(cols2, 2).numpy(), J) < 1e-9


def _spy(monkeypatch):
    calls = []
    orig = gb._pixelwise_columns

    def spy(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    monkeypatch.setattr(gb, "_pixelwise_columns", spy)
    return calls


def test_pixelwise_path_is_used_and_matches_the_n_pass_path(monkeypatch):
    T, Y, P0 = make_problems(5, "gaussian", seed=4)
    calls = _spy(monkeypatch)
    fast = gradfit.fit_batch(gauss2d, X, Y, params=start(P0))
    n_fast = len(calls)
    slow = gradfit.fit_batch(gauss2d, X, Y, params=start(P0), options={"pixelwise": False})
    assert n_fast > 5  # the check (2 calls) and then every LM iteration
    assert len(calls) == n_fast  # switched off: not called again
    assert fast.success.all() and slow.success.all()
    for nm in NAMES:
        assert rel(fast.params[nm], slow.params[nm]) < 1e-9
        assert rel(fast.errors[nm], slow.errors[nm]) < 1e-9


def normalised(p, x):
    """Not elementwise: the Gaussian is normalised by its sum over the data points."""
    dx, dy = x[0] - p["x0"], x[1] - p["y0"]
    g = torch.exp(-0.5 * ((dx / p["sx"]) ** 2 + (dy / p["sy"]) ** 2))
    return p["amp"] * g / g.sum() + p["bg"]


def normalised_np(x, amp, x0, y0, sx, sy, bg):
    g = np.exp(-0.5 * (((x[0] - x0) / sx) ** 2 + ((x[1] - y0) / sy) ** 2))
    return amp * g / g.sum() + bg


def reshaped(p, x):
    """Computed on x as (2, 225), returned as 15 x 15: the per-point copies do not fit."""
    return gauss2d(p, x).reshape(15, 15)


@pytest.mark.parametrize("case", ["normalised", "reshaped"])
def test_pixelwise_switches_off_for_non_elementwise_models(case, monkeypatch):
    rng = np.random.default_rng(2)
    B = 4
    if case == "normalised":
        names = ["amp", "x0", "y0", "sx", "sy", "bg"]
        T = np.array([5000.0, 7.0, 6.5, 1.8, 1.4, 20.0]) * (1 + 0.02 * rng.normal(size=(B, 6)))
        Y = np.stack([normalised_np(X, *t) for t in T]) + rng.normal(0, 2.0, (B, 225))
        P0 = T * (1 + 0.02 * rng.normal(size=(B, 6)))
        model, ref_fn, y_fit = normalised, normalised_np, Y
    else:
        names = NAMES
        T, Y, P0 = make_problems(B, "gaussian", seed=9)
        model, ref_fn, y_fit = reshaped, gauss2d_np, Y.reshape(B, 15, 15)
    calls = _spy(monkeypatch)
    res = gradfit.fit_batch(model, X, y_fit, params={nm: P0[:, k] for k, nm in enumerate(names)})
    # tried on the check, refused, never used in the fit
    assert 1 <= len(calls) <= 2
    assert res.success.all()
    for i in range(B):
        popt, pcov = scipy.optimize.curve_fit(ref_fn, X, Y[i], p0=P0[i], ftol=1e-14,
                                              xtol=1e-14, gtol=1e-14)
        got = np.array([res.params[nm][i] for nm in names])
        err = np.array([res.errors[nm][i] for nm in names])
        assert rel(got, popt) < 1e-6
        assert rel(err, np.sqrt(np.diag(pcov))) < 1e-5


def test_poisson_closed_form_slope_equals_autodiff():
    rng = np.random.default_rng(5)
    y = rng.poisson(rng.uniform(0, 50, 4000)).astype(float)
    mu = np.maximum(y * (1 + rng.normal(0, 0.3, y.size)), 0.0) + rng.uniform(0.01, 2, y.size)
    # points on the series branch (|y - mu| <= 1e-4 y), and exactly at y = mu
    y[:320] = np.maximum(y[:320], 1.0)
    mu[:300] = y[:300] * (1 + rng.uniform(-9e-5, 9e-5, 300))
    mu[300:320] = y[300:320]
    yt = torch.tensor(y)
    mt = torch.tensor(mu, requires_grad=True)
    lik = gradfit.likelihoods.Poisson()
    r_ref = lik.residuals(yt, mt)
    (dr_ref,) = torch.autograd.grad(r_ref.sum(), mt)
    r, dr = gb._poisson_residual_and_slope(yt, mt.detach())
    near = np.abs(y - mu) <= 1e-4 * y
    assert near.sum() > 300 and (y == 0).sum() > 20
    assert torch.equal(r, r_ref.detach())  # the same operations: the same numbers
    assert rel(dr.numpy(), dr_ref.numpy()) < 1e-12
    # an independent check: central differences of the deviance residual
    h = 1e-6 * mu
    up = lik.residuals(yt, torch.tensor(mu + h)).numpy()
    dn = lik.residuals(yt, torch.tensor(mu - h)).numpy()
    assert np.max(np.abs((up - dn) / (2 * h) - dr.numpy()) / np.abs(dr.numpy())) < 1e-6


@pytest.mark.parametrize("lik, method", [("gaussian", "lm"), ("poisson", "lm"),
                                         ("gaussian", "lbfgs")])
def test_working_set_refill_gives_the_same_fits(lik, method):
    # chunk_size 3 of 11 problems: finished problems leave the working set and waiting
    # ones join it many times; each problem's fit must not notice
    T, Y, P0 = make_problems(11, lik, seed=13)
    params = start(P0)
    kw = {"likelihood": lik, "method": method}
    whole = gradfit.fit_batch(gauss2d, X, Y, params=params, **kw)
    small = gradfit.fit_batch(gauss2d, X, Y, params=params, chunk_size=3, **kw)
    assert whole.success.all() and small.success.all()
    assert np.array_equal(whole.nit, small.nit)
    assert len(set(whole.nit.tolist())) > 1  # problems finish at different iterations
    for nm in NAMES:
        assert rel(small.params[nm], whole.params[nm]) < 1e-12
        assert rel(small.errors[nm], whole.errors[nm]) < 1e-10
    assert rel(small.fun, whole.fun) < 1e-13
    # and the fits are fits: one problem against gradfit.fit
    one = gradfit.fit(gauss2d, X, Y[4], params=dict(zip(NAMES, P0[4])), likelihood=lik)
    for nm in NAMES:
        assert abs(small.params[nm][4] - one.params[nm]) <= 1e-6 * abs(one.params[nm]) + 1e-9


def test_max_iter_stops_every_problem_with_a_refilled_working_set():
    T, Y, P0 = make_problems(7, "gaussian", seed=2)
    res = gradfit.fit_batch(gauss2d, X, Y, params=start(P0), chunk_size=2, max_iter=2)
    assert np.all(res.nit == 2) and not res.success.any()
    assert all("maximum number of iterations" in m for m in res.messages)


@pytest.mark.parametrize("lik", [gradfit.likelihoods.Poisson(), gradfit.Cauchy(gamma=3.0)])
def test_hessian_from_model_jacobian_equals_autodiff_hessian(lik):
    from gradfit.solvers.batched import hessian
    T, Y, P0 = make_problems(4, "poisson", seed=8)
    Yt, x = torch.tensor(Y), torch.tensor(X)
    th = torch.tensor(P0 * (1 + 0.01 * np.random.default_rng(0).normal(size=P0.shape)))
    lik.prepare(Yt[0])
    nll_one = torch.func.vmap(lambda yy, mu: lik.nll(yy, mu, {}))
    vm = torch.func.vmap(gauss2d, in_dims=(0, None))
    vj = torch.func.vmap(gauss2d_jac, in_dims=(0, None))

    def mu_cols(t):
        mu, d = vj({nm: t[:, k] for k, nm in enumerate(NAMES)}, x)
        return None, None, mu, [d[nm] for nm in NAMES]

    H = gb._hessian_from_model_jacobian(mu_cols, nll_one, Yt, th)
    H_ref = hessian(lambda t: nll_one(Yt, vm({nm: t[:, k] for k, nm in enumerate(NAMES)}, x)),
                    th, len(NAMES))
    assert H.shape == (4, 7, 7)
    assert float((H - H_ref).abs().max()) < 1e-10 * float(H_ref.abs().max())
    # the second-derivative term matters here: JᵀWJ alone is not the Hessian
    assert float((H - H.transpose(1, 2)).abs().max()) == 0.0


def test_detached_model_jacobian_keeps_the_autodiff_hessian():
    # derivatives computed outside torch's graph: right first derivatives, no second
    def jac_detached(p, x):
        mu, d = gauss2d_jac(p, x)
        return mu, {k: v.detach() for k, v in d.items()}

    T, Y, P0 = make_problems(3, "poisson", seed=6)
    a = gradfit.fit_batch(gauss2d, X, Y, params=start(P0), likelihood="poisson",
                          jacobian=jac_detached)
    b = gradfit.fit_batch(gauss2d, X, Y, params=start(P0), likelihood="poisson")
    assert a.success.all() and b.success.all()
    for nm in NAMES:
        assert rel(a.errors[nm], b.errors[nm]) < 1e-6


def test_read_only_data_and_starts_give_no_warning():
    T, Y, P0 = make_problems(3, "gaussian", seed=1)
    Y.setflags(write=False)
    P0.setflags(write=False)
    res = gradfit.fit_batch(gauss2d, X, Y, params=start(P0))  # filterwarnings = error
    assert res.success.all()


def test_a_coupling_that_switches_on_away_from_the_starts_is_caught_at_the_answers():
    """Elementwise at the starts (b < 0.5), coupled through mean(mu) where b > 0.5: the
    start check passes the one-pass Jacobian, the check at the answers must not, and
    the refit must equal curve_fit (without it the values were off by 1e-4 relative
    with success=True)."""
    import warnings as _w

    x = np.linspace(0, 5, 40)

    def model(p, x):
        mu = p["a"] * torch.exp(-p["b"] * x)
        return mu + torch.clamp(p["b"] - 0.5, min=0.0) * mu.mean()

    def model_np(x, a, b):
        mu = a * np.exp(-b * x)
        return mu + max(b - 0.5, 0.0) * mu.mean()

    rng = np.random.default_rng(1)
    Y = np.stack([model_np(x, 2.0 + 0.1 * i, 0.9) + rng.normal(0, 0.01, x.size)
                  for i in range(6)])
    with pytest.warns(gradfit.FitWarning, match="coupled at the fitted values"):
        r = gradfit.fit_batch(model, x, Y, params={"a": 1.5, "b": 0.3}, method="lm")
    for i in range(6):
        ref, _ = scipy.optimize.curve_fit(model_np, x, Y[i], p0=[1.5, 0.3], xtol=1e-14,
                                          ftol=1e-14)
        np.testing.assert_allclose([r.params["a"][i], r.params["b"][i]], ref, rtol=1e-7)
    # an elementwise model keeps the one-pass Jacobian without a word
    with _w.catch_warnings():
        _w.simplefilter("error")
        gradfit.fit_batch(lambda p, x: p["a"] * torch.exp(-p["b"] * x), x, Y,
                          params={"a": 1.5, "b": 0.3}, method="lm")
