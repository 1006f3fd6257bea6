"""A compiled batched Levenberg–Marquardt: the model traced once into one fused kernel.

``fit_batch(..., engine="numba")`` runs here. The PyTorch model of one problem is
traced (``make_fx``) into its graph of ATen operations. Operations that depend only
on ``x`` run once, in PyTorch, and become arrays; operations on the parameters are
written out as Python source, each with its forward-mode derivatives (the chain rule
applied node by node: forward-mode automatic differentiation by source
transformation), and compiled by Numba into one kernel per model. The kernel holds the
whole fit of one problem, as Gpufit's and Cpufit's do: per point the model, its
derivatives and the residual; then ``JᵀJ`` and ``Jᵀr``; then the damped step. The
iteration is :func:`gradfit.solvers.batched.batched_lm`'s, step for step (Marquardt's
scaled damping, Nielsen's λ update, the same tests and status codes), so both engines
give the same answers, and ``prange`` spreads the problems over Numba's threads.

What it takes: scalar parameters; ``x`` shared by all problems; a model that is
elementwise in its points once the ``x``-only part is done (every operation on the
parameters gives a shape that broadcasts to the output's, and each value is computed at
every output point; a reshape that would move such a value to other points is refused);
least squares (``Gaussian``) or ``Poisson``; bounds; ``Normal`` priors (a residual
each); float64. Anything else is refused, with the reason (:class:`NotCompilable`). The
generated source is cached on disk, keyed by its hash, so that Numba's own cache can keep
the machine code between processes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

__all__ = ["NotCompilable", "NativeLM", "compile_lm", "cached_kernel", "check_kernel",
           "available", "poisson_nll_offset", "prior_arrays", "refusal"]


class NotCompilable(ValueError):
    """The model or the fit is outside what the compiled engine supports (says what)."""


def numba_threads() -> int:
    """Numba's thread count (``NUMBA_NUM_THREADS``, default: the cores)."""
    import numba

    return int(numba.get_num_threads())


def available() -> bool:
    """Whether Numba can be imported."""
    return importlib.util.find_spec("numba") is not None


_PARALLEL_LOCK = threading.Lock()


@contextmanager
def _parallel_section():
    """Around every call of a ``parallel=True`` kernel: one at a time unless Numba's
    threading layer takes concurrent launches (OpenMP, TBB). Its fallback, workqueue,
    ends the process ("concurrent access has been detected") when two Python threads
    launch at once, e.g. fit_batch called from a thread pool or threaded Dask workers."""
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel launch yet: the layer is chosen by this one
        layer = None
    if layer in ("omp", "tbb"):
        yield
    else:
        with _PARALLEL_LOCK:
            yield


# ------------------------------------------------------------------ derivative rules
# Each operation gives its value expression and the local partial derivative with
# respect to each operand, as expressions in the operands ``a`` (``b``) and in its own
# value ``v``. Scalars of the parameters (per problem) carry forward-mode derivatives;
# per-point values are differentiated in reverse mode, point by point (one backward
# sweep gives the model's derivative with respect to every parameter at that point).

def _unary(value, slope, curve=None):
    """``value(a)``, its slope ``f'(a, v)`` and curvature ``f''(a, v)`` (None: zero)."""
    return value, slope, curve


_SQPI = repr(2.0 / math.sqrt(math.pi))
_UNARY = {
    "neg": _unary(lambda a: f"-{a}", lambda a, v: "-1.0"),
    "exp": _unary(lambda a: f"math.exp({a})", lambda a, v: v, lambda a, v: v),
    "log": _unary(lambda a: f"math.log({a})", lambda a, v: f"1.0 / {a}",
                  lambda a, v: f"-1.0 / ({a} * {a})"),
    "log1p": _unary(lambda a: f"math.log1p({a})", lambda a, v: f"1.0 / (1.0 + {a})",
                    lambda a, v: f"-1.0 / ((1.0 + {a}) * (1.0 + {a}))"),
    "expm1": _unary(lambda a: f"math.expm1({a})", lambda a, v: f"({v} + 1.0)",
                    lambda a, v: f"({v} + 1.0)"),
    "sin": _unary(lambda a: f"math.sin({a})", lambda a, v: f"math.cos({a})",
                  lambda a, v: f"-{v}"),
    "cos": _unary(lambda a: f"math.cos({a})", lambda a, v: f"-math.sin({a})",
                  lambda a, v: f"-{v}"),
    "tan": _unary(lambda a: f"math.tan({a})", lambda a, v: f"(1.0 + {v} * {v})",
                  lambda a, v: f"2.0 * {v} * (1.0 + {v} * {v})"),
    "sinh": _unary(lambda a: f"math.sinh({a})", lambda a, v: f"math.cosh({a})",
                   lambda a, v: v),
    "cosh": _unary(lambda a: f"math.cosh({a})", lambda a, v: f"math.sinh({a})",
                   lambda a, v: v),
    "tanh": _unary(lambda a: f"math.tanh({a})", lambda a, v: f"(1.0 - {v} * {v})",
                   lambda a, v: f"-2.0 * {v} * (1.0 - {v} * {v})"),
    "atan": _unary(lambda a: f"math.atan({a})", lambda a, v: f"1.0 / (1.0 + {a} * {a})",
                   lambda a, v: f"-2.0 * {a} / ((1.0 + {a} * {a}) * (1.0 + {a} * {a}))"),
    "sqrt": _unary(lambda a: f"math.sqrt({a})", lambda a, v: f"0.5 / {v}",
                   lambda a, v: f"-0.25 / ({v} * {a})"),
    "rsqrt": _unary(lambda a: f"1.0 / math.sqrt({a})", lambda a, v: f"-0.5 * {v} / {a}",
                    lambda a, v: f"0.75 * {v} / ({a} * {a})"),
    "reciprocal": _unary(lambda a: f"1.0 / {a}", lambda a, v: f"-{v} * {v}",
                         lambda a, v: f"2.0 * {v} * {v} * {v}"),
    "square": _unary(lambda a: f"{a} * {a}", lambda a, v: f"2.0 * {a}", lambda a, v: "2.0"),
    "sigmoid": _unary(lambda a: f"1.0 / (1.0 + math.exp(-{a}))",
                      lambda a, v: f"{v} * (1.0 - {v})",
                      lambda a, v: f"{v} * (1.0 - {v}) * (1.0 - 2.0 * {v})"),
    "erf": _unary(lambda a: f"math.erf({a})", lambda a, v: f"{_SQPI} * math.exp(-{a} * {a})",
                  lambda a, v: f"-2.0 * {a} * {_SQPI} * math.exp(-{a} * {a})"),
    # torch's: d|a| = sgn(a) da, with sgn(0) = 0
    "abs": _unary(lambda a: f"abs({a})",
                  lambda a, v: f"(1.0 if {a} > 0 else (-1.0 if {a} < 0 else 0.0))"),
}
#: shape-preserving operations that pass the value through
_IDENTITY = {"clone", "alias", "_to_copy", "view", "reshape", "expand", "lift_fresh_copy",
             "detach", "contiguous", "_unsafe_view", "squeeze", "unsqueeze"}
_COMPARE = {"gt": ">", "lt": "<", "ge": ">=", "le": "<=", "eq": "==", "ne": "!="}
_TABLE = ("elementwise arithmetic, exp, log, powers, trigonometric and hyperbolic "
          "functions, sqrt, abs, erf, comparisons, where, clamp")


def _strip(shape) -> tuple:
    """``shape`` without its leading 1s."""
    shape = tuple(shape)
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


def _num(c) -> str:
    if isinstance(c, bool):
        return "1.0" if c else "0.0"
    if isinstance(c, int | float):
        return repr(float(c))
    raise NotCompilable(f"constant {c!r} of type {type(c).__name__}")


