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

Both exact transforms fold their sums onto the half-axis ``x >= 0`` (and the MFT also
onto ``y >= 0``), which the symmetric aperture grid allows: half the arithmetic of the
matrix products (:class:`_Folded`).

:func:`make_transform` picks the object; ``'mft'`` falls back to ``'dft'`` when a map is
not a regular grid (maps on grids of different shapes keep the MFT).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

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

    def _t(self, a) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=self.dtype, device=self.device)

    def _kernel(self, s, coord):
        """cos and sin of ``2 pi s coord / lambda``, times the cell width."""
        arg = 2 * np.pi * np.outer(s, coord) / self.wavelength_m
        step = self.grid.step_m
        return np.cos(arg) * step, np.sin(arg) * step

    def power(self, er: torch.Tensor, ei: torch.Tensor) -> torch.Tensor:
        """``|F_b|^2`` at every sample, ``(B, n_k)``: by :meth:`fields` where a transform
        has it (MFT, DFT); others (FFT) override this."""
        Fr, Fi = self.fields(er.unsqueeze(-2), ei.unsqueeze(-2))
        return (Fr**2 + Fi**2)[:, 0]

    def monomial_blocks(self, er: torch.Tensor, ei: torch.Tensor, order: int):
        """The transforms of :meth:`monomials` in the transform's own layout, for the
        model's Jacobian: ``(Mr, Mi, pos)`` with ``Mr, Mi`` ``(M, *S)`` and ``pos[i]`` the
        position of row ``i`` in :func:`gradfit.oof.zernike.monomial_labels` order (row 0
        is always ``F``). :meth:`samples_last` turns ``(..., *S)`` into ``(..., B, n_k)``.
        Here ``S = (B, n_k)``."""
        Mr, Mi = self.monomials(er, ei, order)
        return Mr, Mi, np.arange(Mr.shape[0])

    def samples_last(self, X: torch.Tensor) -> torch.Tensor:
        """``(..., *S)`` of :meth:`monomial_blocks` -> ``(..., B, n_k)`` (here the identity)."""
        return X


class _Folded(Transform):
    """The sums over the aperture folded onto ``x >= 0`` (and, in the MFT, ``y >= 0``).

    The aperture grid is symmetric about the dish centre. With
    ``Z^(+-)(x) = Z(x) +- Z(-x)`` and the kernel ``e^{-i w x} = C - i S`` (C even, S odd
    in x),

    ``sum_x x^a Z(x) e^{-i w x} = sum_{x >= 0} x^a [C Z^(+) + S (-i Z^(-))]`` for even
    ``a``, with ``Z^(+)`` and ``Z^(-)`` swapped for odd ``a``:

    one real product of the stacked operand ``[Z^(+-) ; -i Z^(-+)]`` (:meth:`_operand`)
    with the real kernel ``[x^a C ; x^a S]``, half the arithmetic of the complex product
    over the whole axis. The same holds for the sums over y.
    """

    def __init__(self, grid, maps, wavelength_m, device, dtype):
        super().__init__(grid, maps, wavelength_m, device, dtype)
        ax = np.asarray(grid.axis, dtype=np.float64)
        n = self.n
        if not np.allclose(ax, -ax[::-1], rtol=0.0, atol=1e-12 * np.max(np.abs(ax))):
            raise ValueError(f"the {self.name!r} transform needs an aperture grid symmetric "
                             "about the dish centre (as gradfit.oof.aperture.aperture_grid "
                             "makes it)")
        # folded axis: x >= 0 ascending (h values; the centre first when n is odd), then
        # the mirror images x < 0 in the same order (slot h is the centre's, empty, when
        # n is odd), so that Z(x) +- Z(-x) is Z[:h] +- Z[h:]
        self.h = h = (n + 1) // 2
        i = np.arange(n)
        self._fold_pos = np.where(i >= n - h, i - (n - h), 2 * h - 1 - i)
        self._half_axis = ax[n - h:]
        self._index: dict = {}

    def _half_kernel(self, s):
        """``[C ; S]`` over the half-axis, ``(2h, len(s))``, times the cell width."""
        C, S = self._kernel(s, self._half_axis)  # (len(s), h)
        return np.concatenate([C.T, S.T])

    def _half_powers(self) -> np.ndarray:
        """``x/R`` over the half-axis, twice (the rows of :meth:`_half_kernel`)."""
        w = self._half_axis / self.grid.telescope.primary_radius_m
        return np.concatenate([w, w])

    def _folded(self, er: torch.Tensor, ei: torch.Tensor, y_first: bool) -> torch.Tensor:
        """``F`` fields ``(F, J)`` on the folded grid: ``(y', F, 2, x')`` (``y_first``) or
        ``(F, y', 2, x')``, Re and Im on axis 2, each folded axis ``2h`` long."""
        F, h2 = er.shape[0], 2 * self.h
        key = (F, y_first)
        if key not in self._index:
            gy, gx = np.divmod(self.grid.index, self.n)
            yf, xf = self._fold_pos[gy][None, None], self._fold_pos[gx][None, None]
            f = np.arange(F)[:, None, None]
            part = np.arange(2)[None, :, None]
            rows = yf * F + f if y_first else f * h2 + yf
            self._index[key] = torch.as_tensor(((rows * 2 + part) * h2 + xf).reshape(-1),
                                               device=self.device)
        X = er.new_zeros(h2 * F * 2 * h2).index_copy(0, self._index[key],
                                                     torch.stack([er, ei], 1).reshape(-1))
        return X.reshape((h2, F, 2, h2) if y_first else (F, h2, 2, h2))

    @staticmethod
    def _operand(Zp, Zm, dim: int, re_im: int):
        """``[Zp ; -i Zm]`` along ``dim`` (``-i Z`` swaps Re and Im, negating the new Im;
        ``re_im`` is the axis of Re/Im)."""
        r, i = Zm.select(re_im, 0), Zm.select(re_im, 1)
        return torch.cat([Zp, torch.stack([i, -r], re_im)], dim)

    def _x_operands(self, X: torch.Tensor, odd: bool = True):
        """The operands of the even (and, with ``odd``, of the odd) powers of x, folded
        axis last, Re/Im the axis before."""
        h = self.h
        Xp, Xm = X[..., :h] + X[..., h:], X[..., :h] - X[..., h:]
        ops = [self._operand(Xp, Xm, -1, -2)]
        if odd:
            ops.append(self._operand(Xm, Xp, -1, -2))
        return ops


