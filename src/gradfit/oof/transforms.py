"""Beam transforms: the aperture field on the grid cells -> F at the observed sky offsets.

Every transform is a small object built once for an aperture grid and the sample
points of every map, with one interface:

``power(er, ei)``
    ``|F_b|^2`` at every sample of every map, ``(B, n_k)`` (padded to the longest map),
    from the real and imaginary field on the illuminated cells, each ``(B, J)``.

The sum is the midpoint rule over the cells,
``F_b(u, v) = sum_cells E_b(x, y) exp(-2 pi i (x u + y v) / lambda) dA`` (numpy's
forward-FFT sign). All arithmetic is real, batched over maps and differentiable
(autograd, forward mode, vmap).

``'mft'`` (:class:`MFT`)
    Exact separable matrix Fourier transform ``F = A_v E A_u^T`` when every map is a
    regular grid. It also gives the transforms of ``x^a y^b E`` for all
    monomials at once (:meth:`MFT.monomials`), from which the model's exact Jacobian
    is built.
``'dft'`` (:class:`DFT`)
    Direct non-uniform transform for scattered samples: for each sample the x sum of
    every aperture row (one matrix product for all rows and samples), then the y sum.
    It gives the monomial transforms too (:meth:`DFT.monomials`), so the model's
    Jacobian is exact for scattered samples as well.
``'fft'`` (:class:`FFT`)
    Zero-padded FFT of the aperture grid and bilinear interpolation of the power, as
    pyoof does; kept for comparison.

:func:`make_transform` picks the object; ``'mft'`` falls back to ``'dft'`` when a map is
not a regular grid (maps on grids of different shapes keep the MFT).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["TRANSFORMS", "Transform", "MFT", "DFT", "FFT", "make_transform"]

TRANSFORMS = ("mft", "dft", "fft")


class Transform:
    """Base class: holds the grid, the device and dtype; subclasses implement ``power``."""

    name = ""
    #: whether it gives ``fields`` and ``monomials``, from which the model builds its
    #: exact Jacobian
    exact_jacobian = False

    def __init__(self, grid, maps, wavelength_m: float, device, dtype):
        self.grid = grid
        self.n = grid.n
        self.device = torch.device(device)
        self.dtype = dtype
        self.wavelength_m = float(wavelength_m)
        self.sizes = [m.n for m in maps]
        self.n_maps = len(maps)
        # scatter target of the separable sums: per map, rows y, then [Re E(x) | Im E(x)]
        gy, gx = np.divmod(grid.index, grid.n)
        n = grid.n
        self.grid_index = torch.as_tensor(
            np.concatenate([gy * 2 * n + gx, gy * 2 * n + n + gx]), device=self.device)

    def _t(self, a) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=self.dtype, device=self.device)

    def _kernel(self, s, coord):
        """cos and sin of ``2 pi s coord / lambda``, times the cell width."""
        arg = 2 * np.pi * np.outer(s, coord) / self.wavelength_m
        step = self.grid.step_m
        return np.cos(arg) * step, np.sin(arg) * step

    def _scatter(self, er: torch.Tensor, ei: torch.Tensor) -> torch.Tensor:
        """``(M, J)`` fields -> ``(M, n, 2 n)`` rows y of ``[Re E(x) | Im E(x)]``."""
        vals = torch.cat([er, ei], dim=-1)
        M = vals.shape[0]
        n = self.n
        X = vals.new_zeros(M, 2 * n * n).index_copy(1, self.grid_index, vals)
        return X.reshape(M, n, 2 * n)

    def power(self, er: torch.Tensor, ei: torch.Tensor) -> torch.Tensor:
        """``|F_b|^2`` at every sample, ``(B, n_k)``: by :meth:`fields` where a transform
        has it (MFT, DFT); others (FFT) override this."""
        Fr, Fi = self.fields(er.unsqueeze(-2), ei.unsqueeze(-2))
        return (Fr**2 + Fi**2)[:, 0]

    def _aperture_x(self) -> torch.Tensor:
        """The aperture grid's axis over the dish radius (x/R and y/R of its cells)."""
        return self._t(self.grid.axis / self.grid.telescope.primary_radius_m)


