"""The Moré–Garbow–Hillstrom unconstrained test set, in torch.

J. J. Moré, B. S. Garbow and K. E. Hillstrom, "Testing unconstrained
optimization software", ACM TOMS 7 (1981) 17–41. Each problem is a sum of
squares ``F(x) = Σ f_i(x)²`` (the paper's convention; gradfit's least-squares
cost is ``F / 2``), with the paper's standard starting point and its published
minimum ``F*``. The 35 problems give 38 instances here: Watson at n = 6 and 9,
Penalty I and II at n = 4 and 10.

Used by ``tests/test_mgh.py`` and ``benchmarks/mgh.py``; the library never
imports it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["MghProblem", "PEERS", "PROBLEMS", "Run", "problem", "run_gradfit", "run_scipy",
           "solved"]


@dataclass(frozen=True)
class MghProblem:
    """One instance: ``residuals(x) -> f`` (length m), the start ``x0`` and ``F*``.

    ``local`` lists other published local minima ``F`` (a stop there is not a
    false claim, though it does not count as solved).
    """

    number: int
    name: str
    n: int
    m: int
    residuals: Callable[[torch.Tensor], torch.Tensor]
    x0: tuple
    fstar: float
    local: tuple = ()

    @property
    def label(self) -> str:
        return f"{self.number:2d} {self.name} (n={self.n})"

    def start(self, dtype=torch.float64) -> torch.Tensor:
        return torch.tensor(self.x0, dtype=dtype)

    def cost(self, x: torch.Tensor) -> torch.Tensor:
        """``F(x) = Σ f_i²`` (the paper's objective)."""
        r = self.residuals(x)
        return (r * r).sum()


def solved(F: float, fstar: float) -> bool:
    """Whether ``F`` reaches the published ``F*``: within 1e-5 relative (the paper gives
    six digits), plus 1e-12 absolute for the zero-residual problems."""
    return math.isfinite(F) and F <= fstar * (1 + 1e-5) + 1e-12


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _like(x, values):
    return torch.as_tensor(values, dtype=x.dtype, device=x.device)


# ----------------------------------------------------------------- 1 .. 19 (fixed n)

def _rosenbrock(x):
    return torch.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])


def _freudenstein_roth(x):
    return torch.stack([-13 + x[0] + ((5 - x[1]) * x[1] - 2) * x[1],
                        -29 + x[0] + ((x[1] + 1) * x[1] - 14) * x[1]])


def _powell_badly_scaled(x):
    return torch.stack([1e4 * x[0] * x[1] - 1,
                        torch.exp(-x[0]) + torch.exp(-x[1]) - 1.0001])


def _brown_badly_scaled(x):
    return torch.stack([x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2])


def _beale(x):
    y = _like(x, [1.5, 2.25, 2.625])
    i = _like(x, [1.0, 2.0, 3.0])
    return y - x[0] * (1 - x[1] ** i)


def _jennrich_sampson(x):
    i = _like(x, np.arange(1, 11, dtype=float))
    return 2 + 2 * i - (torch.exp(i * x[0]) + torch.exp(i * x[1]))


def _helical_valley(x):
    theta = torch.atan(x[1] / x[0]) / (2 * math.pi) + torch.where(x[0] < 0, 0.5, 0.0)
    return torch.stack([10 * (x[2] - 10 * theta),
                        10 * (torch.sqrt(x[0] ** 2 + x[1] ** 2) - 1), x[2]])


_BARD_Y = [0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34,
           2.10, 4.39]


def _bard(x):
    u = _like(x, np.arange(1, 16, dtype=float))
    v = 16 - u
    w = torch.minimum(u, v)
    return _like(x, _BARD_Y) - (x[0] + u / (v * x[1] + w * x[2]))


_GAUSS_Y = [0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521, 0.3989, 0.3521, 0.2420,
            0.1295, 0.0540, 0.0175, 0.0044, 0.0009]


def _gaussian(x):
    t = (8 - _like(x, np.arange(1, 16, dtype=float))) / 2
    return x[0] * torch.exp(-x[1] * (t - x[2]) ** 2 / 2) - _like(x, _GAUSS_Y)


