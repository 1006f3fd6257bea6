"""The package's structure: no import cycles, no private names used across modules,
benchmark code kept out of the library, and ``python -m gradfit`` as the command line.

Imports are read from the source with :mod:`ast`, at module level and inside
functions alike: a function-level import is still a dependency (it only moves
the moment the cycle bites), so both count. ``importlib.import_module("...")``
with a literal name and the lazy table ``_EXPORTS`` of ``gradfit/__init__.py``
count too. A package's own ``__init__`` importing its submodules is not an edge
back from those submodules to the package: the implicit "run the parent
``__init__`` first" of Python's import system is left out, or every package
would be a cycle.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import gradfit

SRC = Path(gradfit.__file__).resolve().parent  # .../src/gradfit

#: Exceptions to the rules below (none now; the OOF engine of issue 8 removed the last).
KNOWN_OOF_EDGES: set = set()
KNOWN_OOF_PRIVATE: set = set()

#: Names with a leading underscore that are public API of the standard library.
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package) for every module under src/gradfit."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The longest known module that ``name`` is or lies inside (None outside gradfit)."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        cand = ".".join(parts[:k])
        if cand in MODULES:
            return cand
    return None


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _scan(mod: str):
    """Edges ``mod -> module`` and cross-module private-name uses, from the source."""
    path, is_pkg = MODULES[mod]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = mod if is_pkg else mod.rpartition(".")[0]
    edges: set[str] = set()
    private: set[tuple] = set()
    # private attributes this module defines itself (methods of its classes, ``self._x =``):
    # using them on its own objects (``obj._local`` of a class defined here) is not reaching
    # into another module
    own = {n.name for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for n in c.body
           if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    own |= {t.attr for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AnnAssign))
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
            and t.value.id == "self"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _owner(alias.name)
                if target is not None:
                    edges.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if _owner(source) is None:
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if full in MODULES:  # a submodule
                    edges.add(full)
                    if _private(alias.name) and full.rpartition(".")[0] != package:
                        private.add((mod, source, alias.name))
                else:
                    edges.add(_owner(source))
                    if _private(alias.name):
                        private.add((mod, _owner(source), alias.name))
        elif isinstance(node, ast.Call):
            fn = node.func
            fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            args = node.args
            if (fname == "import_module" and args and isinstance(args[0], ast.Constant)
                    and isinstance(args[0].value, str) and _owner(args[0].value)):
                edges.add(_owner(args[0].value))
            if (fname in ("getattr", "setattr", "hasattr") and len(args) >= 2
                    and isinstance(args[1], ast.Constant) and isinstance(args[1].value, str)
                    and _private(args[1].value)):
                private.add((mod, "getattr", args[1].value))
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            mine = (isinstance(base, ast.Name) and base.id in ("self", "cls")) or node.attr in own
            if not mine and node.attr not in PUBLIC_UNDERSCORE:
                private.add((mod, ast.unparse(base), node.attr))
        elif (mod == "gradfit" and isinstance(node, ast.Assign)
              and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets)):
            # the lazy front door: gradfit.<name> imports gradfit.<module> on first use
            for v in node.value.values:
                edges.add(f"gradfit.{v.value}")
    edges.discard(mod)
    return edges, private


SCANS = {m: _scan(m) for m in MODULES}
GRAPH = {m: {t for t in edges if (m, t) not in KNOWN_OOF_EDGES} for m, (edges, _) in SCANS.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _reachable(start: str, graph) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        for w in graph.get(v, ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


# ------------------------------------------------------------------ the checks
def test_the_scanner_sees_imports_cycles_and_private_names():
    """The checks below can fail: the scanner finds what it must on known code and on a
    made-up cycle."""
    edges, _ = SCANS["gradfit.fitting"]
    assert {"gradfit.result", "gradfit.solvers", "gradfit.objective"} <= edges
    assert "gradfit.profile" in SCANS["gradfit.result"][0]  # a function-level import counts
    assert "gradfit.bench" in SCANS["gradfit.cli"][0]  # importlib.import_module("gradfit.bench")
    assert "gradfit.fitting" in SCANS["gradfit"][0]  # the lazy _EXPORTS table
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(GRAPH) == [], "import cycle(s) among gradfit modules"


def test_no_private_names_across_modules():
    found = set()
    for _mod, (_, private) in SCANS.items():
        found |= private
    assert found - KNOWN_OOF_PRIVATE == set(), (
        "a module uses another's private name; make what is shared public and documented")


def test_library_never_reaches_the_benchmark_code():
    """Nothing but the command line (and python -m gradfit) leads to gradfit.bench."""
    bench = {m for m in MODULES if m == "gradfit.bench" or m.startswith("gradfit.bench.")}
    assert bench >= {"gradfit.bench", "gradfit.bench.scaling", "gradfit.bench.reference",
                     "gradfit.bench.gaussians2d"}
    front = {"gradfit.cli", "gradfit.__main__"}
    for mod in sorted(set(MODULES) - bench - front):
        reached = _reachable(mod, GRAPH)
        assert not reached & (bench | front), (mod, sorted(reached & (bench | front)))
    assert not [m for m in MODULES if m.startswith("gradfit.models")]  # moved to bench
    assert "gradfit.oof.reference" not in MODULES  # moved to gradfit.bench.reference


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC.parent) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_importing_and_fitting_loads_no_benchmark_code():
    code = (
        "import sys, numpy as np, gradfit, gradfit.fitting, gradfit.oof, gradfit.profile\n"
        "import gradfit.sampling\n"
        "x = np.linspace(0, 1, 8)\n"
        "r = gradfit.fit(lambda p, x: p['a'] * x, x, 2 * x + 0.01 * np.sin(9 * x), {'a': 1.0})\n"
        "lo, hi = r.interval('a')\n"
        "assert r.success and lo < r.params['a'] < hi\n"
        "print(sorted(m for m in sys.modules if m.startswith(('gradfit.bench', "
        "'gradfit.cli'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_python_dash_m_gradfit_is_the_command_line():
    run = [sys.executable, "-m", "gradfit"]
    out = subprocess.run(run + ["--help"], capture_output=True, text=True, env=_env(),
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: gradfit ")
    for command in ("oof", "bench", "demo"):
        assert f"\n  {command} " in out.stdout
    out = subprocess.run(run + ["--version"], capture_output=True, text=True, env=_env(),
                         timeout=300)
    assert out.returncode == 0 and gradfit.__version__ in out.stdout
    out = subprocess.run(run + ["no-such-command"], capture_output=True, text=True,
                         env=_env(), timeout=300)
    assert out.returncode == 2 and "No such command 'no-such-command'" in out.stderr


def test_benchmark_package_is_installed_with_the_library():
    """``gradfit bench`` must work after ``pip install``: pyproject's package finder
    (``[tool.setuptools.packages.find] where = ["src"]``) picks up gradfit.bench."""
    import setuptools

    found = set(setuptools.find_packages(where=str(SRC.parent)))
    assert {"gradfit", "gradfit.bench", "gradfit.oof", "gradfit.solvers"} <= found
    assert "gradfit.models" not in found
