"""Profile likelihoods and MINOS-like intervals.

The profile of −log L along one parameter is −log L minimised over all the other
free parameters with that one held fixed. :func:`profile` tabulates it on a grid,
:func:`interval` finds where it rises by ``chi2.ppf(cl, 1) / 2`` above the minimum
(the likelihood-ratio interval, asymmetric where the likelihood is), and
:func:`profile2d` tabulates it over a pair of parameters for contours.

Every profile point is a new minimisation of the same problem (``Problem.rebuild``
with the point fixed), warm-started from the optimum at the neighbouring point, so
a profile walks outward from the best fit.

>>> res = gradfit.fit(model, x, y, params={"b1": 1.0, "b2": 0.1})   # doctest: +SKIP
>>> res.interval("b1", cl=0.6827)                                     # doctest: +SKIP
(0.93, 1.12)
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from .serialize import to_jsonable
from .uncertainty import FitWarning

__all__ = ["Profile", "Profile2D", "profile", "profile2d", "interval"]


# ------------------------------------------------------------------ helpers
class _Progress:
    """A one-line progress counter on stderr, shown only for runs longer than ``delay`` s.

    ``enabled=None`` shows it when stderr is a terminal; True always (after the delay);
    False never; a callable is called after every point as ``enabled({"stage": stage,
    "done": k, "total": n})`` instead.
    """

    def __init__(self, total: int, what: str, enabled=None, delay: float = 1.0,
                 stage: str = "profile"):
        self.report = None
        if callable(enabled):
            self.report, enabled = enabled, False
        elif enabled is None:
            enabled = bool(getattr(sys.stderr, "isatty", lambda: False)())
        elif not isinstance(enabled, bool):
            raise TypeError(f"progress must be True, False, None or a callable "
                            f"progress(info), got {enabled!r}")
        self.enabled = enabled
        self.total, self.what, self.delay, self.stage = total, what, delay, stage
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.shown = False

    def update(self, done: int) -> None:
        if self.report is not None:
            self.report({"stage": self.stage, "done": done, "total": self.total})
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self.t0 < self.delay or now - self.last < 0.2:
            return
        self.last = now
        self.shown = True
        sys.stderr.write(f"\r  {self.what}: {done}/{self.total} points, "
                         f"{now - self.t0:.1f} s   ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _free_labels_message(space) -> str:
    return ", ".join(space.labels) if space.labels else "(none)"


def _check_result(res):
    prob = getattr(res, "problem", None)
    if prob is None or getattr(prob, "rebuild", None) is None:
        raise ValueError(
            "this result carries no fitting problem to re-minimise; profiles need a "
            "FitResult returned by gradfit.fit or gradfit.minimize")
    if not res.success:
        # a profile is measured from the minimum; from wherever a failed fit stopped it
        # would give numbers that look like an interval and mean nothing
        raise ValueError(
            f"the fit did not succeed ({res.message}); profiles and intervals are measured "
            "from the minimum, so refit until it converges (e.g. another start, method or "
            "max_iter) and profile that result")
    return prob


def _check_label(space, name) -> int:
    if not isinstance(name, str):
        raise TypeError(f"parameter name must be a string, not {type(name).__name__}")
    if name in space.labels:
        return space.labels.index(name)
    if name in space.names:
        if space.shapes[name] != ():
            raise ValueError(
                f"parameter {name!r} has shape {space.shapes[name]}; profile one element, "
                f"e.g. '{name}[0]'; free elements are: {_free_labels_message(space)}")
        raise ValueError(f"parameter {name!r} is fixed; only free parameters can be profiled "
                         f"(free: {_free_labels_message(space)})")
    try:
        space.parse_label(name)
    except KeyError as exc:
        raise ValueError(f"unknown parameter {name!r}; free parameters are: "
                         f"{_free_labels_message(space)}") from exc
    raise ValueError(f"element {name!r} is fixed; only free parameters can be profiled "
                     f"(free: {_free_labels_message(space)})")


def _method_for(res, method):
    from . import solvers

    if method is not None:
        return method
    m = str(getattr(res, "method", "") or "").lower()
    return m if m in solvers.METHODS else "auto"


class _Profiler:
    """Re-minimises the problem of a FitResult with chosen free elements fixed."""

    def __init__(self, res, labels, method=None, tol=None, max_iter=None):
        self.prob = _check_result(res)
        self.space = self.prob.space
        self.idx = [_check_label(self.space, lab) for lab in labels]
        if len(set(self.idx)) != len(self.idx):
            raise ValueError(f"profile parameters must differ, got {labels!r}")
        self.labels = list(labels)
        self.method = _method_for(res, method)
        self.tol, self.max_iter = tol, max_iter
        self.theta_best = self.prob.theta_of(res.params)
        self.fun = float(res.fun)
        if not math.isfinite(self.fun):
            raise ValueError("the fit's −log L is not finite; fit successfully before profiling")
        cov = np.asarray(res.cov, dtype=np.float64)
        self.sigma = np.array([math.sqrt(cov[i, i]) if cov.size and cov[i, i] > 0 else math.nan
                               for i in self.idx])
        if not np.all(np.isfinite(self.sigma)):
            # errors='none' leaves no covariance: measure the curvature now. A parameter
            # that still has none is degenerate or unconstrained (see no_curvature)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cov, _ = self.prob.covariance(self.theta_best)
            for k, i in enumerate(self.idx):
                if not math.isfinite(self.sigma[k]):
                    v = float(cov[i, i])
                    self.sigma[k] = math.sqrt(v) if math.isfinite(v) and v > 0 else math.nan
        self.lo = self.space.theta_lo[self.idx]
        self.hi = self.space.theta_hi[self.idx]
        self.lowest = (self.fun, self.theta_best)

    def __call__(self, values, warm: np.ndarray):
        """−log L minimised with ``labels`` fixed at ``values``; returns (f, theta, success)."""
        values = [float(v) for v in np.atleast_1d(values)]
        warm = np.array(warm, dtype=np.float64)
        for i, v in zip(self.idx, values):
            warm[i] = v
        # warm start: keep the other elements strictly inside their bounds
        lo, hi = self.space.theta_lo, self.space.theta_hi
        warm = np.clip(warm, lo, hi)
        sp = _fixed_space(self.space, warm, self.labels)
        sub = self.prob.rebuild(sp)
        with warnings.catch_warnings():
            # bounds hit by the nuisance parameters do not matter for the profile value
            warnings.simplefilter("ignore")
            r = sub.run(self.method, errors="none", tol=self.tol, max_iter=self.max_iter)
        theta = self.prob.theta_of(r.params)
        f = float(r.fun)
        if math.isfinite(f) and f < self.lowest[0]:
            self.lowest = (f, theta)
        return f, theta, bool(r.success) and math.isfinite(f)

    def no_curvature(self, k: int) -> str | None:
        """Why parameter ``k`` has no profile interval, or None when it has curvature."""
        if math.isfinite(self.sigma[k]) and self.sigma[k] > 0:
            return None
        return (f"{self.labels[k]!r} has no curvature at the best fit (the Hessian gives it no "
                "finite error: it is degenerate with other parameters or not constrained by "
                "the data), so its profile-likelihood interval is not defined")

    def check_minimum(self, what: str) -> None:
        drop = self.fun - self.lowest[0]
        if drop > 1e-4 * max(1.0, abs(self.fun)) and drop > 1e-6:
            warnings.warn(
                f"{what}: a profile point has −log L lower than the fit's by {drop:.3g}; the "
                "fit did not reach the minimum, so the profile is relative to a wrong "
                "reference (refit from the better point and profile again)",
                FitWarning, stacklevel=3)


def _fixed_space(space, theta, labels):
    """``space`` with initial free values ``theta`` and the elements ``labels`` fixed.

    One ParamSpace construction; the same as ``space.with_values(theta).with_fixed(...)``.
    """
    from .params import Param

    vals = space.unflatten_numpy(theta)
    fixed = {n: np.array(~space.free[n], dtype=bool) for n in space.names}
    for label in labels:
        name, idx = space.parse_label(label)
        fixed[name][idx] = True
    specs = {}
    for n in space.names:
        lo, hi = space.lo[n], space.hi[n]
        has_b = bool(np.any(np.isfinite(lo) | np.isfinite(hi)))
        specs[n] = Param(np.asarray(vals[n], dtype=np.float64), fixed=fixed[n],
                         bounds=(lo, hi) if has_b else None)
    return type(space)(specs)


def _grid_1d(prof: _Profiler, k: int, bound, size: int, what: str) -> np.ndarray:
    best = prof.theta_best[prof.idx[k]]
    lo_b, hi_b = prof.lo[k], prof.hi[k]
    if isinstance(bound, (tuple, list, np.ndarray)):
        if len(bound) != 2:
            raise ValueError(f"{what}: bound must be a number of sigmas or a pair (lo, hi), "
                             f"got {bound!r}")
        lo, hi = float(bound[0]), float(bound[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"{what}: bound (lo, hi) must be finite with lo < hi, got {bound!r}")
    else:
        try:
            nsig = float(bound)
        except (TypeError, ValueError):
            raise TypeError(f"{what}: bound must be a number of sigmas or a pair (lo, hi), "
                            f"got {bound!r}") from None
        if not (nsig > 0 and math.isfinite(nsig)):
            raise ValueError(f"{what}: bound in sigmas must be positive, got {bound!r}")
        s = prof.sigma[k]
        if not (math.isfinite(s) and s > 0):
            raise ValueError(
                f"{what}: {prof.no_curvature(k)}, and bound=<sigmas> has no error to scale; "
                "give the range explicitly, bound=(lo, hi)")
        lo, hi = best - nsig * s, best + nsig * s
    lo, hi = max(lo, lo_b), min(hi, hi_b)
    if not lo < hi:
        raise ValueError(f"{what}: the range for {prof.labels[k]!r} is empty inside its bounds "
                         f"({lo_b:g}, {hi_b:g})")
    if isinstance(size, bool) or int(size) != size or size < 2:
        raise ValueError(f"{what}: size must be an integer >= 2, got {size!r}")
    return np.linspace(lo, hi, int(size))


def _outward_order(grid: np.ndarray, best: float) -> list[list[int]]:
    """Two walks from the best fit: upward through points >= best, downward through the rest."""
    up = [i for i in range(grid.size) if grid[i] >= best]
    down = [i for i in range(grid.size - 1, -1, -1) if grid[i] < best]
    return [up, down]


# ------------------------------------------------------------------ 1-D profile
@dataclass(frozen=True)
class Profile:
    """The profile of −log L along one parameter.

    Attributes
    ----------
    name : str
        The profiled free element (``'b1'`` or ``'c[3]'``).
    grid : ndarray
        Parameter values, ascending.
    nll : ndarray
        −log L at each grid point, minimised over the other free parameters
        (NaN where not computed, e.g. after an interrupt).
    success : ndarray of bool
        Whether each re-minimisation converged.
    best, fun : float
        Best-fit value and −log L at the best fit.
    params : dict
        Free label -> ndarray of its optimal value at each grid point.
    interrupted : bool
        True when Ctrl-C stopped the run; the points done so far are kept.
    cl, limits :
        The confidence level and ``(low, high)`` interval when ``profile(..., cl=...)``
        was asked for it, else None.
    time_s : float
        Wall time.
    """

    name: str
    grid: np.ndarray
    nll: np.ndarray
    success: np.ndarray
    best: float
    fun: float
    params: dict = field(repr=False)
    interrupted: bool = False
    cl: float | None = None
    limits: tuple | None = None
    time_s: float = 0.0

    @property
    def delta(self) -> np.ndarray:
        """−log L minus its value at the best fit."""
        return self.nll - self.fun

    @property
    def chi2(self) -> np.ndarray:
        """``2 Δ(−log L)``, the likelihood-ratio statistic (χ²₁-distributed asymptotically)."""
        return 2.0 * self.delta

    def interval_from_grid(self, cl: float = 0.6827) -> tuple[float, float]:
        """The ``cl`` interval by linear interpolation of the tabulated profile.

        Coarser than :func:`interval` (which solves for the crossings); an end is
        ``nan`` where the profile does not cross the level inside the grid.
        """
        from scipy.stats import chi2

        q = float(chi2.ppf(_check_cl(cl), 1))
        d = self.chi2
        ok = np.isfinite(d)
        g, d = self.grid[ok], d[ok]
        ends = []
        for side in (-1, 1):
            sel = g < self.best if side < 0 else g >= self.best
            gs, ds = g[sel], d[sel]
            if side < 0:
                gs, ds = gs[::-1], ds[::-1]
            gs = np.concatenate([[self.best], gs])
            ds = np.concatenate([[0.0], ds])
            above = np.flatnonzero(ds >= q)
            if above.size == 0:
                ends.append(math.nan)
                continue
            j = int(above[0])
            t = (q - ds[j - 1]) / (ds[j] - ds[j - 1])
            ends.append(float(gs[j - 1] + t * (gs[j] - gs[j - 1])))
        return ends[0], ends[1]

    def plot(self, ax=None, path=None):
        """Draw ``2Δ(−log L)`` against the parameter (matplotlib; Agg when no axes given).

        Returns the axes; saves the figure to ``path`` when given.
        """
        fig, ax = _axes(ax)
        ax.plot(self.grid, self.chi2, "-", color="C0")
        ax.axhline(1.0, color="0.6", lw=0.8, ls="--")
        if self.limits is not None:
            ax.axvspan(*self.limits, color="C0", alpha=0.15, lw=0)
        ax.axvline(self.best, color="0.3", lw=0.8)
        ax.set_xlabel(self.name)
        ax.set_ylabel("2 Δ(−log L)")
        if path is not None:
            fig.savefig(path)
        return ax

    def to_dict(self) -> dict:
        """A JSON-ready dict (non-finite numbers become None)."""
        return to_jsonable({
            "name": self.name, "grid": self.grid, "nll": self.nll,
            "success": [bool(s) for s in self.success], "best": self.best, "fun": self.fun,
            "params": self.params, "interrupted": self.interrupted, "cl": self.cl,
            "limits": None if self.limits is None else list(self.limits),
            "time_s": self.time_s,
        })

    def __str__(self) -> str:
        head = (f"Profile of {self.name}: {self.grid.size} points in "
                f"[{self.grid[0]:.6g}, {self.grid[-1]:.6g}], best {self.best:.6g}")
        if self.limits is not None:
            head += f", {self.cl:.4g} interval ({self.limits[0]:.6g}, {self.limits[1]:.6g})"
        if self.interrupted:
            head += f" [interrupted: {int(np.isfinite(self.nll).sum())} points done]"
        if not np.all(self.success[np.isfinite(self.nll)]):
            head += f" [{int((~self.success).sum())} points did not converge]"
        return head


def _axes(ax):
    if ax is not None:
        return ax.figure, ax
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _check_cl(cl) -> float:
    try:
        c = float(cl)
    except (TypeError, ValueError):
        raise TypeError(f"cl must be a probability in (0, 1), got {cl!r}") from None
    if not 0.0 < c < 1.0:
        raise ValueError(f"cl is the coverage probability and must be in (0, 1), got {cl!r} "
                         "(0.6827 is the 1σ interval)")
    return c


def profile(res, name: str, *, bound=3.0, size: int = 30, cl: float | None = None,
            method: str | None = None, tol: float | None = None, max_iter: int | None = None,
            progress=None) -> Profile:
    """Profile −log L along one free parameter.

    Parameters
    ----------
    res : FitResult
        A result of :func:`gradfit.fit` or :func:`gradfit.minimize`.
    name : str
        A free element: ``'b1'``, or ``'c[3]'`` for an element of a vector parameter.
    bound : float or (lo, hi)
        The range: that many standard errors either side of the best fit, or explicit
        limits. It is clipped to the parameter's bounds.
    size : int
        Number of grid points.
    cl : float, optional
        If given, the grid spans the profile interval at this confidence level
        (from :func:`interval`) widened by a quarter on each side, and the interval is
        stored in ``Profile.limits``; ``bound`` is then ignored.
    method, tol, max_iter :
        Minimiser for each point (default: the method of the fit) and its limits.
    progress : bool, None or callable
        A progress counter on stderr for runs over a second (None: when stderr is a
        terminal); a callable is called after each point as ``progress({"stage":
        "profile", "done": k, "total": n})``.

    Returns
    -------
    Profile
        Ctrl-C stops the walk and returns the points done so far, with
        ``interrupted=True``.
    """
    t0 = time.perf_counter()
    prof = _Profiler(res, [name], method=method, tol=tol, max_iter=max_iter)
    limits = None
    if cl is not None:
        cl = _check_cl(cl)
        why = prof.no_curvature(0)
        if why is not None:
            raise ValueError(f"profile(cl=...): {why}; give the range explicitly, "
                             "bound=(lo, hi)")
        limits = _interval(prof, cl)
        width = limits[1] - limits[0]
        bound = (limits[0] - 0.25 * width, limits[1] + 0.25 * width)
    grid = _grid_1d(prof, 0, bound, size, "profile")
    best = float(prof.theta_best[prof.idx[0]])
    nll = np.full(grid.size, np.nan)
    ok = np.zeros(grid.size, dtype=bool)
    thetas = np.full((grid.size, prof.space.n_free), np.nan)
    bar = _Progress(grid.size, f"profile {name}", progress)
    done = 0
    interrupted = False
    try:
        for walk in _outward_order(grid, best):
            warm = prof.theta_best
            for i in walk:
                f, th, s = prof(grid[i], warm)
                nll[i], thetas[i], ok[i] = f, th, s
                if s:
                    warm = th
                done += 1
                bar.update(done)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    prof.check_minimum(f"profile of {name!r}")
    params = {lab: thetas[:, k].copy() for k, lab in enumerate(prof.space.labels)}
    return Profile(name=name, grid=grid, nll=nll, success=ok, best=best, fun=prof.fun,
                   params=params, interrupted=interrupted, cl=cl, limits=limits,
                   time_s=time.perf_counter() - t0)


# ------------------------------------------------------------------ intervals
def interval(res, name: str, cl: float = 0.6827, *, method: str | None = None,
             tol: float | None = None, max_iter: int | None = None,
             xtol: float = 1e-7) -> tuple[float, float]:
    """The profile-likelihood (MINOS-like) interval of one parameter.

    Solves ``2 [profile(v) − min(−log L)] = chi2.ppf(cl, 1)`` on each side of the best
    fit: the crossing is bracketed by steps outward from the best fit (each profile
    point warm-started from the previous one), then found by :func:`scipy.optimize.brentq`.

    Parameters
    ----------
    res : FitResult
        A result of :func:`gradfit.fit` or :func:`gradfit.minimize` (−log L, or −log
        posterior for a MAP fit).
    name : str
        A free element: ``'b1'`` or ``'c[3]'``.
    cl : float
        Coverage probability: 0.6827 gives the 1σ interval (``2Δ = 1``), 0.95 gives
        ``2Δ = 3.84``.
    method, tol, max_iter :
        Minimiser for each profile point (default: the fit's method) and its limits.
    xtol : float
        Tolerance of the root finder, relative to the parameter's standard error.

    Returns
    -------
    (low, high) : tuple of float
        Where the profile does not rise to the level before a bound of the parameter,
        that end is the bound and a :class:`gradfit.FitWarning` says so. For a
        parameter without curvature at the best fit (no finite Hessian error:
        degenerate or unconstrained) the interval is not defined: ``(nan, nan)``
        with a :class:`gradfit.FitWarning`.

    Raises
    ------
    ValueError
        When the fit did not succeed (there is no minimum to measure from).
    """
    cl = _check_cl(cl)
    prof = _Profiler(res, [name], method=method, tol=tol, max_iter=max_iter)
    why = prof.no_curvature(0)
    if why is not None:
        # walking a flat profile ends in float round-off far out, which would look like a
        # finite interval; say what is going on instead
        warnings.warn(f"{why}: the interval is (nan, nan); profile(res, {name!r}, "
                      "bound=(lo, hi)) shows its profile over a range you choose",
                      FitWarning, stacklevel=2)
        return math.nan, math.nan
    out = _interval(prof, cl, xtol=xtol)
    prof.check_minimum(f"interval of {name!r}")
    return out


def _interval(prof: _Profiler, cl: float, xtol: float = 1e-7) -> tuple[float, float]:
    from scipy.optimize import brentq
    from scipy.stats import chi2

    q = float(chi2.ppf(cl, 1))
    i = prof.idx[0]
    name = prof.labels[0]
    best = float(prof.theta_best[i])
    sigma = float(prof.sigma[0])  # finite: the callers check no_curvature first
    sq = math.sqrt(q)
    ends = []
    for side in (-1.0, 1.0):
        bound = prof.lo[0] if side < 0 else prof.hi[0]
        known = [(best, prof.theta_best)]  # evaluated points, for warm starts
        cache = {best: -math.sqrt(q)}

        def level(v, known=known, cache=cache, sq=sq):
            # the signed root sqrt(2Δ) is close to linear in v, so the bracket
            # extrapolation and brentq's secant steps land near the crossing at once
            if v in cache:
                return cache[v]
            warm = min(known, key=lambda p: abs(p[0] - v))[1]
            f, th, _ = prof(v, warm)
            if math.isfinite(f):
                known.append((v, th))
                cache[v] = math.sqrt(max(2.0 * (f - prof.fun), 0.0)) - sq
            else:
                cache[v] = math.nan
            return cache[v]

        a, fa = best, -sq
        step = 1.05 * sq * sigma
        b = None
        tried_bound = False
        for it in range(60):
            v = best + side * step
            if side * (v - bound) >= 0:
                v = float(bound)
                tried_bound = True
            fv = level(v)
            shrink = 0
            while not math.isfinite(fv) and shrink < 40:
                # not finite there (e.g. log 0 at a bound): come back toward the last point
                v = a + 0.5 * (v - a)
                fv = level(v)
                shrink += 1
            if not math.isfinite(fv):
                raise RuntimeError(f"interval of {name!r}: the profile is not finite next to "
                                   f"{a:.6g}")
            if fv >= 0:
                b = v
                break
            a, fa = v, fv
            if a == bound or (tried_bound and abs(a - bound) <= 1e-9 * max(abs(bound), sigma)):
                break
            d = fv + sq  # sqrt(2Δ) at v
            # extrapolate linearly from the best fit, overshoot a little to bracket
            grow = 1.05 * sq / d if d > 0 else 4.0
            # after a few steps insist on growth, so that a levelling profile ends soon
            step = abs(v - best) * min(max(grow, 1.05 if it < 4 else 1.5), 4.0)
        if b is None:
            if tried_bound:
                warnings.warn(
                    f"the {cl:g} interval of {name!r} reaches its "
                    f"{'lower' if side < 0 else 'upper'} bound {bound:g} (2Δ(−log L) = "
                    f"{(fa + sq) ** 2:.3g} < {q:.3g} at {a:.6g}); that end is the bound",
                    FitWarning, stacklevel=3)
                ends.append(float(bound))
                continue
            warnings.warn(
                f"the profile of {name!r} levels off below 2Δ(−log L) = {q:.3g} on the "
                f"{'lower' if side < 0 else 'upper'} side (2Δ = {(fa + sq) ** 2:.3g} at "
                f"{a:.6g}): the {cl:g} interval has no {'lower' if side < 0 else 'upper'} "
                f"limit; that end is {'-' if side < 0 else '+'}inf", FitWarning, stacklevel=3)
            ends.append(side * math.inf)
            continue
        root = brentq(level, a, b, xtol=xtol * sigma, rtol=1e-12, maxiter=200)
        ends.append(float(root))
    return ends[0], ends[1]


# ------------------------------------------------------------------ 2-D profile
@dataclass(frozen=True)
class Profile2D:
    """The profile of −log L over a pair of parameters, on a grid.

    Attributes
    ----------
    names : (str, str)
    x, y : ndarray
        Grid values of the first and second parameter.
    nll : ndarray, shape (len(x), len(y))
        −log L minimised over the other parameters at ``(x[i], y[j])`` (NaN where not
        computed).
    success : ndarray of bool, same shape
    best : (float, float)
    fun : float
        −log L at the best fit.
    interrupted : bool
    time_s : float
    """

    names: tuple
    x: np.ndarray
    y: np.ndarray
    nll: np.ndarray
    success: np.ndarray
    best: tuple
    fun: float
    interrupted: bool = False
    time_s: float = 0.0

    @property
    def chi2(self) -> np.ndarray:
        """``2 Δ(−log L)`` on the grid."""
        return 2.0 * (self.nll - self.fun)

    def level(self, cl: float = 0.6827) -> float:
        """The ``2Δ(−log L)`` level of the joint ``cl`` region of two parameters."""
        from scipy.stats import chi2

        return float(chi2.ppf(_check_cl(cl), 2))

    def plot(self, ax=None, cl=(0.6827, 0.9545), path=None):
        """Contours of the joint confidence regions at the levels ``cl``."""
        fig, ax = _axes(ax)
        levels = sorted(self.level(c) for c in np.atleast_1d(cl))
        ax.contour(self.x, self.y, self.chi2.T, levels=levels, colors="C0")
        ax.plot(*self.best, "+", color="C3")
        ax.set_xlabel(self.names[0])
        ax.set_ylabel(self.names[1])
        if path is not None:
            fig.savefig(path)
        return ax

    def to_dict(self) -> dict:
        return to_jsonable({
            "names": list(self.names), "x": self.x, "y": self.y, "nll": self.nll,
            "success": self.success.tolist(), "best": list(self.best), "fun": self.fun,
            "interrupted": self.interrupted, "time_s": self.time_s})


def profile2d(res, name1: str, name2: str, *, bound=3.0, size=20, method: str | None = None,
              tol: float | None = None, max_iter: int | None = None,
              progress=None) -> Profile2D:
    """Profile −log L over a pair of free parameters, for contours.

    Parameters
    ----------
    res : FitResult
    name1, name2 : str
        Two different free elements.
    bound : float, (lo, hi) or ((lo1, hi1), (lo2, hi2))
        Range in standard errors, or explicit limits (one pair for both or one each).
    size : int or (int, int)
        Grid points along each parameter.
    method, tol, max_iter, progress :
        As for :func:`profile`.

    Returns
    -------
    Profile2D
        Columns are walked outward from the best fit, each point warm-started from
        its neighbour; Ctrl-C returns the points done so far with ``interrupted=True``.
    """
    t0 = time.perf_counter()
    prof = _Profiler(res, [name1, name2], method=method, tol=tol, max_iter=max_iter)
    if (isinstance(bound, (tuple, list)) and len(bound) == 2
            and all(isinstance(b, (tuple, list, np.ndarray)) for b in bound)):
        b1, b2 = bound
    else:
        b1 = b2 = bound
    s1, s2 = (size, size) if np.ndim(size) == 0 else tuple(size)
    gx = _grid_1d(prof, 0, b1, s1, "profile2d")
    gy = _grid_1d(prof, 1, b2, s2, "profile2d")
    bx, by = (float(prof.theta_best[i]) for i in prof.idx)
    nll = np.full((gx.size, gy.size), np.nan)
    ok = np.zeros((gx.size, gy.size), dtype=bool)
    thetas = {}
    j0 = int(np.argmin(np.abs(gy - by)))
    bar = _Progress(gx.size * gy.size, f"profile2d {name1}, {name2}", progress,
                    stage="profile2d")
    done = 0
    interrupted = False
    try:
        for walk in _outward_order(gx, bx):
            warm_col = prof.theta_best
            for i in walk:
                f, th, s = prof((gx[i], gy[j0]), warm_col)
                nll[i, j0], ok[i, j0] = f, s
                thetas[i, j0] = th if s else warm_col
                warm_col = thetas[i, j0]
                done += 1
                bar.update(done)
                for jwalk in ([j for j in range(j0 + 1, gy.size)],
                              [j for j in range(j0 - 1, -1, -1)]):
                    warm = thetas[i, j0]
                    for j in jwalk:
                        f, th, s = prof((gx[i], gy[j]), warm)
                        nll[i, j], ok[i, j] = f, s
                        if s:
                            warm = th
                        done += 1
                        bar.update(done)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    prof.check_minimum(f"profile2d of {name1!r}, {name2!r}")
    return Profile2D(names=(name1, name2), x=gx, y=gy, nll=nll, success=ok, best=(bx, by),
                     fun=prof.fun, interrupted=interrupted, time_s=time.perf_counter() - t0)
