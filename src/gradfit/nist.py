"""The NIST StRD nonlinear regression problems: parser, models and a runner.

The certified values come from the ``.dat`` files themselves (NIST's format: a
block of starting values and certified values with standard deviations, then
the data with y in the first column). Used by the test suite and by
``benchmarks/nist_strd.py``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["NistProblem", "load", "load_all", "MODELS", "digits", "fit_problem"]


def _pi():
    return math.pi


MODELS = {
    "Misra1a": lambda b, x: b[0] * (1 - torch.exp(-b[1] * x)),
    "Chwirut2": lambda b, x: torch.exp(-b[0] * x) / (b[1] + b[2] * x),
    "Chwirut1": lambda b, x: torch.exp(-b[0] * x) / (b[1] + b[2] * x),
    "Lanczos3": lambda b, x: (b[0] * torch.exp(-b[1] * x) + b[2] * torch.exp(-b[3] * x)
                              + b[4] * torch.exp(-b[5] * x)),
    "Gauss1": lambda b, x: (b[0] * torch.exp(-b[1] * x)
                            + b[2] * torch.exp(-(x - b[3]) ** 2 / b[4] ** 2)
                            + b[5] * torch.exp(-(x - b[6]) ** 2 / b[7] ** 2)),
    "Gauss2": lambda b, x: (b[0] * torch.exp(-b[1] * x)
                            + b[2] * torch.exp(-(x - b[3]) ** 2 / b[4] ** 2)
                            + b[5] * torch.exp(-(x - b[6]) ** 2 / b[7] ** 2)),
    "DanWood": lambda b, x: b[0] * x ** b[1],
    "Misra1b": lambda b, x: b[0] * (1 - (1 + b[1] * x / 2) ** (-2)),
    "Kirby2": lambda b, x: (b[0] + b[1] * x + b[2] * x ** 2) / (1 + b[3] * x + b[4] * x ** 2),
    "Hahn1": lambda b, x: ((b[0] + b[1] * x + b[2] * x ** 2 + b[3] * x ** 3)
                           / (1 + b[4] * x + b[5] * x ** 2 + b[6] * x ** 3)),
    "Nelson": lambda b, x: b[0] - b[1] * x[0] * torch.exp(-b[2] * x[1]),
    "MGH17": lambda b, x: b[0] + b[1] * torch.exp(-x * b[3]) + b[2] * torch.exp(-x * b[4]),
    "Lanczos1": lambda b, x: (b[0] * torch.exp(-b[1] * x) + b[2] * torch.exp(-b[3] * x)
                              + b[4] * torch.exp(-b[5] * x)),
    "Lanczos2": lambda b, x: (b[0] * torch.exp(-b[1] * x) + b[2] * torch.exp(-b[3] * x)
                              + b[4] * torch.exp(-b[5] * x)),
    "Gauss3": lambda b, x: (b[0] * torch.exp(-b[1] * x)
                            + b[2] * torch.exp(-(x - b[3]) ** 2 / b[4] ** 2)
                            + b[5] * torch.exp(-(x - b[6]) ** 2 / b[7] ** 2)),
    "Misra1c": lambda b, x: b[0] * (1 - (1 + 2 * b[1] * x) ** (-0.5)),
    "Misra1d": lambda b, x: b[0] * b[1] * x * ((1 + b[1] * x) ** (-1)),
    "Roszman1": lambda b, x: b[0] - b[1] * x - torch.atan(b[2] / (x - b[3])) / _pi(),
    "ENSO": lambda b, x: (b[0] + b[1] * torch.cos(2 * _pi() * x / 12)
                          + b[2] * torch.sin(2 * _pi() * x / 12)
                          + b[4] * torch.cos(2 * _pi() * x / b[3])
                          + b[5] * torch.sin(2 * _pi() * x / b[3])
                          + b[7] * torch.cos(2 * _pi() * x / b[6])
                          + b[8] * torch.sin(2 * _pi() * x / b[6])),
    "MGH09": lambda b, x: b[0] * (x ** 2 + x * b[1]) / (x ** 2 + x * b[2] + b[3]),
    "Thurber": lambda b, x: ((b[0] + b[1] * x + b[2] * x ** 2 + b[3] * x ** 3)
                             / (1 + b[4] * x + b[5] * x ** 2 + b[6] * x ** 3)),
    "BoxBOD": lambda b, x: b[0] * (1 - torch.exp(-b[1] * x)),
    "Rat42": lambda b, x: b[0] / (1 + torch.exp(b[1] - b[2] * x)),
    "MGH10": lambda b, x: b[0] * torch.exp(b[1] / (x + b[2])),
    "Eckerle4": lambda b, x: (b[0] / b[1]) * torch.exp(-0.5 * ((x - b[2]) / b[1]) ** 2),
    "Rat43": lambda b, x: b[0] / ((1 + torch.exp(b[1] - b[2] * x)) ** (1 / b[3])),
    "Bennett5": lambda b, x: b[0] * (b[1] + x) ** (-1 / b[2]),
}

_NUM = r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?"


@dataclass
class NistProblem:
    """One StRD problem: data, two starts, certified values and standard deviations."""

    name: str
    x: np.ndarray          # (n,) or (2, n) for Nelson
    y: np.ndarray          # (n,); log y for Nelson
    start1: np.ndarray
    start2: np.ndarray
    certified: np.ndarray
    certified_sd: np.ndarray
    certified_rss: float

    @property
    def n_params(self) -> int:
        return self.certified.size


def load(path: str | Path) -> NistProblem:
    """Parse one NIST StRD ``.dat`` file."""
    path = Path(path)
    text = path.read_text().splitlines()
    name = path.stem
    starts1, starts2, cert, sd = [], [], [], []
    pat = re.compile(rf"^\s*b\d+\s*=\s*({_NUM})\s+({_NUM})\s+({_NUM})\s+({_NUM})\s*$")
    rss = math.nan
    data_start = None
    for i, line in enumerate(text):
        m = pat.match(line)
        if m:
            a, b, c, d = (float(v) for v in m.groups())
            starts1.append(a)
            starts2.append(b)
            cert.append(c)
            sd.append(d)
        if line.strip().startswith("Residual Sum of Squares"):
            rss = float(line.split(":")[1])
        if line.strip().startswith("Data:") and re.search(r"\by\b", line) and i > 40:
            data_start = i + 1
    if not cert or data_start is None:
        raise ValueError(f"{path}: not a NIST StRD nonlinear regression file")
    rows = [list(map(float, ln.split())) for ln in text[data_start:] if ln.strip()]
    arr = np.array(rows, dtype=np.float64)
    y = arr[:, 0]
    x = arr[:, 1] if arr.shape[1] == 2 else arr[:, 1:].T.copy()
    if name == "Nelson":
        y = np.log(y)
    return NistProblem(name, x, y, np.array(starts1), np.array(starts2), np.array(cert),
                       np.array(sd), rss)


def load_all(directory: str | Path) -> list[NistProblem]:
    """All problems in ``directory`` that have a model here, in NIST's order of difficulty."""
    directory = Path(directory)
    return [load(directory / f"{n}.dat") for n in MODELS if (directory / f"{n}.dat").exists()]


def digits(value, certified) -> np.ndarray:
    """Log relative error (number of matching significant digits), capped at 15."""
    value = np.asarray(value, dtype=np.float64)
    certified = np.asarray(certified, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(value - certified) / np.abs(certified)
        lre = -np.log10(rel)
    lre = np.where(np.isnan(lre), 0.0, lre)
    return np.clip(lre, 0.0, 15.0)


def fit_problem(prob: NistProblem, start: int = 1, method: str = "auto", **kwargs):
    """Fit one problem with gradfit's default least-squares path; returns the FitResult."""
    from .fitting import fit

    model_b = MODELS[prob.name]

    def model(p, x):
        return model_b(p["b"], x)

    b0 = prob.start1 if start == 1 else prob.start2
    return fit(model, prob.x, prob.y, params={"b": b0}, method=method, **kwargs)
