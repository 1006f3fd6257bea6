"""Fresh-process cost of `gradfit oof fit` beyond importing torch (issue 8's goal: <= 1.0 s).

Runs, interleaved so that the machine's load hits both alike, N times each:

    python -c "import torch"
    gradfit oof fit FILE --order 5 --no-figures --out DIR

on a simulated 49 x 49, order-5 Effelsberg observation, and prints the minimum and the
median of each and of their difference. With ``--figures`` it also times the same fit
with figures.

    python benchmarks/cli_startup.py [--repeat 5] [--figures] [--compare OLD/src] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _time(cmd, env=None) -> tuple[float, float]:
    """(wall, CPU) seconds of one run; CPU time (user + system of the child) is what a
    shared, loaded machine distorts least."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=env)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--figures", action="store_true", help="also time the fit with figures")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--compare", metavar="SRC",
                    help="also time the fit with PYTHONPATH=SRC (e.g. an older checkout's src)")
    args = ap.parse_args(argv)

    py = sys.executable
    script = shutil.which("gradfit")  # the installed command, as users run it
    gradfit = [script] if script else [py, "-m", "gradfit.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        obs = Path(tmp) / "sim49.fits"
        subprocess.run(gradfit + ["oof", "simulate", "--npix", "49", "--order", "5", "--out",
                                  str(obs)], check=True, stderr=subprocess.DEVNULL)
        cases = {
            "import torch": [py, "-c", "import torch"],
            "oof fit --no-figures": gradfit + ["oof", "fit", str(obs), "--order", "5",
                                               "--no-figures", "--out", f"{tmp}/r"],
        }
        if args.figures:
            cases["oof fit (figures)"] = gradfit + ["oof", "fit", str(obs), "--order", "5",
                                                    "--out", f"{tmp}/f"]
        envs = {k: None for k in cases}
        if args.compare:
            k = f"oof fit --no-figures [{args.compare}]"
            cases[k] = cases["oof fit --no-figures"][:-1] + [f"{tmp}/c"]
            envs[k] = dict(os.environ, PYTHONPATH=str(Path(args.compare).resolve()))
        times = {k: [] for k in cases}
        cpus = {k: [] for k in cases}
        for _ in range(args.repeat):
            for k, cmd in cases.items():
                wall, cpu = _time(cmd, envs[k])
                times[k].append(wall)
                cpus[k].append(cpu)
    out = {}
    for k in cases:
        row = {}
        for what, series in (("wall", times), ("cpu", cpus)):
            ts, base = series[k], series["import torch"]
            row[f"{what}_min_s"] = min(ts)
            row[f"{what}_median_s"] = statistics.median(ts)
            if k != "import torch":
                row[f"{what}_beyond_torch_min_s"] = min(ts) - min(base)
                row[f"{what}_beyond_torch_median_s"] = statistics.median(
                    [t - b for t, b in zip(ts, base)])
        out[k] = row
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{'command':<40} {'wall min/median':>16} {'CPU min/median':>15} "
              f"{'beyond torch: wall / CPU (medians)':>36}")
        for k, r in out.items():
            extra = (f"{r['wall_beyond_torch_median_s']:.2f} / "
                     f"{r['cpu_beyond_torch_median_s']:.2f} s"
                     if "wall_beyond_torch_min_s" in r else "")
            print(f"{k:<40} {r['wall_min_s']:>7.2f}/{r['wall_median_s']:<7.2f}s "
                  f"{r['cpu_min_s']:>6.2f}/{r['cpu_median_s']:<6.2f}s {extra:>36}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
