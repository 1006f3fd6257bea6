"""NumPy's and SciPy's BLAS on one thread while a solver runs.

The solvers' small linear algebra (Levenberg–Marquardt's SVD or eigenvalues of a
p x p matrix, products of an m x p Jacobian, quasi-Newton updates) runs in NumPy on
the CPU. NumPy's OpenBLAS starts one thread per core for such calls, and on a machine
with other work those threads wait for each other: with one core busy elsewhere, the
eigenvalues of a 34 x 34 matrix took 16 ms instead of 0.1 ms and a 3267 x 34 product
71 ms instead of 0.19 ms (2-core machine, load 1.8), which made a realistic OOF fit
5-7 times slower and a small curve fit 1.6 times slower. One thread is never much
slower for these sizes. torch's own threads (``torch.set_num_threads``) are a
separate pool and are left alone: large models still run on every core.
"""

from __future__ import annotations

import contextlib
import sys

__all__ = ["single_threaded_blas"]

_state: dict = {"controller": None, "scipy": False}


def single_threaded_blas():
    """Context manager limiting the BLAS libraries NumPy and SciPy loaded to one thread
    (a no-op where threadpoolctl is missing); the old counts come back afterwards."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # a dependency, but the solvers work without it
        return contextlib.nullcontext()
    has_scipy = "scipy.linalg" in sys.modules
    if _state["controller"] is None or has_scipy != _state["scipy"]:
        # the controller sees the libraries loaded when it is made: again once SciPy's is
        _state["controller"] = ThreadpoolController()
        _state["scipy"] = has_scipy
    return _state["controller"].limit(limits=1, user_api="blas")
