"""Large-scale minimisers and errors: matrix-free LM (lm-cg), lm-normal, CG/Hutchinson errors.

References are independent of the code under test: the dense SVD Levenberg–Marquardt
and dense covariance (themselves pinned to SciPy and NIST elsewhere), numpy linear
algebra, and the closed-form (FFT) solution and posterior variances of a periodic
deconvolution with a smoothness prior.
"""

import threading
import time

import numpy as np
import pytest
import torch

import gradfit
from gradfit import uncertainty_scale
from gradfit.objective import Objective
from gradfit.solvers.lm_cg import pcg

# ------------------------------------------------------------------ helpers


class PeakAnon:
    """Peak anonymous resident memory (bytes) above the start, sampled in a thread."""

    def __enter__(self):
        self.base = self.peak = self._now()
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _now(self):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no RssAnon in /proc/self/status")

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, self._now())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, self._now())

    @property
    def increase(self):
        return self.peak - self.base


def deconvolution(n_side, sigma=0.05, lam=1.0, seed=0):
    """Periodic 5x5 Gaussian blur of an image + noise, with a first-difference smoothness
    prior (as extra residual rows). Returns model, y, exact optimum and exact variance."""
    w = np.exp(-0.5 * (np.arange(-2, 3)[:, None] ** 2 + np.arange(-2, 3)[None, :] ** 2))
    w /= w.sum()
    shifts = [(a, b, float(w[a + 2, b + 2])) for a in range(-2, 3) for b in range(-2, 3)]

    def blur(u):
        return sum(c * torch.roll(u, (a, b), (0, 1)) for a, b, c in shifts)

    def dx(u):
        return torch.roll(u, 1, 0) - u

    def dy(u):
        return torch.roll(u, 1, 1) - u

    s = float(np.sqrt(lam))

    def model(p, x):
        u = p["u"]
        return torch.cat([(blur(u) / sigma).reshape(-1), (s * dx(u)).reshape(-1),
                          (s * dy(u)).reshape(-1)])

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n_side, 0:n_side] / n_side
    truth = np.sin(6 * xx) * np.cos(4 * yy) + (xx > 0.5)
    data = blur(torch.tensor(truth)).numpy() + sigma * rng.standard_normal(truth.shape)
    y = np.concatenate([data.ravel() / sigma, np.zeros(2 * truth.size)])

    def otf(op):  # every operator is circulant: its eigenvalues are the FFT of its kernel
        d = torch.zeros(n_side, n_side, dtype=torch.float64)
        d[0, 0] = 1.0
        return torch.fft.fft2(op(d))

    K, Dx, Dy = otf(blur), otf(dx), otf(dy)
    A = K.abs() ** 2 / sigma**2 + lam * (Dx.abs() ** 2 + Dy.abs() ** 2)
    exact = torch.fft.ifft2(K.conj() * torch.fft.fft2(torch.tensor(data)) / sigma**2 / A).real
    var = float((1.0 / A).mean())  # every pixel has the same posterior variance
    return model, y, exact.numpy(), var


def smooth_curve(p_count, seed=0):
    """Nonlinear least squares with p_count coefficients: y = softplus(B c) + noise."""
    rng = np.random.default_rng(seed)
    m = 3 * p_count
    t = np.linspace(0, 1, m)
    centres = np.linspace(0, 1, p_count)
    B = np.exp(-0.5 * ((t[:, None] - centres[None, :]) * (p_count - 1) / 0.7) ** 2)
    c_true = 1.0 + 0.5 * np.sin(7 * centres)
    y = np.log1p(np.exp(B @ c_true)) + 0.02 * rng.standard_normal(m)
    Bt = torch.tensor(B)

    def model(p, x):
        return torch.nn.functional.softplus(Bt @ p["c"])

    return model, y, {"c": np.full(p_count, 0.5)}


# ------------------------------------------------------------------- tests


