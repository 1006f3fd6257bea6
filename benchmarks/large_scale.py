"""One huge fit: memory and throughput of chunked data, and scaling over processes.

    python benchmarks/large_scale.py                  # n = 2e6 points (quick, this machine)
    python benchmarks/large_scale.py --n 100000000    # the full 1e8-point case (1.6 GB file)
    python benchmarks/large_scale.py --skip-scaling --json out.json

The data, ``y = a exp(-k x) + b sin(w x) + noise``, are written once to two
``.npy`` files and read back as ``numpy.memmap``. Every measurement runs in a fresh
process so that peak memory is its own:

* memory: peak resident memory (``resource.getrusage`` max RSS, which also counts
  the memmap's file pages, and the peak anonymous RSS sampled from
  ``/proc/self/status``) of a fit with ``chunk_size`` against one on whole in-memory
  arrays (only up to ``--max-whole`` points);
* throughput: data points per second of one f+∇f pass and of one ``JᵀJ``/``Jᵀr``
  pass, and of the whole fit;
* scaling: the same fit under ``torch.distributed.run`` with 1 and 2 processes,
  strong (fixed total n) and weak (fixed n per process), with the all-reduce time
  per iteration.

On a cluster the same worker runs on every node, e.g. (printed at the end)::

    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint HEAD:29500 benchmarks/large_scale.py --worker dist ...
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
P0 = {"a": 2.0, "k": 0.3, "b": 0.4, "w": 1.25}


def make_data(d: Path, n: int, block: int = 5_000_000) -> tuple[Path, Path]:
    """Write x and y (float64) to ``d`` block by block; reuse files of the right size."""
    d.mkdir(parents=True, exist_ok=True)
    fx, fy = d / f"x_{n}.npy", d / f"y_{n}.npy"
    if fx.exists() and fy.exists():
        return fx, fy
    rng = np.random.default_rng(0)
    xm = np.lib.format.open_memmap(fx, mode="w+", dtype=np.float64, shape=(n,))
    ym = np.lib.format.open_memmap(fy, mode="w+", dtype=np.float64, shape=(n,))
    for a in range(0, n, block):
        b = min(a + block, n)
        x = (a + np.arange(b - a)) * (10.0 / (n - 1))
        xm[a:b] = x
        ym[a:b] = 3.0 * np.exp(-0.4 * x) + 0.5 * np.sin(1.3 * x) + 0.01 * rng.standard_normal(
            b - a)
    xm.flush()
    ym.flush()
    del xm, ym
    return fx, fy


class _PeakAnon:
    def __init__(self):
        self.peak = 0
        self._stop = False

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon"):
                    return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        self.base = self.now()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, self.now())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()


def _model():
    import torch

    def model(p, x):
        return p["a"] * torch.exp(-p["k"] * x) + p["b"] * torch.sin(p["w"] * x)

    return model


def worker_mem(args) -> dict:
    """One fit in this process: chunked from the memmap, or on whole in-memory arrays."""
    import torch

    import gradfit
    from gradfit.data import build_data_problem
    from gradfit.fitting import build_problem

    torch.set_num_threads(args.threads)
    x = np.load(args.x, mmap_mode="r")
    y = np.load(args.y, mmap_mode="r")
    n = int(y.shape[0])
    model = _model()
    out = {"mode": args.mode, "n": n, "chunk_size": args.chunk if args.mode == "chunked" else None}
    with _PeakAnon() as mem:
        t0 = time.perf_counter()
        if args.mode == "whole":
            x, y = np.array(x), np.array(y)
            res = gradfit.fit(model, x, y, P0)
        else:
            res = gradfit.fit(model, x, y, P0, chunk_size=args.chunk)
        out["fit_s"] = time.perf_counter() - t0
    out.update(method=res.method, nit=res.nit, nfev=res.nfev, success=res.success,
               params=res.params, errors=res.errors,
               peak_anon_mb=(mem.peak - mem.base) / 1e6,
               maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3)
    if args.mode == "chunked":  # throughput of single passes over the data
        prob = build_data_problem(model, x, y, P0, build_problem=build_problem,
                                  chunk_size=args.chunk)
        obj = prob.objective()
        z = torch.as_tensor(prob.space.theta0)
        t0 = time.perf_counter()
        obj.value_and_grad(z)
        out["f_grad_points_per_s"] = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        obj.normal_equations(z)
        out["jtj_points_per_s"] = n / (time.perf_counter() - t0)
        out["passes_per_fit_points_per_s"] = n * res.nfev / out["fit_s"]
    torch_alloc = getattr(torch, "cuda", None)
    if torch_alloc is not None and torch.cuda.is_available():
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 1e6
    return out


def worker_dist(args) -> dict | None:
    """Run under torch.distributed.run: each rank fits its contiguous shard of the file."""
    import torch

    import gradfit

    torch.set_num_threads(args.threads)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    x = np.load(args.x, mmap_mode="r")
    y = np.load(args.y, mmap_mode="r")
    per = args.per_rank if args.per_rank else len(y) // world
    a, b = rank * per, min((rank + 1) * per, len(y))
    t0 = time.perf_counter()
    res = gradfit.fit(_model(), x[a:b], y[a:b], P0, chunk_size=args.chunk, distributed=True,
                      method=args.method)
    wall = time.perf_counter() - t0
    red = res.problem.reducer  # the all-reduce counters of this fit
    out = {"rank": rank, "world": world, "n_total": per * world, "n_rank": b - a,
           "fit_s": wall, "nit": res.nit, "allreduce_calls": red.calls,
           "allreduce_s": red.seconds, "allreduce_bytes": red.bytes,
           "comm_s_per_iteration": red.seconds / max(res.nit, 1), "method": res.method,
           "a": res.params["a"]}
    if args.json:
        Path(f"{args.json}.{rank}").write_text(json.dumps(out))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sub(cmd, timeout) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return p.stdout


def run_dist(fx, fy, nproc, chunk, per_rank, method, tmp: Path, timeout) -> dict:
    out = tmp / f"dist_{nproc}_{per_rank}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(HERE),
           "--worker", "dist", "--x", str(fx), "--y", str(fy), "--chunk", str(chunk),
           "--method", method, "--json", str(out)]
    if per_rank:
        cmd += ["--per-rank", str(per_rank)]
    _sub(cmd, timeout)
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(nproc)]
    assert len({r["a"] for r in ranks}) == 1, "ranks disagree"
    return max(ranks, key=lambda r: r["fit_s"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=float, default=2e6, help="data points (default 2e6; 1e8 for "
                    "the full case: a 1.6 GB file)")
    ap.add_argument("--chunk", type=int, default=250_000, help="rows per chunk")
    ap.add_argument("--max-whole", type=float, default=2e7,
                    help="largest n also fitted on whole in-memory arrays")
    ap.add_argument("--dir", default="/tmp/gradfit-large", help="where the data files go")
    ap.add_argument("--method", default="lm", help="method for the scaling runs")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", help="write the results here")
    # worker modes (used by this script itself)
    ap.add_argument("--worker", choices=["mem", "dist"], help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["chunked", "whole"], help=argparse.SUPPRESS)
    ap.add_argument("--x", help=argparse.SUPPRESS)
    ap.add_argument("--y", help=argparse.SUPPRESS)
    ap.add_argument("--per-rank", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker == "mem":
        print(json.dumps(worker_mem(args)))
        return
    if args.worker == "dist":
        worker_dist(args)
        return

    n = int(args.n)
    d = Path(args.dir)
    free = os.statvfs(d.parent if not d.exists() else d)
    need = 16 * n
    if free.f_bavail * free.f_frsize < 2 * need:
        raise SystemExit(f"need about {2 * need / 1e9:.1f} GB free in {d} for n = {n}; "
                         "pass a smaller --n")
    t0 = time.perf_counter()
    fx, fy = make_data(d, n)
    print(f"data: {n:.3g} points in {fx.parent} ({need / 1e9:.2f} GB, "
          f"{time.perf_counter() - t0:.1f} s to write or find)", file=sys.stderr)
    results = {"n": n, "chunk_size": args.chunk, "mem": [], "scaling": []}
    base = [sys.executable, str(HERE), "--worker", "mem", "--x", str(fx), "--y", str(fy),
            "--chunk", str(args.chunk), "--threads", str(args.threads)]
    modes = ["chunked"] + (["whole"] if n <= args.max_whole else [])
    for mode in modes:
        r = json.loads(_sub(base + ["--mode", mode], args.timeout).strip().splitlines()[-1])
        results["mem"].append(r)
        extra = (f"  f+∇f {r['f_grad_points_per_s']:.3g} pts/s, JᵀJ pass "
                 f"{r['jtj_points_per_s']:.3g} pts/s, fit {r['passes_per_fit_points_per_s']:.3g}"
                 f" pts/s" if mode == "chunked" else "")
        print(f"{mode:8s} {r['method']:9s} nit={r['nit']:3d} nfev={r['nfev']:3d} "
              f"fit {r['fit_s']:7.1f} s  peak anon {r['peak_anon_mb']:8.1f} MB  max RSS "
              f"{r['maxrss_mb']:8.1f} MB{extra}")
    if len(results["mem"]) == 2:
        c, w = results["mem"]
        da = max(abs(c["params"][k] - w["params"][k]) / abs(w["params"][k]) for k in P0)
        print(f"chunked vs whole: max relative parameter difference {da:.2e}; peak anon "
              f"memory ratio whole/chunked {w['peak_anon_mb'] / max(c['peak_anon_mb'], 1e-3):.0f}")

    if not args.skip_scaling:
        tmp = d / "runs"
        tmp.mkdir(exist_ok=True)
        half = n // 2
        # weak scaling with 2 processes (n/2 each) is the strong 2-process run itself
        runs = [("strong", 1, 0), ("strong", 2, 0), ("weak", 1, half)]
        for kind, nproc, per in runs:
            r = run_dist(fx, fy, nproc, args.chunk, per, args.method, tmp, args.timeout)
            r["kind"] = kind
            results["scaling"].append(r)
            if kind == "strong" and nproc == 2:
                results["scaling"].append(dict(r, kind="weak"))
            print(f"{kind:6s} procs={nproc} n_total={r['n_total']:.3g} fit {r['fit_s']:7.1f} s "
                  f"nit={r['nit']} all-reduce {r['allreduce_calls']} calls, "
                  f"{1e3 * r['comm_s_per_iteration']:.2f} ms/iteration "
                  f"({r['allreduce_bytes'] / max(r['allreduce_calls'], 1):.0f} B/call)")
        sc = {(r["kind"], r["world"]): r for r in results["scaling"]}
        if ("strong", 1) in sc and ("strong", 2) in sc:
            print(f"strong scaling speed-up 1 -> 2 processes: "
                  f"{sc['strong', 1]['fit_s'] / sc['strong', 2]['fit_s']:.2f}x")
        if ("weak", 1) in sc and ("weak", 2) in sc:
            print(f"weak scaling efficiency 1 -> 2 processes: "
                  f"{sc['weak', 1]['fit_s'] / sc['weak', 2]['fit_s']:.2f}")
    print("\nmore nodes (same script on every node; HEAD is the first node's address):\n"
          f"  torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint "
          f"HEAD:29500 {HERE} --worker dist --x {fx} --y {fy} --chunk {args.chunk} "
          f"--method {args.method} --json /shared/run")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
