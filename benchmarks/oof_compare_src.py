"""The same OOF fits under two source trees: do the coefficients agree, and which is faster?

Fits every pyoof-made reference observation of ``tests/data/oof-pyoof`` (the files the
tests fit) with ``gradfit.oof.fit`` at its defaults, at the true order and at orders 3
and 6, once with each tree's ``src`` on ``PYTHONPATH`` (each in its own Python
process), and prints the largest difference of the coefficients (waves), of the
nuisance values, and the iterations and messages side by side.

``--scattered`` adds each file with its samples jittered by 5% of the grid step (no
longer a grid: the direct transform, as for many real scans). ``--time N`` also times
each fit, best of N in each tree, the two trees' processes taking turns N times (the
machine's load hits both alike), and prints the ratio.

    python benchmarks/oof_compare_src.py --a /work/main/src --b src
    python benchmarks/oof_compare_src.py --a OLD/src --b src --scattered --time 3
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
import dataclasses, json, sys, time
from pathlib import Path
import numpy as np
import gradfit
from gradfit.oof import io
from gradfit.oof.solve import fit
scattered, reps = sys.argv[2] == "1", int(sys.argv[3])
out = {"gradfit": gradfit.__file__}
def jitter(obs, seed=0):
    rng = np.random.default_rng(seed)
    maps = []
    for m in obs.maps:
        step = float(np.ptp(m.u)) / (m.shape[1] - 1)
        maps.append(dataclasses.replace(
            m, u=m.u + rng.normal(0, 0.05 * step, m.n), v=m.v + rng.normal(0, 0.05 * step, m.n),
            shape=None))
    return dataclasses.replace(obs, maps=maps)
for f in sorted(Path(sys.argv[1]).glob("*.fits")):
    truth = json.loads(f.with_suffix(".truth.json").read_text())
    kinds = [("", io.read(f))] + ([(" scattered", jitter(io.read(f)))] if scattered else [])
    for label, obs in kinds:
        for order in sorted({truth["zernike"]["order"], 3, 6}):
            times = []
            for _ in range(max(reps, 1)):
                t = time.perf_counter()
                sol = fit(obs, order=order)
                times.append(time.perf_counter() - t)
            nuis = np.concatenate([np.ravel(v["value"]) for v in sol.nuisance.values()])
            out[f"{f.stem}{label} order {order}"] = {
                "K": sol.K_waves.tolist(), "K_err": sol.K_err_waves.tolist(),
                "nuisance": nuis.tolist(), "nit": sol.fit["nit"], "success": sol.success,
                "message": sol.fit["message"], "time_s": min(times),
                "transform": sol.fit.get("transform")}
print(json.dumps(out))
"""


def fits(src: str, scattered: bool = False, reps: int = 0) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", _CHILD, str(DATA), str(int(scattered)),
                          str(reps)], env=env, check=True, capture_output=True, text=True)
    return json.loads(run.stdout)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", default="/work/main/src", help="first source tree (its src/)")
    ap.add_argument("--b", default=str(HERE / "src"), help="second source tree (its src/)")
    ap.add_argument("--scattered", action="store_true",
                    help="also fit each file with jittered (scattered) samples")
    ap.add_argument("--time", type=int, default=0, metavar="N",
                    help="time each fit: best of N, the trees taking turns")
    a = ap.parse_args(argv)
    A, B = {}, {}
    for _ in range(max(a.time, 1)):  # turns: a, b, a, b, ...
        for store, src in ((A, a.a), (B, a.b)):
            got = fits(src, a.scattered, 1 if a.time else 0)
            for case, row in got.items():
                if case == "gradfit" or case not in store or (
                        a.time and row["time_s"] < store[case]["time_s"]):
                    store[case] = row
    print(f"a: {A.pop('gradfit')}\nb: {B.pop('gradfit')}")
    worst = 0.0
    for case in A:
        ra, rb = A[case], B[case]
        dK = max(abs(x - y) for x, y in zip(ra["K"], rb["K"]))
        dE = max(abs(x - y) for x, y in zip(ra["K_err"], rb["K_err"]))
        dN = max(abs(x - y) for x, y in zip(ra["nuisance"], rb["nuisance"]))
        worst = max(worst, dK)
        timing = (f"  time {ra['time_s']:.3f}/{rb['time_s']:.3f} s "
                  f"(a/b {ra['time_s'] / rb['time_s']:.2f})" if a.time else "")
        print(f"{case:38s} max|dK| {dK:.2e} waves  max|dK_err| {dE:.2e}  max|d nuisance| "
              f"{dN:.2e}  nit {ra['nit']}/{rb['nit']}  success {ra['success']}/"
              f"{rb['success']}  same message: {ra['message'] == rb['message']}{timing}")
    print(f"largest coefficient difference: {worst:.3g} waves")


if __name__ == "__main__":
    main()
