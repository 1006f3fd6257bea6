"""Many OOF observations: a campaign fitted file by file (in process or on Dask), and the
gravity model fitted jointly to all of them.

:func:`fit_many` fits each observation (in process, those of one sky grid first as one
batch, :mod:`gradfit.oof.batchfit`; or on Dask workers) and collects one summary row
per observation (a file that fails to read or fit gets its row with the reason, and the
rest go on). :func:`fit_campaign` fits every observation at once with each Zernike
coefficient a function of elevation,

    K_nl(el) = a_nl + b_nl sin(el) + c_nl cos(el),

as the GBT's OOF gravity model was made (Nikolic et al. 2007, A&A 465, 685), with the
amplitude and taper of each observation free.
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["CampaignResult", "GravityModel", "fit_many", "fit_campaign", "simulate_campaign",
           "SUMMARY_FIELDS"]

#: the columns of ``summary.csv`` before the coefficients
SUMMARY_FIELDS = ("name", "file", "elevation_deg", "success", "message", "reason", "time_s",
                  "chi2_reduced", "surface_rms_um", "ruze_efficiency")


# ------------------------------------------------------------------ one by one
def _elevation(obs) -> float | None:
    el = obs.meta.get("MEANEL") if obs.meta else None
    try:
        el = float(el)
    except (TypeError, ValueError):
        return None
    return el if math.isfinite(el) else None


def _row_from_solution(name, file, obs, sol, t) -> dict:
    d = sol.to_dict()
    fit = d["fit"]
    row = {
        "name": name, "file": file, "elevation_deg": _elevation(obs),
        "success": bool(sol.success), "message": fit.get("message", ""), "reason": "",
        "time_s": float(t),
        "chi2_reduced": _chi2_reduced(sol, obs),
        "surface_rms_um": float(d["surface_rms_um"]),
        "ruze_efficiency": float(d["ruze_efficiency"]),
        "zernike": [{"n": z["n"], "l": z["l"], "value_waves": z["value_waves"],
                     "error_waves": z["error_waves"]} for z in d["zernike"]],
    }
    return row


def _chi2_reduced(sol, obs) -> float | None:
    """Σ((data − model)/σ)² / (N − p) with the per-point σ of the maps, where known."""
    if any(m.sigma is None for m in obs.maps):
        chi = sol.fit.get("chi2_reduced")
        return None if chi is None else float(chi)
    model = sol.model_maps()
    r2 = sum(float(np.sum((((m.power - mm) / m.sigma)[m.valid]) ** 2))  # flagged left out
             for m, mm in zip(obs.maps, model))
    n = sum(m.n_used for m in obs.maps)
    p = len(getattr(sol.result, "names", [])) or sol.K_waves.size
    npar = int(np.sum([np.size(v) for v in sol.result.params.values()])) if hasattr(
        sol.result, "params") else p
    return r2 / max(n - npar, 1)


def _read_one(source):
    """``(observation, None)`` or ``(None, reason)``: a file that cannot be read is a row."""
    from . import io as oio

    if not isinstance(source, (str, os.PathLike)):
        return source, None
    try:
        return oio.read(source), None
    except Exception as exc:  # noqa: BLE001 - a campaign records every failure and goes on
        return None, f"cannot read: {_one_line(exc)}"


def _fit_one(source, name, order, telescope, fit_kwargs, out, overwrite=False, read=None,
             start=None):
    """Read (unless ``read`` gives the outcome), fit (from ``start`` if given) and (with
    ``out``) write one observation; never raises: a failure is the row's ``reason``."""
    from .solve import fit

    file = str(source) if isinstance(source, (str, os.PathLike)) else ""
    t0 = time.perf_counter()
    obs, reason = _read_one(source) if read is None else read
    if obs is None:
        return _failed_row(name, file, None, reason, t0), None
    kw = dict(fit_kwargs) if start is None else dict(fit_kwargs, start=start)
    try:
        sol = fit(obs, order=order, telescope=telescope, **kw)
        if start is not None and not (sol.success and sol.adequacy.get("adequate", True)):
            # a fit that does not describe its data may have several minima, and which
            # one it finds depends on the start: the batch's answer is not used for it
            sol = fit(obs, order=order, telescope=telescope, **fit_kwargs)
            start = None
    except Exception as exc:  # noqa: BLE001
        return _failed_row(name, file, obs, f"cannot fit: {_one_line(exc)}", t0), None
    row = _row_from_solution(name, file, obs, sol, time.perf_counter() - t0)
    row["batched"] = start is not None
    if not sol.success:
        row["reason"] = f"fit failed: {row['message']}"
    if out is not None:
        from .io import write_fit_result
        from .output import ResultDir, file_sha256

        try:
            sha = file_sha256(file) if file else None
            with ResultDir(Path(out) / name, inputs=[file] if file else (), input_sha256=sha,
                           overwrite=overwrite) as rd:
                write_fit_result(rd.staging, sol, obs, input_path=file or None,
                                 input_sha256=sha, settings={"order": order})
                rd.commit()
        except (OSError, ValueError) as exc:
            row["success"] = False
            row["reason"] = f"cannot write results: {_one_line(exc)}"
    return row, sol


