"""OOF physics: telescopes, Zernike basis, anti-aliased aperture, forward model, simulate."""

import json
import math
import warnings

import numpy as np
import pytest
import torch

from gradfit.oof.aperture import aperture_grid
from gradfit.oof.grid import choose_grid_size
from gradfit.oof.model import BeamModel, torch_threads
from gradfit.oof.observation import BeamMap, Observation
from gradfit.oof.simulate import phase_rms_notilt, simulate
from gradfit.oof.telescope import TELESCOPES, Telescope, get_telescope
from gradfit.oof.zernike import radial_poly, zernike_basis, zernike_count, zernike_labels

CASES = ["eff-n5-snr1000", "eff-n4-snr300"]


def load_case(data_dir, case):
    d = np.load(data_dir / "oof-pyoof" / f"{case}.npz")
    names = ["MINUS OOF", "ZERO OOF", "PLUS OOF"]
    maps = [
        BeamMap(d["u"][i].ravel(), d["v"][i].ravel(), d["power"][i].ravel(), float(d["d_z"][i]),
                name=names[i], shape=d["u"][i].shape)
        for i in range(3)
    ]
    obs = Observation(maps, float(d["wavel"]), float(d["freq"]), "effelsberg", "pyoof")
    return obs, d


# ---------------------------------------------------------------------- Zernike
def test_zernike_labels_and_count():
    assert zernike_labels(2) == [(0, 0), (1, -1), (1, 1), (2, -2), (2, 0), (2, 2)]
    assert [zernike_count(n) for n in range(5)] == [1, 3, 6, 10, 15]
    with pytest.raises(ValueError, match="order"):
        zernike_labels(-1)


def test_zernike_born_wolf_convention(rng):
    rho = rng.uniform(0, 1, 50)
    th = rng.uniform(-np.pi, np.pi, 50)
    Z = zernike_basis(4, rho, th).numpy()
    lab = zernike_labels(4)
    get = {nl: Z[i] for i, nl in enumerate(lab)}
    np.testing.assert_allclose(get[0, 0], 1.0)
    np.testing.assert_allclose(get[1, 1], rho * np.cos(th), atol=1e-14)
    np.testing.assert_allclose(get[1, -1], rho * np.sin(th), atol=1e-14)
    np.testing.assert_allclose(get[2, 0], 2 * rho**2 - 1, atol=1e-14)
    np.testing.assert_allclose(get[3, -1], (3 * rho**3 - 2 * rho) * np.sin(th), atol=1e-14)
    np.testing.assert_allclose(get[4, 0], 6 * rho**4 - 6 * rho**2 + 1, atol=1e-13)
    np.testing.assert_allclose(get[4, -4], rho**4 * np.sin(4 * th), atol=1e-14)
    for n in range(9):
        for m in range(n % 2, n + 1, 2):
            assert radial_poly(n, m, 1.0) == pytest.approx(1.0)


# -------------------------------------------------------------------- telescope
def test_unknown_telescope_lists_valid_names():
    with pytest.raises(ValueError, match="unknown telescope 'arecibo'.*alma.*effelsberg"):
        get_telescope("arecibo")
    assert get_telescope("Effelsberg") is TELESCOPES["effelsberg"]
    assert len(TELESCOPES) >= 4


def test_defocus_formulas():
    eff = get_telescope("effelsberg")
    r = np.array([0.0, 10.0, 50.0])
    a, b = r / 60.0, r / (2 * 387.39435)
    np.testing.assert_allclose(eff.defocus_path(r, 0.02),
                               0.02 * ((1 - a**2) / (1 + a**2) + (1 - b**2) / (1 + b**2)))
    prime = Telescope.generic(25.0, 10.0)
    assert prime.optics == "prime"
    a = r / 20.0
    np.testing.assert_allclose(prime.defocus_path(r, -0.01), -0.01 * (1 - a**2) / (1 + a**2))
    with pytest.raises(ValueError, match="needs F_eff_m"):
        Telescope("x", 5.0, 3.0, None, optics="cassegrain")


