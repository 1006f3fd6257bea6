"""BIC order selection on problems with a known true order."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.polynomial import legendre

from gradfit.oof.order import select_order


def _problem(seed, degree, n=200, sigma=1.0):
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, n)
    coef = np.zeros(degree + 1)
    coef[:] = 3.0  # every true term clearly detectable at this noise
    y = legendre.legval(x, coef) + rng.normal(0, sigma, n)

    def fit_at(order):
        A = legendre.legvander(x, order)
        c = np.linalg.lstsq(A, y, rcond=None)[0]
        return float(np.sum((y - A @ c) ** 2) / sigma**2), order + 1, c

    return fit_at, n


@pytest.mark.parametrize("degree", [3, 5])
def test_picks_the_true_order(degree):
    picks = []
    for seed in range(20):
        fit_at, n = _problem(seed, degree)
        picks.append(select_order(fit_at, range(1, 10), n).order)
    picks = np.array(picks)
    assert np.mean(picks == degree) >= 0.85, picks
    assert np.all(picks >= degree), picks  # a real term is never dropped


def test_reason_table_and_early_stop():
    fit_at, n = _problem(1, 3)
    seen = []
    choice = select_order(fit_at, range(1, 12), n, patience=2, progress=seen.append)
    assert choice.order == 3
    assert [s.order for s in choice.steps] == [1, 2, 3, 4, 5]  # stopped after two worse
    assert len(seen) == 5 and choice.result.shape == (4,)
    assert "order 3 has the lowest BIC" in choice.reason and "order 4 adds 1 parameters" in (
        choice.reason)
    assert "<- lowest BIC" in choice.table().splitlines()[3]
    step = choice.steps[2]
    assert step.bic == pytest.approx(step.chi2 + 4 * np.log(n))
    assert step.chi2r == pytest.approx(step.chi2 / (n - 4))
    top = select_order(fit_at, [1, 2], n)
    assert "highest order tried" in top.reason
    penalised = select_order(fit_at, range(1, 8), n, n_eff=50)
    assert "N_eff = 50 of 200" in penalised.reason
    assert penalised.steps[0].bic == pytest.approx(penalised.steps[0].chi2 + 2 * np.log(50))


def test_bad_arguments():
    fit_at, n = _problem(0, 2)
    with pytest.raises(ValueError, match="orders must increase"):
        select_order(fit_at, [3, 2], n)
    with pytest.raises(ValueError, match="no orders"):
        select_order(fit_at, [], n)
    with pytest.raises(ValueError, match="n_eff must be in"):
        select_order(fit_at, [1], n, n_eff=2 * n)
    with pytest.raises(ValueError, match="patience"):
        select_order(fit_at, [1], n, patience=0)
