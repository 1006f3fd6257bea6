"""Zernike circle polynomials in the Born & Wolf convention used by pyoof.

``U_n^l(rho, theta) = R_n^|l|(rho) cos(|l| theta)`` for ``l >= 0`` and
``R_n^|l|(rho) sin(|l| theta)`` for ``l < 0``, not normalised (``R_n^m(1) = 1``),
ordered by ``n`` and then ``l = -n, -n+2, ..., n``.
"""

from __future__ import annotations

import functools
from math import comb, factorial

import numpy as np
import torch

__all__ = ["zernike_labels", "zernike_count", "radial_poly", "zernike_basis",
           "monomial_labels", "zernike_monomials", "aperture_basis"]


def zernike_labels(order: int) -> list[tuple[int, int]]:
    """The ``(n, l)`` labels up to radial order ``order``, in the standard order.

    Parameters
    ----------
    order : int
        Highest radial order ``N >= 0``.

    Returns
    -------
    list of (n, l) tuples, ``(N + 1)(N + 2)/2`` of them.
    """
    order = _check_order(order)
    return [(n, l) for n in range(order + 1) for l in range(-n, n + 1, 2)]


def zernike_count(order: int) -> int:
    """Number of polynomials up to radial order ``order``: ``(N + 1)(N + 2)/2``."""
    order = _check_order(order)
    return (order + 1) * (order + 2) // 2


def _check_order(order) -> int:
    if isinstance(order, bool) or int(order) != order or order < 0:
        raise ValueError(f"Zernike order must be an integer >= 0, got {order!r}")
    return int(order)


