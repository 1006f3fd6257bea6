"""MCMC from the same model, likelihood and priors as a fit.

:func:`sample` builds the problem exactly as :func:`gradfit.fit` (or, with ``nll=``,
:func:`gradfit.minimize`) does, finds the MAP, and samples the posterior
``exp(−nll)`` with a well-kept library:

* ``'nuts'`` / ``'hmc'``: pyro-ppl's NUTS/HMC kernels through their ``potential_fn``
  interface, gradients by autodiff;
* ``'emcee'``: the affine-invariant ensemble sampler, all walkers evaluated in one
  batched tensor call (``torch.func.vmap`` over the −log posterior).

Bounded parameters are sampled in the unconstrained space of
:class:`gradfit.params.ParamSpace` (``z``), with the log-Jacobian of ``theta(z)``
added, and reported in physical units. Both back-ends are optional
(``pip install 'gradfit[mcmc]'``).

>>> s = gradfit.sample(model, x, y, params={"a": 1.0}, likelihood=gradfit.Gaussian(0.1),
...                    priors={"a": gradfit.Normal(0, 10)}, method="nuts")  # doctest: +SKIP
>>> s.mean["a"], s.std["a"], s.rhat["a"]                                     # doctest: +SKIP
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from .serialize import to_jsonable
from .uncertainty import FitWarning

__all__ = ["Samples", "sample", "sample_posterior", "sample_result", "split_rhat",
           "effective_sample_size"]

METHODS = ("nuts", "hmc", "emcee", "laplace")


def _require(module: str, method: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pkg = "pyro-ppl" if module.startswith("pyro") else module
        raise ImportError(
            f"method={method!r} needs {pkg}, which is not installed; install the MCMC "
            f"extra with: pip install 'gradfit[mcmc]'") from exc


# ------------------------------------------------------------------ diagnostics
def split_rhat(chains: np.ndarray) -> np.ndarray:
    """Split-R̂ (Gelman et al., BDA3) of draws shaped ``(n_chains, n_draws, ...)``.

    Each chain is cut in two halves; R̂ compares the between- and within-half
    variances. Returns NaN where there are fewer than 4 draws per chain or no spread.
    """
    x = np.asarray(chains, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"chains must have shape (n_chains, n_draws, ...), got {x.shape}")
    n = x.shape[1] // 2
    if n < 2:
        return np.full(x.shape[2:], np.nan)
    halves = np.concatenate([x[:, :n], x[:, -n:]], axis=0)
    means = halves.mean(axis=1)
    w = halves.var(axis=1, ddof=1).mean(axis=0)
    b_over_n = means.var(axis=0, ddof=1)
    var_plus = (n - 1) / n * w + b_over_n
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(w > 0, np.sqrt(var_plus / np.where(w > 0, w, 1.0)), np.nan)


def _autocov(x: np.ndarray) -> np.ndarray:
    """Autocovariance along axis 1 (biased, lag 0..n-1) by FFT."""
    n = x.shape[1]
    m = 1 << (2 * n - 1).bit_length()
    xc = x - x.mean(axis=1, keepdims=True)
    f = np.fft.rfft(xc, n=m, axis=1)
    return np.fft.irfft(f * np.conj(f), n=m, axis=1)[:, :n] / n


def effective_sample_size(chains: np.ndarray) -> np.ndarray:
    """Multi-chain effective sample size of draws ``(n_chains, n_draws, ...)``.

    The combined autocorrelation of the chains is summed in pairs of lags up to the
    first negative pair, with Geyer's monotone sequence (the estimator of Stan and
    ``pyro.ops.stats.effective_sample_size``).
    """
    x = np.asarray(chains, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"chains must have shape (n_chains, n_draws, ...), got {x.shape}")
    c, n = x.shape[:2]
    tail = x.shape[2:]
    if n < 4:
        return np.full(tail, np.nan)
    x = x.reshape(c, n, -1)
    acov = _autocov(x)                                   # (c, n, k)
    var_within = acov[:, 0] * n / (n - 1)                # (c, k)
    w = var_within.mean(axis=0)
    var_plus = w * (n - 1) / n
    if c > 1:
        var_plus = var_plus + x.mean(axis=1).var(axis=0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = 1.0 - (w - acov.mean(axis=0)) / var_plus   # (n, k)
    rho[0] = 1.0
    out = np.empty(rho.shape[1])
    for k in range(rho.shape[1]):
        r = rho[:, k]
        if not np.all(np.isfinite(r)):
            out[k] = np.nan
            continue
        npair = n // 2
        pairs = r[: 2 * npair].reshape(npair, 2).sum(axis=1)
        neg = np.flatnonzero(pairs <= 0)
        pairs = pairs[: neg[0]] if neg.size else pairs
        pairs = np.minimum.accumulate(pairs)
        tau = -1.0 + 2.0 * pairs.sum()
        out[k] = c * n / max(tau, 1.0 / math.log10(c * n) if c * n > 1 else 1.0)
    return out.reshape(tail)


# ------------------------------------------------------------------ the result
@dataclass(frozen=True)
class Samples:
    """Posterior draws from :func:`sample`, by parameter name.

    Attributes
    ----------
    names : list of str
        Labels of the sampled (free) elements, the columns of ``chains``.
    chains : ndarray, shape (n_chains, n_draws, n_free)
        Draws in physical units (for emcee, one chain per walker).
    method : str
        ``'nuts'``, ``'hmc'``, ``'emcee'`` or ``'laplace'``.
    divergences : int
        Divergent transitions after warm-up (NUTS/HMC; 0 otherwise).
    accept_rate : float
        Mean acceptance probability (NUTS/HMC) or fraction (emcee).
    num_warmup : int
        Warm-up (burn-in) steps per chain, discarded.
    map : FitResult or None
        The MAP fit the chains started from.
    interrupted : bool
        True when Ctrl-C stopped sampling; the draws so far are kept.
    time_s : float
        Wall time, MAP fit included.
    notes : tuple of str
        Remarks (e.g. a model evaluated in a loop because it does not batch).
    """

    names: list
    chains: np.ndarray
    method: str
    divergences: int = 0
    accept_rate: float = math.nan
    num_warmup: int = 0
    map: object = field(default=None, repr=False)
    interrupted: bool = False
    time_s: float = 0.0
    notes: tuple = ()
    _space: object = field(default=None, repr=False, compare=False)

    # -------------------------------------------------------------- shapes
    @property
    def num_chains(self) -> int:
        return int(self.chains.shape[0])

    @property
    def num_draws(self) -> int:
        """Draws per chain."""
        return int(self.chains.shape[1])

    @property
    def flat(self) -> np.ndarray:
        """All draws pooled, shape ``(n_samples, n_free)``."""
        return self.chains.reshape(-1, self.chains.shape[-1])

    def _by_name(self, flat_rows: np.ndarray, fill: float | None) -> dict:
        """Rows of free-element values ``(m, n_free)`` -> name -> ``(m, *shape)``; fixed
        elements of a vector parameter get ``fill``, or their value when None."""
        sp = self._space
        out = {}
        k = 0
        for name in sp.names:
            free = sp.free[name]
            nf = int(free.sum())
            if nf == 0:
                continue
            shape = sp.shapes[name]
            if shape:
                base = sp.init[name] if fill is None else np.full(shape, fill)
                vals = np.broadcast_to(base, (flat_rows.shape[0], *shape)).copy()
                vals[:, free] = flat_rows[:, k:k + nf]
            else:
                vals = flat_rows[:, k].copy()
            out[name] = vals
            k += nf
        return out

    @cached_property
    def samples(self) -> dict:
        """Name -> draws of shape ``(n_samples, *shape)``, chains pooled (fixed elements
        of a vector parameter hold their fixed value)."""
        return self._by_name(self.flat, None)

    def _stat(self, values: np.ndarray, fill: float | None) -> dict:
        d = self._by_name(values[None, :], fill)
        return {k: (float(v[0]) if v[0].ndim == 0 else v[0]) for k, v in d.items()}

    @cached_property
    def mean(self) -> dict:
        """Posterior mean by name."""
        f = self.flat
        return self._stat(f.mean(axis=0) if f.shape[0] else np.full(f.shape[1], np.nan),
                          None)

    @cached_property
    def std(self) -> dict:
        """Posterior standard deviation by name (0 for fixed elements)."""
        f = self.flat
        return self._stat(f.std(axis=0, ddof=1) if f.shape[0] > 1
                          else np.full(f.shape[1], np.nan), 0.0)

    @cached_property
    def cov(self) -> np.ndarray:
        """Posterior covariance of the free elements, in the order of ``names``."""
        f = self.flat
        if f.shape[0] < 2:
            return np.full((f.shape[1], f.shape[1]), np.nan)
        return np.atleast_2d(np.cov(f, rowvar=False))

    def quantiles(self, q) -> dict:
        """Posterior quantiles by name.

        Parameters
        ----------
        q : float or sequence of float in [0, 1]

        Returns
        -------
        dict
            Name -> array ``(len(q), *shape)``, or of the parameter's shape for a scalar ``q``.
        """
        qa = np.asarray(q, dtype=np.float64)
        if np.any(~np.isfinite(qa)) or np.any((qa < 0) | (qa > 1)):
            raise ValueError(f"quantiles must be in [0, 1], got {q!r}")
        f = self.flat
        if f.shape[0] == 0:
            vals = np.full(qa.shape + (f.shape[1],), np.nan)
        else:
            vals = np.quantile(f, qa, axis=0)
        if qa.ndim == 0:
            return self._stat(vals, None)
        return self._by_name(vals, None)

    @cached_property
    def rhat(self) -> dict:
        """Split-R̂ by name (chains = walkers for emcee; NaN for fixed elements)."""
        return self._stat(split_rhat(self.chains), math.nan) if self.chains.size else \
            self._stat(np.full(len(self.names), np.nan), math.nan)

    @cached_property
    def ess(self) -> dict:
        """Effective sample size by name (all chains together)."""
        return self._stat(effective_sample_size(self.chains), math.nan) if self.chains.size \
            else self._stat(np.full(len(self.names), np.nan), math.nan)

    # -------------------------------------------------------------- output
    def _flat_stats(self):
        f = self.flat
        empty = f.shape[0] < 2
        nan = np.full(f.shape[1], np.nan)
        return {
            "mean": nan if empty else f.mean(axis=0),
            "std": nan if empty else f.std(axis=0, ddof=1),
            "q": np.full((3, f.shape[1]), np.nan) if empty
            else np.quantile(f, [0.1587, 0.5, 0.8413], axis=0),
            "rhat": split_rhat(self.chains) if not empty else nan,
            "ess": effective_sample_size(self.chains) if not empty else nan,
        }

    def to_dict(self, samples: bool = False) -> dict:
        """A JSON-ready summary (non-finite numbers become None).

        Parameters
        ----------
        samples : bool
            Also include every draw (``"samples"``: name -> nested lists).
        """
        st = self._flat_stats()
        out = {
            "method": self.method,
            "names": list(self.names),
            "num_chains": self.num_chains,
            "num_draws": self.num_draws,
            "num_warmup": self.num_warmup,
            "mean": self.mean,
            "std": self.std,
            "quantiles": {"q": [0.1587, 0.5, 0.8413],
                          **{lab: st["q"][:, i] for i, lab in enumerate(self.names)}},
            "rhat": self.rhat,
            "ess": self.ess,
            "divergences": int(self.divergences),
            "accept_rate": self.accept_rate,
            "interrupted": bool(self.interrupted),
            "time_s": float(self.time_s),
            "notes": list(self.notes),
        }
        if samples:
            out["samples"] = self.samples
        return to_jsonable(out)

    def __str__(self) -> str:
        st = self._flat_stats()
        head = (f"Samples: {self.method}, {self.num_chains} chain(s) x {self.num_draws} draws "
                f"(+{self.num_warmup} warm-up), {self.time_s:.3g} s")
        if self.method in ("nuts", "hmc"):
            head += f", {self.divergences} divergences"
        if self.interrupted:
            head += " [interrupted]"
        rows = [("parameter", "mean", "std", "16%", "84%", "R-hat", "ESS")]
        for i, lab in enumerate(self.names):
            rows.append((lab, f"{st['mean'][i]:.6g}", f"{st['std'][i]:.3g}",
                         f"{st['q'][0, i]:.6g}", f"{st['q'][2, i]:.6g}",
                         f"{st['rhat'][i]:.3f}", f"{st['ess'][i]:.0f}"))
        widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
        lines = [head] + ["  " + "  ".join(
            c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
            for r in rows]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def corner(self, path=None, names=None, bins: int = 30, truths: dict | None = None):
        """A corner plot: 1-D histograms on the diagonal, 2-D histograms below.

        Parameters
        ----------
        path : str or path-like, optional
            Where to save the figure (format from the extension).
        names : list of str, optional
            Which free elements to show (default: all, up to 12).
        bins : int
        truths : dict, optional
            Label -> value marked with lines.

        Returns
        -------
        matplotlib.figure.Figure
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        names = list(self.names) if names is None else list(names)
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise ValueError(f"corner: unknown name(s) {', '.join(map(repr, unknown))}; "
                             f"sampled elements are: {', '.join(self.names)}")
        if len(names) > 12:
            raise ValueError(f"corner: {len(names)} panels per side is too many to read; "
                             "choose up to 12 with names=[...]")
        if self.flat.shape[0] < 2:
            raise ValueError("corner: fewer than 2 draws to plot")
        cols = [self.names.index(n) for n in names]
        data = self.flat[:, cols]
        k = len(names)
        size = 1.8 * k + 0.8
        fig = Figure(figsize=(size, size))
        FigureCanvasAgg(fig)
        axes = fig.subplots(k, k, squeeze=False)
        truths = truths or {}
        for i in range(k):
            for j in range(k):
                ax = axes[i, j]
                if j > i:
                    ax.set_visible(False)
                    continue
                if i == j:
                    ax.hist(data[:, i], bins=bins, histtype="step", color="k")
                    ax.set_yticks([])
                    if names[i] in truths:
                        ax.axvline(truths[names[i]], color="C0")
                else:
                    ax.hist2d(data[:, j], data[:, i], bins=bins, cmap="Greys")
                    if names[j] in truths:
                        ax.axvline(truths[names[j]], color="C0")
                    if names[i] in truths:
                        ax.axhline(truths[names[i]], color="C0")
                if i == k - 1:
                    ax.set_xlabel(names[j])
                else:
                    ax.set_xticklabels([])
                if j == 0 and i > 0:
                    ax.set_ylabel(names[i])
                elif j > 0:
                    ax.set_yticklabels([])
        fig.subplots_adjust(left=0.12, bottom=0.12, right=0.97, top=0.97, wspace=0.05,
                            hspace=0.05)
        if path is not None:
            fig.savefig(path)
        return fig


