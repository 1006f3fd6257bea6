"""gradfit: fast maximum-likelihood and MAP fitting of array-heavy models with PyTorch.

Write the model once in PyTorch; gradfit gives f, ∇f, Hessian-vector products,
Hessians and Jacobians by automatic differentiation, runs the minimiser that
suits the problem, and reports the answer with honest uncertainties.
"""

from .fit import FitError, fit, minimize
from .likelihoods import Cauchy, Gaussian, Likelihood, Poisson, StudentT
from .params import Param
from .priors import Laplace, LogNormal, Normal, Prior, Uniform
from .result import FitResult
from .uncertainty import FitWarning

__version__ = "0.1.0"

__all__ = [
    "fit",
    "minimize",
    "sample",
    "Param",
    "FitResult",
    "FitError",
    "FitWarning",
    "Likelihood",
    "Gaussian",
    "Cauchy",
    "StudentT",
    "Poisson",
    "Prior",
    "Normal",
    "Laplace",
    "Uniform",
    "LogNormal",
    "Samples",
]


def __getattr__(name):
    # MCMC lives in its own module with optional dependencies; import it on first use
    if name in ("sample", "Samples"):
        from . import sampling

        return getattr(sampling, name)
    raise AttributeError(f"module 'gradfit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
