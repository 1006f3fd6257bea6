"""Noise on correlated raster maps: estimates against the generating truth, resampling."""

from __future__ import annotations

import numpy as np
import pytest

from gradfit.oof.noise import (
    ScanNoise,
    ar1_mean_factor,
    detect_scan_axis,
    inflation_factor,
    resample_over_scans,
    scan_labels,
    scan_noise,
)
from gradfit.oof.observation import BeamMap, Observation
from gradfit.oof.realistic import ar1_scan_noise


def _raster(seed, n_scans=80, n_along=80, sigma=2.5, lag1=0.75, offset=0.5, across=0.0):
    """AR(1) scan noise with offsets on a background plane; rows are scans (along u)."""
    rng = np.random.default_rng(seed)
    z = ar1_scan_noise(rng, n_scans, n_along, sigma, lag1, offset * sigma, across)
    V, U = np.mgrid[-1:1:n_scans * 1j, -1:1:n_along * 1j]
    return z + 60.0 + 8.0 * U - 5.0 * V


@pytest.mark.parametrize("across", [0.0, 0.12])
def test_recovers_sigma_and_correlations_from_both_sides(across):
    sig, off = [], []
    for seed in range(4):
        z = _raster(seed, across=across)
        est = scan_noise(z, "u")
        # two-sided: neither the naive half nor double
        assert 0.9 < est.sigma / 2.5 < 1.1, est
        assert abs(est.lag1_along - 0.75) < 0.06, est
        assert abs(est.lag1_across - across) < 0.1, est
        assert 0.3 < est.offset_sd / 2.5 < 0.7, est
        assert est.sigma_total == pytest.approx(np.hypot(est.sigma, est.offset_sd))
        sig.append(est.sigma / 2.5)
        off.append(est.offset_sd / 2.5)
        # scans along v: the transposed map, found automatically
        t = scan_noise(z.T)
        assert t.scan_axis == "v" and t.sigma == pytest.approx(est.sigma, rel=1e-12)
    assert 0.95 < np.mean(sig) < 1.05
    assert 0.4 < np.mean(off) < 0.6


def test_naive_neighbour_estimate_is_half_and_ours_is_not():
    z = _raster(11)
    naive = np.std(np.diff(z, axis=1)) / np.sqrt(2)  # neighbours along the scans
    assert 0.4 < naive / 2.5 < 0.6  # the problem: sqrt(1 - 0.75) = 0.5
    assert scan_noise(z).sigma > 1.6 * naive


def test_white_noise_gives_no_correlation():
    rng = np.random.default_rng(5)
    z = rng.normal(10.0, 1.0, (70, 70))
    est = scan_noise(z, "u")
    assert 0.95 < est.sigma < 1.05
    assert abs(est.lag1_along) < 0.06 and abs(est.lag1_across) < 0.1
    assert est.offset_sd < 0.2
    assert 0.8 < est.inflation_ar < 1.3


def test_beam_on_the_map_is_masked():
    z = _raster(7)
    V, U = np.mgrid[-1:1:80j, -1:1:80j]
    beam = 400.0 * np.exp(-(U**2 + V**2) / 0.02)  # peak 160 sigma, a few % of the map
    est = scan_noise(z + beam, "u")
    assert 0.05 < est.signal_fraction < 0.3
    assert 0.9 < est.sigma / 2.5 < 1.1
    raw = scan_noise(z + beam, "u", signal_threshold=None)
    assert raw.sigma > est.sigma  # without the mask the beam passes for noise
    # with the beam as model, the residuals give the same answer as the bare noise
    res = scan_noise(z + beam, "u", model=beam, signal_threshold=None)
    assert res.sigma == pytest.approx(scan_noise(z, "u", signal_threshold=None).sigma)


def test_ar1_mean_factor_against_the_covariance_matrix():
    for phi in (0.0, 0.5, 0.75, -0.3):
        for n in (1, 7, 40):
            i = np.arange(n)
            cov = phi ** np.abs(i[:, None] - i[None, :])
            assert ar1_mean_factor(phi, n) == pytest.approx(cov.sum() / n, rel=1e-12)
        assert ar1_mean_factor(phi) == pytest.approx((1 + phi) / (1 - phi))
    assert ar1_mean_factor(0.75, 100_000) == pytest.approx(7.0, rel=1e-3)
    with pytest.raises(ValueError, match="lag1 must be in"):
        ar1_mean_factor(1.0)


def test_inflation_factor_matches_monte_carlo():
    rng = np.random.default_rng(9)
    n_scans, n_along, sigma, tau = 12, 20, 1.0, 0.5
    means = [ar1_scan_noise(rng, n_scans, n_along, sigma, 0.75, tau, 0.2).mean()
             for _ in range(3000)]
    iid = (sigma**2 + tau**2) / (n_scans * n_along)
    measured = np.var(means) / iid
    predicted = inflation_factor(0.75, n_along, 0.2, n_scans, tau / sigma)
    assert measured == pytest.approx(predicted, rel=0.1)
    assert predicted > 10  # far from the independent-sample formula


