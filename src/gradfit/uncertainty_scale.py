"""Errors for fits too large for a dense covariance matrix.

Above :data:`DENSE_LIMIT` free parameters the ``n × n`` Hessian is never formed.
The variances (the diagonal of its inverse, ``C = A⁻¹``, with ``A = JᵀJ`` for
Gaussian least squares and the Hessian of −log L otherwise) come from conjugate
gradient solves against products ``A v``:

* ``'cg'``: exact marginal variances ``C_ii = e_iᵀ A⁻¹ e_i`` of chosen parameters,
  one solve each (all of them, diagonal only, when none are chosen).
* ``'hutchinson'``: a stochastic estimate of the whole diagonal,
  ``diag(C) ≈ mean_k v_k ⊙ A⁻¹ v_k`` over Rademacher vectors ``v_k`` (Bekas,
  Kokiopoulou & Saad 2007), one solve per probe, with its standard error per
  element from the spread over probes.

The result always names the method that made it (``FitResult.error_method``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .solvers.lm_cg import pcg
from .uncertainty import FitWarning

__all__ = ["DENSE_LIMIT", "ScaleErrors", "operator", "marginal_variances",
           "hutchinson_diagonal", "variances"]

#: Largest number of free parameters for which the dense covariance is formed.
DENSE_LIMIT = 2000


@dataclass(frozen=True)
class ScaleErrors:
    """Variances of the free parameters and how they were obtained.

    Attributes
    ----------
    var : ndarray
        Variance per free parameter (NaN where not computed or not constrained).
    method : str
        ``'cg'`` or ``'hutchinson'``, with the operator (``gauss-newton``/``hessian``).
    rel_std : ndarray or None
        Estimated relative standard error of each stochastic variance.
    """

    var: np.ndarray
    method: str
    rel_std: np.ndarray | None = None


def operator(obj, theta: torch.Tensor, gauss_newton: bool):
    """``(matvec, diag)``: ``A v`` and an estimate of ``diag(A)`` at ``theta``.

    ``A = JᵀJ`` (from one retained linearisation) when ``gauss_newton``, else the
    Hessian of the objective by Hessian-vector products; its diagonal for the
    preconditioner is then estimated by ``mean_k v_k ⊙ A v_k`` (clamped positive).
    """
    if gauss_newton:
        lin = obj.linearize(theta)
        return lin.matvec, lin.diag()
    def matvec(v):
        return obj.hvp(theta, v)

    gen = torch.Generator(device=theta.device).manual_seed(1)
    acc = torch.zeros_like(theta)
    probes = 8
    for _ in range(probes):
        v = 2.0 * torch.randint(0, 2, theta.shape, generator=gen, device=theta.device).to(
            theta.dtype) - 1.0
        acc += v * matvec(v)
    d = acc / probes
    d = torch.where(d > 0, d, d.abs().max().clamp(min=1.0) * torch.ones_like(d))
    return matvec, d


def _solve(matvec, b, diag, rtol, max_cg):
    x, _, it, ok, positive = pcg(matvec, b, diag, rtol, max_cg)
    return x, ok, positive


def marginal_variances(matvec, diag, n: int, indices, *, rtol: float = 1e-10,
                       max_cg: int | None = None) -> tuple[np.ndarray, list[int]]:
    """Exact ``(A⁻¹)_ii`` for each ``i`` in ``indices`` by one CG solve each.

    Returns the variances (NaN elsewhere) and the indices whose solve did not
    converge or met non-positive curvature.
    """
    max_cg = max_cg or max(2 * n, 50)
    var = np.full(n, np.nan)
    bad = []
    for i in indices:
        e = torch.zeros(n, dtype=diag.dtype, device=diag.device)
        e[i] = 1.0
        x, ok, positive = _solve(matvec, e, diag, rtol, max_cg)
        xi = float(x[i])
        if positive and ok and xi > 0:
            var[i] = xi
        else:
            bad.append(int(i))
    return var, bad


def hutchinson_diagonal(matvec, diag, n: int, *, probes: int = 32, seed: int = 0,
                        rtol: float = 1e-5, max_cg: int | None = None):
    """Stochastic ``diag(A⁻¹)`` from ``probes`` Rademacher solves.

    Returns ``(estimate, relative standard error per element, solves that failed)``.
    """
    if probes < 2:
        raise ValueError(f"hutchinson needs probes >= 2, got {probes}")
    max_cg = max_cg or max(2 * n, 50)
    gen = torch.Generator(device=diag.device).manual_seed(int(seed))
    s1 = torch.zeros(n, dtype=diag.dtype, device=diag.device)
    s2 = torch.zeros_like(s1)
    failed = 0
    for _ in range(probes):
        v = 2.0 * torch.randint(0, 2, (n,), generator=gen, device=diag.device).to(
            diag.dtype) - 1.0
        x, ok, positive = _solve(matvec, v, diag, rtol, max_cg)
        if not positive:
            failed += 1
            continue
        t = v * x
        s1 += t
        s2 += t * t
    k = probes - failed
    if k < 2:
        return np.full(n, np.nan), np.full(n, np.nan), failed
    mean = s1 / k
    sd = torch.sqrt(torch.clamp(s2 / k - mean * mean, min=0.0) * k / (k - 1))
    est = mean.cpu().numpy().astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = (sd / math.sqrt(k)).cpu().numpy().astype(np.float64) / np.abs(est)
    est[est <= 0] = np.nan
    return est, rel, failed


def variances(obj, theta: torch.Tensor, gauss_newton: bool, labels: list[str], *,
              method: str = "hutchinson", which=None, probes: int = 32, seed: int = 0,
              rtol: float | None = None, max_cg: int | None = None) -> ScaleErrors:
    """Variances of the free parameters without forming the ``n × n`` matrix.

    Parameters
    ----------
    obj : Objective
        In the physical parameters ``theta``.
    theta : Tensor
        The optimum.
    gauss_newton : bool
        Use ``JᵀJ`` (Gaussian least squares) rather than the Hessian.
    labels : list of str
        Labels of the free elements (for ``which`` and for warnings).
    method : {'cg', 'hutchinson'}
    which : list of str, optional
        For ``'cg'``: the labels to compute (default all, one solve each).
    probes, seed :
        For ``'hutchinson'``.
    rtol, max_cg :
        CG tolerance (default 1e-10 for ``'cg'``; 1e-5 for ``'hutchinson'``, whose
        own sampling error, about ``sqrt(2/probes)``, is far larger) and
        iteration limit per solve (default ``max(2n, 50)``).
    """
    n = len(labels)
    if method not in ("cg", "hutchinson"):
        raise ValueError(f"unknown large-scale error method {method!r}; choose 'cg' or "
                         "'hutchinson'")
    matvec, diag = operator(obj, theta, gauss_newton)
    op = "gauss-newton" if gauss_newton else "hessian"
    if method == "cg":
        if which is None:
            idx = list(range(n))
        else:
            missing = [w for w in which if w not in labels]
            if missing:
                raise ValueError(f"errors for unknown parameter label(s) {missing}; free "
                                 f"labels are e.g. {labels[:5]}")
            idx = [labels.index(w) for w in which]
        var, bad = marginal_variances(matvec, diag, n, idx,
                                      rtol=1e-10 if rtol is None else rtol, max_cg=max_cg)
        if bad:
            warnings.warn(
                f"CG solves for the errors of {', '.join(labels[i] for i in bad[:10])} did not "
                f"converge or met non-positive curvature of the {op} matrix; their errors are NaN",
                FitWarning, stacklevel=4)
        return ScaleErrors(var, f"cg-{op} ({len(idx)} marginal solves)")
    est, rel, failed = hutchinson_diagonal(matvec, diag, n, probes=probes, seed=seed,
                                           rtol=1e-5 if rtol is None else rtol, max_cg=max_cg)
    if failed:
        warnings.warn(f"{failed} of {probes} Hutchinson solves met non-positive curvature of "
                      f"the {op} matrix (not at a minimum?)", FitWarning, stacklevel=4)
    med = float(np.nanmedian(rel)) if np.isfinite(rel).any() else math.nan
    return ScaleErrors(est, f"hutchinson-{op} ({probes} probes, median relative standard "
                            f"error of the variances {med:.2g})", rel)
