"""A campaign of OOF observations: 50 fresh CLI processes, an in-process loop, and
``oof.fit_many`` (one by one and batched in process, and on a 2-worker Dask
LocalCluster), side by side. Every ``fit_many`` row writes each observation's result
folder and the campaign summary, without figures as the CLI processes
(``--no-figures``), and one row also draws campaign.png.

    python benchmarks/oof_campaign.py                  # 50 observations, 33x33, order 5
    python benchmarks/oof_campaign.py --n 10 --cli 10  # smaller
    python benchmarks/oof_campaign.py --json out.json
    python benchmarks/oof_campaign.py --realistic      # maps as a telescope makes them

``--realistic`` makes the observations with ``gradfit.oof.realistic.simulate_realistic``
(a background, gain and pointing drift per map, correlated scan noise, a flagged sample
per map, no noise column): measured maps, whose fits free those nuisance parameters and
measure the scan noise, and which ``fit_many`` fits one by one (not batched).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50, help="observations in the campaign")
    ap.add_argument("--cli", type=int, default=None,
                    help="how many of them to fit as fresh CLI processes (default: all)")
    ap.add_argument("--npix", type=int, default=33)
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--no-dask", action="store_true")
    ap.add_argument("--realistic", action="store_true",
                    help="measured-looking maps (simulate_realistic) instead of simulate")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    import torch

    from gradfit import oof
    from gradfit.oof import campaign

    torch.set_num_threads(1)
    # realistic maps carry a flagged sample each: the reader says so for every file
    warnings.filterwarnings("ignore", message=r".*masked \d+ of", category=UserWarning)
    tmp = Path(tempfile.mkdtemp(prefix="oof-campaign-"))
    files = []
    if a.realistic:
        from gradfit.oof.realistic import simulate_realistic
    for i in range(a.n):
        if a.realistic:
            o, _ = simulate_realistic(order=a.order, npix=a.npix, seed=100 + i)
        else:
            o = oof.simulate(order=a.order, npix=a.npix, snr=1000, seed=100 + i)
        o.meta["MEANEL"] = 15.0 + 70.0 * i / max(a.n - 1, 1)
        f = tmp / f"obs{i:03d}.fits"
        oof.write(o, f)
        files.append(f)
    out = {"n": a.n, "npix": a.npix, "order": a.order, "realistic": a.realistic,
           "load_before": os.getloadavg()[0]}
    rows = []

    n_cli = a.n if a.cli is None else min(a.cli, a.n)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t = time.perf_counter()
    for i, f in enumerate(files[:n_cli]):
        r = subprocess.run([sys.executable, "-m", "gradfit", "oof", "fit", str(f), "--order",
                            str(a.order), "--no-figures", "-q", "--out", str(tmp / f"cli{i}")],
                           env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"CLI fit of {f} failed: {r.stderr.strip()}")
    t_cli = (time.perf_counter() - t) / n_cli
    rows.append(("fresh CLI process per file", t_cli * a.n, t_cli, n_cli))

    t = time.perf_counter()
    loop = [oof.fit(oof.read(f), order=a.order) for f in files]
    t_loop = time.perf_counter() - t
    rows.append(("in-process loop (read + fit)", t_loop, t_loop / a.n, a.n))

    t = time.perf_counter()
    campaign.fit_many(files, order=a.order)
    t_nw = time.perf_counter() - t
    rows.append(("oof.fit_many, batched, no result files (read + fit)", t_nw, t_nw / a.n, a.n))

    t = time.perf_counter()
    one = campaign.fit_many(files, order=a.order, out=tmp / "one", batch=False, figures=False)
    t_one = time.perf_counter() - t
    rows.append(("oof.fit_many, one by one, writing results", t_one, t_one / a.n, a.n))

    t = time.perf_counter()
    many = campaign.fit_many(files, order=a.order, out=tmp / "many", figures=False)
    t_many = time.perf_counter() - t
    rows.append(("oof.fit_many, batched, writing results", t_many, t_many / a.n, a.n))

    t = time.perf_counter()
    campaign.fit_many(files, order=a.order, out=tmp / "fig")
    t_fig = time.perf_counter() - t
    rows.append(("oof.fit_many, batched, writing results and campaign.png", t_fig,
                 t_fig / a.n, a.n))
    out["n_batched"] = sum(bool(r.get("batched")) for r in many.rows)
    def max_diff(result):  # largest |K - K of the loop| over the campaign, waves
        return max(float(np.max(np.abs(np.array([z["value_waves"] for z in r["zernike"]])
                                       - s.K_waves))) for r, s in zip(result.rows, loop))

    same = max_diff(many)
    out["max_diff_fit_many_vs_loop_waves"] = same
    out["max_diff_one_by_one_vs_loop_waves"] = max_diff(one)

    if not a.no_dask:
        t = time.perf_counter()
        dk = campaign.fit_many(files, order=a.order, out=tmp / "dask", dask="local")
        t_dask = time.perf_counter() - t
        rows.append(("oof.fit_many, Dask LocalCluster (2 workers), writing", t_dask,
                     t_dask / a.n, a.n))
        out["max_diff_dask_vs_loop_waves"] = max_diff(dk)
    out["load_after"] = os.getloadavg()[0]
    base = rows[0][1]
    kind = "realistic " if a.realistic else ""
    print(f"campaign of {a.n} {kind}observations ({a.npix}x{a.npix}, order {a.order}); load "
          f"{out['load_before']:.1f} -> {out['load_after']:.1f}")
    print(f"{'how':<55}{'total s':>9}{'per obs s':>11}{'vs CLI':>8}")
    for name, tot, per, n in rows:
        note = "" if n == a.n else f"  (measured on {n}, total = {a.n} x per obs)"
        print(f"{name:<55}{tot:>9.1f}{per:>11.3f}{base / tot:>7.1f}x{note}")
    out["rows"] = [{"how": r[0], "total_s": r[1], "per_obs_s": r[2], "measured_on": r[3],
                    "speedup_vs_cli": base / r[1]} for r in rows]
    print(f"{out['n_batched']} of {a.n} observations fitted from the batch; "
          f"same coefficients as the loop to {same:.1e} waves (one by one: "
          f"{out['max_diff_one_by_one_vs_loop_waves']:.1e})"
          + (f" (Dask: {out['max_diff_dask_vs_loop_waves']:.1e})" if not a.no_dask else ""))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
