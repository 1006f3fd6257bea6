"""``gradfit bench``: NumPy + finite differences versus PyTorch autodiff, measured side by side.

One run times, for the OOF reference likelihood (:mod:`gradfit.bench.reference`):

1. ``kind="size"``: maps of ``nn x nn`` points (3 maps), ``nn = 32, 64, ...`` at a fixed
   Zernike order;
2. ``kind="params"``: Zernike order 2..9 at a fixed ``nn``;

for the implementations ``numpy-fd`` (NumPy, forward finite differences),
``torch-cpu`` (autodiff), ``torch-cuda`` (only where ``torch.cuda.is_available()``)
and ``jax`` (only where ``jax`` imports; never a runtime dependency). Each
implementation's f and f+∇f are timed after a warm-up call, as the median of
repeats, and each is fitted from the same start: the NumPy one with
``scipy.optimize.minimize(method="BFGS")`` and finite-difference gradients, the
others with the same BFGS fed f and ∇f from one autodiff pass, and the torch
ones also with gradfit's own minimiser (``gradfit.minimize``). The generic
model of :mod:`gradfit.bench.gaussians2d` is timed the same way (``"generic"``).

Tests never assert on these times; :func:`run` takes the size lists as
arguments so that a test can run a tiny configuration.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.optimize

from gradfit.serialize import to_jsonable

from .timing import fd_value_and_grad, median_time

__all__ = ["FitReport", "fit_numpy_fd", "fit_torch_bfgs", "fit_gradfit", "jax_available", "run",
           "main"]

QUICK = {
    "sizes": (32, 64, 128, 256),
    "size_order": 4,
    "orders": (2, 3, 4, 5, 6, 7),
    "params_nn": 32,
    "repeats": 5,
    "numpy_fit_cap_s": 8.0,
    "generic_nn": 48,
    "generic_sources": 3,
}
FULL = {
    "sizes": (32, 64, 128, 256, 512, 1024),
    "size_order": 5,
    "orders": (2, 3, 4, 5, 6, 7, 8, 9),
    "params_nn": 64,
    "repeats": 5,
    "numpy_fit_cap_s": 60.0,
    "generic_nn": 128,
    "generic_sources": 5,
}
#: Extra map size measured only where a GPU is present (numpy-fd is capped there).
GPU_EXTRA_SIZE = 2048
#: Device of the ``torch-cuda`` implementation (a test points it at the CPU to run that path).
CUDA_DEVICE = "cuda"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


#: gradfit's own methods used for the "after" fits.
GRADFIT_METHODS = ("bfgs", "lbfgs")


# ------------------------------------------------------------------- fitting
@dataclass
class FitReport:
    """Outcome of one benchmark fit.

    Attributes
    ----------
    x : numpy.ndarray
        Parameters at the end.
    fun : float
        −log L at ``x``.
    nit : int
        Iterations.
    nfev : int
        Model evaluations (for finite differences, every column counts).
    time_s : float
        Wall time of the minimiser.
    success : bool
        The minimiser's own verdict.
    message : str
        Its message; says so when the fit was capped.
    method : str
        What ran, e.g. ``'scipy-bfgs+fd'``.
    capped : bool
        True when the fit stopped at an iteration or time cap.
    """

    x: np.ndarray
    fun: float
    nit: int
    nfev: int
    time_s: float
    success: bool
    message: str
    method: str
    capped: bool = False


def _max_iter(max_iter, kwargs, where):
    """``max_iter``, or the deprecated spelling ``maxiter`` (with a DeprecationWarning)."""
    if "maxiter" in kwargs:
        import warnings

        warnings.warn(f"{where}(maxiter=...) is deprecated; use max_iter=...",
                      DeprecationWarning, stacklevel=3)
        if max_iter is not None:
            raise TypeError(f"{where}: give max_iter or maxiter, not both")
        max_iter = kwargs.pop("maxiter")
    if kwargs:
        raise TypeError(f"{where}() got unexpected keyword argument(s) {', '.join(kwargs)}")
    return max_iter


def _bfgs(fun, x0, jac, max_iter, max_time, method_name, gtol, counter):
    """SciPy BFGS with an optional wall-time cap (checked after each iteration)."""
    t0 = time.perf_counter()

    def callback(intermediate_result):
        if max_time is not None and time.perf_counter() - t0 > max_time:
            raise StopIteration

    opts = {"gtol": gtol}
    if max_iter is not None:
        opts["maxiter"] = int(max_iter)  # SciPy's spelling
    res = scipy.optimize.minimize(fun, x0, jac=jac, method="BFGS", callback=callback,
                                  options=opts)
    dt = time.perf_counter() - t0
    if res.status == 99:  # the callback stopped it
        capped, msg = True, f"capped at {max_time:g} s of wall time"
    elif res.status == 1:
        capped, msg = True, f"capped at max_iter={max_iter}"
    else:
        capped, msg = False, str(res.message)
    return FitReport(
        x=np.asarray(res.x, dtype=np.float64),
        fun=float(res.fun),
        nit=int(res.nit),
        nfev=counter[0],
        time_s=dt,
        success=bool(res.success),
        message=msg,
        method=method_name,
        capped=capped,
    )


def fit_numpy_fd(nll, st, theta0, *, max_iter=None, max_time=None, gtol=1e-5,
                 **deprecated) -> FitReport:
    """The "before": ``scipy.optimize.minimize(method="BFGS")``, finite-difference gradient.

    Parameters
    ----------
    nll : callable
        ``nll(theta, st) -> float``, NumPy.
    st : object
        Passed through to ``nll``.
    theta0 : array_like
        Start.
    max_iter : int, optional
        Iteration cap (``maxiter`` is accepted with a DeprecationWarning).
    max_time : float, optional
        Wall-time cap in seconds, checked after each iteration.
    gtol : float
        SciPy's tolerance on the gradient norm.

    Returns
    -------
    FitReport
    """
    max_iter = _max_iter(max_iter, deprecated, "fit_numpy_fd")
    counter = [0]

    def f(x):
        counter[0] += 1
        return float(nll(x, st))

    return _bfgs(f, np.asarray(theta0, np.float64), None, max_iter, max_time,
                 "scipy-bfgs+fd", gtol, counter)


def _torch_value_and_grad(nll, st, device):
    """``x (NumPy) -> (f, ∇f)`` from one forward and one backward pass."""
    import torch

    dev = torch.device(device)

    def fg(x):
        z = torch.tensor(x, dtype=torch.float64, device=dev, requires_grad=True)
        f = nll(z, st)
        (g,) = torch.autograd.grad(f, z)
        return float(f.detach()), g.detach().cpu().numpy()

    return fg


def fit_torch_bfgs(nll, st, theta0, *, device="cpu", max_iter=None, max_time=None,
                   gtol=1e-5, **deprecated) -> FitReport:
    """The "after": the same SciPy BFGS, f and the exact ∇f from one autodiff pass.

    Parameters
    ----------
    nll : callable
        ``nll(theta, st) -> 0-d tensor``, PyTorch.
    st : object
        Torch setup, on ``device``.
    theta0 : array_like
        Start.
    device : str
        Device of ``st``.
    max_iter, max_time, gtol :
        As in :func:`fit_numpy_fd`.

    Returns
    -------
    FitReport
    """
    max_iter = _max_iter(max_iter, deprecated, "fit_torch_bfgs")
    counter = [0]
    fg0 = _torch_value_and_grad(nll, st, device)

    def fg(x):
        counter[0] += 1
        return fg0(x)

    return _bfgs(fg, np.asarray(theta0, np.float64), True, max_iter, max_time,
                 "scipy-bfgs+autodiff", gtol, counter)


def fit_gradfit(nll, st, theta0, *, method="bfgs", device="cpu", max_iter=None,
                **options) -> FitReport:
    """The "after" with gradfit's own minimiser: ``gradfit.minimize``, one vector parameter.

    Parameters
    ----------
    nll : callable
        ``nll(theta, st) -> 0-d tensor``, PyTorch.
    st : object
        Torch setup, on ``device``.
    theta0 : array_like
        Start.
    method : str
        Passed to ``gradfit.minimize``.
    device : str
        Passed to ``gradfit.minimize``.
    max_iter : int, optional
        Iteration cap.
    **options
        Passed to ``gradfit.minimize``.

    Returns
    -------
    FitReport

    """
    from gradfit.fitting import minimize

    t0 = time.perf_counter()
    res = minimize(lambda p: nll(p["theta"], st),
                   params={"theta": np.asarray(theta0, np.float64)},
                   method=method, device=device, max_iter=max_iter, errors="none", **options)
    dt = time.perf_counter() - t0
    return FitReport(
        x=np.asarray(res.params["theta"], dtype=np.float64),
        fun=float(res.fun),
        nit=int(res.nit),
        nfev=int(res.nfev),
        time_s=dt,
        success=bool(res.success),
        message=str(res.message),
        method=f"gradfit-{method}",
    )


# ------------------------------------------------------------------- timing
class _Impl:
    """One implementation of one problem: f and f+∇f as NumPy-in, float-out callables."""

    def __init__(self, name, f, fg, fit, sync=None):
        self.name, self.f, self.fg, self.fit, self.sync = name, f, fg, fit, sync


def _torch_impl(name, nll, st_np, device, max_time, gradfit_method):
    import torch

    st = st_np.to_torch(device)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None

    def f(x):
        with torch.no_grad():
            return nll(torch.as_tensor(x, dtype=torch.float64, device=dev), st)

    def fg(x):
        z = torch.tensor(x, dtype=torch.float64, device=dev, requires_grad=True)
        v = nll(z, st)
        (g,) = torch.autograd.grad(v, z)
        return v, g  # stays on the device; the timer synchronises

    def fits(theta0):
        out = [fit_torch_bfgs(nll, st, theta0, device=device, max_time=max_time)]
        for m in gradfit_method or ():
            out.append(fit_gradfit(nll, st, theta0, method=m, device=device))
        return out

    return _Impl(name, f, fg, fits, sync)


def _numpy_impl(nll, st, cap_s):
    def f(x):
        return nll(x, st)

    def fg(x):
        return fd_value_and_grad(f, x)

    def fits(theta0):
        return [fit_numpy_fd(nll, st, theta0, max_time=cap_s)]

    return _Impl("numpy-fd", f, fg, fits)


def _jax_impl(nll_jax, st_np, arrays):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    from dataclasses import replace

    arr = {k: jnp.asarray(np.asarray(getattr(st_np, k)), dtype=jnp.float64) for k in arrays}

    def nll(theta, a):
        return nll_jax(theta, replace(st_np, **a))

    f_j = jax.jit(nll)
    fg_j = jax.jit(jax.value_and_grad(nll))

    def f(x):
        return f_j(jnp.asarray(x, dtype=jnp.float64), arr).block_until_ready()

    def fg(x):
        v, g = fg_j(jnp.asarray(x, dtype=jnp.float64), arr)
        return v.block_until_ready(), g.block_until_ready()

    def fits(theta0):
        counter = [0]

        def fgn(x):
            counter[0] += 1
            v, g = fg(x)
            return float(v), np.asarray(g, dtype=np.float64)

        return [_bfgs(fgn, np.asarray(theta0, np.float64), True, None, None,
                      "scipy-bfgs+jax-grad", 1e-5, counter)]

    return _Impl("jax", f, fg, fits)


def jax_available() -> tuple[bool, str]:
    try:
        import jax  # noqa: F401
    except Exception as exc:  # any import failure means: skip, with the reason
        return False, f"jax not measured: it does not import here ({type(exc).__name__}: {exc})"
    return True, ""


# ---------------------------------------------------------------- the problems
def _oof_problem(nn, order, seed):
    from . import reference as ref

    st = ref.simulate(nn, order, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    theta0 = st.theta_true + np.concatenate(
        [[0.05, 1.0], rng.normal(0.0, 0.03, len(st.nl))])
    return st, theta0, ref.neg_log_likelihood_numpy, ref.neg_log_likelihood_torch, \
        ref.neg_log_likelihood_jax, ("U", "opd", "dz", "B", "taper", "data")


def _generic_problem(nn, n_sources, seed):
    from . import gaussians2d as g2

    st = g2.simulate(nn, n_sources, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    th = st.theta_true.copy()
    scale = np.tile([0.1, 0.02 * nn, 0.02 * nn, 0.005 * nn], n_sources)
    theta0 = th + np.concatenate([[0.02], rng.normal(0.0, 1.0, th.size - 1) * scale])
    return st, theta0, g2.neg_log_likelihood_numpy, g2.neg_log_likelihood_torch, None, \
        ("X", "Y", "data")


def _measure(problem, impls_wanted, repeats, cap_s, gradfit_methods, log, cuda_ok, jax_ok):
    """All implementations on one problem: rows without 'kind' (the caller adds it)."""
    st, theta0, nll_np, nll_t, nll_jax, arrays = problem
    impls = []
    for name in impls_wanted:
        if name == "numpy-fd":
            impls.append(_numpy_impl(nll_np, st, cap_s))
        elif name == "torch-cpu":
            impls.append(_torch_impl(name, nll_t, st, "cpu", None, gradfit_methods))
        elif name == "torch-cuda" and cuda_ok:
            impls.append(_torch_impl(name, nll_t, st, CUDA_DEVICE, None, gradfit_methods))
        elif name == "jax" and jax_ok and nll_jax is not None:
            impls.append(_jax_impl(nll_jax, st, arrays))
    rows = []
    for impl in impls:
        x = np.asarray(theta0, np.float64)
        slow = impl.name == "numpy-fd"
        t_f, t_f_min = median_time(lambda impl=impl, x=x: impl.f(x), repeats, impl.sync,
                                    with_min=True)
        # finite differences are P + 1 calls of f, already warm: no second warm-up
        t_fg, t_fg_min = median_time(
            lambda impl=impl, x=x: impl.fg(x), repeats, impl.sync,
            budget_s=20.0 if slow else 10.0, with_min=True,
            warmup=(lambda impl=impl, x=x: impl.f(x)) if slow else None)
        for rep in impl.fit(x):
            row = {
                "impl": impl.name,
                "method": rep.method,
                "n_params": int(x.size),
                "n_data": int(np.asarray(st.data).size),
                "t_f_s": t_f,
                "t_eval_s": t_fg,
                "t_f_min_s": t_f_min,
                "t_eval_min_s": t_fg_min,
                "autodiff_overhead": (t_fg / t_f) if not slow else None,
                "fd_cost_ratio": (t_fg / t_f) if slow else None,
                "t_fit_s": rep.time_s,
                "n_iter": rep.nit,
                "n_fev": rep.nfev,
                "neg_log_likelihood": rep.fun,
                "success": rep.success,
                "capped": rep.capped,
                "message": rep.message,
            }
            rows.append(row)
            log(f"    {impl.name:10s} {rep.method:20s} f {t_f:9.2e} s  f+grad {t_fg:9.2e} s  "
                f"fit {rep.time_s:8.3f} s  nit {rep.nit:4d}  -logL {rep.fun:.10g}"
                + ("  [capped]" if rep.capped else ""))
    _add_ratios(rows)
    return rows


def _add_ratios(rows):
    """Speed-ups against numpy-fd on the same problem, and the optimum's agreement."""
    base = next((r for r in rows if r["impl"] == "numpy-fd"), None)
    best = min((r["neg_log_likelihood"] for r in rows), default=math.nan)
    for r in rows:
        r["rel_diff_nll_vs_best"] = abs(r["neg_log_likelihood"] - best) / max(abs(best), 1e-300)
        if base is None or r is base:
            r["speedup_eval_vs_numpy_fd"] = 1.0 if r is base else None
            r["speedup_fit_vs_numpy_fd"] = 1.0 if r is base else None
            r["speedup_fit_is_lower_bound"] = False
            continue
        r["speedup_eval_vs_numpy_fd"] = base["t_eval_s"] / r["t_eval_s"]
        r["speedup_fit_vs_numpy_fd"] = base["t_fit_s"] / r["t_fit_s"]
        # a capped NumPy fit would have taken longer: the ratio is then a lower bound
        r["speedup_fit_is_lower_bound"] = bool(base["capped"])
    if base is not None and base["capped"]:
        # what the capped fit would have cost: the autodiff BFGS's evaluations, each
        # an f plus P finite-difference columns at the measured NumPy price
        ref = next((r for r in rows if r["method"] == "scipy-bfgs+autodiff"), None)
        if ref is not None:
            # two estimates, the autodiff BFGS's evaluations at the measured NumPy f+∇f
            # price, and the capped time scaled by the iterations still missing; the
            # smaller one, but never less than the time already spent
            by_eval = ref["n_fev"] * base["t_eval_s"]
            by_iter = base["t_fit_s"] * ref["n_iter"] / max(base["n_iter"], 1)
            base["t_fit_est_s"] = max(base["t_fit_s"], min(by_eval, by_iter))
            base["message"] += (f"; uncapped estimate {base['t_fit_est_s']:.3g} s (the smaller "
                                f"of {by_eval:.3g} s from {ref['n_fev']} f+grad evaluations "
                                f"and {by_iter:.3g} s from {ref['n_iter']} iterations)")


