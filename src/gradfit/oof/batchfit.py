"""A campaign's observations fitted as one batch, then each polished on its own.

Observations of one dish, made on one sky grid with the same defocus values and
wavelength (a campaign's usual case), share every matrix of the beam model: only
``K``, ``amp`` and ``c_dB`` differ. :func:`batched_starts` groups them by that
geometry (and by the aperture grid their noise asks for), and fits each group in
one :func:`gradfit.fit_batch` call: the batched Levenberg-Marquardt with the exact
Jacobian of :meth:`gradfit.oof.model.BeamModel.batched_jacobian`, every
observation's transforms in the same matrix products.

The answer is a start, not the result: :func:`gradfit.oof.campaign.fit_many` then
runs each observation's own :func:`gradfit.oof.fit` from it, so the nuisance
parameters of measured maps, the noise estimate, the errors, the multi-start policy
and the checks are exactly those of a single fit, which from there converges in a
step or two. An observation that fits no group (alone in its geometry, scattered
samples, maps on different sky grids, or measured maps, whose fits free a background,
gain and pointing per map that the batch does not) gets no start and is fitted from
the default.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import torch

from .grid import choose_grid_size
from .model import BeamModel, torch_threads
from .nuisance import NUISANCE
from .telescope import get_telescope
from .transforms import MFT

__all__ = ["batched_starts", "geometry_key"]


def _digest(*arrays) -> str:
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _sigma_and_scale(obs):
    """``(sigma per kept sample, in-focus peak)``: the maps' own noise where they carry
    it (as :func:`gradfit.oof.fit` uses it), else each map's edge noise."""
    ref = obs.maps[obs.infocus_index]
    scale = float(np.max(ref.power[ref.valid]))
    parts = []
    for m in obs.maps:
        if m.sigma is not None:
            parts.append(m.sigma[m.valid] / scale)
        else:
            s = m.noise() / scale
            parts.append(np.full(m.n_used, s if s > 0 else 1e-6))
    return np.concatenate(parts), scale


def geometry_key(obs, telescope, order: int, illumination: str = "pedestal", free=None):
    """What observations must share to be fitted in one batch, or None if ``obs`` cannot
    be batched: the dish, wavelength, order, illumination, the defocus, sky grid and
    mask of every map, and the aperture grid chosen for its noise.

    Only a fit whose free nuisance parameters are those of the batch (``amp`` and
    ``c_dB``: ``free`` as given to :func:`gradfit.oof.fit`, or its default for ``obs``)
    is batched. Measured maps free a background, gain and pointing per map as well; a
    start from a batch without them was measured to lead their fits elsewhere (0.07
    waves apart, 4x slower), so they are fitted from scratch.
    """
    from .solve import IDEAL_FREE, default_free  # solve does not import this module

    chosen = default_free(obs) if free is None else tuple(free)
    if sorted(chosen) != sorted(IDEAL_FREE):
        return None
    if any(m.grid_axes() is None for m in obs.maps) or len({m.shape for m in obs.maps}) != 1:
        return None
    axes = [m.grid_axes() for m in obs.maps]
    if not all(np.array_equal(axes[0][0], a[0]) and np.array_equal(axes[0][1], a[1])
               for a in axes):
        return None
    sigma, scale = _sigma_and_scale(obs)
    if not (scale > 0 and np.all(np.isfinite(sigma)) and np.all(sigma > 0)):
        return None
    tel = get_telescope(telescope if telescope is not None else obs.telescope)
    with torch_threads(1):
        n_grid = choose_grid_size(obs, tel, float(np.median(sigma)), order=max(order, 3),
                                  illumination=illumination)
    geom = _digest(np.array([m.dz for m in obs.maps]), axes[0][0], axes[0][1],
                   np.stack([m.u for m in obs.maps]), np.stack([m.v for m in obs.maps]),
                   np.stack([m.valid for m in obs.maps]))
    return (tel, round(float(obs.wavelength_m), 15), int(order), illumination, geom, n_grid)