_MEYER_Y = [34780, 28610, 23650, 19630, 16370, 13720, 11540, 9744, 8261, 7030, 6005, 5147,
            4427, 3820, 3307, 2872]


def _meyer(x):
    t = 45 + 5 * _like(x, np.arange(1, 17, dtype=float))
    return x[0] * torch.exp(x[1] / (t + x[2])) - _like(x, _MEYER_Y)


def _gulf(x, m=99):
    t = _like(x, np.arange(1, m + 1, dtype=float) / 100)
    y = 25 + (-50 * torch.log(t)) ** (2 / 3)
    return torch.exp(-torch.abs(y - x[1]) ** x[2] / x[0]) - t


def _box3d(x):
    t = 0.1 * _like(x, np.arange(1, 11, dtype=float))
    return (torch.exp(-t * x[0]) - torch.exp(-t * x[1])
            - x[2] * (torch.exp(-t) - torch.exp(-10 * t)))


def _powell_singular_block(x):
    return torch.stack([x[..., 0] + 10 * x[..., 1], math.sqrt(5) * (x[..., 2] - x[..., 3]),
                        (x[..., 1] - 2 * x[..., 2]) ** 2,
                        math.sqrt(10) * (x[..., 0] - x[..., 3]) ** 2], dim=-1)


def _powell_singular(x):
    return _powell_singular_block(x.reshape(-1, 4)).reshape(-1)


def _wood(x):
    return torch.stack([10 * (x[1] - x[0] ** 2), 1 - x[0], math.sqrt(90) * (x[3] - x[2] ** 2),
                        1 - x[2], math.sqrt(10) * (x[1] + x[3] - 2),
                        (x[1] - x[3]) / math.sqrt(10)])


_KO_Y = [0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235,
         0.0246]
_KO_U = [4, 2, 1, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625]


def _kowalik_osborne(x):
    u = _like(x, _KO_U)
    return _like(x, _KO_Y) - x[0] * (u * u + u * x[1]) / (u * u + u * x[2] + x[3])


def _brown_dennis(x):
    t = _like(x, np.arange(1, 21, dtype=float)) / 5
    return ((x[0] + t * x[1] - torch.exp(t)) ** 2
            + (x[2] + x[3] * torch.sin(t) - torch.cos(t)) ** 2)


_OSB1_Y = [0.844, 0.908, 0.932, 0.936, 0.925, 0.908, 0.881, 0.850, 0.818, 0.784, 0.751,
           0.718, 0.685, 0.658, 0.628, 0.603, 0.580, 0.558, 0.538, 0.522, 0.506, 0.490,
           0.478, 0.467, 0.457, 0.448, 0.438, 0.431, 0.424, 0.420, 0.414, 0.411, 0.406]


def _osborne1(x):
    t = 10 * _like(x, np.arange(33, dtype=float))
    return _like(x, _OSB1_Y) - (x[0] + x[1] * torch.exp(-t * x[3]) + x[2] * torch.exp(-t * x[4]))


def _biggs_exp6(x):
    t = 0.1 * _like(x, np.arange(1, 14, dtype=float))
    y = torch.exp(-t) - 5 * torch.exp(-10 * t) + 3 * torch.exp(-4 * t)
    return (x[2] * torch.exp(-t * x[0]) - x[3] * torch.exp(-t * x[1])
            + x[5] * torch.exp(-t * x[4]) - y)


_OSB2_Y = [1.366, 1.191, 1.112, 1.013, 0.991, 0.885, 0.831, 0.847, 0.786, 0.725, 0.746,
           0.679, 0.608, 0.655, 0.616, 0.606, 0.602, 0.626, 0.651, 0.724, 0.649, 0.649,
           0.694, 0.644, 0.624, 0.661, 0.612, 0.558, 0.533, 0.495, 0.500, 0.423, 0.395,
           0.375, 0.372, 0.391, 0.396, 0.405, 0.428, 0.429, 0.523, 0.562, 0.607, 0.653,
           0.672, 0.708, 0.633, 0.668, 0.645, 0.632, 0.591, 0.559, 0.597, 0.625, 0.739,
           0.710, 0.729, 0.720, 0.636, 0.581, 0.428, 0.292, 0.162, 0.098, 0.054]


