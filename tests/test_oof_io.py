"""Reading and writing OOF observations: public pyoof files, both layouts, every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from gradfit.oof import io
from gradfit.oof.io import OOFDataError
from gradfit.oof.observation import BeamMap, Observation

DATA = Path(__file__).parent / "data" / "oof-pyoof"
C = 299_792_458.0


# ---------------------------------------------------------------------------- builders


def _grid(n=5, half=1e-4):
    ax = np.linspace(-half, half, n)
    u, v = np.meshgrid(ax, ax)  # u varies fastest along rows
    return u.ravel(), v.ravel()


def _beam(u, v, dz):
    w = 4e-5 * (1 + 30 * abs(dz))
    return np.exp(-(u**2 + v**2) / (2 * w**2))


def pyoof_hdul(n=5, dzs=(-0.022, 0.0, 0.022), names=None, freq=32e9):
    names = names or ["MINUS OOF", "ZERO OOF", "PLUS OOF"]
    primary = fits.PrimaryHDU()
    for key, value in dict(
        FREQ=freq, WAVEL=C / freq, MEANEL=45.0, OBJECT="3C286", DATE_OBS="2026-01-01"
    ).items():
        primary.header[key] = value
    hdus = [primary]
    u, v = _grid(n)
    for name, dz in zip(names, dzs, strict=True):
        t = fits.BinTableHDU.from_columns(
            [
                fits.Column(name="U", format="E", array=u),
                fits.Column(name="V", format="E", array=v),
                fits.Column(name="BEAM", format="E", array=_beam(u, v, dz)),
            ],
            name=name,
        )
        t.header["DZ"] = dz
        hdus.append(t)
    return fits.HDUList(hdus)


def oof_hdul(n=5, dzs=(-0.01, -0.005, 0.0, 0.005, 0.01), ufnu=True):
    primary = fits.PrimaryHDU()
    primary.header["FREQ"] = 90e9
    primary.header["TELESCOP"] = "GBT"
    hdus = [primary]
    u, v = _grid(n)
    for dz in dzs:
        cols = [
            fits.Column(name="DX", format="E", array=u),
            fits.Column(name="DY", format="E", array=v),
            fits.Column(name="FNu", format="E", array=_beam(u, v, dz)),
        ]
        if ufnu:
            cols.append(fits.Column(name="UFNu", format="E", array=np.full(u.size, 0.01)))
        cols.append(fits.Column(name="Time", format="E", array=np.arange(u.size)))
        t = fits.BinTableHDU.from_columns(cols, name="OOF BEAM")
        t.header["dz"] = dz
        hdus.append(t)
    return fits.HDUList(hdus)


def save(hdul, tmp_path, name="obs.fits") -> Path:
    p = tmp_path / name
    hdul.writeto(p, overwrite=True)
    return p


def replace_table(hdul, index, columns, header_from=True):
    old = hdul[index]
    new = fits.BinTableHDU.from_columns(columns, name=old.name)
    if header_from and "DZ" in old.header:
        new.header["DZ"] = old.header["DZ"]
    hdul[index] = new
    return hdul


# ---------------------------------------------------------------------------- public data


@pytest.mark.parametrize(
    "case, npix, noise", [("eff-n4-snr300", 33, 1 / 300), ("eff-n5-snr1000", 65, 1 / 1000)]
)
def test_read_public_pyoof_files(case, npix, noise):
    obs = io.read(DATA / f"{case}.fits")
    ref = np.load(DATA / f"{case}.npz")
    assert obs.layout == "pyoof"
    assert obs.telescope == "effelsberg"
    assert obs.frequency_hz == 32e9
    assert obs.wavelength_m == pytest.approx(C / 32e9, rel=1e-12)
    assert obs.meta["OBJECT"] == "synthetic"
    assert [m.name for m in obs.maps] == ["MINUS OOF", "ZERO OOF", "PLUS OOF"]
    assert [m.dz for m in obs.maps] == pytest.approx([-0.022, 0.0, 0.022])
    for i, m in enumerate(obs.maps):
        assert m.shape == (npix, npix)
        assert m.n == npix * npix
        np.testing.assert_allclose(m.power.reshape(m.shape), ref["power"][i], rtol=1e-6)
        np.testing.assert_allclose(m.u.reshape(m.shape), ref["u"][i], rtol=1e-6)
        np.testing.assert_allclose(m.v.reshape(m.shape), ref["v"][i], rtol=1e-6)
        assert m.sigma is not None and np.allclose(m.sigma, noise)
    # u varies fastest
    m = obs.maps[0]
    assert m.u[1] > m.u[0] and m.v[1] == m.v[0]


def test_write_read_round_trip(tmp_path):
    obs = io.read(DATA / "eff-n4-snr300.fits")
    obs.truth = {"zernike": [{"n": 2, "l": 0, "value_rad": 0.1}], "seed": 3}
    p = io.write(obs, tmp_path / "copy.fits")
    back = io.read(p)
    assert back.layout == obs.layout
    assert back.telescope == obs.telescope
    assert back.wavelength_m == obs.wavelength_m and back.frequency_hz == obs.frequency_hz
    assert back.truth == obs.truth
    assert back.meta["OBJECT"] == "synthetic" and back.meta["MEANEL"] == 0.0
    for a, b in zip(obs.maps, back.maps, strict=True):
        assert (a.name, a.dz, a.shape) == (b.name, b.dz, b.shape)
        for attr in ("u", "v", "power", "sigma"):
            np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr))
    # pyoof reads the three tables by position and these keywords
    with fits.open(p) as h:
        assert [h[i].name for i in (1, 2, 3)] == ["MINUS OOF", "ZERO OOF", "PLUS OOF"]
        for key in ("FREQ", "WAVEL", "MEANEL", "OBJECT", "DATE_OBS"):
            assert key in h[0].header
        assert h[2].header["DZ"] == 0.0


def test_round_trip_any_number_of_maps_and_per_point_sigma(tmp_path):
    rng = np.random.default_rng(0)
    u, v = _grid(4)
    maps = [
        BeamMap(u, v, _beam(u, v, dz), dz, sigma=rng.uniform(0.01, 0.02, u.size), name=f"D{k}")
        for k, dz in enumerate((-0.02, -0.01, 0.0, 0.01, 0.02))
    ]
    obs = Observation(maps, wavelength_m=0.003, frequency_hz=C / 0.003, layout="gradfit")
    back = io.read(io.write(obs, tmp_path / "five.fits"))
    assert back.layout == "gradfit"  # keeps the simulation's convention
    assert [m.dz for m in back.maps] == [-0.02, -0.01, 0.0, 0.01, 0.02]
    assert [m.name for m in back.maps] == ["D0", "D1", "D2", "D3", "D4"]
    for a, b in zip(maps, back.maps, strict=True):
        np.testing.assert_array_equal(a.sigma, b.sigma)
        assert b.shape == (4, 4)


def test_write_sanitises_header_values(tmp_path):
    u, v = _grid(4)
    maps = [BeamMap(u, v, _beam(u, v, dz), dz) for dz in (-0.01, 0.0, 0.01)]
    meta = {
        "OBJECT": "Cas A – north",
        "OBSERVER": "Ünal",
        "ELEV": np.float32(40.5),
        "BADNUM": float("nan"),
        "A_VERY_LONG_KEY": 1,
        "LIST": [1, 2],
    }
    obs = Observation(maps, 0.003, C / 0.003, meta=meta)
    back = io.read(io.write(obs, tmp_path / "meta.fits"))
    assert back.meta["OBJECT"] == "Cas A ? north" and back.meta["OBSERVER"] == "?nal"
    assert back.meta["ELEV"] == 40.5
    assert "BADNUM" not in back.meta and "LIST" not in back.meta
    assert [m.name for m in back.maps] == ["MINUS OOF", "ZERO OOF", "PLUS OOF"]


def test_read_oof_layout(tmp_path):
    p = save(oof_hdul(), tmp_path)
    obs = io.read(p)
    assert obs.layout == "oof"
    assert obs.telescope == "gbt"
    assert obs.frequency_hz == 90e9 and obs.wavelength_m == pytest.approx(C / 90e9)
    assert [m.dz for m in obs.maps] == pytest.approx([-0.01, -0.005, 0.0, 0.005, 0.01])
    assert all(m.shape == (5, 5) and np.allclose(m.sigma, 0.01) for m in obs.maps)


def test_oof_layout_written_as_pyoof_keeps_its_layout(tmp_path):
    obs = io.read(save(oof_hdul(), tmp_path))
    back = io.read(io.write(obs, tmp_path / "as-pyoof.fits"))
    assert back.layout == "oof"
    assert [m.name for m in back.maps] == [f"MAP {i}" for i in range(1, 6)]
    for a, b in zip(obs.maps, back.maps, strict=True):
        np.testing.assert_array_equal(a.power, b.power)
        np.testing.assert_array_equal(a.sigma, b.sigma)
    with fits.open(tmp_path / "as-pyoof.fits") as h:
        assert h[0].header["NMAPS"] == 5


def test_read_oof_layout_without_ufnu_and_wavelength_in_table(tmp_path):
    h = oof_hdul(dzs=(-0.01, 0.0, 0.01), ufnu=False)
    del h[0].header["FREQ"]
    h[1].header["WAVEL"] = 0.003
    obs = io.read(save(h, tmp_path))
    assert obs.wavelength_m == 0.003
    assert all(m.sigma is None for m in obs.maps)


def test_scattered_points_have_no_shape(tmp_path):
    h = pyoof_hdul()
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=(2, 30)) * 1e-4
    for i in (1, 2, 3):
        replace_table(
            h,
            i,
            [
                fits.Column(name="U", format="D", array=u),
                fits.Column(name="V", format="D", array=v),
                fits.Column(name="BEAM", format="D", array=_beam(u, v, 0.0)),
            ],
        )
    obs = io.read(save(h, tmp_path))
    assert all(m.shape is None and m.n == 30 for m in obs.maps)


# ---------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(OOFDataError, match=r"nope\.fits: no such file"):
        io.read(tmp_path / "nope.fits")


def test_not_fits(tmp_path):
    p = tmp_path / "notes.fits"
    p.write_text("this is not a FITS file\n" * 10)
    with pytest.raises(OOFDataError, match=r"notes\.fits: not a readable FITS file"):
        io.read(p)


def test_no_tables(tmp_path):
    p = save(fits.HDUList([fits.PrimaryHDU()]), tmp_path)
    with pytest.raises(OOFDataError, match="no binary table HDUs"):
        io.read(p)


@pytest.mark.parametrize("missing", ["MINUS OOF", "ZERO OOF", "PLUS OOF"])
def test_missing_hdu(tmp_path, missing):
    h = pyoof_hdul()
    del h[missing]
    with pytest.raises(OOFDataError, match=f"obs.fits: missing HDU '{missing}'"):
        io.read(save(h, tmp_path))


@pytest.mark.parametrize("column", ["U", "V", "BEAM"])
def test_missing_column_pyoof(tmp_path, column):
    h = pyoof_hdul()
    u, v = _grid()
    cols = {"U": u, "V": v, "BEAM": _beam(u, v, 0.0)}
    del cols[column]
    replace_table(h, 2, [fits.Column(name=k, format="E", array=a) for k, a in cols.items()])
    with pytest.raises(OOFDataError, match=f"HDU 2 \\('ZERO OOF'\\): missing column '{column}'"):
        io.read(save(h, tmp_path))


def test_missing_column_oof(tmp_path):
    h = oof_hdul()
    u, v = _grid()
    replace_table(
        h,
        3,
        [fits.Column(name="DX", format="E", array=u), fits.Column(name="DY", format="E", array=v)],
    )
    with pytest.raises(OOFDataError, match=r"HDU 3 \('OOF BEAM'\): missing column 'FNu'"):
        io.read(save(h, tmp_path))


def test_no_map_tables_at_all(tmp_path):
    t = fits.BinTableHDU.from_columns([fits.Column(name="X", format="E", array=np.zeros(3))])
    p = save(fits.HDUList([fits.PrimaryHDU(), t]), tmp_path)
    with pytest.raises(OOFDataError, match="no beam-map table found"):
        io.read(p)


def test_missing_dz_header(tmp_path):
    h = pyoof_hdul()
    del h["PLUS OOF"].header["DZ"]
    with pytest.raises(OOFDataError, match=r"HDU 3 \('PLUS OOF'\): missing header keyword DZ"):
        io.read(save(h, tmp_path))


def test_missing_dz_header_oof(tmp_path):
    h = oof_hdul()
    del h[2].header["DZ"]
    with pytest.raises(OOFDataError, match=r"HDU 2 .*missing header keyword DZ"):
        io.read(save(h, tmp_path))


def test_bad_dz_header(tmp_path):
    h = pyoof_hdul()
    h["ZERO OOF"].header["DZ"] = "zero"
    with pytest.raises(OOFDataError, match=r"header DZ = 'zero' is not a number"):
        io.read(save(h, tmp_path))


def test_missing_frequency(tmp_path):
    h = pyoof_hdul()
    del h[0].header["FREQ"]
    del h[0].header["WAVEL"]
    with pytest.raises(OOFDataError, match="primary header: missing header keyword FREQ"):
        io.read(save(h, tmp_path))


def test_frequency_from_wavelength_only(tmp_path):
    h = pyoof_hdul()
    del h[0].header["FREQ"]
    obs = io.read(save(h, tmp_path))
    assert obs.frequency_hz == pytest.approx(32e9)


def test_inconsistent_freq_and_wavel_warns(tmp_path):
    h = pyoof_hdul()
    h[0].header["WAVEL"] = 0.01
    with pytest.warns(UserWarning, match="WAVEL = 0.01 m and FREQ = 32000000000.0 Hz disagree"):
        obs = io.read(save(h, tmp_path))
    assert obs.wavelength_m == 0.01


def test_mismatched_lengths(tmp_path):
    # one row of array-valued cells: U, V and BEAM of different lengths
    h = pyoof_hdul()
    u, v = _grid()
    replace_table(
        h,
        1,
        [
            fits.Column(name="U", format="25E", array=u[None, :]),
            fits.Column(name="V", format="25E", array=v[None, :]),
            fits.Column(name="BEAM", format="20E", array=np.ones((1, 20))),
        ],
    )
    with pytest.raises(
        OOFDataError, match=r"HDU 1 \('MINUS OOF'\): column lengths differ \(U 25, V 25, BEAM 20\)"
    ):
        io.read(save(h, tmp_path))


def test_map_all_zero(tmp_path):
    h = pyoof_hdul()
    h["ZERO OOF"].data["BEAM"][:] = 0.0
    with pytest.raises(OOFDataError, match=r"HDU 2 \('ZERO OOF'\): map is all zero"):
        io.read(save(h, tmp_path))


def test_nan_pixels_are_masked_with_warning(tmp_path):
    h = pyoof_hdul()
    h["PLUS OOF"].data["BEAM"][[0, 3, 7]] = np.nan
    p = save(h, tmp_path)
    with pytest.warns(UserWarning, match=r"HDU 3 \('PLUS OOF'\): masked 3 of 25 samples"):
        obs = io.read(p)
    m = obs.maps[2]
    # on a grid, flagged samples stay in place (the grid and its fast transform kept)
    assert m.n == 25 and m.shape == (5, 5) and m.n_used == 22
    assert np.flatnonzero(~m.mask).tolist() == [0, 3, 7]
    assert np.all(np.isnan(m.power[~m.mask])) and np.all(np.isfinite(m.power[m.mask]))
    assert obs.maps[0].n == 25 and obs.maps[0].shape == (5, 5) and obs.maps[0].mask is None


def test_nan_coordinates_are_dropped_and_the_grid_lost(tmp_path):
    h = pyoof_hdul()
    h["PLUS OOF"].data["U"][4] = np.nan
    h["PLUS OOF"].data["BEAM"][9] = np.nan
    with pytest.warns(UserWarning, match=r"HDU 3 \('PLUS OOF'\): masked 2 of 25 samples"):
        obs = io.read(save(h, tmp_path))
    m = obs.maps[2]
    assert m.n == 23 and m.shape is None and m.mask is None and np.all(np.isfinite(m.power))


def test_masked_samples_do_not_hide_a_zero_map_or_bad_sigma(tmp_path):
    h = pyoof_hdul()
    h["ZERO OOF"].data["BEAM"][:] = 0.0
    h["ZERO OOF"].data["BEAM"][2] = np.nan
    with pytest.warns(UserWarning, match="masked 1 of 25"), \
            pytest.raises(OOFDataError, match=r"HDU 2 \('ZERO OOF'\): map is all zero"):
        io.read(save(h, tmp_path))


def test_all_nan_map(tmp_path):
    h = pyoof_hdul()
    h["MINUS OOF"].data["BEAM"][:] = np.nan
    with pytest.raises(OOFDataError, match=r"HDU 1 \('MINUS OOF'\): all 25 samples are NaN"):
        io.read(save(h, tmp_path))


def test_nonpositive_ufnu(tmp_path):
    h = oof_hdul()
    h[1].data["UFNu"][2] = 0.0
    with pytest.raises(OOFDataError, match="per-point errors must be positive"):
        io.read(save(h, tmp_path))


def test_nmaps_mismatch(tmp_path):
    u, v = _grid(4)
    maps = [BeamMap(u, v, _beam(u, v, dz), dz, name=f"D{k}") for k, dz in enumerate((-1, 0))]
    p = io.write(Observation(maps, 0.003, C / 0.003), tmp_path / "two.fits")
    with fits.open(p) as h:
        h[0].header["NMAPS"] = 3
        h.writeto(tmp_path / "bad.fits")
    with pytest.raises(OOFDataError, match="NMAPS = 3 but 2 map HDUs"):
        io.read(tmp_path / "bad.fits")


# ---------------------------------------------------------------------------- results


class _FakeSolution:
    def to_dict(self):
        return {"zernike": [{"n": 1, "l": 1, "value_rad": np.float64(0.5)}], "arr": np.ones(2)}

    def phase_map(self):
        return np.zeros((8, 8))

    def surface_map(self):
        x = np.linspace(-50, 50, 8)
        img = np.ones((8, 8))
        img[0, 0] = np.nan
        return x, x, img


def test_write_solution(tmp_path):
    data = io.write_solution(_FakeSolution(), tmp_path / "out", extra={"input": {"path": "x"}})
    saved = json.loads((tmp_path / "out" / "solution.json").read_text())
    assert (
        saved
        == data
        == {
            "zernike": [{"n": 1, "l": 1, "value_rad": 0.5}],
            "arr": [1.0, 1.0],
            "input": {"path": "x"},
        }
    )
    img, extent, header = io.read_image(tmp_path / "out" / "surface.fits")
    assert header["BUNIT"] == "um" and img.shape == (8, 8) and np.isnan(img[0, 0])
    assert extent == pytest.approx((-50 - 50 / 7, 50 + 50 / 7) * 2)
    phase, extent, header = io.read_image(tmp_path / "out" / "phase.fits")
    assert header["BUNIT"] == "rad" and extent is None


@pytest.mark.parametrize("order", ["v-fastest", "back-and-forth"])
def test_a_grid_in_another_sample_order_is_put_on_its_grid(tmp_path, order):
    h = pyoof_hdul(n=6)
    ref = io.read(save(h, tmp_path, "ref.fits"))
    idx = np.arange(36).reshape(6, 6)
    if order == "v-fastest":
        idx = idx.T.ravel()
    else:  # raster scans along u, every other one reversed
        idx[1::2] = idx[1::2, ::-1]
        idx = idx.ravel()
    for name in ("MINUS OOF", "ZERO OOF", "PLUS OOF"):
        h[name].data = h[name].data[idx]
    h["PLUS OOF"].data["BEAM"][5] = np.nan  # a flag in the file's order
    with pytest.warns(UserWarning, match="masked 1 of 36"):
        obs = io.read(save(h, tmp_path, "perm.fits"))
    for m, r in zip(obs.maps, ref.maps):
        assert m.shape == (6, 6)
        np.testing.assert_array_equal(m.u, r.u)
        np.testing.assert_array_equal(m.v, r.v)
    np.testing.assert_array_equal(obs.maps[0].power, ref.maps[0].power)
    plus = obs.maps[2]
    flagged = int(idx[5])  # where the file's sample 5 sits on the grid
    assert np.flatnonzero(~plus.mask).tolist() == [flagged]
    keep = plus.mask
    np.testing.assert_array_equal(plus.power[keep], ref.maps[2].power[keep])


def test_scattered_samples_keep_their_order(tmp_path):
    h = pyoof_hdul()
    for name in ("MINUS OOF", "ZERO OOF", "PLUS OOF"):
        h[name].data["U"][3] += 1e-6  # off the grid by a fiftieth of a step
    obs = io.read(save(h, tmp_path))
    assert all(m.shape is None for m in obs.maps)
    assert obs.maps[0].u[3] == pytest.approx(_grid()[0][3] + 1e-6, rel=1e-6)