class _Node:
    """A value in the generated code.

    ``kind``: 'P' a scalar of the parameters (per problem, with forward derivatives
    ``d``: free index -> expression), 'M' a value per point (``deps``: the free
    parameters it depends on), 'X' an x-only array read at point i, 'C' a number,
    'B' a boolean, 'T' an x-only tensor not yet used.
    """

    __slots__ = ("kind", "expr", "d", "deps")

    def __init__(self, kind, expr=None, d=None, deps=frozenset()):
        self.kind = kind
        self.expr = expr
        self.d = d or {}
        self.deps = frozenset(self.d) if kind == "P" else frozenset(deps)


class _Translator:
    """ATen graph -> the source of the model's value and derivatives at point ``i``."""

    def __init__(self, gm, n_all, free_pos, x_values, out_shape):
        self.gm = gm
        self.n_all = n_all
        self.free_of = {int(k): j for j, k in enumerate(free_pos)}
        self.out_shape = tuple(out_shape)
        self.m = int(np.prod(out_shape)) if out_shape else 1
        self.pro: list[str] = []     # per problem (the scalars and their derivatives)
        self.loop: list[str] = []    # per point, values
        self.tape: list = []         # per point: (node, [(operand, partial)]) in order
        self.graph: list = []        # every node: (node, partials, second partials)
        self.arrays: list[np.ndarray] = []  # x-only arrays, flattened to the points
        self.values = x_values       # fx node -> its concrete tensor (x-only nodes)
        self.k = 0

    # ---------------------------------------------------------------- emission
    def _fresh(self, prefix="v"):
        self.k += 1
        return f"{prefix}{self.k}"

    def _node(self, kind, expr, partials, second=()):
        """Bind ``expr`` to a fresh name; record its derivatives (forward for a scalar of
        the parameters, on the tape for a per-point value), and its first and second
        partials for the Hessian (:meth:`hessian_lines`)."""
        v = self._fresh()
        live = [(o, p) for o, p in partials if o.deps]
        curv = [(o1, o2, c) for o1, o2, c in second if o1.deps and o2.deps]
        if kind == "P":
            self.pro.append(f"{v} = {expr}")
            d = {}
            for j in sorted(set().union(*(o.deps for o, _ in live)) if live else ()):
                terms = [f"({p}) * {o.d[j]}" for o, p in live if j in o.d]
                d[j] = nm = f"d{v[1:]}_{j}"
                self.pro.append(f"{nm} = " + " + ".join(terms))
            node = _Node("P", v, d)
        else:
            self.loop.append(f"{v} = {expr}")
            node = _Node("M", v, deps=frozenset().union(*(o.deps for o, _ in live)) if live
                         else frozenset())
            if live:
                self.tape.append((node, live))
        if live:
            self.graph.append((node, live, curv))
        return node

    def _array(self, t: torch.Tensor, what: str) -> _Node:
        """An x-only tensor as a per-point array (broadcast to the output's shape)."""
        t = t.detach()
        if t.dim() == 0:
            return _Node("C", _num(float(t)))
        try:
            arr = torch.broadcast_to(t, self.out_shape)
        except RuntimeError:
            raise NotCompilable(
                f"{what} has an x-only operand of shape {tuple(t.shape)}, which does not "
                f"broadcast to the model's output shape {self.out_shape}") from None
        self.arrays.append(np.ascontiguousarray(
            arr.to(torch.float64).cpu().numpy().reshape(-1)))
        return _Node("X", f"x{len(self.arrays) - 1}[i]")

    def _operand(self, a, env, what):
        if isinstance(a, torch.fx.Node):
            nd = env[a]
            if nd.kind == "T":  # an x-only tensor, made an array where it is used
                nd = env[a] = self._array(self.values[a], what)
            return nd
        if a is None:
            return None
        return _Node("C", _num(a))

    # ------------------------------------------------------------- translation
    def translate(self) -> _Node:
        env = {}
        n_param = 0
        for node in self.gm.graph.nodes:
            op = node.op
            if op == "placeholder":
                if n_param < self.n_all:
                    j = self.free_of.get(n_param)
                    env[node] = _Node("P", f"pa[{n_param}]", {} if j is None else {j: "1.0"})
                    n_param += 1
                else:
                    env[node] = _Node("T")
            elif op == "get_attr":
                env[node] = _Node("T")
            elif op == "output":
                res = node.args[0]
                if isinstance(res, tuple | list):
                    if len(res) != 1:
                        raise NotCompilable("the model returns more than one tensor")
                    res = res[0]
                return self._output(env, res)
            elif op != "call_function":
                raise NotCompilable(f"graph node {op} {node.target}")
            elif all(env[a].kind == "T" for a in node.all_input_nodes):
                env[node] = _Node("T")  # x only: computed once, in torch
            else:
                env[node] = self._call(node, env)
        raise NotCompilable("the traced graph has no output")

    def _call(self, node, env):
        full = str(node.target)  # "aten.sub.Tensor"
        parts = full.split(".")
        name = parts[1] if len(parts) > 1 and parts[0] == "aten" else full
        where = f"operation {full}"
        shape = tuple(node.meta["val"].shape) if "val" in node.meta else None
        # every value is computed at every point of the output, its operands broadcast
        # there: right for elementwise operations on any shapes that broadcast to it
        if shape is None or not self._broadcasts(shape):
            raise NotCompilable(
                f"{where} gives shape {shape} where the model's output has shape "
                f"{self.out_shape}: the compiled engine takes models that are elementwise in "
                "their points (the x-only part may be anything)")
        args = list(node.args)
        if name in _IDENTITY:
            if name == "_to_copy" and node.kwargs.get("dtype") not in (None, torch.float64):
                raise NotCompilable(f"{where} to {node.kwargs.get('dtype')}")
            src = self._operand(args[0], env, where)
            if src.kind == "M" and name != "expand":
                # a reshape moves per-point values to other points, unless it only adds
                # or drops leading 1s (broadcasting aligns the trailing axes)
                before = tuple(args[0].meta["val"].shape)
                if _strip(before) != _strip(shape):
                    raise NotCompilable(
                        f"{where} reshapes a value that depends on the parameters "
                        f"({before} -> {shape}); write it with broadcasting, or do the "
                        "reshaping on x alone")
            if src.kind == "P" and shape == self.out_shape:  # a scalar spread over the points
                return self._node("M", src.expr, [(src, "1.0")])  # (no curvature)
            return src
        ops = [self._operand(a, env, where) if isinstance(a, torch.fx.Node | int | float)
               or a is None else a for a in args]
        if any(o is not None and not isinstance(o, _Node) for o in ops):
            raise NotCompilable(f"{where} with arguments {args!r}")
        kinds = {o.kind for o in ops if o is not None}
        per_point = bool(kinds & {"M", "X"}) or shape == self.out_shape
        kind = "M" if per_point else "P"
        if "B" in kinds and name != "where":
            raise NotCompilable(f"{where} on a boolean")
        if name in _COMPARE and len(ops) == 2:
            c = self._fresh("c")
            (self.loop if per_point else self.pro).append(
                f"{c} = {ops[0].expr} {_COMPARE[name]} {ops[1].expr}")
            return _Node("B", c)
        expr, partials, second = self._rule(name, node, ops, where)
        return self._node(kind, expr, partials, second)

    def _broadcasts(self, shape) -> bool:
        try:
            return tuple(torch.broadcast_shapes(shape, self.out_shape)) == self.out_shape
        except RuntimeError:
            return False

    def _rule(self, name, node, ops, where):
        """(value expression, [(operand, partial)], [(operand, operand, second partial)]);
        partials that name the node's own value get the name it is about to have."""
        v = f"v{self.k + 1}"
        if name in _UNARY and len(ops) == 1:
            val, slope, curve = _UNARY[name]
            a = ops[0]
            c = curve(a.expr, v) if curve else None
            return val(a.expr), [(a, slope(a.expr, v))], ([(a, a, c)] if c else [])
        if name in ("add", "sub", "rsub") and len(ops) == 2:
            a, b = ops
            alpha = float(node.kwargs.get("alpha", 1.0))
            if name == "rsub":
                return f"{b.expr} - {alpha!r} * {a.expr}", [(a, repr(-alpha)), (b, "1.0")], []
            sgn = alpha if name == "add" else -alpha
            bexpr = b.expr if sgn == 1.0 else f"{sgn!r} * {b.expr}"
            return f"{a.expr} + {bexpr}", [(a, "1.0"), (b, repr(sgn))], []
        if name == "mul" and len(ops) == 2:
            a, b = ops
            return f"{a.expr} * {b.expr}", [(a, b.expr), (b, a.expr)], [(a, b, "1.0")]
        if name == "div" and len(ops) == 2 and not node.kwargs.get("rounding_mode"):
            a, b = ops
            return (f"{a.expr} / {b.expr}", [(a, f"1.0 / {b.expr}"), (b, f"-{v} / {b.expr}")],
                    [(a, b, f"-1.0 / ({b.expr} * {b.expr})"),
                     (b, b, f"2.0 * {v} / ({b.expr} * {b.expr})")])
        if name == "pow" and len(ops) == 2:
            a, b = ops
            if b.kind == "C":
                c = float(b.expr)
                if c == 2.0:
                    return f"{a.expr} * {a.expr}", [(a, f"2.0 * {a.expr}")], [(a, a, "2.0")]
                if c == 1.0:
                    return a.expr, [(a, "1.0")], []
                if c == float(int(c)) and abs(c) <= 8:
                    k = int(c)
                    return (f"{a.expr} ** {k}", [(a, f"{c!r} * {a.expr} ** {k - 1}")],
                            [(a, a, f"{c * (c - 1)!r} * {a.expr} ** {k - 2}")])
                return (f"{a.expr} ** {c!r}", [(a, f"{c!r} * {a.expr} ** {c - 1.0!r}")],
                        [(a, a, f"{c * (c - 1)!r} * {a.expr} ** {c - 2.0!r}")])
            lg = f"math.log({a.expr})"
            if a.kind == "C":
                return (f"{a.expr} ** {b.expr}", [(b, f"{v} * {lg}")],
                        [(b, b, f"{v} * {lg} * {lg}")])
            return (f"{a.expr} ** {b.expr}",
                    [(a, f"{b.expr} * {a.expr} ** ({b.expr} - 1.0)"), (b, f"{v} * {lg}")],
                    [(a, a, f"{b.expr} * ({b.expr} - 1.0) * {a.expr} ** ({b.expr} - 2.0)"),
                     (a, b, f"{a.expr} ** ({b.expr} - 1.0) * (1.0 + {b.expr} * {lg})"),
                     (b, b, f"{v} * {lg} * {lg}")])
        if name == "atan2" and len(ops) == 2:
            a, b = ops
            den = f"({a.expr} * {a.expr} + {b.expr} * {b.expr})"
            den2 = f"({den} * {den})"
            return (f"math.atan2({a.expr}, {b.expr})",
                    [(a, f"{b.expr} / {den}"), (b, f"-{a.expr} / {den}")],
                    [(a, a, f"-2.0 * {a.expr} * {b.expr} / {den2}"),
                     (a, b, f"({a.expr} * {a.expr} - {b.expr} * {b.expr}) / {den2}"),
                     (b, b, f"2.0 * {a.expr} * {b.expr} / {den2}")])
        if name == "where" and len(ops) == 3:
            c, a, b = ops
            if c.kind != "B":
                raise NotCompilable(f"{where} with a condition that is not a comparison")
            return (f"({a.expr} if {c.expr} else {b.expr})",
                    [(a, f"(1.0 if {c.expr} else 0.0)"), (b, f"(0.0 if {c.expr} else 1.0)")],
                    [])
        if name in ("clamp", "clamp_min", "clamp_max") and ops:
            a, lims = ops[0], list(ops[1:]) + [None, None]
            lo, hi = (lims[0], lims[1]) if name == "clamp" else \
                ((lims[0], None) if name == "clamp_min" else (None, lims[0]))
            expr, inside = a.expr, []
            for lim, fn, cmp in ((lo, "max", ">="), (hi, "min", "<=")):
                if lim is None:
                    continue
                if lim.deps or lim.kind == "M":
                    raise NotCompilable(f"{where} with a limit that depends on the parameters")
                expr = f"{fn}({expr}, {lim.expr})"
                inside.append(f"{a.expr} {cmp} {lim.expr}")
            cond = " and ".join(inside) or "True"
            return expr, [(a, f"(1.0 if {cond} else 0.0)")], []
        raise NotCompilable(f"{where} is not in the compiled engine's table: it takes models "
                            f"that are elementwise in their points, built from {_TABLE}; "
                            "use engine='torch'")

    def _output(self, env, res) -> _Node:
        if not isinstance(res, torch.fx.Node):
            raise NotCompilable("the model's output is not a tensor")
        nd = env[res]
        if nd.kind in ("T", "X", "C"):
            raise NotCompilable("the model's output does not depend on the parameters")
        if nd.kind == "B":
            raise NotCompilable("the model's output is boolean")
        if nd.kind == "P":
            nd = self._node("M", nd.expr, [(nd, "1.0")])
        return nd

    # ------------------------------------------------------- second derivatives
    def hessian_lines(self, out: _Node, nf: int):
        """Forward-mode first and second derivatives of every node (for the Hessian of
        a likelihood that is not least squares): lines per problem, lines per point, and
        ``d mu/d theta_j``, ``d² mu/d theta_j d theta_l`` (j <= l) as expressions."""
        pro, loop = [], []
        grad, hess = {}, {}  # id(node) -> {j: expr}, {(j, l): name}

        def G(o, j):
            if o.kind == "P":
                return o.d.get(j)
            return grad.get(id(o), {}).get(j)

        def H(o, j, l):
            return hess.get(id(o), {}).get((j, l))

        for node, live, curv in self.graph:
            lines = pro if node.kind == "P" else loop
            name = node.expr[1:]
            deps = sorted(node.deps)
            if node.kind == "M":
                gd = {}
                for j in deps:
                    terms = [f"({p}) * {G(o, j)}" for o, p in live if G(o, j) is not None]
                    if terms:
                        gd[j] = f"g{name}_{j}"
                        lines.append(f"{gd[j]} = " + " + ".join(terms))
                grad[id(node)] = gd
            hd = {}
            for ia, j in enumerate(deps):
                for l in deps[ia:]:
                    terms = [f"({p}) * {H(o, j, l)}" for o, p in live
                             if H(o, j, l) is not None]
                    for o1, o2, c in curv:
                        pairs = [(G(o1, j), G(o2, l))]
                        if o1 is not o2:
                            pairs.append((G(o2, j), G(o1, l)))
                        prods = [f"{u} * {w}" for u, w in pairs if u is not None and w is not None]
                        if prods:
                            terms.append(f"({c}) * (" + " + ".join(prods) + ")")
                    if terms:
                        hd[(j, l)] = f"h{name}_{j}_{l}"
                        lines.append(f"{hd[(j, l)]} = " + " + ".join(terms))
            hess[id(node)] = hd
        gmu = {j: G(out, j) for j in range(nf) if G(out, j) is not None}
        hmu = {(j, l): H(out, j, l) for j in range(nf) for l in range(j, nf)
               if H(out, j, l) is not None}
        return pro, loop, gmu, hmu

    # ----------------------------------------------------------- reverse sweep
    def backward(self, out: _Node, nf: int) -> tuple[list[str], list[str]]:
        """Lines of the reverse sweep at point i, and the n derivative expressions
        ``d mu / d theta_j``."""
        lines, adj = [], {id(out): "1.0"}
        names = {}
        pleaf = {}  # id(P node) -> (node, adjoint name)

        def add(o, term):
            key = id(o)
            if o.kind == "P":
                if key not in pleaf:
                    pleaf[key] = (o, self._fresh("ap"))
                    lines.append(f"{pleaf[key][1]} = {term}")
                else:
                    lines.append(f"{pleaf[key][1]} += {term}")
                return
            if key not in names:
                names[key] = self._fresh("a")
                lines.append(f"{names[key]} = {term}")
            else:
                lines.append(f"{names[key]} += {term}")
            adj[key] = names[key]

        for node, partials in reversed(self.tape):
            a = adj.get(id(node))
            if a is None:
                continue
            for o, p in partials:
                term = p if a == "1.0" else (a if p == "1.0" else f"{a} * ({p})")
                add(o, term)
        cols = []
        for j in range(nf):
            terms = [f"{an} * {o.d[j]}" if o.d[j] != "1.0" else an
                     for o, an in pleaf.values() if j in o.d]
            cols.append(" + ".join(terms) if terms else "0.0")
        return lines, cols