# ------------------------------------------------------------------ the posterior
class _Posterior:
    """−log posterior in the unconstrained space ``z`` of a Problem, with the Jacobian."""

    def __init__(self, prob):
        self.prob = prob
        sp = prob.space
        self.space = sp
        lo, hi = sp.theta_lo, sp.theta_hi
        fl, fh = np.isfinite(lo), np.isfinite(hi)
        dev, dt = prob.device, prob.dtype
        self.bounded = bool(sp.bounded)
        self.both = torch.as_tensor(fl & fh, device=dev)
        self.one = torch.as_tensor(fl ^ fh, device=dev)
        self.log_span = torch.as_tensor(np.where(fl & fh, np.log(np.where(fl & fh, hi - lo, 1.0)),
                                                 0.0), device=dev, dtype=dt)
        self.batched = None  # decided on the first batched call
        self.notes: list[str] = []

    def log_jacobian(self, z: torch.Tensor) -> torch.Tensor:
        """``log |d theta / d z|`` summed over the last axis (the map is elementwise)."""
        if not self.bounded:
            return torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        ls = torch.nn.functional.logsigmoid
        # two bounds: theta = lo + (hi - lo) sigmoid(z); one bound: lo + softplus(z)
        # (or hi - softplus(z)), whose derivative is ±sigmoid(z)
        per = torch.where(self.both, self.log_span + ls(z) + ls(-z),
                          torch.where(self.one, ls(z), torch.zeros_like(z)))
        return per.sum(-1)

    def potential(self, z: torch.Tensor) -> torch.Tensor:
        """−log posterior density of ``z`` (up to a constant)."""
        theta = self.space.to_external(z)
        return self.prob.nll(theta) - self.log_jacobian(z)

    def potential_batch(self, Z: torch.Tensor) -> torch.Tensor:
        """``potential`` of each row of ``Z`` (shape ``(W, n)``) in one vmapped call;
        a loop when the model cannot be vmapped."""
        if self.batched is None:
            try:
                out = torch.func.vmap(self.potential)(Z)
                self.batched = True
                return out
            except Exception as exc:  # noqa: BLE001 -- any failure means "cannot batch"
                self.batched = False
                msg = (f"the model could not be evaluated on a batch of walkers with "
                       f"torch.func.vmap ({type(exc).__name__}: {str(exc)[:200]}); each "
                       "walker is evaluated in turn, which is slower")
                self.notes.append(msg)
                warnings.warn(msg, FitWarning, stacklevel=4)
        if self.batched:
            return torch.func.vmap(self.potential)(Z)
        return torch.stack([self.potential(z) for z in Z])