def _failed_row(name, file, obs, reason, t0) -> dict:
    return {"name": name, "file": file, "elevation_deg": _elevation(obs) if obs else None,
            "success": False, "message": "", "reason": reason,
            "time_s": time.perf_counter() - t0, "chi2_reduced": None, "surface_rms_um": None,
            "ruze_efficiency": None, "zernike": [], "batched": False}


def _one_line(exc) -> str:
    text = str(exc.args[0]) if getattr(exc, "args", None) else str(exc)
    return "; ".join(s.strip() for s in text.splitlines() if s.strip()) or type(exc).__name__


def _names(sources) -> list[str]:
    names, seen = [], {}
    for i, s in enumerate(sources):
        base = Path(s).stem if isinstance(s, (str, os.PathLike)) else f"obs{i:03d}"
        k = seen.get(base, 0)
        seen[base] = k + 1
        names.append(base if k == 0 else f"{base}-{k + 1}")
    return names


@dataclass(frozen=True, eq=False)
class CampaignResult:
    """One row per observation, the solutions, and the campaign's outputs.

    Attributes
    ----------
    rows : list of dict
        ``SUMMARY_FIELDS`` plus ``zernike`` (``[{n, l, value_waves, error_waves}]``).
    solutions : dict
        Name -> :class:`~gradfit.oof.Solution` (None for a failed read or fit; absent
        for observations fitted on Dask workers, whose rows carry the numbers).
    time_s : float
    """

    rows: list
    solutions: dict = field(default_factory=dict, repr=False)
    time_s: float = 0.0

    @property
    def n_failed(self) -> int:
        return sum(not r["success"] for r in self.rows)

    @property
    def success(self) -> bool:
        return self.n_failed == 0

    def to_dict(self) -> dict:
        return {"n_observations": len(self.rows), "n_failed": self.n_failed,
                "time_s": self.time_s, "observations": self.rows}

    def to_csv(self) -> str:
        """The summary as CSV: one row per observation, the coefficients and errors last."""
        labels = sorted({(z["n"], z["l"]) for r in self.rows for z in r["zernike"]},
                        key=lambda nl: (nl[0], nl[1]))
        buf = _io.StringIO()
        w = csv.writer(buf)
        head = list(SUMMARY_FIELDS)
        for n, l in labels:
            head += [f"K({n},{l})_waves", f"K({n},{l})_err_waves"]
        w.writerow(head)
        for r in self.rows:
            zs = {(z["n"], z["l"]): z for z in r["zernike"]}
            line = ["" if r[k] is None else r[k] for k in SUMMARY_FIELDS]
            for nl in labels:
                z = zs.get(nl)
                line += ["", ""] if z is None else [z["value_waves"], z["error_waves"]]
            w.writerow(line)
        return buf.getvalue()

    def __str__(self) -> str:
        lines = [f"{len(self.rows)} observations, {self.n_failed} failed, {self.time_s:.1f} s"]
        for r in self.rows:
            el = "" if r["elevation_deg"] is None else f"el {r['elevation_deg']:5.1f}°"
            if r["success"]:
                lines.append(f"  {r['name']:<24} {el:>9}  ok      surface rms "
                             f"{r['surface_rms_um']:.1f} µm")
            else:
                lines.append(f"  {r['name']:<24} {el:>9}  FAILED  {r['reason']}")
        return "\n".join(lines)

    def write(self, out, figures: bool = True) -> None:
        """``summary.csv``, ``summary.json`` and (with ``figures``) ``campaign.png``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _atomic_text(out / "summary.csv", self.to_csv())
        _atomic_text(out / "summary.json", json.dumps(self.to_dict(), indent=1, default=float)
                     + "\n")
        if figures:
            self.plot(out / "campaign.png")

    def plot(self, path) -> None:
        """Coefficients (n ≥ 2) and surface rms against elevation."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ok = [r for r in self.rows if r["success"] and r["elevation_deg"] is not None]
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        if ok:
            el = np.array([r["elevation_deg"] for r in ok])
            labels = [(z["n"], z["l"]) for z in ok[0]["zernike"] if z["n"] >= 2]
            for nl in labels:
                v = [next(z for z in r["zernike"] if (z["n"], z["l"]) == nl) for r in ok]
                ax[0].errorbar(el, [z["value_waves"] for z in v],
                               [z["error_waves"] for z in v], fmt="o-", ms=3,
                               label=f"K({nl[0]},{nl[1]})")
            ax[1].plot(el, [r["surface_rms_um"] for r in ok], "ko-")
            ax[0].legend(fontsize=6, ncol=3)
        ax[0].set_xlabel("elevation (deg)")
        ax[0].set_ylabel("coefficient (waves)")
        ax[1].set_xlabel("elevation (deg)")
        ax[1].set_ylabel("surface rms (µm)")
        fig.suptitle(f"OOF campaign: {len(ok)} of {len(self.rows)} observations fitted")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def fit_many(
    sources,
    *,
    order: int = 5,
    telescope=None,
    out=None,
    dask=None,
    progress=None,
    overwrite: bool = False,
    batch: bool = True,
    figures: bool = True,
    **fit_kwargs,
) -> CampaignResult:
    """Fit many observations and summarise them.

    Parameters
    ----------
    sources : sequence of path or Observation
        FITS files (read with :func:`gradfit.oof.read`) or observations.
    order, telescope :
        As :func:`gradfit.oof.fit` (the telescope defaults to each file's).
    out : path, optional
        Write each observation's results to ``out/NAME/`` and the campaign's
        ``summary.csv``, ``summary.json`` and ``campaign.png`` to ``out``.
    dask : None, 'local' or str
        None: fit in this process. ``'local'``: a 2-worker ``dask.distributed``
        LocalCluster on this machine. ``'tcp://HOST:PORT'``: an existing scheduler.
        A ``dask.distributed.Client`` may also be passed. Each worker fits whole
        observations; the numbers are the same as in process.
    progress : callable, optional
        Called as ``progress(done, total, row)`` after each observation.
    overwrite : bool
        Replace an earlier result of a different input in ``out/NAME/`` (each is
        written atomically, as by ``gradfit oof fit``; see :mod:`gradfit.oof.output`).
    batch : bool
        In process (``dask=None``): fit the observations that share a dish, sky grid,
        defocus and order as one batch first (:func:`gradfit.oof.batchfit.
        batched_starts`), then each observation's own :func:`gradfit.oof.fit` from its
        batched answer, which converges in a step or two to the same coefficients as a
        fit from scratch. The batch serves fits that free ``amp`` and ``c_dB`` alone
        (maps that carry their noise, or ``free=("amp", "c_dB")``; measured maps free a
        background, gain and pointing per map by default), with none of ``start``,
        ``priors``, ``stepwise``, ``basis``, ``grid``, a likelihood other than Gaussian,
        a method other than 'lm' or a transform other than 'mft'. Any other fit, an
        observation alone in its geometry, and a fit from a batched answer that does
        not describe its data (not converged, or not adequate: such a fit may have
        several minima, and the one found depends on the start) is fitted from
        scratch. The row's ``batched`` says which were.
    figures : bool
        With ``out``: also draw ``campaign.png`` (matplotlib; about half a second).
    **fit_kwargs :
        Passed to :func:`gradfit.oof.fit` (e.g. ``likelihood``, ``free``).

    Returns
    -------
    CampaignResult
    """
    sources = list(sources)
    if not sources:
        raise ValueError("fit_many needs at least one observation")
    names = _names(sources)
    t0 = time.perf_counter()
    rows: list = [None] * len(sources)
    sols: dict = {}
    if dask is None:
        reads = [_read_one(s) for s in sources]
        starts = [None] * len(sources)
        if batch and _batchable(order, fit_kwargs):
            from .batchfit import batched_starts

            try:
                starts = batched_starts(
                    [o for o, _ in reads], order, telescope=telescope,
                    illumination=fit_kwargs.get("illumination", "pedestal"),
                    free=fit_kwargs.get("free"),
                    threads=fit_kwargs.get("threads") or 1)
            except Exception as exc:  # noqa: BLE001 - the batch only gives starts
                import warnings

                warnings.warn(f"fit_many: the batched start failed ({_one_line(exc)}); "
                              "fitting each observation from scratch", RuntimeWarning,
                              stacklevel=2)
        for i, (s, nm) in enumerate(zip(sources, names)):
            rows[i], sols[nm] = _fit_one(s, nm, order, telescope, fit_kwargs, out, overwrite,
                                         read=reads[i], start=starts[i])
            reads[i] = None  # the observation is held by its solution only
            if progress is not None:
                progress(i + 1, len(sources), rows[i])
    else:
        client, own = _dask_client(dask)
        try:
            futs = [client.submit(_fit_row, s, nm, order, telescope, fit_kwargs,
                                  None if out is None else str(out), overwrite, pure=False)
                    for s, nm in zip(sources, names)]
            from dask.distributed import as_completed

            index = {f.key: i for i, f in enumerate(futs)}
            for k, fut in enumerate(as_completed(futs)):
                i = index[fut.key]
                try:
                    rows[i] = fut.result()
                except Exception as exc:  # noqa: BLE001 - a lost worker is one failed row
                    rows[i] = _failed_row(names[i], str(sources[i]), None,
                                          f"dask worker failed: {_one_line(exc)}", t0)
                if progress is not None:
                    progress(k + 1, len(sources), rows[i])
        finally:
            if own:
                cluster = getattr(client, "cluster", None)
                client.close()
                if cluster is not None:
                    cluster.close()
    res = CampaignResult(rows=rows, solutions=sols, time_s=time.perf_counter() - t0)
    if out is not None:
        res.write(out, figures=figures)
    return res


