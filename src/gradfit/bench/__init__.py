"""Benchmark code, in one installed home: what ``gradfit bench`` runs.

The library's core and :mod:`gradfit.oof` never import this package; it imports
them. Modules:

* :mod:`gradfit.bench.scaling`: NumPy + finite differences versus PyTorch
  autodiff, measured side by side (``gradfit bench``, ``benchmarks/scaling.py``);
* :mod:`gradfit.bench.reference`: the OOF likelihood written with NumPy and its
  PyTorch twin (four lines apart), the "before" and "after" of the comparison;
* :mod:`gradfit.bench.gaussians2d`: the same pair for a generic (non-OOF) model;
* :mod:`gradfit.bench.timing`: median wall times and finite-difference gradients,
  shared with ``benchmarks/gradient_cost.py``.

The scripts in the repository's ``benchmarks/`` folder import what they share
from here.
"""

from gradfit.bench.scaling import (
    FitReport,
    fit_gradfit,
    fit_numpy_fd,
    fit_torch_bfgs,
    jax_available,
    main,
    run,
)

__all__ = ["FitReport", "fit_numpy_fd", "fit_torch_bfgs", "fit_gradfit", "jax_available",
           "run", "main"]