def _toy_obs(seed, n=24, lag1=0.75, offset=0.5):
    rng = np.random.default_rng(seed)
    ax = np.linspace(-1, 1, n)
    V, U = np.meshgrid(ax, ax, indexing="ij")
    maps = []
    for k in range(2):
        z = ar1_scan_noise(rng, n, n, 1.0, lag1, offset, 0.0) + 5 + 2 * U
        maps.append(BeamMap(U.ravel(), V.ravel(), z.ravel(), dz=0.01 * k, shape=(n, n),
                            name=f"M{k}"))
    return Observation(maps, 0.01, 3e10)


def _plane_fit(obs):
    """Least-squares a + b u + c v for each map: the 'fit' under test."""
    out = {}
    for k, m in enumerate(obs.maps):
        A = np.stack([np.ones(m.n), m.u, m.v], axis=1)
        coef = np.linalg.lstsq(A, m.power, rcond=None)[0]
        out[f"a{k}"], out[f"bc{k}"] = coef[0], coef[1:]
    return out


def test_resampling_over_scans_matches_the_true_scatter():
    truth = [_plane_fit(_toy_obs(1000 + s)) for s in range(300)]
    true_sd = {k: np.std([t[k] for t in truth], axis=0, ddof=1) for k in truth[0]}
    ratios = {"jackknife": [], "bootstrap": []}
    for s in range(12):
        obs = _toy_obs(s)
        for method in ratios:
            sd = resample_over_scans(_plane_fit, obs, "u", n=12, method=method, seed=s)
            ratios[method].append(np.concatenate(
                [np.atleast_1d(sd[k] / true_sd[k]) for k in ("a0", "a1", "bc0", "bc1")]))
    for method, r in ratios.items():
        mean = np.mean(r, axis=0)
        assert np.all((0.7 < mean) & (mean < 1.35)), (method, mean)
    # the independent-sample error of the mean is far too small on these maps
    iid = np.hypot(1.0, 0.5) / 24
    assert iid < 0.4 * true_sd["a0"]


def test_resampling_arguments():
    obs = _toy_obs(0, n=8)
    labels = scan_labels(obs.maps[0], "v")
    assert labels.tolist()[:9] == [0, 1, 2, 3, 4, 5, 6, 7, 0]
    sd, samples = resample_over_scans(lambda o: [o.maps[0].power.mean()], obs, "u", n=4,
                                      return_samples=True)
    assert samples["theta"].shape == (4, 1) and sd["theta"].shape == (1,)
    with pytest.raises(ValueError, match="fewer than the 10 jackknife blocks"):
        resample_over_scans(_plane_fit, obs, "u", n=10)
    with pytest.raises(ValueError, match="method must be"):
        resample_over_scans(_plane_fit, obs, "u", method="bagging")
    with pytest.raises(ValueError, match="63 scan labels for 64 samples"):
        resample_over_scans(_plane_fit, obs, [labels[:-1], labels], n=4)
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        resample_over_scans(_plane_fit, obs, "u", n=1)


def test_bad_input():
    with pytest.raises(ValueError, match="2-D array"):
        scan_noise(np.zeros(50))
    with pytest.raises(ValueError, match="at least 4 x 4"):
        scan_noise(np.zeros((3, 50)))
    with pytest.raises(ValueError, match="no noise"):
        scan_noise(np.ones((10, 10)))
    with pytest.raises(ValueError, match="scan_axis must be"):
        scan_noise(np.random.default_rng(0).normal(size=(10, 10)), "x")
    m = BeamMap(np.arange(20.0), np.arange(20.0), np.ones(20), 0.0, name="loose")
    with pytest.raises(ValueError, match="map 'loose' is not a raster: its 20 samples fill 5%"):
        scan_noise(m)
    with pytest.raises(ValueError, match="map 'loose' is not a raster"):
        scan_labels(m, "u")
    assert detect_scan_axis(_raster(2)) == "u"
    assert isinstance(scan_noise(_raster(2)), ScanNoise)
    assert "lag-1 correlation" in str(scan_noise(_raster(2)))


@pytest.mark.parametrize("axis", ["u", "v"])
@pytest.mark.parametrize("method", ["jackknife", "bootstrap"])
def test_replicates_keep_a_product_grid(axis, method):
    obs = _toy_obs(3, n=10)
    seen = []

    def record(o):
        for m in o.maps:
            assert m.shape is not None
            U, V = m.u.reshape(m.shape), m.v.reshape(m.shape)
            np.testing.assert_array_equal(U, np.broadcast_to(U[:1], U.shape))
            np.testing.assert_array_equal(V, np.broadcast_to(V[:, :1], V.shape))
            seen.append(m.shape)
        return {"mean": o.maps[0].power.mean()}

    resample_over_scans(record, obs, axis, n=5, method=method, seed=1)
    assert len(seen) == 10
    if method == "jackknife":
        assert set(seen) == ({(8, 10)} if axis == "u" else {(10, 8)})


def test_missing_samples_and_masked_rows_are_tolerated():
    z = _raster(4)
    z[10, :] = np.nan  # a whole scan lost
    z[30, 5] = np.nan  # a flagged sample
    est = scan_noise(z, "u")
    assert 0.9 < est.sigma / 2.5 < 1.1 and abs(est.lag1_along - 0.75) < 0.06
