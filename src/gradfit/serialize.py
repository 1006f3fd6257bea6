"""JSON-ready conversion shared by every result type (a leaf module: it imports no gradfit code)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["to_jsonable"]


def to_jsonable(v):
    """``v`` with NumPy arrays and scalars turned into lists and Python numbers.

    Dicts, lists and tuples are converted recursively; NaN and ±inf become None
    (JSON has no such numbers); anything else is returned as it is.
    """
    if isinstance(v, np.ndarray):
        return [to_jsonable(x) for x in v.tolist()] if v.ndim else to_jsonable(float(v))
    if isinstance(v, (list, tuple)):
        return [to_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: to_jsonable(x) for k, x in v.items()}
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    return v
