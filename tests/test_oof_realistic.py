"""Realistic simulated observations: each effect against its truth, text files, switches."""

from __future__ import annotations

import numpy as np
import pytest

from gradfit.oof import simulate, textio
from gradfit.oof.noise import observation_noise, scan_labels, scan_noise
from gradfit.oof.realistic import simulate_realistic

SMALL = dict(order=3, npix=33, grid=64, rms_waves=0.08)


@pytest.fixture(scope="module")
def realistic():
    return simulate_realistic(seed=4, **SMALL)


def test_truth_has_every_effect_in_range(realistic):
    obs, truth = realistic
    assert [m.dz for m in obs.maps] == [-0.027, 0.0, 0.027]
    assert truth["gain"][1] == 1.0
    for k in (0, 2):
        assert 0.97 <= truth["gain"][k] <= 1.03 and truth["gain"][k] != 1.0
        assert np.hypot(*truth["pointing_lambda_over_D"][k]) == pytest.approx(0.3)
    assert truth["pointing_lambda_over_D"][1] == [0.0, 0.0]
    for b in truth["background_fraction"]:
        assert 0.03 <= b <= 0.08
    np.testing.assert_allclose(truth["background"], np.array(truth["background_fraction"]) * 1000)
    assert [len(f) for f in truth["flagged"]] == [1, 1, 1]
    # flagged samples stay on the grid, masked (the fit keeps its fast transform)
    assert all(m.n == 33 * 33 and m.n_used == 33 * 33 - 1 and m.shape == (33, 33)
               for m in obs.maps)
    assert truth["illumination"]["model"] == "gaussian"
    assert obs.telescope == "srt" and obs.truth["K_waves"] == truth["K_waves"]
    # the data scatter about the truth model by the stated noise, correlated as stated
    for k, m in enumerate(obs.maps):
        resid = (m.power - truth["model"][k])[m.mask]
        assert 0.7 < np.std(resid) / np.hypot(5.0, 2.5) < 1.3  # sigma 5 (snr 200), offsets 2.5


def test_noise_of_the_simulation_is_recovered(realistic):
    obs, truth = realistic
    sigma = truth["noise"]["sigma"]
    # a map with its flagged sample back as NaN on the grid
    for k, m in enumerate(obs.maps):
        grid = np.full(33 * 33, np.nan)
        keep = np.ones(33 * 33, bool)
        keep[truth["flagged"][k]] = False
        np.testing.assert_array_equal(keep, m.mask)
        grid[keep] = (m.power - truth["model"][k])[keep]
        est = scan_noise(grid.reshape(33, 33), "auto", signal_threshold=None)
        assert est.scan_axis == "u"
        assert 0.8 < est.sigma / sigma < 1.2
        assert abs(est.lag1_along - 0.75) < 0.12


def test_flagged_maps_go_back_on_their_grid(realistic):
    """Masked maps (on their grid) and maps that lost their shape to a flag (flagged
    samples dropped): noise and scan labels work on both, and agree."""
    obs, truth = realistic
    dropped = textio.compact(obs)
    for k, (m, d) in enumerate(zip(obs.maps, dropped.maps)):
        assert m.shape == (33, 33) and d.shape is None and d.n == 33 * 33 - 1
        keep = m.mask
        np.testing.assert_array_equal(scan_labels(m, "u"), truth["scans"][k])
        np.testing.assert_array_equal(scan_labels(d, "u"), truth["scans"][k][keep])
        grid = np.full(33 * 33, np.nan)
        grid[keep] = m.power[keep]
        model = truth["model"][k]
        a = scan_noise(m, "u", model=model, signal_threshold=None)
        b = scan_noise(grid.reshape(33, 33) - _on_grid(model[keep], keep), "u",
                       signal_threshold=None)
        c = scan_noise(d, "u", model=model[keep], signal_threshold=None)
        assert a == b == c
    adopted, per_map = observation_noise(obs)
    assert len(per_map) == 3 and 0.8 < adopted.sigma / truth["noise"]["sigma"] < 1.2
    assert observation_noise(dropped)[0] == adopted