class MFT(Transform):
    """Separable exact transform on regular ``(n_v, n_u)`` grids (u varying fastest).

    Parameters
    ----------
    grid : ApertureGrid
    maps : list of BeamMap
        All regular grids; ``axes`` gives their ``(u_axis, v_axis)``. Maps of different
        shapes (a smaller in-focus map, say) are computed on their axes padded to the
        largest shape, and their samples taken from there (``(B, n_k)``, padded to the
        longest map, as the other transforms return them).
    axes : list of (numpy.ndarray, numpy.ndarray)
    wavelength_m : float
    device, dtype :
    """

    name = "mft"
    exact_jacobian = True

    def __init__(self, grid, maps, axes, wavelength_m, device, dtype):
        super().__init__(grid, maps, wavelength_m, device, dtype)
        ax = grid.axis
        shapes = [(va.size, ua.size) for ua, va in axes]
        nv_max, nu_max = max(s[0] for s in shapes), max(s[1] for s in shapes)
        axes = [(_extend(ua, nu_max), _extend(va, nv_max)) for ua, va in axes]
        self._take = None
        if len(set(shapes)) > 1:
            nk = max(self.sizes)
            take = np.zeros((len(axes), nk), dtype=np.int64)
            for b, (nv, nu) in enumerate(shapes):
                rows, cols = np.divmod(np.arange(nv * nu), nu)
                take[b, : nv * nu] = rows * nu_max + cols
            self._take = torch.as_tensor(take, device=self.device)
        Wv, Wu = [], []
        for ua, va in axes:
            Cv, Sv = self._kernel(va, ax)  # (nv, n)
            Cu, Su = self._kernel(ua, ax)  # (nu, n)
            Wu.append(np.block([[Cu.T, -Su.T], [Su.T, Cu.T]]))  # (2n, 2nu)
            Wv.append(np.block([[Cv, Sv], [-Sv, Cv]]))  # (2nv, 2n)
        # (maps of different shapes never share axes, even where the padding makes their
        # kernels equal: what batches observations needs every map on the same samples)
        self.shared_axes = self._take is None and all(
            np.array_equal(Wv[0], w) for w in Wv) and all(np.array_equal(Wu[0], w) for w in Wu)
        if self.shared_axes:
            self.Wu, self.Wv = self._t(Wu[0]), self._t(Wv[0])
        else:
            self.Wu, self.Wv = self._t(np.stack(Wu)), self._t(np.stack(Wv))
        self.nv, self.nu = nv_max, nu_max
        self._pows: dict = {}

    def _samples(self, F: torch.Tensor, map_dim: int) -> torch.Tensor:
        """3-D ``F`` with the maps along ``map_dim`` and the padded grid last -> the samples
        of each map, ``n_k`` last (the identity when every map has the same shape)."""
        if self._take is None:
            return F
        take = self._take.unsqueeze(1 - map_dim)  # (B, 1, n_k) or (1, B, n_k)
        return torch.gather(F, -1, take.expand(F.shape[:-1] + take.shape[-1:]))

    # ------------------------------------------------------------- one field each
    def _step_v(self, T: torch.Tensor, Wv: torch.Tensor, B: int, M: int):
        """v (y) sums of x-transformed rows ``T`` ``(B, M, n, 2 nu')``: ``Re F, Im F``.

        ``Wv`` may stack ``k`` weightings along its rows, ``(k 2nv, 2n)``; the result is
        then ``(k, B, M, nv, nu')`` each.
        """
        n, nv = self.n, self.nv
        nu = T.shape[-1] // 2
        k = Wv.shape[-2] // (2 * nv)
        if self.shared_axes:
            # stack Re over Im along y, all maps and fields side by side: (2n, B M nu)
            T = T.reshape(B, M, n, 2, nu).permute(3, 2, 0, 1, 4).reshape(2 * n, B * M * nu)
            F = (Wv @ T).reshape(k, 2, nv, B, M, nu).permute(1, 0, 3, 4, 2, 5)
        else:
            T = T.reshape(B, M, n, 2, nu).permute(0, 3, 2, 1, 4).reshape(B, 2 * n, M * nu)
            F = (Wv @ T).reshape(B, k, 2, nv, M, nu).permute(2, 1, 0, 4, 3, 5)
        return F[0], F[1]

    def fields(self, er: torch.Tensor, ei: torch.Tensor):
        """F of many fields per map: ``er, ei`` ``(B, M, J)`` -> ``Fr, Fi`` ``(B, M, n_k)``."""
        B, M = er.shape[:2]
        X = self._scatter(er.reshape(B * M, -1), ei.reshape(B * M, -1))
        if self.shared_axes:
            T = X.reshape(B * M * self.n, 2 * self.n) @ self.Wu
        else:
            T = X.reshape(B, M * self.n, 2 * self.n) @ self.Wu
        Fr, Fi = self._step_v(T, self.Wv, B, M)
        return (self._samples(Fr[0].reshape(B, M, -1), 0),
                self._samples(Fi[0].reshape(B, M, -1), 0))

    # ------------------------------------------------------------------ monomials
    def _powers(self, order: int):
        """``Wu`` and ``Wv`` weighted by ``(x/R)^a`` and ``(y/R)^b``, ``a, b <= order``."""
        if order not in self._pows:
            xn = self._aperture_x()
            xn2 = torch.cat([xn, xn])
            Wu = torch.cat([self.Wu * (xn2**a)[:, None] for a in range(order + 1)], dim=-1)
            Wv = torch.cat([self.Wv * (xn2**b)[None, :] for b in range(order + 1)], dim=-2)
            self._pows[order] = (Wu, Wv)
        return self._pows[order]

    def monomials(self, er: torch.Tensor, ei: torch.Tensor, order: int):
        """Transforms of ``(x/R)^a (y/R)^b E`` for every ``a + b <= order``, ``R`` the radius.

        Parameters
        ----------
        er, ei : Tensor ``(B, J)``
        order : int

        Returns
        -------
        Mr, Mi : Tensor ``(M, B, n_k)``, ``M = (order + 1)(order + 2) / 2``, monomials in
            the order of :func:`gradfit.oof.zernike.monomial_labels` (``a`` then ``b``);
            the first is ``F`` itself.

        The x sums of all ``order + 1`` powers of x are one matrix product, the y sums
        one product per power of x: ``order + 1`` x-transforms and ``M`` y-transforms,
        against ``M`` of each for one transform per monomial.
        """
        B = er.shape[0]
        n, nu = self.n, self.nu
        Wu, Wv = self._powers(order)
        X = self._scatter(er, ei)
        if self.shared_axes:
            T = X.reshape(B * n, 2 * n) @ Wu
        else:
            T = X @ Wu
        T = T.reshape(B, n, order + 1, 2 * nu)
        Mr, Mi = [], []
        for a in range(order + 1):
            k = order + 1 - a  # powers of y that go with x^a
            Fr, Fi = self._step_v(T[:, :, a], Wv[..., : k * 2 * self.nv, :], B, 1)
            Mr.append(Fr.reshape(k, B, -1))
            Mi.append(Fi.reshape(k, B, -1))
        return self._samples(torch.cat(Mr), 1), self._samples(torch.cat(Mi), 1)