class MFT(_Folded):
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

    Every sum is folded onto the half-axes (see :class:`_Folded`).
    """

    name = "mft"
    exact_jacobian = True

    def __init__(self, grid, maps, axes, wavelength_m, device, dtype):
        super().__init__(grid, maps, wavelength_m, device, dtype)
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
        # (maps of different shapes never share axes, even where the padding makes their
        # kernels equal: what batches observations needs every map on the same samples)
        self.shared_axes = self._take is None and all(
            np.array_equal(axes[0][0], ua) and np.array_equal(axes[0][1], va)
            for ua, va in axes)
        self._axes = axes[:1] if self.shared_axes else axes
        self.nv, self.nu = nv_max, nu_max
        self._kernels: dict = {}

    @staticmethod
    def raw_order(order: int) -> np.ndarray:
        """Position of each monomial of :meth:`_raw`'s order (``a`` ascending; for each
        ``a`` the even powers of y, then the odd ones: the y sums fold them apart) in
        :func:`gradfit.oof.zernike.monomial_labels` order (``a`` then ``b``)."""
        pos, first = [], 0
        for a in range(order + 1):
            bs = list(range(0, order + 1 - a, 2)) + list(range(1, order + 1 - a, 2))
            pos += [first + b for b in bs]
            first += order + 1 - a
        return np.asarray(pos)

    # ----------------------------------------------------------------- kernels
    def _powered(self, order: int):
        """Per kernel set (one, or one per map): the u kernels ``[x^a C ; x^a S]`` side
        by side, ``(2h, k nu)``, and the v kernels ``[y^b C | y^b S]`` stacked,
        ``(k nv, 2h)``, for the even and the odd powers up to ``order``."""
        if order not in self._kernels:
            w2 = self._half_powers()
            sets = []
            for ua, va in self._axes:
                Ku, Kv = self._half_kernel(ua), self._half_kernel(va).T
                sets.append(tuple(
                    (self._t(np.concatenate([Ku * (w2**a)[:, None]
                                             for a in range(q, order + 1, 2)], axis=1)),
                     self._t(np.concatenate([Kv * (w2**a)[None, :]
                                             for a in range(q, order + 1, 2)], axis=0)))
                    for q in (0, 1) if q <= order))
            self._kernels[order] = sets
        return self._kernels[order]

    # ------------------------------------------------------------- the transform
    def _raw(self, er: torch.Tensor, ei: torch.Tensor, order: int, kernels,
             one_array: bool = False):
        """Transforms of ``(x/R)^a (y/R)^b E`` of ``F`` fields ``er, ei`` ``(F, J)``, for
        ``a + b <= order``: ``(M, nv, F, 2, nu)`` (Re, Im on axis 3), ``a`` ascending, for
        each ``a`` the even powers of y, then the odd ones. ``one_array``: the products
        write into one array (``out=``, for plain tensors only: no autograd, forward mode
        or vmap), else they are concatenated."""
        F, h, nv, nu = er.shape[0], self.h, self.nv, self.nu
        h2 = 2 * h
        # x sums: the even powers of x from [X+ ; -i X-], the odd ones from [X- ; -i X+]
        ops = self._x_operands(self._folded(er, ei, y_first=True), odd=order > 0)
        T = [op.reshape(-1, h2) @ kernels[q][0] for q, op in enumerate(ops)]  # (y' F 2, .)
        T = [t.reshape(h2, F, 2, -1) for t in T]
        M = (order + 1) * (order + 2) // 2
        plain = one_array and M > 1
        out = er.new_empty(M, nv, F, 2, nu) if plain else []
        m = 0
        for a in range(order + 1):
            j = a // 2
            Ta = T[a % 2][..., j * nu:(j + 1) * nu]  # (y', F, 2, nu)
            Tp, Tm = Ta[:h] + Ta[h:], Ta[:h] - Ta[h:]
            # y sums: powers of y that go with x^a, the even ones then the odd ones
            for q, (Zp, Zm) in ((0, (Tp, Tm)), (1, (Tm, Tp))):
                k = (order - a - q) // 2 + 1 if order - a >= q else 0
                if k:
                    Q = self._operand(Zp, Zm, 0, 2).reshape(h2, -1)
                    if plain:
                        torch.matmul(kernels[q][1][: k * nv], Q,
                                     out=out[m:m + k].view(k * nv, -1))
                    else:
                        out.append(kernels[q][1][: k * nv] @ Q)
                    m += k
        return out if plain else torch.cat(out).reshape(M, nv, F, 2, nu)

    def _raw_all(self, er: torch.Tensor, ei: torch.Tensor, order: int, per_map: int,
                 one_array: bool = False):
        """:meth:`_raw` with each map's kernels: ``er, ei`` ``(B per_map, J)``, fields of
        map ``b`` in rows ``b per_map .. (b + 1) per_map``."""
        sets = self._powered(order)
        if self.shared_axes:
            return self._raw(er, ei, order, sets[0], one_array)
        parts = [self._raw(er[b * per_map:(b + 1) * per_map],
                           ei[b * per_map:(b + 1) * per_map], order, sets[b], one_array)
                 for b in range(self.n_maps)]
        return torch.cat(parts, 2)

    def samples_last(self, X: torch.Tensor) -> torch.Tensor:
        """``(..., nv, F, nu)`` -> ``(..., F, n_k)``: each field's samples, in its map's
        order (maps of different shapes taken from their padded grids)."""
        X = X.transpose(-3, -2)
        X = X.reshape(X.shape[:-3] + (X.shape[-3], self.nv * self.nu))
        if self._take is None:
            return X
        take = self._take
        F = X.shape[-2]
        if F != take.shape[0]:  # several fields per map, map-major
            take = take.repeat_interleave(F // take.shape[0], 0)
        return torch.gather(X, -1, take.expand(X.shape[:-1] + take.shape[-1:]))

    def monomial_blocks(self, er: torch.Tensor, ei: torch.Tensor, order: int):
        """:meth:`monomials` in the folded transform's own order and layout: ``(Mr, Mi,
        pos)``, ``Mr, Mi`` ``(M, nv, B, nu)`` views, ``pos`` as in
        :meth:`Transform.monomial_blocks` (which the model calls under ``no_grad``; with
        autograd or forward mode on, the products are concatenated instead)."""
        plain = not torch.is_grad_enabled() and all(
            fwAD.unpack_dual(t).tangent is None for t in (er, ei))
        R = self._raw_all(er, ei, order, 1, one_array=plain)
        return R[..., 0, :], R[..., 1, :], self.raw_order(order)

    def fields(self, er: torch.Tensor, ei: torch.Tensor):
        """F of many fields per map: ``er, ei`` ``(B, M, J)`` -> ``Fr, Fi`` ``(B, M, n_k)``."""
        B, M = er.shape[:2]
        R = self._raw_all(er.reshape(B * M, -1), ei.reshape(B * M, -1), 0, M)[0]
        R = self.samples_last(R.permute(2, 0, 1, 3))  # (2, nv, B M, nu) -> (2, B M, n_k)
        return R[0].reshape(B, M, -1), R[1].reshape(B, M, -1)

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

        The x sums of the even and of the odd powers of x are one matrix product each,
        the y sums two products per power of x (even and odd powers of y): in all, the
        arithmetic of ``(order + 1) / 2`` x-transforms and ``M / 2`` y-transforms of one
        unfolded transform each.
        """
        R = self._raw_all(er, ei, order, 1)
        inv = torch.as_tensor(np.argsort(self.raw_order(order)), device=self.device)
        R = R.index_select(0, inv)
        return self.samples_last(R[..., 0, :]), self.samples_last(R[..., 1, :])


