"""OOF fits of real-like observations with the defaults (issue 9, "OOF on real observations").

Realistic simulations (:mod:`gradfit.oof.realistic`: background, gains, pointing drift,
AR(1) scan noise with per-scan offsets, a flagged sample per map, Gaussian-taper data
fitted with a pedestal) written as text files, read back and fitted with
``oof.fit``'s defaults only, against the truth and against the same fit of clean data.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from gradfit import oof
from gradfit.oof import textio
from gradfit.oof.realistic import simulate_realistic
from gradfit.oof.solve import IDEAL_FREE, REAL_FREE, default_free

SMALL = dict(order=3, npix=25, grid=64, rms_waves=0.08)
CLEAN = dict(background=None, gain=0.0, drift=0.0, scan_lag1=0.0, scan_offset=0.0, flags=0,
             illumination="pedestal", c_dB=-14.0)


def _from_text(truth):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*masked 1 flagged sample")
        return textio.read_text(truth["text_files"], dz=truth["dz_m"], telescope="srt",
                                wavelength=truth["wavelength_m"])


@pytest.fixture(scope="module")
def real_fits(tmp_path_factory):
    """Three realisations, text files in, defaults only; and the clean fits."""
    out = []
    for seed in (1, 2, 3):
        folder = tmp_path_factory.mktemp(f"real{seed}")
        _, truth = simulate_realistic(seed=seed, text_dir=folder, **SMALL)
        obs = _from_text(truth)
        clean, _ = simulate_realistic(seed=seed, **CLEAN, **SMALL)
        out.append((obs, truth, oof.fit(obs, order=3), oof.fit(clean, order=3)))
    return out


def test_defaults_on_text_maps_recover_the_truth(real_fits):
    pulls, err, err_clean = [], [], []
    for _obs, truth, sol, clean in real_fits:
        assert sol.success, sol.fit["message"]
        # flagged samples stay on the grid: the fast separable transform, not the DFT
        assert sol.fit["transform"] == "mft" and sol.fit["n_masked"] == 3
        assert sol.fit["free"] == list(REAL_FREE)
        assert sol.fit["sigma"].startswith("scan noise")
        K = np.array(truth["K_waves"])
        hi = np.array([n >= 2 for n, _ in sol.labels])
        pulls.append(((sol.K_waves - K) / np.where(hi, sol.K_err_waves, 1))[hi])
        err.append((sol.K_waves - K)[hi])
        err_clean.append((clean.K_waves - K)[hi])
        # the honest noise: within 15% of the simulation's scatter about its model
        sig = np.hypot(truth["noise"]["sigma"], truth["noise"]["scan_offset_sd"])
        assert 0.85 < sol.fit["sigma_value"] / sig < 1.15
        # gains relative to the in-focus map and backgrounds (in units of its peak)
        g = np.array(sol.nuisance["gain"]["value"])
        ge = np.array(sol.nuisance["gain"]["error"])
        assert g[1] == 1.0 and ge[1] == 0.0
        assert np.all(np.abs(g - truth["gain"])[[0, 2]] < 4 * ge[[0, 2]] + 0.005)
        bg = np.array(sol.nuisance["background"]["value"]) * sol.fit["data_scale"]
        bge = np.array(sol.nuisance["background"]["error"]) * sol.fit["data_scale"]
        assert np.all(np.abs(bg - truth["background"]) < 4 * bge + 0.003 * truth["peak"])
        pt = np.array(sol.nuisance["pointing"]["value"])
        assert np.all(np.abs(pt - truth["pointing_lambda_over_D"]) < 0.15)
        # per map: chi2r near 1 and the residual a small fraction of the peak
        for m in sol.fit["maps"]:
            assert 0.6 < m["chi2r"] < 1.6
            assert m["rms_residual_over_peak"] < 0.012
    pulls = np.concatenate(pulls)
    rms_pull = float(np.sqrt(np.mean(pulls**2)))
    # two-sided: errors neither far too small nor far too large
    assert np.mean(np.abs(pulls) < 3) >= 0.85, pulls
    assert 0.4 < rms_pull < 2.0, pulls
    rms = float(np.sqrt(np.mean(np.concatenate(err) ** 2)))
    rms_clean = float(np.sqrt(np.mean(np.concatenate(err_clean) ** 2)))
    assert rms <= 2.0 * rms_clean, (rms, rms_clean)


def test_full_model_and_summary(real_fits):
    obs, truth, sol, _ = real_fits[0]
    models = sol.model_maps()
    for m, mod, true in zip(obs.maps, models, truth["model"]):
        assert mod.shape == (m.n,) and np.all(np.isfinite(mod))  # masked samples too
        # background, gain and pointing included: data - model is noise
        r = (m.power - mod)[m.mask]
        assert 0.7 < np.std(r) / sol.fit["sigma_value"] < 1.3
        assert abs(np.mean(r)) < 0.5 * sol.fit["sigma_value"]
        # and the model is close to the noiseless truth (taper aside)
        assert np.sqrt(np.mean((mod - true) ** 2)) < 0.01 * truth["peak"]
    text = str(sol)
    for word in ("gain =", "background =", "pointing =", "chi2r", "map map0: chi2r",
                 "masked", "errors:"):
        assert word in text
    d = json.loads(json.dumps(sol.to_dict()))
    assert len(d["fit"]["maps"]) == 3 and "noise" in d["fit"]
    assert set(d["nuisance"]) >= {"gain", "background", "pointing"}
    assert all(len(d["nuisance"][k]["error"]) == 3 for k in ("gain", "background"))


def test_mask_keeps_the_grid_and_matches_dropping_the_samples():
    """A masked sample on the MFT grid gives the fit of the sample removed (DFT path)."""
    obs = oof.simulate("effelsberg", order=3, snr=300, npix=21, seed=5)
    dropped = []
    for k, m in enumerate(obs.maps):
        mask = np.ones(m.n, bool)
        mask[[7 + 40 * k, 200]] = False
        m.mask = mask
        m.power = np.where(mask, m.power, np.nan)
        dropped.append(oof.BeamMap(m.u[mask], m.v[mask], m.power[mask], m.dz,
                                   sigma=m.sigma[mask], name=m.name))
    flat = oof.Observation(dropped, obs.wavelength_m, obs.frequency_hz, telescope=obs.telescope)
    a = oof.fit(obs, order=3, n_starts=1, grid=48)
    b = oof.fit(flat, order=3, n_starts=1, grid=48)
    assert a.fit["transform"] == "mft" and b.fit["transform"] == "dft"
    assert a.fit["ndata"] == b.fit["ndata"] == 3 * (21 * 21 - 2)
    np.testing.assert_allclose(a.K_waves, b.K_waves, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.K_err_waves, b.K_err_waves, rtol=1e-4)


def test_default_free_and_how_to_turn_it_off():
    obs = oof.simulate("effelsberg", order=2, snr=300, npix=21, seed=3)
    assert default_free(obs) == IDEAL_FREE
    raw = oof.simulate("effelsberg", order=2, snr=300, npix=21, seed=3, with_sigma=False)
    assert default_free(raw) == REAL_FREE
    sol = oof.fit(raw, order=2, free=("amp", "c_dB"), n_starts=1)
    assert sol.fit["free"] == ["amp", "c_dB"] and "gain" not in sol.nuisance


def test_errors_scaled_when_the_noise_is_too_small():
    obs = oof.simulate("effelsberg", order=3, snr=300, npix=25, seed=9)
    honest = oof.fit(obs, order=3, n_starts=1)
    for m in obs.maps:
        m.sigma = m.sigma / 3  # claims 3x less noise than there is: chi2r about 9
    small = oof.fit(obs, order=3, n_starts=1)
    assert honest.fit["error_scale"] == 1.0 and not honest.fit["error_note"]
    assert 7 < small.fit["chi2r"] < 11
    assert "errors scaled by sqrt(chi2r)" in small.fit["error_note"]
    ratio = small.K_err_waves[1:] / honest.K_err_waves[1:]
    assert np.all((0.9 < ratio) & (ratio < 1.1))
    assert "errors scaled" in str(small)


def test_order_auto_picks_the_true_order():
    obs = oof.simulate("effelsberg", order=3, snr=1000, npix=21, seed=4, rms_waves=0.1)
    seen = []
    sol = oof.fit(obs, order="auto", n_starts=1, grid=48,
                  progress=lambda info: seen.append(info))
    sel = sol.fit["order_selection"]
    assert sol.order == sel["chosen"] == 3
    assert [o["order"] for o in sel["orders"]][:4] == [1, 2, 3, 4]
    bic = {o["order"]: o["bic"] for o in sel["orders"]}
    assert bic[3] == min(bic.values()) and bic[2] > bic[3] < bic[4]
    assert "order 3 has the lowest BIC" in sel["reason"] and "order selection" in str(sol)
    assert [i["order"] for i in seen if i.get("stage") == "order"][:3] == [1, 2, 3]


def test_jackknife_errors_beside_the_hessian(real_fits):
    obs, truth, sol, _ = real_fits[0]
    seen = []
    jk = oof.fit(obs, order=3, errors="jackknife", error_options={"n": 5},
                 progress=lambda info: seen.append(info))
    np.testing.assert_allclose(jk.K_waves, sol.K_waves, rtol=0, atol=1e-9)
    col = [z["jackknife_error_waves"] for z in jk.zernike]
    assert col[0] is None and all(c > 0 for c in col[1:])
    col = np.array(col[1:], dtype=float)
    # the same order of magnitude as the Hessian errors (correlated noise: larger)
    assert np.all(col < 30 * jk.K_err_waves[1:]) and np.median(col / jk.K_err_waves[1:]) > 0.3
    assert jk.extra_errors["n"] == 5 and jk.extra_errors["scan_axis"] == "u"
    assert sum(1 for i in seen if i.get("stage") == "jackknife") == 5
    assert "jackknife" in str(jk)
    json.dumps(jk.to_dict())


def test_multistart_reports_and_stops():
    obs = oof.simulate("effelsberg", order=3, snr=300, npix=21, seed=2)
    seen = []
    sol = oof.fit(obs, order=3, progress=lambda info: seen.append(info))
    # a fit that describes the data runs one start, and says so
    assert sol.fit["starts"] == 1 and len(sol.fit["start_log"]) == 1
    assert [i for i in seen if i.get("stage") == "start"][0]["start"] == 0
    forced = oof.fit(obs, order=3, n_starts=3, seed=1)
    log = forced.fit["start_log"]
    assert len(log) == 3 and sum(r["kept"] for r in log) == 1
    assert min(r["neg_log_likelihood"] for r in log) == pytest.approx(
        forced.fit["neg_log_likelihood"])


def test_background_plane_jacobian_and_recovery():
    import torch

    from gradfit.oof.model import BeamModel

    obs, truth = simulate_realistic(seed=3, background_plane=0.01, **SMALL)
    m = BeamModel(obs, "srt", 3, 48)
    plane = torch.tensor([[0.01, 0.02], [0.0, 0.03], [0.01, -0.01]], dtype=torch.float64)
    p = {"K": torch.full((9,), 0.02, dtype=torch.float64), "background_plane": plane}
    _, d = m.jacobian(p, ["background_plane"])
    J = torch.autograd.functional.jacobian(lambda x: m({**p, "background_plane": x}), plane)
    assert float((J - d["background_plane"]).abs().max()) < 1e-12 and float(J.abs().max()) == 1
    sol = oof.fit(obs, order=3, free=REAL_FREE + ("background_plane",))
    got = np.array(sol.nuisance["background_plane"]["value"]) * sol.fit["data_scale"]
    err = np.array(sol.nuisance["background_plane"]["error"]) * sol.fit["data_scale"]
    assert np.all(np.abs(got - truth["background_plane"]) < 4 * err + 0.5), (got, err)
    assert np.all(err > 0) and np.all(err < 3)


def test_scan_offsets_are_fitted_and_in_the_model():
    obs, truth = simulate_realistic(seed=1, **SMALL)
    sol = oof.fit(obs, order=3, free=REAL_FREE + ("scan_offset",))
    assert sol.success and sol.fit["scan_axis"] == "u"
    off = np.array(sol.nuisance["scan_offset"]["value"])
    assert off.shape == (3, 25) and np.all(off[:, 0] == 0.0)
    # the offsets scatter like the simulated ones (0.5 sigma; in-focus peak units)
    sd = truth["noise"]["scan_offset_sd"] / sol.fit["data_scale"]
    assert 0.4 * sd < np.std(off[:, 1:]) < 2.5 * sd
    # the full model holds them: every scan of the residual averages to about zero
    for m, mod in zip(obs.maps, sol.model_maps()):
        r = np.where(m.mask, m.power - mod, np.nan).reshape(25, 25)
        assert np.all(np.abs(np.nanmean(r[1:], axis=1)) < 0.5 * sol.fit["sigma_value"])
    assert "scan_offset: 25 scans per map" in str(sol)
    with pytest.raises(ValueError, match="scan_axis must be 'u', 'v' or None"):
        oof.fit(obs, order=3, scan_axis="x")
    K = np.array(truth["K_waves"])
    assert np.all(np.abs(sol.K_waves - K)[1:] < 4 * sol.K_err_waves[1:])


# ------------------------------------------------------------------------ the CLI
def _run(*args):
    from click.testing import CliRunner

    from gradfit.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_line(result):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = [ln for ln in result.stderr.splitlines() if not ln.startswith("gradfit: warning:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def text_maps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    _, truth = simulate_realistic(seed=5, text_dir=folder, **SMALL)
    return folder, truth


def test_cli_fits_text_maps_with_the_defaults(text_maps):
    from gradfit.oof import io

    folder, truth = text_maps
    files = truth["text_files"]
    out = folder / "out"
    r = _run("oof", "fit", *files, "--dz", "-0.027,0,0.027", "--telescope", "srt",
             "--freq-ghz", 22.23, "--order", 3, "--out", out, "--no-figures", "--json")
    assert r.exit_code == 0, r.stderr
    assert "masked 1 flagged sample" in r.stderr and "map map0: chi2r" in r.stderr
    data = json.loads(r.stdout)
    assert data["fit"]["free"] == list(REAL_FREE) and data["fit"]["n_masked"] == 3
    assert set(data["nuisance"]) >= {"gain", "background", "pointing"}
    K = np.array(truth["K_waves"])
    got = np.array([z["value_waves"] for z in data["zernike"]])
    err = np.array([z["error_waves"] for z in data["zernike"]])
    assert np.all(np.abs(got - K)[1:] < 4 * err[1:])
    # model.fits: the full model at the observed samples; data - model is noise
    model = io.read(out / "model.fits")
    obs = _from_text(truth)
    for m, mm in zip(obs.maps, model.maps):
        r_ = (m.power - mm.power)[m.mask]
        assert 0.7 < np.std(r_) / data["fit"]["sigma_value"] < 1.3
    assert (out / "observation.fits").exists()
    # the figures can be drawn again from the result alone (data, model, residual)
    r = _run("oof", "plot", out)
    assert r.exit_code == 0, r.stderr
    assert (out / "maps.png").stat().st_size > 10_000
    # the nuisance parameters can be turned off
    r = _run("oof", "fit", *files, "--dz", "-0.027,0,0.027", "--telescope", "srt",
             "--freq-ghz", 22.23, "--order", 3, "--out", folder / "off", "--no-figures",
             "--json", "--free", "amp,c_dB", "-q")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["fit"]["free"] == ["amp", "c_dB"]


def test_cli_convert(text_maps, tmp_path):
    from gradfit.oof import io

    _, truth = text_maps
    out = tmp_path / "obs.fits"
    r = _run("oof", "convert", *truth["text_files"], "--dz", "-0.027,0,0.027", "--telescope",
             "srt", "--freq-ghz", 22.23, "--out", out)
    assert r.exit_code == 0, r.stderr
    back = io.read(out)
    assert [m.dz for m in back.maps] == [-0.027, 0.0, 0.027]
    assert [m.n for m in back.maps] == [624, 624, 624]  # the flagged sample left out
    assert back.frequency_hz == pytest.approx(22.23e9)
    r = _run("oof", "convert", *truth["text_files"], "--dz", "-0.027,0,0.027", "--freq-ghz",
             22.23, "--out", out)
    assert "exists; pass --overwrite" in _one_line(r)


def test_cli_bad_input_one_line_exit_2(text_maps, tmp_path):
    _, truth = text_maps
    good = truth["text_files"]
    bad_cols = tmp_path / "cols.txt"
    bad_cols.write_text("# units: arcsec\n1 2 3\n1 2\n")
    bad_num = tmp_path / "num.txt"
    bad_num.write_text("1 2 3\n1 2 abc\n")
    few = tmp_path / "few.txt"
    few.write_text("".join(f"{i} {i} 1\n" for i in range(5)))
    other = tmp_path / "other.txt"
    textio.write_text(other, np.repeat(np.arange(5.0), 4), np.tile(np.arange(4.0), 5),
                      np.ones(20), units="arcsec")
    neg = tmp_path / "neg.toml"
    neg.write_text('diameter_m = 64.0\nFp_m = -21.0\nF_eff_m = 150.0\n')
    missing = tmp_path / "missing.toml"
    missing.write_text('diameter_m = 64.0\nF_eff_m = 150.0\n')
    dz = ("--dz", "-0.027,0,0.027")
    base = ("--freq-ghz", 22.23, "--order", 3, "--out", tmp_path / "o")
    cases = [
        ((bad_cols, *good[1:], *dz, "--telescope", "srt"), "line 3: 2 columns, expected 3"),
        ((bad_num, *good[1:], *dz, "--telescope", "srt"), "column 3 (power) is not a number"),
        ((few, *good[1:], *dz, "--telescope", "srt"), "5 samples; a beam map needs at least 10"),
        ((*good, "--dz", "-0.027,0.027", "--telescope", "srt"), "dz has 2 values for 3 files"),
        ((*good, *dz, "--telescope", "srt", "--units", "furlong"), "unknown unit 'furlong'"),
        ((*good, *dz, "--telescope", neg), "field 'Fp_m' must be > 0"),
        ((*good, *dz, "--telescope", missing), "missing field 'Fp_m'"),
        ((*good, *dz, "--telescope", tmp_path / "nope.toml"), "nope.toml"),
        ((other, *good[1:], *dz, "--telescope", "srt"), "maps on different grids"),
        ((*good, *dz), "--telescope is required for text maps"),
    ]
    for args, expect in cases:
        line = _one_line(_run("oof", "fit", *args, *base))
        assert expect in line, (expect, line)
    line = _one_line(_run("oof", "fit", *good, *dz, "--telescope", "srt", "--order", 3,
                          "--out", tmp_path / "o"))
    assert "--freq-ghz is required" in line


def test_signal_mask_helpers_match_scipy():
    from scipy.ndimage import binary_dilation, uniform_filter

    from gradfit.oof.noise import _box3, _dilate_cross

    Z = np.random.default_rng(0).normal(size=(17, 23))
    np.testing.assert_allclose(_box3(Z), uniform_filter(Z, size=3, mode="nearest"),
                               rtol=0, atol=1e-14)
    B = Z > 1.2
    assert np.array_equal(_dilate_cross(B), binary_dilation(B, iterations=1))


def test_float32_matches_float64_with_masks_plane_and_scan_offsets():
    import torch

    obs, _ = simulate_realistic(seed=1, **SMALL)
    free = REAL_FREE + ("background_plane", "scan_offset")
    a = oof.fit(obs, order=3, n_starts=1, free=free)
    b = oof.fit(obs, order=3, n_starts=1, free=free, dtype=torch.float32)
    assert a.success and b.success
    # float32 (which stops at its machine precision): K to 2% of the errors (measured
    # 0.6%), the errors to 5% (measured 2.1%)
    assert np.all(np.abs(a.K_waves - b.K_waves)[1:] < 0.02 * a.K_err_waves[1:])
    np.testing.assert_allclose(b.K_err_waves[1:], a.K_err_waves[1:], rtol=0.05)
