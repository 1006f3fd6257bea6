"""The fast paths of one small fit give the answers of the slow ones.

- Jacobian columns and Hessian rows in one vectorised backward pass equal the loop
  of one backward pass per column (and a complex-step reference);
- the polish after LM runs only where it moves the answer (NIST ENSO), and
  skipping it elsewhere leaves the fit unchanged to far below its errors.
"""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import gradfit
import gradfit.objective as objective
from gradfit import nist
from gradfit.fitting import build_problem

X = np.linspace(0.0, 4.0, 30)
P = np.array([2.0, 1.3, 0.4, 0.7])


def model(p, x):
    return p["a"] * torch.exp(-p["k"] * x) * torch.cos(p["w"] * x) + p["c"]


def model_np(x, a, k, w, c):
    return a * np.exp(-k * x) * np.cos(w * x) + c


def objective_at(p0):
    y = model_np(X, *P) + 0.01 * np.random.default_rng(0).standard_normal(X.size)
    prob = build_problem(model, X, y, dict(zip("akwc", p0)))
    return prob.objective(), y


def complex_step_jacobian(p0, y):
    cols = []
    for j in range(4):
        q = np.array(p0, dtype=complex)
        q[j] += 1e-30j
        cols.append(-(model_np(X, *q)).imag / 1e-30)  # r = y - model
    return np.stack(cols, 1)


@pytest.fixture
def loop_only(monkeypatch):
    monkeypatch.setattr(objective, "_batched_ok", False)


def test_vectorised_jacobian_and_hessian_equal_the_loop(monkeypatch):
    p0 = [1.8, 1.1, 0.5, 0.6]
    obj, y = objective_at(p0)
    z = obj.as_tensor(p0)
    r_fast, J_fast = obj.residuals_and_jacobian(z)
    H_fast = obj.hessian(z)
    # the fast path runs (torch's private batched backward is there and works)
    u = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    w = torch.stack([u.sum(), 2 * u[0], u[1] * 3]) + 0.0
    rows = objective._batched_rows(w, u)
    assert rows is not None and torch.equal(
        rows, torch.tensor([[1.0, 1, 1], [2, 0, 0], [0, 3, 0]], dtype=torch.float64))
    monkeypatch.setattr(objective, "_batched_ok", False)
    r_loop, J_loop = obj.residuals_and_jacobian(z)
    H_loop = obj.hessian(z)
    assert J_fast.shape == J_loop.shape == (X.size, 4)
    assert torch.equal(r_fast, r_loop)
    assert torch.allclose(J_fast, J_loop, rtol=1e-14, atol=1e-14)
    assert torch.allclose(H_fast, H_loop, rtol=1e-13, atol=1e-13)
    # an independent reference: complex-step derivatives of the NumPy model
    ref = complex_step_jacobian(p0, y)
    assert np.allclose(J_fast.numpy(), ref, rtol=1e-12, atol=1e-12)
    # the Hessian of 0.5|r|^2 is JᵀJ + sum r_i ∇²r_i: not JᵀJ alone (residuals are large here)
    JtJ = ref.T @ ref
    assert not np.allclose(H_fast.numpy(), JtJ, rtol=1e-3)
    assert np.allclose(np.diag(H_fast.numpy())[[0, 3]], np.diag(JtJ)[[0, 3]], rtol=0.5)


def test_fit_is_the_same_on_the_loop_path(loop_only):
    obj, y = objective_at(P)
    slow = gradfit.fit(model, X, y, params=dict(zip("akwc", [1.8, 1.1, 0.5, 0.6])))
    objective._batched_ok = True
    fast = gradfit.fit(model, X, y, params=dict(zip("akwc", [1.8, 1.1, 0.5, 0.6])))
    for n in "akwc":
        assert abs(fast.params[n] - slow.params[n]) <= 1e-12 * abs(slow.params[n])
        assert abs(fast.errors[n] - slow.errors[n]) <= 1e-10 * slow.errors[n]


def test_polish_runs_only_where_it_moves_the_answer():
    obj, y = objective_at(P)
    start = dict(zip("akwc", [1.8, 1.1, 0.5, 0.6]))
    plain = gradfit.fit(model, X, y, params=start, options={"polish": False})
    auto = gradfit.fit(model, X, y, params=start)
    assert auto.njev == plain.njev  # a well-conditioned fit: no polish, no extra Jacobian
    for n in "akwc":
        assert abs(auto.params[n] - plain.params[n]) <= 1e-9 * abs(plain.params[n])
    enso = next(p for p in nist.load_all(Path(__file__).parent / "data" / "nist-strd")
                if p.name == "ENSO")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = nist.fit_problem(enso, 1)
        b = nist.fit_problem(enso, 1, options={"polish": False})
    assert a.njev > b.njev  # the polish ran on ENSO ...
    assert nist.digits(a.params["b"], enso.certified).min() >= 9  # ... and it pays
    assert nist.digits(a.params["b"], enso.certified).min() > \
        nist.digits(b.params["b"], enso.certified).min()