class DFT(Transform):
    """Direct transform at scattered sample points, exact, O(n_k n) memory per map."""

    name = "dft"
    exact_jacobian = True

    def __init__(self, grid, maps, wavelength_m, device, dtype):
        super().__init__(grid, maps, wavelength_m, device, dtype)
        ax = grid.axis
        # per sample k: F_k = sum_y e^{-i v_k y} [sum_x e^{-i u_k x} E(x, y)]; the x sums
        # of all rows and samples are one matrix product, the y sums a reduction
        nk = max(self.sizes)
        Wu, Cv, Sv = [], [], []
        for m in maps:
            Cu, Su = self._kernel(np.pad(m.u, (0, nk - m.n)), ax)  # (nk, n); padding unused
            Wu.append(np.block([[Cu.T, -Su.T], [Su.T, Cu.T]]))  # (2n, 2nk)
            c, sn = self._kernel(np.pad(m.v, (0, nk - m.n)), ax)
            Cv.append(c.T)
            Sv.append(sn.T)  # (n, nk)
        self.Wu, self.Cv, self.Sv = self._t(np.stack(Wu)), self._t(np.stack(Cv)), self._t(
            np.stack(Sv))
        self.nk = nk
        self._pows: dict = {}

    def fields(self, er: torch.Tensor, ei: torch.Tensor):
        """F of many fields per map: ``er, ei`` ``(B, M, J)`` -> ``Fr, Fi`` ``(B, M, nk)``."""
        B, M = er.shape[:2]
        nk, n = self.nk, self.n
        X = self._scatter(er.reshape(B * M, -1), ei.reshape(B * M, -1))  # (B M, n, 2n)
        T = (X.reshape(B, M * n, 2 * n) @ self.Wu).reshape(B, M, n, 2 * nk)
        Tr, Ti = T[..., :nk], T[..., nk:]
        Cv, Sv = self.Cv.unsqueeze(1), self.Sv.unsqueeze(1)
        return (Cv * Tr + Sv * Ti).sum(-2), (Cv * Ti - Sv * Tr).sum(-2)

    def monomials(self, er: torch.Tensor, ei: torch.Tensor, order: int):
        """Transforms of ``(x/R)^a (y/R)^b E`` for every ``a + b <= order`` (as
        :meth:`MFT.monomials`: ``(M, B, nk)`` each, ``a`` then ``b``, ``F`` first).

        For each power of x, the x sums are one matrix product per map, with the power
        applied to the field (so nothing the size of the kernel is copied or cached: for
        scattered samples the kernel holds one column per sample); the y sums of each
        power of x are the per-sample products ``Cv Tr + Sv Ti`` (and their imaginary
        twins), weighted by every power of y in one more product: the Jacobian of
        scattered samples for about ``order + 1`` beam evaluations.
        """
        nk = self.nk
        if order not in self._pows:
            xn = self._aperture_x()
            xn2 = torch.cat([xn, xn])  # x of each column of [Re E | Im E]
            self._pows[order] = (torch.stack([xn2**a for a in range(order + 1)]),
                                 torch.stack([xn**b for b in range(order + 1)]))
        Xp, Yp = self._pows[order]  # (order + 1, 2n), (order + 1, n_y)
        X = self._scatter(er, ei)  # (B, n_y, 2n)
        Mr, Mi = [], []
        for a in range(order + 1):
            T = (X * Xp[a]) @ self.Wu  # (B, n_y, 2 nk): x sums of x^a E
            Tr, Ti = T[..., :nk], T[..., nk:]
            Pr = self.Cv * Tr + self.Sv * Ti
            Pi = self.Cv * Ti - self.Sv * Tr
            Y = Yp[: order + 1 - a]  # powers of y that go with x^a
            Mr.append((Y @ Pr).transpose(0, 1))  # (k, B, nk)
            Mi.append((Y @ Pi).transpose(0, 1))
        return torch.cat(Mr), torch.cat(Mi)


