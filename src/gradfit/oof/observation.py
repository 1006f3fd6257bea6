"""The data of one OOF holography observation: any number of beam maps at known defocus."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["BeamMap", "Observation"]


@dataclass
class BeamMap:
    """One total-power beam map.

    u, v : 1-D float64 arrays of the sky offsets of each sample (radians).
    power : 1-D float64 array of the measured power at each sample (same length).
    dz : axial defocus of the subreflector (or feed) for this map (metres).
    sigma : per-point noise (same length) or None when unknown.
    name : label, e.g. 'MINUS OOF'.
    shape : (n_v, n_u) when the samples form a regular grid with u varying fastest, else None.
    """

    u: np.ndarray
    v: np.ndarray
    power: np.ndarray
    dz: float
    sigma: np.ndarray | None = None
    name: str = ""
    shape: tuple[int, int] | None = None

    def __post_init__(self):
        self.u = np.asarray(self.u, dtype=np.float64).ravel()
        self.v = np.asarray(self.v, dtype=np.float64).ravel()
        self.power = np.asarray(self.power, dtype=np.float64).ravel()
        if not (self.u.size == self.v.size == self.power.size):
            raise ValueError(
                f"map {self.name or '?'}: U, V and BEAM lengths differ "
                f"({self.u.size}, {self.v.size}, {self.power.size})"
            )
        if self.sigma is not None:
            self.sigma = np.asarray(self.sigma, dtype=np.float64).ravel()
            if self.sigma.size != self.power.size:
                raise ValueError(
                    f"map {self.name or '?'}: sigma has {self.sigma.size} values "
                    f"for {self.power.size} samples"
                )
        self.dz = float(self.dz)

    @property
    def n(self) -> int:
        return self.power.size


@dataclass
class Observation:
    """All maps of one observation plus the metadata a fit needs.

    maps : the beam maps, any number (usually three: -dz, 0, +dz).
    wavelength_m, frequency_hz : observing wavelength and frequency.
    telescope : telescope name if known (e.g. 'effelsberg'), else None.
    layout : 'pyoof' or 'oof' for data read from a file, 'gradfit' for simulations.
        Sign conventions follow pyoof for 'pyoof' data (see DESIGN.md).
    meta : free-form header values (OBJECT, DATE_OBS, MEANEL, ...).
    truth : for simulations, the true parameters (JSON-ready dict), else None.
    """

    maps: list[BeamMap]
    wavelength_m: float
    frequency_hz: float
    telescope: str | None = None
    layout: str = "gradfit"
    meta: dict = field(default_factory=dict)
    truth: dict | None = None

    @property
    def n_points(self) -> int:
        return sum(m.n for m in self.maps)
