"""OOF holography: measure a radio telescope's surface from in- and out-of-focus beam maps.

>>> from gradfit import oof
>>> obs = oof.read("obs.fits")                      # doctest: +SKIP
>>> obs = oof.read_text(["m.txt", "f.txt", "p.txt"], "-0.027,0,0.027",
...                     telescope="srt", frequency=22.23e9)   # doctest: +SKIP
>>> sol = oof.fit(obs, order=5, telescope="effelsberg")   # doctest: +SKIP
>>> camp = oof.fit_many(["a.fits", "b.fits"], order=5, out="season")   # doctest: +SKIP

The pipeline, top to bottom: ``observation`` (maps and their geometry) and ``io``
(readers, writers); ``telescope``, ``zernike``, ``aperture`` (the sampled dish),
``nuisance`` (the table of nuisance parameters), ``transforms`` (mft | dft | fft);
``model`` (the beams and their exact Jacobian); ``grid`` (the grid size for a fit);
``solve`` (``fit`` as named steps) -> ``solution`` (the immutable result);
``pixels``, ``pixel_errors``, ``panels``, ``pixelfit`` (``fit_pixels``: the phase per
aperture cell at panel scale, from a Zernike start); ``campaign`` (``fit_many``: many
observations, batched where they share a geometry; ``fit_campaign``: the gravity model). Importing
this package loads neither matplotlib nor SciPy; astropy loads when a file is read.
"""

from __future__ import annotations

from gradfit.oof.campaign import fit_campaign, fit_many
from gradfit.oof.io import OOFDataError, read, write, write_solution
from gradfit.oof.observation import BeamMap, Observation
from gradfit.oof.pixelfit import fit_pixels
from gradfit.oof.pixels import PixelSolution
from gradfit.oof.simulate import simulate
from gradfit.oof.solution import Solution
from gradfit.oof.solve import fit
from gradfit.oof.telescope import Telescope, get_telescope
from gradfit.oof.textio import read_text

__all__ = [
    "BeamMap",
    "OOFDataError",
    "Observation",
    "PixelSolution",
    "Solution",
    "Telescope",
    "fit",
    "fit_campaign",
    "fit_many",
    "fit_pixels",
    "get_telescope",
    "read",
    "read_text",
    "simulate",
    "write",
    "write_solution",
]
