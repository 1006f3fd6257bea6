"""The exact beam transforms (MFT, DFT) against the literal double sum over the aperture
cells, for the field and for every monomial ``x^a y^b E`` (the Jacobian's building
blocks): even and odd grid sizes (the folded sums treat the centre column of an odd
grid apart), shared and per-map sky grids, scattered samples."""

import numpy as np
import pytest
import torch

from gradfit.oof.aperture import aperture_grid
from gradfit.oof.observation import BeamMap
from gradfit.oof.transforms import DFT, MFT
from gradfit.oof.zernike import monomial_labels

LAM = 0.007  # metres


def _direct(grid, E, u, v, a=0, b=0):
    """sum over the illuminated cells of (x/R)^a (y/R)^b E exp(-2 pi i (x u + y v)/lambda) dA."""
    R = grid.telescope.primary_radius_m
    w = (grid.x / R) ** a * (grid.y / R) ** b * E
    arg = -2j * np.pi * (np.outer(u, grid.x) + np.outer(v, grid.y)) / LAM
    return np.exp(arg) @ w * grid.step_m**2


def _maps(n_maps, shape, shift=0.0, scattered=False, seed=0):
    rng = np.random.default_rng(seed)
    maps = []
    for i in range(n_maps):
        ua = np.linspace(-4e-4, 4e-4, shape[1]) + shift * i
        va = np.linspace(-3e-4, 3.5e-4, shape[0]) - 0.5 * shift * i
        U, V = np.meshgrid(ua, va)
        u, v = U.ravel(), V.ravel()
        if scattered:
            u = u + rng.normal(0, 2e-5, u.size)
            v = v + rng.normal(0, 2e-5, v.size)
        maps.append(BeamMap(u, v, np.ones(u.size), 0.0, shape=None if scattered else shape))
    return maps


@pytest.mark.parametrize("n", [15, 16])
@pytest.mark.parametrize("kind", ["mft-shared", "mft-per-map", "dft"])
def test_monomial_transforms_match_the_direct_sum(n, kind):
    grid = aperture_grid("effelsberg", n)
    maps = _maps(2, (5, 7), shift=1e-5 if kind == "mft-per-map" else 0.0,
                 scattered=kind == "dft")
    if kind == "dft":
        tf = DFT(grid, maps, LAM, "cpu", torch.float64)
    else:
        tf = MFT(grid, maps, [m.grid_axes() for m in maps], LAM, "cpu", torch.float64)
        assert tf.shared_axes is (kind == "mft-shared")
    rng = np.random.default_rng(n)
    E = rng.normal(size=(2, grid.index.size)) + 1j * rng.normal(size=(2, grid.index.size))
    order = 3
    Mr, Mi = tf.monomials(torch.as_tensor(E.real), torch.as_tensor(E.imag), order)
    M = (Mr + 1j * Mi).numpy()
    scale = max(abs(_direct(grid, E[b], m.u, m.v)).max() for b, m in enumerate(maps))
    for i, (a, b_) in enumerate(monomial_labels(order)):
        for b, m in enumerate(maps):
            ref = _direct(grid, E[b], m.u, m.v, a, b_)
            err = np.abs(M[i, b, :m.n] - ref).max() / scale
            assert err < 1e-13, (a, b_, b, err)
    # the field alone (the model's values), several fields per map
    F = tf.fields(torch.as_tensor(np.stack([E.real, 2 * E.real], 1)),
                  torch.as_tensor(np.stack([E.imag, -E.imag], 1)))
    F = (F[0] + 1j * F[1]).numpy()
    for b, m in enumerate(maps):
        ref2 = _direct(grid, 2 * E[b].real - 1j * E[b].imag, m.u, m.v)
        assert np.abs(F[b, 0, :m.n] - _direct(grid, E[b], m.u, m.v)).max() < 1e-13 * scale
        assert np.abs(F[b, 1, :m.n] - ref2).max() < 1e-13 * scale


def test_an_asymmetric_aperture_grid_is_refused():
    grid = aperture_grid("effelsberg", 16)
    bad = type(grid)(**{**{f: getattr(grid, f) for f in grid.__dataclass_fields__},
                        "axis": grid.axis + 0.01 * grid.step_m})
    maps = _maps(1, (3, 3))
    with pytest.raises(ValueError, match="symmetric about the dish centre"):
        MFT(bad, maps, [m.grid_axes() for m in maps], LAM, "cpu", torch.float64)
    with pytest.raises(ValueError, match="symmetric about the dish centre"):
        DFT(bad, maps, LAM, "cpu", torch.float64)