class DFT(_Folded):
    """Direct transform at scattered sample points, exact, O(n_k n) memory per map.

    For each sample ``k``: ``F_k = sum_y e^{-i v_k y} [sum_x e^{-i u_k x} E(x, y)]``. The
    x sums of all rows and samples are one matrix product per map, folded onto the
    half-axis (see :class:`_Folded`); the y sums are a reduction per sample over the
    rows in their folded order (a product per element either way: folding them would
    only add passes over the rows).
    """

    name = "dft"
    exact_jacobian = True

    def __init__(self, grid, maps, wavelength_m, device, dtype):
        super().__init__(grid, maps, wavelength_m, device, dtype)
        nk = max(self.sizes)
        # y of each folded row: the half-axis, then its mirror images (an odd grid's
        # centre has an empty mirror slot: no cell is scattered there)
        yf = np.concatenate([self._half_axis, -self._half_axis])
        Ku, Cv, Sv = [], [], []
        for m in maps:  # (the padding samples are computed and never used)
            Ku.append(self._half_kernel(np.pad(m.u, (0, nk - m.n))))  # (2h, nk)
            c, sn = self._kernel(np.pad(m.v, (0, nk - m.n)), yf)
            Cv.append(c.T)
            Sv.append(sn.T)  # (2h, nk)
        self.Ku, self.Cv, self.Sv = (self._t(np.stack(a)) for a in (Ku, Cv, Sv))
        self._y = self._t(yf / grid.telescope.primary_radius_m)
        self.nk = nk
        self._pows: dict = {}

    def _x_sums(self, op: torch.Tensor, B: int) -> torch.Tensor:
        """Folded x operands ``(B F', y', 2, 2h)`` -> ``Tr, Ti`` ``(B, F', y', nk)``."""
        T = (op.reshape(B, -1, 2 * self.h) @ self.Ku).reshape((B, -1) + op.shape[-3:-1]
                                                              + (self.nk,))
        return T[..., 0, :], T[..., 1, :]

    def _y_terms(self, Tr: torch.Tensor, Ti: torch.Tensor, Cv: torch.Tensor, Sv: torch.Tensor):
        """Per sample and row, ``e^{-i v y}`` times the x sums ``T``: the terms of the y sums
        (Re, Im)."""
        return Cv * Tr + Sv * Ti, Cv * Ti - Sv * Tr

    def fields(self, er: torch.Tensor, ei: torch.Tensor):
        """F of many fields per map: ``er, ei`` ``(B, M, J)`` -> ``Fr, Fi`` ``(B, M, nk)``."""
        B, M = er.shape[:2]
        X = self._folded(er.reshape(B * M, -1), ei.reshape(B * M, -1), y_first=False)
        (op,) = self._x_operands(X, odd=False)  # (B M, y', 2, 2h)
        Tr, Ti = self._x_sums(op, B)  # (B, M, y', nk)
        Pr, Pi = self._y_terms(Tr, Ti, self.Cv.unsqueeze(1), self.Sv.unsqueeze(1))
        return Pr.sum(-2), Pi.sum(-2)

    def monomials(self, er: torch.Tensor, ei: torch.Tensor, order: int):
        """Transforms of ``(x/R)^a (y/R)^b E`` for every ``a + b <= order`` (as
        :meth:`MFT.monomials`: ``(M, B, nk)`` each, ``a`` then ``b``, ``F`` first).

        For each power of x, the x sums are one matrix product per map with the power
        applied to the operand (nothing the size of the kernel is copied or cached: for
        scattered samples the kernel holds one column per sample); the y sums of each
        power of x are the per-sample products ``Cv Tr + Sv Ti`` (and their imaginary
        twins), weighted by every power of y in one more product: the Jacobian of
        scattered samples for about ``order + 1`` beam evaluations.
        """
        B = er.shape[0]
        if order not in self._pows:
            w2 = self._t(self._half_powers())
            self._pows[order] = (torch.stack([w2**a for a in range(order + 1)]),
                                 torch.stack([self._y**b for b in range(order + 1)]))
        Xp, Yp = self._pows[order]  # (order + 1, 2h) each
        ops = self._x_operands(self._folded(er, ei, y_first=False), odd=order > 0)
        Mr, Mi = [], []
        for a in range(order + 1):
            op = ops[a % 2] * Xp[a] if a else ops[0]  # (B, y', 2, 2h)
            Tr, Ti = (t[:, 0] for t in self._x_sums(op, B))  # (B, y', nk)
            Pr, Pi = self._y_terms(Tr, Ti, self.Cv, self.Sv)
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
