"""OOF engine: the exact Jacobian (vs autodiff and finite differences), the core's
jacobian hook, the nuisance table (gain, background), options, immutability, imports."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gradfit
from gradfit.fitting import build_problem
from gradfit.oof import io
from gradfit.oof.model import BeamModel
from gradfit.oof.nuisance import NUISANCE, illumination, nuisance_help
from gradfit.oof.observation import BeamMap, Observation, grid_shape
from gradfit.oof.simulate import simulate
from gradfit.oof.solve import fit
from gradfit.oof.zernike import monomial_labels, zernike_basis, zernike_monomials

ALL = ("K", "amp", "c_dB", "q", "x0", "y0", "pointing", "gain", "background")


@pytest.fixture(scope="module")
def small_obs():
    return simulate("effelsberg", order=4, snr=1000, npix=15, seed=7)


def _params(illum, rng, B=3):
    p = {"K": rng.normal(0, 0.1, 14), "amp": 2.5, "c_dB": -13.0, "x0": 0.4, "y0": -0.3,
         "pointing": rng.normal(0, 0.1, (B, 2)), "gain": 1 + rng.normal(0, 0.03, B),
         "background": rng.normal(0, 0.02, B)}
    if illum == "pedestal":
        p["q"] = 2.3
    return {k: torch.as_tensor(v, dtype=torch.float64) for k, v in p.items()}


def _autodiff_jacobian(f, x):
    """d f / d x by reverse-mode autodiff through every operation of the model.

    Columns by the double-backward trick (``w = J^T u`` is linear in ``u``), one
    backward pass per element of ``x``.
    """
    x = x.detach().clone().requires_grad_(True)
    out = f(x)
    u = torch.zeros_like(out, requires_grad=True)
    (w,) = torch.autograd.grad((out * u).sum(), x, create_graph=True)
    w = w.reshape(-1)
    cols = [torch.autograd.grad(w[i], u, retain_graph=True)[0] for i in range(w.numel())]
    J = torch.stack(cols, dim=-1).detach()
    return J.reshape(J.shape[:-1] + x.shape)


def _shifted_grid_obs(obs):
    """The same maps, each on its own (shifted) grid: the MFT without shared axes."""
    maps = []
    for i, m in enumerate(obs.maps):
        du = 1e-6 * (i + 1)
        maps.append(BeamMap(m.u + du, m.v - 0.5 * du, m.power, m.dz, name=m.name,
                            shape=m.shape))
    return Observation(maps, obs.wavelength_m, obs.frequency_hz, obs.telescope)


def _scattered_obs(obs, seed=3):
    """The same maps at jittered positions, with a different number of samples each:
    no grid, so the 'dft' transform, with its per-map padding."""
    rng = np.random.default_rng(seed)
    maps = []
    for i, m in enumerate(obs.maps):
        step = float(np.ptp(m.u)) / (m.shape[1] - 1)
        keep = np.ones(m.n, dtype=bool)
        keep[rng.choice(m.n, 3 * i, replace=False)] = False  # 0, 3, 6 samples fewer
        maps.append(BeamMap(m.u[keep] + rng.normal(0, 0.05 * step, keep.sum()),
                            m.v[keep] + rng.normal(0, 0.05 * step, keep.sum()),
                            m.power[keep], m.dz, name=m.name))
    return Observation(maps, obs.wavelength_m, obs.frequency_hz, obs.telescope)


def _cropped_obs(obs, corner=False):
    """The in-focus map cut to 9 x 11 samples, central (or in the first corner, whose axes
    padded are the other maps' own): maps on grids of different shapes (the MFT on
    padded axes)."""
    maps = []
    for i, m in enumerate(obs.maps):
        if i == obs.infocus_index:
            sl = (slice(0, 9), slice(0, 11)) if corner else (slice(3, 12), slice(2, 13))
            cut = [a.reshape(m.shape)[sl].ravel() for a in (m.u, m.v, m.power)]
            m = BeamMap(*cut, m.dz, name=m.name, shape=(9, 11))
        maps.append(m)
    return Observation(maps, obs.wavelength_m, obs.frequency_hz, obs.telescope)


@pytest.mark.parametrize("corner", [False, True])
def test_maps_of_different_shapes_keep_the_mft_and_match_the_dft(small_obs, rng, corner):
    obs = _cropped_obs(small_obs, corner)
    mft = BeamModel(obs, "effelsberg", 4, 32)
    dft = BeamModel(obs, "effelsberg", 4, 32, transform="dft")
    assert mft.transform == "mft" and dft.transform == "dft"
    assert not mft.tf.shared_axes  # (never batched across observations)
    assert mft.sizes == [225, 99, 225]
    p = _params("pedestal", rng)
    with torch.no_grad():
        a, b = mft(p), dft(p)
    assert a.shape == (549,)
    assert float((a - b).abs().max() / b.abs().max()) < 1e-12
    _, da = mft.jacobian(p, list(p))
    _, db = dft.jacobian(p, list(p))
    for n in p:
        assert float((da[n] - db[n]).abs().max() / db[n].abs().max()) < 1e-11, n


def test_zernike_monomials_expand_the_basis(rng):
    for order in (1, 4, 7):
        r, t = np.sqrt(rng.uniform(0, 1, 300)), rng.uniform(-np.pi, np.pi, 300)
        x, y = r * np.cos(t), r * np.sin(t)
        M = np.stack([x**a * y**b for a, b in monomial_labels(order)])
        np.testing.assert_allclose(zernike_monomials(order) @ M,
                                   zernike_basis(order, r, t).numpy(), rtol=0, atol=1e-13)
    # two hand-checked rows: U_2^0 = 2x^2 + 2y^2 - 1, U_3^-1 = (3 rho^3 - 2 rho) sin
    C, lab = zernike_monomials(3), monomial_labels(3)
    row = dict(zip(lab, C[4]))
    assert row[(2, 0)] == 2 and row[(0, 2)] == 2 and row[(0, 0)] == -1
    row = dict(zip(lab, C[7]))
    assert row[(2, 1)] == 3 and row[(0, 3)] == 3 and row[(0, 1)] == -2


@pytest.mark.parametrize("illum,shared", [("pedestal", True), ("gaussian", True),
                                          ("pedestal", False), ("pedestal", "scattered"),
                                          ("gaussian", "scattered"), ("pedestal", "cropped")])
def test_exact_jacobian_matches_autodiff(small_obs, rng, illum, shared):
    if shared == "scattered":
        obs = _scattered_obs(small_obs)
        m = BeamModel(obs, "effelsberg", 4, 32, illumination=illum)
        assert m.transform == "dft" and m.sizes == [225, 222, 219]
    elif shared == "cropped":
        m = BeamModel(_cropped_obs(small_obs), "effelsberg", 4, 32, illumination=illum)
        assert m.transform == "mft" and m.sizes == [225, 99, 225]
    else:
        obs = small_obs if shared else _shifted_grid_obs(small_obs)
        m = BeamModel(obs, "effelsberg", 4, 32, illumination=illum)
        assert m.tf.shared_axes is shared
    p = _params(illum, rng)
    names = [n for n in ALL if n in p]
    mu, d = m.jacobian(p, names)
    # the model's values from the Jacobian's own transform: the same to rounding (the
    # products are shaped differently, so not bit for bit); 1e-14 fails on any real change
    ref = m(p)
    assert float((mu - ref).abs().max()) <= 1e-14 * float(ref.abs().max())
    for n in names:
        J_ad = _autodiff_jacobian(lambda t, n=n: m({**p, n: t}), p[n])
        assert d[n].shape == J_ad.shape, n
        rel = float((d[n] - J_ad).abs().max() / J_ad.abs().max())
        assert rel < 1e-10, (n, rel)


@pytest.mark.parametrize("illum,scattered", [("pedestal", False), ("gaussian", False),
                                             ("pedestal", True)])
def test_exact_jacobian_matches_finite_differences(small_obs, rng, illum, scattered):
    """Every column against a central difference (independent of autodiff)."""
    obs = _scattered_obs(small_obs) if scattered else small_obs
    m = BeamModel(obs, "effelsberg", 4, 32, illumination=illum)
    assert m.transform == ("dft" if scattered else "mft")
    p = _params(illum, rng)
    names = [n for n in ALL if n in p]
    _, d = m.jacobian(p, names)
    steps = {"K": 1e-5, "amp": 1e-5, "c_dB": 1e-4, "q": 1e-5, "x0": 1e-4, "y0": 1e-4,
             "pointing": 1e-5, "gain": 1e-5, "background": 1e-5}
    with torch.no_grad():
        for n in names:
            flat = p[n].reshape(-1)
            for i in range(flat.numel()):
                e = torch.zeros_like(flat)
                e[i] = steps[n]
                up = m({**p, n: (flat + e).reshape(p[n].shape)})
                dn = m({**p, n: (flat - e).reshape(p[n].shape)})
                fd = (up - dn) / (2 * steps[n])
                col = d[n].reshape(m.n_points, -1)[:, i]
                err = float((fd - col).abs().max() / col.abs().max())
                assert err < 1e-6, (n, i, err)


def test_exact_jacobian_in_float32_matches_float64(small_obs, rng):
    """The float32 model (as on a GPU) gives the same Jacobian to 1e-3 of each column."""
    p = _params("pedestal", rng)
    names = list(p)
    _, d64 = BeamModel(small_obs, "effelsberg", 4, 32).jacobian(p, names)
    m32 = BeamModel(small_obs, "effelsberg", 4, 32, dtype=torch.float32)
    _, d32 = m32.jacobian({k: v.float() for k, v in p.items()}, names)
    for n in names:
        assert d32[n].dtype == torch.float32
        col = d64[n].reshape(d64[n].shape[0], -1)
        err = (d32[n].double().reshape(col.shape) - col).abs().max(0).values
        assert torch.all(err <= 1e-3 * col.abs().max(0).values), n


def test_jacobian_rejects_bad_names_and_transforms(small_obs):
    m = BeamModel(small_obs, "effelsberg", 4, 32)
    p = {"K": torch.zeros(14, dtype=torch.float64)}
    with pytest.raises(ValueError, match="no derivative for parameter.*'bogus'.*choose"):
        m.jacobian(p, ["bogus"])
    g = BeamModel(small_obs, "effelsberg", 4, 32, illumination="gaussian")
    with pytest.raises(ValueError, match="q is a parameter of the pedestal"):
        g.jacobian(p, ["q"])
    d = BeamModel(small_obs, "effelsberg", 4, 32, transform="fft")
    with pytest.raises(ValueError, match="need transform='mft' or 'dft', not 'fft'"):
        d.jacobian(p, ["K"])


# ------------------------------------------------------------ core jacobian hook
def _decay(p, x):
    return p["a"] * torch.exp(-p["k"] * x) + p["c"][0] + p["c"][1] * x


def _decay_jac(p, x):
    e = torch.exp(-p["k"] * x)
    return _decay(p, x), {"a": e, "k": -p["a"] * x * e,
                          "c": torch.stack([torch.ones_like(x), x], dim=-1)}


@pytest.mark.parametrize("likelihood", ["gaussian", "cauchy"])
def test_fit_jacobian_hook_equals_autodiff(rng, likelihood):
    x = np.linspace(0, 4, 80)
    y = 3.0 * np.exp(-1.3 * x) + 0.2 + 0.05 * x + rng.normal(0, 0.02, x.size)
    params = {"a": gradfit.Param(1.0, bounds=(0.0, 10.0)),
              "k": gradfit.Param(1.0, bounds=(0, None)),
              "c": gradfit.Param([0.0, 0.05], fixed=[False, True])}
    lik = gradfit.Gaussian(sigma=0.02) if likelihood == "gaussian" else gradfit.Cauchy(gamma=0.02)
    kw = dict(likelihood=lik, method="lm", priors={"a": gradfit.Normal(3.0, 1.0)})
    ref = gradfit.fit(_decay, x, y, params, **kw)
    calls = []

    def jac(p, x):
        calls.append(1)
        return _decay_jac(p, x)

    new = gradfit.fit(_decay, x, y, params, jacobian=jac, **kw)
    assert calls and ref.success and new.success
    assert new.names == ref.names == ["a", "k", "c[0]"]
    for n in ("a", "k", "c"):
        np.testing.assert_allclose(new.params[n], ref.params[n], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(new.errors[n], ref.errors[n], rtol=1e-7, atol=1e-12)
    # the Jacobian the solver sees (bounds chain rule included) equals autodiff's
    obj = build_problem(_decay, x, y, params, likelihood=lik, priors=kw["priors"],
                        jacobian=_decay_jac).objective()
    prob = build_problem(_decay, x, y, params, likelihood=lik, priors=kw["priors"])
    obj_ad = prob.objective()
    z = obj.as_tensor(prob.space.to_internal(np.array([2.0, 1.1, 0.1])))
    (r1, J1), (r2, J2) = obj.residuals_and_jacobian(z), obj_ad.residuals_and_jacobian(z)
    torch.testing.assert_close(r1, r2, rtol=0, atol=1e-12)
    torch.testing.assert_close(J1, J2, rtol=1e-10, atol=1e-10)


def test_fit_jacobian_hook_bad_input():
    x = np.linspace(0, 1, 20)
    y = 2 * x + 1
    params = {"a": 1.0, "b": 0.0}

    def model(p, x):
        return p["a"] * x + p["b"]

    with pytest.raises(TypeError, match="jacobian must be a callable"):
        gradfit.fit(model, x, y, params, method="lm", jacobian="exact")
    with pytest.raises(ValueError, match="no derivative for the free parameter 'b'"):
        gradfit.fit(model, x, y, params, method="lm",
                    jacobian=lambda p, x: (model(p, x), {"a": x}))
    with pytest.raises(ValueError, match="derivative for 'a' has shape"):
        gradfit.fit(model, x, y, params, method="lm",
                    jacobian=lambda p, x: (model(p, x), {"a": x[:5], "b": torch.ones_like(x)}))


# ------------------------------------------------------------------ oof.fit
@pytest.fixture(scope="module")
def pyoof_obs():
    return io.read(Path(__file__).parent / "data" / "oof-pyoof" / "eff-n4-snr300.fits")


def test_exact_and_autodiff_jacobians_give_the_same_fit(pyoof_obs):
    a = fit(pyoof_obs, order=4, jacobian="exact")
    b = fit(pyoof_obs, order=4, jacobian="autodiff")
    assert a.fit["jacobian"] == "exact" and b.fit["jacobian"] == "autodiff"
    np.testing.assert_allclose(a.K_waves, b.K_waves, rtol=0, atol=1e-8)
    np.testing.assert_allclose(a.K_err_waves, b.K_err_waves, rtol=1e-6)
    assert a.nuisance["c_dB"]["value"] == pytest.approx(b.nuisance["c_dB"]["value"], abs=1e-7)


def test_scattered_samples_fit_with_the_exact_jacobian(small_obs):
    # measured positions (jittered, maps of different lengths): the 'dft' transform, whose
    # exact Jacobian gives the autodiff fit's numbers; nuisance parameters freed as for
    # measured maps
    obs = _scattered_obs(small_obs)
    free = ("amp", "c_dB", "pointing", "gain", "background")
    a = fit(obs, order=2, free=free, jacobian="auto")
    b = fit(obs, order=2, free=free, jacobian="autodiff")
    assert a.fit["transform"] == b.fit["transform"] == "dft"
    assert a.fit["jacobian"] == "exact" and b.fit["jacobian"] == "autodiff"
    np.testing.assert_allclose(a.K_waves, b.K_waves, rtol=0, atol=1e-8)
    np.testing.assert_allclose(a.K_err_waves, b.K_err_waves, rtol=1e-6)
    for n in ("gain", "background", "pointing"):
        np.testing.assert_allclose(a.nuisance[n]["value"], b.nuisance[n]["value"], atol=1e-8)


def test_gain_and_background_are_recovered():
    obs = simulate("effelsberg", order=3, snr=2000, npix=25, seed=11)
    gain, bg = np.array([0.97, 1.0, 1.03]), np.array([0.02, 0.05, 0.01])
    for m, g, b in zip(obs.maps, gain, bg):
        m.power = m.power * g + b
    plain = fit(obs, order=3, n_starts=1)
    sol = fit(obs, order=3, free=("amp", "c_dB", "gain", "background"))
    assert sol.success
    got_g = np.array(sol.nuisance["gain"]["value"])
    got_b = np.array(sol.nuisance["background"]["value"])
    err_b = np.array(sol.nuisance["background"]["error"])
    assert got_g[1] == 1.0 and sol.nuisance["gain"]["error"][1] == 0.0  # in focus: fixed
    bg = bg / sol.fit["data_scale"]  # the data are in units of the in-focus maximum
    np.testing.assert_allclose(got_g, gain, atol=0.01)
    np.testing.assert_allclose(got_b, bg, atol=0.002)
    assert np.all(err_b > 0) and np.all(np.abs(got_b - bg) < 5 * err_b + 1e-4)
    # the nuisance parameters absorb what the plain fit cannot
    assert sol.fit["normalised_residual"] < 1.3 < plain.fit["normalised_residual"]
    # off by default: the plain fit has neither
    assert "gain" not in plain.nuisance and "background" not in plain.nuisance


def test_fit_options_errors_progress_jacobian(pyoof_obs, capsys):
    sol = fit(pyoof_obs, order=2, errors="none", progress=True)
    assert np.all(np.isnan(sol.K_err_waves[1:])) and sol.to_dict()["errors"] == {"method": "none"}
    assert "done" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown errors 'full'.*hessian, none, profile, mcmc"):
        fit(pyoof_obs, order=2, errors="full")
    with pytest.raises(TypeError, match="progress must be a bool or a callable"):
        fit(pyoof_obs, order=2, progress="yes")
    with pytest.raises(ValueError, match="jacobian='exact' needs transform='mft' or 'dft'"):
        fit(pyoof_obs, order=2, jacobian="exact", transform="fft")
    with pytest.raises(ValueError, match="unknown jacobian"):
        fit(pyoof_obs, order=2, jacobian="numeric")
    with pytest.raises(ValueError, match="unknown free parameter.*'tilt'.*gain.*background"):
        fit(pyoof_obs, order=2, free=("tilt",))


def test_solution_is_immutable(pyoof_obs):
    sol = fit(pyoof_obs, order=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sol.order = 3
    with pytest.raises(ValueError, match="read-only"):
        sol.K_waves[1] = 0.0


# ------------------------------------------------------ table, geometry, imports
def test_nuisance_table_and_help():
    assert set(NUISANCE) == {"amp", "c_dB", "q", "x0", "y0", "pointing", "gain", "background",
                             "background_plane"}
    assert [n for n, s in NUISANCE.items() if s.on_by_default] == ["amp", "c_dB"]
    assert NUISANCE["gain"].n_free(3) == 2 and NUISANCE["background"].n_free(3) == 3
    assert NUISANCE["pointing"].shape(3) == (3, 2)
    text = nuisance_help()
    assert all(name in text for name in NUISANCE)
    r2 = np.array([0.0, 0.25, 1.0, 1.5])
    np.testing.assert_allclose(illumination("pedestal", -20.0, r2, 2.0),
                               0.1 + 0.9 * np.clip(1 - r2, 0, None) ** 2)
    np.testing.assert_allclose(illumination("gaussian", -20.0, r2), 0.1**r2)
    with pytest.raises(ValueError, match="unknown illumination 'flat'"):
        illumination("flat", -12.0, r2)


def test_one_grid_detection(pyoof_obs):
    m = pyoof_obs.maps[0]
    assert m.shape == grid_shape(m.u, m.v) and m.grid_axes() is not None
    u, v = np.meshgrid(np.arange(5.0), np.arange(4.0))
    assert grid_shape(u.ravel(), v.ravel()) == (4, 5)
    jitter = u.ravel() + np.r_[np.zeros(19), 1e-3]
    assert grid_shape(jitter, v.ravel()) is None
    assert grid_shape(u.ravel()[::-1].copy(), v.ravel()[::-1].copy()) == (4, 5)  # decreasing
    shuffled = u[:, [0, 2, 1, 3, 4]].ravel()
    assert grid_shape(shuffled, v.ravel()) is None  # rows repeat but are not monotonic
    assert pyoof_obs.infocus_index == 1


def test_fit_imports_neither_matplotlib_nor_scipy():
    code = ("import sys\nfrom gradfit import oof\n"
            "obs = oof.simulate('effelsberg', order=2, npix=11, grid=64)\n"
            "oof.fit(obs, order=2, grid=32)\n"
            "print(sorted(k for k in ('matplotlib', 'scipy', 'astropy') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "[]"
