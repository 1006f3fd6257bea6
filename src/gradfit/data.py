"""Where the likelihood's data live: in chunks, and over torch.distributed ranks.

``gradfit.fit(model, x, y, params, chunk_size=N)`` with ``x``/``y`` as NumPy arrays,
``numpy.memmap``, h5py datasets (anything with ``shape`` and slicing along the first
axis), or a source of chunks (a list of ``(x_c, y_c)`` pairs, or a callable that
returns a fresh iterator of them), evaluates −log L chunk by chunk: f, ∇f,
Hessian-vector products, ``JᵀJ v``, ``Jᵀr`` and the dense ``JᵀJ`` are sums over
the data, accumulated one chunk at a time, so peak memory is set by the chunk.
With ``distributed=True`` the local sums are all-reduced over the ranks
(:mod:`gradfit.distributed`) and every rank takes identical steps.

This sits below the objective: a :class:`DataObjective` is an
:class:`~gradfit.objective.Objective`, so every gradient-based solver works on every
data layout. The full residual vector is never formed; Levenberg–Marquardt runs as
``'lm-normal'`` (dense ``JᵀJ``, few parameters) or ``'lm-cg'`` (matrix-free).

The model must treat the leading axis of ``y`` (and of every array in ``x``) as
independent data points, so that a chunk of rows gives the rows of the prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch

from .objective import Linearization, Objective

__all__ = ["ChunkSource", "DataObjective", "DataLinearization", "LocalReducer", "as_source",
           "build_data_problem", "fit_data"]


class LocalReducer:
    """Sums within one process: ``sum`` returns its tensor (or raises the local error)."""

    rank = 0
    world_size = 1

    def __init__(self):
        self.calls = 0
        self.seconds = 0.0

    def sum(self, t: torch.Tensor, error: BaseException | None = None) -> torch.Tensor:
        if error is not None:
            raise error
        return t


def _nrows(a, what: str) -> int:
    shape = getattr(a, "shape", None)
    if shape is None or len(shape) == 0:
        raise ValueError(f"{what} must be an array with a leading data axis (has no shape)")
    return int(shape[0])


def _slice_tree(x, a: int, b: int):
    if x is None or isinstance(x, (int, float)):
        return x
    if isinstance(x, tuple):
        return tuple(_slice_tree(v, a, b) for v in x)
    if isinstance(x, list):
        return [_slice_tree(v, a, b) for v in x]
    if isinstance(x, Mapping):
        return {k: _slice_tree(v, a, b) for k, v in x.items()}
    return x[a:b]


def _check_rows(x, n: int, what: str) -> None:
    if x is None or isinstance(x, (int, float)):
        return
    if isinstance(x, (tuple, list)):
        for i, v in enumerate(x):
            _check_rows(v, n, f"{what}[{i}]")
        return
    if isinstance(x, Mapping):
        for k, v in x.items():
            _check_rows(v, n, f"{what}[{k!r}]")
        return
    rows = _nrows(x, what)
    if rows != n:
        raise ValueError(f"with chunk_size, {what} must have the data on its first axis: it has "
                         f"{rows} rows but y has {n}")


class ChunkSource:
    """A re-iterable source of ``(x_c, y_c)`` chunks (host arrays or tensors).

    Build one with :func:`as_source`. ``in_memory`` is True when the whole data is
    one chunk already in memory (then its tensors are cached).
    """

    def __init__(self, factory: Callable[[], Iterator], n_chunks: int | None = None,
                 in_memory: bool = False, describe: str = "chunks"):
        self._factory = factory
        self.n_chunks = n_chunks
        self.in_memory = in_memory
        self.describe = describe

    def __iter__(self):
        it = self._factory()
        try:
            return iter(it)
        except TypeError:
            raise TypeError(f"the chunk source returned {type(it).__name__}, not an iterable of "
                            "(x, y) pairs") from None


def as_source(x, y, chunk_size: int | None) -> ChunkSource:
    """A :class:`ChunkSource` for arrays sliced along their first axis, or for chunks.

    Parameters
    ----------
    x, y :
        Arrays (NumPy, memmap, h5py dataset, torch tensor; ``x`` may be a tuple or dict
        of them, or None) with the data on the first axis; or ``y=None`` and ``x`` a
        list/tuple of ``(x_c, y_c)`` pairs or a callable returning an iterator of them.
    chunk_size : int or None
        Rows per chunk; None for one chunk (in-memory data).
    """
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
                or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer (rows per chunk), got "
                             f"{chunk_size!r}")
        chunk_size = int(chunk_size)
    if y is None:
        if callable(x):
            return ChunkSource(x, describe="chunks from a callable")
        if isinstance(x, (list, tuple)):
            pairs = list(x)
            for i, c in enumerate(pairs):
                if not (isinstance(c, (tuple, list)) and len(c) == 2):
                    raise TypeError(f"chunk {i} must be an (x, y) pair, not {type(c).__name__}")
            return ChunkSource(lambda: iter(pairs), n_chunks=len(pairs),
                               describe=f"{len(pairs)} given chunks")
        if isinstance(x, Iterator):
            raise TypeError("a generator of chunks can be read only once, but a fit reads the "
                            "data many times; pass a callable that returns a fresh iterator")
        raise TypeError("y is None: x must then be a list of (x, y) chunks or a callable "
                        "returning an iterator of them")
    n = _nrows(y, "y")
    _check_rows(x, n, "x")
    if chunk_size is None or chunk_size >= n:
        return ChunkSource(lambda: iter([(x, y)]), n_chunks=1,
                           in_memory=isinstance(y, (np.ndarray, torch.Tensor))
                           and not isinstance(y, np.memmap),
                           describe="one chunk")
    starts = range(0, n, chunk_size)

    def gen():
        for a in starts:
            b = min(a + chunk_size, n)
            yield _slice_tree(x, a, b), y[a:b]

    return ChunkSource(gen, n_chunks=len(starts), describe=f"{len(starts)} chunks of "
                                                          f"{chunk_size} rows")


def _to_tensor(v, what, device, dtype, check):
    if isinstance(v, torch.Tensor):
        t = v.detach()
        if t.is_floating_point():
            t = t.to(device=device, dtype=dtype)
        else:
            t = t.to(device=device)
    else:
        arr = np.asarray(v)
        if arr.dtype.kind not in "fiub":
            return v
        # a copy: memmap and h5py slices may be read-only views of the file
        t = torch.as_tensor(np.array(arr, dtype=np.float64 if arr.dtype.kind in "fiu"
                                     else arr.dtype), device=device)
        if t.is_floating_point():
            t = t.to(dtype)
    if check and t.is_floating_point():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            i = int(torch.nonzero(bad.reshape(-1))[0])
            raise ValueError(f"{what} contains {int(bad.sum())} non-finite value(s) (NaN or "
                             f"inf); first at flat index {i} of that chunk")
    return t


def _tree_to_tensors(x, what, device, dtype, check):
    if x is None or isinstance(x, (int, float)):
        return x
    if isinstance(x, tuple):
        return tuple(_tree_to_tensors(v, f"{what}[{i}]", device, dtype, check)
                     for i, v in enumerate(x))
    if isinstance(x, list):
        return [_tree_to_tensors(v, f"{what}[{i}]", device, dtype, check)
                for i, v in enumerate(x)]
    if isinstance(x, Mapping):
        return {k: _tree_to_tensors(v, f"{what}[{k!r}]", device, dtype, check)
                for k, v in x.items()}
    return _to_tensor(x, what, device, dtype, check)


class DataObjective(Objective):
    """An :class:`Objective` whose data terms are summed over chunks and ranks.

    ``f(z) = Σ_ranks Σ_chunks f_c(z) + g(z)`` where ``f_c`` is the data term of one
    chunk and ``g`` a global term (the −log prior, counted once). With residuals,
    ``r = [r_c for every chunk and rank] ++ r_g``; the full vector is never formed.

    Parameters
    ----------
    n : int
    chunk_nll, chunk_res : callables ``(z, x_c, y_c) -> tensor``
        Data term and its residuals on one chunk (``chunk_res`` may be None).
    global_nll, global_res : callables ``z -> tensor`` or None
    chunks : callable
        Returns an iterator of ``(x_c, y_c)`` tensors on the device.
    reducer : LocalReducer or gradfit.distributed.Reducer
    cache_linearization : bool
        Keep each chunk's graph between ``JᵀJ v`` products (one in-memory chunk).
    """

    in_memory = False

    def __init__(self, n, chunk_nll, chunk_res, global_nll, global_res, chunks, reducer, *,
                 device, dtype, cache_linearization=False):
        super().__init__(self._value_for_base, n,
                         residual_fun=None if chunk_res is None else self._no_full_residuals,
                         device=device, dtype=dtype)
        self._cnll, self._cres = chunk_nll, chunk_res
        self._gnll, self._gres = global_nll, global_res
        self._chunks = chunks
        self.reducer = reducer
        self._cache = cache_linearization

    # ---------------------------------------------------------------- plumbing
    def _value_for_base(self, z):
        return self.value(z)

    def _no_full_residuals(self, z):
        raise TypeError("with chunked or distributed data the full residual vector is not "
                        "formed; use method 'lm' (run as 'lm-normal' or 'lm-cg'), 'lbfgs' or "
                        "'bfgs'")

    def _local(self, z):
        """Per-chunk objectives (in-memory :class:`Objective` on one chunk)."""
        for xc, yc in self._chunks():
            res = None if self._cres is None else (
                lambda t, xc=xc, yc=yc: self._cres(t, xc, yc).reshape(-1))
            yield Objective(lambda t, xc=xc, yc=yc: self._cnll(t, xc, yc), self.n,
                            residual_fun=res, device=self.device, dtype=self.dtype)

    def _global(self):
        if self._gnll is None:
            return None
        return Objective(self._gnll, self.n, residual_fun=self._gres, device=self.device,
                         dtype=self.dtype)

    def _reduce(self, local_fn, size: int) -> torch.Tensor:
        """All-reduce a flat local sum; an exception on any rank raises on every rank."""
        try:
            t, err = local_fn().reshape(-1), None
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank by the reducer
            t, err = torch.zeros(size, dtype=self.dtype, device=self.device), exc
        return self.reducer.sum(t, err)

    # ------------------------------------------------------------ derivatives
    def value(self, z):
        z = self.as_tensor(z)
        self.nfev += 1

        def local():
            acc = torch.zeros((), dtype=self.dtype, device=self.device)
            for o in self._local(z):
                acc = acc + o.value(z)
            return acc

        f = self._reduce(local, 1)[0]
        g = self._global()
        return f + g.value(z) if g is not None else f

    def value_and_grad(self, z):
        z = self.as_tensor(z)
        self.nfev += 1
        self.ngev += 1

        def local():
            acc = torch.zeros(self.n + 1, dtype=self.dtype, device=self.device)
            for o in self._local(z):
                f, g = o.value_and_grad(z)
                acc[0] += f
                acc[1:] += g
            return acc

        out = self._reduce(local, self.n + 1)
        f, g = out[0], out[1:].clone()
        gl = self._global()
        if gl is not None:
            fg, gg = gl.value_and_grad(z)
            f, g = f + fg, g + gg
        return f, g

    def hvp(self, z, v):
        z, v = self.as_tensor(z), self.as_tensor(v)
        self.nhev += 1

        def local():
            acc = torch.zeros(self.n, dtype=self.dtype, device=self.device)
            for o in self._local(z):
                acc += o.hvp(z, v)
            return acc

        hv = self._reduce(local, self.n)
        gl = self._global()
        return hv + gl.hvp(z, v) if gl is not None else hv

    def hessian(self, z):
        z = self.as_tensor(z)
        self.nhev += 1

        def local():
            acc = torch.zeros(self.n, self.n, dtype=self.dtype, device=self.device)
            for o in self._local(z):
                acc += o.hessian(z)
            return acc

        H = self._reduce(local, self.n * self.n).reshape(self.n, self.n)
        gl = self._global()
        return H + gl.hessian(z) if gl is not None else H

    def residual_cost(self, z):
        z = self.as_tensor(z)
        self.nfev += 1

        def local():
            acc = torch.zeros((), dtype=self.dtype, device=self.device)
            for o in self._local(z):
                acc = acc + o.residual_cost(z)
            return acc

        c = self._reduce(local, 1)[0]
        gl = self._global()
        return c + gl.residual_cost(z) if gl is not None and gl.has_residuals else c

    def normal_equations(self, z):
        """``(0.5|r|², JᵀJ, Jᵀr)`` accumulated chunk by chunk (each chunk's J is dense)."""
        z = self.as_tensor(z)
        self.nfev += 1
        self.njev += 1
        n = self.n

        def local():
            acc = torch.zeros(1 + n + n * n, dtype=self.dtype, device=self.device)
            for o in self._local(z):
                c, H, g = o.normal_equations(z)
                acc[0] += c
                acc[1:n + 1] += g
                acc[n + 1:] += H.reshape(-1)
            return acc

        out = self._reduce(local, 1 + n + n * n)
        c, g, H = out[0], out[1:n + 1].clone(), out[n + 1:].reshape(n, n).clone()
        gl = self._global()
        if gl is not None and gl.has_residuals:
            cg, Hg, gg = gl.normal_equations(z)
            c, g, H = c + cg, g + gg, H + Hg
        return c, H, g

    def linearize(self, z):
        self.nfev += 1
        self.njev += 1
        return DataLinearization(self, self.as_tensor(z))


class DataLinearization:
    """Gauss–Newton products of a :class:`DataObjective`: sums of per-chunk ones.

    ``cost`` and ``grad`` (``Jᵀr``) come from one pass over the data; each
    ``matvec`` is another pass (or none, when one in-memory chunk is cached).
    """

    def __init__(self, obj: DataObjective, z: torch.Tensor):
        self._obj, self._z = obj, z
        n = obj.n
        self._lins = [] if obj._cache else None
        glob = obj._global()
        self._glin = glob.linearize(z) if glob is not None and glob.has_residuals else None

        def local():
            acc = torch.zeros(n + 1, dtype=obj.dtype, device=obj.device)
            for o in obj._local(z):
                lin = o.linearize(z)
                acc[0] += lin.cost
                acc[1:] += lin.grad
                if self._lins is not None:
                    self._lins.append(lin)
            return acc

        out = obj._reduce(local, n + 1)
        self.cost, self.grad = out[0], out[1:].clone()
        if self._glin is not None:
            self.cost = self.cost + self._glin.cost
            self.grad = self.grad + self._glin.grad

    def _each(self) -> Iterator[Linearization]:
        if self._lins is not None:
            yield from self._lins
        else:
            for o in self._obj._local(self._z):
                yield o.linearize(self._z)

    def matvec(self, v):
        obj = self._obj

        def local():
            acc = torch.zeros(obj.n, dtype=obj.dtype, device=obj.device)
            for lin in self._each():
                acc += lin.matvec(v)
            return acc

        out = obj._reduce(local, obj.n)
        return out + self._glin.matvec(v) if self._glin is not None else out

    def diag(self, probes: int = 16, seed: int = 0):
        """``diag(JᵀJ)``: exact or probed per chunk (see :meth:`Linearization.diag`)."""
        obj = self._obj
        base = int(seed) * 1_000_003 + obj.reducer.rank * 7919

        def local():
            acc = torch.zeros(obj.n, dtype=obj.dtype, device=obj.device)
            for i, lin in enumerate(self._each()):
                acc += lin.diag(probes, base + i)
            return acc

        out = obj._reduce(local, obj.n)
        return out + self._glin.diag(probes, seed) if self._glin is not None else out


def _has_array_scale(lik) -> str | None:
    for attr in ("sigma", "gamma", "scale"):
        v = getattr(lik, attr, None)
        if v is not None and np.ndim(v) > 0:
            return attr
    return None


def build_data_problem(model, x, y, params, *, build_problem, likelihood="gaussian",
                       priors=None, device="cpu", dtype=torch.float64, chunk_size=None,
                       reducer=None):
    """Build the :class:`~gradfit.fitting.Problem` of a fit whose data are in chunks.

    The first chunk goes through :func:`gradfit.fitting.build_problem`, which checks
    the model, parameters and likelihood (and sets a fitted nuisance parameter's
    start from that chunk); a pass over all chunks then checks every chunk (finite,
    valid for the likelihood, model output of the right shape) and counts the data.
    ``build_problem`` is :func:`gradfit.fitting.build_problem`, handed down by the layer
    above so that this module does not import it (no import cycle).
    """
    from .likelihoods import get_likelihood

    lik = get_likelihood(likelihood)
    reducer = reducer if reducer is not None else LocalReducer()
    source = as_source(x, y, chunk_size)
    attr = _has_array_scale(lik)
    if attr is not None and (source.n_chunks != 1 or reducer.world_size > 1):
        raise ValueError(
            f"the likelihood's {attr} is an array; with chunked or distributed data give a "
            f"scalar {attr}, or divide the model and data by the per-point {attr} yourself")
    first = next(iter(source), None)
    if first is None:
        raise ValueError("the chunk source yielded no chunks")
    prob0 = build_problem(model, first[0], first[1], params, likelihood=lik, priors=priors,
                          device=device, dtype=dtype)
    terms = prob0.terms  # a gradfit.fitting.DataTerms
    Problem = type(prob0)
    dev, dt = prob0.device, prob0.dtype
    cache: list = []

    def chunks(check=False):
        if source.in_memory and cache:
            yield from cache
            return
        for i, (xc, yc) in enumerate(source):
            yt = _to_tensor(yc, f"y (chunk {i})", dev, dt, check)
            if check:
                lik.check_data(yt.detach().cpu().numpy())
            xt = _tree_to_tensors(xc, f"x (chunk {i})", dev, dt, check)
            if source.in_memory:
                cache.append((xt, yt))
            yield xt, yt

    # one checking pass: every chunk is finite, valid and fits the model's output shape
    ndata = 0
    theta0 = torch.as_tensor(prob0.space.theta0, device=dev, dtype=dt)
    p0 = prob0.space.unflatten(theta0)
    with torch.no_grad():
        for i, (xt, yt) in enumerate(chunks(check=True)):
            mu = terms.predict(p0, xt)
            if not isinstance(mu, torch.Tensor) or tuple(mu.shape) != tuple(yt.shape):
                shape = tuple(mu.shape) if isinstance(mu, torch.Tensor) else type(mu).__name__
                raise ValueError(f"on chunk {i} the model returned {shape} but y has shape "
                                 f"{tuple(yt.shape)}")
            ndata += int(yt.numel())

    info = {"ndata": ndata}  # the total over ranks replaces it after set-up (fit_data)

    def make(sp):
        return _data_problem(Problem, sp, terms, chunks, reducer, dev, dt, info["ndata"], lik,
                             prob0.gauss_newton, source.in_memory, make)

    prob = make(prob0.space)
    prob.source = source
    prob.data_info = info
    return prob


def _data_problem(Problem, sp, terms, chunks, reducer, dev, dt, ndata, lik, gauss_newton,
                  in_memory, make):
    def nll_c(theta, xc, yc):
        return terms.data_nll(sp.unflatten(theta), xc, yc)

    res_c = None
    if terms.has_residuals:
        def res_c(theta, xc, yc):
            return terms.data_residuals(sp.unflatten(theta), xc, yc)

    g_nll = g_res = None
    if terms.prior_nll is not None:
        def g_nll(theta):
            return terms.prior_nll(sp.unflatten(theta))

        if terms.has_residuals and terms.prior_residuals is not None:
            def g_res(theta):
                return terms.prior_residuals(sp.unflatten(theta))

    def objective_in(to_ext):
        def wrap(f):
            if f is None:
                return None
            if to_ext is None:
                return f
            return lambda z, *a: f(to_ext(z), *a)

        return DataObjective(sp.n_free, wrap(nll_c), wrap(res_c), wrap(g_nll), wrap(g_res),
                             chunks, reducer, device=dev, dtype=dt,
                             cache_linearization=in_memory)

    tobj = objective_in(None)

    def nll(theta):
        return tobj.value(theta)

    def no_residuals(theta):
        return tobj._no_full_residuals(theta)

    prob = Problem(sp, nll, no_residuals if terms.has_residuals else None, dev, dt,
                   ndata=ndata, likelihood=lik, gauss_newton=gauss_newton, rebuild=make)
    prob.in_memory = False
    prob.reducer = reducer
    prob.objective = lambda: objective_in(sp.to_external if sp.bounded else None)
    prob.theta_objective = lambda: tobj

    def rss(theta):
        def local():
            acc = torch.zeros((), dtype=dt, device=dev)
            with torch.no_grad():
                for xc, yc in chunks():
                    r = terms.data_residuals(sp.unflatten(theta), xc, yc)
                    acc = acc + (r * r).sum()
            return acc

        return float(tobj._reduce(local, 1)[0])

    prob.rss = rss
    return prob


def _signature(space) -> str:
    """Names, shapes and free masks of a ParamSpace, comparable across ranks."""
    import hashlib

    parts = [f"{n}{tuple(np.shape(space.init[n]))}" for n in space.names]
    digest = hashlib.sha256(("|".join(parts) + "|" + ",".join(space.labels)).encode())
    text = ", ".join(parts)
    text = text if len(text) <= 200 else text[:200] + "…"
    return f"{space.n_free} free [{text}] #{digest.hexdigest()[:12]}"


def fit_data(model, x, y, params, *, likelihood, method, priors, device, dtype, chunk_size,
             distributed, run_kwargs, build_problem, run_problem):
    """:func:`gradfit.fit` for chunked data (``chunk_size``, a chunk source) or
    ``distributed=True``; ``run_kwargs`` go to ``run_problem``
    (:func:`gradfit.fitting.run_problem`, handed down with ``build_problem``)."""
    from .objective import resolve_device

    if not distributed:
        prob = build_data_problem(model, x, y, params, build_problem=build_problem,
                                  likelihood=likelihood, priors=priors, device=device,
                                  dtype=dtype, chunk_size=chunk_size)
        return run_problem(prob, method, **run_kwargs)
    from . import distributed as dd

    dev = resolve_device(device)
    dd.setup(dev)
    reducer = dd.Reducer(dev)
    prob, err = None, None
    try:
        prob = build_data_problem(model, x, y, params, build_problem=build_problem,
                                  likelihood=likelihood, priors=priors, device=device,
                                  dtype=dtype, chunk_size=chunk_size, reducer=reducer)
    except Exception as exc:  # noqa: BLE001 - every rank raises in check_same
        err = exc
    dd.check_same("" if prob is None else _signature(prob.space), err)
    ndata = int(reducer.sum(torch.tensor([float(prob.ndata)], dtype=torch.float64))[0])
    prob.ndata = prob.data_info["ndata"] = ndata
    # identical starts (a fitted nuisance parameter starts from rank 0's data)
    theta0 = dd.broadcast(torch.as_tensor(prob.space.theta0, dtype=torch.float64), dev)
    res = run_problem(prob, method, theta0=theta0.numpy(), **run_kwargs)
    flat = np.concatenate([np.ravel(np.asarray(res.params[n], dtype=np.float64))
                           for n in prob.space.names])
    dd.check_identical(torch.as_tensor(flat), dev)
    return res
