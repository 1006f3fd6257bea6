"""The cost of a gradient: autodiff versus finite differences, as the parameter count grows.

A generic array model, a sum of K Gaussians on N points (P = 2K parameters:
amplitude and centre of each, common known width), with a Gaussian −log L.
For P from 2 to 200 it times, side by side in one run (warm-up, then the
median of repeats):

- f alone (PyTorch, through :class:`gradfit.objective.Objective`);
- f + ∇f by reverse-mode autodiff (``Objective.value_and_grad``: one pass);
- f alone in NumPy, and f + ∇f by forward finite differences in NumPy
  (P + 1 evaluations, SciPy's '2-point' step);

and prints the ratios: autodiff f+∇f / f should stay at most about 3 whatever P,
while finite differences grow as P + 1. Writes the table as JSON too.

Usage::

    python benchmarks/gradient_cost.py [--quick] [--n 20000] [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from gradfit.bench.timing import fd_value_and_grad, median_time
from gradfit.objective import Objective

P_VALUES = (2, 4, 10, 20, 50, 100, 200)


def make_data(n: int, k: int, seed: int = 0):
    """x, y, the width and a parameter vector [A_1, mu_1, A_2, mu_2, ...] near the truth."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 100.0, n)
    width = 100.0 / (4 * k + 4)
    truth = np.empty(2 * k)
    truth[0::2] = rng.uniform(1.0, 2.0, k)
    truth[1::2] = np.linspace(5.0, 95.0, k) + rng.normal(0, 0.3 * width, k)
    sigma = 0.05
    y = model_numpy(truth, x, width) + rng.normal(0.0, sigma, n)
    return x, y, width, sigma, truth + rng.normal(0.0, 0.01, 2 * k)


def model_numpy(theta, x, width):
    A, mu = theta[0::2], theta[1::2]
    return np.sum(A[:, None] * np.exp(-0.5 * ((x - mu[:, None]) / width) ** 2), 0)


def nll_numpy(theta, x, y, width, sigma):
    """Gaussian −log L, NumPy."""
    A, mu = theta[0::2], theta[1::2]
    m = np.sum(A[:, None] * np.exp(-0.5 * ((x - mu[:, None]) / width) ** 2), 0)
    return 0.5 * np.sum(((y - m) / sigma) ** 2)


def nll_torch(theta, x, y, width, sigma):
    """Gaussian −log L, PyTorch (the same lines with ``torch``)."""
    A, mu = theta[0::2], theta[1::2]
    m = torch.sum(A[:, None] * torch.exp(-0.5 * ((x - mu[:, None]) / width) ** 2), 0)
    return 0.5 * torch.sum(((y - m) / sigma) ** 2)


def measure(p: int, n: int, repeats: int) -> dict:
    """One row of the table for P = p parameters on n points."""
    if p < 2 or p % 2:
        raise ValueError(f"P must be an even number >= 2 (amplitude and centre per Gaussian), "
                         f"got {p}")
    x, y, width, sigma, theta = make_data(n, p // 2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    obj = Objective(lambda z: nll_torch(z, xt, yt, width, sigma), p)
    z = obj.as_tensor(theta)
    t_f = median_time(lambda: obj.value(z), repeats, budget_s=5.0)
    t_fg = median_time(lambda: obj.value_and_grad(z), repeats, budget_s=5.0)

    def f_np(t):
        return nll_numpy(t, x, y, width, sigma)

    t_f_np = median_time(lambda: f_np(theta), repeats, budget_s=5.0)
    t_fd = median_time(lambda: fd_value_and_grad(f_np, theta), repeats,
                       budget_s=5.0)
    # the two gradients agree (a benchmark of a wrong gradient would be worthless)
    _, g_ad = obj.value_and_grad(z)
    _, g_fd = fd_value_and_grad(f_np, theta)
    rel = float(np.max(np.abs(g_ad.numpy() - g_fd)) / max(np.max(np.abs(g_fd)), 1e-300))
    return {
        "P": p,
        "N": n,
        "t_f_torch_s": t_f,
        "t_f_grad_autodiff_s": t_fg,
        "t_f_numpy_s": t_f_np,
        "t_f_grad_fd_numpy_s": t_fd,
        "ratio_autodiff_over_f": t_fg / t_f,
        "ratio_fd_over_f_numpy": t_fd / t_f_np,
        "ratio_fd_over_autodiff": t_fd / t_fg,
        "grad_max_rel_diff_fd_vs_autodiff": rel,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer points and repeats")
    ap.add_argument("--n", type=int, default=None, help="data points (default 20000; quick 5000)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 7; quick 3)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: NumPy runs on one core too)")
    ap.add_argument("--out", default="bench-output/gradient_cost.json", help="JSON file to write")
    args = ap.parse_args(argv)
    n = args.n or (5000 if args.quick else 20000)
    repeats = args.repeats or (3 if args.quick else 7)
    if n < 10 or repeats < 1 or args.threads < 1:
        ap.error("--n must be >= 10, --repeats and --threads >= 1")
    torch.set_num_threads(args.threads)

    rows = []
    head = (f"{'P':>4s} {'f torch':>10s} {'f+grad AD':>10s} {'AD/f':>6s} {'f numpy':>10s} "
            f"{'f+grad FD':>10s} {'FD/f':>7s} {'FD/AD':>7s}")
    print(f"sum of Gaussians on N = {n} points; torch {torch.__version__}, {args.threads} "
          f"thread(s); seconds (median of {repeats})", file=sys.stderr)
    print(head, file=sys.stderr)
    for p in P_VALUES:
        r = measure(p, n, repeats)
        rows.append(r)
        print(f"{p:4d} {r['t_f_torch_s']:10.2e} {r['t_f_grad_autodiff_s']:10.2e} "
              f"{r['ratio_autodiff_over_f']:6.2f} {r['t_f_numpy_s']:10.2e} "
              f"{r['t_f_grad_fd_numpy_s']:10.2e} {r['ratio_fd_over_f_numpy']:7.1f} "
              f"{r['ratio_fd_over_autodiff']:7.1f}", file=sys.stderr)
    worst = max(r["ratio_autodiff_over_f"] for r in rows)
    print(f"autodiff f+grad / f: at most {worst:.2f} over P = {P_VALUES[0]}..{P_VALUES[-1]}; "
          f"finite differences / f: {rows[0]['ratio_fd_over_f_numpy']:.1f} at P = {P_VALUES[0]} "
          f"to {rows[-1]['ratio_fd_over_f_numpy']:.1f} at P = {P_VALUES[-1]} (P + 1 expected)",
          file=sys.stderr)
    report = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "N": n, "repeats": repeats, "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
