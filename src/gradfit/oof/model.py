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

Three ways to evaluate F at the sample points, all batched over maps, all real
arithmetic, all differentiable (autograd and forward-mode):

``'mft'`` (default)
    Exact separable matrix Fourier transform ``F = A_v E A_u^T`` when each map is a
    regular ``(n_v, n_u)`` grid.
``'dft'``
    Direct non-uniform transform for scattered samples: for each sample the x sum
    of every aperture row (one matrix product for all rows and samples), then the
    y sum. Exact (the same sum as over the illuminated cells) in O(n n_k) memory.
``'fft'``
    Zero-padded FFT of the aperture grid and bilinear interpolation of the power,
    as pyoof does; kept for comparison.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .aperture import ApertureGrid, aperture_grid
from .telescope import Telescope, get_telescope
from .zernike import zernike_count

__all__ = ["BeamModel", "map_axes", "torch_threads", "ILLUMINATIONS", "TRANSFORMS"]

ILLUMINATIONS = ("pedestal", "gaussian")
TRANSFORMS = ("mft", "dft", "fft")

#: default values of the nuisance parameters when a fit does not give them
DEFAULTS = {"amp": 1.0, "c_dB": -14.0, "q": 2.0, "x0": 0.0, "y0": 0.0}


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


def map_axes(m, rtol: float = 1e-9) -> tuple[np.ndarray, np.ndarray] | None:
    """``(u_axis, v_axis)`` if map ``m`` is a regular grid with u varying fastest, else None."""
    if m.shape is None:
        return None
    nv, nu = m.shape
    if nv * nu != m.u.size:
        return None
    U = m.u.reshape(nv, nu)
    V = m.v.reshape(nv, nu)
    ua, va = U[0], V[:, 0]
    scale = max(np.max(np.abs(m.u)), np.max(np.abs(m.v)), 1e-300)
    if np.max(np.abs(U - ua[None, :])) > rtol * scale or np.max(np.abs(V - va[:, None])) > (
        rtol * scale
    ):
        return None
    return ua, va


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
        Cells across the dish (see :func:`gradfit.oof.aperture.choose_grid_size`).
    transform : {'mft', 'dft', 'fft'}
        How F is evaluated at the sample points (see the module docstring).
        'mft' falls back to 'dft' when the maps are not regular grids of one shape.
    illumination : {'pedestal', 'gaussian'}
        ``A = C + (1 - C)(1 - (r'/pr)^2)^q`` or ``A = C^((r'/pr)^2)``, ``C = 10^(c_dB/20)``,
        ``r'`` measured from ``(x0, y0)``.
    analytic_jacobian : bool
        With 'mft' and autograd on, evaluate through :class:`_BeamFunction`, which
        computes the Jacobian analytically in one batched transform (first
        derivatives exact; second derivatives Gauss-Newton). False: plain autograd
        through every operation (exact Hessians, vmap and forward mode).
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
        g = self.grid
        pr = tel.primary_radius_m
        t = self._t

        self.U = t(g.zernike(self.order)[1:])  # piston is not measurable
        self.U2pi = 2 * np.pi * self.U
        self.defocus = t(np.stack([g.defocus_phase(dz, lam) for dz in self.dz]))  # (B, J)
        self.px, self.py, self.w = t(g.x), t(g.y), t(g.weight)
        self.pr = pr
        self.r2 = t((g.x**2 + g.y**2) / pr**2)
        self.norm = 1.0 / float(np.sum(g.weight) * g.step_m**2) ** 2
        self.index = torch.as_tensor(g.index, device=self.device)

        axes = [map_axes(m) for m in obs.maps]
        gridded = all(a is not None for a in axes) and len({m.shape for m in obs.maps}) == 1
        if transform == "mft" and not gridded:
            transform = "dft"
        self.transform = transform
        step = g.step_m
        ax = g.axis
        # scatter target of the separable transforms: per map, rows y, then
        # [Re E(x) | Im E(x)] along the row
        gy, gx = np.divmod(g.index, g.n)
        self.grid_index = torch.as_tensor(
            np.concatenate([gy * 2 * g.n + gx, gy * 2 * g.n + g.n + gx]), device=self.device
        )

        def kernel(s, coord):
            """cos and sin of 2 pi s coord / lambda, times the cell width."""
            arg = 2 * np.pi * np.outer(s, coord) / lam
            return np.cos(arg) * step, np.sin(arg) * step

        if transform == "mft":
            Wv, Wu = [], []
            for ua, va in axes:
                Cv, Sv = kernel(va, ax)  # (nv, n)
                Cu, Su = kernel(ua, ax)  # (nu, n)
                Wu.append(np.block([[Cu.T, -Su.T], [Su.T, Cu.T]]))  # (2n, 2nu)
                Wv.append(np.block([[Cv, Sv], [-Sv, Cv]]))  # (2nv, 2n)
            self.shared_axes = all(np.array_equal(Wv[0], w) for w in Wv) and all(
                np.array_equal(Wu[0], w) for w in Wu
            )
            if self.shared_axes:
                self.Wu, self.Wv = t(Wu[0]), t(Wv[0])
            else:
                self.Wu, self.Wv = t(np.stack(Wu)), t(np.stack(Wv))
            self.nv, self.nu = obs.maps[0].shape
        elif transform == "dft":
            # per sample k: F_k = sum_y e^{-i v_k y} [sum_x e^{-i u_k x} E(x, y)]; the x sums
            # of all rows and samples are one matrix product, the y sums a reduction
            nk = max(self.sizes)
            Wu, Cv, Sv = [], [], []
            for m in obs.maps:
                Cu, Su = kernel(np.pad(m.u, (0, nk - m.n)), ax)  # (nk, n); padding unused
                Wu.append(np.block([[Cu.T, -Su.T], [Su.T, Cu.T]]))  # (2n, 2nk)
                c, sn = kernel(np.pad(m.v, (0, nk - m.n)), ax)
                Cv.append(c.T)
                Sv.append(sn.T)  # (n, nk)
            self.dft_Wu, self.dft_Cv, self.dft_Sv = t(np.stack(Wu)), t(np.stack(Cv)), t(
                np.stack(Sv))
            self.nk = nk
        else:  # fft
            nfft = int(fft_pad) * g.n
            self.nfft = nfft
            idx, wts = [], []
            for m in obs.maps:
                tu = m.u * nfft * step / lam  # fractional FFT bin
                tv = m.v * nfft * step / lam
                if np.max(np.abs(tu)) >= nfft / 2 - 1 or np.max(np.abs(tv)) >= nfft / 2 - 1:
                    raise ValueError(
                        "fft transform: the sample points reach beyond the FFT's Nyquist "
                        "range; use a finer aperture grid or transform='mft'"
                    )
                u0, v0 = np.floor(tu), np.floor(tv)
                fu, fv = tu - u0, tv - v0
                i00 = (v0 % nfft) * nfft + (u0 % nfft)
                i01 = (v0 % nfft) * nfft + ((u0 + 1) % nfft)
                i10 = ((v0 + 1) % nfft) * nfft + (u0 % nfft)
                i11 = ((v0 + 1) % nfft) * nfft + ((u0 + 1) % nfft)
                idx.append(np.stack([i00, i01, i10, i11]).astype(np.int64))
                wts.append(np.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv]))
            nk = max(self.sizes)
            self.fft_idx = torch.as_tensor(
                np.stack([np.pad(i, ((0, 0), (0, nk - i.shape[1]))) for i in idx]),
                device=self.device,
            )  # (B, 4, nk)
            self.fft_w = t(np.stack([np.pad(w, ((0, 0), (0, nk - w.shape[1]))) for w in wts]))
            self.fft_area = step**4
            self.nk = nk

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

    # ------------------------------------------------------------------ physics
    def illumination_amplitude(self, c_dB, q=None, x0=None, y0=None) -> torch.Tensor:
        """Illumination A on the illuminated cells (1 at the centre for the pedestal).

        ``q``, ``x0``, ``y0`` left as None take their defaults (2, 0, 0) through
        precomputed tensors, which is cheaper than passing the values.
        """
        if x0 is None and y0 is None:
            r2 = self.r2
        else:
            x0 = 0.0 if x0 is None else x0
            y0 = 0.0 if y0 is None else y0
            r2 = ((self.px - x0) ** 2 + (self.py - y0) ** 2) / self.pr**2
        C = 10.0 ** (c_dB / 20.0)
        if self.illumination == "pedestal":
            # clamp: with an offset (x0, y0) the rim cells can reach r' > pr
            base = torch.clamp(1 - r2, min=0.0)
            return C + (1 - C) * (base * base if q is None else base**q)
        return torch.exp((math.log(10.0) / 20.0) * c_dB * r2)

    def field(self, p: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Real and imaginary parts of ``E_b`` on the illuminated cells, each ``(B, J)``."""
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
        amp = self.w * self.illumination_amplitude(
            self._get(p, "c_dB"), p.get("q"), p.get("x0"), p.get("y0")
        )
        return amp * torch.cos(phase), amp * torch.sin(phase)

    def _to_grid(self, a: torch.Tensor) -> torch.Tensor:
        n = self.grid.n
        out = a.new_zeros(a.shape[:-1] + (n * n,))
        return out.index_copy(-1, self.index, a).reshape(a.shape[:-1] + (n, n))

    def power(self, p: dict) -> torch.Tensor:
        """``|F_b|^2 / F0^2`` at every sample point, ``(B, n_k)`` (padded for 'dft'/'fft')."""
        er, ei = self.field(p)
        if self.transform == "mft":
            return self._mft(er, ei)
        if self.transform == "dft":
            B, n, nk = self.n_maps, self.grid.n, self.nk
            vals = torch.cat([er, ei], dim=-1)
            X = vals.new_zeros(B, 2 * n * n).index_copy(1, self.grid_index, vals)
            T = X.reshape(B, n, 2 * n) @ self.dft_Wu  # (B, n_y, 2 nk): [Re | Im]
            Tr, Ti = T[..., :nk], T[..., nk:]
            fr = (self.dft_Cv * Tr + self.dft_Sv * Ti).sum(-2)
            fi = (self.dft_Cv * Ti - self.dft_Sv * Tr).sum(-2)
            return (fr**2 + fi**2) * self.norm
        nfft = self.nfft
        E = torch.complex(self._to_grid(er), self._to_grid(ei))
        F = torch.fft.fft2(E, s=(nfft, nfft))
        P = (F.real**2 + F.imag**2).reshape(self.n_maps, -1)
        vals = torch.gather(P, 1, self.fft_idx.reshape(self.n_maps, -1)).reshape(
            self.fft_idx.shape
        )
        return (vals * self.fft_w).sum(1) * self.fft_area * self.norm

    def _mft(self, er: torch.Tensor, ei: torch.Tensor) -> torch.Tensor:
        """Separable exact transform: x (u) first as one 2-D matmul, then y (v)."""
        B, n, nu, nv = self.n_maps, self.grid.n, self.nu, self.nv
        vals = torch.cat([er, ei], dim=-1)  # (B, 2J)
        X = vals.new_zeros(B, 2 * n * n).index_copy(1, self.grid_index, vals)
        if self.shared_axes:
            T = X.reshape(B * n, 2 * n) @ self.Wu  # rows: [Re | Im] of the u-transform
            # stack Re over Im along y, maps side by side: (2n, B nu)
            T = T.reshape(B, n, 2, nu).permute(2, 1, 0, 3).reshape(2 * n, B * nu)
            F = self.Wv @ T  # (2nv, B nu)
            P = F[:nv] ** 2 + F[nv:] ** 2
            P = P.reshape(nv, B, nu).transpose(0, 1)
        else:
            T = X.reshape(B, n, 2 * n) @ self.Wu  # (B, n, 2nu)
            T = T.reshape(B, n, 2, nu).permute(0, 2, 1, 3).reshape(B, 2 * n, nu)
            F = self.Wv @ T  # (B, 2nv, nu)
            P = F[:, :nv] ** 2 + F[:, nv:] ** 2
        return P.reshape(B, -1) * self.norm

    def _mft_fields(self, er: torch.Tensor, ei: torch.Tensor):
        """F of many fields per map: ``er, ei`` ``(B, M, J)`` -> ``Fr, Fi`` ``(B, M, nv, nu)``."""
        B, M = er.shape[:2]
        n, nu, nv = self.grid.n, self.nu, self.nv
        vals = torch.cat([er, ei], dim=-1).reshape(B * M, -1)
        X = vals.new_zeros(B * M, 2 * n * n).index_copy(1, self.grid_index, vals)
        if self.shared_axes:
            T = X.reshape(B * M * n, 2 * n) @ self.Wu
            T = T.reshape(B * M, n, 2, nu).permute(2, 1, 0, 3).reshape(2 * n, B * M * nu)
            F = (self.Wv @ T).reshape(2, nv, B, M, nu).permute(0, 2, 3, 1, 4)
            return F[0], F[1]
        T = X.reshape(B, M * n, 2 * n) @ self.Wu  # (B, M n, 2nu)
        T = T.reshape(B, M, n, 2, nu).permute(0, 3, 2, 1, 4).reshape(B, 2 * n, M * nu)
        F = (self.Wv @ T).reshape(B, 2, nv, M, nu).permute(1, 0, 3, 2, 4)
        return F[0], F[1]

    def value_and_jacobian(self, p: dict, names) -> tuple[torch.Tensor, torch.Tensor]:
        """Model and its Jacobian with respect to the parameters ``names``, analytically.

        All derivative fields (``i 2 pi U_k E`` for each coefficient, ``dA/dtheta e^{i phi}``
        for the illumination) go through one batched MFT, far cheaper than one
        autodiff pass per parameter. Only for ``transform='mft'``.

        Returns
        -------
        mu : ``(N,)`` flat model; J : ``(N, P)``, columns in the order of ``names``,
        each parameter flattened row-major.
        """
        if self.transform != "mft":
            raise ValueError("analytic Jacobians need transform='mft'")
        dt, dev = self.dtype, self.device
        K = torch.as_tensor(p["K"], dtype=dt, device=dev)
        B, J = self.n_maps, self.px.numel()
        phase = (K @ self.U2pi).unsqueeze(-2) + self.defocus
        pt = p.get("pointing")
        scale = 2 * np.pi / (2 * self.pr)
        if pt is not None:
            pt = torch.as_tensor(pt, dtype=dt, device=dev).reshape(-1, 2)
            phase = phase + scale * (pt[:, :1] * self.px + pt[:, 1:] * self.py)
        c_dB = self._get(p, "c_dB")
        q, x0, y0 = p.get("q"), p.get("x0"), p.get("y0")
        qv = 2.0 if q is None else torch.as_tensor(q, dtype=dt, device=dev)
        x0v = 0.0 if x0 is None else torch.as_tensor(x0, dtype=dt, device=dev)
        y0v = 0.0 if y0 is None else torch.as_tensor(y0, dtype=dt, device=dev)
        A = self.illumination_amplitude(c_dB, q, x0, y0)
        cos, sin = torch.cos(phase), torch.sin(phase)
        a = self.w * A
        er, ei = a * cos, a * sin  # (B, J)

        # tangent fields: phase parameters multiply E by i g, amplitude ones give dA e^{i phi}
        ln10 = math.log(10.0) / 20.0
        C = 10.0 ** (c_dB / 20.0)
        if self.illumination == "pedestal":
            r2 = self.r2 if x0 is None and y0 is None else (
                ((self.px - x0v) ** 2 + (self.py - y0v) ** 2) / self.pr**2)
            base = torch.clamp(1 - r2, min=0.0)
            fq = base * base if q is None else base**qv
        else:
            r2 = self.r2 if x0 is None and y0 is None else (
                ((self.px - x0v) ** 2 + (self.py - y0v) ** 2) / self.pr**2)
        tr, ti, cols = [], [], []  # (B, m, J) blocks and their column counts

        def phase_block(g):  # g: (m, J) or (B, m, J)
            g = g if g.dim() == 3 else g.unsqueeze(0)
            tr.append(-g * ei.unsqueeze(1))
            ti.append(g * er.unsqueeze(1))

        def amp_block(dA):  # dA: (J,)
            d = (self.w * dA).unsqueeze(0)
            tr.append((d * cos).unsqueeze(1))
            ti.append((d * sin).unsqueeze(1))

        amp_col = None
        for name in names:
            if name == "K":
                phase_block(self.U2pi)
                cols.append(self.U2pi.shape[0])
            elif name == "amp":
                amp_col = sum(cols)
                cols.append(0)  # no field; filled from P below
            elif name == "c_dB":
                if self.illumination == "pedestal":
                    amp_block(C * ln10 * (1 - fq))
                else:
                    amp_block(A * ln10 * r2)
                cols.append(1)
            elif name == "q":
                if self.illumination != "pedestal":
                    raise ValueError("q is a parameter of the pedestal illumination only")
                lb = torch.log(torch.where(base > 0, base, torch.ones_like(base)))
                amp_block((1 - C) * fq * lb)
                cols.append(1)
            elif name in ("x0", "y0"):
                coord = self.px - x0v if name == "x0" else self.py - y0v
                dr2 = -2 * coord / self.pr**2  # d r2 / d x0
                if self.illumination == "pedestal":
                    dq = qv * base ** (qv - 1) if q is not None else 2 * base
                    amp_block((1 - C) * dq * (-dr2) * (base > 0))
                else:
                    amp_block(A * ln10 * c_dB * dr2)
                cols.append(1)
            elif name == "pointing":
                g = torch.zeros(B, 2 * B, J, dtype=dt, device=dev)
                for b in range(B):
                    g[b, 2 * b] = scale * self.px
                    g[b, 2 * b + 1] = scale * self.py
                phase_block(g)
                cols.append(2 * B)
            else:
                raise ValueError(f"no analytic derivative for parameter {name!r}")
        fields_r = torch.cat([er.unsqueeze(1)] + [t.expand(B, -1, J) for t in tr], dim=1)
        fields_i = torch.cat([ei.unsqueeze(1)] + [t.expand(B, -1, J) for t in ti], dim=1)
        Fr, Fi = self._mft_fields(fields_r, fields_i)  # (B, 1 + m, nv, nu)
        Fr, Fi = Fr.reshape(B, Fr.shape[1], -1), Fi.reshape(B, Fi.shape[1], -1)
        P = (Fr[:, 0] ** 2 + Fi[:, 0] ** 2) * self.norm  # (B, N_b)
        amp = self._get(p, "amp")
        dP = 2 * self.norm * (Fr[:, :1] * Fr[:, 1:] + Fi[:, :1] * Fi[:, 1:])  # (B, m, N_b)
        Jm = (amp * dP).permute(0, 2, 1).reshape(B * P.shape[1], -1)  # (N, m)
        if amp_col is not None:
            Jm = torch.cat([Jm[:, :amp_col], P.reshape(-1, 1), Jm[:, amp_col:]], dim=1)
        return (amp * P).reshape(-1), Jm

    def __call__(self, p: dict, x=None) -> torch.Tensor:
        """Model beams of all maps, flat (map after map, each in its sample order).

        Parameters
        ----------
        p : dict
            ``'K'`` (waves, without piston) and optional ``'amp'``, ``'c_dB'``, ``'q'``,
            ``'x0'``, ``'y0'`` (metres) and ``'pointing'`` (``(B, 2)``, units of lambda/D).
        x : ignored
            The sample points are fixed when the model is built; ``x`` is accepted so
            that the model has the ``model(p, x)`` signature of :func:`gradfit.fit`.
        """
        if self.analytic_jacobian and self.transform == "mft" and torch.is_grad_enabled():
            names = tuple(k for k in _ANALYTIC if isinstance(p.get(k), torch.Tensor)
                          and p[k].requires_grad)
            if names:
                const = {k: v for k, v in p.items() if k not in names}
                return _BeamFunction.apply(self, names, const, *[p[k] for k in names])
        P = self.power(p) * self._get(p, "amp")
        if P.shape[-1] * self.n_maps != self.n_points:
            return torch.cat([P[b, :s] for b, s in enumerate(self.sizes)])
        return P.reshape(-1)

    def beams_numpy(self, K_waves, **nuisance) -> np.ndarray:
        """Convenience: beams for full ``K`` (with piston, ignored) as a ``(B, n_k)`` array."""
        K = np.asarray(K_waves, dtype=np.float64)
        p = {"K": K[1:], **nuisance}
        with torch.no_grad():
            out = self(p).cpu().numpy()
        return _split(out, self.sizes)


_ANALYTIC = ("K", "amp", "c_dB", "q", "x0", "y0", "pointing")


class _BeamFunction(torch.autograd.Function):
    """The MFT beam model with its analytic Jacobian saved for the backward pass.

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