# ------------------------------------------------------------------ the kernel source
_HEADER = '''\
# generated by gradfit.solvers.native from a traced model; do not edit
import math
import numba
import numpy as np

NF = {nf}
M = {m}
NT = {nt}
NY = {ny}
EPS = {eps!r}
# exp and log as loops LLVM vectorises (math.exp and math.log are calls it cannot):
# Cody-Waite reduction, then a polynomial (exp: Taylor to degree 13 on |r| <= ln2/2;
# log: fdlibm's on [sqrt(2)/2, sqrt(2)]), within 1 ulp; the powers of two go through the
# bits of an integer view of a scratch row. Below exp(-708.39) (2.2e-308) exp gives 0,
# not a subnormal. No fastmath here: it would fold the rounding shift away.
LOG2E = 1.4426950408889634
LN2HI = 6.93147180369123816490e-01
LN2LO = 1.90821492927058770002e-10
SHIFT = 6755399441055744.0  # 1.5 * 2**52: x + SHIFT rounds x to an integer k ...
SHIFT_BITS = 0x4338000000000000  # ... held in the low bits of its float
TINY = 2.2250738585072014e-308


@numba.njit(cache=True, error_model="numpy")
def _vexp(v, kb):
    """v = exp(v) in place (kb: a scratch row)."""
    ki = kb.view(np.int64)
    for i in range(v.shape[0]):
        xo = v[i]
        x = min(max(xo, -708.39), 709.79)
        kf = x * LOG2E + SHIFT
        k = kf - SHIFT
        r = (x - k * LN2HI) - k * LN2LO
        p = 1.0 + r * (1.0 + r * (0.5 + r * (1.6666666666666666e-01 + r * (
            4.1666666666666664e-02 + r * (8.3333333333333332e-03 + r * (
                1.3888888888888889e-03 + r * (1.9841269841269841e-04 + r * (
                    2.4801587301587302e-05 + r * (2.7557319223985893e-06 + r * (
                        2.7557319223985888e-07 + r * (2.5052108385441720e-08 + r * (
                            2.0876756987868100e-09 + r * 1.6059043836821613e-10))))))))))))
        p = p * 2.0 if k > 0.0 else p  # 2**k as 2 * 2**(k-1): k = 1024 stays finite
        # out of range: inf, 0 or NaN here, which the power of two keeps
        v[i] = p if -708.39 <= xo <= 709.782712893384 else (
            math.inf if xo > 0.0 else (0.0 if xo < 0.0 else xo))
        kb[i] = kf
    for i in range(v.shape[0]):
        d = ki[i] - SHIFT_BITS
        ki[i] = (d + (1022 if d > 0 else 1023)) << 52
    for i in range(v.shape[0]):
        v[i] *= kb[i]


@numba.njit(cache=True, error_model="numpy")
def _vlog(v, fb, kb):
    """v = log(v) in place (fb, kb: scratch rows)."""
    ib = fb.view(np.int64)
    for i in range(v.shape[0]):
        x = v[i]
        fb[i] = x * 18014398509481984.0 if x < TINY else x  # subnormals: times 2**54
    for i in range(v.shape[0]):
        hx = (ib[i] >> 32) + (0x3ff00000 - 0x3fe6a09e)
        kb[i] = (hx >> 20) - 0x3ff
        ib[i] = (((hx & 0x000fffff) + 0x3fe6a09e) << 32) | (ib[i] & 0xffffffff)
    for i in range(v.shape[0]):
        x = v[i]
        k = kb[i] - (54.0 if x < TINY else 0.0)
        f = fb[i] - 1.0
        hfsq = 0.5 * f * f
        s = f / (2.0 + f)
        z = s * s
        w = z * z
        R = (z * (6.666666666666735130e-01 + w * (2.857142874366239149e-01 + w * (
            1.818357216161805012e-01 + w * 1.479819860511658591e-01)))
             + w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01
                                                    + w * 1.531383769920937332e-01)))
        lg = s * (hfsq + R) + k * LN2LO - hfsq + f + k * LN2HI
        v[i] = (lg if x < math.inf else x) if x > 0.0 else (-math.inf if x == 0.0
                                                            else math.nan)


{accumulate}

@numba.njit(cache=True, error_model="numpy", fastmath={{"contract", "arcp", "reassoc"}})
def normal(pa, y, sw, {xargs}D, R, T, A, g):
    """½|r|² at the parameters ``pa``; fills JᵀJ (A) and Jᵀr (g); T is scratch."""
{prologue}
{passes}
    cost = 0.0
    for i in range(M):
{loop}
    _accumulate(D, R, A, g)
    return 0.5 * cost
'''

