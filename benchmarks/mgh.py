"""The Moré–Garbow–Hillstrom test set (35 problems, 38 instances) through every minimiser.

For each gradfit method and its SciPy peer (same exact autodiff derivatives; SciPy at
its default and at tight tolerances), prints per instance the final F = Σ f_i², whether
F* was reached (``solved``), the success flag and the time, then the solved counts,
the false success claims (success=True away from every known minimum, with a gradient
that is not small) and the longest run.

    PYTHONPATH=src python benchmarks/mgh.py [--methods lm,bfgs] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from gradfit.mgh import PEERS, PROBLEMS, run_gradfit, run_scipy


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(PEERS),
                    help="comma-separated gradfit methods (default: all with a SciPy peer)")
    ap.add_argument("--no-scipy", action="store_true", help="skip the SciPy peers")
    ap.add_argument("--json", help="write all runs to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    # The first double-backward through pow imports part of torch (several seconds, once per
    # process); do it here so that it is not charged to whichever run meets it first.
    warm = PROBLEMS[10]
    torch.autograd.functional.hessian(lambda x: warm.cost(x), warm.start())
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = {}
    summary = []
    for m in methods:
        peer = PEERS.get(m)
        print(f"\n== gradfit {m}" + (f"  vs  SciPy {peer} (default | tight)" if peer and
                                       not args.no_scipy else ""))
        print(f"{'instance':46s} {'gradfit F':>11s} ok  solv {'t/s':>6s}"
              + (f" | {'SciPy F':>11s} ok  solv | {'tight F':>11s} ok  solv" if peer and
                 not args.no_scipy else ""))
        g_solved = s_solved = false = 0
        s_false = 0
        tmax = 0.0
        slowest = ""
        for p in PROBLEMS:
            g = run_gradfit(p, m)
            row = (f"{p.label:46.46s} {g.F:11.5g} {'T' if g.success else 'F'}  "
                   f"{'yes ' if g.solved(p) else 'no  '} {g.time_s:6.2f}")
            g_solved += g.solved(p)
            false += g.false_claim(p)
            if g.false_claim(p):
                row += "  FALSE CLAIM"
            if g.time_s > tmax:
                tmax, slowest = g.time_s, p.label.strip()
            rec = {"gradfit": vars(g)}
            if peer and not args.no_scipy:
                s0, s1 = run_scipy(p, peer), run_scipy(p, peer, tight=True)
                s_solved += s0.solved(p) or s1.solved(p)
                s_false += s0.false_claim(p) or s1.false_claim(p)
                row += (f" | {s0.F:11.5g} {'T' if s0.success else 'F'}  "
                        f"{'yes ' if s0.solved(p) else 'no  '}"
                        f"| {s1.F:11.5g} {'T' if s1.success else 'F'}  "
                        f"{'yes' if s1.solved(p) else 'no '}")
                rec["scipy"], rec["scipy_tight"] = vars(s0), vars(s1)
            print(row, flush=True)
            out.setdefault(m, {})[p.label.strip()] = rec
        summary.append((m, g_solved, false, tmax, slowest, peer, s_solved, s_false))
    print(f"\nsolved of {len(PROBLEMS)} instances (F within 1e-5 relative of the published F*):")
    print(f"{'method':14s} {'gradfit':>7s} {'false':>6s} {'max t/s':>8s}  "
          f"{'SciPy peer (best of default/tight)':>36s}")
    for m, gs, fc, tmax, slowest, peer, ss, sf in summary:
        peer_s = f"{peer} {ss} (false claims {sf})" if peer and not args.no_scipy else "-"
        print(f"{m:14s} {gs:7d} {fc:6d} {tmax:8.2f}  {peer_s:>36s}   slowest: {slowest}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
