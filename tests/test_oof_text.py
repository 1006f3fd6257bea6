"""Text/CSV beam maps: parsing, units, flags, grids, bad input, conversion to FITS."""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as apu

from gradfit.oof import io as oofio
from gradfit.oof import textio
from gradfit.oof.telescope import TOML_TEMPLATE, get_telescope


def _grid(n_u=12, n_v=10, step=2e-5, fast="u"):
    """Offsets (radians) of a regular raster; ``fast`` varies fastest in file order."""
    au = (np.arange(n_u) - (n_u - 1) / 2) * step
    av = (np.arange(n_v) - (n_v - 1) / 2) * step
    if fast == "u":
        V, U = np.meshgrid(av, au, indexing="ij")
    else:
        U, V = np.meshgrid(au, av, indexing="ij")
    return U.ravel(), V.ravel()


def _power(u, v, seed=0):
    rng = np.random.default_rng(seed)
    return 40 + 100 * np.exp(-(u**2 + v**2) / (4e-5) ** 2) + rng.normal(0, 1, u.size)


def _write(path, u, v, p, fmt="{:.17g}", sep=" ", head=()):
    rows = [sep.join(fmt.format(x) for x in row) for row in zip(u, v, p)]
    path.write_text("\n".join(list(head) + rows) + "\n")
    return path


# ------------------------------------------------------------------- reading
@pytest.mark.parametrize("unit", ["rad", "deg", "arcmin", "arcsec"])
def test_units_against_astropy(tmp_path, unit):
    u, v = _grid()
    p = _power(u, v)
    per_rad = (1 * apu.rad).to(getattr(apu, unit)).value  # independent conversion
    path = _write(tmp_path / "m.txt", u * per_rad, v * per_rad, p)
    m = textio.read_map(path, units=None if unit == "rad" else unit)
    np.testing.assert_allclose(m.u, u, rtol=1e-13, atol=1e-20)
    np.testing.assert_allclose(m.v, v, rtol=1e-13, atol=1e-20)
    np.testing.assert_array_equal(m.power, p)
    assert m.units == unit
    # the same unit from a comment tag or from the header cells
    tagged = _write(tmp_path / "t.txt", u * per_rad, v * per_rad, p,
                    head=[f"# units: {unit}"])
    assert textio.read_map(tagged).units == unit
    header = _write(tmp_path / "h.csv", u * per_rad, v * per_rad, p, sep=",",
                    head=[f"u[{unit}], v[{unit}], power"])
    np.testing.assert_allclose(textio.read_map(header).u, u, rtol=1e-13, atol=1e-20)


def test_separators_header_order_and_scan_axis(tmp_path):
    u, v = _grid(fast="v")  # like the SRT files: first column slow
    p = _power(u, v)
    tab = _write(tmp_path / "tab.txt", u, v, p, sep="\t", fmt="{:.10e}")
    semi = _write(tmp_path / "semi.txt", u, v, p, sep=" ; ")
    reordered = _write(tmp_path / "re.txt", p, u * 3600 * 180 / np.pi, v * 3600 * 180 / np.pi,
                       head=["# a comment", "", "BEAM  DX(arcsec)  DY(arcsec)"])
    for path in (tab, semi, reordered):
        m = textio.read_map(path)
        assert m.fast_axis == "v"
        np.testing.assert_allclose(m.u, u, rtol=1e-9, atol=1e-18)
        np.testing.assert_allclose(m.v, v, rtol=1e-9, atol=1e-18)
        np.testing.assert_allclose(m.power, p, rtol=1e-9)


def test_read_text_builds_observation_on_a_grid(tmp_path):
    u, v = _grid(fast="v")
    files = [_write(tmp_path / f"m{k}.txt", u, v, _power(u, v, k)) for k in range(3)]
    obs = textio.read_text(files, dz="-0.027, 0, 0.027", telescope="srt", frequency=22e9)
    assert [m.dz for m in obs.maps] == [-0.027, 0.0, 0.027]
    assert obs.wavelength_m == pytest.approx(299_792_458.0 / 22e9)
    assert obs.telescope == "srt" and obs.layout == "pyoof"
    assert obs.meta["scan_axis"] == ["v"] * 3 and obs.meta["n_flagged"] == [0, 0, 0]
    for k, m in enumerate(obs.maps):
        assert m.shape == (10, 12) and m.name == f"m{k}"
        # u fastest after reordering, and every sample kept with its value
        np.testing.assert_array_equal(m.v.reshape(10, 12)[:, 0], np.unique(v))
        np.testing.assert_array_equal(m.u.reshape(10, 12)[0], np.unique(u))
        order = np.lexsort((u, v))
        np.testing.assert_array_equal(m.power, _power(u, v, k)[order])


