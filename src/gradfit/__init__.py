"""gradfit: fast maximum-likelihood and MAP fitting of array-heavy models with PyTorch.

Write the model once in PyTorch; gradfit gives f, ∇f, Hessian-vector products,
Hessians and Jacobians by automatic differentiation, runs the minimiser that
suits the problem, and reports the answer with honest uncertainties.

The names below are imported on first use, so that ``import gradfit`` (and the
``gradfit`` command line) starts without loading torch.
"""

import importlib as _importlib

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "fit": "fitting",
    "minimize": "fitting",
    "fit_batch": "batch",
    "FitError": "fitting",
    "sample": "sampling",
    "Samples": "sampling",
    "Param": "params",
    "FitResult": "result",
    "BatchResult": "result",
    "FitWarning": "uncertainty",
    "Likelihood": "likelihoods",
    "Gaussian": "likelihoods",
    "Cauchy": "likelihoods",
    "StudentT": "likelihoods",
    "Poisson": "likelihoods",
    "Prior": "priors",
    "Normal": "priors",
    "Laplace": "priors",
    "Uniform": "priors",
    "LogNormal": "priors",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gradfit' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