class FFT(Transform):
    """Zero-padded FFT of the aperture grid, power interpolated bilinearly (as pyoof).

    ``fft_pad``: FFT size as a multiple of the grid (beam sampling step
    ``lambda / (fft_pad * D)``).
    """

    name = "fft"

    def __init__(self, grid, maps, wavelength_m, device, dtype, fft_pad: int = 8):
        super().__init__(grid, maps, wavelength_m, device, dtype)
        step, lam = grid.step_m, self.wavelength_m
        nfft = int(fft_pad) * grid.n
        self.nfft = nfft
        idx, wts = [], []
        for m in maps:
            tu = m.u * nfft * step / lam  # fractional FFT bin
            tv = m.v * nfft * step / lam
            if np.max(np.abs(tu)) >= nfft / 2 - 1 or np.max(np.abs(tv)) >= nfft / 2 - 1:
                raise ValueError(
                    "fft transform: the sample points reach beyond the FFT's Nyquist "
                    "range; use a finer aperture grid or transform='mft'")
            u0, v0 = np.floor(tu), np.floor(tv)
            fu, fv = tu - u0, tv - v0
            i00 = (v0 % nfft) * nfft + (u0 % nfft)
            i01 = (v0 % nfft) * nfft + ((u0 + 1) % nfft)
            i10 = ((v0 + 1) % nfft) * nfft + (u0 % nfft)
            i11 = ((v0 + 1) % nfft) * nfft + ((u0 + 1) % nfft)
            idx.append(np.stack([i00, i01, i10, i11]).astype(np.int64))
            wts.append(np.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv]))
        nk = max(self.sizes)
        self.idx = torch.as_tensor(
            np.stack([np.pad(i, ((0, 0), (0, nk - i.shape[1]))) for i in idx]),
            device=self.device)  # (B, 4, nk)
        self.w = self._t(np.stack([np.pad(w, ((0, 0), (0, nk - w.shape[1]))) for w in wts]))
        self.area = step**4
        self.nk = nk
        self.index = torch.as_tensor(grid.index, device=self.device)

    def power(self, er, ei):
        n, B = self.n, er.shape[0]

        def to_grid(a):
            out = a.new_zeros(a.shape[:-1] + (n * n,))
            return out.index_copy(-1, self.index, a).reshape(a.shape[:-1] + (n, n))

        F = torch.fft.fft2(torch.complex(to_grid(er), to_grid(ei)), s=(self.nfft, self.nfft))
        P = (F.real**2 + F.imag**2).reshape(B, -1)
        vals = torch.gather(P, 1, self.idx.reshape(B, -1)).reshape(self.idx.shape)
        return (vals * self.w).sum(1) * self.area


