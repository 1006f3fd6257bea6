"""Per-pixel uncertainty of the OOF surface-error map.

The aperture phase is linear in the Zernike coefficients, ``phase(x) = s Σ_k c_k U_k(x)``
(``s = 1`` for coefficients in radians, ``2π`` in waves), and the surface map is
``phase × λ / (4π)`` after the least-squares piston and tilt over the open aperture are
removed (as :meth:`gradfit.oof.solve.Solution.surface_map` does). Removing them is a
linear projection ``P``, so with ``u(x) = s λ/(4π) (P Uᵀ)[x, :]`` the variance of the
surface at pixel ``x`` is ``σ(x)² = u(x)ᵀ C u(x)`` for a coefficient covariance ``C``.

The functions take plain arrays (basis values on the pixels, a covariance, the
wavelength), so they serve any fit that produces Zernike coefficients.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["surface_error_map", "surface_error_map_from_samples", "surface_maps",
           "solution_error_map"]

_UNITS = {"rad": 1.0, "waves": 2.0 * math.pi}


def _prepare(basis, wavelength_m, unit, remove, mask, weights):
    """Flatten the basis to the open pixels and build the projected, scaled design."""
    U = np.asarray(basis, dtype=np.float64)
    if U.ndim < 2:
        raise ValueError(f"basis must have shape (K, ny, nx) or (K, npix), got {U.shape}")
    K = U.shape[0]
    grid_shape = U.shape[1:]
    U = U.reshape(K, -1)
    if unit not in _UNITS:
        raise ValueError(f"unknown unit {unit!r}; choose 'rad' (phase = Σ c U) or 'waves' "
                         "(phase = 2π Σ c U)")
    if not (isinstance(wavelength_m, (int, float, np.floating)) and wavelength_m > 0
            and math.isfinite(wavelength_m)):
        raise ValueError(f"wavelength_m must be a positive number of metres, got "
                         f"{wavelength_m!r}")
    if wavelength_m > 1.0:
        raise ValueError(f"wavelength_m = {wavelength_m!r} is over a metre; give the "
                         "wavelength in metres (e.g. 9.4e-3 for 32 GHz)")
    open_ = np.all(np.isfinite(U), axis=0)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != grid_shape:
            raise ValueError(f"mask has shape {m.shape} but the basis grid is {grid_shape}")
        open_ &= m.reshape(-1)
    if not open_.any():
        raise ValueError("no open pixels: the mask (or the basis' finite values) leaves none")
    Uo = U[:, open_].T  # (npix_open, K)
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != grid_shape:
            raise ValueError(f"weights have shape {w.shape} but the basis grid is {grid_shape}")
        w = w.reshape(-1)[open_]
        if np.any(~np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
            raise ValueError("weights must be finite, >= 0 and not all zero on open pixels")
    A = _removed_modes(remove, U, open_, grid_shape, K)
    if A is not None:
        # residual of each basis column after the (weighted) least-squares fit of the
        # removed modes over the open pixels: the projection P Uᵀ
        sw = np.sqrt(w)[:, None] if w is not None else 1.0
        coef, *_ = np.linalg.lstsq(A * sw, Uo * sw, rcond=None)
        Uo = Uo - A @ coef
    scale = _UNITS[unit] * wavelength_m / (4.0 * math.pi) * 1e6  # -> micrometres
    return Uo * scale, open_, grid_shape, K


def _removed_modes(remove, U, open_, grid_shape, K):
    if remove is None or (isinstance(remove, str) and remove == "none"):
        return None
    if isinstance(remove, str):
        rows = {"piston": [0], "piston-tilt": [0, 1, 2]}.get(remove)
        if rows is None:
            raise ValueError(f"unknown remove={remove!r}; choose 'piston-tilt', 'piston', "
                             "'none', or pass mode arrays of shape (M, *grid)")
        if K < len(rows):
            raise ValueError(f"remove={remove!r} needs the basis rows (0, 0), (1, -1), (1, 1) "
                             f"in the standard order, but the basis has only {K} rows")
        return U[rows][:, open_].T
    A = np.asarray(remove, dtype=np.float64)
    if A.shape[1:] != grid_shape:
        raise ValueError(f"remove modes have shape {A.shape}; expected (M, *{grid_shape})")
    A = A.reshape(A.shape[0], -1)[:, open_].T
    if not np.all(np.isfinite(A)):
        raise ValueError("remove modes are not finite on the open pixels")
    return A


def _unflatten(values, open_, grid_shape):
    out = np.full(open_.size, np.nan)
    out[open_] = values
    return out.reshape(grid_shape)


def _check_cov(cov, K):
    C = np.asarray(cov, dtype=np.float64)
    if C.shape != (K, K):
        raise ValueError(f"cov has shape {C.shape}; the basis has {K} rows, so it must be "
                         f"({K}, {K}) (zero rows and columns for fixed coefficients)")
    bad = ~np.isfinite(C)
    if bad.any():
        i = sorted(set(np.argwhere(bad).ravel().tolist()))
        raise ValueError(f"cov is not finite in rows/columns {i}; set fixed or unconstrained "
                         "coefficients to 0 or drop them from the basis")
    return 0.5 * (C + C.T)


def surface_error_map(basis, cov, wavelength_m: float, *, unit: str = "rad",
                      remove="piston-tilt", mask=None, weights=None) -> np.ndarray:
    """The 1σ uncertainty of the surface-error map, per pixel, in micrometres.

    Parameters
    ----------
    basis : array_like, shape (K, ny, nx) or (K, npix)
        The K Zernike polynomials (or any basis the phase is linear in) on the pixels,
        rows in the order of the coefficients. Pixels where any row is NaN count as
        blocked.
    cov : array_like, shape (K, K)
        Covariance of the coefficients, in ``unit``; zero rows and columns for fixed
        coefficients (e.g. piston).
    wavelength_m : float
        Observing wavelength in metres.
    unit : {'rad', 'waves'}
        Unit of the coefficients: the phase is ``Σ c U`` radians, or ``2π Σ c U`` for waves.
    remove : 'piston-tilt', 'piston', 'none' or array_like (M, ...)
        What the surface map subtracts before display: the least-squares fit over the
        open pixels of the first three basis rows (piston and tilts in the standard
        order (0, 0), (1, −1), (1, 1); the same span as ``1, x, y``), of the first row
        only, nothing, or of the given modes on the same grid.
    mask : array_like of bool, optional
        Open pixels (True) on the grid; others are NaN in the output.
    weights : array_like, optional
        Weights of the least-squares removal (default: uniform, as
        ``Solution.surface_map``).

    Returns
    -------
    numpy.ndarray
        ``σ`` in micrometres with the grid's shape, NaN outside the open pixels.
    """
    B, open_, grid_shape, K = _prepare(basis, wavelength_m, unit, remove, mask, weights)
    C = _check_cov(cov, K)
    var = np.einsum("pk,pk->p", B @ C, B)
    return _unflatten(np.sqrt(np.clip(var, 0.0, None)), open_, grid_shape)


def surface_maps(coeffs, basis, wavelength_m: float, *, unit: str = "rad",
                 remove="piston-tilt", mask=None, weights=None) -> np.ndarray:
    """Surface-error maps (micrometres) for one or more coefficient vectors.

    Parameters
    ----------
    coeffs : array_like, shape (K,) or (S, K)
    basis, wavelength_m, unit, remove, mask, weights :
        As for :func:`surface_error_map`.

    Returns
    -------
    numpy.ndarray
        Shape ``(*grid)`` or ``(S, *grid)``, NaN outside the open pixels.
    """
    B, open_, grid_shape, K = _prepare(basis, wavelength_m, unit, remove, mask, weights)
    c = np.asarray(coeffs, dtype=np.float64)
    if c.shape[-1] != K or c.ndim > 2:
        raise ValueError(f"coeffs must have shape ({K},) or (S, {K}), got {c.shape}")
    maps = np.atleast_2d(c) @ B.T
    out = np.stack([_unflatten(m, open_, grid_shape) for m in maps])
    return out[0] if c.ndim == 1 else out


def surface_error_map_from_samples(samples, basis, wavelength_m: float, *, unit: str = "rad",
                                   remove="piston-tilt", mask=None,
                                   weights=None) -> np.ndarray:
    """Pixel-wise standard deviation of the surface maps of posterior samples (µm).

    The standard deviation over samples of the (linear) surface maps equals
    :func:`surface_error_map` with the samples' covariance, which is how it is computed
    (no map per sample is stored).

    Parameters
    ----------
    samples : array_like, shape (S, K)
        Coefficient draws (e.g. ``Samples.samples["K"]``, with a zero column for a fixed
        piston), ``S >= 2``.
    basis, wavelength_m, unit, remove, mask, weights :
        As for :func:`surface_error_map`.

    Returns
    -------
    numpy.ndarray
        ``σ`` in micrometres with the grid's shape, NaN outside the open pixels.
    """
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] < 2:
        raise ValueError(f"samples must have shape (S, K) with S >= 2, got {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("samples contain non-finite values")
    C = np.atleast_2d(np.cov(s, rowvar=False))
    return surface_error_map(basis, C, wavelength_m, unit=unit, remove=remove, mask=mask,
                             weights=weights)


def _solution_basis(sol, n: int):
    """The Zernike basis on the ``n x n`` cell centres of ``Solution.surface_map(n)``."""
    from .zernike import aperture_basis

    Uo, open_, _, _ = aperture_basis(sol.telescope, sol.order, n)
    U = np.full((len(sol.labels), n, n), np.nan)
    U[:, open_] = Uo
    return U, open_


def _k_columns(names, nk):
    """Indices of ``K[0] .. K[nk-2]`` (the coefficients without piston) in ``names``."""
    idx = []
    for i in range(nk - 1):
        label = f"K[{i}]"
        idx.append(names.index(label) if label in names else None)
    return idx


def solution_error_map(sol, n: int = 256, samples=None) -> np.ndarray:
    """Surface-error uncertainty (µm) on the grid of ``Solution.surface_map(n)``.

    Parameters
    ----------
    sol : gradfit.oof.solve.Solution
        An OOF fit; its ``result.cov`` gives the coefficient covariance (the other
        fitted parameters are marginalised by taking the ``K`` block).
    n : int
        Cells across the dish, as for ``surface_map``.
    samples : array_like or gradfit.Samples, optional
        Posterior draws of the coefficients (``(S, K)`` with piston, ``(S, K - 1)``
        without, or a :class:`gradfit.Samples` with a ``'K'`` parameter); then the map
        is their pixel-wise standard deviation.

    Returns
    -------
    numpy.ndarray
        ``(n, n)``, indexed ``[y, x]``, NaN where the aperture is blocked; piston and
        tilt are removed as in ``surface_map``.
    """
    nk = len(sol.labels)
    if samples is not None:
        U, open_ = _solution_basis(sol, int(n))
        draws = samples.samples["K"] if hasattr(samples, "samples") else samples
        draws = np.asarray(draws, dtype=np.float64)
        if draws.ndim == 2 and draws.shape[1] == nk - 1:
            draws = np.concatenate([np.zeros((draws.shape[0], 1)), draws], axis=1)
        return surface_error_map_from_samples(draws, U, sol.wavelength_m, unit="waves",
                                              mask=open_)
    from .zernike import aperture_basis

    open_ = aperture_basis(sol.telescope, sol.order, int(n))[1]
    res = sol.result
    names = list(res.names)
    cov = np.asarray(res.cov, dtype=np.float64)
    C = np.zeros((nk, nk))
    cols = _k_columns(names, nk)
    for a, ia in enumerate(cols):
        for b, ib in enumerate(cols):
            if ia is not None and ib is not None:
                C[a + 1, b + 1] = cov[ia, ib]
    if not np.all(np.isfinite(C)):
        # a degenerate fit (e.g. all samples at one sky position): the errors are
        # unknown, which the map says with NaN instead of stopping the output step
        import warnings

        bad = sorted({int(i) for i in np.argwhere(~np.isfinite(C)).ravel()})
        warnings.warn(f"surface error map: coefficient errors are not finite (rows {bad}); "
                      "the map is NaN", UserWarning, stacklevel=2)
        out = np.full(open_.shape, np.nan)
        return out
    # the piston-and-tilt-free design of surface_error_map(U, C, unit="waves", mask=open_),
    # shared by every fit of one dish and order (a campaign's) instead of refitted per map
    P = _projected_basis(sol.telescope, sol.order, int(n))
    scale = _UNITS["waves"] * sol.wavelength_m / (4.0 * math.pi) * 1e6
    var = np.einsum("pk,pk->p", P @ _check_cov(C, nk), P) * scale**2
    return _unflatten(np.sqrt(np.clip(var, 0.0, None)), open_.ravel(), open_.shape)


def _projected_basis(telescope, order: int, n: int) -> np.ndarray:
    """Open-cell basis ``(n_open, K)`` less its least-squares piston and tilt (cached as
    :func:`gradfit.oof.zernike.aperture_basis` is)."""
    try:
        return _projected_cached(telescope, order, n)
    except TypeError:  # unhashable telescope-like object: no cache
        return _projected(telescope, order, n)


def _projected(telescope, order, n):
    from .zernike import aperture_basis

    U = aperture_basis(telescope, order, n)[0]
    Uo, A = U.T, U[:3].T
    P = Uo - A @ np.linalg.lstsq(A, Uo, rcond=None)[0]
    P.setflags(write=False)
    return P


_projected_cached = functools.lru_cache(maxsize=8)(_projected)
