"""LM's stall stop in OOF fits: hopeless data stop early and say so; ordinary fits do not
change (benchmarks/oof_low_snr.py measures both)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gradfit.oof import io, solve
from gradfit.oof.simulate import simulate
from gradfit.solvers import SolverOptions, lm

DATA = Path(__file__).parent / "data" / "oof-pyoof"
WINDOW = solve.STALL[0]


def _fit(obs, stall=True, **kw):
    saved = solve.STALL
    solve.STALL = saved if stall else None
    try:
        return solve.fit(obs, order=5, n_starts=1, **kw)
    finally:
        solve.STALL = saved


# ------------------------------------------------------------------ the test itself
def test_stall_test_on_cost_sequences():
    """The rule on synthetic costs: a crawl (a constant relative fall of 1e-8 per
    iteration) stops exactly once two windows are full; linear convergence (falls
    shrinking by 0.9 an iteration, down to 1e-15 and beyond) never does, nor does a
    crawl that still makes progress above rtol."""
    K, rtol, ratio = 40, 1e-6, 0.5
    crawl = 1000.0 * (1 - 1e-8) ** np.arange(300)
    stops = [k for k in range(1, 301) if lm._stalled(list(crawl[:k]), K, rtol, ratio)]
    assert stops[0] == 2 * K + 1
    assert "stalled" in lm._stalled(list(crawl[: 2 * K + 1]), K, rtol, ratio)
    linear = 1000.0 + 10.0 * 0.9 ** np.arange(400)
    assert not any(lm._stalled(list(linear[:k]), K, rtol, ratio) for k in range(1, 401))
    fast_crawl = 1000.0 * (1 - 1e-7) ** np.arange(300)  # 4e-6 per window > rtol
    assert not any(lm._stalled(list(fast_crawl[:k]), K, rtol, ratio) for k in range(1, 301))


@pytest.mark.parametrize("bad", [(0, 1e-6, 0.5), (40, 0.0, 0.5), (40, 1e-6, -1.0),
                                 (40, 1e-6), "40", (40, "x", 0.5)])
def test_bad_stall_option_is_refused(bad):
    from gradfit.objective import Objective

    obj = Objective(lambda z: (z * z).sum(), 2, residual_fun=lambda z: z - 1.0)
    with pytest.raises(ValueError, match="'stall'"):
        lm.levenberg_marquardt(obj, np.zeros(2), SolverOptions(extra={"stall": bad}))


# ------------------------------------------------------------------- in oof.fit
def test_hopeless_fit_stops_early_and_says_stalled():
    """Peak SNR 1 (order 5, 33 x 33): without the stop the first start is still crawling
    at 300 iterations (it runs to the 1000 limit, 6 s); with it, it stops once the
    windows show the crawl (measured 134), not a success, and says why."""
    obs = simulate("effelsberg", order=5, snr=1.0, npix=33, seed=0)
    off = _fit(obs, stall=False, max_iter=300, errors="none")
    assert not off.success and "maximum number of iterations (300)" in off.fit["message"]
    on = _fit(obs, errors="none")
    assert 2 * WINDOW < on.fit["nit"] < 300
    assert not on.success
    msg = on.fit["message"]
    assert msg.startswith("stalled") and f"last {WINDOW} iterations" in msg
    # the model (a dim beam) describes noise-dominated maps: the message says so
    assert on.fit["normalised_residual"] <= solve.MISFIT_LIMIT
    assert "describes the data to the noise" in msg and "do not pin down" in msg


def test_stall_message_when_the_model_does_not_describe_the_data():
    class R:
        message = "stalled: the cost fell by only 1e-07"

    assert "does not describe the data (normalised residual 2.5 > 1.25)" in \
        solve._message(R, 2.5)
    R.message = "relative reduction of the cost below ftol=1e-15"
    assert solve._message(R, 2.5) == R.message  # other stops keep their message


def test_long_converging_fit_is_unchanged():
    """Peak SNR 10, seed 6: a converging fit with a long linear tail (217 iterations, the
    fall of -log L shrinking 500x from one 40-iteration window to the next): the stop
    must not fire; same iterations, message and coefficients as without it, and a model
    that describes the data (the coefficients themselves are poorly determined at this
    SNR: 0.26 waves rms error even from the true start)."""
    obs = simulate("effelsberg", order=5, snr=10.0, npix=33, seed=6)
    on, off = _fit(obs, errors="none"), _fit(obs, stall=False, errors="none")
    assert on.fit["nit"] > 2 * WINDOW  # long enough for the test to look at it
    assert on.success and on.fit["message"] == off.fit["message"]
    assert on.fit["nit"] == off.fit["nit"]
    np.testing.assert_array_equal(on.K_waves, off.K_waves)
    assert 0.9 < on.fit["normalised_residual"] < 1.1 and 0.9 < on.fit["chi2r"] < 1.1


def test_reference_file_is_unchanged():
    """A pyoof-made reference observation: the same fit with and without the stop (the
    full comparison with main's code is benchmarks/oof_compare_src.py)."""
    obs = io.read(DATA / "eff-n4-snr300.fits")
    order = json.loads((DATA / "eff-n4-snr300.truth.json").read_text())["zernike"]["order"]
    saved = solve.STALL
    try:
        on = solve.fit(obs, order=order, errors="none")
        solve.STALL = None
        off = solve.fit(obs, order=order, errors="none")
    finally:
        solve.STALL = saved
    assert on.success and on.fit["nit"] == off.fit["nit"]
    np.testing.assert_array_equal(on.K_waves, off.K_waves)
