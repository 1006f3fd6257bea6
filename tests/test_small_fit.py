"""One small fit made cheap gives the answers of the general paths.

- the separable Jacobian (one backward pass with per-element parameter copies) equals a
  complex-step reference where the model is elementwise in its parameters, and says no
  (None) where it is not: coupled elements (a normalisation, a convolution), a shape the
  model cannot broadcast, or values that change with per-element parameters;
- fits of such models still agree with scipy's curve_fit (values and errors);
- Levenberg–Marquardt's NumPy loop (CPU) and its torch loop (every other device) take
  the same steps.
"""

import numpy as np
import pytest
import torch
from scipy.optimize import curve_fit

import gradfit
import gradfit.solvers.lm as lm
from gradfit.fitting import build_problem
from gradfit.objective import separable_jacobian
from test_fit_speed_paths import P, model, model_np

X = np.linspace(0.0, 4.0, 40)  # (test_fit_speed_paths's model and truth, 40 points)
NAMES = "akwc"


def data(model_np=model_np, seed=0):
    return model_np(X, *P) + 0.01 * np.random.default_rng(seed).standard_normal(X.size)


def fast_jacobian(prob, theta):
    """The problem's one-pass Jacobian ``(r, J)``, or None where it does not apply."""
    begun = prob.fast_jacobian(theta)
    if begun is None:
        return None
    J = begun[1]()
    return None if J is None else (begun[0], J)


def complex_step_jacobian(f_np, p0):
    cols = []
    for j in range(len(p0)):
        q = np.array(p0, dtype=complex)
        q[j] += 1e-30j
        cols.append(-f_np(X, *q).imag / 1e-30)  # r = y - model
    return np.stack(cols, 1)


# coupled models: element i of the output depends on every element of the parameters'
# broadcast (a normalisation; a convolution)
def normalised(p, x):
    g = torch.exp(-p["k"] * x) * torch.cos(p["w"] * x)
    return p["a"] * g / g.abs().sum() * x.numel() + p["c"]


def normalised_np(x, a, k, w, c):
    g = np.exp(-k * x) * np.cos(w * x)
    return a * g / np.sqrt(g * g).sum() * x.size + c  # |g| as sqrt(g²): complex-step safe


KERNEL = torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64)


def blurred(p, x):
    mu = p["a"] * torch.exp(-p["k"] * x) * torch.cos(p["w"] * x)
    mu = torch.nn.functional.conv1d(mu.reshape(1, 1, -1), KERNEL.reshape(1, 1, -1),
                                    padding=1).reshape(-1)
    return mu + p["c"]


def blurred_np(x, a, k, w, c):
    mu = a * np.exp(-k * x) * np.cos(w * x)
    return np.convolve(mu, KERNEL.numpy(), mode="same") + c