def _block_effelsberg_from_truth(x, y, geo):
    """An independent re-implementation of the truth.json blockage description."""
    pr, sr, a = 50.0, geo["secondary_radius_m"], geo["leg_half_width_m"]
    A, C, D = geo["shadow_A_m"], geo["shadow_C_m"], geo["shadow_D_m"]
    r2 = x**2 + y**2
    B = (sr**2 < r2) & (r2 < pr**2)
    B &= ~((np.abs(x) < A) & (np.abs(y) < a))
    B &= ~((np.abs(y) < A) & (np.abs(x) < a))
    for xr, yr in [(x, y), (y, -x), (-x, -y), (-y, x)]:  # the four arms
        lo = -a + (-D + a) * (xr - A) / (C - A)
        hi = a + (D - a) * (xr - A) / (C - A)
        B &= ~((A < xr) & (xr < C) & (lo < yr) & (yr < hi))
        B &= ~((C < xr) & (xr < pr) & (np.abs(yr) < np.sqrt(np.abs(pr**2 - xr**2))))
    return B


def test_effelsberg_blockage_matches_pyoof_description(data_dir, rng):
    geo = json.loads((data_dir / "oof-pyoof" / "eff-n5-snr1000.truth.json").read_text())
    geo = geo["telescope"]["blockage"]
    x = rng.uniform(-51, 51, 200_000)
    y = rng.uniform(-51, 51, 200_000)
    eff = get_telescope("effelsberg")
    np.testing.assert_array_equal(eff.illuminated(x, y), _block_effelsberg_from_truth(x, y, geo))
    A, a, C, D = eff._shadow_points
    assert (A, a) == (23.25, 1.0)
    assert C == pytest.approx(geo["shadow_C_m"]) and D == pytest.approx(geo["shadow_D_m"])


# --------------------------------------------------------------------- aperture
def test_antialiased_area_converges():
    dish = Telescope.generic(10.0, 4.0, blockage_radius_m=0.5, leg_count=3,
                             leg_half_width_m=0.1, leg_angle_deg=30.0, name="tri")
    # exact open area: disc minus hub minus three legs from r = 0.5 to 5
    exact = math.pi * (25 - 0.25) - 3 * 0.2 * 4.5
    for n in (32, 64):
        g = aperture_grid(dish, n)
        assert np.all((g.weight > 0) & (g.weight <= 1))
        # legs' corners at the rim and hub are not rectangles; allow 0.3 %
        assert g.weight.sum() * g.step_m**2 == pytest.approx(exact, rel=3e-3)
    g = aperture_grid("effelsberg", 96)
    assert g.weight.sum() * g.step_m**2 == pytest.approx(6512.34, rel=2e-4)
    assert aperture_grid("effelsberg", 96) is g  # cached
    with pytest.raises(ValueError, match="n >= 8"):
        aperture_grid("effelsberg", 4)


# ------------------------------------------------------------------ forward model
@pytest.mark.parametrize("case", CASES)
def test_model_reproduces_pyoof_noiseless_maps(data_dir, case):
    obs, d = load_case(data_dir, case)
    K = d["K_true"]
    Pn = d["power_noiseless"].reshape(3, -1)
    with torch_threads(1):
        m = BeamModel(obs, "effelsberg", int(d["order"]), 128)
        P = m.beams_numpy(K, c_dB=float(d["I_true"][1]))
    amp = (P * Pn).sum() / (P * P).sum()  # the common amplitude is always fitted
    err = amp * P - Pn
    # pyoof's own 256-point FFT model is off by 0.021-0.027 (max) and 0.0021-0.0025 (rms)
    assert np.abs(err).max() < 1e-3
    assert np.sqrt(np.mean(err**2)) < 1e-4


