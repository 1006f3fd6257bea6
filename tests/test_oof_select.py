"""oof.fit does not call a wrong answer success: which start the multi-start keeps
(a converged local minimum against a lower start), and maps without a beam
(benchmarks/oof_no_signal.py measures the detection rule)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from gradfit.oof import solve
from gradfit.oof.simulate import simulate, simulate_noise
from gradfit.oof.zernike import zernike_count

ORDER = 3


# ------------------------------------------------------- which start is kept
def _result(fun, success):
    return SimpleNamespace(fun=fun, success=success, params={"K": np.zeros(
        zernike_count(ORDER) - 1)}, message="converged" if success else "stalled: crafted")


def _minimise(monkeypatch, runs, n_starts):
    """``solve._minimise`` with ``_fit_from`` returning the crafted ``runs`` in turn."""
    it = iter(runs)
    monkeypatch.setattr(solve, "_fit_from", lambda *a, **k: (next(it), {}))
    monkeypatch.setattr(solve, "_misfit", lambda *a, **k: 1.0)
    s = SimpleNamespace(order=ORDER, start={}, report=lambda **kw: None)
    best, _, _, fits, starts = solve._minimise(None, None, s, False, n_starts, 0, None, 16,
                                               "mft", "pedestal", 1e9)
    assert len(fits) == len(runs) == len(starts)
    return best, starts


def test_converged_start_beaten_by_more_than_agree_is_not_kept(monkeypatch):
    """The measured case (peak SNR 3, seed 0, order 5): two stalled starts at 1632.0, a
    converged one 4.7 higher. The old ranking kept the converged one, a success; it
    is a local minimum: the lowest start is kept with its own success (False)."""
    runs = [_result(1632.0, False), _result(1632.05, False), _result(1636.7, True)]
    best, starts = _minimise(monkeypatch, runs, 3)
    assert best is runs[0] and not best.success
    assert [r["kept"] for r in starts] == [True, False, False]
    assert starts[2].get("local_minimum") is True
    assert not any(r.get("local_minimum") for r in starts[:2])
    msg = solve._message(best, 1.0, starts)
    assert "start 2 converged, but to a local minimum" in msg and "4.7 above" in msg
    # the other order: the converged start first, beaten later by more than AGREE
    runs = [_result(100.0, True), _result(100.0 - solve.AGREE - 0.01, False)]
    best, starts = _minimise(monkeypatch, runs, 2)
    assert best is runs[1] and not best.success and starts[0]["local_minimum"]


def test_starts_within_agree_keep_the_converged_one(monkeypatch):
    """Within AGREE the starts found the same minimum: the converged one is kept, lower
    or not (the old ranking's choice, unchanged), and nothing is called a local minimum."""
    for funs in [(100.0, 100.0 + solve.AGREE - 0.01), (100.0, 99.6), (100.0, 100.0)]:
        runs = [_result(funs[0], False), _result(funs[1], True)]
        best, starts = _minimise(monkeypatch, runs, 2)
        assert best is runs[1] and best.success, funs
        assert [r["kept"] for r in starts] == [False, True]
        assert not any(r.get("local_minimum") for r in starts)
        assert solve._message(best, 1.0, starts) == "converged"
    # all converged: the lowest, and the higher one was a local minimum (a log entry;
    # the message of a converged fit is the minimiser's)
    runs = [_result(100.0, True), _result(97.0, True), _result(99.0, False)]
    best, starts = _minimise(monkeypatch, runs, 3)
    assert best is runs[1] and starts[0]["local_minimum"] and "local_minimum" not in starts[2]
    assert solve._message(best, 1.0, starts) == "converged"


def test_auto_policy_keeps_the_lowest_start(monkeypatch):
    """'auto': a poor first fit (stalled) triggers the extra starts; a converged start
    4 above it is not kept, and the policy goes on to the next start."""
    runs = [_result(50.0, False), _result(54.0, True), _result(51.0, False),
            _result(49.9, False)]
    best, starts = _minimise(monkeypatch, runs, "auto")
    assert best is runs[3] and not best.success
    assert [r["kept"] for r in starts] == [False, False, False, True]
    assert starts[1]["local_minimum"] and not starts[1]["agrees_with_best"]


# --------------------------------------------------------- no beam in the maps
def _noise(seed, npix=25):
    """Three maps of unit noise, no beam (the geometry of a simulation)."""
    return simulate_noise("effelsberg", order=ORDER, npix=npix, seed=seed)


@pytest.mark.parametrize("seed, n_starts", [(6, "auto"), (8, 1)])
def test_pure_noise_is_not_a_success(seed, n_starts):
    """Pure noise, order 3 on 25 x 25. Seed 6: the first start converges (a success
    before the rule); seed 8 stalls, and its message must also name the cause. The
    fitted beam's SNR is what a fit of noise reaches (about sqrt(k), k = 11 parameters
    shape the beam; measured 4.4 and 3.2), below 2.5 sqrt(k) = 8.3."""
    sol = solve.fit(_noise(seed), order=ORDER, errors="none", n_starts=n_starts)
    assert sol.fit["starts"] == 1
    assert sol.success is False and sol.fit["success"] is False
    k = sol.fit["n_free"]  # K[1..9], amp, c_dB: all shape the beam
    assert k == sol.fit["beam_k"] == 11
    limit = solve.BEAM_SNR_LIMIT * math.sqrt(k)
    assert sol.fit["beam_snr_limit"] == pytest.approx(limit)
    assert 0.5 * math.sqrt(k) < sol.fit["beam_snr"] < limit
    msg = sol.fit["message"]
    assert "no beam signal detected: the fitted beam's SNR" in msg
    assert f"{limit:.3g}" in msg and "k = 11" in msg
    assert "FAILED" in str(sol).splitlines()[0]


def test_weak_real_beam_is_a_success():
    """Peak SNR 10, order 3 on 25 x 25 (the weakest SNR measured where every fit is
    meaningful): the beam is detected, and its fitted SNR matches the true beam's
    sqrt(sum (P / sigma)^2) from the noiseless simulation (an independent reference):
    the noise along the beam moves it by 1 sd, the fitted shape a little more; measured
    12.1 against the true 13.9 here, 0.95-1.05 x the truth at seeds 1-5 and at SNR 30."""
    obs = simulate("effelsberg", order=ORDER, snr=10.0, npix=25, seed=0)
    P = np.asarray(obs.truth["power_noiseless"])
    true_snr = float(np.sqrt(np.sum(P**2))) / obs.truth["noise"]["sigma"]
    sol = solve.fit(obs, order=ORDER, errors="none")
    assert sol.success, sol.fit["message"]
    assert "no beam" not in sol.fit["message"]
    assert sol.fit["beam_snr"] > sol.fit["beam_snr_limit"]
    assert abs(sol.fit["beam_snr"] - true_snr) < 3.0, (sol.fit["beam_snr"], true_snr)


def test_backgrounds_do_not_count_as_beam_parameters():
    """Measured maps (no sigma): pointing and gain shape the beam, the three backgrounds
    do not (they fit noise without any beam)."""
    obs = simulate("effelsberg", order=2, snr=30.0, npix=21, seed=3, with_sigma=False)
    sol = solve.fit(obs, order=2, errors="none")
    names = sol.result.names
    assert sum(n.startswith("background[") for n in names) == 3
    assert any(n.startswith("pointing[") for n in names)
    assert sol.fit["beam_k"] == sol.fit["n_free"] - 3
    assert sol.success and sol.fit["beam_snr"] > sol.fit["beam_snr_limit"]


def test_no_beam_rule_message_only_when_it_fires():
    stats = {"beam_snr": 3.0, "beam_snr_limit": 2.5 * math.sqrt(11), "beam_k": 11}
    assert solve._no_beam(stats).startswith("no beam signal detected")
    assert solve._no_beam(dict(stats, beam_snr=9.0)) == ""
    assert solve._no_beam(dict(stats, beam_snr=float("nan"))) == ""
    assert solve._no_beam(None) == ""
