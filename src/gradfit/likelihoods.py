"""Likelihoods: −log L of data given a model prediction, plus a residual form for LM.

Each likelihood gives ``nll(y, mu, nuisance)``, a scalar tensor, and where it
exists ``residuals(y, mu)`` with ``0.5 * sum(r**2) == nll - const`` so that
Levenberg–Marquardt can minimise it. A likelihood may carry *nuisance*
parameters (e.g. a fitted Cauchy width); they are fitted with the model's
parameters and reported beside them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["Likelihood", "Gaussian", "Cauchy", "StudentT", "Poisson", "get_likelihood",
           "LIKELIHOODS", "poisson_deviance_parts", "poisson_series_limit"]


def poisson_deviance_parts(y: torch.Tensor, mu: torch.Tensor):
    """The pieces of the Poisson deviance residual ``r = d sqrt(q)``: ``(d, t, y_safe,
    near, q)`` with ``d = y - mu``, ``t = d / y`` (``y_safe``: y with 1 where it is 0),
    ``near`` where the series is used and ``q = dev / d²``.

    The residual is ``sign(y - mu) sqrt(dev)`` written as ``d sqrt(dev / d²)``, so that it
    stays differentiable where mu == y (there sqrt(dev) alone has the derivative 0/0).
    Near d = 0, dev / d² comes from its series (1/y)(1 + 2t/3 + t²/2 + 2t³/5), which also
    avoids the cancellation in dev there (:func:`poisson_series_limit`). Shared by
    :meth:`Poisson.residuals` and ``fit_batch``'s closed-form slope, so both give the
    same numbers.
    """
    d = y - mu
    pos = y > 0
    y_safe = torch.where(pos, y, torch.ones_like(y))
    ylogy = torch.where(pos, y * torch.log(torch.where(pos, y, 1.0) / mu), torch.zeros_like(y))
    dev = 2.0 * (mu - y + ylogy)
    near = d.abs() <= poisson_series_limit(d.dtype) * y
    d_safe = torch.where(near, torch.ones_like(d), d)
    t = d / y_safe
    series = (1 + t * (2.0 / 3 + t * (0.5 + t * 0.4))) / y_safe
    q = torch.where(near, series, dev / (d_safe * d_safe))
    return d, t, y_safe, near, q


def poisson_series_limit(dtype) -> float:
    """``|t| = |y - mu| / y`` below which the Poisson deviance residual uses its series.

    The direct ``dev = 2 (mu - y + y log(y/mu))`` cancels to a relative error of about
    ``eps / t²``; the four-term series is off by about ``t⁴``. In float64 the series is
    used below 1e-4 (either side then good to ~1e-8 of ``q = dev/d²`` or better); in
    float32 that limit left ``dev`` wrong by up to 100%, even negative, so ``sqrt`` hit 0
    and ``dr/dmu`` became infinite: 4.5% of the float32 Poisson problems of
    ``benchmarks/batch.py`` failed with "non-finite Jacobian at the starting point".
    There the series is used below 0.05, where both errors are ~1e-5.
    """
    return 1e-4 if torch.finfo(dtype).eps < 1e-10 else 0.05


def _as_scale(value, name: str):
    """Validate a known scale: positive finite scalar or array."""
    if value is None:
        return None
    arr = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value,
                     dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        bad = np.flatnonzero(~(np.isfinite(arr) & (arr > 0)).ravel())
        raise ValueError(
            f"{name} must be positive and finite; first bad index {int(bad[0])}"
            if arr.ndim else f"{name} must be positive and finite, got {float(arr)}"
        )
    return arr


class Likelihood:
    """Base class. Subclasses set ``name`` and implement ``nll`` (and ``residuals``)."""

    name = "likelihood"
    #: least squares with unknown common sigma: errors scaled by RSS/(n-p)
    scale_errors = False
    #: nuisance parameters: name -> (initial value or None for data-driven, bounds)
    nuisance: dict = {}

    def prepare(self, y: torch.Tensor) -> None:
        """Move known arrays to ``y``'s device/dtype and check them against ``y``."""

    def check_data(self, y: np.ndarray) -> None:
        """Raise ValueError if ``y`` is not valid data for this likelihood."""

    def initial_nuisance(self, y: torch.Tensor, mu: torch.Tensor) -> dict:
        return {}

    def nll(self, y: torch.Tensor, mu: torch.Tensor, nuis: dict) -> torch.Tensor:
        raise NotImplementedError

    @property
    def has_residuals(self) -> bool:
        return type(self).residuals is not Likelihood.residuals and not self.nuisance

    def residuals(self, y: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"the {self.name} likelihood has no residual form")

    def _scale_tensor(self, value, y: torch.Tensor, what: str):
        if value is None:
            return None
        t = torch.as_tensor(value, dtype=y.dtype, device=y.device)
        if t.ndim and t.shape != y.shape:
            try:
                torch.broadcast_shapes(t.shape, y.shape)
            except RuntimeError as exc:
                raise ValueError(
                    f"{what} has shape {tuple(t.shape)} but y has shape {tuple(y.shape)}"
                ) from exc
        return t

    def __repr__(self):
        return f"{type(self).__name__}()"