def test_flags_are_masked_with_a_count(tmp_path):
    u, v = _grid()
    p = _power(u, v)
    p[[3, 50]] = np.nan
    p[7] = 0.0
    path = _write(tmp_path / "flags.txt", u, v, p)
    with pytest.warns(UserWarning, match=r"masked 3 flagged samples of 120 \(2 NaN, 1 exact zero"):
        obs = textio.read_text([path], dz=[0.0], frequency=22e9)
    m = obs.maps[0]
    # a grid keeps its flagged samples, masked (NaN), and its shape
    assert m.n == 120 and m.n_used == 117 and m.shape is not None
    assert np.all(np.isfinite(m.power[m.mask])) and np.all(np.isnan(m.power[~m.mask]))
    assert obs.meta["n_flagged"] == [3]
    with pytest.warns(UserWarning, match="masked 2 flagged samples"):
        kept = textio.read_text([path], dz=[0.0], frequency=22e9, zero_is_flag=False)
    assert kept.maps[0].n_used == 118 and np.sum(kept.maps[0].power == 0) == 1
    # without a mask (the pyoof layout) the flagged samples are dropped, with the shape
    flat = textio.compact(obs).maps[0]
    assert flat.n == 117 and flat.shape is None and np.all(np.isfinite(flat.power))


def test_telescope_file_is_kept_by_path(tmp_path):
    u, v = _grid()
    path = _write(tmp_path / "m.txt", u, v, _power(u, v))
    tel = tmp_path / "dish.toml"
    tel.write_text(TOML_TEMPLATE)
    obs = textio.read_text([path], dz=[0.0], frequency=22e9, telescope=str(tel))
    assert obs.telescope == str(tel) and obs.meta["TELESCOPE_NAME"] == "mydish"
    assert get_telescope(obs.telescope).name == "mydish"


def test_convert_writes_the_pyoof_layout(tmp_path):
    u, v = _grid(fast="v")
    files = [_write(tmp_path / f"m{k}.txt", u, v, _power(u, v, k)) for k in range(3)]
    out = textio.convert(files, tmp_path / "obs.fits", [-0.02, 0.0, 0.02], telescope="srt",
                         frequency=22.23e9)
    back = oofio.read(out)
    assert back.layout == "pyoof" and back.telescope == "srt"
    assert [m.name for m in back.maps] == list(oofio.PYOOF_MAP_NAMES)
    assert back.frequency_hz == pytest.approx(22.23e9)
    direct = textio.read_text(files, [-0.02, 0.0, 0.02], frequency=22.23e9)
    for a, b in zip(direct.maps, back.maps):
        np.testing.assert_array_equal(a.power, b.power)
        np.testing.assert_array_equal(a.u, b.u)
        assert b.shape == a.shape == (10, 12) and b.dz == a.dz


def test_write_text_round_trip(tmp_path):
    u, v = _grid()
    p = _power(u, v)
    p[5] = np.nan
    for sep in (" ", "\t", ","):
        path = textio.write_text(tmp_path / "w.txt", u, v, p, units="arcmin", delimiter=sep,
                                 comment="test")
        m = textio.read_map(path)
        assert m.units == "arcmin"
        np.testing.assert_allclose(m.u, u, rtol=1e-15, atol=1e-21)
        np.testing.assert_array_equal(np.isnan(m.power), np.isnan(p))


