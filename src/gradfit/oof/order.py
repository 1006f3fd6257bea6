"""Choose the Zernike order by the Bayesian information criterion (``--order auto``).

:func:`select_order` fits orders upwards with any fit callable, tabulates chi^2,
reduced chi^2 and BIC = chi^2 + k ln N for each, and picks the order of lowest BIC,
saying why. With noise correlated along scans the samples are worth fewer independent
ones: pass ``n_eff`` (e.g. N / ``ScanNoise.inflation_ar``), or the ln N penalty is too
weak and the order comes out too high.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["OrderStep", "OrderChoice", "select_order"]


@dataclass(frozen=True)
class OrderStep:
    """One fitted order: chi^2, free parameters, reduced chi^2 and BIC."""

    order: int
    chi2: float
    n_params: int
    chi2r: float
    bic: float
    result: Any = None


@dataclass(frozen=True)
class OrderChoice:
    """The chosen order, every step tried, and the reason in words."""

    order: int
    steps: tuple[OrderStep, ...]
    reason: str

    @property
    def result(self):
        return next(s.result for s in self.steps if s.order == self.order)

    def table(self) -> str:
        """Aligned text table of the steps, the chosen one marked."""
        lines = [f"{'order':>5} {'k':>4} {'chi2':>12} {'chi2r':>8} {'BIC':>12}"]
        for s in self.steps:
            mark = "  <- lowest BIC" if s.order == self.order else ""
            lines.append(f"{s.order:>5} {s.n_params:>4} {s.chi2:12.2f} {s.chi2r:8.3f} "
                         f"{s.bic:12.2f}{mark}")
        return "\n".join(lines)


def select_order(
    fit_at: Callable[[int], tuple[float, int, Any]],
    orders: Iterable[int],
    n_data: int,
    *,
    n_eff: float | None = None,
    patience: int = 2,
    progress: Callable[[OrderStep], None] | None = None,
) -> OrderChoice:
    """Fit ``orders`` upwards and pick the one of lowest BIC.

    Parameters
    ----------
    fit_at : callable
        ``fit_at(order) -> (chi2, n_params, result)``: chi^2 with the noise used for the
        errors, the number of free parameters, and anything to keep (the solution).
    orders : iterable of int
        Increasing orders to try (e.g. ``range(1, 11)``).
    n_data : int
        Number of samples (for the reduced chi^2).
    n_eff : float, optional
        Effective number of independent samples for the BIC penalty (default ``n_data``).
    patience : int
        Stop after this many orders in a row without a new lowest BIC (saves the costly
        high orders once the BIC has turned up).
    progress : callable, optional
        Called with each :class:`OrderStep` as it is done (to print the table live).

    Returns
    -------
    OrderChoice
    """
    orders = [int(o) for o in orders]
    if not orders:
        raise ValueError("select_order: no orders to try")
    if any(b <= a for a, b in zip(orders, orders[1:])):
        raise ValueError(f"select_order: orders must increase, got {orders}")
    if int(n_data) != n_data or n_data < 1:
        raise ValueError(f"n_data must be a positive integer, got {n_data}")
    n_eff = float(n_data if n_eff is None else n_eff)
    if not (math.isfinite(n_eff) and 1 < n_eff <= n_data):
        raise ValueError(f"n_eff must be in (1, n_data = {n_data}], got {n_eff}")
    if int(patience) != patience or patience < 1:
        raise ValueError(f"patience must be an integer >= 1, got {patience}")
    steps: list[OrderStep] = []
    best = None
    since = 0
    for order in orders:
        chi2, k, result = fit_at(order)
        chi2, k = float(chi2), int(k)
        dof = max(n_data - k, 1)
        step = OrderStep(order, chi2, k, chi2 / dof, chi2 + k * math.log(n_eff), result)
        steps.append(step)
        if progress is not None:
            progress(step)
        if best is None or step.bic < best.bic:
            best, since = step, 0
        else:
            since += 1
            if since >= patience:
                break
    higher = [s for s in steps if s.order > best.order]
    lower = [s for s in steps if s.order < best.order]
    why = [f"order {best.order} has the lowest BIC ({best.bic:.1f}, chi2r {best.chi2r:.3f})"]
    if lower:
        prev = lower[-1]
        why.append(f"order {prev.order} is worse by {prev.bic - best.bic:.1f}")
    if higher:
        nxt = higher[0]
        why.append(f"order {nxt.order} adds {nxt.n_params - best.n_params} parameters "
                   f"for a chi2 drop of {best.chi2 - nxt.chi2:.1f} < their penalty "
                   f"{(nxt.n_params - best.n_params) * math.log(n_eff):.1f}")
    else:
        why.append("it is the highest order tried: try higher orders")
    if n_eff < n_data:
        why.append(f"penalty ln N_eff with N_eff = {n_eff:.0f} of {n_data} samples")
    return OrderChoice(best.order, tuple(steps), "; ".join(why))