def _osborne2(x):
    t = _like(x, np.arange(65, dtype=float)) / 10
    return _like(x, _OSB2_Y) - (x[0] * torch.exp(-t * x[4])
                                + x[1] * torch.exp(-(t - x[8]) ** 2 * x[5])
                                + x[2] * torch.exp(-(t - x[9]) ** 2 * x[6])
                                + x[3] * torch.exp(-(t - x[10]) ** 2 * x[7]))


# ------------------------------------------------------------- 20 .. 35 (variable n)

def _watson(x):
    n = x.numel()
    t = _like(x, np.arange(1, 30, dtype=float)) / 29
    j = _like(x, np.arange(n, dtype=float))
    powers = t[:, None] ** j[None, :]                    # t^(j-1), j = 1..n
    s1 = (powers[:, :-1] * (j[1:] * x[1:])[None, :]).sum(1)
    s2 = (powers * x[None, :]).sum(1)
    return torch.cat([s1 - s2 ** 2 - 1, torch.stack([x[0], x[1] - x[0] ** 2 - 1])])


def _ext_rosenbrock(x):
    a, b = x[0::2], x[1::2]
    return torch.stack([10 * (b - a ** 2), 1 - a], dim=1).reshape(-1)


def _penalty1(x):
    return torch.cat([math.sqrt(1e-5) * (x - 1), ((x * x).sum() - 0.25)[None]])


def _penalty2(x):
    n = x.numel()
    a = math.sqrt(1e-5)
    i = _like(x, np.arange(2, n + 1, dtype=float))
    y = torch.exp(i / 10) + torch.exp((i - 1) / 10)
    mid = a * (torch.exp(x[1:] / 10) + torch.exp(x[:-1] / 10) - y)
    tail = a * (torch.exp(x[1:] / 10) - math.exp(-0.1))
    w = _like(x, np.arange(n, 0, -1, dtype=float))
    return torch.cat([(x[0] - 0.2)[None], mid, tail, ((w * x * x).sum() - 1)[None]])


def _variably_dimensioned(x):
    j = _like(x, np.arange(1, x.numel() + 1, dtype=float))
    s = (j * (x - 1)).sum()
    return torch.cat([x - 1, s[None], (s * s)[None]])


def _trigonometric(x):
    n = x.numel()
    i = _like(x, np.arange(1, n + 1, dtype=float))
    return n - torch.cos(x).sum() + i * (1 - torch.cos(x)) - torch.sin(x)


def _brown_almost_linear(x):
    n = x.numel()
    return torch.cat([x[:-1] + x.sum() - (n + 1), (torch.prod(x) - 1)[None]])


def _boundary_grid(x):
    n = x.numel()
    h = 1.0 / (n + 1)
    t = _like(x, np.arange(1, n + 1, dtype=float)) * h
    return h, t


def _discrete_boundary(x):
    h, t = _boundary_grid(x)
    zero = x.new_zeros(1)
    left = torch.cat([zero, x[:-1]])
    right = torch.cat([x[1:], zero])
    return 2 * x - left - right + h * h * (x + t + 1) ** 3 / 2


def _discrete_integral(x):
    h, t = _boundary_grid(x)
    c = (x + t + 1) ** 3
    lower = torch.cumsum(t * c, 0)                                  # Σ_{j<=i} t_j c_j
    upper = torch.flip(torch.cumsum(torch.flip((1 - t) * c, [0]), 0), [0]) - (1 - t) * c
    return x + h * ((1 - t) * lower + t * upper) / 2


def _broyden_tridiagonal(x):
    zero = x.new_zeros(1)
    left = torch.cat([zero, x[:-1]])
    right = torch.cat([x[1:], zero])
    return (3 - 2 * x) * x - left - 2 * right + 1


def _broyden_banded(x, ml=5, mu=1):
    n = x.numel()
    idx = np.arange(n)
    band = (np.abs(idx[:, None] - idx[None, :]) > 0) & (idx[None, :] >= idx[:, None] - ml) & (
        idx[None, :] <= idx[:, None] + mu)
    B = _like(x, band.astype(float))
    return x * (2 + 5 * x * x) + 1 - B @ (x * (1 + x))