def _on_grid(values, keep):
    out = np.full(keep.size, np.nan)
    out[keep] = values
    return out.reshape(33, 33)


def test_pointing_drift_moves_the_beam_and_keeps_its_power():
    """Against the same beams without drift: shift theorem and Poisson summation."""
    kw = dict(SMALL, gain=0.0, background=None, flags=0, seed=2)
    drifted = simulate_realistic(drift=0.3, **kw)[1]
    still = simulate_realistic(drift=0.0, **kw)[1]
    obs = simulate_realistic(drift=0.0, **kw)[0]
    u, v = obs.maps[0].u, obs.maps[0].v
    for k in (0, 2):
        a, b = drifted["model"][k], still["model"][k]
        assert a.sum() == pytest.approx(b.sum(), rel=1e-4)
        shift = [np.sum(a * c) / a.sum() - np.sum(b * c) / b.sum() for c in (u, v)]
        np.testing.assert_allclose(shift, drifted["pointing_rad"][k], rtol=0.03,
                                   atol=1e-3 * np.ptp(u))
    np.testing.assert_array_equal(drifted["model"][1], still["model"][1])


def test_all_effects_off_is_plain_simulate():
    kw = dict(SMALL, seed=6)
    obs, truth = simulate_realistic(background=None, gain=0.0, drift=0.0, scan_lag1=0.0,
                                    scan_offset=0.0, flags=0, illumination="pedestal",
                                    c_dB=-14.0, **kw)
    ref = simulate("srt", K_waves=truth["K_waves"], dz=0.027, freq_hz=22.23e9, snr=1e15,
                   c_dB=-14.0, order=3, npix=33, grid=64)
    for m, r, model in zip(obs.maps, ref.maps, truth["model"]):
        np.testing.assert_allclose(model, 1000 * r.power, rtol=0, atol=1e-9)
        assert m.shape == (33, 33)
    est, _ = observation_noise(obs, models=truth["model"])
    assert abs(est.lag1_along) < 0.1 and est.offset_sd < 0.25 * est.sigma
    assert 0.9 < est.sigma / truth["noise"]["sigma"] < 1.1


def test_text_files_read_back_to_the_same_observation(tmp_path):
    obs, truth = simulate_realistic(seed=8, scan_axis="v", flag_value="zero", text_dir=tmp_path,
                                    background_plane=0.01, **SMALL)
    assert len(truth["text_files"]) == 3
    with pytest.warns(UserWarning, match=r"masked 1 flagged sample of 1089 \(0 NaN, 1 exact"):
        back = textio.read_text(truth["text_files"], dz=truth["dz_m"], telescope="srt",
                                wavelength=truth["wavelength_m"])
    assert back.meta["scan_axis"] == ["v", "v", "v"] and back.meta["units"][0] == "arcsec"
    for a, b in zip(obs.maps, back.maps):
        ia, ib = np.lexsort((a.u, a.v)), np.lexsort((b.u, b.v))
        np.testing.assert_array_equal(a.power[ia], b.power[ib])
        np.testing.assert_allclose(a.u[ia], b.u[ib], rtol=1e-12, atol=1e-18)
        assert a.dz == b.dz


def test_bad_arguments():
    with pytest.raises(ValueError, match="scan_axis must be 'u' or 'v'"):
        simulate_realistic(scan_axis="w", **SMALL)
    with pytest.raises(ValueError, match="flag_value must be"):
        simulate_realistic(flag_value="inf", **SMALL)
    with pytest.raises(ValueError, match="needs an in-focus map"):
        simulate_realistic(dz=[-0.02, 0.02], **SMALL)
    with pytest.raises(ValueError, match="gain must be >= 0"):
        simulate_realistic(gain=-0.1, **SMALL)
