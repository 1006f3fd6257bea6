"""OOF fits of hopeless data: iterations, time and verdict from high to no signal.

Simulated Effelsberg observations (``gradfit.oof.simulate``, order 5, 3 maps of
33 x 33) at in-focus peak SNR 1000, 30, 3 and 1, and pure noise (the same maps with
the beam taken out), each fitted by ``gradfit.oof.fit`` at its defaults, with LM's stall
stop (``gradfit.oof.solve.STALL``) off and on, side by side. ``nit`` is the iterations
of the kept start, ``nit all`` those of every start; ``dK`` the rms coefficient error
(n >= 2, waves) against the truth.

``--tail`` prints, for the first start of each fit with the stop off, the relative fall
of -log L per accepted iteration (log10) at iterations 10, 20, 50, 100, 200, 500 and
999, and over windows of 40: what the stall stop tests (a crawl keeps falling by 1e-9
to 1e-8 of itself per iteration, a converging fit shrinks that geometrically).

    python benchmarks/oof_low_snr.py                    # seed 0, stop off and on
    python benchmarks/oof_low_snr.py --seeds 0 1 2 --tail
    python benchmarks/oof_low_snr.py --only on          # just the current default
"""

from __future__ import annotations

import argparse
import time

import numpy as np

NOISE = 0.0  # "SNR" of the pure-noise case


def observation(snr: float, seed: int, npix: int, order: int):
    from gradfit.oof.simulate import simulate, simulate_noise

    if snr != NOISE:
        return simulate("effelsberg", order=order, snr=snr, npix=npix, seed=seed)
    return simulate_noise("effelsberg", order=order, npix=npix, seed=seed)


class _Costs:
    """The accepted -log L of every LM run (instrumentation of the benchmark only: the
    solver's callback hook wrapped for the duration of a fit)."""

    def __init__(self):
        import gradfit.solvers.lm as lm

        self.lm, self.runs = lm, []
        self._call_back, self._solve = lm.call_back, lm._levenberg_marquardt

    def __enter__(self):
        def call_back(opts, nit, z, f):
            self.runs[-1].append(float(f))
            return self._call_back(opts, nit, z, f)

        def solve(obj, z0, opts):
            self.runs.append([])
            return self._solve(obj, z0, opts)

        self.lm.call_back, self.lm._levenberg_marquardt = call_back, solve
        return self

    def __exit__(self, *exc):
        self.lm.call_back, self.lm._levenberg_marquardt = self._call_back, self._solve


def run(snr, seed, npix, order, stall_on: bool):
    from gradfit.oof import solve

    obs = observation(snr, seed, npix, order)
    saved = solve.STALL
    solve.STALL = saved if stall_on else None
    try:
        with _Costs() as costs:
            t0 = time.perf_counter()
            sol = solve.fit(obs, order=order)
            dt = time.perf_counter() - t0
    finally:
        solve.STALL = saved
    dK = float("nan")
    if obs.truth is not None:
        d = sol.K_waves - np.asarray(obs.truth["K_waves"])
        n = np.array([z["n"] for z in sol.zernike])
        dK = float(np.sqrt(np.mean(d[n >= 2] ** 2)))
    return {"snr": snr, "seed": seed, "stall": stall_on, "nit": sol.fit["nit"],
            "nit_all": sum(len(c) for c in costs.runs), "starts": sol.fit["starts"],
            "time_s": dt, "success": sol.success, "adequate": sol.adequacy["adequate"],
            "misfit": sol.fit["normalised_residual"], "dK": dK,
            "message": sol.fit["message"], "costs": costs.runs}


def tail(costs) -> str:
    c = np.asarray(costs)
    rel = -np.diff(c) / c[1:]
    out = []
    for k in (10, 20, 50, 100, 200, 500, 999):
        if k <= rel.size:
            win = (c[k - 40] - c[k]) / c[k] if k >= 40 else float("nan")
            out.append(f"{k}: {np.log10(max(rel[k - 1], 1e-300)):.1f}/{np.log10(win):.1f}"
                       if k >= 40 else f"{k}: {np.log10(max(rel[k - 1], 1e-300)):.1f}")
    return "  ".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--snr", type=float, nargs="+", default=[1000, 30, 3, 1, NOISE],
                    help="in-focus peak SNRs (0: pure noise)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--npix", type=int, default=33)
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--only", choices=("off", "on"), default=None,
                    help="run the stall stop only off or only on")
    ap.add_argument("--tail", action="store_true",
                    help="print the relative fall of -log L per iteration (stop off)")
    a = ap.parse_args(argv)
    modes = [False, True] if a.only is None else [a.only == "on"]
    print(f"Effelsberg, order {a.order}, 3 maps of {a.npix} x {a.npix}, oof.fit defaults")
    head = (f"{'data':>10} {'seed':>4} {'stall':>5} {'nit':>5} {'nit all':>7} {'starts':>6} "
            f"{'time s':>7} {'success':>7} {'adequate':>8} {'misfit':>6} {'dK':>7}  message")
    print(head)
    print("-" * len(head))
    tails = []
    for snr in a.snr:
        for seed in a.seeds:
            for on in modes:
                r = run(snr, seed, a.npix, a.order, on)
                data = "noise" if snr == NOISE else f"SNR {snr:g}"
                print(f"{data:>10} {seed:>4} {'on' if on else 'off':>5} {r['nit']:>5} "
                      f"{r['nit_all']:>7} {r['starts']:>6} {r['time_s']:>7.2f} "
                      f"{str(r['success']):>7} {str(r['adequate']):>8} {r['misfit']:>6.3f} "
                      f"{r['dK']:>7.4f}  {r['message'][:90]}", flush=True)
                if not on and r["costs"]:
                    tails.append((data, seed, len(r["costs"][0]), tail(r["costs"][0])))
    if a.tail and tails:
        print("\nfirst start, stop off: iteration: log10 relative fall of -log L over that "
              "iteration / over the 40 before it")
        for data, seed, n, t in tails:
            print(f"{data:>10} seed {seed} ({n} it.)  {t}")


if __name__ == "__main__":
    main()
