"""FitResult: one frozen result type for every fit."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["FitResult"]


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


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()] if v.ndim else _jsonable(float(v))
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


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
    error_method : str
        How the errors were obtained: ``'dense-gauss-newton'``, ``'dense-hessian'``,
        ``'cg-…'`` (exact marginal variances by CG), ``'hutchinson-…'`` (stochastic
        diagonal) or ``'none'``.
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
    _problem: object = field(default=None, repr=False, compare=False)
    error_method: str = ""

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