def batched_starts(observations, order: int, *, telescope=None,
                   illumination: str = "pedestal", free=None, max_iter: int = 100,
                   min_batch: int = 2, threads: int = 1, device="cpu",
                   dtype=torch.float64) -> list:
    """Fit ``K``, ``amp`` and ``c_dB`` of many observations in batches of one geometry.

    Parameters
    ----------
    observations : sequence of Observation (None entries are skipped)
    order : int
    telescope : Telescope or str, optional
        Default: each observation's own.
    illumination : str
    free : iterable of str, optional
        The ``free`` of the fits that will start from these answers (default: each
        observation's :func:`gradfit.oof.solve.default_free`); see :func:`geometry_key`.
    max_iter : int
        Iteration limit of the batched Levenberg-Marquardt.
    min_batch : int
        Smallest group worth a batch (smaller groups get no start).
    threads : int
        Torch CPU threads during the batch.
    device, dtype :

    Returns
    -------
    list
        Per observation ``{"K": (n_coeff,) waves with piston, "amp", "c_dB"}`` to pass
        as ``gradfit.oof.fit(..., start=...)``, or None where there is no batched start.
    """
    import gradfit

    groups: dict = {}
    for i, obs in enumerate(observations):
        if obs is None:
            continue
        key = geometry_key(obs, telescope, order, illumination, free)
        if key is not None:
            groups.setdefault(key, []).append(i)
    starts: list = [None] * len(observations)
    for key, idx in groups.items():
        if len(idx) < max(int(min_batch), 1):
            continue
        tel, n_grid = key[0], key[-1]
        obs0 = observations[idx[0]]
        # the batch in float32 on the CPU (twice the products per second); each
        # observation's own float64 fit then takes it to the float64 answer in 3-5
        # iterations. A float64 batch stage in between (as before) cost more than it
        # saved: 30 simulations, 33x33, order 5: 0.054 + 0.018 s per observation with it,
        # 0.024 + 0.032 s without, against 0.067 s for plain fits; the same coefficients
        # to 1.3e-9 waves either way
        dt = torch.float32 if (dtype == torch.float64
                               and torch.device(device).type == "cpu") else dtype
        with torch_threads(threads):
            model = BeamModel(obs0, tel, order, n_grid, illumination=illumination,
                              device=device, dtype=dt)
            if not (isinstance(model.tf, MFT) and model.tf.shared_axes):
                continue
            data = _group_data([observations[i] for i in idx])
            found = _fit_group(gradfit, model, data, max_iter)
        for i, s in zip(idx, found):
            starts[i] = s
    return starts


def _group_data(group):
    """``(keep, y, w)``: the kept samples (one mask for the group), each observation's data
    in units of its in-focus peak and the weights 1/sigma, ``(b, n_kept)`` each."""
    keep = np.flatnonzero(np.concatenate([m.valid for m in group[0].maps]))
    y, w = [], []
    for obs in group:
        sigma, scale = _sigma_and_scale(obs)
        y.append(np.concatenate([m.power for m in obs.maps])[keep] / scale)
        w.append(1.0 / sigma)
    return keep, np.stack(y), np.stack(w)


def _fit_group(gradfit, model: BeamModel, data, max_iter):
    keep, y, w = data
    b = y.shape[0]
    keep_t = torch.as_tensor(keep, device=model.device)
    nk = model.n_coeff - 1
    spec = NUISANCE["c_dB"]

    def beams(p, x):  # weighted residual form: (model / sigma) against (data / sigma)
        return model.batched(p)[:, keep_t] * x

    def beams_jacobian(p, x):
        mu, d = model.batched_jacobian(p)
        return mu[:, keep_t] * x, {"K": d["K"][:, keep_t] * x.unsqueeze(-1),
                                   "amp": d["amp"][:, keep_t] * x,
                                   "c_dB": d["c_dB"][:, keep_t] * x}

    K0, c0 = np.zeros((b, nk)), np.full(b, spec.default)
    with torch.no_grad():  # the linear least-squares amplitude of the unaberrated start
        m0 = model.batched({"K": torch.zeros(1, nk, dtype=model.dtype, device=model.device),
                            "amp": 1.0, "c_dB": spec.default})[0, keep_t].cpu().numpy()
    amp0 = np.sum(w * w * y * m0, axis=1) / np.sum(w * w * m0 * m0, axis=1)
    params = {"K": K0, "amp": amp0, "c_dB": gradfit.Param(c0, bounds=spec.bounds)}
    # no stall stop (oof.solve.STALL) here: it needs 2 x 40 accepted steps, and within
    # max_iter 100 a hopeless observation (peak SNR 1-3, or noise) makes 41-81 of them
    # with its cost still falling 1e-5 to 1e-2 over the last 40 (benchmarks/
    # oof_batch_stall.py, 15 cases); most end by themselves at float32 resolution (code
    # 5), and their starts mostly help the observation's own fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gradfit.FitWarning)
        res = gradfit.fit_batch(beams, w, y * w, params=params,
                                likelihood=gradfit.Gaussian(sigma=1.0), method="lm",
                                vectorized=True, x_batched=True, jacobian=beams_jacobian,
                                errors=False, max_iter=max_iter, device=model.device,
                                dtype=model.dtype)
    out = []
    for i in range(b):
        K = np.asarray(res.params["K"][i], dtype=np.float64)
        amp, c = float(res.params["amp"][i]), float(res.params["c_dB"][i])
        ok = np.all(np.isfinite(K)) and np.isfinite(amp) and np.isfinite(c) and amp > 0
        out.append({"K": np.concatenate([[0.0], K]), "amp": amp, "c_dB": c} if ok else None)
    return out