_GAUSSIAN = [
    "r = (y[0, i] - mu) * sw[i]",
    "s = -sw[i]",
]

# the deviance residual and its slope as likelihoods.poisson_deviance_parts and
# batch._poisson_residual_and_slope compute them (float64: the series below 1e-4), with
# 1/y from prepare (y[1]) and one reciprocal of sqrt(q): four divisions, not seven
_POISSON = [
    "yi = y[0, i]",
    "iy = y[1, i]",
    "dd = yi - mu",
    "ysafe = yi if yi > 0.0 else 1.0",
    "ylogy = yi * math.log(ysafe / mu) if yi > 0.0 else 0.0",
    "dev = 2.0 * (mu - yi + ylogy)",
    "near = abs(dd) <= 1e-4 * yi",
    "t = dd * iy",
    "dsafe = 1.0 if near else dd",
    "q = (1.0 + t * (2.0 / 3 + t * (0.5 + t * 0.4))) * iy if near else dev / (dsafe * dsafe)",
    "sq = math.sqrt(q) if q > 0.0 else (0.0 if q <= 0.0 else q)",
    "isq = 1.0 / sq",
    "r = dd * sq",
    "s = (-sq - dd * (2.0 / 3 + t * (1.0 + 1.2 * t)) * (iy * iy) * (0.5 * isq)) "
    "if near else -isq / mu",
]

#: what the data rows y[1:] hold beside the counts (y (NY, M)), made once per problem
_PREPARE = {"gaussian": '''

@numba.njit(cache=True, error_model="numpy")
def prepare(y, T):
    return None
''', "poisson": '''

@numba.njit(cache=True, error_model="numpy")
def prepare(y, T):
    """y[1] = 1/y (1 where y = 0)."""
    for i in range(M):
        yi = y[0, i]
        y[1, i] = 1.0 / yi if yi > 0.0 else 1.0
'''}

