"""FitResult: one frozen result type for every fit."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import numpy as np

from .serialize import to_jsonable as _jsonable

__all__ = ["FitResult", "BatchResult"]


def _round_to_error(value: float, error: float) -> tuple[str, str]:
    """Format value and error with the error to two significant digits."""
    if not (math.isfinite(error) and error > 0):
        return f"{value:.6g}", ("nan" if not math.isfinite(error) else "0 (fixed)")
    digits = max(0, 1 - int(math.floor(math.log10(error))))
    if abs(value) >= 1e6 or (abs(value) < 1e-3 and value != 0) or error >= 1e6 or digits > 10:
        exp = int(math.floor(math.log10(abs(value)))) if value != 0 else 0
        scale = 10.0 ** exp
        d = max(0, 1 - int(math.floor(math.log10(error / scale))))
        return f"{value / scale:.{d}f}e{exp:+03d}", f"{error / scale:.{d}f}e{exp:+03d}"
    return f"{value:.{digits}f}", f"{error:.{digits}f}"


@dataclass(frozen=True)
class FitResult:
    """The outcome of :func:`gradfit.fit` or :func:`gradfit.minimize`.

    Attributes
    ----------
    params, errors : dict
        Best-fit values and their 1σ errors by parameter name (floats, or arrays
        for vector parameters; errors of fixed elements are 0).
    cov, corr : ndarray or None
        Covariance and correlation of the free elements, in the order of ``names``;
        None above ``gradfit.uncertainty_scale.DENSE_LIMIT`` free parameters.
    names : list of str
        Labels of the free elements (``'b1'``, or ``'c[3]'`` for an array element).
    fun : float
        −log L (or −log posterior) at the optimum; for least squares 0.5·RSS.
    success, message :
        Status and a human-readable reason.
    method : str
        The minimiser that ran.
    nfev, njev, nit : int
        Model evaluations, gradient/Jacobian evaluations, iterations.
    time_s : float
        Wall time of the whole fit, errors included.
    ndata, dof : int or None
        Number of data points and degrees of freedom (None for :func:`minimize`).
    at_bounds : tuple of str
        Free elements that ended at one of their bounds.
    problem : gradfit.fitting.Problem or None
        The fitting problem behind the result (model, data, likelihood, priors,
        parameter space), kept so that :meth:`profile`, :meth:`interval` and
        :func:`gradfit.sampling.sample_result` can re-minimise or sample it; None
        for a result built by hand.
    error_method : str
        How the errors were obtained: ``'dense-gauss-newton'``, ``'dense-hessian'``,
        ``'cg-…'`` (exact marginal variances by CG), ``'hutchinson-…'`` (stochastic
        diagonal) or ``'none'``.
    engine : str
        What ran the minimiser: ``'torch'`` or ``'numba'`` (``fit(engine=...)``).
    """

    params: dict
    errors: dict
    cov: np.ndarray
    corr: np.ndarray
    names: list
    fun: float
    success: bool
    message: str
    method: str
    nfev: int
    njev: int
    nit: int
    time_s: float
    ndata: int | None = None
    dof: int | None = None
    at_bounds: tuple = ()
    problem: object = field(default=None, repr=False, compare=False)
    error_method: str = ""
    engine: str = "torch"

    # ------------------------------------------------------------ follow-ups
    def profile(self, name: str, **kwargs):
        """Profile of −log L along one parameter; see :func:`gradfit.profile.profile`."""
        from .profile import profile

        return profile(self, name, **kwargs)

    def interval(self, name: str, cl: float = 0.6827, **kwargs):
        """Profile-likelihood interval ``(low, high)``; see :func:`gradfit.profile.interval`."""
        from .profile import interval

        return interval(self, name, cl=cl, **kwargs)

    # -------------------------------------------------------------- output
    def to_dict(self) -> dict:
        """A JSON-ready dict (NaN and inf become None)."""
        return _jsonable({
            "params": self.params,
            "errors": self.errors,
            "names": list(self.names),
            "cov": self.cov,
            "corr": self.corr,
            "fun": self.fun,
            "success": bool(self.success),
            "message": self.message,
            "method": self.method,
            "nfev": int(self.nfev),
            "njev": int(self.njev),
            "nit": int(self.nit),
            "time_s": float(self.time_s),
            "ndata": self.ndata,
            "dof": self.dof,
            "at_bounds": list(self.at_bounds),
            "error_method": self.error_method,
            "engine": self.engine,
        })

    def _rows(self):
        if self.cov is not None:
            sd = np.sqrt(np.diag(self.cov)) if self.cov.size else np.array([])
        else:  # no dense covariance: the errors dict, flattened like names
            sd = np.concatenate([np.ravel(np.asarray(e, dtype=np.float64))
                                 for e in self.errors.values()]) if self.errors else np.zeros(0)
            flat = [f"{k}[{','.join(map(str, i))}]" if np.ndim(v) else k
                    for k, v in self.params.items() for i in np.ndindex(*np.shape(v))]
            pos = {lbl: i for i, lbl in enumerate(flat)}
            sd = np.array([sd[pos[lbl]] for lbl in self.names])
        values = {}
        for name, v in self.params.items():
            if np.ndim(v) == 0:
                values[name] = float(v)
            else:
                for idx in np.ndindex(*np.shape(v)):
                    values[f"{name}[{','.join(map(str, idx))}]"] = float(np.asarray(v)[idx])
        rows = []
        index = {lbl: i for i, lbl in enumerate(self.names)}  # O(n): fits can be large
        for label, v in values.items():
            if label in index:
                e = float(sd[index[label]])
                note = "at bound" if label in self.at_bounds else ""
            else:
                e, note = 0.0, "fixed"
            vs, es = _round_to_error(v, e) if note != "fixed" else (f"{v:.6g}", "")
            rows.append((label, vs, es, note))
        return rows

    def __str__(self) -> str:
        status = "success" if self.success else "FAILED"
        head = (f"FitResult: {status} ({self.method}; {self.message})\n"
                f"  -log L = {self.fun:.10g}   nfev = {self.nfev}   nit = {self.nit}   "
                f"time = {self.time_s:.3g} s")
        rows = self._rows()
        w0 = max([len("parameter")] + [len(r[0]) for r in rows])
        w1 = max([len("value")] + [len(r[1]) for r in rows])
        w2 = max([len("error")] + [len(r[2]) for r in rows])
        lines = [head, f"  {'parameter':<{w0}}  {'value':>{w1}}  {'error':>{w2}}"]
        for label, vs, es, note in rows:
            lines.append(f"  {label:<{w0}}  {vs:>{w1}}  {es:>{w2}}  {note}".rstrip())
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        status = "success" if self.success else "FAILED"
        rows = "".join(
            f"<tr><td>{html.escape(a)}</td><td>{b}</td><td>{c}</td><td>{d}</td></tr>"
            for a, b, c, d in self._rows())
        return (f"<p><b>FitResult</b>: {status} ({html.escape(self.method)}; "
                f"{html.escape(self.message)}), −log L = {self.fun:.10g}, nfev = {self.nfev}, "
                f"time = {self.time_s:.3g} s</p><table><tr><th>parameter</th><th>value</th>"
                f"<th>error</th><th></th></tr>{rows}</table>")


@dataclass(frozen=True)
class BatchResult:
    """The outcome of :func:`gradfit.fit_batch`: B independent fits of one model.

    Attributes
    ----------
    params, errors : dict
        Best-fit values and 1σ errors by parameter name, each an array with a
        leading axis of length B (errors of fixed elements are 0).
    cov, corr : ndarray
        ``(B, p, p)`` covariance and correlation of the free elements (``names``).
    names : list of str
        Labels of the free elements.
    fun : ndarray
        ``(B,)`` −log L (or −log posterior) at each optimum; 0.5·RSS for least squares.
    success : ndarray of bool
        ``(B,)`` status of each fit.
    messages : list of str
        One reason per problem.
    method : str
        The batched minimiser that ran (``'lm'`` or ``'lbfgs'``).
    nit, nfev : ndarray of int
        ``(B,)`` iterations and evaluations (each with its derivatives) per problem.
    time_s : float
        Wall time of the whole batch, errors included.
    ndata, dof : int
        Data points per problem and degrees of freedom (``ndata - p``).
    at_bounds : tuple of tuples
        Per problem, the labels of free elements that ended at a bound.
    engine : str
        What ran the minimiser: ``'torch'`` (batched tensors) or ``'numba'`` (the
        compiled kernel of :mod:`gradfit.solvers.native`).
    """

    params: dict
    errors: dict
    cov: np.ndarray
    corr: np.ndarray
    names: list
    fun: np.ndarray
    success: np.ndarray
    messages: list
    method: str
    nit: np.ndarray
    nfev: np.ndarray
    time_s: float
    ndata: int | None = None
    dof: int | None = None
    at_bounds: tuple = ()
    engine: str = "torch"

    def __len__(self) -> int:
        return int(self.fun.shape[0])

    def __getitem__(self, i) -> FitResult:
        """The :class:`FitResult` of problem ``i`` (its ``time_s`` is its share of the batch)."""
        B = len(self)
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"index a BatchResult with an integer, not {type(i).__name__}")
        if not -B <= i < B:
            raise IndexError(f"problem index {i} is out of range for a batch of {B}")
        i = int(i) % B

        def pick(v):
            a = np.asarray(v)[i]
            return float(a) if a.ndim == 0 else a.copy()

        return FitResult(
            params={k: pick(v) for k, v in self.params.items()},
            errors={k: pick(v) for k, v in self.errors.items()},
            cov=self.cov[i].copy(), corr=self.corr[i].copy(), names=list(self.names),
            fun=float(self.fun[i]), success=bool(self.success[i]), message=self.messages[i],
            method=self.method, nfev=int(self.nfev[i]), njev=int(self.nfev[i]),
            nit=int(self.nit[i]), time_s=self.time_s / max(B, 1), ndata=self.ndata,
            dof=self.dof, at_bounds=tuple(self.at_bounds[i]) if self.at_bounds else ())

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def n_failed(self) -> int:
        return int(np.sum(~self.success))

    def failures(self, limit: int | None = 50) -> str:
        """A table of the problems that failed: index, −log L and the reason."""
        bad = np.flatnonzero(~self.success)
        if bad.size == 0:
            return f"all {len(self)} fits succeeded"
        shown = bad if limit is None else bad[:limit]
        w = max(len("problem"), len(str(int(bad.max()))))
        lines = [f"{bad.size} of {len(self)} fits failed",
                 f"  {'problem':>{w}}  {'-log L':>14}  reason"]
        for i in shown:
            lines.append(f"  {int(i):>{w}}  {float(self.fun[i]):>14.8g}  {self.messages[i]}")
        if shown.size < bad.size:
            lines.append(f"  ... and {bad.size - shown.size} more")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """A JSON-ready dict (NaN and inf become None); arrays have a leading B axis."""
        return _jsonable({
            "params": self.params,
            "errors": self.errors,
            "names": list(self.names),
            "cov": self.cov,
            "corr": self.corr,
            "fun": self.fun,
            "success": [bool(s) for s in self.success],
            "messages": list(self.messages),
            "method": self.method,
            "nit": self.nit,
            "nfev": self.nfev,
            "time_s": float(self.time_s),
            "ndata": self.ndata,
            "dof": self.dof,
            "at_bounds": [list(a) for a in self.at_bounds],
            "engine": self.engine,
        })

    def __str__(self) -> str:
        B = len(self)
        head = (f"BatchResult: {B - self.n_failed} of {B} fits succeeded ({self.method}, "
                f"{self.engine}; {self.time_s:.3g} s, {B / max(self.time_s, 1e-300):.4g} fits/s)")
        rows = []
        for lab in self.names:
            name, idx = (lab[:-1].split("[", 1) + [""])[:2] if "[" in lab else (lab, "")
            v = np.asarray(self.params[name])
            e = np.asarray(self.errors[name])
            if idx:
                sel = (slice(None),) + tuple(int(j) for j in idx.split(","))
                v, e = v[sel], e[sel]
            ok = self.success
            vm = float(np.median(v[ok])) if ok.any() else float("nan")
            em = float(np.median(e[ok])) if ok.any() else float("nan")
            rows.append((lab, f"{vm:.6g}", f"{em:.3g}"))
        w0 = max([len("parameter")] + [len(r[0]) for r in rows])
        lines = [head, f"  {'parameter':<{w0}}  {'median value':>14}  {'median error':>12}"]
        lines += [f"  {a:<{w0}}  {b:>14}  {c:>12}" for a, b, c in rows]
        if self.n_failed:
            lines.append(self.failures(limit=10))
        return "\n".join(lines)