#: oof.fit options the batched start is the same fit for (others: each from scratch)
_BATCH_SAFE = {"illumination", "errors", "error_options", "n_starts", "seed", "threads",
               "max_iter", "start_time_factor", "free", "scan_axis", "progress",
               "max_auto_order"}


def _batchable(order, fit_kwargs) -> bool:
    if not isinstance(order, int) or isinstance(order, bool):
        return False
    kw = dict(fit_kwargs)
    if str(kw.pop("likelihood", "gaussian")).lower() != "gaussian":
        return False
    if kw.pop("method", "lm") != "lm" or kw.pop("transform", "mft") != "mft":
        return False
    if kw.pop("jacobian", "auto") == "autodiff" or kw.pop("basis", "zernike") != "zernike":
        return False
    if kw.pop("device", "cpu") not in ("cpu", None) or kw.pop("grid", None) is not None:
        return False
    kw.pop("dtype", None)
    return set(kw) <= _BATCH_SAFE


def _fit_row(source, name, order, telescope, fit_kwargs, out, overwrite):
    """Dask task: the row only (solutions stay on the worker; their files are written)."""
    import torch

    torch.set_num_threads(1)
    row, _ = _fit_one(source, name, order, telescope, fit_kwargs, out, overwrite)
    return row


def _dask_client(dask):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise ImportError(
            "fitting on Dask needs dask.distributed: pip install 'gradfit[dask]'") from None
    if isinstance(dask, Client):
        return dask, False
    if dask == "local":
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        return Client(cluster), True
    if isinstance(dask, str) and "://" in dask:
        try:
            return Client(dask, timeout="10s"), True
        except OSError as exc:
            raise ValueError(f"dask scheduler {dask}: cannot connect ({exc})") from None
    raise ValueError(f"dask must be None, 'local', 'tcp://HOST:PORT' or a Client, not {dask!r}")


