"""The nuisance parameters of an OOF fit: one table, used by the model, the fit, the CLI and docs.

The model of map ``b`` is ``amp * gain_b * P_b(K, illumination, pointing_b) + background_b``
(``+ a_b u/h_b + c_b v/h_b`` with ``background_plane``)
(data in units of the in-focus peak). ``K`` (the Zernike coefficients) is always
fitted; every parameter here has a default that the model uses when the fit does
not free it. Per-map parameters hold one value (or pair) per map; those that are
relative to the in-focus map (``gain``, ``pointing``) keep it fixed at the default.

The illumination taper ``A(r')`` is :func:`illumination`, the one formula used by
the model and the solution's weighted rms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Nuisance", "NUISANCE", "DEFAULTS", "ILLUMINATIONS", "illumination",
           "nuisance_help"]

ILLUMINATIONS = ("pedestal", "gaussian")


@dataclass(frozen=True)
class Nuisance:
    """One nuisance parameter.

    Attributes
    ----------
    name : str
    default : float
        Value when not fitted, and the start of a fit.
    bounds : (lo, hi) or None
        Bounds while fitted.
    unit : str
    per_map : int
        0 for one value, else the number of values per map (1 or 2).
    infocus_fixed : bool
        For per-map parameters: the in-focus map's entry stays at the default.
    on_by_default : bool
        Freed by :func:`gradfit.oof.fit` unless ``free=`` says otherwise.
    on_for_measured : bool
        Also freed by default for measured maps (maps without a noise sigma, as read
        from files or text; see :func:`gradfit.oof.solve.default_free`).
    help : str
        One line for the CLI and the docs.
    """

    name: str
    default: float
    bounds: tuple | None
    unit: str
    per_map: int = 0
    infocus_fixed: bool = False
    on_by_default: bool = False
    help: str = ""
    on_for_measured: bool = False

    def shape(self, n_maps: int) -> tuple:
        """Shape of the parameter for an observation of ``n_maps`` maps."""
        if not self.per_map:
            return ()
        return (n_maps,) if self.per_map == 1 else (n_maps, self.per_map)

    def n_free(self, n_maps: int) -> int:
        """Number of free values when fitted."""
        if not self.per_map:
            return 1
        return (n_maps - int(self.infocus_fixed)) * self.per_map


#: name -> :class:`Nuisance`, in the order of the fit's columns and of the summary
NUISANCE: dict[str, Nuisance] = {n.name: n for n in (
    Nuisance("amp", 1.0, None, "in-focus peak", on_by_default=True,
             help="common amplitude (starts at its linear least-squares value)"),
    Nuisance("c_dB", -12.0, (-30.0, -3.0), "dB", on_by_default=True,
             help="illumination edge taper"),
    Nuisance("q", 2.0, (0.5, 6.0), "", help="pedestal exponent of the illumination"),
    Nuisance("x0", 0.0, None, "m", help="illumination centre offset along x"),
    Nuisance("y0", 0.0, None, "m", help="illumination centre offset along y"),
    Nuisance("pointing", 0.0, None, "lambda/D", per_map=2, infocus_fixed=True,
             help="pointing offset (u, v) of each map relative to the in-focus map",
             on_for_measured=True),
    Nuisance("gain", 1.0, None, "", per_map=1, infocus_fixed=True,
             help="gain of each map relative to the in-focus map", on_for_measured=True),
    Nuisance("background", 0.0, None, "in-focus peak", per_map=1,
             help="constant background (offset) of each map", on_for_measured=True),
    Nuisance("background_plane", 0.0, None, "in-focus peak at the map half-width",
             per_map=2,
             help="background slope (along u, along v) of each map: the plane adds "
                  "a u/h + b v/h, h the map's half-width max(|u|, |v|)"),
)}

#: name -> default value, for the model
DEFAULTS = {k: v.default for k, v in NUISANCE.items()}


def nuisance_help() -> str:
    """One line per nuisance parameter: name, default, unit, meaning (for CLI help, docs)."""
    lines = []
    for n in NUISANCE.values():
        unit = f" {n.unit}" if n.unit else ""
        per = " per map" if n.per_map else ""
        on = (", fitted by default" if n.on_by_default else
              ", fitted by default for measured maps" if n.on_for_measured else "")
        lines.append(f"{n.name}: {n.help}{per} (default {n.default:g}{unit}{on})")
    return "\n".join(lines)


def illumination(kind: str, c_dB, r2, q=None):
    """Illumination amplitude ``A`` at ``r2 = (r'/pr)^2`` (torch or numpy).

    ``'pedestal'``: ``C + (1 - C)(1 - r2)^q``, ``C = 10^(c_dB/20)`` (``1 - r2`` clamped
    at 0, since an offset centre puts rim cells at ``r' > pr``); ``q`` None means 2.
    ``'gaussian'``: ``C^r2``.
    """
    if kind == "pedestal":
        C = 10.0 ** (c_dB / 20.0)
        if isinstance(r2, np.ndarray):
            base = np.clip(1 - r2, 0.0, None)
        else:
            base = (1 - r2).clamp(min=0.0)
        return C + (1 - C) * (base * base if q is None else base**q)
    if kind == "gaussian":
        arg = (math.log(10.0) / 20.0) * c_dB * r2
        return np.exp(arg) if isinstance(arg, np.ndarray) else arg.exp()
    raise ValueError(f"unknown illumination {kind!r}; choose one of: {', '.join(ILLUMINATIONS)}")