# ------------------------------------------------------------------- machine
def _machine(cuda_ok, jax_note):
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": bool(cuda_ok),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if cuda_ok:
        try:
            info["gpu"] = torch.cuda.get_device_name(0)
        except (RuntimeError, AssertionError) as exc:
            info["gpu"] = f"unknown ({exc})"
    try:
        import jax

        info["jax"] = jax.__version__
        info["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    except Exception:
        info["jax"] = None
    info["notes"] = []
    if not cuda_ok:
        info["notes"].append(
            "torch-cuda not measured: torch.cuda.is_available() is False on this machine; "
            "the GPU figures are still unmeasured")
    if jax_note:
        info["notes"].append(jax_note)
    return info


def _thread_rows(sizes, order, repeats, seed, log):
    """f+∇f of torch-cpu with 1 thread and with every core, per map size."""
    import torch

    from . import reference as ref

    n0 = torch.get_num_threads()
    counts = sorted({1, os.cpu_count() or 1})
    rows = []
    try:
        for nn in sizes:
            st, theta0, _, nll_t, _, _ = _oof_problem(nn, order, seed)
            tt = st.to_torch("cpu")
            fg = _torch_value_and_grad(ref.neg_log_likelihood_torch, tt, "cpu")
            row = {"nn": nn, "n_params": int(theta0.size)}
            for n in counts:
                torch.set_num_threads(n)
                row[f"t_eval_{n}thread_s"] = median_time(lambda fg=fg, x=theta0: fg(x), repeats)
            rows.append(row)
            log(f"    threads nn={nn}  " + "  ".join(
                f"{n}: {row[f't_eval_{n}thread_s']:.2e} s" for n in counts))
    finally:
        torch.set_num_threads(n0)
    return rows


# ------------------------------------------------------------------------ run
def run(quick: bool = False, out: str | None = None, json_out: bool = False, *,
        sizes=None, size_order=None, orders=None, params_nn=None, repeats=None,
        impls=("numpy-fd", "torch-cpu", "torch-cuda", "jax"), numpy_fit_cap_s=None,
        gradfit_methods=None, generic=True, generic_nn=None, generic_sources=None,
        threads=1, threads_check=True, seed=0, log=None) -> dict:
    """Run the benchmark and return its results as one JSON-ready dict.

    Parameters
    ----------
    quick : bool
        Small sizes (about a minute on a 2-core machine) instead of the full sweep.
    out : str, optional
        Folder to write ``bench.json``, the two figures and ``summary.txt`` into.
        The full run writes to ``bench-output`` when ``out`` is None.
    json_out : bool
        Print the JSON object on stdout (human lines go to stderr either way).
    sizes : sequence of int, optional
        Map sizes ``nn`` for the size sweep (``kind="size"``).
    size_order : int, optional
        Zernike order of the size sweep.
    orders : sequence of int, optional
        Zernike orders of the parameter sweep (``kind="params"``).
    params_nn : int, optional
        Map size of the parameter sweep.
    repeats : int, optional
        Timed repeats (median reported) after one warm-up call.
    impls : sequence of str
        Any of ``numpy-fd``, ``torch-cpu``, ``torch-cuda``, ``jax``; the last two
        are skipped, with a note, where CUDA or JAX is absent.
    numpy_fit_cap_s : float, optional
        Wall-time cap of each NumPy finite-difference fit.
    gradfit_methods : sequence of str, optional
        ``gradfit.minimize`` methods for the extra torch fits; empty to skip them.
        Default: ``("bfgs", "lbfgs")`` for the quick run, ``("lbfgs",)`` for the full one
        (the faster of the two in the quick runs on this machine).
    generic : bool
        Also time the 2-D Gaussian sources model (``"generic"`` rows).
    generic_nn, generic_sources : int, optional
        Image size and number of sources of that model.
    threads : int or None
        torch CPU threads for the timed comparison (restored afterwards). Default 1:
        NumPy's FFT runs on one core, so this compares like with like, and on a
        small shared machine extra threads often slow small tensors down; the
        ``"threads"`` rows time 1 thread against all cores. None keeps torch's setting.
    threads_check : bool
        Also time torch-cpu f+∇f with 1 thread and with all cores (``"threads"``).
    seed : int
        Seed of the simulated data and of the starts.
    log : callable, optional
        Where progress lines go; default stderr.

    Returns
    -------
    dict
        ``{"machine": {...}, "config": {...}, "results": [...], "generic": [...],
        "threads": [...], "summary": str}``.
    """
    import torch

    cfg = dict(QUICK if quick else FULL)
    for k, v in (("sizes", sizes), ("size_order", size_order), ("orders", orders),
                 ("params_nn", params_nn), ("repeats", repeats),
                 ("numpy_fit_cap_s", numpy_fit_cap_s), ("generic_nn", generic_nn),
                 ("generic_sources", generic_sources)):
        if v is not None:
            cfg[k] = v
    valid = {"numpy-fd", "torch-cpu", "torch-cuda", "jax"}
    bad = [i for i in impls if i not in valid]
    if bad:
        raise ValueError(f"unknown impl(s) {bad}; choose from: {', '.join(sorted(valid))}")
    if log is None:
        def log(msg):
            print(msg, file=sys.stderr, flush=True)

    if gradfit_methods is None:
        gradfit_methods = GRADFIT_METHODS if quick else ("lbfgs",)
    n_threads0 = torch.get_num_threads()
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        torch.set_num_threads(threads)
    try:
        return _run(quick, out, json_out, cfg, impls, gradfit_methods, generic, sizes,
                    threads_check, seed, log)
    finally:
        torch.set_num_threads(n_threads0)


def _run(quick, out, json_out, cfg, impls, gradfit_methods, generic, sizes, threads_check,
         seed, log):
    cuda_ok = "torch-cuda" in impls and _cuda_available()
    jax_ok, jax_note = jax_available() if "jax" in impls else (False, "")
    machine = _machine(cuda_ok, jax_note if "jax" in impls else "")
    cfg_sizes = list(cfg["sizes"])
    if cuda_ok and not quick and sizes is None:
        cfg_sizes.append(GPU_EXTRA_SIZE)
    cfg["sizes"] = cfg_sizes
    cfg["gradfit_methods"] = list(gradfit_methods)
    t_start = time.perf_counter()

    results = []
    meas = dict(impls_wanted=impls, repeats=cfg["repeats"], cap_s=cfg["numpy_fit_cap_s"],
                gradfit_methods=cfg["gradfit_methods"], log=log, cuda_ok=cuda_ok, jax_ok=jax_ok)
    log(f"gradfit bench ({'quick' if quick else 'full'}): size sweep at order "
        f"{cfg['size_order']}")
    for nn in cfg_sizes:
        log(f"  nn={nn}")
        prob = _oof_problem(nn, cfg["size_order"], seed)
        for r in _measure(prob, **meas):
            results.append({"kind": "size", "nn": nn, "order": cfg["size_order"], **r})
    log(f"parameter sweep at nn={cfg['params_nn']}")
    for order in cfg["orders"]:
        log(f"  order={order}")
        prob = _oof_problem(cfg["params_nn"], order, seed)
        for r in _measure(prob, **meas):
            results.append({"kind": "params", "nn": cfg["params_nn"], "order": order, **r})

    generic_rows = []
    if generic:
        log(f"generic model: {cfg['generic_sources']} Gaussian sources on "
            f"{cfg['generic_nn']}x{cfg['generic_nn']}, Cauchy likelihood")
        prob = _generic_problem(cfg["generic_nn"], cfg["generic_sources"], seed)
        for r in _measure(prob, **meas):
            generic_rows.append({"kind": "gaussians2d", "nn": cfg["generic_nn"],
                                 "n_sources": cfg["generic_sources"], **r})
    thread_rows = []
    if threads_check and "torch-cpu" in impls:
        log("torch-cpu threads")
        thread_rows = _thread_rows([s for s in cfg_sizes if s <= 256],
                                   cfg["size_order"], cfg["repeats"], seed, log)

    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    machine["wall_time_s"] = time.perf_counter() - t_start
    report = {
        "machine": machine,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
        | {"quick": bool(quick), "impls": list(impls), "seed": seed},
        "results": results,
        "generic": generic_rows,
        "threads": thread_rows,
    }
    report["summary"] = summarise(report)
    log(format_table(report))
    log(report["summary"])
    if out is None and not quick:
        out = "bench-output"
    if out is not None:
        write_outputs(report, out, figures=True)
        log(f"wrote {Path(out) / 'bench.json'} and figures")
    if json_out:
        print(json.dumps(to_jsonable(report)))
    return report


# -------------------------------------------------------------------- output
def format_table(report: dict) -> str:
    """The results as an aligned text table."""
    head = (f"{'kind':6s} {'nn':>5s} {'P':>3s} {'impl':10s} {'method':20s} {'t_f':>9s} "
            f"{'t_f+grad':>9s} {'ratio':>6s} {'t_fit':>9s} {'nit':>4s} {'x eval':>7s} "
            f"{'x fit':>7s} {'-logL':>15s}")
    lines = [head, "-" * len(head)]
    for r in report["results"] + report.get("generic", []):
        ratio = r["autodiff_overhead"] or r["fd_cost_ratio"]
        se = r.get("speedup_eval_vs_numpy_fd")
        sf = r.get("speedup_fit_vs_numpy_fd")
        lines.append(
            f"{r['kind'][:6]:6s} {r['nn']:5d} {r['n_params']:3d} {r['impl']:10s} "
            f"{r['method']:20s} {r['t_f_s']:9.2e} {r['t_eval_s']:9.2e} {ratio:6.2f} "
            f"{r['t_fit_s']:9.3f} {r['n_iter']:4d} "
            f"{(f'{se:7.1f}' if se else '      -')} "
            f"{(('>' if r.get('speedup_fit_is_lower_bound') else ' ') + f'{sf:6.1f}') if sf else '      -'} "  # noqa: E501
            f"{r['neg_log_likelihood']:15.10g}" + (" capped" if r["capped"] else ""))
    return "\n".join(lines)


def _pick(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def summarise(report: dict) -> str:
    """One paragraph that states what was measured, from the numbers in ``report``."""
    m = report["machine"]
    res = report["results"]
    parts = [f"On {m.get('cpu_model', m['processor'])} ({m['cpu_count']} cores, torch "
             f"{m['torch']}, {m['torch_threads']} thread(s))"]
    size_rows = _pick(res, kind="size", impl="torch-cpu", method="scipy-bfgs+autodiff")
    if size_rows:
        big = max(size_rows, key=lambda r: r["nn"])
        oh = [r["autodiff_overhead"] for r in size_rows]
        parts.append(
            f", the autodiff f+∇f of the OOF likelihood cost {min(oh):.1f}–{max(oh):.1f}× f "
            f"alone over nn = {min(r['nn'] for r in size_rows)}–{big['nn']}")
        if big.get("speedup_eval_vs_numpy_fd"):
            parts.append(
                f", and at nn = {big['nn']} ({big['n_params']} parameters) it was "
                f"{big['speedup_eval_vs_numpy_fd']:.0f}× faster than f+∇f by NumPy finite "
                "differences")
    p_rows = _pick(res, kind="params", impl="torch-cpu", method="scipy-bfgs+autodiff")
    if p_rows and p_rows[0].get("speedup_eval_vs_numpy_fd"):
        lo, hi = p_rows[0], p_rows[-1]
        parts.append(
            f". Against the parameter count (nn = {lo['nn']}) the f+∇f speed-up went from "
            f"{lo['speedup_eval_vs_numpy_fd']:.1f}× at {lo['n_params']} parameters to "
            f"{hi['speedup_eval_vs_numpy_fd']:.1f}× at {hi['n_params']}")
    fits = []
    for r in _pick(res, kind="size", impl="torch-cpu"):
        if r.get("speedup_fit_vs_numpy_fd"):
            fits.append(r)
    if fits:
        best = {}
        for r in fits:
            if r["nn"] not in best or r["t_fit_s"] < best[r["nn"]]["t_fit_s"]:
                best[r["nn"]] = r
        for nn in sorted(best):
            r = best[nn]
            base = _pick(res, kind="size", impl="numpy-fd", nn=nn)[0]
            if base["capped"]:
                est = base.get("t_fit_est_s")
                parts.append(
                    f"{'. Time to fit' if nn == min(best) else ';'} at nn = {nn}: NumPy BFGS "
                    f"with finite differences was capped at {base['t_fit_s']:.3g} s after "
                    f"{base['n_iter']} iterations"
                    + (f" (about {est:.3g} s uncapped, estimated)" if est else "")
                    + f" versus {r['t_fit_s']:.3g} s with {r['method']} on torch-cpu "
                    f"(≥{r['speedup_fit_vs_numpy_fd']:.1f}×"
                    + (f", about {est / r['t_fit_s']:.0f}× against the estimate)" if est
                       else ")"))
            else:
                parts.append(
                    f"{'. Time to fit' if nn == min(best) else ';'} at nn = {nn}: "
                    f"{base['t_fit_s']:.3g} s for NumPy BFGS with finite differences versus "
                    f"{r['t_fit_s']:.3g} s with {r['method']} on torch-cpu "
                    f"({r['speedup_fit_vs_numpy_fd']:.1f}×)")
    agree = [r["rel_diff_nll_vs_best"] for r in res + report.get("generic", [])
             if not r["capped"]]
    if agree:
        parts.append(f"; uncapped fits agreed on −log L to {max(agree):.1e} relative")
    cuda = _pick(res, impl="torch-cuda")
    if cuda:
        big = max(cuda, key=lambda r: (r["nn"], -r["t_fit_s"]))
        base = _pick(res, kind="size", impl="numpy-fd", nn=big["nn"])
        parts.append(f". On the GPU ({m.get('gpu')}), at nn = {big['nn']} the fit took "
                     f"{big['t_fit_s']:.3g} s with {big['method']}")
        if base:
            b = base[0]
            ref = b.get("t_fit_est_s") or b["t_fit_s"]
            parts.append(f", {'≥' if b['capped'] else ''}"
                         f"{b['t_fit_s'] / big['t_fit_s']:.0f}× faster than the NumPy reference "
                         f"on this machine's CPU"
                         + (f" (about {ref / big['t_fit_s']:.0f}× against its uncapped "
                            "estimate)" if b["capped"] and b.get("t_fit_est_s") else ""))
    else:
        parts.append(". GPU figures are still unmeasured (no CUDA device here)")
    th = report.get("threads") or []
    if th:
        keys = [k for k in th[0] if k.startswith("t_eval_")]
        if len(keys) == 2:
            faster1 = [r["nn"] for r in th if r[keys[0]] < r[keys[1]]]
            parts.append(f"; one torch thread beat {keys[1].split('_')[2].rstrip('thread')} "
                         f"for nn in {faster1 or 'none'}")
    return "".join(parts) + "."


def markdown_tables(report: dict) -> str:
    """The size and parameter sweeps (and the generic model) as Markdown tables.

    One line per problem: f+∇f per implementation, the speed-up of autodiff over
    finite differences, the autodiff overhead t(f+∇f)/t(f), the fit times and the
    fit speed-up (``≥`` where the NumPy fit was capped), iterations, and how
    closely the fits agree on −log L.
    """
    out = []
    rows_all = report["results"] + report.get("generic", [])
    impls = [i for i in ("numpy-fd", "torch-cpu", "torch-cuda", "jax")
             if any(r["impl"] == i for r in rows_all)]
    for kind, title in (("size", "Against data size"), ("params", "Against parameter count"),
                        ("gaussians2d", "Generic model: 2-D Gaussian sources, Cauchy")):
        rows = [r for r in rows_all if r["kind"] == kind]
        if not rows:
            continue
        keys = list(dict.fromkeys((r["nn"], r["n_params"]) for r in rows))
        ev_cols = [f"f+∇f {i} (s)" for i in impls]
        fit_cols = [f"fit {i} (s)" for i in impls]
        head = ["nn", "P", *ev_cols, "× f+∇f", "AD f+∇f / f (median; min)", *fit_cols, "× fit",
                "iters (fd / AD)", "−log L rel. diff"]
        out += [f"**{title}**", "", "| " + " | ".join(head) + " |",
                "|" + "---|" * len(head)]
        for nn, p in keys:
            rs = [r for r in rows if r["nn"] == nn and r["n_params"] == p]
            by = {}
            for r in rs:
                by.setdefault(r["impl"], []).append(r)
            base = by.get("numpy-fd", [None])[0]
            torch_rows = by.get("torch-cpu", [])
            bfgs = next((r for r in torch_rows if r["method"] == "scipy-bfgs+autodiff"), None)
            best = min(torch_rows, key=lambda r: r["t_fit_s"]) if torch_rows else None
            cells = [str(nn), str(p)]
            cells += [f"{by[i][0]['t_eval_s']:.3g}" if i in by else "–" for i in impls]
            cells.append(f"{base['t_eval_s'] / bfgs['t_eval_s']:.1f}" if base and bfgs else "–")
            if bfgs and bfgs.get("t_f_min_s"):
                cells.append(f"{bfgs['autodiff_overhead']:.2f}; "
                             f"{bfgs['t_eval_min_s'] / bfgs['t_f_min_s']:.2f}")
            else:
                cells.append(f"{bfgs['autodiff_overhead']:.2f}" if bfgs else "–")
            for i in impls:
                if i not in by:
                    cells.append("–")
                    continue
                fits = ", ".join(
                    f"{r['t_fit_s']:.3g}{'*' if r['capped'] else ''}"
                    + (f" (~{r['t_fit_est_s']:.3g})" if r.get("t_fit_est_s") else "")
                    + (f" ({r['method'].replace('scipy-bfgs+autodiff', 'BFGS')})"
                       if i.startswith("torch") else "") for r in by[i])
                cells.append(fits)
            if base and best:
                lb = "≥" if base["capped"] else ""
                est = base.get("t_fit_est_s")
                cells.append(f"{lb}{base['t_fit_s'] / best['t_fit_s']:.1f}"
                             + (f" (~{est / best['t_fit_s']:.0f})" if base["capped"] and est
                                else ""))
            else:
                cells.append("–")
            cells.append(f"{base['n_iter']}{'*' if base['capped'] else ''} / {bfgs['n_iter']}"
                         if base and bfgs else "–")
            agree = [r["rel_diff_nll_vs_best"] for r in rs if not r["capped"]]
            cells.append(f"{max(agree):.0e}" if agree else "–")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out.append("`*`: the NumPy fit hit its wall-time cap "
               f"({report['config'].get('numpy_fit_cap_s')} s); its fit speed-up is then a "
               "lower bound; `(~…)`: an estimate of the uncapped time (the smaller of: the "
               "autodiff BFGS's f+∇f evaluations times the measured finite-difference f+∇f; "
               "the capped time times the iterations the autodiff BFGS needed over those "
               "done), and the speed-up against it. × columns: NumPy + finite differences over "
               "torch-cpu "
               "(f+∇f: scipy BFGS's autodiff pass; fit: the fastest torch-cpu fit).")
    th = report.get("threads") or []
    if th:
        keys = [k for k in th[0] if k.startswith("t_eval_")]
        out += ["", "**torch-cpu f+∇f against thread count**", "",
                "| nn | " + " | ".join(k[7:-2].replace("thread", " thread(s)") + " (s)"
                                       for k in keys) + " |",
                "|---|" + "---|" * len(keys)]
        for r in th:
            out.append(f"| {r['nn']} | " + " | ".join(f"{r[k]:.3g}" for k in keys) + " |")
    return "\n".join(out) + "\n"


def write_outputs(report: dict, out: str, figures: bool = True) -> None:
    """Write ``bench.json``, ``summary.txt``, ``tables.md`` and (``figures``) two PNGs."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    (d / "bench.json").write_text(json.dumps(to_jsonable(report), indent=1))
    (d / "summary.txt").write_text(report["summary"] + "\n\n" + format_table(report) + "\n")
    (d / "tables.md").write_text(markdown_tables(report))
    if figures:
        _figures(report, d)


def _figures(report, d: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for kind, xkey, xlabel, fname in (
        ("size", "nn", "map size nn (3 maps of nn x nn points)", "time_vs_size.png"),
        ("params", "n_params", "number of parameters", "time_vs_params.png"),
    ):
        rows = _pick(report["results"], kind=kind)
        if not rows:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for impl in dict.fromkeys(r["impl"] for r in rows):
            ev = {r[xkey]: r["t_eval_s"] for r in _pick(rows, impl=impl)}
            xs = sorted(ev)
            axes[0].loglog(xs, [ev[x] for x in xs], "o-", label=impl)
            for meth in dict.fromkeys(r["method"] for r in _pick(rows, impl=impl)):
                rr = sorted(_pick(rows, impl=impl, method=meth), key=lambda r: r[xkey])
                axes[1].loglog([r[xkey] for r in rr], [r["t_fit_s"] for r in rr], "o-",
                               label=f"{impl}: {meth}")
                capped = [r for r in rr if r["capped"]]
                if capped:
                    axes[1].loglog([r[xkey] for r in capped], [r["t_fit_s"] for r in capped],
                                   "kx", ms=9, label=None)
                est = [r for r in rr if r.get("t_fit_est_s")]
                if est:
                    axes[1].loglog([r[xkey] for r in est], [r["t_fit_est_s"] for r in est],
                                   "o--", mfc="none", color="0.4",
                                   label=f"{impl}: uncapped estimate")
        axes[0].set_title("f + ∇f (median)")
        axes[1].set_title("time to fit (x: capped at the wall-time limit)")
        for ax in axes:
            ax.set_xlabel(xlabel)
            ax.set_ylabel("seconds")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"OOF likelihood: NumPy + finite differences vs PyTorch autodiff ({kind})")
        fig.tight_layout()
        fig.savefig(d / fname, dpi=110)
        plt.close(fig)


# ----------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    """``gradfit bench [--quick] [--json] [--out DIR]``; returns the exit code."""
    ap = argparse.ArgumentParser(
        prog="gradfit bench",
        description="NumPy + finite differences versus PyTorch autodiff, measured side by side.")
    ap.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--out", default=None, help="folder for bench.json, figures, summary.txt")
    ap.add_argument("--sizes", type=_int_list, default=None,
                    help="map sizes of the size sweep, e.g. 512,1024,2048")
    ap.add_argument("--orders", type=_int_list, default=None,
                    help="Zernike orders of the parameter sweep, e.g. 2,5,9; 'none' to skip it")
    ap.add_argument("--impls", default=None,
                    help="comma-separated subset of numpy-fd,torch-cpu,torch-cuda,jax")
    ap.add_argument("--cap", type=float, default=None,
                    help="wall-time cap of each NumPy finite-difference fit (s)")
    args = ap.parse_args(argv)
    kw = {k: v for k, v in (("sizes", args.sizes), ("orders", args.orders),
                            ("numpy_fit_cap_s", args.cap)) if v is not None}
    if args.impls:
        kw["impls"] = tuple(i.strip() for i in args.impls.split(",") if i.strip())
    try:
        run(quick=args.quick, out=args.out, json_out=args.json, **kw)
    except ValueError as exc:
        ap.error(str(exc))
    return 0


def _int_list(text: str) -> tuple:
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, e.g. 32,64,128, got {text!r}") from None


if __name__ == "__main__":
    sys.exit(main())