def test_separable_jacobian_matches_complex_step():
    p0 = [1.8, 1.1, 0.5, 0.6]
    prob = build_problem(model, X, data(), dict(zip(NAMES, p0)))
    theta = torch.tensor(p0, dtype=torch.float64)
    out = fast_jacobian(prob, theta)
    assert out is not None  # an elementwise model takes the one-pass Jacobian
    r, J = out
    np.testing.assert_allclose(J.numpy(), complex_step_jacobian(model_np, p0),
                               rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(r.numpy(), data() - model_np(X, *p0), rtol=0, atol=1e-14)
    # and the objective's Jacobian is the same as the double-backward one
    obj = prob.objective()
    J_obj = obj.residuals_and_jacobian(theta)[1]
    obj_slow = prob.objective()
    obj_slow._fast_jac = None
    np.testing.assert_allclose(J_obj.numpy(), obj_slow.residuals_and_jacobian(theta)[1].numpy(),
                               rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("coupled, coupled_np", [(normalised, normalised_np),
                                                 (blurred, blurred_np)])
def test_coupled_models_are_refused_and_still_exact(coupled, coupled_np):
    p0 = [1.8, 1.1, 0.5, 0.6]
    y = data(coupled_np)
    prob = build_problem(coupled, X, y, dict(zip(NAMES, p0)))
    theta = torch.tensor(p0, dtype=torch.float64)
    xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    assert separable_jacobian(lambda Q: yt - coupled(prob.space.unflatten(Q), xt), theta,
                              (X.size,)) is None
    assert fast_jacobian(prob, theta) is None
    # the objective falls back to the exact double-backward Jacobian
    J = prob.objective().residuals_and_jacobian(theta)[1].numpy()
    np.testing.assert_allclose(J, complex_step_jacobian(coupled_np, p0), rtol=1e-10,
                               atol=1e-12)
    # and the fit agrees with curve_fit
    res = gradfit.fit(coupled, X, y, params=dict(zip(NAMES, p0)))
    popt, pcov = curve_fit(coupled_np, X, y, p0=p0, xtol=1e-14, ftol=1e-14, gtol=1e-14)
    got = np.array([res.params[k] for k in NAMES])
    err = np.array([res.errors[k] for k in NAMES])
    np.testing.assert_allclose(got, popt, rtol=1e-7)
    np.testing.assert_allclose(err, np.sqrt(np.diag(pcov)), rtol=1e-5)


def test_a_model_that_cannot_broadcast_is_refused():
    Xm = np.stack([X, np.ones_like(X)], 1)  # (m, 2) design matrix

    def linear(p, x):
        return x @ torch.stack([p["a"], p["b"]])

    y = 2.0 * X + 1.0 + 0.01 * np.random.default_rng(1).standard_normal(X.size)
    prob = build_problem(linear, Xm, y, {"a": 1.0, "b": 0.0})
    assert fast_jacobian(prob, torch.tensor([1.0, 0.0], dtype=torch.float64)) is None
    res = gradfit.fit(linear, Xm, y, params={"a": 1.0, "b": 0.0})
    coef, *_ = np.linalg.lstsq(Xm, y, rcond=None)
    np.testing.assert_allclose([res.params["a"], res.params["b"]], coef, rtol=1e-9)


def test_a_model_whose_values_change_with_per_element_parameters_is_refused():
    # the derivatives look elementwise, but numel() of a parameter changes its value
    def sneaky(p, x):
        return p["a"] * torch.exp(-p["k"] * x) * p["k"].detach().numel() ** 0.5 + p["c"]

    def sneaky_np(x, a, k, c):
        return a * np.exp(-k * x) + c

    y = sneaky_np(X, 2.0, 1.3, 0.7) + 0.01 * np.random.default_rng(2).standard_normal(X.size)
    p0 = {"a": 1.8, "k": 1.1, "c": 0.6}
    prob = build_problem(sneaky, X, y, p0)
    assert fast_jacobian(prob, torch.tensor([1.8, 1.1, 0.6], dtype=torch.float64)) is None
    res = gradfit.fit(sneaky, X, y, params=p0)
    popt, _ = curve_fit(sneaky_np, X, y, p0=list(p0.values()), xtol=1e-14, ftol=1e-14)
    np.testing.assert_allclose([res.params[k] for k in "akc"], popt, rtol=1e-7)


def test_bounded_parameters_use_the_chain_rule():
    p0 = [1.8, 1.1, 0.5, 0.6]
    y = data()
    params = {"a": gradfit.Param(1.8, bounds=(0, 10)), "k": gradfit.Param(1.1, bounds=(0, None)),
              "w": 0.5, "c": 0.6}
    res = gradfit.fit(model, X, y, params=params)
    popt, pcov = curve_fit(model_np, X, y, p0=p0, xtol=1e-14, ftol=1e-14, gtol=1e-14)
    np.testing.assert_allclose([res.params[k] for k in NAMES], popt, rtol=1e-7)
    np.testing.assert_allclose([res.errors[k] for k in NAMES], np.sqrt(np.diag(pcov)),
                               rtol=1e-5)
    prob = build_problem(model, X, y, params)
    obj = prob.objective()
    z = obj.as_tensor(prob.space.to_internal(np.array(p0)))
    J_fast = obj.residuals_and_jacobian(z)[1]
    obj._fast_jac = None
    np.testing.assert_allclose(J_fast.numpy(), obj.residuals_and_jacobian(z)[1].numpy(),
                               rtol=1e-12, atol=1e-13)


def test_lm_numpy_and_torch_loops_agree(monkeypatch):
    y = data()
    p0 = dict(zip(NAMES, [1.0, 0.5, 0.8, 0.0]))  # far enough for several LM iterations
    res_np = gradfit.fit(model, X, y, params=p0, method="lm")
    monkeypatch.setattr(lm, "_ops", lambda obj: lm._TorchOps(obj))
    res_t = gradfit.fit(model, X, y, params=p0, method="lm")
    assert res_np.success and res_t.success
    assert res_np.nit == res_t.nit and res_np.nit >= 3
    for k in NAMES:
        assert res_np.params[k] == pytest.approx(res_t.params[k], rel=1e-10)
        assert res_np.errors[k] == pytest.approx(res_t.errors[k], rel=1e-8)


def test_fixed_scalars_and_profiles_keep_the_one_pass_jacobian():
    y = data()
    params = {"a": 1.8, "k": 1.1, "w": gradfit.Param(0.4, fixed=True), "c": 0.6}
    prob = build_problem(model, X, y, params)
    theta = torch.tensor([1.8, 1.1, 0.6], dtype=torch.float64)
    out = fast_jacobian(prob, theta)
    assert out is not None
    ref = complex_step_jacobian(lambda x, a, k, c: model_np(x, a, k, 0.4, c), [1.8, 1.1, 0.6])
    np.testing.assert_allclose(out[1].numpy(), ref, rtol=1e-12, atol=1e-13)
    res = gradfit.fit(model, X, y, params=params)
    popt, pcov = curve_fit(lambda x, a, k, c: model_np(x, a, k, 0.4, c), X, y,
                           p0=[1.8, 1.1, 0.6], xtol=1e-14, ftol=1e-14, gtol=1e-14)
    np.testing.assert_allclose([res.params[k] for k in "akc"], popt, rtol=1e-7)
    np.testing.assert_allclose([res.errors[k] for k in "akc"], np.sqrt(np.diag(pcov)),
                               rtol=1e-5)


def test_vector_parameters_take_the_general_jacobian():
    def poly(p, x):
        return p["c"][0] + p["c"][1] * x + p["c"][2] * x * x

    y = 1.0 + 0.5 * X - 0.2 * X**2 + 0.01 * np.random.default_rng(3).standard_normal(X.size)
    prob = build_problem(poly, X, y, {"c": [0.0, 0.0, 0.0]})
    assert prob.fast_jacobian is None
    res = gradfit.fit(poly, X, y, params={"c": [0.0, 0.0, 0.0]})
    coef = np.polynomial.polynomial.polyfit(X, y, 2)
    np.testing.assert_allclose(res.params["c"], coef, rtol=1e-9)


@pytest.mark.parametrize("likelihood", ["poisson", gradfit.Cauchy(gamma=0.05)])
def test_other_likelihoods_jacobian_matches_the_general_one(likelihood):
    counts = np.random.default_rng(4).poisson(50 * np.exp(-0.5 * X) + 5).astype(float)
    y = counts if likelihood == "poisson" else data()

    def expo(p, x):
        return p["a"] * torch.exp(-p["k"] * x) + p["c"]

    p0 = {"a": 40.0, "k": 0.4, "c": 4.0} if likelihood == "poisson" else \
        {"a": 1.8, "k": 1.1, "c": 0.6}
    prob = build_problem(expo, X, y, p0, likelihood=likelihood)
    theta = torch.tensor(list(p0.values()), dtype=torch.float64)
    obj = prob.objective()
    r_fast, J_fast = obj.residuals_and_jacobian(theta)
    assert fast_jacobian(prob, theta) is not None
    obj._fast_jac = None
    r_slow, J_slow = obj.residuals_and_jacobian(theta)
    np.testing.assert_allclose(r_fast.numpy(), r_slow.numpy(), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(J_fast.numpy(), J_slow.numpy(), rtol=1e-11, atol=1e-13)


def test_a_trial_point_lends_its_forward_pass_to_the_jacobian():
    y = data()
    prob = build_problem(model, X, y, dict(zip(NAMES, [1.8, 1.1, 0.5, 0.6])))
    obj = prob.objective()
    z = obj.as_tensor([1.7, 1.2, 0.45, 0.65])
    r = obj.residuals(z, then_jacobian=True)
    assert (obj.nfev, obj.njev) == (1, 0)
    r2, J = obj.residuals_and_jacobian(z)
    assert (obj.nfev, obj.njev) == (1, 1)  # no second evaluation of the model
    assert torch.equal(r, r2)
    np.testing.assert_allclose(J.numpy(), complex_step_jacobian(model_np, z.tolist()),
                               rtol=1e-12, atol=1e-13)
    # at another point, the kept pass is not used
    obj.residuals(z, then_jacobian=True)
    z2 = z + 0.01
    r3, J3 = obj.residuals_and_jacobian(z2)
    assert (obj.nfev, obj.njev) == (3, 2)
    np.testing.assert_allclose(r3.numpy(), y - model_np(X, *z2.tolist()), rtol=0, atol=1e-13)
    np.testing.assert_allclose(J3.numpy(), complex_step_jacobian(model_np, z2.tolist()),
                               rtol=1e-12, atol=1e-13)


def test_unused_parameters_found_by_the_graph_walk_as_by_autograd():
    from gradfit.fitting import _leaves_reached

    leaves = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for k, v in zip("abcd", [1.0, 2.0, 3.0, 4.0])}
    x = torch.linspace(0, 1, 5, dtype=torch.float64)
    outputs = [leaves["a"] * x + leaves["b"] ** 2,       # c, d unused
               leaves["c"] * 0.0 + x,                    # c used (zero derivative)
               leaves["d"].detach() * x + leaves["a"],   # d detached: unused
               leaves["b"]]                              # a leaf itself
    for out in outputs:
        grads = torch.autograd.grad(out.sum(), list(leaves.values()), allow_unused=True)
        by_autograd = {k for k, g in zip(leaves, grads) if g is not None}
        reached = _leaves_reached(out)
        assert {k for k, t in leaves.items() if id(t) in reached} == by_autograd
    with pytest.raises(ValueError, match="'d'.*not used by the model"):
        gradfit.fit(lambda p, x: p["a"] * x + p["d"].detach(), X, data(),
                    params={"a": 1.0, "d": 0.0})


def test_float32_takes_the_one_pass_jacobian_and_matches_float64():
    y = data()
    p0 = dict(zip(NAMES, [1.8, 1.1, 0.5, 0.6]))
    prob = build_problem(model, X, y, p0, dtype="float32")
    theta = torch.tensor([1.8, 1.1, 0.5, 0.6], dtype=torch.float32)
    out = fast_jacobian(prob, theta)
    assert out is not None and out[1].dtype == torch.float32
    np.testing.assert_allclose(out[1].numpy(), complex_step_jacobian(model_np, theta.tolist()),
                               rtol=1e-5, atol=1e-5)
    r32 = gradfit.fit(model, X, y, params=p0, dtype="float32")
    r64 = gradfit.fit(model, X, y, params=p0)
    for k in NAMES:
        assert abs(r32.params[k] - r64.params[k]) <= 1e-2 * r64.errors[k]
        assert r32.errors[k] == pytest.approx(r64.errors[k], rel=1e-3)


def test_a_jacobian_too_large_for_the_one_pass_takes_the_general_path(monkeypatch):
    import gradfit.objective as objective

    prob = build_problem(model, X, data(), dict(zip(NAMES, [1.8, 1.1, 0.5, 0.6])))
    theta = torch.tensor([1.8, 1.1, 0.5, 0.6], dtype=torch.float64)
    monkeypatch.setattr(objective, "SEPARABLE_MAX_ELEMENTS", X.size * 4 - 1)
    assert fast_jacobian(prob, theta) is None
    J = prob.objective().residuals_and_jacobian(theta)[1]  # the double-backward columns
    np.testing.assert_allclose(J.numpy(), complex_step_jacobian(model_np, theta.tolist()),
                               rtol=1e-12, atol=1e-13)
