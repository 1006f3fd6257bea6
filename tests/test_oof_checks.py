"""Pre-fit sanity checks, the adequacy assessment, the time budget, hostile files."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from gradfit.oof import checks, io, simulate
from gradfit.oof.budget import BudgetExceeded, time_budget

DATA = Path(__file__).parent / "data" / "oof-pyoof"
ARCSEC = math.pi / 648000


@pytest.fixture(scope="module")
def sim():
    return simulate(order=3, npix=21, snr=1000, seed=1)


def changed(obs, fn):
    o = copy.deepcopy(obs)
    fn(o)
    return o


def refused(obs, needle, **kw):
    with pytest.raises(checks.SanityError) as e:
        checks.check_observation(obs, "effelsberg", **kw)
    assert needle in str(e.value), str(e.value)
    return str(e.value)


# ------------------------------------------------------------------ pre-fit checks
def test_reference_observations_pass(sim):
    for name in ("eff-n4-snr300", "eff-n5-snr1000"):
        obs = io.read(DATA / f"{name}.fits")
        assert checks.check_observation(obs, "effelsberg", order=6, likelihood="gaussian") == []
    assert checks.check_observation(sim, "effelsberg", order=5) == []


def test_extent_in_beam_widths_closed_form(sim):
    # simulate() spans +-8 beams of 1.22 lambda/D: 19.52 lambda/D per side
    short, long_ = checks.map_extent_beams(sim.maps[0], sim, "effelsberg")
    assert short == pytest.approx(16 * 1.22) and long_ == pytest.approx(16 * 1.22)
    assert checks.beam_width_rad(sim, "effelsberg") == pytest.approx(sim.wavelength_m / 100.0)


@pytest.mark.parametrize("factor, unit", [(1 / ARCSEC, "arcsec"), (180 / math.pi, "degrees"),
                                          (10800 / math.pi, "arcmin")])
def test_uv_in_other_angle_units_are_named(sim, factor, unit):
    o = changed(sim, lambda o: [setattr(m, "u", m.u * factor) or setattr(m, "v", m.v * factor)
                                for m in o.maps])
    msg = refused(o, f"U/V look like {unit}, not radians")
    assert "19.5 beam widths" in msg  # what the map would span in radians


def test_extent_bounds_are_two_sided(sim):
    lo, hi = checks.EXTENT_BEAMS

    def scaled(f):
        return changed(sim, lambda o: [setattr(m, "u", m.u * f) or setattr(m, "v", m.v * f)
                                       for m in o.maps])

    side = 16 * 1.22
    checks.check_observation(scaled(1.01 * lo / side), "effelsberg")  # just inside
    checks.check_observation(scaled(0.99 * hi / side), "effelsberg")
    refused(scaled(0.99 * lo / side), "spans only")
    refused(scaled(1.01 * hi / side), "at most 1000")
    refused(scaled(1e5), "beam widths")  # U/V scaled by 1e5


def test_frequency_in_ghz_is_named(sim):
    o = changed(sim, lambda o: setattr(o, "wavelength_m", o.wavelength_m * 1e9))
    refused(o, "frequency looks like it is in GHz or MHz")


def test_defocus_path_closed_form_and_bounds(sim):
    from gradfit.oof import get_telescope

    tel = get_telescope("effelsberg")
    # Gregorian: delta(0) - delta(pr) = dz [2 - (1-a^2)/(1+a^2) - (1-b^2)/(1+b^2)]
    a2, b2 = (50 / 60) ** 2, (50 / (2 * tel.F_eff_m)) ** 2
    expect = 0.022 * (2 - (1 - a2) / (1 + a2) - (1 - b2) / (1 + b2)) / sim.wavelength_m
    assert checks.defocus_waves(sim.maps[0], sim, tel) == pytest.approx(expect, rel=1e-12)
    assert checks.defocus_waves(sim.maps[1], sim, tel) == 0.0
    per_m = expect / 0.022
    hi, lo = checks.DEFOCUS_WAVES[1] / per_m, checks.DEFOCUS_WAVES[0] / per_m

    def dz(x):
        return changed(sim, lambda o: [setattr(m, "dz", np.sign(m.dz) * x) for m in o.maps])

    checks.check_observation(dz(0.99 * hi), "effelsberg")
    checks.check_observation(dz(1.01 * lo), "effelsberg")
    refused(dz(1.01 * hi), "is DZ in millimetres")
    refused(dz(1e6), "wavelengths of defocus path")
    refused(dz(22.0), "wavelengths of defocus path")  # millimetres read as metres
    refused(dz(0.99 * lo), "no map is defocused")


def test_noise_estimate_matches_truth_and_solve(sim):
    from gradfit.oof.solve import estimate_noise

    for m in sim.maps:
        bare = dataclasses.replace(m, sigma=None)
        est = checks.noise_sigma(bare)
        assert est == pytest.approx(np.median(m.sigma), rel=0.3)  # the simulated noise
        assert est == pytest.approx(estimate_noise(bare), rel=1e-12)  # one method
        scattered = dataclasses.replace(bare, shape=None)
        assert checks.noise_sigma(scattered) == pytest.approx(estimate_noise(scattered),
                                                              rel=1e-12)
    assert checks.noise_sigma(sim.maps[0]) == float(np.median(sim.maps[0].sigma))


def test_structure_above_noise(sim, rng):
    beam = sim.maps[1]
    assert checks.structure_sigma(beam) > 1000
    noise = dataclasses.replace(beam, power=rng.normal(0.3, 0.01, beam.n), sigma=None)
    assert abs(checks.structure_sigma(noise)) < checks.STRUCTURE_SIGMA
    assert checks.structure_sigma(dataclasses.replace(beam, power=np.full(beam.n, 0.3))) == 0
    # a noise-only or constant in-focus map is refused; a weak defocused map is a note
    o = changed(sim, lambda o: setattr(o.maps[1], "power", rng.normal(0.3, 0.01, beam.n))
                or setattr(o.maps[1], "sigma", None))
    refused(o, "the in-focus map has no structure above its noise")
    o = changed(sim, lambda o: setattr(o.maps[1], "sigma", np.full(beam.n, 1e3)))
    refused(o, "no structure above its noise")  # a NOISE header far too large
    o = changed(sim, lambda o: setattr(o.maps[0], "power", np.full(beam.n, 7.0)))
    refused(o, "the map is constant (every sample is 7)")
    o = changed(sim, lambda o: setattr(o.maps[0], "sigma", np.full(beam.n, 0.05)))
    notes = checks.check_observation(o, "effelsberg")
    assert len(notes) == 1 and notes[0].startswith("MINUS OOF: the map barely differs")


def test_glitch_refused_for_gaussian_only(sim):
    o = changed(sim, lambda o: o.maps[1].power.__setitem__(17, 1e6))
    refused(o, "a glitch", likelihood="gaussian")
    assert checks.check_observation(o, "effelsberg", likelihood="cauchy") == []
    # a real beam on a coarse grid (peak / next sample about 40) is not a glitch
    coarse = simulate(order=2, npix=15, snr=1000, seed=0)
    assert checks.check_observation(coarse, "effelsberg", likelihood="gaussian") == []


def test_max_order_from_the_map_extent(sim):
    n, why = checks.max_order(sim, "effelsberg")
    half = 16 * 1.22 / 2
    assert n == math.floor(math.pi * half - 1) == 29
    assert f"{half:.3g} lambda/D" in why
    checks.check_order(sim, "effelsberg", 29)
    with pytest.raises(checks.SanityError, match="the highest order they support is 29"):
        checks.check_order(sim, "effelsberg", 30)


# ------------------------------------------------------------------ adequacy
def _truth_maps(obs):
    return [np.asarray(p).ravel() for p in obs.truth["power_noiseless"]]


def test_adequacy_limit_is_the_solvers():
    from gradfit.oof import solve

    assert checks.ADEQUACY_LIMIT == solve.MISFIT_LIMIT == 1.25


def test_assess_true_model_is_adequate(sim):
    # the noiseless truth as "model": every map's normalised residual is about 1
    a = checks.assess(sim, "effelsberg", normalised_residual=1.0,
                      model_maps=_truth_maps(sim))
    assert a["adequate"] is True and a["causes"] == [] and a["converged"] is True
    for d in a["per_map"]:
        assert 0.85 < d["normalised_residual"] < 1.15
        assert d["glitches"] == 0


def test_assess_two_sided_at_the_limit(sim):
    lim = checks.ADEQUACY_LIMIT
    assert checks.assess(sim, "effelsberg", normalised_residual=lim)["adequate"] is True
    assert checks.assess(sim, "effelsberg", normalised_residual=lim * 1.001)["adequate"] is False
    assert checks.assess(sim, "effelsberg", normalised_residual=float("nan"))["adequate"] is False


def test_assess_names_an_inconsistent_map_and_glitches(sim):
    model = _truth_maps(sim)
    model[2] = model[2] * 1.5
    a = checks.assess(sim, "effelsberg", normalised_residual=3.0, model_maps=model)
    assert a["adequate"] is False
    assert any(c.startswith("maps inconsistent with the others: PLUS OOF") for c in a["causes"])
    o = changed(sim, lambda o: o.maps[1].power.__setitem__([5, 9], 0.5))
    a = checks.assess(o, "effelsberg", normalised_residual=2.0, model_maps=_truth_maps(sim))
    assert "2 sample(s) lie more than 50 sigma from the model" in " ".join(a["causes"])


def test_assess_names_telescope_units_and_defocus(sim):
    a = checks.assess(sim, "alma", normalised_residual=5.0)
    text = " ".join(a["causes"])
    assert "the file names 'effelsberg', the fit used 'alma'" in text
    assert "in-focus beam is" in text  # 100 m beam measured with a 12 m dish's lambda/D
    # the in-focus beam width on the right telescope is that of a tapered dish
    fw = checks._fwhm_beams(sim.maps[1], sim, checks._telescope("effelsberg"))
    assert 0.9 < fw < 1.4
    o = changed(sim, lambda o: [setattr(m, "u", m.u / ARCSEC) or setattr(m, "v", m.v / ARCSEC)
                                for m in o.maps])
    assert any(c.startswith("units:") for c in checks.assess(
        o, "effelsberg", normalised_residual=9.0)["causes"])
    o = changed(sim, lambda o: [setattr(m, "dz", m.dz * 1000) for m in o.maps])
    assert any(c.startswith("defocus:") for c in checks.assess(
        o, "effelsberg", normalised_residual=9.0)["causes"])


# ------------------------------------------------------------------ output step
def test_nan_coefficient_errors_do_not_crash_the_output(tmp_path):
    from gradfit import oof

    obs = simulate(order=2, npix=9, snr=1000, seed=3)
    sol = oof.fit(obs, order=2, telescope="effelsberg")
    res = sol.result
    cov = np.array(res.cov, dtype=np.float64)
    cov[1, :] = cov[:, 1] = np.nan  # a degenerate coefficient (as with U = V = 0)

    class Degenerate:
        names, params, errors = res.names, res.params, res.errors

    Degenerate.cov = cov
    bad = dataclasses.replace(sol, result=Degenerate(), _cache={})
    with pytest.warns(UserWarning, match="coefficient errors are not finite"):
        data = io.write_fit_result(tmp_path, bad, obs)
    assert math.isnan(data["surface_error_rms_um"])
    err, _, _ = io.read_image(tmp_path / "surface_error.fits")
    assert np.all(np.isnan(err))
    assert {p.name for p in tmp_path.iterdir()} == {
        "solution.json", "phase.fits", "surface.fits", "surface_error.fits", "model.fits"}


# ------------------------------------------------------------------ budget
def test_time_budget_by_progress_and_by_timer():
    with pytest.raises(BudgetExceeded, match=r"time budget of 0.05 s exceeded \(while fitting"):
        with time_budget(0.05) as report:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 5:
                report(stage="fit", nit=3)
    if hasattr(__import__("signal"), "setitimer"):
        t0 = time.monotonic()
        with pytest.raises(BudgetExceeded):
            with time_budget(0.1):
                time.sleep(5)  # reports nothing: the timer stops it
        assert time.monotonic() - t0 < 2
    seen = []
    with time_budget(None, seen.append) as report:
        report(stage="grid")
    assert seen == [{"stage": "grid"}]
    with pytest.raises(ValueError, match="positive number of seconds"):
        with time_budget(-1):
            pass


# ------------------------------------------------------------------ reader
def test_reader_refuses_what_it_should_not_read(tmp_path):
    with pytest.raises(io.OOFDataError, match="not a regular file"):
        io.read("/dev/zero")
    (tmp_path / "empty.fits").write_bytes(b"")
    with pytest.raises(io.OOFDataError, match="empty file"):
        io.read(tmp_path / "empty.fits")
    with pytest.raises(io.OOFDataError, match="larger than the input limit of 100 bytes"):
        io.read(DATA / "eff-n4-snr300.fits", max_bytes=100)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(io.OOFDataError, match="not a regular file"):
        io.read(fifo)


def test_truncated_inside_a_table_names_the_hdu(tmp_path):
    b = (DATA / "eff-n4-snr300.fits").read_bytes()
    p = tmp_path / "cut.fits"
    p.write_bytes(b[:-3000])
    with pytest.raises(io.OOFDataError) as e:
        io.read(p)
    assert str(e.value).startswith(f"{p}: truncated: HDU 3 ('PLUS OOF')")
    # the complete file still reads, and a file padded by FITS blocks is not truncated
    p.write_bytes(b + b"\0" * 2880)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(io.read(p).maps) == 3
