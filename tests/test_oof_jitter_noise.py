"""Rasters whose recorded positions jitter: recognised, their scan noise, honest fit errors.

Real telescopes record where each sample pointed, which jitters about the nominal raster
by a few % of its step; such maps have no ``shape``. The samples are put on their raster
for the noise only (:func:`gradfit.oof.noise.raster_indices`), so a fit keeps the scan
noise and the background-error inflation of the gridded map.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.interpolate import RegularGridInterpolator

from gradfit import oof
from gradfit.oof import textio
from gradfit.oof.noise import (
    inflation_factor,
    observation_noise,
    raster_indices,
    raster_shape,
    resample_over_scans,
    scan_labels,
    scan_noise,
)
from gradfit.oof.observation import BeamMap, grid_indices
from gradfit.oof.realistic import simulate_realistic
from gradfit.oof.solve import REAL_FREE

NPIX = 21


def _raster(n_v=18, n_u=23, jitter=0.0, kind="uniform", seed=0, su=0.3, sv=0.5):
    """Positions of an n_v x n_u raster (u along the rows), each off its node by ``jitter``
    steps (uniform within it, or Gaussian of that sd); with the true rows and columns."""
    rng = np.random.default_rng(seed)
    rows, cols = np.divmod(np.arange(n_v * n_u), n_u)
    draw = rng.normal if kind == "normal" else rng.uniform
    args = (0.0, jitter) if kind == "normal" else (-jitter, jitter)
    du, dv = (draw(*args, rows.size) if jitter else np.zeros(rows.size) for _ in range(2))
    return 1.0 + su * (cols + du), -2.0 + sv * (rows + dv), rows, cols


@pytest.mark.parametrize("jitter, kind", [(0.0, "uniform"), (0.02, "normal"),
                                          (0.2, "uniform")])
@pytest.mark.parametrize("shuffle", [False, True])
def test_jittered_raster_is_recognised_sample_by_sample(jitter, kind, shuffle):
    u, v, rows, cols = _raster(jitter=jitter, kind=kind, seed=3)
    rng = np.random.default_rng(1)
    keep = rng.uniform(size=u.size) > 0.04  # a few flagged samples removed
    keep[:23] = True  # (row 0 and column 0 stay, so the true indices start at 0)
    keep[::23] = True
    idx = np.flatnonzero(keep)
    if shuffle:
        idx = rng.permutation(idx)
    r, c = raster_indices(u[idx], v[idx])
    np.testing.assert_array_equal(r, rows[idx])
    np.testing.assert_array_equal(c, cols[idx])
    # the scan labels of a map without shape: its rows (scans along u) or columns
    m = BeamMap(u=u[idx], v=v[idx], power=rng.normal(size=idx.size), dz=0.0, name="j")
    np.testing.assert_array_equal(scan_labels(m, "u"), rows[idx])
    np.testing.assert_array_equal(scan_labels(m, "v"), cols[idx])
    assert raster_shape(m) == (18, 23)
    if jitter == 0.0:  # exact positions: the exact clustering agrees (independent path)
        _, _, iu, iv = grid_indices(u[idx], v[idx])
        np.testing.assert_array_equal(r, iv)
        np.testing.assert_array_equal(c, iu)


def _rotated(deg):
    u, v, _, _ = _raster(n_v=21, n_u=21, su=0.3, sv=0.3)
    t = np.radians(deg)
    return u * np.cos(t) - v * np.sin(t), u * np.sin(t) + v * np.cos(t)


def _drifting(rate=0.01):
    # each step 2 rate longer than the one before (exact such positions are a product
    # grid, which the noise takes as it is; recorded ones jitter)
    u, v, _, cols = _raster(jitter=0.02, kind="normal")
    return u + 0.3 * rate * cols**2, v


def _scatter():
    rng = np.random.default_rng(4)
    return rng.uniform(0, 1, 400), rng.uniform(0, 1, 400)


def _twice():
    u, v, _, _ = _raster(jitter=0.01, kind="normal")
    return np.concatenate([u, u + 1e-4]), np.concatenate([v, v])


@pytest.mark.parametrize("positions, match", [
    (lambda: _raster(jitter=0.32, seed=2)[:2], r"up to 0.3\d steps .* tolerance 0.25"),
    (lambda: _raster(jitter=0.4, seed=2)[:2], "jitter beyond"),
    (lambda: _raster(jitter=0.4, kind="normal", seed=2)[:2], "jitter beyond"),
    (_scatter, "jitter beyond"),
    (lambda: _rotated(10.0), "rotated or sheared"),
    (lambda: _rotated(3.0), "rotated or sheared"),
    (lambda: _rotated(2.0), r"up to 0.3\d steps .* rotated or sheared"),
    (_drifting, "drifting step"),
    (lambda: _drifting(0.004), r"up to 0.3\d steps .* drifting step"),
    (_twice, "taken by another sample"),
    (lambda: tuple(x[::2] for x in _raster(n_v=18, n_u=23)[:2]), r"fill 50% of a 18 x 23"),
    (lambda: _raster(n_v=3, n_u=30, jitter=0.02, kind="normal")[:2], "at least 4 x 4"),
])
def test_what_is_not_a_raster_is_refused_with_its_cause(positions, match):
    u, v = positions()
    with pytest.raises(ValueError, match=match):
        raster_indices(u, v)
    m = BeamMap(u=u, v=v, power=np.ones(u.size), dz=0.0, name="odd")
    assert raster_shape(m) is None
    with pytest.raises(ValueError, match="map 'odd' is not a raster: .*" + match):
        scan_labels(m, "u")


def test_a_missing_scan_keeps_the_numbering():
    """A whole row and a whole column missing (their neighbours 2 steps apart)."""
    u, v, rows, cols = _raster(jitter=0.15, seed=5)
    keep = np.flatnonzero((rows != 7) & (cols != 11))
    r, c = raster_indices(u[keep], v[keep])
    np.testing.assert_array_equal(r, rows[keep])
    np.testing.assert_array_equal(c, cols[keep])
    fewer = np.delete(keep, np.s_[5::12])  # and 31 flagged samples: below 90%
    with pytest.raises(ValueError, match="its 343 samples fill 83% of a 18 x 23"):
        raster_indices(u[fewer], v[fewer])


def test_a_slightly_rotated_raster_keeps_its_nodes():
    """0.5 degree over 21 steps moves the nodes by 0.09 step: within the tolerance."""
    u, v = _rotated(0.5)
    r, c = raster_indices(u, v)
    np.testing.assert_array_equal(np.divmod(np.arange(441), 21), (r, c))


def test_bad_arguments():
    u, v, _, _ = _raster()
    with pytest.raises(ValueError, match=r"tol must be in \(0, 0.5\)"):
        raster_indices(u, v, tol=0.6)
    with pytest.raises(ValueError, match=r"min_fill must be in \(0, 1\]"):
        raster_indices(u, v, min_fill=0.0)
    with pytest.raises(ValueError, match="same length"):
        raster_indices(u, v[:-1])
    with pytest.raises(ValueError, match="finite"):
        raster_indices(np.where(u > 2, np.nan, u), v)
    with pytest.raises(ValueError, match="every sample has the same v"):
        raster_indices(u, np.zeros(u.size))


# ------------------------------------------------------------------ realistic maps
@pytest.fixture(scope="module")
def realistic():
    return simulate_realistic(order=3, npix=NPIX, seed=5, grid=64)


def _jittered(obs, truth, amount, kind="normal", seed=0, same_power=False):
    """The observation measured at jittered positions, in shuffled order: the truth model
    (cubic interpolation of the simulated one) there plus the same noise (or, with
    ``same_power``, the gridded map's power); and those models. Flagged samples are
    dropped (the map has no shape)."""
    rng = np.random.default_rng(seed)
    maps, models = [], []
    for m, model in zip(obs.maps, truth["model"]):
        ua, va = m.grid_axes()
        step = ua[1] - ua[0]
        k = np.flatnonzero(m.valid)
        d = (rng.normal(0, amount, (2, k.size)) if kind == "normal"
             else rng.uniform(-amount, amount, (2, k.size))) * step
        u, v = m.u[k] + d[0], m.v[k] + d[1]
        f = RegularGridInterpolator((va, ua), model.reshape(m.shape), method="cubic",
                                    bounds_error=False, fill_value=None)
        mod = f(np.column_stack([v, u]))
        p = rng.permutation(k.size)
        power = m.power[k] if same_power else mod + (m.power - model)[k]
        maps.append(BeamMap(u=u[p], v=v[p], power=power[p], dz=m.dz, name=m.name))
        models.append(mod[p])
    return dataclasses.replace(obs, maps=maps), models


@pytest.mark.parametrize("amount, kind", [(0.02, "normal"), (0.2, "uniform")])
def test_scan_noise_of_jittered_maps_is_that_of_the_grid(realistic, amount, kind):
    obs, truth = realistic
    jit, models = _jittered(obs, truth, amount, kind)
    assert all(m.shape is None for m in jit.maps)
    # on the data: the beam is sampled a little elsewhere, the noise is the same
    grid, jittered = observation_noise(obs)[0], observation_noise(jit)[0]
    for name in ("sigma", "offset_sd", "inflation_mean", "sigma_total"):
        assert getattr(jittered, name) == pytest.approx(getattr(grid, name), rel=0.04), name
    assert jittered.lag1_along == pytest.approx(grid.lag1_along, abs=0.03)
    assert jittered.scan_axis == "u" and (jittered.n_scans, jittered.n_along) == (NPIX, NPIX)
    # on the residuals about the truth: the very samples of the grid, on its nodes
    res_grid = observation_noise(obs, models=truth["model"])
    res_jit = observation_noise(jit, models=models)
    assert res_jit == res_grid
    # and against the simulation's truth (sigma 5, lag-1 0.75 along u, offsets 2.5)
    est, t = res_jit[0], truth["noise"]
    assert 0.9 < est.sigma / t["sigma"] < 1.1
    assert abs(est.lag1_along - t["lag1_along"]) < 0.08
    assert abs(est.lag1_across) < 0.1
    assert 0.6 < est.offset_sd / t["scan_offset_sd"] < 1.4
    expect = inflation_factor(t["lag1_along"], NPIX, 0.0, NPIX, t["scan_offset_sd"] / t["sigma"])
    assert 0.7 < est.inflation_mean / expect < 1.4


def test_positions_beyond_the_tolerance_keep_the_old_refusal(realistic):
    obs, truth = realistic
    jit, _ = _jittered(obs, truth, 0.4, "uniform")
    assert raster_shape(jit.maps[0]) is None
    with pytest.raises(ValueError, match="is not a raster: .*jitter beyond"):
        scan_noise(jit.maps[0])


def test_resampling_over_scans_of_jittered_maps(realistic):
    """The jackknife and bootstrap replicates of a jittered map take the same scans."""
    obs, truth = realistic
    jit, _ = _jittered(obs, truth, 0.02, same_power=True)

    def means(o):
        return np.array([np.nanmean(m.masked_power()) for m in o.maps])

    for method in ("jackknife", "bootstrap"):
        a = resample_over_scans(means, obs, "u", n=5, method=method, seed=3)["theta"]
        b = resample_over_scans(means, jit, "u", n=5, method=method, seed=3)["theta"]
        np.testing.assert_allclose(b, a, rtol=1e-10)
        assert np.all(a > 0)


@pytest.fixture(scope="module")
def fits(realistic):
    obs, truth = realistic
    jit, _ = _jittered(obs, truth, 0.02)
    # the jittered maps take the scattered-sample transform (dft), the grid the mft
    return obs, truth, oof.fit(obs, order=3), oof.fit(jit, order=3)


def test_fit_of_jittered_maps_has_the_gridded_fits_honest_errors(fits):
    obs, truth, grid, jit = fits
    assert (grid.fit["transform"], jit.fit["transform"]) == ("mft", "dft")
    assert grid.fit["sigma"] == jit.fit["sigma"] and jit.fit["sigma"].startswith("scan noise")
    assert jit.fit["sigma_value"] == pytest.approx(grid.fit["sigma_value"], rel=0.05)
    scale_g, scale_j = grid.fit["background_error_scale"], jit.fit["background_error_scale"]
    assert scale_g > 2.0  # AR(1) 0.75 and offsets: a map mean is ~8x less certain
    assert 0.8 < scale_j / scale_g < 1.2
    err_g = np.array(grid.nuisance["background"]["error"])
    err_j = np.array(jit.nuisance["background"]["error"])
    assert np.all((0.8 < err_j / err_g) & (err_j / err_g < 1.2)), err_j / err_g
    # the backgrounds agree with the simulation's within those errors
    bg = np.array(jit.nuisance["background"]["value"]) * jit.fit["data_scale"]
    bge = err_j * jit.fit["data_scale"]
    assert np.all(np.abs(bg - truth["background"]) < 4 * bge + 0.003 * truth["peak"])
    K = np.array(truth["K_waves"])
    assert np.all(np.abs(jit.K_waves - K)[1:] < 4 * jit.K_err_waves[1:] + 0.01)


def test_text_maps_with_recorded_positions_read_as_one_raster(realistic, tmp_path):
    obs, truth = realistic
    jit, _ = _jittered(obs, truth, 0.02)
    files = []
    for k, m in enumerate(jit.maps):
        rows, cols = raster_indices(m.u, m.v)
        order = np.lexsort((cols, rows))  # scan order: along u, row after row
        path = tmp_path / f"m{k}.txt"
        textio.write_text(path, m.u[order], m.v[order], m.power[order])
        files.append(str(path))
    back = textio.read_text(files, dz=truth["dz_m"], telescope="srt",
                            wavelength=truth["wavelength_m"])
    assert back.meta["scan_axis"] == ["u", "u", "u"]
    assert [raster_shape(m) for m in back.maps] == [(NPIX, NPIX)] * 3
    # a map whose positions lie half a step off the others' is not the same raster
    m = jit.maps[2]
    step = float(np.ptp(m.u)) / (NPIX - 1)
    textio.write_text(tmp_path / "off.txt", m.u + 0.5 * step, m.v, m.power)
    with pytest.raises(ValueError, match="maps on different grids"):
        textio.read_text(files[:2] + [str(tmp_path / "off.txt")], dz=truth["dz_m"],
                         telescope="srt", wavelength=truth["wavelength_m"])


@pytest.mark.slow
def test_jackknife_and_scan_offsets_on_jittered_maps(fits):
    """``errors='jackknife'`` and free scan offsets find the scans of jittered maps."""
    obs, truth, grid, _ = fits
    jit, _ = _jittered(obs, truth, 0.02)
    jk = oof.fit(jit, order=3, errors="jackknife", error_options={"n": 4})
    so = oof.fit(jit, order=3, free=REAL_FREE + ("scan_offset",))
    e = np.array([z["jackknife_error_waves"] for z in jk.zernike[1:]])
    h = np.array([z["error_waves"] for z in jk.zernike[1:]])
    assert np.all(np.isfinite(e) & (e > 0.2 * h) & (e < 10 * h))
    assert so.success and so.fit["scan_axis"] == "u"
    off = np.array(so.nuisance["scan_offset"]["value"])
    assert off.shape == (3, NPIX) and np.all(off[:, 0] == 0.0)
    sd = truth["noise"]["scan_offset_sd"] / so.fit["data_scale"]
    assert 0.4 * sd < np.std(off[:, 1:]) < 2.5 * sd
