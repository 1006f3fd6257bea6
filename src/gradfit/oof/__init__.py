"""OOF holography: measure a radio telescope's surface from in- and out-of-focus beam maps.

>>> from gradfit import oof
>>> obs = oof.read("obs.fits")                      # doctest: +SKIP
>>> sol = oof.fit(obs, order=5, telescope="effelsberg")   # doctest: +SKIP
"""

from __future__ import annotations

import importlib

from gradfit.oof.io import OOFDataError, read, write, write_solution
from gradfit.oof.observation import BeamMap, Observation

# imported here, not lazily: the submodule 'simulate' would otherwise shadow the function
from gradfit.oof.simulate import simulate
from gradfit.oof.telescope import get_telescope

__all__ = [
    "BeamMap",
    "OOFDataError",
    "Observation",
    "fit",
    "get_telescope",
    "read",
    "simulate",
    "write",
    "write_solution",
]

# loaded on first access until gradfit.oof.solve is committed
_LAZY = {"fit": "gradfit.oof.solve"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gradfit.oof' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