def _laplace_factor(prob, res, z_map: np.ndarray) -> np.ndarray:
    """A factor ``L`` (``L Lᵀ`` ≈ posterior covariance in z) from the MAP fit's covariance.

    The Laplace approximation, mapped to the unconstrained space by the diagonal
    Jacobian of ``theta(z)``; a diagonal guess where the covariance is not usable.
    """
    sp = prob.space
    n = sp.n_free
    cov = np.asarray(res.cov, dtype=np.float64) if res is not None and res.cov.size \
        else np.full((n, n), np.nan)
    zt = torch.as_tensor(z_map, dtype=torch.float64)
    if sp.bounded:
        d = np.abs(sp.external_slope(zt)[1].numpy())  # elementwise map: the diagonal
    else:
        d = np.ones(n)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        cz = cov / np.outer(d, d)
    if np.all(np.isfinite(cz)):
        try:
            return np.linalg.cholesky(0.5 * (cz + cz.T))
        except np.linalg.LinAlgError:
            pass
    with np.errstate(invalid="ignore"):
        sd = np.sqrt(np.diag(cz))
    fallback = 1e-2 * np.maximum(np.abs(z_map), 1.0)
    return np.diag(np.where(np.isfinite(sd) & (sd > 0), sd, fallback))


def _check_int(value, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _progress_default(progress):
    """True/False for the back-ends' bars, or the user's callable progress(info)."""
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    if isinstance(progress, bool) or callable(progress):
        return progress
    raise TypeError(f"progress must be True, False, None or a callable progress(info), "
                    f"got {progress!r}")


# ------------------------------------------------------------------ entry points
def sample(model=None, x=None, y=None, *, params, likelihood="gaussian", priors=None,
           nll=None, method: str = "nuts", num_samples: int = 1000, warmup: int | None = None,
           num_chains: int = 4, num_walkers: int | None = None, seed: int = 0,
           init: dict | None = None, device="cpu", dtype=torch.float64, progress=None,
           options: dict | None = None) -> Samples:
    """Sample the posterior of a model (as for :func:`gradfit.fit`) or of a bare −log
    posterior (``nll=``, as for :func:`gradfit.minimize`).

    Parameters
    ----------
    model, x, y :
        ``model(p, x)`` and the data, as for :func:`gradfit.fit`; leave them out and
        pass ``nll`` to sample ``exp(−nll(p))``.
    params : dict
        Name -> initial value or :class:`gradfit.Param` (bounds are respected by
        sampling in an unconstrained space; fixed parameters stay fixed).
    likelihood, priors :
        As for :func:`gradfit.fit`. Without priors the posterior is the likelihood
        (flat priors). The likelihood must have a known scale: least squares
        (``'gaussian'`` without sigma) has none.
    nll : callable, optional
        ``nll(p) -> scalar tensor``, a −log posterior (plus ``priors`` if given).
    method : {'nuts', 'hmc', 'emcee', 'laplace'}
        ``'laplace'`` draws from the Gaussian at the MAP with the fit's covariance (the
        inverse Hessian): cheap, exact for a linear-Gaussian model, and a first look
        otherwise. It needs no optional package.
    num_samples : int
        Draws kept per chain (NUTS/HMC) or per walker (emcee).
    warmup : int, optional
        Warm-up steps per chain, discarded (default: ``num_samples // 2``).
    num_chains : int
        Independent NUTS/HMC chains, run one after another (default 4).
    num_walkers : int, optional
        emcee walkers (default: ``max(32, 4 n_free)``, even).
    seed : int
        Seeds the chains (torch) or the ensemble (NumPy); the global RNG states are
        left as they were.
    init : dict, optional
        Name -> starting value; default: the MAP, found with :func:`gradfit.fit`'s
        machinery. Chains start at draws from the Laplace approximation around it.
    device, dtype :
        As for :func:`gradfit.fit`.
    progress : bool, None or callable
        Progress bars on stderr (None: when stderr is a terminal); a callable is
        called after each step as ``progress({"stage": "mcmc", "step": ..., ...})``.
    options : dict, optional
        Passed on to ``pyro.infer.mcmc.NUTS``/``HMC`` (e.g. ``max_tree_depth``,
        ``target_accept_prob``, ``full_mass``) or ``emcee.EnsembleSampler`` (e.g.
        ``moves``; the default is ``emcee.moves.DEMove()``, whose autocorrelation time
        on near-Gaussian posteriors is about a third of that of emcee's stretch move).

    Returns
    -------
    Samples
        Ctrl-C stops sampling and returns the draws so far (``interrupted=True``).

    Raises
    ------
    ImportError
        When pyro-ppl (NUTS/HMC) or emcee is not installed.
    """
    from .fitting import build_minimize_problem, build_problem

    t0 = time.perf_counter()
    method = _check_method(method)
    if nll is not None:
        if model is not None or x is not None or y is not None:
            raise TypeError("pass either model, x, y (a likelihood) or nll= (a −log posterior), "
                            "not both")
        prob = build_minimize_problem(nll, params, priors=priors, device=device, dtype=dtype)
    else:
        if model is None or y is None:
            raise TypeError("sample needs model, x and y (as for gradfit.fit), or nll=callable "
                            "(as for gradfit.minimize)")
        prob = build_problem(model, x, y, params, likelihood=likelihood, priors=priors,
                             device=device, dtype=dtype)
    return _sample_problem(prob, method, None, num_samples=num_samples, warmup=warmup,
                           num_chains=num_chains, num_walkers=num_walkers, seed=seed, init=init,
                           progress=progress, options=options, t0=t0)


def sample_posterior(nll, params, **kwargs) -> Samples:
    """Sample ``exp(−nll(p))``: the same as ``sample(nll=nll, params=params, ...)``."""
    return sample(nll=nll, params=params, **kwargs)


def sample_result(res, method: str = "nuts", *, num_samples: int = 1000,
                  warmup: int | None = None, num_chains: int = 4,
                  num_walkers: int | None = None, seed: int = 0, progress=None,
                  options: dict | None = None) -> Samples:
    """Sample the posterior of the problem behind a fit, starting at its optimum.

    The same model, data, likelihood, priors, bounds and fixed parameters as the fit
    (e.g. ``Solution.result`` of an OOF fit); no new MAP fit is run.

    Parameters
    ----------
    res : FitResult
        A result of :func:`gradfit.fit` or :func:`gradfit.minimize`.
    method, num_samples, warmup, num_chains, num_walkers, seed, progress, options :
        As for :func:`sample`.

    Returns
    -------
    Samples
    """
    t0 = time.perf_counter()
    prob = getattr(res, "problem", None)
    if prob is None:
        raise ValueError("this result carries no fitting problem to sample; pass a FitResult "
                         "returned by gradfit.fit or gradfit.minimize")
    method = _check_method(method)
    return _sample_problem(prob, method, res, num_samples=num_samples, warmup=warmup,
                           num_chains=num_chains, num_walkers=num_walkers, seed=seed,
                           init=None, progress=progress, options=options, t0=t0)


def _check_method(method) -> str:
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    method = method.lower()
    if method != "laplace":
        _require("pyro" if method in ("nuts", "hmc") else "emcee", method)
    return method


def _sample_problem(prob, method, map_result, *, num_samples, warmup, num_chains, num_walkers,
                    seed, init, progress, options, t0) -> Samples:
    if getattr(prob.likelihood, "scale_errors", False):
        raise ValueError(
            "MCMC samples exp(−nll), so the likelihood needs a known noise scale; "
            "likelihood='gaussian' without sigma is least squares (sigma unknown). Pass "
            "likelihood=gradfit.Gaussian(sigma=...), or fit the scale as a parameter in "
            "your own nll=")
    num_samples = _check_int(num_samples, "num_samples", 1)
    warmup = num_samples // 2 if warmup is None else _check_int(warmup, "warmup", 0)
    seed = _check_int(seed, "seed", 0)
    progress = _progress_default(progress)
    if prob.space.n_free == 0:
        raise ValueError("all parameters are fixed; there is nothing to sample")
    return _run(prob, method, num_samples=num_samples, warmup=warmup, num_chains=num_chains,
                num_walkers=num_walkers, seed=seed, init=init, progress=progress,
                options=dict(options or {}), t0=t0, map_result=map_result)


def _run(prob, method, *, num_samples, warmup, num_chains, num_walkers, seed, init, progress,
         options, t0, map_result=None) -> Samples:
    from .fitting import run_problem

    sp = prob.space
    post = _Posterior(prob)
    notes: list[str] = []
    res = map_result
    if res is not None:
        theta0 = prob.theta_of(res.params)
    elif init is None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = run_problem(prob, "auto", errors="hessian")
        if not res.success:
            notes.append(f"the MAP fit did not converge ({res.message}); chains start from "
                         "where it stopped")
            warnings.warn(notes[-1], FitWarning, stacklevel=3)
        elif caught:
            notes.extend(str(w.message) for w in caught)
        theta0 = prob.theta_of(res.params)
    else:
        if not isinstance(init, dict):
            raise TypeError("init must be a dict of name -> starting value")
        vals = dict(sp.unflatten_numpy(sp.theta0))
        for k, v in init.items():
            if k not in vals:
                raise ValueError(f"init names unknown parameter {k!r}; parameters are: "
                                 f"{', '.join(sp.names)}")
            vals[k] = v
        theta0 = prob.theta_of(vals)
    z0 = sp.to_internal(theta0)
    L = _laplace_factor(prob, res, z0)
    dev, dt = prob.device, prob.dtype
    rng = np.random.default_rng(seed)
    n = sp.n_free

    interrupted = False
    divergences = 0
    accept = math.nan
    if method == "laplace":
        num_chains = _check_int(num_chains, "num_chains", 1)
        draws, note = _laplace(prob, res, theta0, rng, num_chains, num_samples)
        notes.extend(note)
        return Samples(names=list(sp.labels), chains=draws, method=method, num_warmup=0,
                       map=res, time_s=time.perf_counter() - t0, notes=tuple(notes),
                       _space=sp)
    if method in ("nuts", "hmc"):
        num_chains = _check_int(num_chains, "num_chains", 1)
        draws, divergences, accept, interrupted = _run_pyro(
            post, method, z0, L, rng, num_samples, warmup, num_chains, seed, progress,
            options, dev, dt)
    else:
        W = num_walkers if num_walkers is not None else max(32, 4 * n)
        W = _check_int(W, "num_walkers", 2)
        if W < 2 * n or W % 2:
            raise ValueError(f"emcee needs an even number of walkers >= 2 x {n} free "
                             f"parameters, got num_walkers={W}")
        draws, accept, interrupted = _run_emcee(post, z0, L, rng, W, num_samples, warmup,
                                                progress, options, dev, dt)
    # draws: (chains, n_draws, n) in z -> physical units
    C, D = draws.shape[:2]
    if C * D:
        with torch.no_grad():
            th = sp.to_external(torch.as_tensor(draws.reshape(-1, n), device=dev, dtype=dt))
        chains = th.cpu().numpy().astype(np.float64).reshape(C, D, n)
    else:
        chains = np.zeros((C, 0, n))
    notes.extend(post.notes)
    if interrupted:
        notes.append(f"interrupted: {D} draws per chain kept")
    return Samples(names=list(sp.labels), chains=chains, method=method,
                   divergences=int(divergences), accept_rate=float(accept),
                   num_warmup=int(warmup), map=res, interrupted=interrupted,
                   time_s=time.perf_counter() - t0, notes=tuple(notes), _space=sp)


def _run_pyro(post, method, z0, L, rng, num_samples, warmup, num_chains, seed, progress,
              options, dev, dt):
    from pyro.infer.mcmc import HMC, MCMC, NUTS

    # sample w with z = z0 + L w: whitened by the Laplace approximation, so the kernel
    # starts with the right scales and correlations (a constant Jacobian) and warm-up
    # only refines them; without this, strongly correlated or badly scaled posteriors
    # (OOF fits) run to the maximum tree depth for the whole warm-up
    z0_t = torch.as_tensor(z0, device=dev, dtype=dt)
    L_t = torch.as_tensor(L, device=dev, dtype=dt)

    def potential_fn(params):
        return post.potential(z0_t + L_t @ params["w"])

    kernel_cls = NUTS if method == "nuts" else HMC
    kw = {"adapt_step_size": True, "adapt_mass_matrix": True}
    kw.update(options)
    chains: list[list[torch.Tensor]] = []
    divergences = 0
    accepts = []
    interrupted = False
    devices = [dev] if dev.type == "cuda" else []
    for c in range(num_chains):
        start = rng.standard_normal(z0.size)  # a draw of the Laplace approximation
        kept: list[torch.Tensor] = []
        chains.append(kept)
        diag: dict = {}

        def hook(kernel, params, stage, i, kept=kept, diag=diag, c=c):
            if stage == "Sample":
                kept.append(z0_t + L_t @ params["w"].detach())
                diag.update(kernel.diagnostics())
            if callable(progress):
                progress({"stage": "mcmc", "chain": c, "phase": stage.lower(),
                          "step": int(i)})

        try:
            kernel = kernel_cls(potential_fn=potential_fn, **kw)
        except TypeError as exc:
            raise TypeError(f"options not accepted by pyro's {kernel_cls.__name__}: {exc}") \
                from exc
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup,
                    initial_params={"w": torch.as_tensor(start, device=dev, dtype=dt)},
                    disable_progbar=progress is not True, hook_fn=hook)
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed * 1000 + c)
                mcmc.run()
        except KeyboardInterrupt:
            interrupted = True
        divergences += len(diag.get("divergences", ()))
        if kept:
            accepts.append(float(diag.get("acceptance rate", math.nan)))
        if interrupted:
            break
    # keep complete rows: with an interrupt, chains are cut to a common length
    lengths = [len(k) for k in chains if k] or [0]
    m = min(lengths)
    use = [k[:m] for k in chains if len(k) >= m and k] if m else []
    if use:
        draws = torch.stack([torch.stack(k) for k in use]).cpu().numpy()
    else:
        draws = np.zeros((max(len(chains), 1), 0, z0.size))
    return draws, divergences, (float(np.mean(accepts)) if accepts else math.nan), interrupted