_LM = '''

@numba.njit(cache=True, error_model="numpy")
def _cholesky(Mx):
    n = Mx.shape[0]
    for j in range(n):
        t = Mx[j, j]
        for k in range(j):
            t -= Mx[j, k] * Mx[j, k]
        if not t > 0.0:
            return False
        t = math.sqrt(t)
        Mx[j, j] = t
        for i in range(j + 1, n):
            q = Mx[i, j]
            for k in range(j):
                q -= Mx[i, k] * Mx[j, k]
            Mx[i, j] = q / t
    return True


@numba.njit(cache=True, error_model="numpy")
def _solve(L, b, x):
    n = L.shape[0]
    for i in range(n):
        t = b[i]
        for k in range(i):
            t -= L[i, k] * x[k]
        x[i] = t / L[i, i]
    for i in range(n - 1, -1, -1):
        t = x[i]
        for k in range(i + 1, n):
            t -= L[k, i] * x[k]
        x[i] = t / L[i, i]


@numba.njit(cache=True, error_model="numpy")
def _finite(A):
    s = 0.0
    for v in A.ravel():
        s += v
    return math.isfinite(s)


@numba.njit(cache=True, error_model="numpy")
def _external(z, free, kind, lo, hi, pa, sl):
    """pa[free] = theta(z) and sl = dtheta/dz, as ParamSpace.to_external and
    external_slope (0: unbounded; 1: lo + (hi - lo) sigmoid(z); 2: lo + softplus(z);
    3: hi - softplus(z); torch's softplus is z itself above 20)."""
    for j in range(z.shape[0]):
        k = kind[j]
        zj = z[j]
        if k == 0:
            pa[free[j]] = zj
            sl[j] = 1.0
        else:
            sg = 1.0 / (1.0 + math.exp(-zj))
            if k == 1:
                pa[free[j]] = lo[j] + (hi[j] - lo[j]) * sg
                sl[j] = (hi[j] - lo[j]) * sg * (1.0 - sg)
            else:
                sp = zj if zj > 20.0 else math.log1p(math.exp(zj))
                d = 1.0 if zj > 20.0 else sg
                if k == 2:
                    pa[free[j]] = lo[j] + sp
                    sl[j] = d
                else:
                    pa[free[j]] = hi[j] - sp
                    sl[j] = -d


@numba.njit(cache=True, error_model="numpy")
def normal_z(z, free, kind, lo, hi, pm, pw, pa, sl, bounded, y, sw, {xargs}D, R, T, A, g):
    """The normal equations in z: those in theta with the residuals (theta_j - pm_j) pw_j
    of Normal priors (pw_j = 1/sigma_j; 0: none) appended, scaled by dtheta/dz (the
    chain rule)."""
    _external(z, free, kind, lo, hi, pa, sl)
    cost = normal(pa, y, sw, {xcall}D, R, T, A, g)
    for j in range(NF):
        w = pw[j]
        if w != 0.0:
            d = (pa[free[j]] - pm[j]) * w
            cost += 0.5 * d * d
            g[j] += d * w
            A[j, j] += w * w
    if bounded:
        for j in range(NF):
            g[j] *= sl[j]
            for k in range(NF):
                A[j, k] *= sl[j] * sl[k]
    return cost


@numba.njit(cache=True, error_model="numpy")
def lm_one(pa, z, free, kind, lo, hi, pm, pw, y, sw, {xargs}max_iter, gtol, ftol, xtol, A,
           work, D, R, T):
    """One problem, from z (its start, the free parameters in the unconstrained space; pa
    holds the fixed ones), as batched_lm steps it.

    Returns (cost, code, nit, nfev); z and pa hold the answer, A its JᵀJ (in z)."""
    n = NF
    g, gn, p, Dg, sd, gs, tmp = work[0], work[1], work[2], work[3], work[4], work[5], work[6]
    zt, sl = work[7], work[8]
    bounded = False
    for j in range(n):
        if kind[j] != 0:
            bounded = True
    An = np.empty((n, n))
    Mx = np.empty((n, n))
    pt = pa.copy()
    cost = normal_z(z, free, kind, lo, hi, pm, pw, pa, sl, bounded, y, sw, {xcall}D, R, T, A, g)
    nfev = 1
    nit = 0
    code = 0
    if not math.isfinite(cost):
        code = -2
    elif not _finite(A):
        code = -3
    elif cost == 0.0:
        code = 4
    if code == 0 and max_iter <= 0:
        code = -1
    lam = 1e-3
    nu = 2.0
    for j in range(n):
        Dg[j] = 0.0
    while code == 0:
        fnorm = math.sqrt(2.0 * cost)
        gcos = 0.0
        for j in range(n):
            cn = math.sqrt(A[j, j])
            if cn > 0:
                c = abs(g[j]) / (cn * fnorm)
                if c > gcos or c != c:
                    gcos = c
        if gcos <= gtol:
            code = 1
            break
        for j in range(n):
            Dg[j] = max(Dg[j], A[j, j])
            if not Dg[j] > 0:
                Dg[j] = 1.0
            sd[j] = math.sqrt(Dg[j])
        for j in range(n):
            for k in range(n):
                Mx[j, k] = A[j, k] / (sd[j] * sd[k])
            Mx[j, j] += lam
            gs[j] = g[j] / sd[j]
        solved = _cholesky(Mx)
        if solved:
            _solve(Mx, gs, tmp)
            for j in range(n):
                p[j] = -tmp[j] / sd[j]
                if not math.isfinite(p[j]):
                    solved = False
        if not solved:
            for j in range(n):
                p[j] = 0.0
        for j in range(n):
            zt[j] = z[j] + p[j]
        cost_new = normal_z(zt, free, kind, lo, hi, pm, pw, pt, tmp, bounded, y, sw, {xcall}D, R, T,
                             An, gn)
        gp = 0.0
        pAp = 0.0
        for j in range(n):
            gp += g[j] * p[j]
            s = 0.0
            for k in range(n):
                s += A[j, k] * p[k]
            pAp += p[j] * s
        pred = -(gp + 0.5 * pAp)
        actred = cost - cost_new
        ok = solved and math.isfinite(cost_new) and _finite(An) and actred > 0
        rho = actred / pred if pred > 0 else 0.0
        if ok:
            lam = lam * max(1.0 - (2.0 * rho - 1.0) ** 3, 1.0 / 3.0)
            nu = 2.0
            for j in range(n):
                z[j] = zt[j]
                pa[free[j]] = pt[free[j]]
                g[j] = gn[j]
                for k in range(n):
                    A[j, k] = An[j, k]
        else:
            lam = lam * nu
            nu = 2.0 * nu
        rel = cost if cost > 0 else 1.0
        small_red = ok and actred <= ftol * rel and pred <= ftol * rel
        pn = 0.0
        zn = 0.0
        for j in range(n):
            pn += p[j] * p[j]
            zn += z[j] * z[j]
        small_step = ok and math.sqrt(pn) <= xtol * (math.sqrt(zn) + xtol)
        if ok:
            cost = cost_new
        if small_red:
            code = 2
        elif small_step:
            code = 3
        elif cost == 0.0:
            code = 4
        elif (not ok) and solved and pred <= 4 * EPS * rel:
            code = 5
        elif lam > 1e16:
            code = -4
        nit += 1
        nfev += 1
        if code == 0 and nit >= max_iter:
            code = -1
    return cost, code, nit, nfev


@numba.njit(cache=True, error_model="numpy")
def _fit_row(b, P, Z, free, kind, lo, hi, pm, pw, Y, sw, {xargs}max_iter, gtol, ftol, xtol,
             cost, code, nit, nfev, A, work, D, R, T, yw):
    for i in range(M):
        yw[0, i] = Y[b, i]
    prepare(yw, T)
    cost[b], code[b], nit[b], nfev[b] = lm_one(P[b], Z[b], free, kind, lo, hi, pm, pw, yw, sw,
                                               {xcall}max_iter, gtol, ftol, xtol, A[b], work, D,
                                               R, T)


@numba.njit(cache=True, parallel=True, error_model="numpy")
def lm_all(P, Z, free, kind, lo, hi, pm, pw, Y, sw, {xargs}max_iter, gtol, ftol, xtol,
           cost, code, nit, nfev, A):
    for b in numba.prange(P.shape[0]):
        _fit_row(b, P, Z, free, kind, lo, hi, pm, pw, Y, sw, {xcall}max_iter, gtol, ftol,
                 xtol, cost, code, nit, nfev, A, np.empty((9, NF)), np.empty((NF, M)),
                 np.empty(M), np.empty((NT, M)), np.empty((NY, M)))


@numba.njit(cache=True, error_model="numpy")
def lm_serial(P, Z, free, kind, lo, hi, pm, pw, Y, sw, {xargs}max_iter, gtol, ftol, xtol,
              cost, code, nit, nfev, A):
    work, D, R, T = np.empty((9, NF)), np.empty((NF, M)), np.empty(M), np.empty((NT, M))
    yw = np.empty((NY, M))
    for b in range(P.shape[0]):
        _fit_row(b, P, Z, free, kind, lo, hi, pm, pw, Y, sw, {xcall}max_iter, gtol, ftol,
                 xtol, cost, code, nit, nfev, A, work, D, R, T, yw)
'''


