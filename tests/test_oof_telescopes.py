"""Built-in telescopes against published numbers, defocus against closed forms, TOML files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from gradfit.oof.telescope import TELESCOPES, TOML_TEMPLATE, Telescope, get_telescope, load


# ---------------------------------------------------------------- defocus path
def _cos_angle_at_focus(r, F):
    """cos of the angle at the focus of a paraboloid of focal length F, from trigonometry.

    A ray hitting the paraboloid at radius r reaches the focus at angle theta from the
    axis with tan(theta/2) = r/(2F) (the classical paraboloid relation).
    """
    return np.cos(2 * np.arctan(r / (2 * F)))


def test_srt_numbers_and_defocus_closed_form():
    srt = get_telescope("SRT")
    assert srt.optics == "gregorian"
    assert (srt.primary_radius_m, srt.Fp_m, srt.F_eff_m, srt.blockage_radius_m) == (
        32.004, 21.0236, 149.76, 3.953)
    r = np.linspace(0, srt.primary_radius_m, 9)
    dz = 0.027
    expected = dz * (_cos_angle_at_focus(r, 21.0236) + _cos_angle_at_focus(r, 149.76))
    np.testing.assert_allclose(srt.defocus_path(r, dz), expected, rtol=1e-12)
    # centre: both reflectors add dz; rim: 1.243774 dz (by hand: 0.266352 + 0.977423)
    assert srt.defocus_path(0.0, dz) == pytest.approx(2 * dz, rel=1e-15)
    assert srt.defocus_path(32.004, 1.0) == pytest.approx(1.243774, abs=2e-6)


def test_prime_focus_defocus_matches_ray_geometry():
    """Path change of a feed moved along the axis, by exact distances on the paraboloid."""
    F = 10.0
    dish = Telescope.generic(25.0, F)
    r = np.linspace(0.0, 12.5, 11)
    zp = r**2 / (4 * F)  # the paraboloid z = r^2 / 4F, focus at (0, F)
    h = 1e-6

    def length(dz):  # feed displaced along the axis, away from the dish, by dz
        return np.hypot(r, F + dz - zp)

    # central difference: the path lengthening per +h, to O(h^3); positive dz in
    # defocus_path means this direction
    numeric = (length(h) - length(-h)) / 2
    np.testing.assert_allclose(dish.defocus_path(r, h), numeric, rtol=1e-7, atol=1e-15)
    # and the trigonometric form, independently
    np.testing.assert_allclose(dish.defocus_path(r, 1.0), _cos_angle_at_focus(r, F), rtol=1e-12)


@pytest.mark.parametrize("name", sorted(TELESCOPES))
def test_every_dual_reflector_defocus_is_the_sum_of_two_paraboloids(name):
    tel = TELESCOPES[name]
    r = np.linspace(0, tel.primary_radius_m, 7)
    expected = _cos_angle_at_focus(r, tel.Fp_m)
    if tel.optics != "prime":
        expected = expected + _cos_angle_at_focus(r, tel.F_eff_m)
    np.testing.assert_allclose(tel.defocus_path(r, -0.01), -0.01 * expected, rtol=1e-12)


# ------------------------------------------------------- published geometries
def test_gbt_is_unblocked_100m_with_published_focal_ratios():
    gbt = TELESCOPES["gbt"]
    assert 2 * gbt.primary_radius_m == 100.0
    assert gbt.Fp_m / 100.0 == pytest.approx(0.6)  # f/D prime, 100 m effective parabola
    assert gbt.F_eff_m / 100.0 == pytest.approx(1.9)  # f/D Gregorian
    assert gbt.blockage_radius_m == 0 and gbt.leg_count == 0
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-49.9, 49.9, (2, 20000))
    inside = np.hypot(x, y) < 49.9
    assert gbt.illuminated(x, y)[inside].all()


def test_alma_12m_published_numbers():
    alma = TELESCOPES["alma"]
    assert 2 * alma.primary_radius_m == 12.0
    assert alma.Fp_m / 12.0 == pytest.approx(0.4)
    assert alma.F_eff_m / 12.0 == pytest.approx(8.0)
    assert 2 * alma.blockage_radius_m == pytest.approx(0.75)
    assert alma.leg_count == 4
    assert alma.optics == "cassegrain"


def test_jcmt_effective_focal_length_from_the_published_construction():
    """JAC 'JCMT Optical Constants': Dp 15 m, Ds 0.75 m, Fp 5.4 m, 2c = 9.136 m."""
    jcmt = TELESCOPES["jcmt"]
    Dp, Ds, Fp, Fc = 15.0, 0.75, 5.4, 2 * 4.568
    assert (2 * jcmt.primary_radius_m, 2 * jcmt.blockage_radius_m, jcmt.Fp_m) == (Dp, Ds, Fp)
    p1 = (Dp / 2) ** 2 / (4 * Fp)
    p2 = (Fp - p1) * Ds / Dp  # axial distance of the secondary's rim from the prime focus
    assert p2 == pytest.approx(0.139792, abs=1e-6)  # the page's 139.792 mm
    half_v = 0.5 * math.atan2(Dp / 2, Fp - p1)  # half angle of the rim ray at the prime focus
    half_r = 0.5 * math.atan2(Ds / 2, Fc - p2)  # ... and at the real (Cassegrain) focus
    magnification = math.tan(half_v) / math.tan(half_r)
    assert jcmt.F_eff_m == pytest.approx(magnification * Fp, rel=2e-3)
    assert jcmt.F_eff_m / Dp == pytest.approx(12.0)


def test_srt_open_area_is_the_annulus():
    srt = TELESCOPES["srt"]
    rng = np.random.default_rng(2)
    x, y = rng.uniform(-32.004, 32.004, (2, 400_000))
    frac = srt.illuminated(x, y).mean()
    expected = math.pi * (32.004**2 - 3.953**2) / (2 * 32.004) ** 2
    assert frac == pytest.approx(expected, abs=3e-3)


# ------------------------------------------------------------------ TOML files
@pytest.mark.parametrize("name", sorted(TELESCOPES))
def test_toml_round_trip(tmp_path, name):
    path = tmp_path / f"{name}.toml"
    path.write_text(TELESCOPES[name].to_toml())
    assert Telescope.from_toml(path) == TELESCOPES[name]
    assert load(str(path)) == TELESCOPES[name]
    assert get_telescope(path) == TELESCOPES[name]


def test_template_loads_and_defaults(tmp_path):
    path = tmp_path / "dish.toml"
    path.write_text(TOML_TEMPLATE)
    tel = load(path)
    assert tel.name == "mydish" and tel.primary_radius_m == pytest.approx(32.004)
    assert tel.optics == "gregorian" and tel.blockage_radius_m == 3.953
    minimal = tmp_path / "small.toml"
    minimal.write_text('diameter_m = 5.0\nFp_m = 2.0\noptics = "prime"\n')
    tel = load(str(minimal))
    assert tel.name == "small" and tel.optics == "prime" and tel.F_eff_m is None
    legs = tmp_path / "legs.toml"
    legs.write_text("diameter_m = 20\nFp_m = 8\nF_eff_m = 100\nblockage_radius_m = 1\n"
                    "leg_count = 3\nleg_half_width_m = 0.2\n")
    tel = load(legs)
    assert tel.optics == "cassegrain" and tel.leg_length_m == pytest.approx(9.0)


@pytest.mark.parametrize(
    "body, field",
    [
        ("Fp_m = 2.0\nF_eff_m = 20.0\n", "missing field 'diameter_m'"),
        ("diameter_m = 5.0\nFp_m = 2.0\n", "missing field 'F_eff_m'"),
        ("diameter_m = 5.0\nFp_m = -2.0\nF_eff_m = 20.0\n", "'Fp_m' must be > 0"),
        ("diameter_m = 5.0\nFp_m = 2.0\nF_eff_m = 20.0\nblockage_radius_m = -0.1\n",
         "'blockage_radius_m' must be >= 0"),
        ("diameter_m = nan\nFp_m = 2.0\nF_eff_m = 20.0\n", "'diameter_m' must be finite"),
        ("diameter_m = 5.0\nFp_m = inf\nF_eff_m = 20.0\n", "'Fp_m' must be finite"),
        ("diameter_m = 5.0\nFp_m = 2.0\nF_eff_m = 20.0\nfocal = 3\n", "unknown field 'focal'"),
        ("primary_radius_m = 5.0\nFp_m = 2.0\nF_eff_m = 20.0\n", "diameter_m = 2 x"),
        ('diameter_m = "5"\nFp_m = 2.0\nF_eff_m = 20.0\n', "'diameter_m' must be a number"),
        ("diameter_m = 5.0\nFp_m = 2.0\nF_eff_m = 20.0\nleg_count = 2.5\n",
         "'leg_count' must be an integer"),
        ('diameter_m = 5.0\nFp_m = 2.0\nF_eff_m = 20.0\noptics = "newtonian"\n',
         "'optics' = 'newtonian'; choose one of"),
        ("diameter_m = 5.0\nFp_m = 2.0\nF_eff_m = 20.0\nblockage_radius_m = 9.0\n",
         "blockage_radius_m must be in"),
        ("diameter_m = 5.0\nFp_m = [2.0\n", "not valid TOML"),
    ],
)
def test_bad_toml_names_file_and_field(tmp_path, body, field):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ValueError) as info:
        load(str(path))
    message = str(info.value)
    assert str(path) in message
    assert field in message


def test_missing_file_and_unknown_name():
    with pytest.raises(ValueError, match="nowhere.toml.*does not exist"):
        load("nowhere.toml")
    with pytest.raises(ValueError) as info:
        load("arecibo")
    message = str(info.value)
    for name in TELESCOPES:
        assert name in message
    assert "TOML" in message and "diameter_m" in message and "TOML_TEMPLATE" in message
    with pytest.raises(TypeError, match="telescope must be"):
        load(3.5)
    assert load(TELESCOPES["srt"]) is TELESCOPES["srt"]


def test_simulate_accepts_a_telescope_file(tmp_path):
    from gradfit.oof import simulate

    path = tmp_path / "small.toml"
    path.write_text('name = "small"\ndiameter_m = 12.0\nFp_m = 4.8\nF_eff_m = 96.0\n'
                    "blockage_radius_m = 0.375\n")
    obs = simulate(str(path), order=2, npix=9, grid=24, freq_hz=100e9, dz=0.003, seed=1)
    assert obs.truth["telescope"] == "small"
    assert all(np.isfinite(m.power).all() for m in obs.maps)
    assert Path(path).exists()