def _linear_full_rank(x, m=20):
    n = x.numel()
    s = x.sum()
    head = x - 2 * s / m - 1
    return torch.cat([head, (-2 * s / m - 1).expand(m - n)])


def _linear_rank1(x, m=20):
    j = _like(x, np.arange(1, x.numel() + 1, dtype=float))
    i = _like(x, np.arange(1, m + 1, dtype=float))
    return i * (j * x).sum() - 1


def _linear_rank1_zero(x, m=20):
    n = x.numel()
    j = _like(x, np.arange(2, n, dtype=float))
    s = (j * x[1:-1]).sum()
    i = _like(x, np.arange(1, m - 1, dtype=float))                  # (i - 1) for i = 2..m-1
    minus1 = -x.new_ones(1)
    return torch.cat([minus1, i * s - 1, minus1])


def _chebyquad(x, m=None):
    n = x.numel()
    m = n if m is None else m
    y = 2 * x - 1
    T = [torch.ones_like(y), y]
    for _ in range(2, m + 1):
        T.append(2 * y * T[-1] - T[-2])
    i = np.arange(1, m + 1)
    integral = np.zeros(m)
    even = i % 2 == 0
    integral[even] = -1.0 / (i[even].astype(float) ** 2 - 1)
    return torch.stack([Ti.mean() for Ti in T[1:]]) - _like(x, integral)


def _rank1_fstar(m):
    return m * (m - 1) / (2 * (2 * m + 1))


def _rank1_zero_fstar(m):
    return (m * m + 3 * m - 6) / (2 * (2 * m - 3))


def _boundary_x0(n):
    t = np.arange(1, n + 1) / (n + 1)
    return tuple(t * (t - 1))


