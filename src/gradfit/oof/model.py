"""The OOF forward model: aperture field -> beam power at the observed sky offsets.

For map ``b`` with defocus ``dz_b`` the aperture field on the illuminated cells is

    E_b = w * A * exp(i (phi + phi_dz,b + phi_point,b)),   phi = 2 pi sum_k K_k U_k

(``w`` the anti-aliased open fraction, ``A`` the illumination, ``K`` in waves as in
pyoof), and the beam is ``P_b(u, v) = amp * |F_b(u, v)|^2 / F0^2`` with

    F_b(u, v) = sum_cells E_b(x, y) exp(-2 pi i (x u + y v) / lambda) dA

(numpy's forward-FFT sign) and ``F0 = sum w dA``, the peak of a uniformly lit,
unaberrated aperture. The sum is the midpoint rule over the cells. It is more
accurate here than integrating the Fourier kernel exactly over each cell (a
``sinc(u dx / lambda)`` factor, measured 4x worse): the power at ``(u, v)`` comes
from cells whose phase gradient matches the kernel's, where the integrand's phase
is flat across a cell and the midpoint value is nearly exact.

The sum is evaluated by one of the transforms of :mod:`gradfit.oof.transforms`
('mft' by default, 'dft' for scattered samples, 'fft' as pyoof does).

The full model of map ``b`` adds the nuisance parameters of
:mod:`gradfit.oof.nuisance`: ``amp * gain_b * P_b + background_b``.

Jacobian
--------
:meth:`BeamModel.jacobian` gives the exact derivatives of the model with respect to
every parameter in a few batched transforms (for 'mft'). Since ``phi`` is linear in
``K``, ``dP/dK_k = 2 Re(conj(F) MFT(2 pi i U_k E))``. Each ``U_k`` is a polynomial in
``(x, y)`` (:func:`~gradfit.oof.zernike.zernike_monomials`), so all columns follow from
the transforms of ``x^a y^b E`` (:meth:`~gradfit.oof.transforms.MFT.monomials`);
pointing ramps are the monomials ``x`` and ``y``, and the illumination parameters
add one transform each.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .aperture import ApertureGrid, aperture_grid
from .nuisance import DEFAULTS, ILLUMINATIONS, NUISANCE, illumination
from .telescope import Telescope, get_telescope
from .transforms import MFT, TRANSFORMS, make_transform
from .zernike import zernike_count, zernike_monomials

__all__ = ["BeamModel", "flat_maps", "map_axes", "torch_threads", "ILLUMINATIONS", "TRANSFORMS"]


class torch_threads:
    """Context manager: run torch on ``n`` CPU threads, restoring the old count afterwards.

    The OOF tensors are small (a few 10^4 aperture cells, a few 10^3 sky points): on a
    2-core machine one thread was measured to be 1.5-40x faster than two, whose
    hand-offs showed erratic stalls (see ``benchmarks/oof_vs_pyoof.py``).
    """

    def __init__(self, n: int | None = 1):
        self.n = n

    def __enter__(self):
        self.old = torch.get_num_threads()
        if self.n is not None:
            torch.set_num_threads(max(1, int(self.n)))
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)
        return False


def map_axes(m) -> tuple[np.ndarray, np.ndarray] | None:
    """``(u_axis, v_axis)`` if map ``m`` is a regular grid, else None (see BeamMap.grid_axes)."""
    return m.grid_axes()


def flat_maps(X: torch.Tensor, sizes) -> torch.Tensor:
    """Per-map rows ``(B, Nb, ...)``, padded to the longest map, -> ``(N, ...)``: each map's
    ``sizes[b]`` samples, map after map, as the models return their values."""
    Nb = X.shape[1]
    if all(s == Nb for s in sizes):
        return X.reshape((-1,) + X.shape[2:])
    return torch.cat([X[b, :s] for b, s in enumerate(sizes)])


class BeamModel:
    """Batched beams of one observation for a telescope, order and aperture grid.

    Parameters
    ----------
    obs : Observation
        Gives the sample points, the defocus of each map and the wavelength.
    telescope : Telescope or str
    order : int
        Highest Zernike radial order.
    grid : int or ApertureGrid
        Cells across the dish (see :func:`gradfit.oof.grid.choose_grid_size`).
    transform : {'mft', 'dft', 'fft'}
        How F is evaluated at the sample points (see :mod:`gradfit.oof.transforms`).
        'mft' falls back to 'dft' when a map is not a regular grid.
    illumination : {'pedestal', 'gaussian'}
        See :func:`gradfit.oof.nuisance.illumination`; ``r'`` is measured from ``(x0, y0)``.
    analytic_jacobian : bool
        With 'mft' and autograd on, evaluate through :class:`_BeamFunction`, whose
        backward pass uses the exact Jacobian of :meth:`jacobian` (first derivatives
        exact; second derivatives Gauss-Newton). False: plain autograd through every
        operation (exact Hessians, vmap and forward mode).
    fft_pad : int
        For 'fft': FFT size as a multiple of the grid (sampling step of the beam =
        ``lambda / (fft_pad * D)``).
    device, dtype :
        Where every tensor lives (default CPU, float64).
    """

    def __init__(
        self,
        obs,
        telescope: Telescope | str,
        order: int,
        grid: int | ApertureGrid = 128,
        *,
        transform: str = "mft",
        illumination: str = "pedestal",
        fft_pad: int = 8,
        analytic_jacobian: bool = False,
        device="cpu",
        dtype=torch.float64,
    ):
        if transform not in TRANSFORMS:
            raise ValueError(
                f"unknown transform {transform!r}; choose one of: {', '.join(TRANSFORMS)}"
            )
        if illumination not in ILLUMINATIONS:
            raise ValueError(
                f"unknown illumination {illumination!r}; choose one of: "
                f"{', '.join(ILLUMINATIONS)}"
            )
        if not obs.maps:
            raise ValueError("observation has no beam maps")
        self.telescope = tel = get_telescope(telescope)
        self.grid = grid if isinstance(grid, ApertureGrid) else aperture_grid(tel, int(grid))
        self.order = int(order)
        self.n_coeff = zernike_count(self.order)
        self.illumination = illumination
        self.analytic_jacobian = bool(analytic_jacobian)
        self.device = torch.device(device)
        self.dtype = dtype
        self.wavelength_m = lam = float(obs.wavelength_m)
        self.dz = np.array([m.dz for m in obs.maps])
        self.sizes = [m.n for m in obs.maps]
        self.n_maps = len(obs.maps)
        self.infocus_index = obs.infocus_index
        g = self.grid
        self.pr = pr = tel.primary_radius_m
        t = self._t

        self.U = t(g.zernike(self.order)[1:])  # piston is not measurable
        self.U2pi = 2 * np.pi * self.U
        self.defocus = t(np.stack([g.defocus_phase(dz, lam) for dz in self.dz]))  # (B, J)
        self.px, self.py, self.w = t(g.x), t(g.y), t(g.weight)
        self.r2 = t((g.x**2 + g.y**2) / pr**2)
        self.norm = 1.0 / float(np.sum(g.weight) * g.step_m**2) ** 2
        self.tf = make_transform(transform, g, obs.maps, lam, fft_pad=fft_pad,
                                 device=self.device, dtype=dtype)
        # sample offsets over each map's half-width, (B, n_max, 2) zero-padded: the
        # coordinates of the background plane
        n_max = max(self.sizes)
        uvn = np.zeros((self.n_maps, n_max, 2))
        for b, m in enumerate(obs.maps):
            h = max(float(np.max(np.abs(m.u))), float(np.max(np.abs(m.v))), 1e-300)
            uvn[b, :m.n, 0], uvn[b, :m.n, 1] = m.u / h, m.v / h
        self.uv_norm = t(uvn)
        self.transform = self.tf.name
        self._mono: dict = {}

    # ----------------------------------------------------------------- helpers
    def _t(self, a) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=self.dtype, device=self.device)

    @property
    def n_points(self) -> int:
        return int(sum(self.sizes))

    def _get(self, p: dict, name: str) -> torch.Tensor:
        v = p.get(name)
        if v is None:
            v = DEFAULTS[name]
        return torch.as_tensor(v, dtype=self.dtype, device=self.device)

    def _opt(self, p: dict, name: str):
        """``p[name]`` as a tensor, or None when not given (its default then applies)."""
        v = p.get(name)
        return None if v is None else torch.as_tensor(v, dtype=self.dtype, device=self.device)

    # ------------------------------------------------------------------ physics
    def _r2(self, x0=None, y0=None) -> torch.Tensor:
        """``(r'/pr)^2`` on the cells, ``r'`` from the illumination centre ``(x0, y0)``."""
        if x0 is None and y0 is None:
            return self.r2
        x0 = 0.0 if x0 is None else x0
        y0 = 0.0 if y0 is None else y0
        return ((self.px - x0) ** 2 + (self.py - y0) ** 2) / self.pr**2

    def illumination_amplitude(self, c_dB, q=None, x0=None, y0=None) -> torch.Tensor:
        """Illumination A on the illuminated cells (1 at the centre for the pedestal).

        ``q``, ``x0``, ``y0`` left as None take their defaults (2, 0, 0) through
        precomputed tensors, which is cheaper than passing the values.
        """
        return illumination(self.illumination, c_dB, self._r2(x0, y0), q)

    def phase(self, p: dict) -> torch.Tensor:
        """Aperture phase of every map on the illuminated cells, ``(B, J)`` (radians)."""
        K = torch.as_tensor(p["K"], dtype=self.dtype, device=self.device)
        if K.shape[-1] != self.n_coeff - 1:
            raise ValueError(
                f"K must hold the {self.n_coeff - 1} coefficients of order {self.order} "
                f"without piston, got shape {tuple(K.shape)}"
            )
        phase = (K @ self.U2pi).unsqueeze(-2) + self.defocus  # (B, J)
        pt = p.get("pointing")
        if pt is not None:
            # per-map offsets in units of lambda/D: the phase ramp 2 pi (u0 x + v0 y)/lambda
            pt = torch.as_tensor(pt, dtype=self.dtype, device=self.device).reshape(-1, 2)
            scale = 2 * np.pi / (2 * self.pr)
            phase = phase + scale * (pt[:, :1] * self.px + pt[:, 1:] * self.py)
        return phase

    def field(self, p: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Real and imaginary parts of ``E_b`` on the illuminated cells, each ``(B, J)``."""
        phase = self.phase(p)
        amp = self.w * self.illumination_amplitude(
            self._get(p, "c_dB"), p.get("q"), p.get("x0"), p.get("y0")
        )
        return amp * torch.cos(phase), amp * torch.sin(phase)

    def power(self, p: dict) -> torch.Tensor:
        """``|F_b|^2 / F0^2`` at every sample point, ``(B, n_k)`` (padded for 'dft'/'fft')."""
        er, ei = self.field(p)
        return self.tf.power(er, ei) * self.norm

    def _per_map(self, P: torch.Tensor, p: dict) -> torch.Tensor:
        """``gain_b * P_b + background_b + plane_b`` (each only when given)."""
        gain, bg = self._opt(p, "gain"), self._opt(p, "background")
        plane = self._opt(p, "background_plane")
        if gain is not None:
            P = P * gain.unsqueeze(-1)
        if bg is not None:
            P = P + bg.unsqueeze(-1)
        if plane is not None:
            uvn = self.uv_norm[:, :P.shape[-1]]
            P = P + (uvn * plane.reshape(-1, 1, 2)).sum(-1)
        return P

    def __call__(self, p: dict, x=None) -> torch.Tensor:
        """Model beams of all maps, flat (map after map, each in its sample order).

        Parameters
        ----------
        p : dict
            ``'K'`` (waves, without piston) and any nuisance parameter of
            :data:`gradfit.oof.nuisance.NUISANCE` (``'amp'``, ``'c_dB'``, ``'q'``,
            ``'x0'``, ``'y0'`` in metres, ``'pointing'`` ``(B, 2)`` in lambda/D,
            ``'gain'`` and ``'background'`` ``(B,)``, ``'background_plane'`` ``(B, 2)``);
            missing ones take their defaults.
        x : ignored
            The sample points are fixed when the model is built; ``x`` is accepted so
            that the model has the ``model(p, x)`` signature of :func:`gradfit.fit`.
        """
        if self.analytic_jacobian and self.tf.exact_jacobian and torch.is_grad_enabled():
            names = tuple(k for k in NUISANCE_AND_K if isinstance(p.get(k), torch.Tensor)
                          and p[k].requires_grad)
            if names:
                const = {k: v for k, v in p.items() if k not in names}
                return _BeamFunction.apply(self, names, const, *[p[k] for k in names])
        return self._flat(self._per_map(self.power(p) * self._get(p, "amp"), p))

    # ----------------------------------------------------------------- Jacobian
    def _monomial_coeffs(self, pos) -> torch.Tensor:
        """``2 pi C``: the phase of ``K`` on the monomials (piston row dropped), its columns
        in the transform's order ``pos`` (see :meth:`Transform.monomial_blocks`)."""
        key = tuple(int(i) for i in pos)
        if key not in self._mono:
            C = 2 * np.pi * zernike_monomials(self.order)[1:]
            self._mono[key] = self._t(C[:, np.asarray(key, dtype=np.int64)])
        return self._mono[key]

    def _phase_terms(self, Mr, Mi, scale):
        """``scale d P / d c`` of every phase term ``c x^a y^b`` from its transform ``M``:
        ``2 Re(conj(F) i M) = 2 (Fi Mr - Fr Mi)`` times ``scale`` (per map, on the maps'
        axis -2 of the transform's layout), with ``scale`` and the factor 2 (and the
        norm) applied to F first, before the products with every monomial."""
        sF = (2 * self.norm) * scale.reshape(-1, 1)
        return (Mi[0] * sF) * Mr - (Mr[0] * sF) * Mi

    def _zernike_columns(self, H, pos):
        """The K columns from the phase terms ``H`` ``(M, *S)``: ``(n_coeff - 1, B, Nb)``."""
        C = self._monomial_coeffs(pos)
        return self.tf.samples_last((C @ H.reshape(H.shape[0], -1)).reshape((-1,) + H.shape[1:]))

    def jacobian(self, p: dict, names) -> tuple[torch.Tensor, dict]:
        """The model and its exact derivatives with respect to the parameters ``names``.

        Parameters
        ----------
        p : dict
            Parameters as for :meth:`__call__`.
        names : iterable of str
            Any of ``'K'`` and the names of :data:`gradfit.oof.nuisance.NUISANCE`.

        Returns
        -------
        mu : Tensor ``(N,)``
            The model, as :meth:`__call__` returns it.
        d : dict
            Name -> ``d mu / d p[name]``, shape ``(N,) + shape of p[name]`` (``K``:
            ``(N, n_coeff - 1)``, ``pointing``: ``(N, B, 2)``, ``gain``: ``(N, B)``).

        For ``transform='mft'`` and ``'dft'``: all columns come from ``order + 1``
        batched x-transforms and ``(order + 1)(order + 2)/2`` y-transforms of the field,
        each folded onto half the aperture (see
        :meth:`gradfit.oof.transforms.MFT.monomials`), plus one transform per free
        illumination parameter, against one transform per column for autodiff. The
        model's values come from the same transforms: equal to :meth:`__call__`'s to
        rounding (1e-15 relative), not bit for bit.
        """
        if not self.tf.exact_jacobian:
            raise ValueError(f"exact Jacobians need transform='mft' or 'dft', not "
                             f"{self.tf.name!r}")
        names = tuple(names)
        bad = [n for n in names if n not in NUISANCE_AND_K]
        if bad:
            raise ValueError(f"no derivative for parameter(s) {', '.join(map(repr, bad))}; "
                             f"choose from: {', '.join(NUISANCE_AND_K)}")
        if "q" in names and self.illumination != "pedestal":
            raise ValueError("q is a parameter of the pedestal illumination only")
        with torch.no_grad():
            return self._jacobian(p, names)

    def _flat(self, X: torch.Tensor) -> torch.Tensor:
        """Per-map rows ``(B, Nb, ...)`` -> ``(N, ...)`` (see :func:`flat_maps`)."""
        return flat_maps(X, self.sizes)

    def _jacobian(self, p, names):
        B = self.n_maps
        phase = self.phase(p)
        c_dB = self._get(p, "c_dB")
        q, x0, y0 = self._opt(p, "q"), self._opt(p, "x0"), self._opt(p, "y0")
        r2 = self._r2(x0, y0)
        A = illumination(self.illumination, c_dB, r2, q)
        cos, sin = torch.cos(phase), torch.sin(phase)
        er, ei = self.w * A * cos, self.w * A * sin  # (B, J)

        # transforms of x^a y^b E: F itself (a = b = 0) and the phase derivatives
        order = self.order if "K" in names else 1 if "pointing" in names else 0
        # (in the transform's own layout and order: see Transform.monomial_blocks)
        Mr, Mi, pos = self.tf.monomial_blocks(er, ei, order)  # (M, *S)
        Fr, Fi = Mr[0], Mi[0]
        to_maps = self.tf.samples_last  # (..., *S) -> (..., B, Nb)
        P = to_maps((Fr**2 + Fi**2) * self.norm)  # (B, Nb)
        Nb = P.shape[-1]  # samples per map (padded to the longest map for 'dft')
        amp = self._get(p, "amp")
        gain = self._opt(p, "gain")
        mu = self._flat(self._per_map(P * amp, p))  # the model, as __call__ gives it
        # d mu_b / d P_b
        s = amp if gain is None else amp * gain.unsqueeze(-1)
        ar = torch.arange(B, device=self.device)
        out = {}
        if order:
            H = self._phase_terms(Mr, Mi, s)  # d mu / d c of each phase term, (M, *S)
        if "K" in names:
            out["K"] = self._flat(self._zernike_columns(H, pos).permute(1, 2, 0))
        if "pointing" in names:
            # phase ramp (pi / pr)(u0 x + v0 y): the monomials x/R and y/R times pi
            row = {int(lab): i for i, lab in enumerate(pos)}
            # (1, 0) and (0, 1), at order + 1 and 1 in monomial_labels order (H holds s)
            Hx, Hy = to_maps(H[[row[order + 1], row[1]]])
            D = P.new_zeros(B, Nb, B, 2)
            D[ar, :, ar, 0] = np.pi * Hx
            D[ar, :, ar, 1] = np.pi * Hy
            out["pointing"] = self._flat(D)
        illum = [n for n in ("c_dB", "q", "x0", "y0") if n in names]
        if illum:
            dA = self.illumination_derivatives(illum, c_dB, q, x0, y0, r2, A)
            d = self.w * torch.stack(dA)  # (m, J)
            Dr, Di = self.tf.fields(d * cos.unsqueeze(1), d * sin.unsqueeze(1))  # (B, m, Nb)
            Fr, Fi = to_maps(Fr), to_maps(Fi)
            dP = (2 * self.norm) * (Fr.unsqueeze(1) * Dr + Fi.unsqueeze(1) * Di)
            dP = dP * (s.unsqueeze(1) if s.dim() else s)
            for i, n in enumerate(illum):
                out[n] = self._flat(dP[:, i])
        if "amp" in names:
            out["amp"] = self._flat(P if gain is None else P * gain.unsqueeze(-1))
        if "gain" in names:
            D = P.new_zeros(B, Nb, B)
            D[ar, :, ar] = amp * P
            out["gain"] = self._flat(D)
        if "background" in names:
            D = P.new_zeros(B, Nb, B)
            D[ar, :, ar] = 1.0
            out["background"] = self._flat(D)
        if "background_plane" in names:
            D = P.new_zeros(B, Nb, B, 2)
            D[ar, :, ar, :] = self.uv_norm[:, :Nb]
            out["background_plane"] = self._flat(D)
        return mu, out

    def illumination_derivatives(self, names, c_dB, q, x0, y0, r2, A):
        """``dA/d name`` on the cells for the illumination parameters ``names``.

        ``c_dB``, ``q``, ``x0``, ``y0`` as tensors (None: the default), ``r2`` from
        the illumination centre and ``A`` the illumination there; one tensor per name.
        """
        ln10 = math.log(10.0) / 20.0
        C = 10.0 ** (c_dB / 20.0)
        qv = 2.0 if q is None else q
        x0v = 0.0 if x0 is None else x0
        y0v = 0.0 if y0 is None else y0
        out = []
        if self.illumination == "pedestal":
            base = torch.clamp(1 - r2, min=0.0)
            open_ = base > 0
            safe = torch.where(open_, base, torch.ones_like(base))
            fq = base * base if q is None else base**qv
            for n in names:
                if n == "c_dB":
                    out.append(C * ln10 * (1 - fq))
                elif n == "q":
                    out.append(torch.where(open_, (1 - C) * fq * torch.log(safe), 0.0))
                else:
                    # dA/dx0 = (1 - C) q base^(q-1) d base/dx0, d base/dx0 = 2 (x - x0)/pr^2
                    coord = self.px - x0v if n == "x0" else self.py - y0v
                    dbase = 2 * coord / self.pr**2
                    out.append(torch.where(open_, (1 - C) * qv * safe ** (qv - 1) * dbase, 0.0))
        else:  # gaussian: A = exp(ln10/20 c_dB r2)
            for n in names:
                if n == "c_dB":
                    out.append(A * ln10 * r2)
                else:
                    coord = self.px - x0v if n == "x0" else self.py - y0v
                    out.append(A * ln10 * c_dB * (-2 * coord / self.pr**2))
        return out

    # ------------------------------------------------- many observations at once
    def _check_batched(self, p):
        if not (isinstance(self.tf, MFT) and self.tf.shared_axes):
            raise ValueError("batched beams need transform='mft' with every map on the same "
                             "sky grid")
        K = torch.as_tensor(p["K"], dtype=self.dtype, device=self.device)
        if K.dim() != 2 or K.shape[-1] != self.n_coeff - 1:
            raise ValueError(f"batched K must have shape (b, {self.n_coeff - 1}), got "
                             f"{tuple(K.shape)}")
        extra = sorted(set(p) - {"K", "amp", "c_dB"})
        if extra:
            raise ValueError(f"batched beams take K, amp and c_dB only, not {extra}")
        amp = self._get(p, "amp").expand(K.shape[0])
        c_dB = self._get(p, "c_dB").expand(K.shape[0])
        return K, amp, c_dB

    def _batched_field(self, K, c_dB):
        phase = self.phase({"K": K})  # K (b, n): (b, B, J)
        A = illumination(self.illumination, c_dB.unsqueeze(-1), self.r2)  # (b, J)
        wA = (self.w * A).unsqueeze(-2)
        cos, sin = torch.cos(phase), torch.sin(phase)
        return A, cos, sin, wA * cos, wA * sin

    def batched(self, p: dict) -> torch.Tensor:
        """The model of ``b`` observations that share this one's maps' geometry.

        Each has its own ``K`` ``(b, n_coeff - 1)``, ``amp`` and ``c_dB`` ``(b,)`` (the
        other nuisance parameters at their defaults); the sky grid, defocus and
        wavelength are this model's. Returns ``(b, N)``, each row as :meth:`__call__`.
        Only for 'mft' with one sky grid for every map (one matrix product serves all
        observations).
        """
        K, amp, c_dB = self._check_batched(p)
        b = K.shape[0]
        er, ei = self._batched_field(K, c_dB)[3:]
        Fr, Fi = self.tf.fields(er, ei)  # (b, B, n_k): the shared grid batches freely
        return ((Fr**2 + Fi**2) * (self.norm * amp[:, None, None])).reshape(b, -1)

    def batched_jacobian(self, p: dict) -> tuple[torch.Tensor, dict]:
        """:meth:`batched` and its exact derivatives: ``{'K': (b, N, n_coeff - 1),
        'amp': (b, N), 'c_dB': (b, N)}``, from the monomial transforms of every
        observation's fields in one batch (as :meth:`jacobian`)."""
        K, amp, c_dB = self._check_batched(p)
        b, B, J = K.shape[0], self.n_maps, self.U.shape[-1]
        with torch.no_grad():
            A, cos, sin, er, ei = self._batched_field(K, c_dB)
            Mr, Mi, pos = self.tf.monomial_blocks(er.reshape(b * B, J), ei.reshape(b * B, J),
                                                  self.order)  # (M, *S)
            # each observation's amp, on each of its maps
            dK = self._zernike_columns(self._phase_terms(Mr, Mi, amp.repeat_interleave(B)), pos)
            dK = dK.reshape(-1, b, B * dK.shape[-1]).permute(1, 2, 0)
            Fr, Fi = self.tf.samples_last(Mr[0]), self.tf.samples_last(Mi[0])  # (b B, n_k)
            P = (Fr**2 + Fi**2) * self.norm
            d = self.w * self.illumination_derivatives(["c_dB"], c_dB.unsqueeze(-1), None, None,
                                                       None, self.r2, A)[0]  # (b, J)
            d = d.unsqueeze(-2)
            Dr, Di = self.tf.fields(d * cos, d * sin)  # (b, B, n_k)
            dC = (2 * self.norm) * (Fr.reshape(b, B, -1) * Dr + Fi.reshape(b, B, -1) * Di)
            P = P.reshape(b, -1)
            return P * amp[:, None], {"K": dK, "amp": P,
                                      "c_dB": dC.reshape(b, -1) * amp[:, None]}

    def value_and_jacobian(self, p: dict, names) -> tuple[torch.Tensor, torch.Tensor]:
        """Model and its Jacobian as one ``(N, P)`` matrix, columns in the order of
        ``names``, each parameter flattened row-major (see :meth:`jacobian`)."""
        mu, d = self.jacobian(p, names)
        return mu, torch.cat([d[n].reshape(mu.numel(), -1) for n in names], dim=1)

    def beams_numpy(self, K_waves, **nuisance) -> np.ndarray:
        """Convenience: beams for full ``K`` (with piston, ignored) as a ``(B, n_k)`` array."""
        K = np.asarray(K_waves, dtype=np.float64)
        p = {"K": K[1:], **nuisance}
        with torch.no_grad():
            out = self(p).cpu().numpy()
        return _split(out, self.sizes)


#: parameters with exact derivatives in :meth:`BeamModel.jacobian`
NUISANCE_AND_K = ("K",) + tuple(NUISANCE)


class _BeamFunction(torch.autograd.Function):
    """The MFT beam model with its exact Jacobian saved for the backward pass.

    ``backward`` returns ``g @ J`` built from torch operations, so it is itself
    differentiable in ``g``: the double-backward trick that builds Jacobians column
    by column then costs one tiny matmul per column. J is held constant, so second
    derivatives through this function are the Gauss-Newton ones (``J^T H J``).
    """

    @staticmethod
    def forward(ctx, model, names, const, *tensors):
        p = dict(const)
        p.update(zip(names, tensors))
        mu, J = model.value_and_jacobian(p, names)
        ctx.save_for_backward(J)
        ctx.shapes = [t.shape for t in tensors]
        return mu

    @staticmethod
    def backward(ctx, g):
        (J,) = ctx.saved_tensors
        flat = g @ J
        out, i = [], 0
        for shape in ctx.shapes:
            k = int(np.prod(shape)) if len(shape) else 1
            out.append(flat[i:i + k].reshape(shape))
            i += k
        return (None, None, None, *out)


def _split(flat: np.ndarray, sizes) -> np.ndarray:
    """Flat model vector -> (B, n) array when all maps have n points, else a list."""
    parts = np.split(flat, np.cumsum(sizes)[:-1])
    if len(set(sizes)) == 1:
        return np.stack(parts)
    return parts
