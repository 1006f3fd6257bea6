"""OOF holography: measure a radio telescope's surface from in- and out-of-focus beam maps.

>>> from gradfit import oof
>>> obs = oof.read("obs.fits")                      # doctest: +SKIP
>>> sol = oof.fit(obs, order=5, telescope="effelsberg")   # doctest: +SKIP
"""

from __future__ import annotations

from gradfit.oof.io import OOFDataError, read, write, write_solution
from gradfit.oof.observation import BeamMap, Observation
from gradfit.oof.simulate import simulate
from gradfit.oof.solve import Solution, fit
from gradfit.oof.telescope import Telescope, get_telescope

__all__ = [
    "BeamMap",
    "OOFDataError",
    "Observation",
    "Solution",
    "Telescope",
    "fit",
    "get_telescope",
    "read",
    "simulate",
    "write",
    "write_solution",
]
