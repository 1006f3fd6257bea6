"""Gradients, Hessian-vector products, Hessians and Jacobians against finite differences."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gradfit.objective import Objective

X = torch.linspace(-2, 2, 50, dtype=torch.float64)


def residual(z):
    return z[0] * torch.exp(-((X - z[1]) ** 2) / (1 + z[2] ** 2)) + torch.sin(z[3] * X) - 0.3


def fun(z):
    r = residual(z)
    return 0.5 * (r * r).sum() + torch.log1p(z[0] ** 2)


OBJ = Objective(fun, 4, residual_fun=residual)
points = arrays(np.float64, 4, elements=st.floats(-2, 2))


def fd_grad(f, z, h=1e-6):
    g = np.zeros_like(z)
    for i in range(z.size):
        e = np.zeros_like(z)
        e[i] = h
        g[i] = (f(z + e) - f(z - e)) / (2 * h)
    return g


def f_np(z):
    return float(fun(torch.as_tensor(z)))


@settings(max_examples=30, deadline=None)
@given(points)
def test_gradient_matches_central_differences(z):
    _, g = OBJ.value_and_grad(torch.as_tensor(z))
    np.testing.assert_allclose(g.numpy(), fd_grad(f_np, z), rtol=1e-6, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(points, points)
def test_hvp_and_hessian_match_differences_of_gradients(z, v):
    def grad_np(zz):
        return OBJ.value_and_grad(torch.as_tensor(zz))[1].numpy()

    h = 1e-6
    fd = (grad_np(z + h * v) - grad_np(z - h * v)) / (2 * h)
    hv = OBJ.hvp(torch.as_tensor(z), torch.as_tensor(v)).numpy()
    np.testing.assert_allclose(hv, fd, rtol=1e-5, atol=1e-5)
    H = OBJ.hessian(torch.as_tensor(z)).numpy()
    np.testing.assert_allclose(H @ v, hv, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(H, H.T, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(points)
def test_jacobian_matches_central_differences(z):
    r, J = OBJ.residuals_and_jacobian(torch.as_tensor(z))
    assert J.shape == (50, 4)
    fd = np.zeros((50, 4))
    h = 1e-6
    for i in range(4):
        e = np.zeros(4)
        e[i] = h
        fd[:, i] = (residual(torch.as_tensor(z + e)) - residual(torch.as_tensor(z - e))).numpy()
        fd[:, i] /= 2 * h
    np.testing.assert_allclose(J.numpy(), fd, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(r.numpy(), residual(torch.as_tensor(z)).numpy())


def test_numpy_bridge_caches_one_pass():
    z = np.array([0.5, 0.1, 0.3, 1.0])
    obj = Objective(fun, 4)
    f1, g1 = obj.scipy_fun_and_grad(z)
    f2, g2 = obj.scipy_fun_and_grad(z.copy())
    assert obj.nfev == 1 and f1 == f2 and np.array_equal(g1, g2)
    assert isinstance(f1, float) and g1.dtype == np.float64


def test_constant_and_unused_directions_give_zeros():
    obj = Objective(lambda z: (z[0] ** 2).sum() + 0 * z[1], 2, residual_fun=lambda z: z[:1] * 1.0)
    z = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert torch.equal(obj.grad(z), torch.tensor([2.0, 0.0], dtype=torch.float64))
    _, J = obj.residuals_and_jacobian(z)
    assert torch.equal(J, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