# ------------------------------------------------------------------ gravity model
ELEVATION_MODELS = ("sincos",)


@dataclass(frozen=True, eq=False)
class GravityModel:
    """K_nl(el) = a_nl + b_nl sin(el) + c_nl cos(el), fitted to a whole campaign.

    Attributes
    ----------
    labels : list of (n, l)
        The coefficients modelled (piston excluded).
    a, b, c : numpy.ndarray
        The model coefficients (waves), one per label; ``a_err``, ``b_err``, ``c_err``
        their 1σ errors.
    cov : numpy.ndarray
        ``(3p, 3p)`` covariance of ``[a, b, c]``.
    elevations_deg : numpy.ndarray
        Elevation of each observation fitted.
    result : gradfit.FitResult
        The joint fit (amplitude and taper of every observation included).
    """

    telescope: object
    order: int
    wavelength_m: float
    labels: list
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    a_err: np.ndarray
    b_err: np.ndarray
    c_err: np.ndarray
    cov: np.ndarray
    elevations_deg: np.ndarray
    result: object = field(repr=False)

    @property
    def success(self) -> bool:
        return bool(self.result.success)

    def predict(self, elevation_deg) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients (waves) and their 1σ errors at an elevation."""
        e = math.radians(float(elevation_deg))
        basis = np.array([1.0, math.sin(e), math.cos(e)])
        p = len(self.labels)
        K = self.a + self.b * basis[1] + self.c * basis[2]
        G = np.kron(basis, np.eye(p))  # (p, 3p)
        err = np.sqrt(np.clip(np.einsum("ij,jk,ik->i", G, self.cov, G), 0, None))
        return K, err

    def surface_map(self, elevation_deg, n: int = 128) -> np.ndarray:
        """Predicted surface error (µm) on an ``n x n`` grid over the dish (NaN outside)."""
        from .zernike import zernike_basis

        K, _ = self.predict(elevation_deg)
        pr = self.telescope.primary_radius_m
        ax = np.linspace(-pr, pr, n)
        X, Y = np.meshgrid(ax, ax)
        rho, th = np.hypot(X, Y) / pr, np.arctan2(Y, X)
        U = zernike_basis(self.order, rho.ravel(), th.ravel()).numpy()[1:]
        surf = (K @ U).reshape(n, n) * self.wavelength_m / 2 * 1e6
        surf[rho > 1] = np.nan
        return surf

    def correction_table(self, elevations_deg=(15, 30, 45, 60, 75, 90)) -> list[dict]:
        """The surface a user would correct at each elevation: coefficients and rms."""
        out = []
        for el in elevations_deg:
            K, err = self.predict(el)
            s = self.surface_map(el, 96)
            out.append({"elevation_deg": float(el),
                        "surface_rms_um": float(np.sqrt(np.nanmean(s**2))),
                        "zernike": [{"n": n, "l": l, "value_waves": float(k),
                                     "error_waves": float(e)}
                                    for (n, l), k, e in zip(self.labels, K, err)]})
        return out

    def to_dict(self) -> dict:
        return {
            "elevation_model": "K(el) = a + b sin(el) + c cos(el)",
            "order": self.order,
            "wavelength_m": self.wavelength_m,
            "success": self.success,
            "message": self.result.message,
            "elevations_deg": [float(e) for e in self.elevations_deg],
            "coefficients": [
                {"n": n, "l": l, "a": float(a), "a_err": float(ae), "b": float(b),
                 "b_err": float(be), "c": float(c), "c_err": float(ce)}
                for (n, l), a, ae, b, be, c, ce in zip(self.labels, self.a, self.a_err, self.b,
                                                       self.b_err, self.c, self.c_err)],
            "correction_table": self.correction_table(),
        }

    def plot(self, path, elevations_deg=(20, 45, 70, 90)) -> None:
        """Predicted surface maps at the chosen elevations."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        maps = [self.surface_map(el) for el in elevations_deg]
        lim = max(float(np.nanmax(np.abs(m))) for m in maps)
        fig, ax = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.2))
        ax = np.atleast_1d(ax)
        for a, el, m in zip(ax, elevations_deg, maps):
            im = a.imshow(m, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
            a.set_title(f"el {el}°, rms {np.sqrt(np.nanmean(m**2)):.0f} µm")
            a.set_xticks([])
            a.set_yticks([])
        fig.colorbar(im, ax=list(ax), label="surface (µm)", shrink=0.8)
        fig.savefig(path, dpi=100)
        plt.close(fig)


def fit_campaign(
    observations,
    *,
    order: int = 5,
    telescope=None,
    elevation_model: str = "sincos",
    grid: int = 64,
    start: CampaignResult | None = None,
    max_iter: int | None = None,
) -> GravityModel:
    """Fit all observations jointly with the coefficients a function of elevation.

    Parameters
    ----------
    observations : sequence of Observation
        Each with its mean elevation in ``meta['MEANEL']`` (degrees) and its noise σ
        (per-point, or estimated from the map edges).
    order : int
        Zernike order.
    telescope : str or Telescope, optional
        Defaults to the observations' own.
    elevation_model : {'sincos'}
    grid : int
        Aperture cells across the dish.
    start : CampaignResult, optional
        Individual fits to start from (made with :func:`fit_many` when not given).
    max_iter : int, optional

    Returns
    -------
    GravityModel
    """
    import torch

    from ..fitting import fit as core_fit
    from ..likelihoods import Gaussian
    from .model import BeamModel
    from .solve import estimate_noise
    from .telescope import get_telescope
    from .zernike import zernike_labels

    if elevation_model not in ELEVATION_MODELS:
        raise ValueError(f"unknown elevation_model {elevation_model!r}; choose one of: "
                         f"{', '.join(ELEVATION_MODELS)}")
    obs_list = list(observations)
    if len(obs_list) < 3:
        raise ValueError(f"a sin/cos elevation model has 3 terms per coefficient and needs "
                         f"at least 3 observations, got {len(obs_list)}")
    els = []
    for i, o in enumerate(obs_list):
        el = _elevation(o)
        if el is None or not -5 <= el <= 95:
            raise ValueError(f"observation {i}: no usable elevation (meta['MEANEL'] = "
                             f"{o.meta.get('MEANEL') if o.meta else None!r}, degrees)")
        els.append(el)
    els = np.array(els)
    if np.ptp(els) < 10:
        raise ValueError(f"the elevations span only {np.ptp(els):.1f}°; a sin/cos model needs "
                         "observations spread over elevation (≥ 10°)")
    lams = {round(o.wavelength_m, 12) for o in obs_list}
    if len(lams) != 1:
        raise ValueError("the observations are at different wavelengths; fit them apart")
    tel = get_telescope(telescope if telescope is not None else obs_list[0].telescope)
    labels = zernike_labels(order)[1:]
    p = len(labels)

    if start is None:
        start = fit_many(obs_list, order=order, telescope=tel, grid=grid, n_starts=1)
    good = [i for i, r in enumerate(start.rows) if r["success"]]
    if len(good) >= 3:
        Ks = np.array([[z["value_waves"] for z in start.rows[i]["zernike"]][1:] for i in good])
        e = np.radians(els[good])
        A = np.column_stack([np.ones_like(e), np.sin(e), np.cos(e)])
        abc0 = np.linalg.lstsq(A, Ks, rcond=None)[0]  # (3, p)
    else:
        abc0 = np.zeros((3, p))

    models, ys, sig, scales, keeps = [], [], [], [], []
    for o in obs_list:
        m = BeamModel(o, tel, order, grid)
        ref = o.maps[int(np.argmin([abs(mp.dz) for mp in o.maps]))]
        scale = float(np.max(ref.power[ref.valid]))
        # flagged samples (BeamMap.mask) stay on the model's grid, out of the fit
        keep = np.concatenate([mp.valid for mp in o.maps])
        models.append(m)
        scales.append(scale)
        keeps.append(torch.as_tensor(np.flatnonzero(keep)))
        ys.append(np.concatenate([mp.power for mp in o.maps])[keep] / scale)
        sig.append(np.concatenate([
            (mp.sigma if mp.sigma is not None else np.full(mp.n, estimate_noise(mp)))
            for mp in o.maps])[keep] / scale)
    y = np.concatenate(ys)
    sigma = np.concatenate(sig)
    e = torch.as_tensor(np.radians(els))
    sin_e, cos_e = torch.sin(e), torch.cos(e)
    n_obs = len(obs_list)

    def model(prm, x=None):
        K = prm["a"] + sin_e[:, None] * prm["b"] + cos_e[:, None] * prm["c"]  # (n_obs, p)
        out = []
        for i, m in enumerate(models):
            out.append(m({"K": K[i], "amp": prm["amp"][i], "c_dB": prm["c_dB"][i]})[keeps[i]])
        return torch.cat(out)

    amp0 = []
    for i, m in enumerate(models):
        with torch.no_grad():
            K0 = torch.as_tensor(abc0[0] + np.sin(np.radians(els[i])) * abc0[1]
                                 + np.cos(np.radians(els[i])) * abc0[2])
            mu = m({"K": K0, "amp": torch.tensor(1.0),
                    "c_dB": torch.tensor(-14.0)})[keeps[i]].numpy()
        amp0.append(float(mu @ ys[i] / (mu @ mu)))
    params = {"a": abc0[0], "b": abc0[1], "c": abc0[2], "amp": np.array(amp0),
              "c_dB": np.full(n_obs, -14.0)}
    res = core_fit(model, None, y, params=params, likelihood=Gaussian(sigma=sigma),
                   method="lm", max_iter=max_iter)
    idx = [res.names.index(f"{k}[{j}]") for k in ("a", "b", "c") for j in range(p)]
    cov = np.asarray(res.cov)[np.ix_(idx, idx)]
    errs = {k: np.asarray(res.errors[k], float) for k in ("a", "b", "c")}
    return GravityModel(telescope=tel, order=order, wavelength_m=float(obs_list[0].wavelength_m),
                        labels=labels, a=np.asarray(res.params["a"], float),
                        b=np.asarray(res.params["b"], float),
                        c=np.asarray(res.params["c"], float), a_err=errs["a"],
                        b_err=errs["b"], c_err=errs["c"], cov=cov, elevations_deg=els,
                        result=res)


def simulate_campaign(
    elevations_deg,
    a,
    b,
    c,
    *,
    telescope: str = "effelsberg",
    order: int = 5,
    snr: float = 1000.0,
    npix: int = 33,
    seed: int = 0,
    **simulate_kwargs,
) -> list:
    """Observations of a telescope whose coefficients follow ``a + b sin(el) + c cos(el)``.

    ``a``, ``b`` and ``c`` are the coefficients without piston (waves). Each observation
    has ``meta['MEANEL']`` and its truth (``truth['K_waves']``) set.
    """
    from .simulate import simulate

    a, b, c = (np.asarray(v, float).ravel() for v in (a, b, c))
    out = []
    for i, el in enumerate(elevations_deg):
        e = math.radians(float(el))
        K = np.concatenate([[0.0], a + b * math.sin(e) + c * math.cos(e)])
        o = simulate(telescope=telescope, order=order, snr=snr, npix=npix, K_waves=K,
                     seed=seed + i, **simulate_kwargs)
        o.meta["MEANEL"] = float(el)
        out.append(o)
    return out