class Gaussian(Likelihood):
    """Gaussian likelihood.

    Parameters
    ----------
    sigma : float or array_like, optional
        Known per-point (or common) standard deviation. ``None`` (default) is
        least squares: the common sigma is unknown and the errors are scaled by
        RSS/(n − p), the convention of NIST StRD and ``scipy.optimize.curve_fit``.
    """

    name = "gaussian"

    def __init__(self, sigma=None):
        self.sigma = _as_scale(sigma, "Gaussian sigma")
        self.scale_errors = self.sigma is None
        self._s = None

    def prepare(self, y):
        self._s = self._scale_tensor(self.sigma, y, "Gaussian sigma")

    @property
    def sigma_tensor(self):
        """sigma as prepared for the data (a tensor on its device and dtype), or None
        for least squares; ``residuals`` divides by it."""
        return self._s

    def residuals(self, y, mu):
        r = y - mu
        return r if self._s is None else r / self._s

    def nll(self, y, mu, nuis):
        r = self.residuals(y, mu)
        return 0.5 * (r * r).sum()

    def __repr__(self):
        return "Gaussian(sigma=None)" if self.sigma is None else "Gaussian(sigma=...)"


class Cauchy(Likelihood):
    """Cauchy (Lorentzian) likelihood: robust against gross outliers.

    Parameters
    ----------
    gamma : float or array_like, optional
        Known half width at half maximum. ``None`` fits one common gamma as the
        nuisance parameter ``'gamma'``.
    """

    name = "cauchy"

    def __init__(self, gamma=None):
        self.gamma = _as_scale(gamma, "Cauchy gamma")
        self.nuisance = {"gamma": (None, (0.0, None))} if self.gamma is None else {}
        self._g = None

    def prepare(self, y):
        self._g = self._scale_tensor(self.gamma, y, "Cauchy gamma")

    def initial_nuisance(self, y, mu):
        if not self.nuisance:
            return {}
        mad = torch.median(torch.abs(y - mu)).item()
        return {"gamma": mad if mad > 0 else 1.0}

    def residuals(self, y, mu):
        u = (y - mu) / self._g
        # 0.5 r^2 = log(1 + u^2); sign keeps r smooth through u = 0
        return torch.sign(u) * torch.sqrt(2.0 * torch.log1p(u * u))

    def nll(self, y, mu, nuis):
        g = self._g if self._g is not None else nuis["gamma"]
        u = (y - mu) / g
        out = torch.log1p(u * u).sum()
        if self._g is None:
            out = out + y.numel() * (torch.log(g) + math.log(math.pi))
        return out

    def __repr__(self):
        return "Cauchy(gamma=None)" if self.gamma is None else "Cauchy(gamma=...)"


class StudentT(Likelihood):
    """Student-t likelihood with ``nu`` degrees of freedom (robust; ``nu`` → ∞ is Gaussian).

    Parameters
    ----------
    nu : float
        Degrees of freedom (fixed), default 4.
    scale : float or array_like, optional
        Known scale; ``None`` fits one common scale as the nuisance parameter ``'scale'``.
    """

    name = "student-t"

    def __init__(self, nu: float = 4.0, scale=None):
        if not (isinstance(nu, (int, float)) and nu > 0 and math.isfinite(nu)):
            raise ValueError(f"StudentT nu must be a positive number, got {nu!r}")
        self.nu = float(nu)
        self.scale = _as_scale(scale, "StudentT scale")
        self.nuisance = {"scale": (None, (0.0, None))} if self.scale is None else {}
        self._s = None

    def prepare(self, y):
        self._s = self._scale_tensor(self.scale, y, "StudentT scale")

    def initial_nuisance(self, y, mu):
        if not self.nuisance:
            return {}
        mad = torch.median(torch.abs(y - mu)).item()
        return {"scale": 1.4826 * mad if mad > 0 else 1.0}

    def residuals(self, y, mu):
        u = (y - mu) / self._s
        return torch.sign(u) * torch.sqrt((self.nu + 1.0) * torch.log1p(u * u / self.nu))

    def nll(self, y, mu, nuis):
        s = self._s if self._s is not None else nuis["scale"]
        u = (y - mu) / s
        out = 0.5 * (self.nu + 1.0) * torch.log1p(u * u / self.nu).sum()
        if self._s is None:
            out = out + y.numel() * torch.log(s)
        return out

    def __repr__(self):
        return f"StudentT(nu={self.nu:g})"


class Poisson(Likelihood):
    """Poisson likelihood for counts; the model must be positive.

    ``nll = sum(mu - y log mu + log y!)``; the residual form uses deviance residuals.
    """

    name = "poisson"

    def check_data(self, y):
        if np.any(y < 0):
            i = int(np.flatnonzero(y.ravel() < 0)[0])
            raise ValueError(f"Poisson data must be non-negative counts; y[{i}] = {y.ravel()[i]}")

    def residuals(self, y, mu):
        d, _, _, _, q = poisson_deviance_parts(y, mu)
        return d * torch.sqrt(torch.clamp(q, min=0.0))

    def nll(self, y, mu, nuis):
        return (mu - y * torch.log(mu) + torch.lgamma(y + 1.0)).sum()


LIKELIHOODS = {
    "gaussian": Gaussian,
    "least-squares": Gaussian,
    "cauchy": Cauchy,
    "student-t": StudentT,
    "studentt": StudentT,
    "poisson": Poisson,
}


def get_likelihood(spec) -> Likelihood:
    """A likelihood from a name (``'gaussian'``, ``'cauchy'``, ...) or an instance."""
    if isinstance(spec, Likelihood):
        return spec
    if isinstance(spec, str):
        key = spec.lower()
        if key not in LIKELIHOODS:
            raise ValueError(
                f"unknown likelihood {spec!r}; choose one of: {', '.join(sorted(LIKELIHOODS))}, "
                "or pass an object such as gradfit.Gaussian(sigma=...)"
            )
        return LIKELIHOODS[key]()
    raise TypeError(
        f"likelihood must be a name or a gradfit likelihood object, not {type(spec).__name__}"
    )