def _run_emcee(post, z0, L, rng, W, num_samples, warmup, progress, options, dev, dt):
    import emcee

    def log_prob(Zn):
        Z = torch.as_tensor(np.asarray(Zn), device=dev, dtype=dt)
        with torch.no_grad():
            lp = -post.potential_batch(Z)
        lp = lp.detach().cpu().numpy().astype(np.float64)
        lp[~np.isfinite(lp)] = -np.inf
        return lp

    n = z0.size
    options = dict(options)
    # differential-evolution moves: on near-Gaussian posteriors their autocorrelation
    # time is about a third of the default stretch move's (8 vs 25 steps in 2-D).
    # Not DESnookerMove: in emcee 3.1.6 it gave posterior widths 40 % too small on a
    # 2-D Gaussian (tests/test_sampling.py's linear model).
    options.setdefault("moves", emcee.moves.DEMove())
    try:
        sampler = emcee.EnsembleSampler(W, n, log_prob, vectorize=True, **options)
    except TypeError as exc:
        raise TypeError(f"options not accepted by emcee.EnsembleSampler: {exc}") from exc
    p0 = z0 + rng.standard_normal((W, n)) @ L.T  # draws of the Laplace approximation
    state = emcee.State(p0, random_state=np.random.RandomState(
        int(rng.integers(2**31 - 1))).get_state())
    interrupted = False
    try:
        total = warmup + num_samples
        for k, _ in enumerate(sampler.sample(state, iterations=total,
                                             progress=progress is True)):
            if callable(progress):
                progress({"stage": "mcmc", "step": k + 1, "total": total})
    except KeyboardInterrupt:
        interrupted = True
    done = sampler.iteration
    chain = sampler.get_chain() if done else np.zeros((0, W, n))  # (steps, W, n)
    kept = chain[warmup:done] if done > warmup else np.zeros((0, W, n))
    accept = float(np.mean(sampler.acceptance_fraction)) if done else math.nan
    return np.transpose(kept, (1, 0, 2)), accept, interrupted


