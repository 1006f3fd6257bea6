"""Hopeless observations in a campaign's batched first pass: what they cost, and whether
LM's stall stop (``gradfit.oof.solve.STALL``) could end them there.

``gradfit.oof.campaign.fit_many`` first fits the observations of one geometry in one
``gradfit.fit_batch`` call (``gradfit.oof.batchfit.batched_starts``: float32 on the CPU,
``max_iter`` 100). This times ``batched_starts`` for ordinary simulations (Effelsberg,
order 5, 33 x 33, peak SNR 1000) with none, one and two hopeless ones among them (peak
SNR 1, or pure noise as in benchmarks/oof_low_snr.py), side by side, and prints the
iterations per problem. Then, for each hopeless observation alone with four ordinary
ones, the accepted costs of its batched LM run: how many there were, their relative
fall over the last ``window`` accepted iterations and over the ``window`` before (what
the stall rule tests) and whether the rule would stop it; with ``--max-iter`` and
``--float64`` the same for a longer or float64 run. With ``--starts``, each hopeless
observation's ``oof.fit`` from its batched start (what ``fit_many`` runs first) and from
scratch. Last, ``fit_many`` of the whole campaign with and without one hopeless
observation, for scale.

    python benchmarks/oof_batch_stall.py
    python benchmarks/oof_batch_stall.py --n 20 --seeds 0 1 2 3 4 --no-campaign
    python benchmarks/oof_batch_stall.py --seeds 0 --max-iter 1000 --float64 --no-campaign
    python benchmarks/oof_batch_stall.py --seeds 0 1 2 3 4 --kinds snr1 snr3 noise --starts
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def hopeless(kind: str, seed: int, npix: int, order: int):
    from gradfit.oof.simulate import simulate, simulate_noise

    if kind == "noise":
        return simulate_noise("effelsberg", order=order, npix=npix, seed=seed)
    return simulate("effelsberg", order=order, snr=float(kind.removeprefix("snr")),
                    npix=npix, seed=seed)


class _Spy:
    """The BatchResults of gradfit.fit_batch, and the cost of the working set's last row
    after every batched LM iteration (instrumentation of this benchmark only)."""

    def __enter__(self):
        import gradfit
        from gradfit.solvers import batched

        self.g, self.b = gradfit, batched
        self.fit_batch, self.run = gradfit.fit_batch, batched._Driver.run
        self.results, self.last = [], []
        spy = self

        def fit_batch(*a, **k):
            r = spy.fit_batch(*a, **k)
            spy.results.append(r)
            return r

        def run(drv, step):
            def traced(o, s):
                if not spy.last:  # the starting cost
                    spy.last.append(float(s["cost"][-1]))
                new = step(o, s)
                spy.last.append(float(new["cost"][-1]))
                return new
            return spy.run(drv, traced)

        gradfit.fit_batch, batched._Driver.run = fit_batch, run
        return self

    def __exit__(self, *exc):
        self.g.fit_batch, self.b._Driver.run = self.fit_batch, self.run


def timed(fn, repeats):
    best, out = np.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10, help="ordinary observations in the batch")
    ap.add_argument("--npix", type=int, default=33)
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--kinds", nargs="+", default=["snr1", "noise"])
    ap.add_argument("--max-iter", type=int, default=100,
                    help="batched LM limit of the traces (batched_starts' default: 100)")
    ap.add_argument("--float64", action="store_true", help="trace a float64 batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--starts", action="store_true",
                    help="also fit each hopeless observation from its batched start and from "
                         "scratch (slow: seconds each)")
    ap.add_argument("--no-campaign", action="store_true")
    a = ap.parse_args(argv)

    import torch

    import gradfit
    from gradfit.oof import batchfit, campaign, solve
    from gradfit.oof.model import BeamModel
    from gradfit.oof.simulate import simulate
    from gradfit.solvers.lm import _stalled

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    window, rtol, ratio = solve.STALL
    ords = [simulate("effelsberg", order=a.order, snr=1000, npix=a.npix, seed=100 + i)
            for i in range(a.n)]
    bad = {k: [hopeless(k, s, a.npix, a.order) for s in a.seeds] for k in a.kinds}

    print(f"batched_starts, {a.n} ordinary observations (best of {a.repeats})")
    cases = [("ordinary only", ords)]
    for k in a.kinds:
        cases += [(f"+1 {k}", ords + bad[k][:1]), (f"+2 {k}", ords + bad[k][:2])]
    t_ref = None
    for label, group in cases:
        with _Spy() as spy:
            t, starts = timed(lambda g=group: batchfit.batched_starts(g, a.order), a.repeats)
        res = spy.results[-1]
        t_ref = t if t_ref is None else t_ref
        extra = res.nit[a.n:]
        print(f"  {label:15s} {t:6.3f} s ({t / t_ref:4.2f}x)  ordinary nit "
              f"{int(res.nit[:a.n].min())}-{int(res.nit[:a.n].max())}  hopeless nit "
              f"{[int(i) for i in extra]} {sorted(set(res.messages[a.n:]))}  "
              f"no start: {sum(s is None for s in starts)}")

    dt = torch.float64 if a.float64 else torch.float32
    print(f"\nthe hopeless problem's accepted costs (batched LM, {dt}, max_iter {a.max_iter};"
          f" stall rule {solve.STALL})")
    for k in a.kinds:
        for s, obs in zip(a.seeds, bad[k]):
            group = ords[:4] + [obs]
            key = batchfit.geometry_key(obs, None, a.order)
            model = BeamModel(obs, key[0], a.order, key[-1], dtype=dt)
            with _Spy() as spy:
                t0 = time.perf_counter()
                batchfit._fit_group(gradfit, model, batchfit._group_data(group), a.max_iter)
                t = time.perf_counter() - t0
            res = spy.results[-1]
            acc = [spy.last[0]] + [c for p, c in zip(spy.last, spy.last[1:]) if c != p]
            stop = next((i for i in range(1, len(acc) + 1)
                         if _stalled(acc[:i], window, rtol, ratio)), None)
            c = np.array(acc)
            recent = (c[-window - 1] - c[-1]) / c[-1] if len(c) > window else np.nan
            before = (c[-2 * window - 1] - c[-window - 1]) / c[-1] \
                if len(c) > 2 * window else np.nan
            print(f"  {k:6s} seed {s}: nit {int(res.nit[-1]):4d}  accepted {len(acc) - 1:4d}  "
                  f"{res.messages[-1][:40]:40s}  fall over last {window}: {recent:.2g}, "
                  f"the {window} before: {before:.2g}  stall stop at accepted: {stop and stop - 1}"
                  f"  ({t:.2f} s)")

    if a.starts:
        print("\nis a hopeless observation's batched start worth using? oof.fit from it "
              "(as fit_many does) and from scratch; ok = success and adequate")
        for k in a.kinds:
            for s, obs in zip(a.seeds, bad[k]):
                with _Spy() as spy:
                    start = batchfit.batched_starts(ords[:4] + [obs], a.order)[-1]
                res = spy.results[-1]
                line = f"  {k:6s} seed {s}: batch nit {int(res.nit[-1]):3d} " \
                       f"{res.messages[-1][:24]:24s}"
                for label, st in (("from start", start), ("from scratch", None)):
                    if label == "from start" and st is None:
                        line += f"  {'no start':38s}"
                        continue
                    t, sol = timed(lambda st=st, o=obs: solve.fit(o, order=a.order, start=st), 1)
                    ok = sol.success and sol.adequacy.get("adequate", True)
                    line += f"  {label} {t:5.2f} s nit {sol.fit['nit']:4d} ok={ok!s:5s}"
                print(line, flush=True)

    if a.no_campaign:
        return
    print("\nfit_many, in process, batched (one hopeless = the first snr/noise case)")
    k = a.kinds[0]
    for label, group in [("ordinary only", ords), (f"+1 {k}", ords + bad[k][:1])]:
        with _Spy() as spy:
            t, res = timed(lambda g=group: campaign.fit_many(g, order=a.order), 1)
        print(f"  {label:15s} {t:6.2f} s  rows batched {sum(r['batched'] for r in res.rows)}")


if __name__ == "__main__":
    main()
