"""Flagged samples of a gridded map: read from FITS, fitted and checked like the text reader's.

A flagged sample (NaN in the file) stays on its map's grid with ``BeamMap.mask``, so the
fit keeps the separable transform, its exact Jacobian and the scan-noise estimate. Until
this was fixed, the FITS reader dropped such samples: one NaN per map turned a 0.3 s fit
into a 9 s one (the scattered-sample transform with an autodiff Jacobian) and left the
errors of the map backgrounds about 3 times too small (no correlated-noise inflation).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from gradfit import oof
from gradfit.oof import checks, textio
from gradfit.oof.campaign import _chi2_reduced
from gradfit.oof.observation import BeamMap
from gradfit.oof.realistic import simulate_realistic


def _read_quietly(path):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*masked 1 of", category=UserWarning)
        return oof.read(path)


def _flag(obs, where):
    """The observation with sample ``where[i]`` of map i flagged (NaN and masked)."""
    maps = []
    for m, k in zip(obs.maps, where):
        keep = np.ones(m.n, dtype=bool)
        keep[k] = False
        maps.append(BeamMap(u=m.u, v=m.v, power=np.where(keep, m.power, np.nan), dz=m.dz,
                            sigma=m.sigma, name=m.name, shape=m.shape, mask=keep))
    return dataclasses.replace(obs, maps=maps, meta=dict(obs.meta))


def test_a_flagged_realistic_map_read_from_fits_fits_as_in_memory(tmp_path):
    obs, _ = simulate_realistic(order=4, npix=25, seed=5)
    assert all(m.mask is not None and m.n_used == m.n - 1 for m in obs.maps)
    path = tmp_path / "obs.fits"
    oof.write(obs, path)
    back = _read_quietly(path)
    for m, b in zip(obs.maps, back.maps):
        assert b.shape == m.shape and b.mask is not None
        assert np.array_equal(b.mask, m.mask)
        np.testing.assert_array_equal(b.power[b.mask], m.power[m.mask])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = oof.fit(obs, order=4, telescope="srt")
        b = oof.fit(back, order=4, telescope="srt")
    assert b.fit["transform"] == "mft" and b.fit["jacobian"] == "exact"
    assert b.fit["n_masked"] == a.fit["n_masked"] == 3
    # the scan noise of the maps, not the map edges
    assert b.fit["sigma"] == a.fit["sigma"] and b.fit["sigma"].startswith("scan noise")
    assert b.fit["noise"]["sigma"] == pytest.approx(a.fit["noise"]["sigma"], rel=1e-9)
    np.testing.assert_allclose(b.K_waves, a.K_waves, rtol=0, atol=1e-10)
    np.testing.assert_allclose(b.K_err_waves, a.K_err_waves, rtol=1e-8)


def test_masked_grid_fit_equals_the_fit_without_those_samples():
    # two independent paths: the gridded transform with a mask, and the direct transform
    # at the scattered samples that remain
    obs = _flag(oof.simulate(order=3, npix=15, snr=200, seed=2), [7, 100, 223])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grid = oof.fit(obs, order=3)
        scattered = oof.fit(textio.compact(obs), order=3)
    assert grid.fit["transform"] == "mft" and scattered.fit["transform"] == "dft"
    assert grid.fit["ndata"] == scattered.fit["ndata"] == 3 * 225 - 3
    np.testing.assert_allclose(grid.K_waves, scattered.K_waves, rtol=0, atol=1e-6)
    np.testing.assert_allclose(grid.K_err_waves, scattered.K_err_waves, rtol=1e-4)


def test_checks_and_the_campaign_chi2_leave_flagged_samples_out():
    obs = oof.simulate(order=3, npix=25, snr=300, seed=1)
    flagged = _flag(obs, [0, 300, 624])
    for m, f in zip(obs.maps, flagged.maps):
        s0, s1 = checks.structure_sigma(m), checks.structure_sigma(f)
        assert np.isfinite(s1) and abs(s1 - s0) < 0.01 * s0
        assert checks.noise_sigma(f) == checks.noise_sigma(m)  # given sigma: its median
    # estimated noise (no sigma given): finite, and near the unflagged estimate
    bare = dataclasses.replace(flagged, maps=[
        BeamMap(u=m.u, v=m.v, power=m.power, dz=m.dz, name=m.name, shape=m.shape,
                mask=m.mask) for m in flagged.maps])
    plain = dataclasses.replace(obs, maps=[
        BeamMap(u=m.u, v=m.v, power=m.power, dz=m.dz, name=m.name, shape=m.shape)
        for m in obs.maps])
    for m, f in zip(plain.maps, bare.maps):
        n0, n1 = checks.noise_sigma(m), checks.noise_sigma(f)
        assert np.isfinite(n1) and abs(n1 - n0) < 0.1 * n0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sol = oof.fit(flagged, order=3)
    chi2r = _chi2_reduced(sol, flagged)
    assert chi2r is not None and 0.8 < chi2r < 1.2  # sigma is the true noise


def test_fit_pixels_accepts_flagged_samples():
    obs = oof.simulate(order=3, npix=21, snr=300, seed=3)
    flagged = _flag(obs, [10, 200, 400])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = oof.fit_pixels(obs, order=3, grid=24, errors="none", n_eff_probes=0)
        b = oof.fit_pixels(flagged, order=3, grid=24, errors="none", n_eff_probes=0)
    assert b.fit["ndata"] == a.fit["ndata"] - 3
    # chi2 per sample as without the flags (1.53 for both here: the smoothness prior
    # does not follow the simulated Zernike surface exactly); a flagged sample counted
    # with its NaN or zero would make it NaN or far larger
    ra, rb = a.fit["chi2"] / a.fit["ndata"], b.fit["chi2"] / b.fit["ndata"]
    assert abs(rb - ra) < 0.01 * ra
    # three samples of 1323 move the surface little, but they do move it
    d = np.nanmax(np.abs(b.phase_rad - a.phase_rad))
    assert 0 < d < 0.05 * np.nanmax(np.abs(a.phase_rad))


def test_a_map_with_every_sample_flagged_is_refused():
    m = oof.simulate(order=2, npix=9, seed=0).maps[0]
    with pytest.raises(ValueError, match="every sample is masked"):
        BeamMap(u=m.u, v=m.v, power=m.power, dz=m.dz, shape=m.shape,
                mask=np.zeros(m.n, dtype=bool))


def test_the_gravity_model_fits_campaigns_with_flagged_samples():
    from gradfit.oof import campaign as C

    rng = np.random.default_rng(4)
    a, b, c = rng.normal(0, 0.1, 9), rng.normal(0, 0.05, 9), rng.normal(0, 0.05, 9)
    els = [20, 40, 60, 80]
    plain = C.simulate_campaign(els, a, b, c, order=3, npix=15, snr=1000)
    flagged = [_flag(o, [3, 100, 200]) for o in plain]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g0 = C.fit_campaign(plain, order=3)
        g1 = C.fit_campaign(flagged, order=3)  # was: "y contains 9 non-finite value(s)"
    assert g1.success
    # three samples of 675 per observation: the same model to a fraction of its errors
    assert np.all(np.abs(g1.a - g0.a) < 0.3 * g0.a_err)
    assert np.any(g1.a != g0.a)


def test_sanity_checks_see_a_glitch_and_the_beam_width_past_flagged_samples():
    from gradfit.oof import checks
    from gradfit.oof.telescope import get_telescope

    obs = oof.simulate(order=3, npix=25, snr=300, seed=1)
    tel = get_telescope("effelsberg")
    flagged = _flag(obs, [0, 300, 624])
    for m, f in zip(obs.maps, flagged.maps):
        w0, w1 = checks._fwhm_beams(m, obs, tel), checks._fwhm_beams(f, flagged, tel)
        assert w0 is not None and w1 == pytest.approx(w0, rel=0.02)  # was: None
    glitchy = _flag(obs, [0, 300, 624])
    glitchy.maps[1].power[50] *= 1e6
    with pytest.raises(checks.SanityError, match="sample 50 .* glitch"):  # was: no error
        checks.check_observation(glitchy, tel, likelihood="gaussian")
    checks.check_observation(flagged, tel, likelihood="gaussian")  # without the glitch: fine
