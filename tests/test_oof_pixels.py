"""The pixel (per-cell) aperture phase: model, operator, errors, panels, recovery.

References are independent of the code under test: the Zernike beam model
(:class:`gradfit.oof.model.BeamModel`), finite differences, a dense inverse built with
numpy, and a known truth (simulated on a finer grid than the fit).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradfit import oof
from gradfit.oof import panels, pixel_errors, pixels
from gradfit.oof.aperture import aperture_grid
from gradfit.oof.model import BeamModel
from gradfit.oof.simulate import C_LIGHT
from gradfit.oof.zernike import zernike_basis

FREQ = 32e9
LAM = C_LIGHT / FREQ


def _small_obs(npix=21, dz=(-0.03, -0.01, 0.0, 0.02), snr=1e3, seed=1):
    return oof.simulate(telescope="effelsberg", order=3, npix=npix, snr=snr, seed=seed, dz=dz,
                        grid=64)


# ------------------------------------------------------------------------- model
def test_pixel_model_matches_zernike_beam_model():
    obs = _small_obs()
    K = np.array(obs.truth["K_waves"])
    nu = {"c_dB": -11.0, "q": 2.5, "x0": 0.4, "y0": -0.3,
          "pointing": np.array([[0.0, 0.0], [0.1, -0.2], [0.05, 0.0], [-0.1, 0.1]]),
          "gain": np.array([1.0, 0.9, 1.0, 1.1]), "background": np.array([0.0, 0.01, 0.0, 0.02]),
          "background_plane": np.array([[0.0, 0.0], [0.01, -0.02], [0.0, 0.005], [0.0, 0.0]])}
    bm = BeamModel(obs, "effelsberg", 3, 24)
    with torch.no_grad():
        ref = bm({"K": K[1:], "amp": 2.0, **nu}).numpy()
    pm = pixels.PixelModel(obs, "effelsberg", 24, nuisance=nu)
    phase = 2 * np.pi * (K @ pm.grid.zernike(3))
    with torch.no_grad():
        got = pm({"phase": pm.tensor(phase), "amp": 2.0}).numpy()
    assert ref.shape == got.shape == (obs.n_points,)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14 * np.abs(ref).max())


def test_pixel_model_float32_and_device_match_float64(device):
    obs = _small_obs()
    K = np.array(obs.truth["K_waves"])
    ref_model = pixels.PixelModel(obs, "effelsberg", 24)
    phase = 2 * np.pi * (K @ ref_model.grid.zernike(3))
    with torch.no_grad():
        ref = ref_model({"phase": ref_model.tensor(phase), "amp": 5.0}).numpy()
        m32 = pixels.PixelModel(obs, "effelsberg", 24, device=device, dtype=torch.float32)
        got = m32({"phase": m32.tensor(phase), "amp": 5.0})
    assert got.dtype == torch.float32 and got.device.type == device
    err = np.max(np.abs(got.cpu().numpy() - ref)) / np.max(ref)
    # float32 rounding of sums over ~450 cells: 1e-6 of the peak, not 1e-12 (float64)
    assert 1e-10 < err < 1e-4, err


def test_simulate_surface_matches_simulate_for_a_zernike_surface():
    obs = _small_obs(snr=1e6)
    K = np.array(obs.truth["K_waves"])
    pr = 50.0

    def phase_fn(x, y):
        return 2 * np.pi * (K @ zernike_basis(3, np.hypot(x, y) / pr, np.arctan2(y, x)).numpy())

    sim = pixels.simulate_surface("effelsberg", phase_fn, obs.truth["dz_m"], freq_hz=32e9,
                                  npix=21, grid=64, snr=1e6, c_dB=-14.0)
    ref = np.array(obs.truth["power_noiseless"]).ravel()
    got = np.concatenate([m.power for m in sim.maps])
    # the noise is 1e-6 of the peak: equal to that, and certainly not equal to zero
    assert np.max(np.abs(got - ref)) < 1e-5
    assert np.max(np.abs(got - ref)) > 1e-8


def test_data_operator_matches_finite_differences():
    obs = _small_obs()
    z = oof.fit(obs, order=3, grid=16, errors="none")
    model = pixels.PixelModel(obs, "effelsberg", 16, nuisance={"c_dB": z.nuisance["c_dB"]["value"]})
    post = pixels._Posterior(model, 5.0, lambda **k: None)
    rng = np.random.default_rng(0)
    phase = 2 * np.pi * (z.K_waves @ model.grid.zernike(3)) + rng.normal(0, 0.1, model.n_cells)
    amp = z.nuisance["amp"]["value"]
    sigma = np.full(obs.n_points, 1e-3)
    J = model.n_cells

    def mu(ph, a):
        with torch.no_grad():
            return (a * model.power(model.tensor(ph))).numpy() / sigma

    # dense Jacobian by central differences (an independent reference for J^T W J)
    h = 1e-6
    Jd = np.empty((obs.n_points, J + 1))
    for i in range(J):
        e = np.zeros(J)
        e[i] = h
        Jd[:, i] = (mu(phase + e, amp) - mu(phase - e, amp)) / (2 * h)
    Jd[:, J] = mu(phase, 1.0)
    ii, jj = pixels.neighbour_pairs(model.grid)
    D = np.zeros((ii.size, J))
    D[np.arange(ii.size), ii] = 1.0
    D[np.arange(ii.size), jj] = -1.0
    w = model.grid.weight / model.grid.weight.sum()
    prior = 5.0 * D.T @ D + np.outer(w, w) / pixels.PISTON_SIGMA_RAD**2
    A = Jd.T @ Jd
    A[:J, :J] += prior
    matvec, data_matvec, diag = pixel_errors.gauss_newton_operator(post, phase, amp, sigma)
    v = rng.normal(size=J + 1)
    got = matvec(torch.as_tensor(v)).numpy()
    np.testing.assert_allclose(got, A @ v, rtol=1e-5, atol=1e-6 * np.abs(A @ v).max())
    B = Jd.T @ Jd
    np.testing.assert_allclose(data_matvec(torch.as_tensor(v)).numpy(), B @ v, rtol=1e-5,
                               atol=1e-6 * np.abs(B @ v).max())
    # the Jacobi estimate is the diagonal to about 10 %, not a different quantity
    ratio = diag.numpy()[:J] / np.diag(A)[:J]
    assert 0.85 < np.median(ratio) < 1.15
    assert np.all((ratio > 0.5) & (ratio < 2.0))

    # Hutchinson variances and n_eff against the dense inverse
    C = np.linalg.inv(A)
    n_eff = float(np.trace(C[:J, :J] @ B[:J, :J]))
    assert 0 < n_eff < J
    unc = pixel_errors.pixel_uncertainty(post, phase, amp, sigma, var_probes=12,
                                         n_eff_probes=12, seed=3)
    assert abs(unc.n_eff - n_eff) < max(4 * unc.n_eff_std, 0.02 * n_eff), (unc.n_eff, n_eff)
    assert abs(unc.n_eff - n_eff) < 0.1 * n_eff
    r = unc.variance / np.diag(C)[:J]
    assert 0.8 < np.nanmedian(r) < 1.2, np.nanmedian(r)
    assert "hutchinson" in unc.method and "12 probes" in unc.method


def test_n_eff_grows_with_maps_and_falls_with_smoothness():
    obs = _small_obs(dz=(-0.04, -0.02, 0.0, 0.02, 0.04), snr=3e3)
    z = oof.fit(obs, order=3, grid=16, errors="none")
    two = oof.Observation([obs.maps[1], obs.maps[2]], obs.wavelength_m, obs.frequency_hz,
                          "effelsberg")

    def n_eff(o, smoothness):
        return oof.fit_pixels(o, zernike=z, grid=16, smoothness=smoothness, errors="none",
                              n_eff_probes=8).n_eff

    J = aperture_grid("effelsberg", 16).n_pixels
    five, pair, stiff = n_eff(obs, 5.0), n_eff(two, 5.0), n_eff(obs, 1e4)
    assert 0 < pair < five < J, (pair, five, J)
    assert five > 1.1 * pair  # 195 against 164 of 211 cells; the probes scatter by ~2
    assert stiff < 0.5 * five


# ------------------------------------------------------------------ the acceptance
@pytest.fixture(scope="module")
def panel_case():
    """Zernike + panel pistons, 5 maps simulated on a 96-cell grid, fitted on 32 cells."""
    layout = panels.PanelLayout(((3.25, 20.0, 8, 0.0), (20.0, 35.0, 16, 0.0),
                                 (35.0, 50.0, 24, 7.5)))
    off = panels.panel_offsets_um(layout, seed=1)
    pr = 50.0

    def phase_fn(x, y):
        pid = layout.panel_of(x, y)
        d = np.where(pid >= 0, off[np.maximum(pid, 0)], 0.0) * 1e-6
        r = np.hypot(x, y) / pr
        return 4 * np.pi * d / LAM + 2 * np.pi * 0.1 * r**3 * np.cos(3 * np.arctan2(y, x))

    obs = pixels.simulate_surface("effelsberg", phase_fn, [-0.04, -0.02, 0.0, 0.02, 0.04],
                                  freq_hz=FREQ, npix=49, half_width_beams=12, grid=96,
                                  snr=3e3, seed=5)
    z = oof.fit(obs, order=4, grid=32)
    ps = oof.fit_pixels(obs, zernike=z, grid=32, smoothness=20.0, errors="hutchinson",
                        error_probes=6, n_eff_probes=6)
    return obs, z, ps, phase_fn


def _rms_um(diff, g, full):
    d = pixels.remove_piston_tilt(diff[full], g.x[full], g.y[full])
    return float(np.sqrt(np.mean(d**2))) * LAM / (4 * math.pi) * 1e6


def test_pixel_fit_recovers_panels_a_zernike_fit_cannot(panel_case):
    obs, z, ps, phase_fn = panel_case
    g = ps.grid
    full = g.weight >= 1
    truth = phase_fn(g.x, g.y)
    rms_z = _rms_um(2 * np.pi * (z.K_waves @ g.zernike(4)) - truth, g, full)
    rms_p = _rms_um(ps.phase_rad - truth, g, full)
    rms_true = _rms_um(truth, g, full)
    # the Zernike fit misses the panels (about their 210 um rms); the pixel fit is clearly
    # better, yet not perfect (3 m cells, maps 12 beams wide)
    assert rms_z > 150.0, rms_z
    assert rms_p < 0.75 * rms_z, (rms_p, rms_z)
    assert rms_p > 10.0
    assert rms_true > rms_z
    assert ps.success, ps.fit["message"]
    assert 0.8 < ps.fit["chi2"] / ps.fit["ndata"] < 3.0


def test_pixel_solution_reports_n_eff_errors_and_maps(panel_case):
    obs, z, ps, _ = panel_case
    assert ps.n_cells == ps.grid.n_pixels == ps.phase_rad.size
    assert 0.2 * ps.n_cells < ps.n_eff < ps.n_cells
    err = ps.surface_error_map()
    assert err.shape == (32, 32)
    good = np.isfinite(err)
    assert good.sum() > 0.8 * ps.n_cells
    # 1-sigma per cell: far below the 210 um panels (the data constrain them), above zero
    assert 0.5 < np.nanmedian(err) < 100.0
    s = ps.surface_map()
    assert np.isnan(s[16, 16]) or np.isfinite(s[16, 16])
    assert np.isfinite(s).sum() == ps.n_cells
    d = ps.to_dict()
    assert d["basis"] == "pixels" and d["n_cells"] == ps.n_cells
    assert d["n_eff"] == ps.n_eff and "hutchinson" in d["fit"]["errors"]
    maps = ps.model_maps()
    assert len(maps) == len(obs.maps)
    r = np.concatenate([m.power for m in obs.maps]) - np.concatenate(maps)
    sig = np.concatenate([m.sigma for m in obs.maps])
    assert 0.8 < np.mean((r / sig) ** 2) < 3.0
    assert "n_eff" in str(ps)
    with pytest.raises(ValueError):
        ps.phase_rad[0] = 1.0


def test_panel_basis_fit_recovers_the_pistons(panel_case):
    obs, z, ps, phase_fn = panel_case
    layout = panels.PanelLayout(((3.25, 20.0, 8, 0.0), (20.0, 35.0, 16, 0.0),
                                 (35.0, 50.0, 24, 7.5)))
    pb = oof.fit_pixels(obs, zernike=z, grid=32, panels=layout, errors="hutchinson",
                        error_probes=16, n_eff_probes=4)
    assert pb.basis == "panels" and pb.success, pb.fit["message"]
    assert pb.fit["n_params"] == 48 + 2 * pb.panels["n_tilted"] + 1
    g = pb.grid
    full = g.weight >= 1
    truth = phase_fn(g.x, g.y)
    rms_z = _rms_um(2 * np.pi * (z.K_waves @ g.zernike(4)) - truth, g, full)
    rms_b = _rms_um(pb.phase_rad - truth, g, full)
    # the basis holds the truth's panel steps (the cubic term is nearly planar per panel)
    assert rms_b < 0.5 * rms_z, (rms_b, rms_z)
    assert 0 < pb.n_eff < pb.fit["n_params"]
    e = pb.panels["piston_err_um"]
    # Hutchinson's diagonal is noisy where pistons correlate: most, not all, come out
    assert np.isfinite(e).mean() > 0.7 and 0.1 < np.nanmedian(e) < 100


def test_panel_basis_adjoint_and_start():
    g = aperture_grid("effelsberg", 24)
    layout = panels.PanelLayout(((3.25, 25.0, 6, 0.0), (25.0, 50.0, 12, 15.0)))
    b = pixels.PanelBasis(g, layout, "cpu", torch.float64)
    rng = np.random.default_rng(4)
    v = torch.as_tensor(rng.normal(size=b.n))
    w = torch.as_tensor(rng.normal(size=g.n_pixels))
    assert abs(float(b.forward(v) @ w) - float(v @ b.adjoint(w))) < 1e-10 * float(w.norm())
    # a piecewise-planar phase is reproduced exactly by the least-squares start
    theta = rng.normal(size=b.n)
    ph = b.forward(torch.as_tensor(theta)).numpy()
    th0, off = b.start(ph)
    np.testing.assert_allclose(th0, theta, atol=1e-10)
    assert np.all(off == 0)  # the rings cover every cell centre of this dish
    assert b.n_pistons == 18
    # small panels: pistons only (fewer than MIN_CELLS_FOR_TILT cells each)
    many = panels.PanelLayout(((3.25, 25.0, 150, 0.0), (25.0, 50.0, 300, 0.0)))
    bp = pixels.PanelBasis(g, many, "cpu", torch.float64)
    assert bp.n_tilts == 0 and bp.n == bp.n_pistons > 100
    v = torch.as_tensor(rng.normal(size=bp.n))
    assert abs(float(bp.forward(v) @ w) - float(v @ bp.adjoint(w))) < 1e-10 * float(w.norm())
    assert bp.weigh_diag(torch.ones(g.n_pixels)).shape == (bp.n,)


# ------------------------------------------------------------------------ grids
def test_grid_from_pixel_size_and_ten_thousand_cells():
    assert pixels.grid_cells("effelsberg", pixel_m=100 / 128) == 128
    assert pixels.grid_cells("effelsberg", grid=96) == 96
    assert pixels.grid_cells("effelsberg") == pixels.DEFAULT_GRID
    g = aperture_grid("effelsberg", 128)
    assert g.n_pixels >= 10_000
    i, j = pixels.neighbour_pairs(g)
    # interior cells have 4 neighbours: about 2 pairs per cell
    assert 1.8 * g.n_pixels < i.size < 2.0 * g.n_pixels
    assert np.all(i != j)


@pytest.mark.parametrize("kw, match", [
    ({"pixel_m": 1.0, "grid": 64}, "not both"),
    ({"pixel_m": -1.0}, "pixel_m"),
    ({"pixel_m": 50.0}, "8 to 4096"),
    ({"grid": 2.5}, "grid must be an integer"),
])
def test_grid_cells_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        pixels.grid_cells("effelsberg", **kw)


def test_refine_pixels_bad_input():
    obs = _small_obs()
    z = oof.fit(obs, order=2, grid=16, errors="none")
    for bad in (0.0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="smoothness"):
            pixels.refine_pixels(obs, z, grid=16, smoothness=bad)
    with pytest.raises(ValueError, match="errors"):
        pixels.refine_pixels(obs, z, grid=16, errors="dense")
    with pytest.raises(ValueError, match="n_eff_probes"):
        pixels.refine_pixels(obs, z, grid=16, n_eff_probes=1)
    import dataclasses

    odd = dataclasses.replace(z, nuisance={**z.nuisance, "tilt_of_moon": {"value": 1.0}})
    with pytest.raises(ValueError, match="does not include the start's nuisance"):
        pixels.refine_pixels(obs, odd, grid=16)
    with pytest.raises(TypeError, match="Solution"):
        pixels.refine_pixels(obs, {"K": [0, 1]}, grid=16)
    one = oof.Observation([obs.maps[0]], obs.wavelength_m, obs.frequency_hz, "effelsberg")
    with pytest.raises(ValueError, match="at least 2 maps"):
        pixels.refine_pixels(one, z, grid=16)
    with pytest.raises(TypeError, match="Observation"):
        pixels.refine_pixels("obs.fits", z, grid=16)
    anon = oof.Observation(obs.maps, obs.wavelength_m, obs.frequency_hz, None)
    with pytest.raises(ValueError, match="telescope"):
        oof.fit_pixels(anon, grid=16)
    with pytest.raises(ValueError, match="unknown basis 'pixel'; choose one of: zernike, "
                                         "pixels, panels"):
        pixels.fit_basis(oof.fit, obs, "pixel", grid=16)
    with pytest.raises(ValueError, match="needs panels="):
        pixels.fit_basis(oof.fit, obs, "panels", grid=16)
    with pytest.raises(ValueError, match="cannot read panel layout"):
        pixels.refine_pixels(obs, z, grid=16, panels="no-such-layout.txt")
    far = panels.PanelLayout(((60.0, 70.0, 8, 0.0),))
    with pytest.raises(ValueError, match="covers no cell"):
        pixels.refine_pixels(obs, z, grid=16, panels=far)


# ----------------------------------------------------------------------- panels
def test_panel_layout_file_round_trip_and_lookup(tmp_path):
    text = "# test\n3.25 10 4\n10 20 8 22.5  # staggered\n\n"
    p = tmp_path / "panels.txt"
    p.write_text(text)
    lay = panels.read_panel_layout(p)
    assert lay.n_panels == 12
    assert panels.PanelLayout.from_text(lay.to_text()) == lay
    # hand-computed: ring 0 quadrants from 0 deg; ring 1 octants from 22.5 deg
    x = np.array([5.0, 0.0, -5.0, 15 * math.cos(math.radians(30)), 15.0, 2.0, 25.0])
    y = np.array([1.0, 5.0, -1.0, 15 * math.sin(math.radians(30)), 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(lay.panel_of(x, y), [0, 1, 2, 4, 11, -1, -1])
    cx, cy = lay.centres()
    np.testing.assert_array_equal(lay.panel_of(cx, cy), np.arange(12))
    eff = panels.effelsberg_like()
    assert len(eff.rings) == 17 and 800 < eff.n_panels < 1500
    off = panels.panel_offsets_um(eff, seed=2)
    assert np.all((np.abs(off) >= 100) & (np.abs(off) <= 300))
    assert 0.3 < np.mean(off > 0) < 0.7


@pytest.mark.parametrize("text, match", [
    ("3 10\n", "line 1: expected"),
    ("# c\n3 10 x\n", "line 2"),
    ("10 3 4\n", "r_inner_m < r_outer_m"),
    ("3 10 4\n5 12 4\n", "overlap"),
    ("3 10 0\n", "n_panels"),
    ("# nothing\n", "no rings"),
])
def test_panel_layout_bad_input(text, match):
    with pytest.raises(ValueError, match=match):
        panels.PanelLayout.from_text(text, source="lay.txt")


def test_panel_layout_missing_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read panel layout file"):
        panels.read_panel_layout(tmp_path / "nope.txt")


def test_oof_fit_routes_the_pixel_basis():
    """oof.fit(basis=...) is the one entry point: a bad basis names the choices."""
    from gradfit import oof

    obs = oof.simulate(order=2, npix=15, snr=1000, seed=1)
    with pytest.raises(ValueError, match="zernike"):
        oof.fit(obs, order=2, basis="wavelets")