PROBLEMS: list[MghProblem] = [
    MghProblem(1, "Rosenbrock", 2, 2, _rosenbrock, (-1.2, 1.0), 0.0),
    MghProblem(2, "Freudenstein-Roth", 2, 2, _freudenstein_roth, (0.5, -2.0), 0.0,
               local=(48.9842,)),
    MghProblem(3, "Powell badly scaled", 2, 2, _powell_badly_scaled, (0.0, 1.0), 0.0),
    MghProblem(4, "Brown badly scaled", 2, 3, _brown_badly_scaled, (1.0, 1.0), 0.0),
    MghProblem(5, "Beale", 2, 3, _beale, (1.0, 1.0), 0.0),
    MghProblem(6, "Jennrich-Sampson", 2, 10, _jennrich_sampson, (0.3, 0.4), 124.362),
    MghProblem(7, "Helical valley", 3, 3, _helical_valley, (-1.0, 0.0, 0.0), 0.0),
    MghProblem(8, "Bard", 3, 15, _bard, (1.0, 1.0, 1.0), 8.21487e-3, local=(17.4286,)),
    MghProblem(9, "Gaussian", 3, 15, _gaussian, (0.4, 1.0, 0.0), 1.12793e-8),
    MghProblem(10, "Meyer", 3, 16, _meyer, (0.02, 4000.0, 250.0), 87.9458),
    MghProblem(11, "Gulf R&D", 3, 99, _gulf, (5.0, 2.5, 0.15), 0.0),
    MghProblem(12, "Box 3-D", 3, 10, _box3d, (0.0, 10.0, 20.0), 0.0),
    MghProblem(13, "Powell singular", 4, 4, _powell_singular, (3.0, -1.0, 0.0, 1.0), 0.0),
    MghProblem(14, "Wood", 4, 6, _wood, (-3.0, -1.0, -3.0, -1.0), 0.0),
    MghProblem(15, "Kowalik-Osborne", 4, 11, _kowalik_osborne, (0.25, 0.39, 0.415, 0.39),
               3.07505e-4, local=(1.02734e-3,)),
    MghProblem(16, "Brown-Dennis", 4, 20, _brown_dennis, (25.0, 5.0, -5.0, -1.0), 85822.2),
    MghProblem(17, "Osborne 1", 5, 33, _osborne1, (0.5, 1.5, -1.0, 0.01, 0.02), 5.46489e-5),
    MghProblem(18, "Biggs EXP6", 6, 13, _biggs_exp6, (1.0, 2.0, 1.0, 1.0, 1.0, 1.0), 0.0,
               local=(5.65565e-3, 0.306366)),
    MghProblem(19, "Osborne 2", 11, 65, _osborne2,
               (1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5), 4.01377e-2),
    MghProblem(20, "Watson", 6, 31, _watson, (0.0,) * 6, 2.28767e-3),
    MghProblem(20, "Watson", 9, 31, _watson, (0.0,) * 9, 1.39976e-6),
    MghProblem(21, "Extended Rosenbrock", 10, 10, _ext_rosenbrock, (-1.2, 1.0) * 5, 0.0),
    MghProblem(22, "Extended Powell singular", 100, 100, _powell_singular,
               (3.0, -1.0, 0.0, 1.0) * 25, 0.0),
    MghProblem(23, "Penalty I", 4, 5, _penalty1, (1.0, 2.0, 3.0, 4.0), 2.24997e-5),
    MghProblem(23, "Penalty I", 10, 11, _penalty1, tuple(range(1, 11)), 7.08765e-5),
    MghProblem(24, "Penalty II", 4, 8, _penalty2, (0.5,) * 4, 9.37629e-6),
    MghProblem(24, "Penalty II", 10, 20, _penalty2, (0.5,) * 10, 2.93660e-4),
    MghProblem(25, "Variably dimensioned", 10, 12, _variably_dimensioned,
               tuple(1 - np.arange(1, 11) / 10), 0.0),
    MghProblem(26, "Trigonometric", 10, 10, _trigonometric, (0.1,) * 10, 0.0,
               local=(2.79506e-5,)),
    MghProblem(27, "Brown almost-linear", 10, 10, _brown_almost_linear, (0.5,) * 10, 0.0,
               local=(1.0,)),
    MghProblem(28, "Discrete boundary value", 10, 10, _discrete_boundary, _boundary_x0(10),
               0.0),
    MghProblem(29, "Discrete integral equation", 10, 10, _discrete_integral,
               _boundary_x0(10), 0.0),
    MghProblem(30, "Broyden tridiagonal", 10, 10, _broyden_tridiagonal, (-1.0,) * 10, 0.0),
    MghProblem(31, "Broyden banded", 10, 10, _broyden_banded, (-1.0,) * 10, 0.0),
    MghProblem(32, "Linear full rank", 10, 20, _linear_full_rank, (1.0,) * 10, 10.0),
    MghProblem(33, "Linear rank 1", 10, 20, _linear_rank1, (1.0,) * 10, _rank1_fstar(20)),
    MghProblem(34, "Linear rank 1, zero columns and rows", 10, 20, _linear_rank1_zero,
               (1.0,) * 10, _rank1_zero_fstar(20)),
    MghProblem(35, "Chebyquad", 8, 8, _chebyquad, tuple(np.arange(1, 9) / 9), 3.51687e-3),
]


def problem(number: int, n: int | None = None) -> MghProblem:
    """The instance with this MGH number (and ``n`` where the problem has two)."""
    hits = [p for p in PROBLEMS if p.number == number and (n is None or p.n == n)]
    if len(hits) != 1:
        raise KeyError(f"no single MGH instance number={number}, n={n}")
    return hits[0]


# -------------------------------------------------------------------------- runners

#: gradfit methods compared with their SciPy peers (None: no peer).
PEERS = {"bfgs": "BFGS", "lbfgs": "L-BFGS-B", "newton-cg": "Newton-CG",
         "trust-exact": "trust-exact", "trust-krylov": "trust-krylov", "lm": "lm",
         "default": "lm"}


@dataclass
class Run:
    """One solver on one instance; ``F`` in the paper's units (``Σ f_i²``)."""

    F: float
    success: bool
    message: str
    time_s: float
    gscaled: float

    def solved(self, p: MghProblem) -> bool:
        return solved(self.F, p.fstar)

    def false_claim(self, p: MghProblem) -> bool:
        """success=True away from F* and from every published local minimum, with a gradient
        that is not small (``max_i |∂F/∂x_i| max(1, |x_i|) > 1e-3 max(1, F)``)."""
        if not self.success or self.solved(p):
            return False
        if any(abs(self.F - v) <= 1e-4 * v for v in p.local):
            return False
        return not self.gscaled <= 1e-3 * max(1.0, self.F)