def _radial_coeffs(n: int, m: int) -> list[tuple[int, float]]:
    """``[(power, coefficient), ...]`` of ``R_n^m``."""
    return [
        (n - 2 * s, (-1) ** s * factorial(n - s)
         / (factorial(s) * factorial((n + m) // 2 - s) * factorial((n - m) // 2 - s)))
        for s in range((n - m) // 2 + 1)
    ]


def radial_poly(n: int, m: int, rho, powers: dict | None = None):
    """Radial polynomial ``R_n^m(rho)`` (``m >= 0``, ``n - m`` even), with ``R_n^m(1) = 1``.

    Works on numpy arrays and torch tensors alike; ``powers`` (``k -> rho**k``)
    may hold precomputed powers.
    """
    if m < 0 or m > n or (n - m) % 2:
        raise ValueError(f"R_n^m needs 0 <= m <= n and n - m even, got n={n}, m={m}")
    out = 0.0 * rho
    for k, c in _radial_coeffs(n, m):
        out = out + c * (powers[k] if powers is not None else rho**k)
    return out


def zernike_basis(order: int, rho, theta, *, device=None, dtype=torch.float64) -> torch.Tensor:
    """All polynomials up to ``order`` evaluated at ``(rho, theta)``.

    Parameters
    ----------
    order : int
        Highest radial order.
    rho, theta : array_like or torch.Tensor
        Normalised radius ``r / pr`` and polar angle ``atan2(y, x)``, same shape ``S``.
    device, dtype :
        Where to create the result (default: the device of ``rho`` if a tensor, float64).

    Returns
    -------
    torch.Tensor of shape ``(K, *S)``, rows in the order of :func:`zernike_labels`.
    """
    labels = zernike_labels(order)
    if device is None and isinstance(rho, torch.Tensor):
        device = rho.device
    rho = torch.as_tensor(np.asarray(rho) if not isinstance(rho, torch.Tensor) else rho,
                          dtype=dtype, device=device)
    theta = torch.as_tensor(np.asarray(theta) if not isinstance(theta, torch.Tensor) else theta,
                            dtype=dtype, device=device)
    if rho.shape != theta.shape:
        raise ValueError(f"rho and theta must have the same shape, got {tuple(rho.shape)} "
                         f"and {tuple(theta.shape)}")
    powers = {0: torch.ones_like(rho)}
    for k in range(1, order + 1):
        powers[k] = powers[k - 1] * rho
    rows = []
    trig = {}
    for n, l in labels:
        m = abs(l)
        if (m, l >= 0) not in trig:
            trig[m, l >= 0] = torch.cos(m * theta) if l >= 0 else torch.sin(m * theta)
        rows.append(radial_poly(n, m, rho, powers) * trig[m, l >= 0])
    return torch.stack(rows)


def monomial_labels(order: int) -> list[tuple[int, int]]:
    """The exponents ``(a, b)`` of the monomials ``x^a y^b`` with ``a + b <= order``.

    Ordered by ``a``, then ``b`` (the order of :meth:`gradfit.oof.transforms.MFT.monomials`).
    """
    order = _check_order(order)
    return [(a, b) for a in range(order + 1) for b in range(order + 1 - a)]


def zernike_monomials(order: int) -> np.ndarray:
    """Coefficients ``C`` with ``U_k(x, y) = sum_m C[k, m] x^a_m y^b_m`` on the unit disc.

    Exact expansion (``x = rho cos theta``, ``y = rho sin theta``): ``rho^(n-2s) cos(l theta)``
    is ``(x^2 + y^2)^((n-2s-l)/2) Re (x + i y)^l`` (``Im`` for the sine terms).

    Returns
    -------
    numpy.ndarray ``(zernike_count(order), len(monomial_labels(order)))``
    """
    mono = {ab: i for i, ab in enumerate(monomial_labels(order))}
    C = np.zeros((zernike_count(order), len(mono)))
    for k, (n, l) in enumerate(zernike_labels(order)):
        m = abs(l)
        # Re or Im of (x + i y)^m: sum_j binom(m, j) x^(m-j) (i y)^j
        ang = {}
        for j in range(m + 1):
            if (j % 2 == 0) == (l >= 0):
                sign = (-1) ** (j // 2)
                ang[(m - j, j)] = ang.get((m - j, j), 0) + sign * comb(m, j)
        for p, c in _radial_coeffs(n, m):
            h = (p - m) // 2  # (x^2 + y^2)^h
            for t in range(h + 1):
                for (a, b), ca in ang.items():
                    C[k, mono[(a + 2 * t, b + 2 * (h - t))]] += c * comb(h, t) * ca
    return C


def aperture_basis(telescope, order: int, n: int):
    """The basis on the ``n x n`` cell centres over ``[-pr, pr]^2`` of a dish's aperture.

    Parameters
    ----------
    telescope : Telescope
        Gives ``primary_radius_m`` and ``illuminated(x, y)``.
    order : int
    n : int

    Returns
    -------
    U : numpy.ndarray ``(K, n_open)``
        The polynomials at the open cells, rows as :func:`zernike_labels`.
    open_ : numpy.ndarray of bool ``(n, n)``
        Open cells, indexed ``[y, x]``.
    x, y : numpy.ndarray ``(n_open,)``
        Their positions (metres).

    Every fit of a campaign (one dish, one order) draws its maps on the same grid, so
    the result is cached (the arrays are read-only); a telescope that cannot be hashed
    is computed afresh.
    """
    try:
        return _aperture_basis_cached(telescope, int(order), int(n))
    except TypeError:  # unhashable telescope-like object
        return _aperture_basis(telescope, int(order), int(n))


def _aperture_basis(telescope, order, n):
    pr = telescope.primary_radius_m
    ax = -pr + (np.arange(n) + 0.5) * (2 * pr / n)
    X, Y = np.meshgrid(ax, ax)
    open_ = np.asarray(telescope.illuminated(X, Y), dtype=bool)
    x, y = X[open_], Y[open_]
    U = zernike_basis(order, np.hypot(x, y) / pr, np.arctan2(y, x)).numpy()
    for a in (U, open_, x, y):
        a.setflags(write=False)
    return U, open_, x, y


_aperture_basis_cached = functools.lru_cache(maxsize=8)(_aperture_basis)