def _laplace(prob, res, theta0, rng, num_chains, num_samples):
    """Draws from N(theta_MAP, cov) in physical units, shape (chains, draws, n)."""
    sp = prob.space
    if res is None:
        # a user-given start: the covariance at that point
        theta_t = torch.as_tensor(theta0, device=prob.device, dtype=prob.dtype)
        cov, _ = prob.covariance(theta_t)
    else:
        cov = np.asarray(res.cov, dtype=np.float64)
    if not np.all(np.isfinite(cov)):
        bad = [lab for lab, v in zip(sp.labels, np.diag(cov)) if not np.isfinite(v)]
        raise ValueError(f"the Laplace approximation needs a finite covariance at the MAP; "
                         f"it is not finite for {', '.join(bad) or 'some parameters'}")
    try:
        L = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise ValueError("the covariance at the MAP is not positive definite; the Laplace "
                         "approximation does not apply (try method='nuts')") from None
    eps = rng.standard_normal((num_chains, num_samples, sp.n_free))
    draws = theta0 + eps @ L.T
    notes = []
    if sp.bounded:
        out = np.any((draws < sp.theta_lo) | (draws > sp.theta_hi), axis=-1)
        if out.any():
            notes.append(f"{int(out.sum())} of {out.size} Laplace draws fall outside the "
                         "parameter bounds (the Gaussian ignores them); use method='nuts' "
                         "for a bounded posterior")
    return draws, notes
