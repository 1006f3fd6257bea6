"""Plan an OOF observation by Fisher information, before anything is observed.

For a candidate plan (defocus distances, map size and sampling, signal-to-noise) the
expected covariance of the fitted parameters is the inverse of the Fisher matrix

    F = Jᵀ J / σ²,

with ``J`` the Jacobian of every beam sample with respect to every fitted parameter
(Zernike coefficients and nuisance parameters), evaluated at a nominal aperture, and
``σ`` the noise per sample (the in-focus peak over the SNR, as in
:func:`gradfit.oof.simulate`). The nuisance parameters are marginalised: the
coefficient block of ``F⁻¹`` is used. Plans are compared by a criterion on that block:

``'D'``
    D-optimal: the determinant, reported as the geometric mean of the σ's
    (``det(C_K)^(1/2p)``, waves).
``'A'``
    A-optimal: the trace, reported as the rms σ (``sqrt(tr C_K / p)``, waves).
``'worst'``
    The largest σ of any coefficient (waves).

Parameters that the plan cannot measure (a null or nearly null direction of ``F``,
e.g. the even aberrations from an in-focus map alone) are named in
:attr:`PlanEvaluation.unconstrained` and get an infinite σ, instead of a huge number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .aperture import ApertureGrid, aperture_grid
from .model import BeamModel, torch_threads
from .observation import BeamMap, Observation
from .telescope import Telescope, get_telescope
from .zernike import zernike_count, zernike_labels

__all__ = ["CRITERIA", "PlanEvaluation", "Plan", "evaluate_plan", "plan", "plan_figure",
           "DEFAULT_DZ_M", "NUISANCE_PLAN"]

C_LIGHT = 299_792_458.0
#: the defocus of today's defaults (``gradfit oof simulate --dz``), the reference plan
DEFAULT_DZ_M = 0.022
CRITERIA = ("D", "A", "worst")
#: nuisance parameters a plan can marginalise over
NUISANCE_PLAN = ("amp", "c_dB", "q", "x0", "y0", "pointing", "background", "gain")
#: a coefficient whose expected σ exceeds this (waves) is reported as unconstrained
UNCONSTRAINED_WAVES = 1.0


@dataclass(frozen=True, eq=False)
class PlanEvaluation:
    """The expected errors of one candidate plan.

    Attributes
    ----------
    dz_m : tuple of float
        Defocus of each map (metres; 0 for an in-focus map).
    npix : int
        Samples per map side.
    half_width_beams : float
        Map half width in beam widths of ``1.22 λ/D``.
    snr : float
        In-focus peak over the noise σ per sample.
    labels : list of (n, l)
        The fitted coefficients (all but piston).
    sigma_K_waves : numpy.ndarray
        Expected 1σ error of each coefficient (waves); ``inf`` where unconstrained.
    sigma_surface_um : float
        Expected rms over the aperture of the per-point surface error σ (µm).
    criterion : str
        ``'D'``, ``'A'`` or ``'worst'``.
    criterion_value : float
        The criterion in waves (lower is better; ``inf`` when something is unconstrained).
    unconstrained : list of str
        Names of parameters the plan cannot measure (e.g. ``'K(2,0)'``, ``'c_dB'``).
    n_points : int
        Beam samples in the plan.
    cov_K : numpy.ndarray
        Expected covariance of the coefficients (waves²), marginalised over the nuisance.
    """

    dz_m: tuple
    npix: int
    half_width_beams: float
    snr: float
    labels: list
    sigma_K_waves: np.ndarray
    sigma_surface_um: float
    criterion: str
    criterion_value: float
    unconstrained: list = field(default_factory=list)
    n_points: int = 0
    cov_K: np.ndarray | None = None

    def to_dict(self) -> dict:
        """JSON-ready summary (``inf`` written as ``None``)."""

        def num(v):
            v = float(v)
            return v if math.isfinite(v) else None

        return {
            "dz_m": [float(d) for d in self.dz_m],
            "npix": int(self.npix),
            "half_width_beams": float(self.half_width_beams),
            "snr": float(self.snr),
            "n_points": int(self.n_points),
            "sigma_K_waves": [
                {"n": int(n), "l": int(l), "sigma": num(s)}
                for (n, l), s in zip(self.labels, self.sigma_K_waves)
            ],
            "sigma_surface_um": num(self.sigma_surface_um),
            "criterion": self.criterion,
            "criterion_value": num(self.criterion_value),
            "unconstrained": list(self.unconstrained),
        }


@dataclass(frozen=True, eq=False)
class Plan:
    """The result of :func:`plan`: the candidates evaluated and the recommended one.

    Attributes
    ----------
    recommended : PlanEvaluation
        The candidate with the lowest criterion.
    reference : PlanEvaluation
        Today's default plan (``±DEFAULT_DZ_M`` and the same map), for comparison.
    candidates : list of PlanEvaluation
        Every plan evaluated, in the order evaluated.
    telescope, frequency_hz, order, criterion :
        The settings of the search.
    """

    recommended: PlanEvaluation
    reference: PlanEvaluation
    candidates: list
    telescope: str
    frequency_hz: float
    order: int
    criterion: str

    def gain_text(self) -> str:
        """One line: what the recommended plan buys against the reference plan."""
        r, d = self.recommended, self.reference
        dz_r = ", ".join(f"{x:+.4g}" for x in r.dz_m)
        dz_d = ", ".join(f"{x:+.4g}" for x in d.dz_m)
        return (f"recommended dz = [{dz_r}] m: σ(surface) {_fmt(r.sigma_surface_um)} µm instead "
                f"of {_fmt(d.sigma_surface_um)} µm with the default dz = [{dz_d}] m; "
                f"criterion {self.criterion} {_fmt(r.criterion_value)} instead of "
                f"{_fmt(d.criterion_value)} waves")

    def table(self) -> str:
        """An aligned text table of the candidates (best first)."""
        rows = sorted(self.candidates, key=lambda e: (e.criterion_value, e.sigma_surface_um))
        head = (f"{'dz (m)':<28} {'half width':>10} {'npix':>5} {'criterion':>10} "
                f"{'σ surface µm':>13} {'max σK':>9}  unconstrained")
        lines = [head, "-" * len(head)]
        for e in rows:
            dz = ",".join(f"{x:+.4g}" for x in e.dz_m)
            lines.append(
                f"{dz:<28} {e.half_width_beams:>10.3g} {e.npix:>5d} "
                f"{_fmt(e.criterion_value):>10} {_fmt(e.sigma_surface_um):>13} "
                f"{_fmt(float(np.max(e.sigma_K_waves))):>9}  "
                f"{', '.join(e.unconstrained) if e.unconstrained else '-'}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return (f"OOF plan: {self.telescope}, {self.frequency_hz / 1e9:.4g} GHz, order "
                f"{self.order}, criterion {self.criterion}\n{self.table()}\n{self.gain_text()}")

    def to_dict(self) -> dict:
        return {
            "telescope": self.telescope,
            "frequency_hz": float(self.frequency_hz),
            "order": int(self.order),
            "criterion": self.criterion,
            "recommended": self.recommended.to_dict(),
            "reference": self.reference.to_dict(),
            "summary": self.gain_text(),
            "candidates": [e.to_dict() for e in self.candidates],
        }


def _fmt(v: float) -> str:
    return "inf" if not math.isfinite(v) else f"{v:.4g}"


# ------------------------------------------------------------------ checks
def _check_snr(snr) -> float:
    try:
        s = float(snr)
    except (TypeError, ValueError):
        raise ValueError(f"snr must be a number > 0, got {snr!r}") from None
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"snr must be a finite number > 0, got {snr!r}")
    return s


def _check_dz(dz) -> tuple:
    vals = [float(d) for d in np.atleast_1d(np.asarray(dz, dtype=float))]
    if not vals:
        raise ValueError("dz must list at least one defocus distance (metres)")
    if not all(math.isfinite(d) for d in vals):
        raise ValueError(f"dz values must be finite, got {vals}")
    rounded = [round(d, 12) for d in vals]
    dup = sorted({d for d in rounded if rounded.count(d) > 1})
    if dup:
        raise ValueError(f"dz lists the same defocus more than once: {dup} (metres); "
                         "each map of a plan needs its own defocus")
    return tuple(vals)


def _check_criterion(criterion) -> str:
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of: {', '.join(CRITERIA)}")
    return criterion


def _check_nuisance(nuisance) -> tuple:
    nuisance = tuple(nuisance)
    bad = [n for n in nuisance if n not in NUISANCE_PLAN]
    if bad:
        raise ValueError(f"unknown nuisance parameter(s) {', '.join(map(repr, bad))}; choose "
                         f"from: {', '.join(NUISANCE_PLAN)}")
    return nuisance


def _check_order(order, npix, n_maps, n_nuisance) -> int:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
        raise ValueError(f"order must be an integer >= 1, got {order!r}")
    n_par = zernike_count(int(order)) - 1 + n_nuisance
    # The beam of an order-n aperture phase has structure down to ~1/(n+1) of a beam:
    # resolving it needs at least about 2(n+1) samples across the map (and enough
    # samples overall for the parameters).
    need = 2 * (int(order) + 1) + 1
    if npix < need or npix * npix * n_maps < 3 * n_par:
        raise ValueError(
            f"order {order} needs at least {need} samples per map side and "
            f"{3 * n_par} samples in all ({n_par} parameters); a plan with npix={npix} "
            f"and {n_maps} map(s) has {npix} and {npix * npix * n_maps}: lower the order or "
            f"raise npix")
    return int(order)


# --------------------------------------------------------------- evaluation
class _Designer:
    """Caches what every candidate of one search shares (telescope, aperture grid, K)."""

    def __init__(self, telescope, frequency_hz, order, snr, nuisance, nominal_K, grid,
                 illumination, c_dB, criterion):
        self.tel = get_telescope(telescope)
        f = float(frequency_hz)
        if not (math.isfinite(f) and f > 0):
            raise ValueError(f"frequency must be a finite number > 0 (Hz), got {frequency_hz!r}")
        self.freq = f
        self.lam = C_LIGHT / f
        self.order = int(order)
        self.snr = _check_snr(snr)
        self.nuisance = _check_nuisance(nuisance)
        self.criterion = _check_criterion(criterion)
        self.grid = grid if isinstance(grid, ApertureGrid) else aperture_grid(self.tel, int(grid))
        nk = zernike_count(self.order)
        if nominal_K is None:
            K = np.zeros(nk)
        else:
            K = np.asarray(nominal_K, dtype=float).ravel()
            if K.size == nk - 1:
                K = np.concatenate([[0.0], K])
            if K.size != nk:
                raise ValueError(f"nominal_K has {K.size} values; order {order} needs {nk} "
                                 f"(or {nk - 1} without piston)")
        self.K = K
        self.labels = zernike_labels(self.order)[1:]
        self.illumination = illumination
        self.c_dB = float(c_dB)
        U = self.grid.zernike(self.order)[1:]  # (p, J) on the illuminated cells
        self.U = U
        self.cell_w = self.grid.weight

    def observation(self, dz, npix, half_width_beams) -> Observation:
        beam = 1.22 * self.lam / (2 * self.tel.primary_radius_m)
        axis = np.linspace(-half_width_beams * beam, half_width_beams * beam, int(npix))
        Uu, Vv = np.meshgrid(axis, axis)
        maps = [BeamMap(Uu.ravel(), Vv.ravel(), np.zeros(Uu.size), d, name=f"DZ {d:+g}",
                        shape=(int(npix), int(npix))) for d in dz]
        return Observation(maps, self.lam, self.freq, telescope=self.tel.name)

    def evaluate(self, dz, npix, half_width_beams) -> PlanEvaluation:
        dz = _check_dz(dz)
        npix = int(npix)
        hw = float(half_width_beams)
        if not (math.isfinite(hw) and hw > 0):
            raise ValueError(f"half_width_beams must be > 0, got {half_width_beams!r}")
        n_maps = len(dz)
        ref = int(np.argmin(np.abs(dz)))
        n_nuis = sum(_nuisance_size(n, n_maps) for n in self.nuisance)
        _check_order(self.order, npix, n_maps, n_nuis)
        obs = self.observation(dz, npix, hw)
        with torch_threads(1):
            model = BeamModel(obs, self.tel, self.order, self.grid,
                              illumination=self.illumination)
            names = ["K"] + [n for n in ("amp", "c_dB", "q", "x0", "y0", "pointing")
                             if n in self.nuisance]
            p = {"K": torch.as_tensor(self.K[1:]), "c_dB": torch.tensor(self.c_dB),
                 "amp": torch.tensor(1.0)}
            if "q" in self.nuisance:
                p["q"] = torch.tensor(2.0)
            for n in ("x0", "y0"):
                if n in self.nuisance:
                    p[n] = torch.tensor(0.0)
            if "pointing" in self.nuisance:
                p["pointing"] = torch.zeros(n_maps, 2, dtype=torch.float64)
            with torch.no_grad():
                mu, J = model.value_and_jacobian(p, names)
        mu = mu.numpy().reshape(n_maps, -1)
        J = J.numpy()
        peak = float(mu[ref].max())
        # normalise so the nominal in-focus peak is 1 (amp = 1/peak), as simulate() does
        J = J / peak
        mu = mu / peak
        # the amplitude column was d mu / d amp at amp = 1; at amp = 1/peak it is mu_raw
        cols, names_out = _columns(J, names, self.order, n_maps, ref, mu)
        for extra in ("background", "gain"):
            if extra in self.nuisance:
                c, nm = _extra_columns(extra, mu, ref)
                cols.append(c)
                names_out += nm
        Jall = np.concatenate(cols, axis=1)
        sigma = 1.0 / self.snr
        F = (Jall.T @ Jall) / sigma**2
        cov, bad = _safe_inverse(F)
        p_K = len(self.labels)
        cov_K = cov[:p_K, :p_K]
        sig = np.sqrt(np.clip(np.diag(cov_K), 0, None))
        sig[bad[:p_K]] = np.inf
        unconstrained = [nm for nm, b in zip(names_out, bad) if b]
        loose = [i for i in range(p_K) if not bad[i] and sig[i] > UNCONSTRAINED_WAVES]
        for i in loose:
            sig[i] = np.inf
            unconstrained.append(names_out[i])
        # surface: s(x) = (λ/2) Σ K_j U_j(x)  (phase 2π K·U, surface = phase λ/4π)
        ok = np.isfinite(sig)
        if ok.all():
            var_pix = np.einsum("jx,jk,kx->x", self.U, cov_K, self.U)
            s_um = float(np.sqrt(np.sum(self.cell_w * var_pix) / np.sum(self.cell_w))
                         * self.lam / 2 * 1e6)
        else:
            s_um = math.inf
        crit = _criterion(self.criterion, cov_K, sig)
        return PlanEvaluation(dz_m=dz, npix=npix, half_width_beams=hw, snr=self.snr,
                              labels=list(self.labels), sigma_K_waves=sig,
                              sigma_surface_um=s_um, criterion=self.criterion,
                              criterion_value=crit, unconstrained=unconstrained,
                              n_points=int(mu.size), cov_K=cov_K)


def _nuisance_size(name: str, n_maps: int) -> int:
    if name == "pointing" or name == "gain":
        return 2 * (n_maps - 1) if name == "pointing" else n_maps - 1
    if name == "background":
        return n_maps
    return 1


def _columns(J, names, order, n_maps, ref, mu):
    """Split the model Jacobian into the fitted columns, with their names."""
    cols, out = [], []
    i = 0
    for name in names:
        if name == "K":
            nk = zernike_count(order) - 1
            cols.append(J[:, i:i + nk])
            out += [f"K({n},{l})" for n, l in zernike_labels(order)[1:]]
            i += nk
        elif name == "amp":
            cols.append(mu.reshape(-1, 1))  # d(amp P)/d ln(amp): scale-free amplitude
            out.append("amp")
            i += 1
        elif name == "pointing":
            keep = [c for c in range(2 * n_maps) if c // 2 != ref]  # in-focus map fixed
            cols.append(J[:, i:i + 2 * n_maps][:, keep])
            out += [f"pointing[{c // 2}].{'xy'[c % 2]}" for c in keep]
            i += 2 * n_maps
        else:
            cols.append(J[:, i:i + 1])
            out.append(name)
            i += 1
    return cols, out


def _extra_columns(name, mu, ref):
    """Background per map (∂P/∂b = 1 on its map) and gain per map but the in-focus one."""
    n_maps, n = mu.shape
    cols, names = [], []
    for b in range(n_maps):
        if name == "gain" and b == ref:
            continue
        c = np.zeros((n_maps, n))
        c[b] = 1.0 if name == "background" else mu[b]
        cols.append(c.reshape(-1))
        names.append(f"{name}[{b}]")
    return np.stack(cols, axis=1), names


def _safe_inverse(F):
    """Inverse of a Fisher matrix, with the parameters of null directions flagged.

    The matrix is scaled to unit diagonal first (so parameters in different units
    compare); a direction whose eigenvalue is below 1e-10 of the largest is null, and
    every parameter with a weight above 1e-3 in such a direction is unconstrained.
    """
    d = np.sqrt(np.clip(np.diag(F), 1e-300, None))
    Fs = F / np.outer(d, d)
    w, V = np.linalg.eigh(Fs)
    null = w < 1e-10 * w.max()
    bad = np.zeros(F.shape[0], bool)
    if null.any():
        bad = np.any(np.abs(V[:, null]) > 1e-3 ** 0.5, axis=1)
    bad |= np.diag(F) <= 0
    inv = (V[:, ~null] / w[~null]) @ V[:, ~null].T
    cov = inv / np.outer(d, d)
    return cov, bad


def _criterion(criterion, cov_K, sig) -> float:
    if not np.all(np.isfinite(sig)):
        return math.inf
    p = cov_K.shape[0]
    if criterion == "D":
        sign, logdet = np.linalg.slogdet(cov_K)
        return float(math.exp(logdet / (2 * p))) if sign > 0 else math.inf
    if criterion == "A":
        return float(math.sqrt(np.trace(cov_K) / p))
    return float(np.max(sig))


def evaluate_plan(
    telescope: str | Telescope = "effelsberg",
    frequency: float = 32e9,
    dz=(-DEFAULT_DZ_M, 0.0, DEFAULT_DZ_M),
    *,
    order: int = 5,
    snr: float = 1000.0,
    npix: int = 33,
    half_width_beams: float = 8.0,
    nuisance=("amp", "c_dB"),
    criterion: str = "D",
    nominal_K=None,
    grid: int | ApertureGrid = 64,
    illumination: str = "pedestal",
    c_dB: float = -14.0,
) -> PlanEvaluation:
    """Expected errors of one plan (see the module docstring).

    Parameters
    ----------
    telescope : str or Telescope
    frequency : float
        Observing frequency (Hz).
    dz : sequence of float
        Defocus of each map (metres; 0 for the in-focus map), no duplicates.
    order : int
        Highest Zernike order fitted.
    snr : float
        In-focus peak over the noise σ per sample.
    npix, half_width_beams :
        Samples per map side, and the map half width in beams of ``1.22 λ/D``.
    nuisance : iterable of str
        Nuisance parameters fitted beside the coefficients (marginalised): any of
        ``NUISANCE_PLAN``; the default is what :func:`gradfit.oof.fit` fits by default.
    criterion : {'D', 'A', 'worst'}
    nominal_K : array_like, optional
        The nominal aperture phase (waves, with or without piston); default flat.
    grid : int or ApertureGrid
        Aperture cells across the dish for the Jacobian.
    illumination, c_dB :
        Nominal illumination.

    Returns
    -------
    PlanEvaluation
    """
    dz = _check_dz(dz)
    d = _Designer(telescope, frequency, order, snr, nuisance, nominal_K, grid, illumination,
                  c_dB, criterion)
    return d.evaluate(dz, npix, half_width_beams)


def plan(
    telescope: str | Telescope = "effelsberg",
    frequency: float = 32e9,
    *,
    order: int = 5,
    snr: float = 1000.0,
    dz=None,
    npix: int = 33,
    half_width_beams=(8.0,),
    nuisance=("amp", "c_dB"),
    criterion: str = "D",
    nominal_K=None,
    grid: int | ApertureGrid = 64,
    illumination: str = "pedestal",
    c_dB: float = -14.0,
    reference_dz=(-DEFAULT_DZ_M, 0.0, DEFAULT_DZ_M),
    refine: bool = True,
) -> Plan:
    """Choose the defocus (and map half width) that minimise the expected errors.

    Without ``dz``, the search covers symmetric plans ``(-d, 0, +d)`` with ``d`` on a
    logarithmic ladder of defocus strengths (peak-to-valley defocus path of 0.25 to 16
    wavelengths), refined by a golden-section search in ``log d`` around the best rung.
    With ``dz``, a list of candidate plans (each a sequence of defocus distances) is
    evaluated as given. Every candidate is evaluated for every half width.

    Parameters
    ----------
    dz : sequence of sequences of float, optional
        Candidate plans to compare (metres).
    half_width_beams : float or sequence of float
        Map half widths to try (beams of ``1.22 λ/D``), the samples per side fixed.
    reference_dz : sequence of float
        Today's default plan, reported beside the recommendation.
    refine : bool
        Refine the best defocus by golden-section search (the ladder alone otherwise).
    Other parameters as :func:`evaluate_plan`.

    Returns
    -------
    Plan
    """
    hws = [float(h) for h in np.atleast_1d(half_width_beams)]
    if not hws:
        raise ValueError("half_width_beams must list at least one half width")
    if dz is not None:
        plans = [_check_dz(p) for p in dz]
        if not plans:
            raise ValueError("dz must list at least one candidate plan")
    d = _Designer(telescope, frequency, order, snr, nuisance, nominal_K, grid, illumination,
                  c_dB, criterion)
    candidates: list[PlanEvaluation] = []

    def run(p, hw):
        e = d.evaluate(p, npix, hw)
        candidates.append(e)
        return e

    if dz is None:
        strength = _defocus_strength(d)  # waves of peak-to-valley path per metre of dz
        ladder = np.geomspace(0.25, 16.0, 13) / strength
        for hw in hws:
            evals = [run((-x, 0.0, x), hw) for x in ladder]
            if refine:
                scores = [e.criterion_value for e in evals]
                k = int(np.argmin(scores))
                if math.isfinite(scores[k]):
                    lo = math.log(ladder[max(k - 1, 0)])
                    hi = math.log(ladder[min(k + 1, len(ladder) - 1)])
                    _golden(lambda t, hw=hw: run((-math.exp(t), 0.0, math.exp(t)), hw)
                            .criterion_value, lo, hi, n=8)
    else:
        for p in plans:
            for hw in hws:
                run(p, hw)
    reference = d.evaluate(_check_dz(reference_dz), npix, hws[0])
    best = min(candidates, key=lambda e: (e.criterion_value, e.sigma_surface_um))
    return Plan(recommended=best, reference=reference, candidates=candidates,
                telescope=d.tel.name, frequency_hz=d.freq, order=d.order, criterion=criterion)


def _defocus_strength(d: _Designer) -> float:
    """Peak-to-valley defocus path over the aperture per metre of dz, in wavelengths."""
    ph = d.grid.defocus_phase(1.0, d.lam) / (2 * np.pi)
    return float(np.ptp(ph))


def _golden(f, lo, hi, n=8):
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, e = b - g * (b - a), a + g * (b - a)
    fc, fe = f(c), f(e)
    for _ in range(n):
        if fc < fe:
            b, e, fe = e, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, e, fe
            e = a + g * (b - a)
            fe = f(e)
    return (a + b) / 2


def plan_figure(result: Plan, path) -> None:
    """Expected σ(surface) and the criterion against the defocus of symmetric candidates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sym = [e for e in result.candidates if len(e.dz_m) == 3 and e.dz_m[1] == 0.0
           and math.isclose(-e.dz_m[0], e.dz_m[2])]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for hw in sorted({e.half_width_beams for e in sym}):
        es = sorted((e for e in sym if e.half_width_beams == hw), key=lambda e: e.dz_m[2])
        x = [e.dz_m[2] * 1e3 for e in es]
        ax[0].plot(x, [e.sigma_surface_um for e in es], "o-", label=f"half width {hw:g} beams")
        ax[1].plot(x, [e.criterion_value for e in es], "o-", label=f"half width {hw:g} beams")
    r = result.recommended
    for a in ax:
        if len(r.dz_m) == 3:
            a.axvline(abs(r.dz_m[2]) * 1e3, color="k", ls=":", label="recommended")
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("defocus d (mm), maps at -d, 0, +d")
        a.legend(fontsize=8)
    ax[0].set_ylabel("expected σ of the surface map, rms (µm)")
    ax[1].set_ylabel(f"criterion {result.criterion} (waves)")
    fig.suptitle(f"OOF plan: {result.telescope}, {result.frequency_hz / 1e9:.4g} GHz, "
                 f"order {result.order}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def simulate_refits(
    evaluation: PlanEvaluation,
    telescope: str | Telescope = "effelsberg",
    frequency: float = 32e9,
    *,
    order: int = 5,
    n: int = 50,
    nominal_K=None,
    seed: int = 0,
    c_dB: float = -14.0,
    grid: int = 64,
    progress=None,
) -> np.ndarray:
    """Check a plan's prediction: simulate and refit ``n`` observations made as planned.

    Each realisation is the plan's maps (defocus, size, sampling) of the nominal
    aperture with fresh Gaussian noise of σ = 1/SNR (the noiseless in-focus peak is 1),
    fitted by :func:`gradfit.oof.fit` with the noise σ known, amplitude and taper free.

    Returns
    -------
    numpy.ndarray
        ``(n, p)`` fitted coefficients (waves, piston excluded), in the order of
        ``evaluation.labels``; their scatter is what ``evaluation.sigma_K_waves`` predicts.
    """
    from .simulate import simulate
    from .solve import fit

    nk = zernike_count(int(order))
    K = np.zeros(nk) if nominal_K is None else np.asarray(nominal_K, float).ravel()
    if K.size == nk - 1:
        K = np.concatenate([[0.0], K])
    hw = evaluation.half_width_beams
    obs = simulate(telescope=telescope, order=order, snr=evaluation.snr, npix=evaluation.npix,
                   freq_hz=frequency, dz=list(evaluation.dz_m), K_waves=K, seed=seed,
                   c_dB=c_dB, half_width_beams=hw)
    clean = np.asarray(obs.truth["power_noiseless"])
    sigma = 1.0 / evaluation.snr
    rng = np.random.default_rng(seed + 1)
    out = np.empty((int(n), nk - 1))
    for i in range(int(n)):
        for m, row in zip(obs.maps, clean):
            m.power = row + rng.normal(0.0, sigma, row.shape)
        sol = fit(obs, order=order, telescope=telescope, grid=grid, n_starts=1)
        out[i] = [z["value_waves"] for z in sol.zernike if (z["n"], z["l"]) != (0, 0)]
        if progress is not None:
            progress(i + 1, int(n))
    return out