def _gscaled(p: MghProblem, x) -> float:
    x = torch.as_tensor(np.asarray(x, dtype=np.float64)).requires_grad_(True)
    with torch.enable_grad():
        F = p.cost(x)
        (g,) = torch.autograd.grad(F, x)
    return float((g.abs() * torch.clamp(x.detach().abs(), min=1.0)).max())


def run_gradfit(p: MghProblem, method: str) -> Run:
    """gradfit's solver ``method`` (or ``'default'``: :func:`gradfit.fit` as a user calls it)."""
    import time

    from .objective import Objective
    from .solvers import solve

    t0 = time.perf_counter()
    if method == "default":
        import gradfit

        res = gradfit.fit(lambda q, _: p.residuals(q["x"]), None, np.zeros(p.m),
                          params={"x": np.array(p.x0, dtype=np.float64)}, errors="none")
        x, ok, msg = np.atleast_1d(res.params["x"]), res.success, res.message
    else:
        obj = Objective(lambda z: 0.5 * (p.residuals(z) ** 2).sum(), p.n,
                        residual_fun=p.residuals)
        raw = solve(method, obj, p.start())
        x, ok, msg = raw.z.numpy(), raw.success, raw.message
    dt = time.perf_counter() - t0
    with torch.no_grad():
        F = float(p.cost(torch.as_tensor(x, dtype=torch.float64)))
    return Run(F, bool(ok), msg, dt, _gscaled(p, x))


def run_scipy(p: MghProblem, method: str, tight: bool = False) -> Run:
    """SciPy's ``method`` on ``F / 2`` (or ``least_squares(method='lm')`` on ``f``) with the
    same exact derivatives (torch autodiff); ``tight`` sets tolerances near gradfit's."""
    import time
    import warnings

    import scipy.optimize as so

    def fg(x):
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            F = 0.5 * (p.residuals(xt) ** 2).sum()
            (g,) = torch.autograd.grad(F, xt)
        fv = float(F)
        return (fv, g.numpy()) if math.isfinite(fv) else (math.inf, np.zeros(p.n))

    def half(x):
        return 0.5 * (p.residuals(x) ** 2).sum()

    def hess(x):
        return torch.autograd.functional.hessian(half, torch.tensor(x)).numpy()

    def hessp(x, v):
        return torch.autograd.functional.hvp(half, torch.tensor(x), torch.tensor(v))[1].numpy()

    x0 = np.array(p.x0, dtype=np.float64)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if method == "lm":
                def r(x):
                    return p.residuals(torch.tensor(x)).numpy()

                def jac(x):
                    return torch.autograd.functional.jacobian(p.residuals,
                                                              torch.tensor(x)).numpy()

                tol = dict(ftol=1e-15, xtol=1e-15, gtol=1e-15) if tight else {}
                res = so.least_squares(r, x0, jac=jac, method="lm", **tol)
                x, ok, msg = res.x, res.success, res.message
            else:
                kw = {"jac": True}
                if method in ("Newton-CG", "trust-krylov"):
                    kw["hessp"] = hessp
                if method == "trust-exact":
                    kw["hess"] = hess
                opts = {}
                if tight:
                    opts = {"Newton-CG": {"xtol": 1e-15},
                            "L-BFGS-B": {"ftol": 1e-15, "gtol": 1e-10}}.get(
                                method, {"gtol": 1e-10})
                res = so.minimize(fg, x0, method=method, options=opts, **kw)
                x, ok, msg = res.x, res.success, res.message
        except Exception as exc:  # a crash counts as a failed run
            x, ok, msg = x0, False, f"{type(exc).__name__}: {exc}"
    dt = time.perf_counter() - t0
    with torch.no_grad():
        F = float(p.cost(torch.as_tensor(x, dtype=torch.float64)))
    return Run(F, bool(ok), str(msg), dt, _gscaled(p, x))