def test_transforms_agree(data_dir):
    obs, d = load_case(data_dir, "eff-n4-snr300")
    K = d["K_true"]
    with torch_threads(1):
        mft = BeamModel(obs, "effelsberg", 4, 48).beams_numpy(K, c_dB=-14.0)
        dft = BeamModel(obs, "effelsberg", 4, 48, transform="dft").beams_numpy(K, c_dB=-14.0)
        fft = BeamModel(obs, "effelsberg", 4, 48, transform="fft", fft_pad=16).beams_numpy(
            K, c_dB=-14.0)
    np.testing.assert_allclose(dft, mft, rtol=0, atol=1e-12 * mft.max())
    # linear interpolation of the power on an FFT grid is only approximate
    assert np.abs(fft - mft).max() < 5e-3 * mft.max()


def test_scattered_samples_use_the_direct_transform(data_dir):
    obs, d = load_case(data_dir, "eff-n4-snr300")
    sub = [BeamMap(m.u[::7], m.v[::7], m.power[::7], m.dz, name=m.name) for m in obs.maps]
    obs2 = Observation(sub, obs.wavelength_m, obs.frequency_hz, "effelsberg")
    with torch_threads(1):
        m2 = BeamModel(obs2, "effelsberg", 4, 48)
        full = BeamModel(obs, "effelsberg", 4, 48).beams_numpy(d["K_true"], c_dB=-14.0)
        part = m2.beams_numpy(d["K_true"], c_dB=-14.0)
    assert m2.transform == "dft"
    np.testing.assert_allclose(part, full[:, ::7], rtol=0, atol=1e-12 * full.max())


def test_gradients_match_finite_differences(data_dir):
    obs, d = load_case(data_dir, "eff-n4-snr300")
    m = BeamModel(obs, "effelsberg", 2, 32, illumination="gaussian")
    rng = np.random.default_rng(3)
    K = torch.tensor(rng.normal(0, 0.1, 5), requires_grad=True)
    c = torch.tensor(-12.0, dtype=torch.float64, requires_grad=True)
    x0 = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(rng.normal(size=m.n_points))

    def f(K, c, x0):
        return (m({"K": K, "c_dB": c, "x0": x0, "amp": 2.0}) * w).sum()

    g = torch.autograd.grad(f(K, c, x0), (K, c, x0))
    h = 1e-6
    with torch.no_grad():
        for i in range(5):
            e = torch.zeros(5, dtype=torch.float64)
            e[i] = h
            fd = (f(K + e, c, x0) - f(K - e, c, x0)) / (2 * h)
            assert float(g[0][i]) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)
        fd = (f(K, c + h, x0) - f(K, c - h, x0)) / (2 * h)
        assert float(g[1]) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)
        fd = (f(K, c, x0 + h) - f(K, c, x0 - h)) / (2 * h)
        assert float(g[2]) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)
    # forward mode (used for Levenberg-Marquardt Jacobians) agrees with reverse mode
    import torch.autograd.forward_ad as fwAD

    g = torch.autograd.grad(f(K, c, x0), K)[0]
    v = torch.tensor(rng.normal(size=5))
    with warnings.catch_warnings(), fwAD.dual_level():
        # torch loads its forward-mode decompositions through deprecated torch.jit.script
        warnings.simplefilter("ignore", DeprecationWarning)
        out = f(fwAD.make_dual(K.detach(), v), c.detach(), x0.detach())
        jvp = fwAD.unpack_dual(out).tangent
    assert float(jvp) == pytest.approx(float(g @ v), rel=1e-10)


def test_grid_choice_converges(data_dir):
    obs, d = load_case(data_dir, "eff-n4-snr300")
    n, hist = choose_grid_size(obs, "effelsberg", float(d["noise_sigma"]),
                               return_history=True)
    assert n == hist[-1][0]
    assert hist[-1][1] < 0.1 and hist[-1][2] < 1.0
    assert all(h[1] >= 0.1 or h[2] >= 1.0 for h in hist[:-1])
    # a ten times smaller noise needs a finer grid
    n2 = choose_grid_size(obs, "effelsberg", float(d["noise_sigma"]) / 10)
    assert n2 > n


