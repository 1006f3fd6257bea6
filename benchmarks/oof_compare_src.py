"""The same OOF fits under two source trees: do the coefficients agree?

Fits every pyoof-made reference observation of ``tests/data/oof-pyoof`` (the files the
tests fit) with ``gradfit.oof.fit`` at its defaults, at the true order and at orders 3
and 6, once with each tree's ``src`` on ``PYTHONPATH`` (each in its own Python
process), and prints the largest difference of the coefficients (waves), of the
nuisance values, and the iterations and messages side by side.

    python benchmarks/oof_compare_src.py --a /work/main/src --b src
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
DATA = HERE / "tests" / "data" / "oof-pyoof"

_CHILD = r"""
import json, sys
from pathlib import Path
import numpy as np
import gradfit
from gradfit.oof import io
from gradfit.oof.solve import fit
out = {"gradfit": gradfit.__file__}
for f in sorted(Path(sys.argv[1]).glob("*.fits")):
    truth = json.loads(f.with_suffix(".truth.json").read_text())
    for order in sorted({truth["zernike"]["order"], 3, 6}):
        sol = fit(io.read(f), order=order)
        nuis = np.concatenate([np.ravel(v["value"]) for v in sol.nuisance.values()])
        out[f"{f.stem} order {order}"] = {
            "K": sol.K_waves.tolist(), "K_err": sol.K_err_waves.tolist(),
            "nuisance": nuis.tolist(), "nit": sol.fit["nit"], "success": sol.success,
            "message": sol.fit["message"]}
print(json.dumps(out))
"""


def fits(src: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", _CHILD, str(DATA)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(run.stdout)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", default="/work/main/src", help="first source tree (its src/)")
    ap.add_argument("--b", default=str(HERE / "src"), help="second source tree (its src/)")
    a = ap.parse_args(argv)
    A, B = fits(a.a), fits(a.b)
    print(f"a: {A.pop('gradfit')}\nb: {B.pop('gradfit')}")
    worst = 0.0
    for case in A:
        ra, rb = A[case], B[case]
        dK = max(abs(x - y) for x, y in zip(ra["K"], rb["K"]))
        dE = max(abs(x - y) for x, y in zip(ra["K_err"], rb["K_err"]))
        dN = max(abs(x - y) for x, y in zip(ra["nuisance"], rb["nuisance"]))
        worst = max(worst, dK)
        print(f"{case:28s} max|dK| {dK:.2e} waves  max|dK_err| {dE:.2e}  max|d nuisance| "
              f"{dN:.2e}  nit {ra['nit']}/{rb['nit']}  success {ra['success']}/"
              f"{rb['success']}  same message: {ra['message'] == rb['message']}")
    print(f"largest coefficient difference: {worst:.3g} waves")


if __name__ == "__main__":
    main()
