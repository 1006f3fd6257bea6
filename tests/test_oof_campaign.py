"""OOF campaigns: many observations one by one (in process and on Dask) and the joint
gravity model K(el) = a + b sin(el) + c cos(el)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from gradfit import oof
from gradfit.oof import campaign as C

RNG = np.random.default_rng(1)
P = 9  # order 3 without piston
A, B, Cc = RNG.normal(0, 0.1, P), RNG.normal(0, 0.05, P), RNG.normal(0, 0.05, P)
ELS = [20, 35, 50, 65, 80]


@pytest.fixture(scope="module")
def campaign():
    return C.simulate_campaign(ELS, A, B, Cc, order=3, npix=21, snr=1000)


@pytest.fixture(scope="module")
def fitted(campaign):
    return C.fit_many(campaign, order=3)


def test_fit_many_rows_match_single_fits(campaign, fitted):
    assert fitted.success and fitted.n_failed == 0 and len(fitted.rows) == 5
    single = oof.fit(campaign[2], order=3)
    row = fitted.rows[2]
    assert row["elevation_deg"] == 50.0
    # fitted from the batch's answer: the same minimum to LM's stopping tolerance, a
    # millionth of the error bars
    assert all(r["batched"] for r in fitted.rows)
    np.testing.assert_allclose([z["value_waves"] for z in row["zernike"]], single.K_waves,
                               rtol=0, atol=1e-8)
    assert max(z["error_waves"] for z in row["zernike"]) > 1e-4
    # the per-observation fits see the truth at that elevation (two-sided pull check)
    pulls = []
    for r, el in zip(fitted.rows, ELS):
        e = np.radians(el)
        truth = A + B * np.sin(e) + Cc * np.cos(e)
        k = np.array([z["value_waves"] for z in r["zernike"]][1:])
        s = np.array([z["error_waves"] for z in r["zernike"]][1:])
        pulls.append((k - truth) / s)
        assert 0.5 < r["chi2_reduced"] < 1.5  # known σ: the model describes the data
    rms = float(np.sqrt(np.mean(np.square(pulls))))
    assert 0.7 < rms < 1.35, rms  # 45 pulls: about ±3 standard errors


def test_fit_many_records_failures_and_writes_summary(tmp_path, campaign):
    good = tmp_path / "good.fits"
    oof.write(campaign[0], good)
    bad = tmp_path / "broken.fits"
    bad.write_bytes(b"SIMPLE  = not a fits file")
    out = tmp_path / "out"
    res = C.fit_many([good, bad, tmp_path / "missing.fits"], order=3, out=out)
    assert res.n_failed == 2 and not res.success
    assert res.rows[0]["success"] and res.rows[0]["name"] == "good"
    assert res.rows[1]["reason"].startswith("cannot read") and "broken" in res.rows[1]["file"]
    assert res.rows[2]["reason"].startswith("cannot read")
    assert (out / "good" / "solution.json").is_file()
    assert not (out / "broken").exists()
    rows = list(csv.DictReader(io.StringIO((out / "summary.csv").read_text())))
    assert [r["name"] for r in rows] == ["good", "broken", "missing"]
    assert rows[0]["success"] == "True" and float(rows[0]["surface_rms_um"]) > 0
    assert "K(3,3)_waves" in rows[0] and rows[1]["K(3,3)_waves"] == ""
    js = json.loads((out / "summary.json").read_text())
    assert js["n_failed"] == 2 and len(js["observations"]) == 3
    import matplotlib.image as mpimg

    img = mpimg.imread(out / "campaign.png")
    assert img.shape[0] > 200 and float(img[..., :3].std()) > 0.05


def test_fit_many_on_dask_local_cluster_matches_in_process(tmp_path, campaign, fitted):
    files = []
    for i, o in enumerate(campaign[:3]):
        f = tmp_path / f"obs{i}.fits"
        oof.write(o, f)
        files.append(f)
    local = C.fit_many(files, order=3, batch=False)
    res = C.fit_many(files, order=3, dask="local", out=tmp_path / "out")
    assert res.success and [r["name"] for r in res.rows] == ["obs0", "obs1", "obs2"]
    for r, ref, b in zip(res.rows, local.rows, fitted.rows):
        # each worker fits whole files: exactly the in-process one-by-one numbers, and
        # the batched in-process ones to LM's tolerance
        np.testing.assert_array_equal([z["value_waves"] for z in r["zernike"]],
                                      [z["value_waves"] for z in ref["zernike"]])
        np.testing.assert_allclose([z["value_waves"] for z in r["zernike"]],
                                   [z["value_waves"] for z in b["zernike"]], rtol=0, atol=1e-8)
    assert (tmp_path / "out" / "obs1" / "solution.json").is_file()


def test_gravity_model_recovers_truth_two_sided(campaign, fitted):
    g = C.fit_campaign(campaign, order=3, start=fitted)
    assert g.success
    pulls = np.concatenate([(g.a - A) / g.a_err, (g.b - B) / g.b_err, (g.c - Cc) / g.c_err])
    assert np.mean(np.abs(pulls) < 3) >= 0.9
    rms = float(np.sqrt(np.mean(pulls**2)))
    assert 0.6 < rms < 1.4, rms  # 27 pulls: fails for errors 1.5x too small or too large
    K50, err50 = g.predict(50)
    e = np.radians(50)
    truth = A + B * np.sin(e) + Cc * np.cos(e)
    assert np.all(np.abs(K50 - truth) < 4 * err50)
    # the prediction at an observed elevation is tighter than the single fit there
    single_err = np.array([z["error_waves"] for z in fitted.rows[2]["zernike"]][1:])
    assert np.median(err50 / single_err) < 1.0
    table = g.correction_table([30, 60])
    assert [t["elevation_deg"] for t in table] == [30.0, 60.0]
    assert len(table[0]["zernike"]) == P and table[0]["surface_rms_um"] > 0
    d = json.loads(json.dumps(g.to_dict()))
    assert len(d["coefficients"]) == P and d["success"]


@pytest.mark.parametrize("els, match", [
    ([20, 40], "at least 3 observations"),
    ([40, 42, 44], "span only"),
])
def test_gravity_model_bad_input(els, match):
    obs = C.simulate_campaign(els, A, B, Cc, order=3, npix=15, snr=1000)
    with pytest.raises(ValueError, match=match):
        C.fit_campaign(obs, order=3)


def test_gravity_model_needs_elevations(campaign):
    obs = list(campaign[:3])
    import copy

    obs[1] = copy.copy(obs[1])
    obs[1].meta = {}
    with pytest.raises(ValueError, match="observation 1: no usable elevation"):
        C.fit_campaign(obs, order=3)
    with pytest.raises(ValueError, match="unknown elevation_model"):
        C.fit_campaign(campaign, order=3, elevation_model="poly")


def test_cli_campaign_exit_codes_and_outputs(tmp_path, campaign):
    from click.testing import CliRunner

    from gradfit.cli import cli

    files = []
    for i, o in enumerate(campaign):
        f = tmp_path / f"el{i}.fits"
        oof.write(o, f)
        files.append(str(f))
    out = tmp_path / "season"
    r = CliRunner().invoke(cli, ["oof", "campaign", *files, "--order", "3", "--out", str(out),
                                 "--gravity", "--json", "-q"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["n_observations"] == 5 and d["n_failed"] == 0
    assert [o["elevation_deg"] for o in d["observations"]] == [float(e) for e in ELS]
    assert len(d["gravity"]["coefficients"]) == P and d["gravity"]["success"]
    for name in ("summary.csv", "summary.json", "campaign.png", "gravity.json", "gravity.png"):
        assert (out / name).is_file(), name
    assert (out / "el3" / "solution.json").is_file()
    # a broken file: its row says why, the others are fitted, exit code 1
    bad = tmp_path / "bad.fits"
    bad.write_text("not fits")
    r = CliRunner().invoke(cli, ["oof", "campaign", files[0], str(bad), "--order", "3",
                                 "--out", str(tmp_path / "two"), "-q", "--json"])
    assert r.exit_code == 1
    rows = json.loads(r.stdout)["observations"]
    assert rows[0]["success"] and not rows[1]["success"] and "cannot read" in rows[1]["reason"]
    assert (tmp_path / "two" / "el0" / "solution.json").is_file()
    assert all(o["batched"] for o in d["observations"])
    r = CliRunner().invoke(cli, ["oof", "campaign", *files[:2], "--order", "3", "--no-batch",
                                 "--no-figures", "--out", str(tmp_path / "nb"), "-q", "--json"])
    assert r.exit_code == 0, r.output
    assert not any(o["batched"] for o in json.loads(r.stdout)["observations"])
    assert (tmp_path / "nb" / "summary.csv").is_file()
    assert not (tmp_path / "nb" / "campaign.png").exists()


def test_cli_fit_with_several_fits_files_is_a_campaign(tmp_path, campaign):
    from click.testing import CliRunner

    from gradfit.cli import cli

    files = []
    for i, o in enumerate(campaign[:2]):
        f = tmp_path / f"obs{i}.fits"
        oof.write(o, f)
        files.append(str(f))
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["oof", "fit", *files, "--order", "3", "--out", str(out), "-q",
                                 "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert [o["name"] for o in d["observations"]] == ["obs0", "obs1"]
    assert (out / "summary.csv").is_file() and (out / "obs1" / "solution.json").is_file()
    r = CliRunner().invoke(cli, ["oof", "fit", files[0], "--dask", "local", "--order", "3",
                                 "--out", str(tmp_path / "one")])
    assert r.exit_code == 2 and "--dask is for a campaign" in r.stderr


def test_batched_and_one_by_one_agree_and_the_batch_groups_by_geometry(campaign):
    """Observations of two sky grids form two batches (a third, alone in its grid, is
    fitted from scratch); each answer equals the one-by-one fit of the same file."""
    from gradfit.oof.batchfit import batched_starts

    odd = oof.simulate(order=3, npix=17, snr=1000, seed=5)
    pair = [oof.simulate(order=3, npix=15, snr=1000, seed=s) for s in (6, 7)]
    obs = list(campaign[:3]) + pair + [odd]
    starts = batched_starts(obs, 3)
    assert [s is not None for s in starts] == [True] * 5 + [False]
    one = C.fit_many(obs, order=3, batch=False)
    many = C.fit_many(obs, order=3)
    assert [r["batched"] for r in many.rows] == [True] * 5 + [False]
    assert not any(r["batched"] for r in one.rows)
    for a, b, st in zip(one.rows, many.rows, starts):
        ka = np.array([z["value_waves"] for z in a["zernike"]])
        kb = np.array([z["value_waves"] for z in b["zernike"]])
        np.testing.assert_allclose(kb, ka, rtol=0, atol=1e-8)
        if st is not None:  # the batch (float32) itself already found that minimum
            err = np.array([z["error_waves"] for z in a["zernike"]])
            assert np.all(np.abs(st["K"] - ka)[1:] <= 0.05 * err[1:])
    # a fit option the batch does not serve: every observation from scratch
    alt = C.fit_many(obs[:3], order=3, likelihood="cauchy")
    assert not any(r["batched"] for r in alt.rows)


def test_batched_beams_equal_the_single_model_and_finite_differences():
    """BeamModel.batched / batched_jacobian against the one-observation model and
    central differences (an independent check of every column)."""
    import torch

    from gradfit.oof.model import BeamModel

    obs = oof.simulate(order=3, npix=15, snr=1000, seed=3)
    bm = BeamModel(obs, obs.telescope, 3, 32)
    rng = np.random.default_rng(4)
    b = 3
    p = {"K": torch.tensor(rng.normal(0, 0.1, (b, bm.n_coeff - 1))),
         "amp": torch.tensor(rng.uniform(0.5, 2.0, b)),
         "c_dB": torch.tensor(rng.uniform(-16.0, -8.0, b))}
    mu, d = bm.batched_jacobian(p)
    np.testing.assert_allclose(bm.batched(p).numpy(), mu.numpy(), rtol=1e-13, atol=0)
    for i in range(b):
        one = {k: v[i] for k, v in p.items()}
        np.testing.assert_allclose(mu[i].numpy(), bm(one).numpy(), rtol=1e-12, atol=1e-15)
    h = 1e-6
    for name in ("K", "amp", "c_dB"):
        cols = d[name] if name == "K" else d[name].unsqueeze(-1)
        for j in range(cols.shape[-1]):
            up = {k: v.clone() for k, v in p.items()}
            dn = {k: v.clone() for k, v in p.items()}
            if name == "K":
                up["K"][:, j] += h
                dn["K"][:, j] -= h
            else:
                up[name] += h
                dn[name] -= h
            fd = (bm.batched(up) - bm.batched(dn)) / (2 * h)
            scale = float(fd.abs().max())
            assert scale > 0
            np.testing.assert_allclose(cols[..., j].numpy(), fd.numpy(), rtol=0,
                                       atol=1e-6 * scale)
    with pytest.raises(ValueError, match="batched K must have shape"):
        bm.batched({"K": torch.zeros(bm.n_coeff - 1)})
    with pytest.raises(ValueError, match="K, amp and c_dB only"):
        bm.batched({"K": torch.zeros(1, bm.n_coeff - 1), "gain": torch.ones(1, 3)})


def test_measured_maps_and_misfits_are_fitted_as_from_scratch():
    """Maps without sigma free a background, gain and pointing that the batch lacks: no
    batch for them. Forced into the batch's model (free=('amp', 'c_dB')) they are not
    described, so the answer from the batch's start is dropped and the fit redone from
    scratch: the numbers equal the one-by-one ones (they differed by up to 6 waves, a
    different local minimum, before)."""
    from gradfit.oof.batchfit import batched_starts
    from gradfit.oof.realistic import simulate_realistic

    obs = [simulate_realistic(order=2, npix=21, seed=20 + i, flags=0)[0] for i in range(2)]
    assert batched_starts(obs, 2) == [None, None]
    assert all(s is not None for s in batched_starts(obs, 2, free=("amp", "c_dB")))
    for free in (None, ("amp", "c_dB")):
        kw = {} if free is None else {"free": free}
        one = C.fit_many(obs, order=2, batch=False, **kw)
        many = C.fit_many(obs, order=2, **kw)
        assert not any(r["batched"] for r in many.rows)
        for a, b in zip(one.rows, many.rows):
            assert [z["value_waves"] for z in a["zernike"]] == \
                [z["value_waves"] for z in b["zernike"]]
