"""gradfit's small FITS reader/writer against astropy (the independent reference)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from gradfit.oof import fitsio, io, simulate

DATA = Path(__file__).parent / "data" / "oof-pyoof"


def test_astropy_reads_what_fitsio_writes(tmp_path, rng):
    u, v, p = rng.normal(size=(3, 37))
    cards = [("FREQ", 3.2e10, "Hz"), ("N", 7), ("OK", True), ("NO", False),
             ("OBJECT", "3C 286 'x'"), ("TINY", -1.5e-300), ("WHOLE", 3.0)]
    hdus = [fitsio.primary_hdu(cards),
            fitsio.table_hdu("MINUS OOF", [("U", u, "rad"), ("V", v, "rad"), ("BEAM", p, "")],
                             [("DZ", -0.022, "m")]),
            fitsio.table_hdu("TXT", [("JSON", np.array([b'{"a": [1, 2]}']), "")])]
    path = tmp_path / "t.fits"
    fitsio.write(path, hdus)
    assert path.stat().st_size % 2880 == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no astropy complaint about the format
        with fits.open(path) as h:
            h.verify("exception")
            hd = h[0].header
            assert (hd["FREQ"], hd["N"], hd["OK"], hd["NO"]) == (3.2e10, 7, True, False)
            assert hd["OBJECT"] == "3C 286 'x'" and hd["TINY"] == -1.5e-300
            assert isinstance(hd["WHOLE"], float) and hd["WHOLE"] == 3.0
            t = h["MINUS OOF"]
            assert t.header["DZ"] == -0.022 and t.columns["U"].unit == "rad"
            for name, a in (("U", u), ("V", v), ("BEAM", p)):
                np.testing.assert_array_equal(t.data[name], a)
            assert h["TXT"].data["JSON"][0] == '{"a": [1, 2]}'


def test_fitsio_reads_what_astropy_writes(tmp_path, rng):
    a = rng.normal(size=11)
    cols = [fits.Column(name="X", format="D", array=a),
            fits.Column(name="Y32", format="E", array=a.astype(np.float32)),
            fits.Column(name="K", format="J", array=np.arange(11)),
            fits.Column(name="W", format="3D", array=np.tile(a[:, None], (1, 3)))]
    prim = fits.PrimaryHDU()
    prim.header["STR"] = "hello   "
    prim.header["F"] = 1.25
    prim.header["COMMENT"] = "a comment"
    hdul = fits.HDUList([prim, fits.BinTableHDU.from_columns(cols, name="T")])
    hdul.writeto(tmp_path / "a.fits")
    h = fitsio.read(tmp_path / "a.fits")
    assert h[0].header["STR"] == "hello" and h[0].header["F"] == 1.25
    t = h["T"]
    np.testing.assert_array_equal(t.data["X"], a)
    np.testing.assert_array_equal(t.data["y32"], a.astype(np.float32))
    np.testing.assert_array_equal(t.data["K"], np.arange(11))
    assert t.data["W"].shape == (11, 3)
    assert [c.name for c in t.columns] == ["X", "Y32", "K", "W"]


@pytest.mark.parametrize("case", ["scaled", "varlen", "cut"])
def test_outside_the_subset_falls_back_to_astropy(tmp_path, case):
    src = DATA / "eff-n4-snr300.fits"
    p = tmp_path / f"{case}.fits"
    scale = 1.0
    if case == "cut":
        p.write_bytes(src.read_bytes()[:-3000])
    elif case == "scaled":  # TSCAL: astropy applies it, fitsio does not know how
        ref = io.read(src)
        hdus = [fitsio.primary_hdu([("FREQ", ref.frequency_hz), ("TELESCOP", "effelsberg")])]
        for name, m in zip(io.PYOOF_MAP_NAMES, ref.maps):
            cards = [("DZ", m.dz)] + ([("TSCAL3", 2.0)] if name == "PLUS OOF" else [])
            hdus.append(fitsio.table_hdu(name, [("U", m.u, ""), ("V", m.v, ""),
                                                ("BEAM", m.power, "")], cards))
        fitsio.write(p, hdus)
        scale = 2.0
    else:
        with fits.open(src) as h:
            t = h["PLUS OOF"]
            col = fits.Column(name="BEAM", format="PD()", array=np.array(
                [np.array([b]) for b in t.data["BEAM"]], dtype=object))
            new = fits.BinTableHDU.from_columns(
                [t.columns["U"], t.columns["V"], col], name="PLUS OOF")
            new.header["DZ"] = t.header["DZ"]
            h["PLUS OOF"] = new
            h.writeto(p)
    with pytest.raises(fitsio.Unsupported):
        fitsio.read(p)
    if case == "cut":
        with pytest.raises(io.OOFDataError, match="truncated"):
            io.read(p)
    else:  # astropy reads it: the original values (times the scale)
        obs, ref = io.read(p), io.read(src)
        np.testing.assert_allclose(obs.maps[2].power, scale * ref.maps[2].power, rtol=1e-12)
        np.testing.assert_array_equal(obs.maps[0].power, ref.maps[0].power)


def test_observation_round_trip_is_exact_both_ways(tmp_path):
    obs = simulate(order=2, npix=9, snr=500, seed=5)
    obs.meta.update(OBJECT="x", MEANEL=45.5, SCAN=12)
    path = tmp_path / "o.fits"
    io.write(obs, path)
    back = io.read(path)  # fitsio
    with fits.open(path) as h:  # astropy, independently
        for m, name in zip(obs.maps, ("MINUS OOF", "ZERO OOF", "PLUS OOF")):
            np.testing.assert_array_equal(h[name].data["BEAM"], m.power)
            assert h[name].header["DZ"] == m.dz
        assert h[0].header["NOISE"] == obs.maps[0].sigma[0]
    for a, b in zip(obs.maps, back.maps):
        np.testing.assert_array_equal(a.power, b.power)
        np.testing.assert_array_equal(a.u, b.u)
        np.testing.assert_array_equal(a.sigma, b.sigma)
        assert (a.dz, a.shape) == (b.dz, b.shape)
    assert back.truth == obs.truth and back.meta["SCAN"] == 12


def test_solution_images_read_back_with_astropy(tmp_path):
    img = np.arange(12.0).reshape(3, 4)
    img[1, 2] = np.nan
    io._write_image(io._image_hdu(img, "um", "surface error", (-2.0, 2.0, -1.5, 1.5),
                                  "effelsberg", 0.01), tmp_path / "s.fits")
    data, extent, header = io.read_image(tmp_path / "s.fits")  # astropy
    np.testing.assert_array_equal(data, img)
    assert extent == pytest.approx((-2.0, 2.0, -1.5, 1.5))
    assert header["BUNIT"] == "um" and header["TELESCOP"] == "effelsberg"
