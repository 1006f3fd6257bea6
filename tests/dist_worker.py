"""Worker for tests/test_distributed.py, run by ``python -m torch.distributed.run``.

Every rank fits its shard of one data set (with the dense and the matrix-free
solvers, with and without chunks), then runs a fit in which rank 1's model raises
mid-fit and a fit whose parameter shapes differ between ranks, and writes what it
got to ``<out>.<rank>.json``.
"""

import json
import os
import sys

import numpy as np
import torch

import gradfit

torch.set_num_threads(1)


def data():
    rng = np.random.default_rng(7)
    x = np.linspace(0.0, 10.0, 3001)
    y = 3.0 * np.exp(-0.4 * x) + 0.5 * np.sin(1.3 * x) + 0.01 * rng.standard_normal(x.size)
    return x, y


def model(p, x):
    return p["a"] * torch.exp(-p["k"] * x) + p["b"] * torch.sin(p["w"] * x)


P0 = {"a": 2.0, "k": 0.3, "b": 0.4, "w": 1.25}
CASES = {"lm": dict(method="lm"), "lm-cg-chunks": dict(method="lm-cg", chunk_size=400),
         "lbfgs-chunks": dict(method="lbfgs", chunk_size=700)}


def main(out):
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    x, y = data()
    xs, ys = x[rank::world], y[rank::world]  # this rank's shard
    got = {}
    for name, kw in CASES.items():
        r = gradfit.fit(model, xs, ys, P0, distributed=True, **kw)
        got[name] = {"params": r.params, "errors": r.errors, "method": r.method,
                     "fun": r.fun, "ndata": r.ndata, "success": r.success}

    calls = [0]

    def failing(p, x):
        calls[0] += 1
        if rank == 1 and calls[0] > 6:  # after set-up, in the middle of the fit
            raise RuntimeError("model exploded on rank 1")
        return model(p, x)

    try:
        gradfit.fit(failing, xs, ys, P0, distributed=True, method="lm")
        got["failure"] = "no error"
    except Exception as exc:  # noqa: BLE001 - the test checks the type and text
        got["failure"] = f"{type(exc).__name__}: {exc}"

    def model_c(p, x):
        return model(p, x) + 0 * p["c"].sum()

    pc = dict(P0, c=np.zeros(2 + rank))
    try:
        gradfit.fit(model_c, xs, ys, pc, distributed=True, method="lbfgs")
        got["shapes"] = "no error"
    except Exception as exc:  # noqa: BLE001
        got["shapes"] = f"{type(exc).__name__}: {exc}"
    with open(f"{out}.{rank}.json", "w") as fh:
        json.dump(got, fh)


if __name__ == "__main__":
    main(sys.argv[1])
