"""Named parameters, bounds and fixed switches ⇄ one flat vector.

Three spaces are involved:

* the user's named parameters ``{name: scalar or array}``;
* ``theta``: the flat vector of *free* elements, in physical units (errors and
  covariances are reported here);
* ``z``: the same vector mapped to an unconstrained space by a smooth transform
  per bounded element (the space solvers see).

Bounded elements use ``theta = lo + (hi - lo) * sigmoid(z)`` for two bounds and
``theta = lo + softplus(z)`` (or ``hi - softplus(z)``) for one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Param", "ParamSpace"]


@dataclass(frozen=True)
class Param:
    """A named parameter's initial value, optional bounds and fixed switch.

    Parameters
    ----------
    value : float or array_like
        Initial value; an array makes a vector-valued parameter.
    bounds : (lo, hi), optional
        Lower and upper bounds; ``None`` or ``±inf`` for an open side. Scalars or
        arrays broadcastable to the value's shape.
    fixed : bool or array_like of bool
        Hold the parameter (or chosen elements of it) at its initial value.
    """

    value: object
    bounds: tuple | None = None
    fixed: object = False


def _as_array(value, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be a number or an array of numbers, got {value!r}") from exc
    return arr


class ParamSpace:
    """The mapping between named parameters and the flat free vector.

    Parameters
    ----------
    params : mapping of name -> float, array or :class:`Param`
    """

    def __init__(self, params: Mapping):
        if not isinstance(params, Mapping) or len(params) == 0:
            raise TypeError(
                "params must be a non-empty dict of name -> initial value or gradfit.Param"
            )
        self.names: list[str] = []
        self.shapes: dict[str, tuple] = {}
        self.init: dict[str, np.ndarray] = {}
        self.lo: dict[str, np.ndarray] = {}
        self.hi: dict[str, np.ndarray] = {}
        self.free: dict[str, np.ndarray] = {}
        for name, spec in params.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"parameter names must be non-empty strings, got {name!r}")
            self._add(name, spec if isinstance(spec, Param) else Param(spec))
        self._build_flat()

    # ----------------------------------------------------------- construction
    def _add(self, name: str, p: Param) -> None:
        v = p.value
        if p.bounds is None and p.fixed is False and type(v) in (float, int, np.float64) \
                and math.isfinite(v):
            # a plain free scalar (the common case): what the general path below makes,
            # in a fraction of its NumPy calls (it runs for every parameter of every fit)
            self.names.append(name)
            self.shapes[name] = ()
            self.init[name] = np.array(float(v))
            self.lo[name] = np.array(-np.inf)
            self.hi[name] = np.array(np.inf)
            self.free[name] = np.array(True)
            return
        val = _as_array(p.value, f"initial value of parameter {name!r}")
        if not np.all(np.isfinite(val)):
            raise ValueError(f"initial value of parameter {name!r} is not finite: {p.value!r}")
        lo = np.full(val.shape, -np.inf)
        hi = np.full(val.shape, np.inf)
        if p.bounds is not None:
            if not (isinstance(p.bounds, (tuple, list)) and len(p.bounds) == 2):
                raise ValueError(
                    f"bounds of parameter {name!r} must be a pair (lo, hi), got {p.bounds!r}"
                )
            blo, bhi = p.bounds
            try:
                if blo is not None:
                    lo = np.broadcast_to(_as_array(blo, f"lower bound of {name!r}"), val.shape)
                if bhi is not None:
                    hi = np.broadcast_to(_as_array(bhi, f"upper bound of {name!r}"), val.shape)
            except ValueError as exc:
                raise ValueError(
                    f"bounds of parameter {name!r} do not match its shape {val.shape}"
                ) from exc
            lo, hi = lo.astype(np.float64).copy(), hi.astype(np.float64).copy()
            if np.any(np.isnan(lo)) or np.any(np.isnan(hi)):
                raise ValueError(
                    f"bounds of parameter {name!r} contain NaN ({_fmt(lo)}, {_fmt(hi)}); use "
                    "None or ±inf for an open side")
            if np.any(lo >= hi):
                raise ValueError(f"parameter {name!r}: lower bound must be below upper bound")
            if np.any(val < lo) or np.any(val > hi):
                raise ValueError(
                    f"initial value of parameter {name!r} ({_fmt(val)}) is outside its bounds "
                    f"({_fmt(lo)}, {_fmt(hi)})"
                )
        try:
            free = ~np.broadcast_to(np.asarray(p.fixed, dtype=bool), val.shape)
        except ValueError as exc:
            raise ValueError(
                f"fixed mask of parameter {name!r} does not match its shape {val.shape}"
            ) from exc
        self.names.append(name)
        self.shapes[name] = val.shape
        self.init[name] = val
        self.lo[name] = lo
        self.hi[name] = hi
        self.free[name] = free.copy()

    def _build_flat(self) -> None:
        labels, lo, hi, theta0 = [], [], [], []
        for name in self.names:
            shape = self.shapes[name]
            for idx in np.ndindex(*shape) if shape else [()]:
                if not self.free[name][idx]:
                    continue
                labels.append(name if shape == () else f"{name}[{','.join(map(str, idx))}]")
                lo.append(self.lo[name][idx])
                hi.append(self.hi[name][idx])
                theta0.append(self.init[name][idx])
        self.labels: list[str] = labels
        self.n_free = len(labels)
        self.theta_lo = np.array(lo, dtype=np.float64)
        self.theta_hi = np.array(hi, dtype=np.float64)
        self.theta0 = np.array(theta0, dtype=np.float64)
        self._both = np.isfinite(self.theta_lo) & np.isfinite(self.theta_hi)
        self._lo_only = np.isfinite(self.theta_lo) & ~np.isfinite(self.theta_hi)
        self._hi_only = ~np.isfinite(self.theta_lo) & np.isfinite(self.theta_hi)
        self.bounded = bool(np.any(self._both | self._lo_only | self._hi_only))

    def with_fixed(self, fixed: Mapping[str, float]) -> ParamSpace:
        """A copy in which the given labels (``'b1'`` or ``'c[3]'``) are fixed at given values."""
        specs = {}
        for name in self.names:
            val = np.array(self.init[name], dtype=np.float64)
            fix = np.array(~self.free[name], dtype=bool)  # 0-d stays an array, assignable
            specs[name] = [val, fix]
        for label, value in fixed.items():
            name, idx = self.parse_label(label)
            specs[name][0][idx] = value
            specs[name][1][idx] = True
        out = {}
        for name in self.names:
            val, fix = specs[name]
            lo, hi = self.lo[name], self.hi[name]
            # a value pinned outside the bounds is clipped in the bounds check below
            out[name] = Param(val, bounds=(lo, hi) if np.any(np.isfinite(lo) | np.isfinite(hi))
                              else None, fixed=fix)
        return ParamSpace(out)

    def with_values(self, theta: np.ndarray) -> ParamSpace:
        """A copy whose initial free values are ``theta`` (a warm start)."""
        vals = self.unflatten_numpy(theta)
        return ParamSpace({
            n: Param(vals[n], bounds=(self.lo[n], self.hi[n]), fixed=~self.free[n])
            for n in self.names
        })

    def parse_label(self, label: str) -> tuple[str, tuple]:
        """``'c[1,2]'`` -> ``('c', (1, 2))``; ``'b1'`` -> ``('b1', ())``."""
        if "[" in label and label.endswith("]"):
            name, rest = label[:-1].split("[", 1)
            idx = tuple(int(i) for i in rest.split(","))
        else:
            name, idx = label, ()
        if name not in self.shapes:
            raise KeyError(f"unknown parameter {label!r}; parameters are: {', '.join(self.names)}")
        if len(idx) != len(self.shapes[name]):
            raise KeyError(
                f"parameter {name!r} has shape {self.shapes[name]}; name one element as "
                f"'{name}[i]'" if self.shapes[name] else f"parameter {name!r} is a scalar"
            )
        return name, idx

    # -------------------------------------------------------------- transforms
    def to_internal(self, theta: np.ndarray) -> np.ndarray:
        """Physical free vector -> unconstrained z (NumPy, float64)."""
        theta = np.asarray(theta, dtype=np.float64).copy()
        z = theta.copy()
        lo, hi = self.theta_lo, self.theta_hi
        b = self._both
        if np.any(b):
            frac = (theta[b] - lo[b]) / (hi[b] - lo[b])
            frac = np.clip(frac, 1e-12, 1 - 1e-12)
            z[b] = np.log(frac) - np.log1p(-frac)
        for mask, d in ((self._lo_only, theta - lo), (self._hi_only, hi - theta)):
            if np.any(mask):
                y = np.maximum(d[mask], 1e-300)
                # inverse softplus, stable for large and tiny y
                z[mask] = np.where(y > 30, y, np.log(np.expm1(np.maximum(y, 1e-300))))
        return z

    def to_external(self, z: torch.Tensor) -> torch.Tensor:
        """Unconstrained z -> physical free vector (torch, differentiable, batched on last dim)."""
        if not self.bounded:
            return z
        dev, dt = z.device, z.dtype
        lo = torch.as_tensor(np.where(np.isfinite(self.theta_lo), self.theta_lo, 0.0),
                             device=dev, dtype=dt)
        hi = torch.as_tensor(np.where(np.isfinite(self.theta_hi), self.theta_hi, 0.0),
                             device=dev, dtype=dt)
        both = torch.as_tensor(self._both, device=dev)
        lo_only = torch.as_tensor(self._lo_only, device=dev)
        hi_only = torch.as_tensor(self._hi_only, device=dev)
        sp = torch.nn.functional.softplus(z)
        out = torch.where(both, lo + (hi - lo) * torch.sigmoid(z), z)
        out = torch.where(lo_only, lo + sp, out)
        out = torch.where(hi_only, hi - sp, out)
        return out

    def external_slope(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(theta, dtheta/dz)`` at ``z``: the transform is elementwise, so its slope is
        one backward pass of ``sum(theta)`` (the chain rule for Jacobians in z)."""
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            th = self.to_external(zz)
            (dth,) = torch.autograd.grad(th.sum(), zz)
        return th.detach(), dth

    # ---------------------------------------------------------------- unflatten
    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Free vector (torch) -> dict of tensors, fixed elements filled in.

        Works on a leading batch dimension: ``theta`` of shape ``(..., n_free)``.
        """
        plan = self._unflatten_plan()
        if self.__dict__.get("_uscalar", False):
            # every parameter a free scalar: one autograd node instead of a slice and a
            # view per parameter (in a small fit's Jacobian, double-backward through
            # those nodes cost about as much as the model)
            return dict(zip(self.names, theta.unbind(-1)))
        dev, dt = theta.device, theta.dtype
        batch = tuple(theta.shape[:-1])
        out: dict[str, torch.Tensor] = {}
        for name, shape, size, k, nf, init, idx in plan:
            if nf == size:
                t = theta[..., k:k + nf]
            elif nf == 0:
                t = torch.as_tensor(init, device=dev, dtype=dt)
                t = t.expand(*batch, size)
            else:
                base = torch.as_tensor(init, device=dev, dtype=dt)
                t = base.expand(*batch, size).clone()
                t = t.index_copy(t.dim() - 1, torch.as_tensor(idx, device=dev),
                                 theta[..., k:k + nf])
            out[name] = t.reshape(batch + shape)
        return out

    @property
    def all_scalars(self) -> bool:
        """Whether every parameter (free or fixed) is a scalar."""
        return all(shape == () for shape in self.shapes.values())

    def _unflatten_plan(self) -> list:
        """Per parameter ``(name, shape, size, offset, n_free, init, free_idx)``, made once:
        :meth:`unflatten` runs at every model evaluation, where NumPy bookkeeping per call
        cost about as much as a small model."""
        plan = self.__dict__.get("_uplan")
        if plan is None:
            plan, k = [], 0
            for name in self.names:
                shape = tuple(self.shapes[name])
                size = int(np.prod(shape)) if shape else 1
                free = self.free[name].reshape(-1)
                nf = int(free.sum())
                plan.append((name, shape, size, k, nf, self.init[name].reshape(-1).copy(),
                             np.flatnonzero(free)))
                k += nf
            self._uplan = plan
            self._uscalar = all(e[1] == () and e[4] == 1 for e in plan)
        return plan

    def unflatten_numpy(self, theta: np.ndarray, fill_fixed: float | None = None) -> dict:
        """Free vector (NumPy) -> dict of floats / arrays; fixed elements from the initial
        values, or ``fill_fixed`` when given (used for errors of fixed parameters)."""
        theta = np.asarray(theta, dtype=np.float64)
        out = {}
        k = 0
        for name in self.names:
            val = self.init[name].copy() if fill_fixed is None else \
                np.full(self.shapes[name], fill_fixed, dtype=np.float64)
            free = self.free[name]
            nf = int(free.sum())
            if val.shape == ():
                out[name] = float(theta[k]) if nf else float(val)
            else:
                val[free] = theta[k:k + nf]
                out[name] = val
            k += nf
        return out

    def at_bound(self, theta: np.ndarray, rtol: float = 1e-6) -> list[str]:
        """Labels of free elements sitting on (or within ``rtol`` of the range of) a bound."""
        theta = np.asarray(theta)
        span = np.where(self._both, self.theta_hi - self.theta_lo, 1.0)
        tol = rtol * np.maximum(span, np.abs(theta) + 1e-300)
        near = (np.abs(theta - self.theta_lo) <= tol) | (np.abs(self.theta_hi - theta) <= tol)
        return [lab for lab, f in zip(self.labels, near) if f]


def _fmt(a: np.ndarray) -> str:
    a = np.asarray(a)
    if a.shape == ():
        return f"{float(a):g}"
    return np.array2string(a, precision=4, threshold=6)