_ACCUMULATE_LOOPS = '''
@numba.njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
def _accumulate(D, R, A, g):
    """A = D Dᵀ, g = D R (sums over the points that LLVM may vectorise)."""
    for j in range(NF):
        for k in range(j + 1):
            s = 0.0
            for i in range(M):
                s += D[j, i] * D[k, i]
            A[j, k] = s
            A[k, j] = s
        s = 0.0
        for i in range(M):
            s += D[j, i] * R[i]
        g[j] = s
'''


def _accumulate_source(nf: int, group: int = 4) -> str:
    """The kernel's ``_accumulate``: ``A = D Dᵀ`` and ``g = D R`` (R as row ``nf``).

    Up to 23 free parameters, the sums go in blocks of ``group`` rows against ``group``
    rows, one loop over the points per block that loads each row once for all its sums
    (at most 16 vector accumulators): 0.19 µs instead of 0.69 µs for 7 parameters on
    225 points, where one loop per sum loaded two rows per product and paid a reduction
    each. Beyond that, one loop per sum (the block count grows as the square).
    """
    if nf > 23:
        return _ACCUMULATE_LOOPS
    rows = list(range(nf + 1))
    groups = [rows[a:a + group] for a in range(0, nf + 1, group)]
    lines = ['@numba.njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract"})',
             "def _accumulate(D, R, A, g):",
             '    """A = D Dᵀ, g = D R, in blocks of rows (see native._accumulate_source)."""']
    for ga, rows_a in enumerate(groups):
        for rows_b in groups[:ga + 1]:
            pairs = [(j, k) for j in rows_a for k in rows_b if k <= j and k < nf]
            if not pairs:  # (R against R alone)
                continue
            lines += [f"    s{j}_{k} = 0.0" for j, k in pairs]
            lines.append("    for i in range(M):")
            lines += [f"        e{r} = {'R[i]' if r == nf else f'D[{r}, i]'}"
                      for r in sorted({r for pr in pairs for r in pr})]
            lines += [f"        s{j}_{k} += e{j} * e{k}" for j, k in pairs]
            for j, k in pairs:
                if j == nf:
                    lines.append(f"    g[{k}] = s{j}_{k}")
                else:
                    lines.append(f"    A[{j}, {k}] = s{j}_{k}")
                    if j != k:
                        lines.append(f"    A[{k}, {j}] = s{j}_{k}")
    return "\n".join(lines) + "\n"


def _indent(lines, k):
    pad = " " * k
    return "\n".join(pad + ln for ln in lines) if lines else pad + "pass"


#: calls that keep a loop from vectorising (sqrt and abs are instructions)
_CALL = re.compile(r"math\.(?:exp|log|log1p|expm1|sin|cos|tan|sinh|cosh|tanh|atan|atan2|erf)"
                   r"\([^()]*\)")


#: calls done by the template's vectorised loops, which take two scratch rows of T
_VECTOR = re.compile(r"math\.(exp|log)\(([^()]*)\)$")
_VECTOR_FN = {"exp": "_vexp({row}, {buf}[-1])", "log": "_vlog({row}, {buf}[-1], {buf}[-2])"}
#: scratch rows of T beyond one per call
_SCRATCH = 2

_NAME = re.compile(r"\b[A-Za-z_]\w*\b")
_ASSIGN = re.compile(r"^(\w+) = ")


def _split_calls(body: list[str], buf: str = "T"):
    """``(passes, main, n)``: each of the ``n`` distinct transcendental calls in ``body``
    gets a loop of its own over the points (source ``passes``) that computes just what its
    argument needs and stores the call in ``buf[k, i]``; ``main`` is ``body`` reading
    ``buf`` instead of calling."""
    calls: list[str] = []
    passes = []
    defs = {}  # name -> index of its (plain) assignment in body

    def read(ln):
        return _CALL.sub(lambda mm: f"{buf}[{calls.index(mm.group(0))}, i]", ln)

    for k, line in enumerate(body):
        for c in _CALL.findall(line):
            if c in calls:
                continue
            # the lines the call's argument needs, in order (its dependency slice)
            need, todo = set(), list(_NAME.findall(c))
            while todo:
                nm = todo.pop()
                if nm in defs and defs[nm] not in need:
                    need.add(defs[nm])
                    todo.extend(_NAME.findall(body[defs[nm]].split(" = ", 1)[1]))
            prefix = [read(body[j]) for j in sorted(need)]
            calls.append(c)
            kc = len(calls) - 1
            vec = _VECTOR.match(c)
            # a vectorised call: the argument here, then exp or log of the whole row at once
            store = f"{buf}[{kc}, i] = {vec.group(2) if vec else c}"
            passes.append("    for i in range(M):\n" + _indent(prefix + [store], 8) + (
                "\n    " + _VECTOR_FN[vec.group(1)].format(row=f"{buf}[{kc}]", buf=buf)
                if vec else ""))
        m = _ASSIGN.match(line)
        if m:
            defs[m.group(1)] = k
    return "\n".join(passes), [read(ln) for ln in body], len(calls)


def generate(tr: _Translator, out: _Node, nf: int, likelihood: str) -> str:
    """The module source of one model's kernel.

    The per-point code is one straight line: the model, the likelihood's residual and
    slope, the reverse sweep, the stores. Each transcendental call in it first gets a
    loop of its own that stores it for every point in ``T`` (the values it needs are
    recomputed there); the main loop then reads ``T`` and has no call left, so LLVM
    can vectorise it.
    """
    xargs = "".join(f"x{q}, " for q in range(len(tr.arrays)))
    back, dmu = tr.backward(out, nf)
    poisson = likelihood == "poisson"
    lik = _POISSON if poisson else _GAUSSIAN
    body = tr.loop + [f"mu = {out.expr}"] + lik + back
    stores = ["cost += r * r", "R[i] = r"] + [f"D[{j}, i] = s * ({e})" for j, e in enumerate(dmu)]
    passes, main, n_calls = _split_calls(body + stores)
    src = _HEADER.format(nf=nf, m=tr.m, nt=n_calls + _SCRATCH, ny=2 if poisson else 1,
                         accumulate=_accumulate_source(nf),
                         eps=float(np.finfo(np.float64).eps), xargs=xargs,
                         prologue=_indent(tr.pro, 4), passes=passes, loop=_indent(main, 8))
    src += _LM.format(xargs=xargs, xcall=xargs)
    src += _PREPARE[likelihood]
    if poisson:
        src += _poisson_hessian(tr, out, nf, xargs)
    return src


def _poisson_hessian(tr: _Translator, out: _Node, nf: int, xargs: str) -> str:
    """The exact Hessian of Poisson's negative log-likelihood,
    ``sum_i (y/mu²) ∇mu ∇muᵀ + (1 - y/mu) ∇²mu``, for the errors."""
    pro, loop, gmu, hmu = tr.hessian_lines(out, nf)
    acc, init, store = [], [], []  # (sums in registers, stored once)
    for j in range(nf):
        for l in range(j, nf):
            gj, gl, h = gmu.get(j), gmu.get(l), hmu.get((j, l))
            terms = ([f"w1 * {gj} * {gl}"] if gj and gl else []) + ([f"w2 * {h}"] if h else [])
            if terms:
                acc.append(f"hs{j}_{l} += " + " + ".join(terms))
                init.append(f"hs{j}_{l} = 0.0")
                store.append(f"H[{j}, {l}] = hs{j}_{l}")
    body = tr.loop + [f"mu = {out.expr}"] + loop + [
        "w1 = y[i] / (mu * mu)", "w2 = 1.0 - y[i] / mu"] + acc
    passes, main, n_calls = _split_calls(body)
    return f'''

NTH = {n_calls + _SCRATCH}


@numba.njit(cache=True, error_model="numpy", fastmath={{"contract", "arcp", "reassoc"}})
def hessian(pa, y, {xargs}H, T):
    """The Hessian of Poisson's negative log-likelihood at pa (T: scratch)."""
{_indent(tr.pro + pro, 4)}
    for j in range(NF):
        for l in range(NF):
            H[j, l] = 0.0
{_indent(init, 4)}
{passes}
    for i in range(M):
{_indent(main, 8)}
{_indent(store, 4)}
    for j in range(NF):
        for l in range(j):
            H[j, l] = H[l, j]


@numba.njit(cache=True, parallel=True, error_model="numpy")
def hessians(P, Y, {xargs}H):
    for b in numba.prange(P.shape[0]):
        hessian(P[b], Y[b], {xargs}H[b], np.empty((NTH, M)))
'''


