"""A NumPy reference of the OOF holography likelihood, and its PyTorch twin.

This module is the "before" and "after" of gradfit's central claim. The NumPy
function :func:`neg_log_likelihood_numpy` is written the way a scientist would
write it with ``numpy.fft`` (pyoof-like); :func:`neg_log_likelihood_torch` is
the same function with ``np`` replaced by ``torch`` in four lines. The NumPy
one is fitted with ``scipy.optimize.minimize(method="BFGS")`` and
finite-difference gradients; the torch one with the
same BFGS but the exact autodiff gradient, f and ∇f from one pass, or with
gradfit's own minimiser; the fitting recipes live in :mod:`gradfit.bench.scaling`.

Physics and conventions follow pyoof (see ``tests/data/oof-pyoof/README.md``):

- Zernike circle polynomials after Born & Wolf, not normalised (R_n^m(1) = 1),
  cos for l >= 0, sin for l < 0, rho = r / pr, ordered by n then l.
- Aperture field E = B Ea exp(i phase), phase = 2 pi (sum K U + delta / lambda),
  K in waves, delta the Gregorian defocus path of Effelsberg.
- Pedestal illumination Ea = i_amp (C + (1 - C) (1 - (r/pr)^2)^q), C = 10^(c_dB/20).
- Effelsberg blockage (sub-reflector, four legs, their shadows), point-sampled.
- F(u, v) with numpy's forward-FFT sign, x along columns (u), y along rows (v); P = |F|^2.

Sampling. The aperture is sampled on ``nn x nn`` cell centres over the dish's
bounding square [-pr, pr]^2 and zero-padded to ``2 nn`` by the FFT. Padding by
two makes the FFT bins sample P at its Nyquist spacing lambda / (4 pr), that
is 2.44 samples per beam width 1.22 lambda / D; each beam map is the central
``nn x nn`` block of FFT bins (picked by index, which is ``fftshift`` and a crop
without copying the whole padded grid), so no interpolation is needed and a
map of ``nn x nn`` points costs FFTs of ``2 nn x 2 nn``. pyoof puts its aperture in
the middle of a larger grid (``box`` times the radius); where the aperture
sits in the padded grid changes F by a linear phase only, so P is the same.

The free parameters, one flat float64 vector, are
``theta = [i_amp, c_dB, K(1,-1), K(1,1), ..., K(N,N)]``; K(0,0) is a constant
phase, which no power map can see, so it is left out (as pyoof fixes it).
Maps are divided by one fixed number, the peak of the noiseless in-focus map
at the truth, so the model is smooth in every parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from math import factorial, pi

import numpy as np

__all__ = [
    "OOFSetup",
    "zernike_nl",
    "zernike_radial",
    "zernike_basis",
    "effelsberg_blockage",
    "gregorian_opd",
    "make_setup",
    "simulate",
    "neg_log_likelihood_numpy",
    "neg_log_likelihood_torch",
    "neg_log_likelihood_jax",
    "EFFELSBERG",
]

#: Effelsberg constants, as in ``pyoof.telgeometry`` (metres, degrees).
EFFELSBERG = {
    "pr": 50.0,
    "Fp": 30.0,
    "F_eff": 387.39435,
    "sr": 3.25,
    "leg_half_width": 1.0,
    "leg_length": 20.0,
    "shadow_angle_deg": 10.0,
}


# ---------------------------------------------------------------- geometry
def zernike_nl(order: int) -> list[tuple[int, int]]:
    """The (n, l) labels of all Zernike polynomials up to ``order``, pyoof's order.

    Parameters
    ----------
    order : int
        Highest radial degree N (>= 0).

    Returns
    -------
    list of (int, int)
        ``(n, l)`` for n = 0..N and l = -n, -n+2, ..., n; ``(N+1)(N+2)/2`` entries.
    """
    if not isinstance(order, (int, np.integer)) or order < 0:
        raise ValueError(f"order must be a non-negative integer, got {order!r}")
    return [(n, l) for n in range(order + 1) for l in range(-n, n + 1, 2)]


def zernike_radial(n: int, m: int, rho: np.ndarray) -> np.ndarray:
    """Born & Wolf radial polynomial R_n^m(rho), not normalised (R_n^m(1) = 1).

    Parameters
    ----------
    n, m : int
        Radial degree and azimuthal order, ``0 <= m <= n`` and ``n - m`` even.
    rho : array_like
        Normalised radius.

    Returns
    -------
    numpy.ndarray
        R_n^m(rho), same shape as ``rho``.
    """
    if m < 0 or m > n or (n - m) % 2:
        raise ValueError(f"no radial polynomial R_n^m for n={n}, m={m}: need 0 <= m <= n, n-m even")
    rho = np.asarray(rho, dtype=np.float64)
    out = np.zeros_like(rho)
    for k in range((n - m) // 2 + 1):
        c = (-1) ** k * factorial(n - k) / (
            factorial(k) * factorial((n + m) // 2 - k) * factorial((n - m) // 2 - k)
        )
        out += c * rho ** (n - 2 * k)
    return out


def zernike_basis(order: int, rho: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """All U_n^l(rho, theta) up to ``order``, stacked along a new first axis.

    Parameters
    ----------
    order : int
        Highest radial degree N.
    rho, theta : numpy.ndarray
        Normalised radius and polar angle ``atan2(y, x)``, same shape.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_coeff,) + rho.shape``, in the order of :func:`zernike_nl`.
    """
    planes = []
    for n, l in zernike_nl(order):
        r = zernike_radial(n, abs(l), rho)
        planes.append(r * (np.cos(abs(l) * theta) if l >= 0 else np.sin(abs(l) * theta)))
    return np.stack(planes)


def effelsberg_blockage(x: np.ndarray, y: np.ndarray, tel: dict | None = None) -> np.ndarray:
    """Effelsberg's blockage B(x, y) (1 = open, 0 = blocked), point-sampled.

    The sub-reflector, four support legs along +-x and +-y and their wedge-shaped
    shadows, as ``pyoof.telgeometry.block_effelsberg`` builds them (all
    inequalities strict).

    Parameters
    ----------
    x, y : numpy.ndarray
        Aperture coordinates in metres, broadcastable.
    tel : dict, optional
        Telescope constants; default :data:`EFFELSBERG`.

    Returns
    -------
    numpy.ndarray
        float64 array of zeros and ones.
    """
    t = EFFELSBERG if tel is None else tel
    pr, sr, a = t["pr"], t["sr"], t["leg_half_width"]
    A = sr + t["leg_length"]
    alpha = math.radians(t["shadow_angle_deg"])
    s2 = math.sin(alpha) ** 2
    d = (-a + math.sqrt(a * a - (a * a - pr * pr) / s2)) * s2
    C = d / math.tan(alpha)
    D = a + d
    x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
    r2 = x * x + y * y
    open_ = (r2 > sr * sr) & (r2 < pr * pr)
    open_ &= ~((np.abs(x) < A) & (np.abs(y) < a))
    open_ &= ~((np.abs(y) < A) & (np.abs(x) < a))
    # one arm along +s; the four arms are (s, t) = (x, y), (-x, y), (y, x), (-y, x)
    for s, q in ((x, y), (-x, y), (y, x), (-y, x)):
        edge = a + (D - a) * (s - A) / (C - A)
        shadow = (s > A) & (s < C) & (np.abs(q) < edge)
        shadow |= (s > C) & (s < pr) & (np.abs(q) < np.sqrt(np.clip(pr * pr - s * s, 0, None)))
        open_ &= ~shadow
    return open_.astype(np.float64)


def gregorian_opd(r: np.ndarray, tel: dict | None = None) -> np.ndarray:
    """Defocus path per metre of axial defocus, ``delta / d_z``, as pyoof's ``opd_effelsberg``.

    Parameters
    ----------
    r : numpy.ndarray
        Radius in the aperture (m).
    tel : dict, optional
        Telescope constants; default :data:`EFFELSBERG`.

    Returns
    -------
    numpy.ndarray
        ``(1 - a^2)/(1 + a^2) + (1 - b^2)/(1 + b^2)``, a = r/(2 Fp), b = r/(2 F_eff).
    """
    t = EFFELSBERG if tel is None else tel
    a = r / (2 * t["Fp"])
    b = r / (2 * t["F_eff"])
    return (1 - a**2) / (1 + a**2) + (1 - b**2) / (1 + b**2)


# ---------------------------------------------------------------- the setup
@dataclass
class OOFSetup:
    """Everything the likelihood needs besides the parameters (NumPy or torch arrays).

    Attributes
    ----------
    U : array, shape (n_K, nn, nn)
        Zernike basis for n >= 1 on the aperture grid.
    opd : array, shape (nn, nn)
        Defocus path per metre of defocus (:func:`gregorian_opd`).
    dz : array, shape (n_maps,)
        Defocus of each map (m).
    wavelength : float
        Observing wavelength (m).
    B : array, shape (nn, nn)
        Blockage (0 or 1).
    taper : array, shape (nn, nn)
        ``(1 - (r/pr)^2)^q`` of the pedestal illumination.
    s : tuple of int
        FFT size ``(2 nn, 2 nn)``.
    rows, cols : integer arrays, shapes (nn, 1) and (nn,)
        The FFT bins of the map points: frequencies ``-nn/2 .. nn/2 - 1`` in
        numpy's unshifted FFT order (the central ``nn`` bins after ``fftshift``).
    norm : float
        Power normalisation (peak of the noiseless in-focus map at the truth).
    data : array, shape (n_maps, nn, nn)
        Measured power, indexed ``[map, v, u]``.
    sigma : float
        Noise standard deviation of every point.
    """

    U: object
    opd: object
    dz: object
    wavelength: float
    B: object
    taper: object
    s: tuple
    rows: object
    cols: object
    norm: float
    data: object
    sigma: float
    nn: int = 0
    order: int = 0
    nl: list = field(default_factory=list)
    u: object = None
    theta_true: object = None

    @property
    def n_params(self) -> int:
        """Length of ``theta``: i_amp, c_dB and one K per (n, l) with n >= 1."""
        return 2 + len(self.nl)

    @property
    def n_data(self) -> int:
        """Number of measured points in all maps."""
        return int(np.prod(tuple(self.data.shape)))

    def to_torch(self, device="cpu"):
        """The same setup with every array a float64 torch tensor on ``device``.

        Parameters
        ----------
        device : str or torch.device
            Where the tensors live (``'cpu'``, ``'cuda'``).

        Returns
        -------
        OOFSetup
        """
        import torch

        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} requested but no CUDA GPU is available")
        arrays = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("U", "opd", "dz", "B", "taper", "data"):
                arrays[f.name] = torch.as_tensor(np.asarray(v), dtype=torch.float64, device=dev)
            elif f.name in ("rows", "cols"):
                arrays[f.name] = torch.as_tensor(np.asarray(v), dtype=torch.int64, device=dev)
        return replace(self, **arrays)


def make_setup(
    nn: int,
    order: int,
    *,
    wavelength: float = 299792458.0 / 32e9,
    dz: tuple = (-0.022, 0.0, 0.022),
    q: float = 2.0,
    tel: dict | None = None,
) -> OOFSetup:
    """Geometry of an OOF problem on an ``nn x nn`` aperture grid (no data yet).

    Parameters
    ----------
    nn : int
        Aperture points across the dish, and map points per side (>= 8, even).
    order : int
        Zernike order N (>= 1).
    wavelength : float
        Wavelength in metres; default 32 GHz, as the reference data.
    dz : tuple of float
        Axial defocus of each map (m).
    q : float
        Taper exponent of the pedestal illumination.
    tel : dict, optional
        Telescope constants; default :data:`EFFELSBERG`.

    Returns
    -------
    OOFSetup
        With ``data`` zeros and ``sigma`` 1; use :func:`simulate` to fill them.
    """
    if not isinstance(nn, (int, np.integer)) or nn < 8 or nn % 2:
        raise ValueError(f"nn must be an even integer >= 8, got {nn!r}")
    if not isinstance(order, (int, np.integer)) or order < 1:
        raise ValueError(f"order must be an integer >= 1, got {order!r}")
    t = EFFELSBERG if tel is None else tel
    pr = t["pr"]
    dx = 2 * pr / nn
    x = -pr + (np.arange(nn) + 0.5) * dx
    X, Y = np.meshgrid(x, x)  # rows are y (v), columns are x (u)
    r = np.hypot(X, Y)
    rho, phi = r / pr, np.arctan2(Y, X)
    nl = zernike_nl(order)[1:]
    dz = np.asarray(dz, dtype=np.float64)
    bins = (np.arange(nn) - nn // 2) % (2 * nn)  # FFT bins of frequencies -nn/2 .. nn/2-1
    u = np.fft.fftfreq(2 * nn, dx)[bins] * wavelength
    return OOFSetup(
        U=zernike_basis(order, rho, phi)[1:],
        opd=gregorian_opd(r, t),
        dz=dz,
        wavelength=float(wavelength),
        B=effelsberg_blockage(X, Y, t),
        taper=np.clip(1 - rho**2, 0, None) ** q,
        s=(2 * nn, 2 * nn),
        rows=bins[:, None],
        cols=bins,
        norm=1.0,
        data=np.zeros((dz.size, nn, nn)),
        sigma=1.0,
        nn=int(nn),
        order=int(order),
        nl=nl,
        u=u,
    )


def simulate(
    nn: int,
    order: int,
    *,
    snr: float = 300.0,
    k_scale: float = 0.1,
    c_db: float = -14.0,
    seed: int = 0,
    **kw,
) -> OOFSetup:
    """A synthetic observation made with the reference model itself, with known truth.

    Parameters
    ----------
    nn, order : int
        Grid size and Zernike order, as in :func:`make_setup`.
    snr : float
        Noise sigma is ``1 / snr`` of the in-focus peak.
    k_scale : float
        True K(n >= 1) are drawn from N(0, k_scale) waves.
    c_db : float
        True edge taper (dB); i_amp is 1.
    seed : int
        Seed of ``numpy.random.default_rng``: first K, then the noise.
    **kw
        Passed to :func:`make_setup`.

    Returns
    -------
    OOFSetup
        With ``data``, ``sigma``, ``norm`` and ``theta_true`` set.
    """
    if not snr > 0:
        raise ValueError(f"snr must be positive, got {snr!r}")
    st = make_setup(nn, order, **kw)
    rng = np.random.default_rng(seed)
    theta = np.concatenate([[1.0, c_db], rng.normal(0.0, k_scale, len(st.nl))])
    p = model_power_numpy(theta, st)
    i0 = int(np.argmin(np.abs(st.dz)))
    norm = float(p[i0].max())
    sigma = 1.0 / snr
    data = p / norm + rng.normal(0.0, sigma, p.shape)
    return replace(st, norm=norm, sigma=sigma, data=data, theta_true=theta)


# ------------------------------------------------------ the likelihood, twice
def model_power_numpy(theta, st: OOFSetup) -> np.ndarray:
    """Model beam maps P[map, v, u] (NumPy), same body as the likelihood below."""
    i_amp, c_db, K = theta[0], theta[1], theta[2:]
    C = 10.0 ** (c_db / 20.0)
    Ea = i_amp * (C + (1.0 - C) * st.taper)
    phase = 2 * pi * (np.tensordot(K, st.U, 1) + st.dz[:, None, None] * st.opd / st.wavelength)
    E = st.B * Ea * np.exp(1j * phase)
    F = np.fft.fft2(E, st.s)[:, st.rows, st.cols]
    return (F.real**2 + F.imag**2) / st.norm


def neg_log_likelihood_numpy(theta, st: OOFSetup) -> float:
    """Gaussian −log L of the OOF beam maps, NumPy (the "before").

    Parameters
    ----------
    theta : numpy.ndarray
        ``[i_amp, c_dB, K(1,-1), ..., K(N,N)]``, K in waves.
    st : OOFSetup
        NumPy setup from :func:`simulate`.

    Returns
    -------
    float
        ``0.5 * sum(((P - data) / sigma)**2)``.
    """
    i_amp, c_db, K = theta[0], theta[1], theta[2:]
    C = 10.0 ** (c_db / 20.0)
    Ea = i_amp * (C + (1.0 - C) * st.taper)
    phase = 2 * pi * (np.tensordot(K, st.U, 1) + st.dz[:, None, None] * st.opd / st.wavelength)
    E = st.B * Ea * np.exp(1j * phase)
    F = np.fft.fft2(E, st.s)[:, st.rows, st.cols]
    P = (F.real**2 + F.imag**2) / st.norm
    return 0.5 * np.sum(((P - st.data) / st.sigma) ** 2)


def neg_log_likelihood_torch(theta, st: OOFSetup):
    """Gaussian −log L of the OOF beam maps, PyTorch (the "after"): differentiable.

    Parameters
    ----------
    theta : torch.Tensor
        ``[i_amp, c_dB, K(1,-1), ..., K(N,N)]``, float64, on the setup's device.
    st : OOFSetup
        Torch setup (:meth:`OOFSetup.to_torch`).

    Returns
    -------
    torch.Tensor
        0-d tensor ``0.5 * sum(((P - data) / sigma)**2)``.
    """
    import torch

    i_amp, c_db, K = theta[0], theta[1], theta[2:]
    C = 10.0 ** (c_db / 20.0)
    Ea = i_amp * (C + (1.0 - C) * st.taper)
    phase = 2 * pi * (torch.tensordot(K, st.U, 1) + st.dz[:, None, None] * st.opd / st.wavelength)
    E = st.B * Ea * torch.exp(1j * phase)
    F = torch.fft.fft2(E, st.s)[:, st.rows, st.cols]
    P = (F.real**2 + F.imag**2) / st.norm
    return 0.5 * torch.sum(((P - st.data) / st.sigma) ** 2)


def neg_log_likelihood_jax(theta, st: OOFSetup):
    """Gaussian −log L of the OOF beam maps in JAX, for the benchmark only (needs ``jax``).

    Same body as :func:`neg_log_likelihood_numpy` with ``jax.numpy``; the
    setup's arrays must be JAX arrays (float64: enable ``jax_enable_x64``).
    """
    import jax.numpy as jnp

    i_amp, c_db, K = theta[0], theta[1], theta[2:]
    C = 10.0 ** (c_db / 20.0)
    Ea = i_amp * (C + (1.0 - C) * st.taper)
    phase = 2 * pi * (jnp.tensordot(K, st.U, 1) + st.dz[:, None, None] * st.opd / st.wavelength)
    E = st.B * Ea * jnp.exp(1j * phase)
    F = jnp.fft.fft2(E, st.s)[:, st.rows, st.cols]
    P = (F.real**2 + F.imag**2) / st.norm
    return 0.5 * jnp.sum(((P - st.data) / st.sigma) ** 2)
