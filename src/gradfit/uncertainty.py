"""Covariance from the Hessian of −log L (or −log posterior) at the optimum."""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["FitWarning", "covariance_from_hessian", "correlation"]


class FitWarning(UserWarning):
    """A fit finished but something about its result deserves attention."""


def covariance_from_hessian(H: np.ndarray, labels: list[str]) -> np.ndarray:
    """Invert a Hessian into a covariance matrix, honestly.

    A non-finite, singular or non-positive-definite Hessian does not crash and
    does not give a silent number: the parameters involved in its zero or
    negative curvature directions get NaN variances (and NaN covariances), a
    :class:`FitWarning` names them, and the other parameters keep the
    covariance of the well-determined block.
    """
    H = np.asarray(H, dtype=np.float64)
    n = H.shape[0]
    if n == 0:
        return np.zeros((0, 0))
    if not np.all(np.isfinite(H)):
        bad = sorted({labels[i] for i in np.argwhere(~np.isfinite(H)).ravel()})
        warnings.warn(
            f"the Hessian is not finite for parameters {', '.join(bad)}; their errors are NaN",
            FitWarning, stacklevel=3)
        cov = np.full((n, n), np.nan)
        good = [i for i in range(n) if labels[i] not in bad]
        if good:
            sub = covariance_from_hessian(H[np.ix_(good, good)], [labels[i] for i in good])
            cov[np.ix_(good, good)] = sub
        return cov
    # scale to unit diagonal first so the test for singularity is scale-free
    d = np.sqrt(np.abs(np.diag(H)))
    d[d == 0] = 1.0
    Hs = H / np.outer(d, d)
    w, V = np.linalg.eigh(Hs)
    tol = max(np.max(np.abs(w)), 1.0) * n * 1e-12
    bad_dirs = w <= tol
    if not np.any(bad_dirs) and np.all(np.diag(H) > 0):
        cov_s = (V / w) @ V.T
        cov = cov_s / np.outer(d, d)
        return 0.5 * (cov + cov.T)
    weight = np.abs(V[:, bad_dirs]).max(axis=1) if np.any(bad_dirs) else np.zeros(n)
    offending = (weight > 0.1) | (np.diag(H) <= 0)
    names = [labels[i] for i in np.flatnonzero(offending)]
    kind = "not positive definite" if np.any(w < -tol) else "singular"
    warnings.warn(
        f"the Hessian at the optimum is {kind}; parameters {', '.join(names)} are not "
        "constrained (degenerate, or the fit is not at a minimum): their errors are NaN",
        FitWarning, stacklevel=3)
    cov = np.full((n, n), np.nan)
    good = np.flatnonzero(~offending)
    if good.size:
        sub = H[np.ix_(good, good)]
        try:
            cov[np.ix_(good, good)] = np.linalg.inv(sub)
        except np.linalg.LinAlgError:
            pass
    return cov


def correlation(cov: np.ndarray) -> np.ndarray:
    """Correlation matrix from a covariance matrix (NaN where a variance is NaN or zero)."""
    sd = np.sqrt(np.diag(cov))
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov / np.outer(sd, sd)
