"""Log-priors for maximum-a-posteriori fits.

``priors={"b1": gradfit.Normal(0, 10)}`` adds ``-log p(b1)`` to the objective.
A prior is any object with ``log_prob(t) -> tensor`` (summed over elements) or
any callable ``t -> log p``; ``priors=callable(p)`` takes the whole parameter dict.
"""

from __future__ import annotations

import math

import torch

__all__ = ["Prior", "Normal", "Laplace", "Uniform", "LogNormal"]


class Prior:
    """Base class: ``log_prob(t)`` returns the summed log density of tensor ``t``."""

    #: whether -log p is 0.5 * r**2 + const with a residual r (lets LM keep working)
    residual_form = False

    def log_prob(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, t):
        return self.log_prob(t)


def _check_pos(value, what):
    if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{what} must be a positive finite number, got {value!r}")
    return float(value)


class Normal(Prior):
    """Gaussian prior N(mu, sigma)."""

    residual_form = True

    def __init__(self, mu: float, sigma: float):
        self.mu = float(mu)
        self.sigma = _check_pos(sigma, "Normal sigma")

    def residuals(self, t):
        return ((t - self.mu) / self.sigma).reshape(-1)

    def log_prob(self, t):
        z = (t - self.mu) / self.sigma
        return (-0.5 * z * z - math.log(self.sigma * math.sqrt(2 * math.pi))).sum()

    def __repr__(self):
        return f"Normal({self.mu:g}, {self.sigma:g})"


class Laplace(Prior):
    """Laplace (double exponential) prior with location mu and scale b."""

    def __init__(self, mu: float, b: float):
        self.mu = float(mu)
        self.b = _check_pos(b, "Laplace b")

    def log_prob(self, t):
        return (-torch.abs(t - self.mu) / self.b - math.log(2 * self.b)).sum()

    def __repr__(self):
        return f"Laplace({self.mu:g}, {self.b:g})"


class Uniform(Prior):
    """Flat prior on [lo, hi]; it also bounds the parameter if it has no bounds of its own."""

    def __init__(self, lo: float, hi: float):
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"Uniform prior needs finite lo < hi, got ({lo!r}, {hi!r})")
        self.lo, self.hi = float(lo), float(hi)

    def log_prob(self, t):
        inside = (t >= self.lo) & (t <= self.hi)
        lp = torch.where(inside, torch.zeros_like(t), torch.full_like(t, -math.inf))
        return (lp - math.log(self.hi - self.lo)).sum()

    def __repr__(self):
        return f"Uniform({self.lo:g}, {self.hi:g})"


class LogNormal(Prior):
    """Log-normal prior: log(t) ~ N(mu, sigma); t must be positive."""

    def __init__(self, mu: float, sigma: float):
        self.mu = float(mu)
        self.sigma = _check_pos(sigma, "LogNormal sigma")

    def log_prob(self, t):
        lt = torch.log(t)
        z = (lt - self.mu) / self.sigma
        return (-0.5 * z * z - lt - math.log(self.sigma * math.sqrt(2 * math.pi))).sum()

    def __repr__(self):
        return f"LogNormal({self.mu:g}, {self.sigma:g})"