_OFFSET = None


def poisson_nll_offset(Y: np.ndarray) -> np.ndarray:
    """Per row of counts ``Y (B, m)``: ``sum(lgamma(y + 1) - y log y + y)``, what Poisson's
    negative log-likelihood adds to half its deviance (on all of Numba's threads; whole
    counts up to 1e6 from a table, others by ``lgamma``)."""
    global _OFFSET
    if _OFFSET is None:
        import numba

        @numba.njit(parallel=True, cache=True, error_model="numpy")
        def offset(Y, tab, out):
            n = tab.shape[0]
            for b in numba.prange(Y.shape[0]):
                s = 0.0
                for i in range(Y.shape[1]):
                    y = Y[b, i]
                    k = int(y) if 0.0 <= y < n else -1
                    if k >= 0 and k == y:
                        s += tab[k]
                    else:
                        s += math.lgamma(y + 1.0) + y - (y * math.log(y) if y > 0 else 0.0)
                out[b] = s

        _OFFSET = offset
    from scipy.special import gammaln, xlogy

    Y = np.ascontiguousarray(Y, dtype=np.float64)
    top = float(np.max(Y)) if Y.size else 0.0
    k = np.arange(int(min(max(top, 0.0), 1e6)) + 1, dtype=np.float64)
    out = np.empty(Y.shape[0])
    with _parallel_section():
        _OFFSET(Y, gammaln(k + 1.0) - xlogy(k, k) + k, out)
    return out


def refusal(lik, *, priors, free, space, device, dtype, x_batched=False, vectorized=False):
    """Why the compiled engine cannot take this fit (a sentence), or None. ``priors``: the
    fit's (a dict of name -> prior, a whole-dict callable, or None); ``free``: the names
    of the free parameters (a prior on a fixed one is a constant, whatever its kind)."""
    from ..likelihoods import Gaussian, Poisson
    from ..priors import Normal

    if not available():
        return "it needs Numba: pip install numba (or pip install 'gradfit[native]')"
    if not (isinstance(lik, Gaussian) or type(lik) is Poisson):
        return f"it fits the Gaussian and Poisson likelihoods, not {lik.name}"
    if callable(priors) and not isinstance(priors, dict):
        return "it takes Normal priors by name, not a log_prior(p) callable"
    other = [f"{type(pr).__name__} on {nm!r}" for nm, pr in (priors or {}).items()
             if nm in free and type(pr) is not Normal]
    if other:
        return f"it takes Normal priors only (a residual each), not {', '.join(other)}"
    shaped = [nm for nm in space.names if space.shapes[nm] != ()]
    if shaped:
        return f"it takes scalar parameters only; {', '.join(shaped)} has a shape"
    if x_batched:
        return "it takes an x shared by all problems, not one x per problem"
    if vectorized:
        return "it traces a model written for one problem (vectorized=False)"
    if torch.device(device).type != "cpu":
        return f"it runs on the CPU, not {device}"
    if dtype != torch.float64:
        return "it computes in float64 (dtype=torch.float64)"
    return None


def prior_arrays(priors, free_names):
    """``(pm, pw)``: each free parameter's Normal prior as a mean and 1/sigma (0 and 0
    where it has none), for the kernel; None where no free parameter has a prior."""
    pm, pw = np.zeros(len(free_names)), np.zeros(len(free_names))
    for j, nm in enumerate(free_names):
        pr = (priors or {}).get(nm)
        if pr is not None:
            pm[j], pw[j] = pr.mu, 1.0 / pr.sigma
    return (pm, pw) if pw.any() else None


#: (model id, parameters, free mask, likelihood, shape, sigma, x) -> (model, kernel): a
#: model fitted again with the same x is neither traced nor checked again
_KERNELS: dict = {}


def _tensors(x) -> list:
    """The tensors of ``x`` (a tensor, or a tuple/list/dict of them), in order."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, tuple | list):
        return [t for v in x for t in _tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    return []


def _rebuild(x, it):
    """``x`` with its tensors taken in order from the iterator ``it``."""
    if isinstance(x, torch.Tensor):
        return next(it)
    if isinstance(x, tuple | list):
        return type(x)(_rebuild(v, it) for v in x)
    if isinstance(x, dict):
        return {k: _rebuild(v, it) for k, v in x.items()}
    return x


def cached_kernel(model, names, free_pos, x, theta0, out_shape, lik, *, params=dict,
                  check=None):
    """The compiled fit of ``model`` (called as ``model(params(name -> tensor), x)``), from
    this process's cache where the same model, parameters, likelihood and x had one.

    A kernel made now is first passed to ``check(kernel)`` (which raises
    :class:`NotCompilable` where it disagrees with torch) and cached only if it passes.
    """
    from ..likelihoods import Gaussian

    m = int(np.prod(out_shape))
    if isinstance(lik, Gaussian):
        s = lik.sigma_tensor
        sw = np.ones(m) if s is None else np.broadcast_to(
            1.0 / s.detach().cpu().numpy().astype(np.float64), out_shape).reshape(-1)
        kind = "gaussian"
    else:
        sw, kind = np.ones(m), "poisson"
    leaves = _tensors(x)

    def digest(a):
        return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()

    key = (id(model), tuple(names), tuple(int(k) for k in free_pos), kind, tuple(out_shape),
           digest(sw), tuple((tuple(a.shape), digest(a.detach().cpu().numpy()))
                             for a in leaves))
    hit = _KERNELS.get(key)
    if hit is not None and hit[0] is model:
        return hit[1]

    def one(*args):
        return model(params(zip(names, args[:len(names)])), _rebuild(x, iter(args[len(names):])))

    kernel = compile_lm(one, len(names), free_pos, leaves, theta0, out_shape, kind, sw)
    if check is not None:
        check(kernel)
    if len(_KERNELS) >= 32:
        _KERNELS.pop(next(iter(_KERNELS)))
    _KERNELS[key] = (model, kernel)
    return kernel


def check_kernel(kernel, P, Y, cost_t, A_t, g_t, H_t=None, rows=None, priors=None):
    """Refuse (:class:`NotCompilable`) a kernel whose normal equations at the rows of ``P``
    differ from torch's ``cost_t (b,)``, ``A_t (b, n, n)``, ``g_t (b, n)`` by more than
    1e-9 (of the cost, of max|A|, of sqrt(max diag A · 2 cost) = |J| |r|), or whose
    Hessians differ from ``H_t`` (Poisson) by more than 1e-8 of max|H|. ``rows``: the
    problems' indices, for the message; ``priors``: as :func:`prior_arrays` (torch's
    values include them)."""
    for b in range(P.shape[0]):
        cost, A, g = kernel.normal(P[b], Y[b], priors)
        scale = max(np.abs(A_t[b]).max(), 1e-300)
        gscale = max(np.sqrt(np.abs(np.diag(A_t[b])).max() * 2 * abs(cost_t[b])), 1e-300)
        if not (abs(cost - cost_t[b]) <= 1e-9 * max(abs(cost_t[b]), 1e-300)
                and np.abs(A - A_t[b]).max() <= 1e-9 * scale
                and np.abs(g - g_t[b]).max() <= 1e-9 * gscale):
            raise NotCompilable(
                f"the compiled model disagrees with torch at the start of problem "
                f"{b if rows is None else int(rows[b])} "
                f"(cost {cost:.17g} against {float(cost_t[b]):.17g}); an operation is "
                "translated wrongly, please report it")
    if H_t is not None and kernel.has_hessian:
        H = kernel.hessians(P, Y, priors)
        if not np.all(np.abs(H - H_t) <= 1e-8 * np.abs(H_t).max(axis=(1, 2))[:, None, None]):
            raise NotCompilable(
                "the compiled model's second derivatives disagree with torch's at the "
                "start; an operation is translated wrongly, please report it")


def _cache_dir() -> Path:
    root = os.environ.get("GRADFIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "gradfit")
    return Path(root) / "native"


_MODULES: dict = {}


def _load(src: str):
    """Import the generated source from a file named by its hash (written atomically), so
    that Numba's ``cache=True`` keeps the compiled code between processes."""
    key = hashlib.sha256(src.encode()).hexdigest()[:24]
    if key in _MODULES:
        return _MODULES[key]
    d = _cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"gradfit_native_{key}.py"
        if not path.exists() or path.read_text() != src:
            fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                fh.write(src)
            os.replace(tmp, path)
    except OSError:  # a read-only home: a private temporary folder, no cache across runs
        d = Path(tempfile.mkdtemp(prefix="gradfit-native-"))
        path = d / f"gradfit_native_{key}.py"
        path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"gradfit_native_{key}", path)
    mod = importlib.util.module_from_spec(spec)
    # importable by name: Numba's cache rebuilds a kernel's environment by importing it
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    _MODULES[key] = mod
    return mod


