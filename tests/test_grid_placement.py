"""One grid placement for every map reader: FITS and text agree on grids and flags.

The same maps, their coordinates jittered and a few samples flagged, are written as
FITS (:func:`gradfit.oof.io.write`) and as text (:func:`gradfit.oof.textio.write_text`)
and read back by both readers. The expected grid, sample order, mask and sigma come from
how the maps were built, not from the readers.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from astropy.io import fits

from gradfit import oof
from gradfit.oof import io as oofio
from gradfit.oof import textio
from gradfit.oof.observation import (
    GRID_RTOL,
    BeamMap,
    Observation,
    place_samples,
    regular_grid,
)

N_V, N_U = 10, 11  # not square: a transposed placement cannot pass
FLAGS = [3, 40, 77]  # samples flagged (NaN power), in grid (u-fastest) order


def _maps(jitter_rel, fast="u", seed=0):
    """Simulated maps cut to N_V x N_U, jittered by ``jitter_rel`` of the extent.

    Returns the observation in file order, for each file sample its index in the
    u-fastest grid order, and the simulation's true coefficients (waves).
    """
    sim = oof.simulate(order=2, npix=11, snr=300, seed=seed)
    rng = np.random.default_rng(seed + 1)
    grid_idx = np.arange(N_V * N_U).reshape(N_V, N_U)
    # file order: u fastest (increasing or both axes decreasing), or v fastest (the grid
    # read column by column)
    file_to_grid = {"u": grid_idx.ravel(), "u-reversed": grid_idx[::-1, ::-1].ravel(),
                    "v": grid_idx.T.ravel()}[fast]
    maps = []
    for m in sim.maps:
        u = m.u[: N_V * N_U].copy()
        v = m.v[: N_V * N_U].copy()
        extent = max(np.ptp(u), np.ptp(v))
        u += rng.uniform(-1, 1, u.size) * jitter_rel * extent
        v += rng.uniform(-1, 1, v.size) * jitter_rel * extent
        p = m.power[: N_V * N_U].copy()
        p[FLAGS] = np.nan
        sigma = m.sigma[0] * rng.uniform(0.9, 1.1, u.size)  # per point: a SIGMA column
        k = file_to_grid
        maps.append(BeamMap(u=u[k], v=v[k], power=p[k], dz=m.dz, sigma=sigma[k],
                            name=m.name))
    obs = Observation(maps=maps, wavelength_m=sim.wavelength_m, frequency_hz=sim.frequency_hz,
                      telescope=sim.telescope, layout=sim.layout, meta=dict(sim.meta))
    return obs, file_to_grid, np.array(sim.truth["K_waves"])


def _read_both(obs, tmp_path):
    """(FITS read, text read) of the same maps."""
    path = oofio.write(obs, tmp_path / "obs.fits")
    files = [textio.write_text(tmp_path / f"map{k}.txt", m.u, m.v, m.power)
             for k, m in enumerate(obs.maps)]
    with pytest.warns(UserWarning, match="masked 3 "):
        a = oofio.read(path)
    with pytest.warns(UserWarning, match="masked 3 flagged samples"):
        b = textio.read_text(files, [m.dz for m in obs.maps], frequency=obs.frequency_hz,
                             telescope=obs.telescope, names=[m.name for m in obs.maps],
                             sigma=[m.sigma for m in obs.maps], layout=obs.layout)
    return a, b


@pytest.mark.parametrize("fast", ["u", "u-reversed", "v"])
def test_a_near_grid_is_one_grid_for_both_readers(tmp_path, fast):
    obs, file_to_grid, _ = _maps(1e-9, fast)  # 1000x inside GRID_RTOL
    fits_obs, text_obs = _read_both(obs, tmp_path)
    flagged = np.zeros(N_V * N_U, dtype=bool)
    flagged[FLAGS] = True
    if fast == "v":  # put in u-fastest, increasing order
        grid_to_file = np.argsort(file_to_grid)
    else:  # already u fastest: the file's order is kept
        grid_to_file = np.arange(N_V * N_U)
        flagged = flagged[file_to_grid]
    for written, a, b in zip(obs.maps, fits_obs.maps, text_obs.maps, strict=True):
        for m in (a, b):
            assert m.shape == (N_V, N_U) and m.grid_axes() is not None
            # u fastest: the file's samples in grid order, every one kept
            np.testing.assert_array_equal(m.u, written.u[grid_to_file])
            np.testing.assert_array_equal(m.v, written.v[grid_to_file])
            np.testing.assert_array_equal(~m.mask, flagged)
            # a flagged sample carries no data: NaN power and sigma, the rest as written
            assert np.all(np.isnan(m.power[flagged])) and np.all(np.isnan(m.sigma[flagged]))
            np.testing.assert_array_equal(m.power[~flagged], written.power[grid_to_file][~flagged])
            np.testing.assert_array_equal(m.sigma[~flagged], written.sigma[grid_to_file][~flagged])
        np.testing.assert_array_equal(a.sigma, b.sigma)  # NaN in the same places


def test_a_far_grid_is_scattered_for_both_readers(tmp_path):
    obs, _, _ = _maps(1e-3)  # 1000x outside GRID_RTOL: not a grid
    fits_obs, text_obs = _read_both(obs, tmp_path)
    for written, a, b in zip(obs.maps, fits_obs.maps, text_obs.maps, strict=True):
        keep = np.isfinite(written.power)
        for m in (a, b):
            # scattered samples: no shape, no mask, the flagged ones dropped, file order
            assert m.shape is None and m.mask is None and m.n == N_V * N_U - len(FLAGS)
            np.testing.assert_array_equal(m.u, written.u[keep])
            np.testing.assert_array_equal(m.v, written.v[keep])
            np.testing.assert_array_equal(m.power, written.power[keep])
            np.testing.assert_array_equal(m.sigma, written.sigma[keep])


def test_fits_on_both_reads_agree(tmp_path):
    obs, _, truth = _maps(1e-9, "v")
    fits_obs, text_obs = _read_both(obs, tmp_path)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = oof.fit(fits_obs, order=2, grid=32)
        b = oof.fit(text_obs, order=2, grid=32)
    assert time.perf_counter() - t0 < 60  # a loose guard only: the fast transform is used
    assert a.fit["transform"] == b.fit["transform"] == "mft"
    assert a.fit["ndata"] == b.fit["ndata"] == 3 * (N_V * N_U - len(FLAGS))
    np.testing.assert_allclose(b.K_waves, a.K_waves, rtol=0, atol=1e-10)
    np.testing.assert_allclose(b.K_err_waves, a.K_err_waves, rtol=1e-8)
    # and the fit is a fit: the simulation's truth within its errors (piston is not fitted)
    dK = (a.K_waves - truth)[1:]
    assert a.success and np.all(a.K_err_waves[1:] > 0)
    assert np.all(np.abs(dK) < 5 * a.K_err_waves[1:]), (dK, a.K_err_waves)


def test_place_samples_tolerance_is_grid_rtol():
    u, v = np.meshgrid(np.arange(6.0), np.arange(5.0))
    u, v = u.ravel(), v.ravel()
    extent = 5.0
    p = np.ones(u.size)
    for rel, is_grid in ((0.3 * GRID_RTOL, True), (3 * GRID_RTOL, False)):
        uj = u.copy()
        uj[7] += rel * extent
        vj = v.copy()
        vj[1] += rel * extent  # in the first row: the row ends by tolerance, not exactly
        placed = place_samples(uj, vj, p)
        assert (placed.shape == (5, 6)) is is_grid
        assert (regular_grid(uj, vj) is not None) is is_grid
        # the same samples shuffled: the same verdict, and u-fastest increasing order
        perm = np.random.default_rng(0).permutation(u.size)
        shuffled = place_samples(uj[perm], vj[perm], p)
        assert (shuffled.shape == (5, 6)) is is_grid
        if is_grid:
            np.testing.assert_array_equal(shuffled.u, uj)
            np.testing.assert_array_equal(shuffled.v, vj)


def test_place_samples_flags_and_bad_input():
    u, v = np.meshgrid(np.arange(4.0), np.arange(3.0))
    u, v = u.ravel(), v.ravel()
    p = np.arange(1.0, 13.0)
    s = np.full(12, 0.5)
    flagged = p == 5.0  # a reader's own flag (e.g. an exact zero)
    p_nan = p.copy()
    p_nan[2] = np.nan
    placed = place_samples(u, v, p_nan, s, flagged=flagged)
    assert placed.shape == (3, 4)
    assert np.flatnonzero(~placed.mask).tolist() == [2, 4]
    assert np.isnan(placed.sigma[[2, 4]]).all() and np.isfinite(placed.sigma[placed.mask]).all()
    # no flag: no mask, values untouched
    clean = place_samples(u, v, p, s)
    assert clean.mask is None and np.array_equal(clean.power, p)
    # a coordinate that is not finite: scattered, that sample dropped
    u_nan = u.copy()
    u_nan[0] = np.nan
    scattered = place_samples(u_nan, v, p, s)
    assert scattered.shape is None and scattered.u.size == 11
    np.testing.assert_array_equal(scattered.power, p[1:])
    with pytest.raises(ValueError, match=r"lengths differ \(u 12, v 12, power 11"):
        place_samples(u, v, p[:-1])
    with pytest.raises(TypeError, match="flagged must be boolean"):
        place_samples(u, v, p, flagged=np.zeros(12))


def test_a_common_sigma_with_flags_round_trips_as_noise(tmp_path):
    # the flagged samples' NaN sigma must not hide a noise level common to the rest
    obs, _, _ = _maps(1e-9)
    files = [textio.write_text(tmp_path / f"map{k}.txt", m.u, m.v, m.power)
             for k, m in enumerate(obs.maps)]
    with pytest.warns(UserWarning, match="masked 3 flagged samples"):
        text_obs = textio.read_text(files, [m.dz for m in obs.maps], sigma=0.004,
                                    frequency=obs.frequency_hz, telescope=obs.telescope)
    path = oofio.write(text_obs, tmp_path / "back.fits")
    assert fits.getheader(path)["NOISE"] == 0.004  # no SIGMA column
    with pytest.warns(UserWarning, match="masked 3 "):
        back = oofio.read(path)
    for a, b in zip(text_obs.maps, back.maps, strict=True):
        assert b.shape == a.shape == (N_V, N_U)
        np.testing.assert_array_equal(b.mask, a.mask)
        np.testing.assert_array_equal(b.sigma, a.sigma)
        assert np.isnan(b.sigma[~b.mask]).all() and np.all(b.sigma[b.mask] == 0.004)


def test_regular_grid_refuses_a_chained_level():
    # column 0 drifts row by row, each step within the tolerance (so the levels chain it
    # into one grid line) but in all beyond it: not a grid the model can use
    u, v = np.meshgrid(np.arange(6.0), np.arange(5.0))
    tol = GRID_RTOL * 5.0
    perm = np.random.default_rng(1).permutation(u.size)  # not u fastest: levels decide
    for step, is_grid in ((0.2 * tol, True), (0.9 * tol, False)):
        uj = u.copy()
        uj[:, 0] += step * np.arange(5)  # spread 0.8 tol, or 3.6 tol
        grid = regular_grid(uj.ravel()[perm], v.ravel()[perm])
        assert (grid is not None) is is_grid
        placed = place_samples(uj.ravel()[perm], v.ravel()[perm], np.ones(u.size))
        assert (placed.shape == (5, 6)) is is_grid
        if is_grid:
            m = BeamMap(placed.u, placed.v, placed.power, 0.0, shape=placed.shape)
            assert m.grid_axes() is not None