# ------------------------------------------------------------------- simulate
def test_simulate_truth_and_noise():
    obs = simulate("alma", order=3, snr=200, npix=21, freq_hz=100e9, dz=0.003, seed=4)
    assert [m.dz for m in obs.maps] == [-0.003, 0.0, 0.003]
    assert obs.maps[0].shape == (21, 21) and obs.layout == "gradfit"
    t = obs.truth
    assert len(t["zernike"]) == 10 and t["zernike"][0]["K_waves"] == 0.0
    clean = np.asarray(t["power_noiseless"])
    assert clean[1].max() == pytest.approx(1.0)
    noise = np.concatenate([m.power for m in obs.maps]) - clean.ravel()
    assert np.std(noise) == pytest.approx(1 / 200, rel=0.1)
    again = simulate("alma", order=3, snr=200, npix=21, freq_hz=100e9, dz=0.003, seed=4)
    np.testing.assert_array_equal(again.maps[2].power, obs.maps[2].power)
    with pytest.raises(ValueError, match="unknown telescope"):
        simulate("nowhere")


def test_phase_rms_matches_truth_files(data_dir):
    for case in CASES:
        t = json.loads((data_dir / "oof-pyoof" / f"{case}.truth.json").read_text())["zernike"]
        K = [z["K_waves"] for z in t["coefficients"]]
        assert phase_rms_notilt(K, t["order"]) == pytest.approx(t["phase_rms_rad_notilt"],
                                                                rel=1e-5)


@pytest.mark.parametrize("illumination", ["pedestal", "gaussian"])
def test_analytic_jacobian_matches_autograd(data_dir, illumination):
    obs, d = load_case(data_dir, "eff-n4-snr300")
    m = BeamModel(obs, "effelsberg", 3, 32, illumination=illumination)
    rng = np.random.default_rng(0)
    p = {"K": torch.tensor(rng.normal(0, 0.1, 9)), "amp": torch.tensor(3.0),
         "c_dB": torch.tensor(-13.0), "x0": torch.tensor(0.4), "y0": torch.tensor(-0.3),
         "pointing": torch.tensor(rng.normal(0, 0.1, (3, 2)))}
    p = {k: v.double() for k, v in p.items()}
    if illumination == "pedestal":
        p["q"] = torch.tensor(2.3, dtype=torch.float64)
    names = [k for k in ("K", "amp", "c_dB", "q", "x0", "y0", "pointing") if k in p]
    mu, J = m.value_and_jacobian(p, names)
    shapes = [p[k].shape for k in names]

    def f(z):
        q, i = {}, 0
        for k, sh in zip(names, shapes):
            n = int(np.prod(sh)) if len(sh) else 1
            q[k] = z[i:i + n].reshape(sh)
            i += n
        return m(q)

    flat = torch.cat([p[k].reshape(-1) for k in names])
    import torch.autograd.forward_ad as fwAD

    cols = []
    with warnings.catch_warnings(), fwAD.dual_level():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch's jvp decompositions
        for e in torch.eye(flat.numel(), dtype=torch.float64):
            cols.append(fwAD.unpack_dual(f(fwAD.make_dual(flat, e))).tangent)
    J_ad = torch.stack(cols, dim=1)
    torch.testing.assert_close(mu, f(flat), rtol=0, atol=1e-14)
    torch.testing.assert_close(J, J_ad, rtol=0, atol=1e-12)
    # through the autograd Function: the backward pass gives g @ J
    m.analytic_jacobian = True
    leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    g = torch.tensor(rng.normal(size=mu.numel()))
    grads = torch.autograd.grad((m(leaves) * g).sum(), [leaves[k] for k in names])
    torch.testing.assert_close(torch.cat([x.reshape(-1) for x in grads]), g @ J_ad)


def test_model_is_vmap_friendly(data_dir):
    obs, d = load_case(data_dir, "eff-n4-snr300")
    m = BeamModel(obs, "effelsberg", 4, 32)
    Ks = torch.tensor(np.random.default_rng(0).normal(0, 0.1, (4, 14)))
    c = torch.tensor(-14.0, dtype=torch.float64)
    out = torch.func.vmap(lambda K: m({"K": K, "c_dB": c}))(Ks)
    ref = torch.stack([m({"K": K, "c_dB": c}) for K in Ks])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-15)