class NativeLM:
    """The compiled fit of one model: :meth:`run` for many problems, :meth:`normal` for one
    evaluation (used to check the kernel against torch)."""

    def __init__(self, module, arrays, free_pos, sw, source):
        self.module = module
        self.arrays = tuple(arrays)
        self.free = np.asarray(free_pos, dtype=np.int64)
        self.sw = np.ascontiguousarray(sw, dtype=np.float64)
        self.source = source

    def _priors(self, priors):
        nf = self.free.size
        if priors is None:
            return np.zeros(nf), np.zeros(nf)
        return tuple(np.ascontiguousarray(a, dtype=np.float64).reshape(nf) for a in priors)

    def normal(self, pa, y, priors=None):
        """``(½|r|², JᵀJ, Jᵀr)`` at the parameters ``pa`` for the data ``y`` (m,), with the
        residuals of Normal ``priors`` (:func:`prior_arrays`) where given."""
        nf, m = self.free.size, self.sw.size
        A, g, T = np.empty((nf, nf)), np.empty(nf), np.empty((self.module.NT, m))
        yw = np.empty((self.module.NY, m))
        yw[0] = np.asarray(y, dtype=np.float64).reshape(-1)
        self.module.prepare(yw, T)
        pa = np.array(pa, dtype=np.float64)
        zero = np.zeros(nf)
        cost = self.module.normal_z(pa[self.free], self.free, np.zeros(nf, np.int64), zero,
                                    zero, *self._priors(priors), pa, np.empty(nf), False, yw,
                                    self.sw, *self.arrays, np.empty((nf, m)), np.empty(m), T, A,
                                    g)
        return cost, A, g

    @property
    def has_hessian(self) -> bool:
        """Whether the kernel gives the likelihood's exact Hessian (Poisson)."""
        return hasattr(self.module, "hessians")

    def hessians(self, P, Y, priors=None):
        """The negative log-likelihood's Hessian at each row of ``P (B, n_all)`` (plus
        Normal ``priors``' 1/sigma² where given)."""
        nf = self.free.size
        H = np.empty((P.shape[0], nf, nf))
        with _parallel_section():
            self.module.hessians(np.ascontiguousarray(P, dtype=np.float64),
                                 np.ascontiguousarray(Y, dtype=np.float64), *self.arrays, H)
        if priors is not None:
            H[:, np.arange(nf), np.arange(nf)] += self._priors(priors)[1] ** 2
        return H

    def run(self, P, Y, *, max_iter, gtol, ftol, xtol, Z=None, bounds=None, priors=None):
        """Fit every row: ``P (B, n_all)`` starts (overwritten by the answers), ``Y (B, m)``;
        ``priors``: Normal priors as :func:`prior_arrays` gives them, or None.

        ``bounds``: ``(lo, hi)`` of the free parameters (``±inf`` where open); then ``Z``
        ``(B, n_free)`` are the starts in the unconstrained space (as
        :meth:`ParamSpace.to_internal`), overwritten by the answers. Returns ``(cost,
        code, nit, nfev, JᵀJ in z, Z)``."""
        B, nf = P.shape[0], self.free.size
        kind, lo, hi = np.zeros(nf, np.int64), np.zeros(nf), np.zeros(nf)
        if bounds is not None:
            lo_, hi_ = (np.asarray(b, dtype=np.float64) for b in bounds)
            flo, fhi = np.isfinite(lo_), np.isfinite(hi_)
            kind = np.where(flo & fhi, 1, np.where(flo, 2, np.where(fhi, 3, 0))).astype(np.int64)
            lo, hi = np.where(flo, lo_, 0.0), np.where(fhi, hi_, 0.0)
        Z = np.ascontiguousarray(P[:, self.free] if Z is None else Z, dtype=np.float64)
        cost, code = np.empty(B), np.empty(B, np.int64)
        nit, nfev = np.empty(B, np.int64), np.empty(B, np.int64)
        A = np.empty((B, nf, nf))
        # prange where it pays; a few problems (and its first compile, ~1 s more) not
        fn = self.module.lm_all if B >= 64 and numba_threads() > 1 else self.module.lm_serial
        with _parallel_section():
            fn(P, Z, self.free, kind, lo, hi, *self._priors(priors), Y, self.sw,
               *self.arrays, int(max_iter), float(gtol), float(ftol), float(xtol), cost, code,
               nit, nfev, A)
        return cost, code, nit, nfev, A, Z


def compile_lm(fn, n_all: int, free_pos, x_leaves, theta0, out_shape, likelihood: str,
               sigma_weight) -> NativeLM:
    """Trace ``fn(*params, *x_leaves) -> mu`` (one problem) and compile its fit.

    Parameters
    ----------
    fn : callable
        The model of one problem on ``n_all`` scalar parameters and the x tensors.
    n_all : int
    free_pos : sequence of int
        The positions of the free parameters among the ``n_all``.
    x_leaves : list of Tensor
        Shared by all problems.
    theta0 : array_like
        Values of the ``n_all`` parameters to trace at.
    out_shape : tuple
        The shape of one problem's data.
    likelihood : {'gaussian', 'poisson'}
    sigma_weight : array_like
        ``1/sigma`` per point (ones for unweighted least squares).
    """
    if not available():
        raise NotCompilable("engine='numba' needs Numba: pip install numba "
                            "(or pip install 'gradfit[native]')")
    from torch.fx.experimental.proxy_tensor import make_fx

    args = [torch.tensor(float(v), dtype=torch.float64) for v in theta0] + list(x_leaves)
    try:
        gm = make_fx(fn)(*args)
    except NotCompilable:
        raise
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: not this engine
        raise NotCompilable(f"the model could not be traced: {type(exc).__name__}: {exc}") \
            from None
    # the x-only nodes' values, once (make_fx's own node values are fake tensors)
    env_vals = torch.fx.Interpreter(gm)
    captured = {}

    def run_node(n, _orig=env_vals.run_node):
        val = _orig(n)
        captured[n] = val
        return val

    env_vals.run_node = run_node
    with torch.no_grad():
        env_vals.run(*args)
    values = {n: v for n, v in captured.items() if isinstance(v, torch.Tensor)}
    tr = _Translator(gm, n_all, free_pos, values, out_shape)
    out = tr.translate()
    src = generate(tr, out, len(free_pos), likelihood)
    mod = _load(src)
    sw = np.broadcast_to(np.asarray(sigma_weight, dtype=np.float64), (tr.m,)).copy()
    return NativeLM(mod, tr.arrays, free_pos, sw, src)