# ----------------------------------------------------------------- bad input
def _bad(tmp_path, text, name="bad.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _ok_rows(n=12):
    return "".join(f"{k * 1e-5} {k * 2e-5} {k + 1.0}\n" for k in range(n))


@pytest.mark.parametrize(
    "text, match",
    [
        (_ok_rows(5) + "1e-5 2e-5\n" + _ok_rows(6), r"line 6: 2 columns, expected 3"),
        (_ok_rows(3) + "1e-5 2e-5 3 4\n" + _ok_rows(8), r"line 4: 4 columns, expected 3"),
        (_ok_rows(4) + "1e-5 2e-5 abc\n" + _ok_rows(8), r"line 5: column 3 \(power\) is not "
                                                        r"a number: 'abc'"),
        ("u v power\n" + _ok_rows(9), r"9 samples; a beam map needs at least 10"),
        ("# units: furlong\n" + _ok_rows(), r"line 1: unknown unit 'furlong'; choose one of: "
                                            r"rad, deg, arcmin, arcsec"),
        ("u[parsec] v[parsec] power\n" + _ok_rows(), r"line 1: unknown unit 'parsec'"),
        ("east north power\n" + _ok_rows(), r"line 1: header cell 'east' is not a column name"),
        ("u u power\n" + _ok_rows(), r"need one each of u, v, power"),
        ("".join(f"{k} {k} 1.0\n" for k in range(12)), r"too large for a beam map"),
        ("# units: deg\nu[arcsec] v[arcsec] p\n" + _ok_rows(), r"contradicts 'deg'"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, text, match):
    path = _bad(tmp_path, text)
    with pytest.raises(ValueError, match=match) as info:
        textio.read_map(path)
    assert str(path) in str(info.value)


def test_bad_arguments(tmp_path):
    good = _bad(tmp_path, _ok_rows(), "good.txt")
    with pytest.raises(ValueError, match="units argument: unknown unit 'parsec'"):
        textio.read_map(good, units="parsec")
    tagged = _bad(tmp_path, "# units: deg\n" + _ok_rows(), "tagged.txt")
    with pytest.raises(ValueError, match="units='arcsec' contradicts the file's unit 'deg'"):
        textio.read_map(tagged, units="arcsec")
    with pytest.raises(ValueError, match="no such file"):
        textio.read_map(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="dz has 2 values for 3 files; give one defocus"):
        textio.read_text([good, good, good], dz=[-0.01, 0.01], frequency=1e9)
    with pytest.raises(ValueError, match="dz value 2 \\('x'\\) is not a number"):
        textio.read_text([good, good], dz="0.0,x", frequency=1e9)
    with pytest.raises(ValueError, match="dz value 1 is nan"):
        textio.read_text([good], dz=[float("nan")], frequency=1e9)
    with pytest.raises(ValueError, match="exactly one of frequency= \\(Hz\\) or wavelength="):
        textio.read_text([good], dz=[0.0])
    with pytest.raises(ValueError, match="frequency must be a positive number of Hz, got 'x'"):
        textio.read_text([good], dz=[0.0], frequency="x")
    with pytest.raises(ValueError, match="wavelength must be a positive number of metres"):
        textio.read_text([good], dz=[0.0], wavelength=-1.0)
    with pytest.raises(ValueError, match="unknown telescope 'arecibo'"):
        textio.read_text([good], dz=[0.0], frequency=1e9, telescope="arecibo")


def test_maps_on_different_grids(tmp_path):
    u, v = _grid()
    a = _write(tmp_path / "a.txt", u, v, _power(u, v))
    u2, v2 = _grid(step=2.2e-5)
    b = _write(tmp_path / "b.txt", u2, v2, _power(u2, v2))
    u3, v3 = _grid(n_u=10, n_v=12)
    c = _write(tmp_path / "c.txt", u3, v3, _power(u3, v3))
    with pytest.raises(ValueError, match=r"maps on different grids: .*a.txt has 10 x 12 grid.*"
                                         r"b.txt has 10 x 12 grid"):
        textio.read_text([a, b], dz=[0.0, 0.01], frequency=1e9)
    with pytest.raises(ValueError, match=r"different grids.*c.txt has 12 x 10 grid"):
        textio.read_text([a, c], dz=[0.0, 0.01], frequency=1e9)
    # the same grid in another sample order is the same grid
    u4, v4 = _grid(fast="v")
    d = _write(tmp_path / "d.txt", u4, v4, _power(u4, v4))
    obs = textio.read_text([a, d], dz=[0.0, 0.01], frequency=1e9)
    np.testing.assert_array_equal(obs.maps[0].u, obs.maps[1].u)


def test_scattered_samples_are_allowed_when_they_agree(tmp_path):
    rng = np.random.default_rng(3)
    u, v = rng.uniform(-1e-4, 1e-4, (2, 40))
    a = _write(tmp_path / "a.txt", u, v, _power(u, v))
    b = _write(tmp_path / "b.txt", u[::-1], v[::-1], _power(u, v, 1)[::-1])
    obs = textio.read_text([a, b], dz=[0.0, 0.01], frequency=1e9)
    assert all(m.shape is None and m.n == 40 for m in obs.maps)
    c = _write(tmp_path / "c.txt", u + 3e-5, v, _power(u, v))
    with pytest.raises(ValueError, match="40 scattered samples"):
        textio.read_text([a, c], dz=[0.0, 0.01], frequency=1e9)


def test_from_arrays_checks_lengths():
    u, v = _grid()
    with pytest.raises(ValueError, match="lengths differ"):
        textio.from_arrays([u], [v[:-1]], [_power(u, v)], [0.0], frequency=1e9)
    with pytest.raises(ValueError, match="needs at least 10"):
        textio.from_arrays([u[:5]], [v[:5]], [u[:5]], [0.0], frequency=1e9)
    obs = textio.from_arrays([u], [v], [_power(u, v)], 0.0, wavelength=0.0135,
                             telescope=get_telescope("srt"))
    p = _power(u, v)
    p[4] = np.nan
    with pytest.warns(UserWarning, match=r"map 1: masked 1 flagged sample .*first at sample 5"):
        textio.from_arrays([u], [v], [p], 0.0, wavelength=0.0135)
    assert obs.telescope == "srt" and obs.maps[0].shape == (10, 12)