def _extend(axis: np.ndarray, n: int) -> np.ndarray:
    """``axis`` continued with its own step to ``n`` points (the padding of a smaller
    map's grid; what is computed there is never used)."""
    if axis.size >= n:
        return axis
    step = axis[-1] - axis[-2]
    return np.concatenate([axis, axis[-1] + step * np.arange(1, n - axis.size + 1)])


def make_transform(name: str, grid, maps, wavelength_m: float, *, fft_pad: int = 8,
                   device="cpu", dtype=torch.float64) -> Transform:
    """The transform ``name`` for these maps; 'mft' becomes 'dft' for maps off a regular grid.

    Parameters
    ----------
    name : {'mft', 'dft', 'fft'}
    grid : ApertureGrid
    maps : list of BeamMap
    wavelength_m : float
    fft_pad : int
        For 'fft' only.
    device, dtype :
    """
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; choose one of: {', '.join(TRANSFORMS)}")
    if name == "mft":
        axes = [m.grid_axes() for m in maps]
        if all(a is not None for a in axes):
            return MFT(grid, maps, axes, wavelength_m, device, dtype)
        name = "dft"
    if name == "dft":
        return DFT(grid, maps, wavelength_m, device, dtype)
    return FFT(grid, maps, wavelength_m, device, dtype, fft_pad=fft_pad)
