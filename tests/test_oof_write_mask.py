"""``oof.io.write`` keeps a map's mask: a masked sample goes to the file as NaN, which the
reader masks again, even where a hand-made map holds a finite value there."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gradfit.oof import io
from gradfit.oof.observation import BeamMap, Observation

C = 299_792_458.0
N = 6


def _observation(per_point_sigma: bool, finite_at_masked: bool = True) -> Observation:
    """Three 6 x 6 gridded maps, two of them with masked samples that hold a finite power
    (and sigma): nothing in the arrays but the mask says they are flagged."""
    ax = np.linspace(-1e-4, 1e-4, N)
    u, v = (a.ravel() for a in np.meshgrid(ax, ax))
    rng = np.random.default_rng(3)
    masked = {0: [], 1: [2, 17], 2: [0, 35, 20]}
    maps = []
    for k, dz in enumerate((-0.022, 0.0, 0.022)):
        w = 4e-5 * (1 + 30 * abs(dz))
        power = np.exp(-(u**2 + v**2) / (2 * w**2)) + 1e-3 * rng.normal(size=u.size)
        sigma = np.full(u.size, 1e-3) if not per_point_sigma else \
            1e-3 * (1 + rng.random(u.size))
        mask = np.ones(u.size, dtype=bool)
        mask[masked[k]] = False
        if finite_at_masked:
            power[masked[k]] = 7.5  # a value the fit must never see
        maps.append(BeamMap(u=u.copy(), v=v.copy(), power=power, dz=dz, sigma=sigma,
                            shape=(N, N), mask=mask))
    return Observation(maps=maps, wavelength_m=C / 32e9, frequency_hz=32e9,
                       telescope="effelsberg", layout="pyoof", meta={"OBJECT": "3C286"})


def _read(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        back = io.read(path)
    return back, [str(w.message) for w in caught]


@pytest.mark.parametrize("per_point_sigma", [False, True])
def test_round_trip_keeps_the_mask_and_the_values(tmp_path, per_point_sigma):
    obs = _observation(per_point_sigma)
    before = [(m.power.copy(), m.sigma.copy(), m.mask.copy()) for m in obs.maps[1:]]
    back, msgs = _read(io.write(obs, tmp_path / "obs.fits"))
    assert back.maps[0].mask is None
    for m, r in zip(obs.maps, back.maps):
        assert r.shape == (N, N)
        np.testing.assert_array_equal(r.valid, m.valid)
        np.testing.assert_array_equal(r.u, m.u)
        np.testing.assert_array_equal(r.v, m.v)
        keep = m.valid
        np.testing.assert_array_equal(r.power[keep], m.power[keep])  # exactly
        np.testing.assert_array_equal(r.sigma[keep], m.sigma[keep])
        assert np.all(np.isnan(r.power[~keep])) and np.all(np.isnan(r.sigma[~keep]))
        assert r.n_used == m.n_used
    assert back.n_points == obs.n_points == 3 * N * N - 5
    # the reader says which maps it masked, and how many samples
    assert sorted(msgs) == sorted(
        f"{tmp_path / 'obs.fits'}: HDU {k} ('{nm}'): masked {len(n)} of {N * N} samples "
        "with NaN or infinite values"
        for k, nm, n in ((2, "ZERO OOF", [2, 17]), (3, "PLUS OOF", [0, 35, 20])))
    # the caller's arrays are not touched
    for m, (p, s, k) in zip(obs.maps[1:], before):
        np.testing.assert_array_equal(m.power, p)
        np.testing.assert_array_equal(m.sigma, s)
        np.testing.assert_array_equal(m.mask, k)
        assert np.all(m.power[~k] == 7.5)
    # the same noise level is read back either way (a header NOISE or a SIGMA column)
    np.testing.assert_array_equal(back.maps[1].noise(), obs.maps[1].noise())


def test_a_map_read_back_and_written_again_is_unchanged(tmp_path):
    """A reader's map (NaN at its masked samples) makes the same file twice over."""
    obs = _observation(per_point_sigma=True, finite_at_masked=False)
    first, _ = _read(io.write(obs, tmp_path / "a.fits"))
    second, _ = _read(io.write(first, tmp_path / "b.fits"))
    for a, b in zip(first.maps, second.maps):
        np.testing.assert_array_equal(a.valid, b.valid)
        np.testing.assert_array_equal(a.power, b.power)  # NaN in the same places
        np.testing.assert_array_equal(a.sigma, b.sigma)


def test_scattered_map_drops_its_masked_samples(tmp_path):
    """Off a grid the reader drops a flagged sample (it has no grid place to keep): the
    masked samples leave the fit either way, and the others come back exactly."""
    obs = _observation(per_point_sigma=True)
    for m in obs.maps:
        m.u = m.u.copy()
        m.u[3] += 1e-6  # off the grid by a fiftieth of a step
        m.shape = None
    back, msgs = _read(io.write(obs, tmp_path / "scattered.fits"))
    assert len(msgs) == 2
    for m, r in zip(obs.maps, back.maps):
        keep = m.valid
        assert r.shape is None and r.mask is None and r.n == int(keep.sum())
        np.testing.assert_array_equal(r.u, m.u[keep])
        np.testing.assert_array_equal(r.v, m.v[keep])
        np.testing.assert_array_equal(r.power, m.power[keep])
        np.testing.assert_array_equal(r.sigma, m.sigma[keep])