def test_linearization_products_match_the_dense_jacobian():
    torch.manual_seed(0)
    A = torch.randn(30, 7, dtype=torch.float64)

    def res(z):
        return torch.sin(A @ z) + 0.1 * (A @ z) ** 2

    obj = Objective(lambda z: 0.5 * (res(z) ** 2).sum(), 7, residual_fun=res)
    z = torch.randn(7, dtype=torch.float64)
    _, J = obj.residuals_and_jacobian(z)
    lin = obj.linearize(z)
    v, u = torch.randn(7, dtype=torch.float64), torch.randn(30, dtype=torch.float64)
    torch.testing.assert_close(lin.jvp(v), J @ v, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(lin.vjp(u), J.T @ u, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(lin.matvec(v), J.T @ (J @ v), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lin.grad, J.T @ res(z), rtol=1e-13, atol=1e-13)
    exact = (J**2).sum(0)
    torch.testing.assert_close(lin.diag(probes=16), exact, rtol=1e-12, atol=0)  # n <= probes
    est = lin.diag(probes=4)  # n > probes: Rademacher estimate, unbiased but rough
    assert torch.all(est > 0.2 * exact) and torch.all(est < 3.0 * exact)
    assert not torch.allclose(est, exact, rtol=1e-6)


def test_pcg_solves_spd_systems():
    rng = np.random.default_rng(1)
    M = rng.standard_normal((40, 40))
    A = M @ M.T + 40 * np.eye(40)
    b = rng.standard_normal(40)
    At = torch.tensor(A)
    x, Ax, it, ok, pos = pcg(lambda v: At @ v, torch.tensor(b), torch.diagonal(At), 1e-12, 200)
    assert ok and pos and 1 < it <= 40
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(A, b), rtol=1e-9)
    np.testing.assert_allclose(Ax.numpy(), A @ x.numpy(), rtol=1e-9)
    # an indefinite matrix is reported, not silently "solved"
    Ai = torch.tensor(A - 200 * np.eye(40))
    *_, pos = pcg(lambda v: Ai @ v, torch.tensor(b), torch.ones(40, dtype=torch.float64),
                  1e-12, 200)
    assert not pos


@pytest.mark.parametrize("p_count", [50, 200])
def test_lm_cg_and_lm_normal_match_dense_lm(p_count):
    model, y, p0 = smooth_curve(p_count)
    dense = gradfit.fit(model, None, y, p0, method="lm")
    assert dense.success and dense.method == "lm" and dense.error_method == "dense-gauss-newton"
    scale = np.abs(dense.params["c"]).max()
    for meth in ("lm-cg", "lm-normal"):
        r = gradfit.fit(model, None, y, p0, method=meth, errors="none")
        assert r.success and r.method == meth, r.message
        assert np.abs(r.params["c"] - dense.params["c"]).max() <= 1e-8 * scale, meth
        assert abs(r.fun - dense.fun) <= 1e-12 * dense.fun
    # exact marginal errors by CG against JᵀJ (scaled by RSS/dof) = the dense ones
    labels = ["c[0]", f"c[{p_count // 2}]", f"c[{p_count - 1}]"]
    r = gradfit.fit(model, None, y, p0, method="lm-cg", errors=labels)
    assert r.error_method.startswith("cg-gauss-newton") and r.cov is None
    for lab in labels:
        i = int(lab[2:-1])
        assert abs(r.errors["c"][i] / dense.errors["c"][i] - 1) <= 1e-3, lab
    others = np.delete(r.errors["c"], [int(lab[2:-1]) for lab in labels])
    assert np.all(np.isnan(others))  # not computed, and says so


def test_method_lm_switches_to_matrix_free_above_the_threshold():
    from gradfit.fitting import LM_DENSE_MAX_PARAMS

    model, y, exact, var = deconvolution(40)  # 1600 parameters
    assert 1600 > LM_DENSE_MAX_PARAMS
    with PeakAnon() as mem:
        r = gradfit.fit(model, None, y, {"u": np.zeros((40, 40))},
                        likelihood=gradfit.Gaussian(sigma=1.0), method="lm",
                        errors=["u[0,0]", "u[17,23]"])
    assert r.success and r.method == "lm-cg"
    assert "'lm' ran as 'lm-cg' (matrix-free: 1600 free" in r.message
    assert np.abs(r.params["u"] - exact).max() <= 1e-8 * np.abs(exact).max()
    for idx in [(0, 0), (17, 23)]:
        assert abs(r.errors["u"][idx] ** 2 / var - 1) <= 1e-3
    # the dense Jacobian alone would be 4800 x 1600 doubles = 61 MB
    assert mem.increase < 40e6, mem.increase
    text = str(r)  # prints without a covariance matrix
    assert "u[17,23]" in text and r.to_dict()["error_method"].startswith("cg-")


def test_hutchinson_diagonal_is_honest():
    model, y, exact, var = deconvolution(16, lam=10.0)  # well conditioned: short CG solves
    r = gradfit.fit(model, None, y, {"u": np.zeros((16, 16))},
                    likelihood=gradfit.Gaussian(sigma=1.0), method="lm-cg", errors="none")
    prob = r.problem
    theta = torch.as_tensor(r.params["u"].ravel())
    out = uncertainty_scale.variances(prob.theta_objective(), theta, True,
                                      list(prob.space.labels), method="hutchinson",
                                      probes=20, seed=3)
    assert out.method.startswith("hutchinson-gauss-newton (20 probes")
    rel = out.var / var - 1
    # the estimate is unbiased and its reported standard error is the real scatter
    assert abs(rel.mean()) < 0.05
    assert 0.5 < np.std(rel) / np.median(out.rel_std) < 2.0
    assert np.mean(np.abs(rel) <= 3 * out.rel_std) > 0.97


def test_errors_above_the_dense_limit():
    n = uncertainty_scale.DENSE_LIMIT + 100
    rng = np.random.default_rng(0)
    y = rng.standard_normal(n) * 0.1 + 1.0

    def model(p, x):
        return p["u"]

    with pytest.raises(ValueError, match="errors='dense' would form"):
        gradfit.fit(model, None, y, {"u": np.zeros(n)}, errors="dense")
    with pytest.raises(ValueError, match="errors must be"):
        gradfit.fit(model, None, y, {"u": np.zeros(n)}, errors="bogus")
    r = gradfit.fit(model, None, y, {"u": np.zeros(n)}, likelihood=gradfit.Gaussian(sigma=0.1),
                    options={"error_probes": 4})
    assert r.cov is None and r.corr is None and r.method == "lm-cg"
    assert r.error_method.startswith("hutchinson-gauss-newton (4 probes")
    # JᵀJ = I / 0.01 here: Rademacher probes of a diagonal matrix are exact
    np.testing.assert_allclose(r.errors["u"], 0.1, rtol=1e-6)
    np.testing.assert_allclose(r.params["u"], y, rtol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lm-cg", "lbfgs"])
def test_1e5_parameter_deconvolution_in_bounded_memory(method):
    n_side = 317  # 100,489 parameters
    model, y, exact, var = deconvolution(n_side)
    with PeakAnon() as mem:
        r = gradfit.fit(model, None, y, {"u": np.zeros((n_side, n_side))},
                        likelihood=gradfit.Gaussian(sigma=1.0), method=method, errors="none")
    assert r.success, r.message
    tol = 1e-8 if method == "lm-cg" else 1e-6  # L-BFGS stops on its f-resolution test
    assert np.abs(r.params["u"] - exact).max() <= tol * np.abs(exact).max()
    # the dense Jacobian would be 3e5 x 1e5 doubles (240 GB); the fit needs O(m + n)
    assert mem.increase < 1.0e9, mem.increase


def test_cg_errors_on_the_hessian_operator_match_the_dense_hessian():
    # Cauchy with a fitted width: not least squares, so errors come from the Hessian
    rng = np.random.default_rng(5)
    x = np.linspace(-3, 3, 400)
    y = 2.0 * np.exp(-0.5 * (x - 0.3) ** 2 / 0.8**2) + 0.05 * rng.standard_cauchy(x.size)

    def m(p, x):
        return p["A"] * torch.exp(-0.5 * (x - p["mu"]) ** 2 / p["s"] ** 2)

    p0 = {"A": 1.5, "mu": 0.0, "s": 1.0}
    dense = gradfit.fit(m, x, y, p0, likelihood="cauchy", method="bfgs")
    assert dense.error_method == "dense-hessian"
    r = gradfit.fit(m, x, y, p0, likelihood="cauchy", method="bfgs", errors="cg")
    assert r.error_method.startswith("cg-hessian (4 marginal solves)")
    for k in ("A", "mu", "s", "gamma"):
        assert abs(r.errors[k] / dense.errors[k] - 1) <= 1e-6, k


@pytest.mark.parametrize("method", ["lm-cg", "lm-normal"])
def test_nist_certified_values_and_an_honest_failure(method, data_dir):
    from gradfit import nist

    probs = {p.name: p for p in nist.load_all(data_dir / "nist-strd")}
    for name in ("Misra1a", "Thurber", "Kirby2", "Gauss1"):
        for start in (1, 2):
            r = nist.fit_problem(probs[name], start=start, method=method)
            assert r.success and r.method == method, (name, r.message)
            assert nist.digits(r.params["b"], probs[name].certified).min() >= 6, name
    # BoxBOD from start 1 runs to b2 -> infinity: the fit must say it failed
    r = nist.fit_problem(probs["BoxBOD"], start=1, method=method)
    assert not r.success and "gradient test fails" in r.message
