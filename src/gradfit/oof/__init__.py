"""OOF holography: measure a radio telescope's surface from in- and out-of-focus beam maps.

>>> from gradfit import oof
>>> obs = oof.read("obs.fits")                      # doctest: +SKIP
>>> sol = oof.fit(obs, order=5, telescope="effelsberg")   # doctest: +SKIP

The reading and writing functions are light; :func:`simulate`, :func:`fit` and
:func:`get_telescope` load the PyTorch model on first use.
"""

from __future__ import annotations

import importlib

from gradfit.oof.io import OOFDataError, read, write, write_solution
from gradfit.oof.observation import BeamMap, Observation

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

# name -> module that defines it; loaded on first access so that reading a file
# (and the CLI's start-up) does not import torch
_LAZY = {
    "simulate": "gradfit.oof.simulate",
    "fit": "gradfit.oof.solve",
    "get_telescope": "gradfit.oof.telescope",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gradfit.oof' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
