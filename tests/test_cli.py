"""The gradfit command line: exit codes, one-line errors, stdout/stderr discipline."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner

from figures import assert_png
from gradfit.cli import cli
from honest import assert_chi2
from test_oof_io import _grid, oof_hdul, pyoof_hdul, replace_table, save

DATA = Path(__file__).parent / "data" / "oof-pyoof"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, code=2):
    """The run failed with ``code`` and said why on one stderr line, without a traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = [ln for ln in result.stderr.splitlines() if not ln.startswith("gradfit: warning:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# ---------------------------------------------------------------------------- basics


def test_help_and_version():
    r = run("--help")
    assert r.exit_code == 0 and "oof" in r.stdout and "demo" in r.stdout
    r = run("oof", "fit", "--help")
    assert r.exit_code == 0 and "--likelihood" in r.stdout and "--errors" in r.stdout
    r = run("--version")
    assert r.exit_code == 0 and "gradfit" in r.stdout


def test_no_arguments_prints_help_to_stderr():
    r = run()
    assert r.exit_code == 2 and "Usage:" in r.stderr and r.stdout == ""


def test_cli_module_does_not_import_torch():
    # gradfit.cli itself must not import torch or matplotlib (the package's own
    # __init__ may; that is measured in the report, not here)
    code = (
        "import sys, importlib.util; "
        "spec = importlib.util.spec_from_file_location('c', sys.argv[1]); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
        "print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    )
    import gradfit.cli as c

    out = subprocess.run(
        [sys.executable, "-c", code, c.__file__], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["oof", "fit"], "Missing argument 'FILES...'"),
        (["oof", "fit", "x.fits", "--out", "o"], "Missing option '--order'"),
        (["oof", "fit", "x.fits", "--order", "0", "--out", "o"], "'--order'"),
        (
            ["oof", "fit", "x.fits", "--order", "3", "--out", "o", "--likelihood", "l2"],
            "'--likelihood'",
        ),
        (["oof", "fit", "x.fits", "--order", "3", "--out", "o", "--device", "tpu"], "'--device'"),
        (["oof", "simulate", "--snr", "-1", "--out", "x.fits"], "'--snr'"),
        (["oof", "simulate", "--npix", "2", "--out", "x.fits"], "'--npix'"),
        (["oof", "frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args, needle):
    line = one_line_error(run(*args))
    assert needle in line


# ---------------------------------------------------------------------------- bad input files


def _bad_files(tmp_path):
    """(name, path, expected fragment) for every bad-input case."""
    cases = []

    def add(name, hdul, needle):
        cases.append((name, save(hdul, tmp_path, f"{name}.fits"), needle))

    h = pyoof_hdul()
    del h["ZERO OOF"]
    add("missing_hdu", h, "missing HDU 'ZERO OOF'")

    h = pyoof_hdul()
    u, v = _grid()
    replace_table(
        h,
        1,
        [fits.Column(name="U", format="E", array=u), fits.Column(name="V", format="E", array=v)],
    )
    add("missing_column", h, "missing column 'BEAM'")

    h = pyoof_hdul()
    del h["PLUS OOF"].header["DZ"]
    add("missing_dz", h, "missing header keyword DZ")

    h = pyoof_hdul()
    replace_table(
        h,
        2,
        [
            fits.Column(name="U", format="25E", array=u[None]),
            fits.Column(name="V", format="24E", array=v[None, :24]),
            fits.Column(name="BEAM", format="25E", array=np.ones((1, 25))),
        ],
    )
    add("mismatched", h, "column lengths differ (U 25, V 24, BEAM 25)")

    h = pyoof_hdul()
    h["MINUS OOF"].data["BEAM"][:] = 0
    add("all_zero", h, "map is all zero")

    h = pyoof_hdul()
    h["MINUS OOF"].data["BEAM"][:] = np.nan
    add("all_nan", h, "all 25 samples are NaN")

    h = pyoof_hdul()
    del h[0].header["FREQ"], h[0].header["WAVEL"]
    add("no_freq", h, "missing header keyword FREQ")

    h = oof_hdul()
    replace_table(
        h,
        2,
        [fits.Column(name="DX", format="E", array=u), fits.Column(name="FNu", format="E", array=u)],
    )
    add("oof_missing_column", h, "missing column 'DY'")

    p = tmp_path / "text.fits"
    p.write_text("SIMPLE = nonsense\n")
    cases.append(("not_fits", p, "not a readable FITS file"))
    cases.append(("missing_file", tmp_path / "absent.fits", "absent.fits: no such file"))
    return cases


def test_bad_input_files_exit_2_with_one_line(tmp_path):
    for name, path, needle in _bad_files(tmp_path):
        r = run("oof", "fit", path, "--order", 3, "--out", tmp_path / f"out-{name}")
        line = one_line_error(r)
        assert needle in line, (name, line)
        assert path.name in line, (name, line)


def test_bad_input_plot_dir(tmp_path):
    line = one_line_error(run("oof", "plot", tmp_path))
    assert "no solution.json" in line
    line = one_line_error(run("oof", "plot", tmp_path / "nodir"))
    assert "nodir: no such directory" in line


def test_unknown_telescope(tmp_path):
    p = save(pyoof_hdul(), tmp_path)
    line = one_line_error(
        run("oof", "fit", p, "--order", 3, "--out", tmp_path / "o", "--telescope", "arecibo")
    )
    assert line.startswith("gradfit: error: --telescope: unknown telescope 'arecibo'")


def test_no_telescope_in_header(tmp_path):
    p = save(pyoof_hdul(), tmp_path)  # no TELESCOP
    line = one_line_error(run("oof", "fit", p, "--order", 3, "--out", tmp_path / "o"))
    assert "obs.fits: no telescope in the primary header (TELESCOP); pass --telescope" in line


def test_simulate_unknown_telescope(tmp_path):
    line = one_line_error(run("oof", "simulate", "--telescope", "nope", "--out", tmp_path / "x"))
    assert line.startswith("gradfit: error: --telescope: unknown telescope 'nope'; choose one")


def test_out_is_a_file(tmp_path):
    p = save(pyoof_hdul(), tmp_path)
    line = one_line_error(
        run("oof", "fit", p, "--order", 3, "--out", p, "--telescope", "effelsberg")
    )
    assert "'--out'" in line and "obs.fits" in line


def test_nan_pixels_are_masked_with_a_one_line_warning(tmp_path):
    h = pyoof_hdul()
    h["PLUS OOF"].data["BEAM"][[1, 2]] = np.nan
    p = save(h, tmp_path)
    r = run("oof", "fit", p, "--order", 3, "--out", tmp_path / "o", "--telescope", "effelsberg")
    one_line_error(r)  # order 3 is too high for these 5x5 maps: exit 2, one line
    assert "gradfit: warning:" in r.stderr and "masked 2 of 25 samples" in r.stderr


@pytest.mark.parametrize("errors, samples", [("profile", 0), ("mcmc", 120)])
def test_errors_profile_and_mcmc(tmp_path, errors, samples):
    out = tmp_path / "sim.fits"
    r = run("oof", "simulate", "--order", 2, "--npix", 15, "--snr", 300, "--seed", 3, "--out", out)
    assert r.exit_code == 0, r.output
    res = tmp_path / "res"
    r = run("oof", "fit", out, "--order", 2, "--out", res, "--json", "--errors", errors,
            *(("--mcmc-samples", samples) if samples else ()))
    assert r.exit_code == 0, (r.output, r.exception)
    sol = json.loads(r.stdout)
    assert sol["errors"]["method"] == errors
    assert (res / "surface_error.fits").exists()
    assert_png(res / "surface_error.png")
    # the quoted rms is that of the written map (its closed form: test_oof_fit.py)
    from gradfit.oof import io

    img = io.read_image(res / "surface_error.fits")[0]
    assert sol["surface_error_rms_um"] == pytest.approx(np.sqrt(np.nanmean(img**2)), rel=1e-6)
    coefs = sol["zernike"][1:]
    if errors == "profile":
        for c in coefs:
            lo, hi = c["interval_waves"]
            # near-Gaussian here: the interval is value +- error to within 20%
            assert lo < c["value_waves"] < hi
            assert (hi - lo) / 2 == pytest.approx(c["error_waves"], rel=0.2)
        return
    # The posterior is near-Gaussian: its std is close to the Hessian error and its mean to
    # the best fit. Neither is exact: with 1000 draws per chain the stds still differ from
    # the Hessian errors by up to 13 % (the model is not linear), and 2 x 120 NUTS draws
    # (ESS ~ 100) add about 7 % of noise to each std and 0.1 error to each mean.
    n_draws = sol["errors"]["num_samples"]
    assert n_draws == 2 * samples
    ratio = np.array([c["posterior_std_waves"] / c["error_waves"] for c in coefs])
    assert np.all(np.abs(np.log(ratio)) < 0.13 + 4 * 0.07), ratio
    assert abs(np.log(ratio).mean()) < 0.13 + 3 * 0.07 / np.sqrt(ratio.size), ratio
    shift = np.array([(c["posterior_mean_waves"] - c["value_waves"]) / c["error_waves"]
                      for c in coefs])
    assert np.all(np.abs(shift) < 0.4), shift


def test_device_cuda_without_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    p = save(pyoof_hdul(), tmp_path)
    line = one_line_error(
        run(
            "oof",
            "fit",
            p,
            "--order",
            3,
            "--out",
            tmp_path / "o",
            "--telescope",
            "effelsberg",
            "--device",
            "cuda",
        )
    )
    assert "--device cuda: no CUDA device is available" in line


def test_bench_delegates_or_says_why():
    if importlib.util.find_spec("gradfit.bench") is None:
        line = one_line_error(run("bench"))
        assert "gradfit.bench is not available" in line
    else:
        r = run("bench", "--help")
        assert r.exit_code == 0, (r.output, r.exception)
        assert r.stdout.startswith("usage: gradfit bench"), r.stdout
        for flag in ("--quick", "--json", "--out", "--sizes", "--orders", "--impls", "--cap"):
            assert flag in r.stdout, flag


# ---------------------------------------------------------------------------- simulate / fit


def test_simulate_writes_readable_pyoof_file(tmp_path):
    from gradfit.oof import io

    out = tmp_path / "sim.fits"
    r = run(
        "oof",
        "simulate",
        "--order",
        3,
        "--npix",
        9,
        "--snr",
        300,
        "--seed",
        1,
        "--out",
        out,
        "--json",
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["path"] == str(out)
    obs = io.read(out)
    assert [m.dz for m in obs.maps] == pytest.approx([-0.022, 0.0, 0.022])
    assert all(m.shape == (9, 9) for m in obs.maps)
    assert obs.telescope == "effelsberg"
    assert obs.truth is not None


def test_simulate_then_fit_json_round_trip(tmp_path):
    out = tmp_path / "sim.fits"
    r = run("oof", "simulate", "--order", 2, "--npix", 15, "--snr", 1000, "--seed", 2, "--out", out)
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    res = tmp_path / "res"
    r = run("oof", "fit", out, "--order", 2, "--out", res, "--json")
    assert r.exit_code == 0, (r.output, r.exception)
    sol = json.loads(r.stdout)  # stdout holds only the JSON
    assert {"zernike", "nuisance", "fit", "surface_rms_um", "convention"} <= set(sol)
    assert sol["fit"]["success"] is True
    z = sol["zernike"]
    assert [(c["n"], c["l"]) for c in z] == [(0, 0), (1, -1), (1, 1), (2, -2), (2, 0), (2, 2)]
    for name in (
        "solution.json",
        "phase.fits",
        "surface.fits",
        "model.fits",
        "maps.png",
        "surface.png",
    ):
        assert (res / name).exists(), name
    assert json.loads((res / "solution.json").read_text())["zernike"] == z
    # the fitted coefficients agree with the simulation's truth within their errors
    from gradfit.oof import io

    truth = io.read(out).truth["zernike"]
    assert [(t["n"], t["l"]) for t in truth] == [(c["n"], c["l"]) for c in z]
    pulls = [
        (c["value_waves"] - t["K_waves"]) / c["error_waves"]
        for c, t in zip(z, truth, strict=True)
        if c["n"] >= 1
    ]
    assert len(pulls) == 5
    # two-sided: the sum of squared pulls is about chi-square(5) (the coefficients are
    # only weakly correlated here); the full-covariance checks are in test_oof_fit.py
    assert_chi2(float(np.sum(np.square(pulls))), 5, "CLI fit against the truth")
    assert sol["settings"]["order"] == 2 and sol["input"]["path"] == str(out.resolve())


def test_plot_redraws_from_directory(tmp_path, monkeypatch):
    # a fit output directory made by hand, so the figures are tested without a fit
    from gradfit.oof import io
    from test_oof_io import _FakeSolution

    src = DATA / "eff-n4-snr300.fits"
    obs = io.read(src)
    ref = np.load(DATA / "eff-n4-snr300.npz")
    io.write_solution(_FakeSolution(), tmp_path, extra={"input": {"path": str(src)}})
    io.write_maps(obs, [p.ravel() for p in ref["power_noiseless"]], tmp_path / "model.fits")
    from gradfit.oof import plots

    drawn = {}

    def keeping(name, fn):  # keep each figure to look at what it shows
        def keep(*a, **kw):
            drawn[name] = fn(*a, **kw)
            return drawn[name]

        return keep

    for name in ("plot_maps", "plot_surface"):
        monkeypatch.setattr(plots, name, keeping(name, getattr(plots, name)))
    u_edge = {}
    for units in ("arcsec", "beam"):
        r = run("oof", "plot", tmp_path, "--units", units)
        assert r.exit_code == 0, (r.output, r.exception)
        assert r.stdout.split() == [str(tmp_path / "maps.png"), str(tmp_path / "surface.png")]
        for name, fig in (("maps.png", drawn["plot_maps"]), ("surface.png",
                                                             drawn["plot_surface"])):
            assert_png(tmp_path / name, fig.get_size_inches() * 110)
        ax = drawn["plot_maps"].axes[0]
        assert ax.get_xlabel() == {"arcsec": "u (arcsec)", "beam": "u (λ/D)"}[units]
        u_edge[units] = ax.images[0].get_extent()[1]
    # the right edge of the first map: its largest u plus half a pixel, in each unit;
    # a beam width is lambda/D with D = 100 m for Effelsberg
    u = obs.maps[0].u
    edge_rad = u.max() + 0.5 * np.diff(np.unique(u)).mean()
    assert u_edge["arcsec"] == pytest.approx(np.degrees(edge_rad) * 3600, rel=1e-6)
    assert u_edge["beam"] == pytest.approx(edge_rad / (obs.wavelength_m / 100.0), rel=1e-6)
    # a model that does not match the observation is bad input
    io.write(io.read(DATA / "eff-n5-snr1000.fits"), tmp_path / "model.fits")
    line = one_line_error(run("oof", "plot", tmp_path))
    assert "model.fits: model maps do not match" in line


@pytest.fixture(scope="module")
def tiny_sim(tmp_path_factory):
    """A small simulated observation (9 x 9 points per map, order 2) as a FITS file."""
    from gradfit.oof import io, simulate

    path = tmp_path_factory.mktemp("tiny") / "tiny.fits"
    io.write(simulate(order=2, npix=9, snr=1000, seed=3), path)
    return path


def test_failed_fit_exits_1_and_still_writes(tiny_sim, tmp_path):
    r = run(
        "oof",
        "fit",
        tiny_sim,
        "--order",
        2,
        "--out",
        tmp_path,
        "--max-iter",
        1,
        "-q",
        "--json",
        "--no-figures",
    )
    assert r.exit_code == 1, (r.output, r.exception)
    sol = json.loads(r.stdout)
    assert sol["fit"]["success"] is False
    assert r.stderr.strip().splitlines()[-1].startswith("gradfit: error: fit failed: maximum")
    assert "Traceback" not in r.stderr
    assert (tmp_path / "solution.json").exists() and not (tmp_path / "maps.png").exists()


def test_order_too_high_for_map_size(tiny_sim, tmp_path):
    line = one_line_error(run("oof", "fit", tiny_sim, "--order", 12, "--out", tmp_path))
    assert "order 12 is too high for the map size" in line


def test_cauchy_fit_with_masked_nan_pixels(tiny_sim, tmp_path):
    with fits.open(tiny_sim) as h:
        h["PLUS OOF"].data["BEAM"][[4, 40]] = np.nan
        h.writeto(tmp_path / "nan.fits")
    r = run(
        "oof",
        "fit",
        tmp_path / "nan.fits",
        "--order",
        2,
        "--out",
        tmp_path / "res",
        "--likelihood",
        "cauchy",
        "--json",
        "-q",
    )
    assert r.exit_code == 0, (r.output, r.exception)
    assert "masked 2 of 81 samples" in r.stderr
    sol = json.loads(r.stdout)
    # the flagged samples stay on the grid, out of the likelihood
    assert sol["input"]["points_per_map"] == [81, 81, 81]
    assert sol["input"]["masked_per_map"] == [0, 0, 2]
    assert sol["fit"]["n_masked"] == 2
    assert "cauchy" in sol["fit"]["likelihood"].lower()
    assert sol["settings"]["likelihood"] == "cauchy"
    assert (tmp_path / "res" / "maps.png").exists()


def test_internal_error_is_one_line_exit_1(tmp_path, monkeypatch):
    from gradfit.oof import plots

    def boom(*args, **kwargs):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(plots, "plot_dir", boom)
    monkeypatch.delenv("GRADFIT_DEBUG", raising=False)
    line = one_line_error(run("oof", "plot", tmp_path), code=1)
    assert line == (
        "gradfit: internal error: RuntimeError: something broke; second line "
        "(set GRADFIT_DEBUG=1 for a traceback)"
    )


def test_fit_scan_axis_reaches_the_jackknife_and_is_recorded(tmp_path):
    from gradfit import oof

    src = tmp_path / "s.fits"
    oof.write(oof.simulate(order=2, npix=15, seed=1), src)
    for axis in ("u", "v"):
        out = tmp_path / axis
        r = CliRunner().invoke(cli, ["oof", "fit", str(src), "--order", "2", "--errors",
                                     "jackknife", "--scan-axis", axis, "--no-figures", "-q",
                                     "--out", str(out)])
        assert r.exit_code == 0, r.output
        d = json.loads((out / "solution.json").read_text())
        assert d["settings"]["scan_axis"] == axis
        assert d["errors"]["scan_axis"] == axis
    r = CliRunner().invoke(cli, ["oof", "fit", str(src), "--scan-axis", "w", "--out",
                                 str(tmp_path / "w")])
    assert r.exit_code == 2 and "--scan-axis" in r.stderr
