"""The factorisation behind each Levenberg–Marquardt step: eigenvalues of JᵀJ where J is
large and well conditioned, the SVD of J elsewhere; both checked against NumPy's SVD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradfit.objective import Objective
from gradfit.solvers import lm


def _ops():
    obj = Objective(lambda z: (z * z).sum(), 3, dtype=torch.float64)
    return lm._NumpyOps(obj)


def _matrix(m, n, cond, seed=0):
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((m, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = np.geomspace(1.0, 1.0 / cond, n)
    return (U * s) @ V.T, s


def _check(A, s_true, rtol_s, rel_ut):
    s, Vh, ut = _ops().factor(A)
    np.testing.assert_allclose(s, s_true, rtol=rtol_s)
    x = np.random.default_rng(1).standard_normal(A.shape[0])
    U0, s0, Vh0 = np.linalg.svd(A, full_matrices=False)
    # singular vectors are defined up to sign: compare the products they make
    got, ref = Vh.T @ (ut(x) / s), Vh0.T @ ((U0.T @ x) / s0)
    assert np.abs(got - ref).max() <= rel_ut * np.abs(ref).max()
    np.testing.assert_allclose(np.abs(Vh @ Vh.T), np.eye(A.shape[1]), atol=1e-12)


@pytest.mark.parametrize("cond", [1.0, 1e2, 1e4])
def test_a_large_well_conditioned_matrix_takes_the_eigenvalue_route(cond, monkeypatch):
    A, s_true = _matrix(3000, 30, cond)
    called = []
    monkeypatch.setattr(lm._NumpyOps, "svd", staticmethod(lambda a: called.append(1)))
    # least-squares solution pinv(A) x from the factors, to the accuracy eps cond^2 allows
    _check(A, s_true, rtol_s=1e-9, rel_ut=10 * np.finfo(float).eps * max(cond**2, 100))
    assert not called


@pytest.mark.parametrize("m, cond", [(3000, 1e6), (3000, 1e12), (40, 10.0)])
def test_ill_conditioned_or_small_matrices_keep_the_svd(m, cond):
    A, s_true = _matrix(m, 30 if m > 100 else 7, cond)
    s, Vh, ut = _ops().factor(A)
    U0, s0, Vh0 = np.linalg.svd(A, full_matrices=False)
    # the SVD itself: identical numbers, so its small singular values keep their digits
    np.testing.assert_array_equal(s, s0)
    x = np.random.default_rng(2).standard_normal(m)
    np.testing.assert_array_equal(ut(x), U0.T @ x)
    assert abs(s[-1] / s_true[-1] - 1) < 1e-3


def test_the_eigenvalue_route_would_lose_the_smallest_singular_value():
    # why the route is refused at cond 1e6: eigh of AᵀA gets s_min wrong by far more
    A, s_true = _matrix(3000, 30, 1e6)
    lam = np.linalg.eigvalsh(A.T @ A)
    err = abs(np.sqrt(max(lam[0], 0.0)) / s_true[-1] - 1)
    assert err > 1e-6
