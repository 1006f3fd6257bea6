"""Two-sided statistical checks shared by the tests: each fails when the reported errors
are too small AND when they are too large, with a tolerance from the number of trials.

All bands are central intervals of probability ``1 - p`` (default p = 1e-3) of the
distribution the statistic has when the errors are honest; the tests are seeded, so a
pass or a fail is reproducible.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

P_FAIL = 1e-3


def chi2_band(dof: int, p: float = P_FAIL) -> tuple[float, float]:
    """Central ``1 - p`` interval of a chi-square variable with ``dof`` degrees of freedom."""
    return float(stats.chi2.ppf(p / 2, dof)), float(stats.chi2.isf(p / 2, dof))


def assert_chi2(total: float, dof: int, what: str = "", p: float = P_FAIL) -> None:
    """``total`` (a sum of squared pulls, or of ``d' C^-1 d`` over independent fits) is
    chi-square with ``dof`` degrees of freedom when the errors are honest: below the band,
    the errors are too large; above it, too small."""
    lo, hi = chi2_band(dof, p)
    assert lo <= total <= hi, (
        f"{what}: chi2 = {total:.1f} for {dof} dof is outside [{lo:.1f}, {hi:.1f}]; "
        f"errors look {'too large' if total < lo else 'too small'} "
        f"(scale {np.sqrt(total / dof):.3f})")


def assert_pulls(pulls, what: str = "", p: float = P_FAIL) -> None:
    """Independent pulls ``(estimate - truth) / error``: sum of squares chi-square(n) and
    mean within the normal band of ``1 / sqrt(n)``."""
    pulls = np.asarray(pulls, dtype=float).ravel()
    n = pulls.size
    assert np.all(np.isfinite(pulls)), f"{what}: non-finite pulls"
    assert_chi2(float(np.sum(pulls**2)), n, what, p)
    z = float(stats.norm.isf(p / 2))
    assert abs(pulls.mean()) <= z / np.sqrt(n), f"{what}: pull mean {pulls.mean():.3f}"


def assert_coverage(hits: int, n: int, cl: float = 0.6827, what: str = "",
                    p: float = P_FAIL) -> None:
    """``hits`` of ``n`` independent intervals of confidence ``cl`` contain the truth:
    binomial(n, cl) when the errors are honest."""
    lo = int(stats.binom.ppf(p / 2, n, cl))
    hi = int(stats.binom.isf(p / 2, n, cl))
    assert lo <= hits <= hi, (
        f"{what}: {hits} of {n} ({hits / n:.3f}) inside, expected {cl:.4f} "
        f"(band {lo}..{hi}); errors look {'too small' if hits < lo else 'too large'}")


def mahalanobis(d, cov) -> float:
    """``d' C^-1 d`` for a vector of differences and its covariance."""
    d = np.asarray(d, dtype=float)
    return float(d @ np.linalg.solve(np.asarray(cov, dtype=float), d))
