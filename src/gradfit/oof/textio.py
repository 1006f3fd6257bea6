"""Plain-text beam maps: columns u, v, power, as telescopes' own software writes them.

A file holds one map, one sample a line::

    # units: arcsec                 <- optional tag (or units in the header cells)
    u[arcsec], v[arcsec], power     <- optional header line
    -120.0, -120.0, 47.96
    ...

- Cells are separated by whitespace (spaces, tabs), commas or semicolons.
- Lines starting with ``#``, ``%`` or ``!`` are comments; a comment ``units: NAME`` (or
  ``units = NAME``) gives the coordinate unit, as does a unit in the header cells
  (``u[arcsec]``, ``u(deg)``, ``u_arcmin``); the ``units`` argument must agree with it.
- Units: ``rad`` (the default), ``deg``, ``arcmin``, ``arcsec``.
- A header names the columns (u: ``u x dx az``; v: ``v y dy el``; power: ``power beam
  fnu p counts signal flux``) and so may reorder them; without one the order is u, v,
  power.
- Flagged samples, NaN (``nan`` in the file) or, in raw counts, exact zeros, are masked
  with a warning giving the count.

:func:`read_text` builds an :class:`~gradfit.oof.observation.Observation` from several
files and their defocus values (in file order); :func:`from_arrays` does the same from
arrays; :func:`convert` writes the pyoof FITS layout with :func:`gradfit.oof.io.write`;
:func:`write_text` writes a map in this format.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gradfit.oof.observation import (
    BeamMap,
    Observation,
    grid_indices,
    place_samples,
    regular_grid,
)

__all__ = [
    "UNITS",
    "TextMap",
    "read_map",
    "read_text",
    "from_arrays",
    "write_text",
    "compact",
    "convert",
    "parse_dz",
    "regular_grid",
    "grid_indices",
]

_C = 299_792_458.0

#: Radians per unit of each coordinate unit a text map may use.
UNITS = {
    "rad": 1.0,
    "deg": math.pi / 180.0,
    "arcmin": math.pi / (180.0 * 60.0),
    "arcsec": math.pi / (180.0 * 3600.0),
}
_UNIT_ALIASES = {
    "rad": "rad", "radian": "rad", "radians": "rad",
    "deg": "deg", "degree": "deg", "degrees": "deg",
    "arcmin": "arcmin", "amin": "arcmin", "'": "arcmin",
    "arcsec": "arcsec", "asec": "arcsec", '"': "arcsec",
}
_COLUMN_NAMES = {
    "u": ("u", "x", "dx", "az"),
    "v": ("v", "y", "dy", "el"),
    "power": ("power", "beam", "fnu", "p", "counts", "signal", "flux"),
}
_MIN_SAMPLES = 10
# Offsets beyond this many radians (11 degrees) are no beam map: the unit must be wrong.
_MAX_RADIANS = 0.2
_UNIT_TAG = re.compile(r"\bunits?\s*[:=]\s*([A-Za-z'\"]+)", re.IGNORECASE)
_HEADER_CELL = re.compile(r"^([A-Za-z]+)\s*(?:[\[(]\s*([^\])]*?)\s*[\])]|_([A-Za-z]+))?$")


@dataclass(frozen=True)
class TextMap:
    """One text map as read, before any masking.

    u, v : sample offsets (radians), in file order.
    power : the third column, in file order (NaN where the file says so).
    line : the file line of each sample (1-based), for messages.
    units : the unit the file's coordinates were in.
    fast_axis : 'u' or 'v', the coordinate that changes between the first samples of the
        file (the scan direction of a raster), or None.
    path : the file.
    """

    u: np.ndarray
    v: np.ndarray
    power: np.ndarray
    line: np.ndarray
    units: str
    fast_axis: str | None
    path: str
    from_file: bool = True

    @property
    def n(self) -> int:
        return self.power.size


def _unit(name: str, where: str) -> str:
    key = str(name).strip().lower()
    if key not in _UNIT_ALIASES:
        raise ValueError(
            f"{where}: unknown unit {name!r}; choose one of: {', '.join(UNITS)}"
        )
    return _UNIT_ALIASES[key]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _split(line: str) -> list[str]:
    if "," in line or ";" in line:
        return [c.strip() for c in re.split(r"[,;]", line)]
    return line.split()


def _header(cells: list[str], path: str, lineno: int) -> tuple[list[int], str | None]:
    """Column order (indices of u, v, power) and unit of a header line."""
    where = f"{path}: line {lineno}"
    if len(cells) != 3:
        raise ValueError(
            f"{where}: header has {len(cells)} columns, expected 3 (u, v, power)"
        )
    roles, units = [], []
    for cell in cells:
        m = _HEADER_CELL.match(cell.strip())
        role = None
        if m:
            name = m.group(1).lower()
            role = next((r for r, names in _COLUMN_NAMES.items() if name in names), None)
        if role is None:
            valid = "; ".join(f"{r}: {' '.join(n)}" for r, n in _COLUMN_NAMES.items())
            raise ValueError(
                f"{where}: header cell {cell!r} is not a column name (and not a number); "
                f"valid names ({valid}), optionally with a unit as u[arcsec]"
            )
        roles.append(role)
        tag = m.group(2) or m.group(3)
        if tag and role != "power":
            units.append(_unit(tag, where))
    if sorted(roles) != ["power", "u", "v"]:
        raise ValueError(f"{where}: header names columns {cells}; need one each of u, v, power")
    if len(set(units)) > 1:
        raise ValueError(f"{where}: header gives u and v different units ({', '.join(units)})")
    order = [roles.index("u"), roles.index("v"), roles.index("power")]
    return order, (units[0] if units else None)


def read_map(path: str | os.PathLike, units: str | None = None) -> TextMap:
    """Read one text map (no masking; see :func:`read_text`).

    Parameters
    ----------
    path : str or path-like
    units : {'rad', 'deg', 'arcmin', 'arcsec'}, optional
        Unit of the coordinates; default: the file's tag, else radians.

    Raises
    ------
    ValueError
        Naming the file and line: a missing or unreadable file, a line with other than
        three columns, a non-numeric cell, fewer than 10 samples, an unknown unit, a unit
        that contradicts the file's tag, or radian offsets too large for a beam map.
    """
    path = str(path)
    if units is not None:
        units = _unit(units, f"{path}: units argument")
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    order = [0, 1, 2]
    file_units = None
    tag_line = None
    header_seen = False
    data, lines = [], []

    def declare(unit, what, lineno):  # a unit tag or header unit; all must agree
        nonlocal file_units, tag_line
        if file_units is not None and unit != file_units:
            raise ValueError(f"{path}: line {lineno}: {what} {unit!r} contradicts "
                             f"{file_units!r} (line {tag_line})")
        file_units, tag_line = unit, lineno

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line[0] in "#%!":
            m = _UNIT_TAG.search(line)
            if m:
                declare(_unit(m.group(1), f"{path}: line {lineno}"), "unit tag", lineno)
            continue
        if not header_seen and not data:
            cells = _split(line)
            # a header has no numeric cell; a line with some is data (maybe with a typo)
            if not any(_is_number(c) for c in cells):
                order, head_units = _header(cells, path, lineno)
                header_seen = True
                if head_units is not None:
                    declare(head_units, "header unit", lineno)
                continue
        data.append(line)
        lines.append(lineno)
    arr = _parse_rows(data, lines, path, order)
    if len(arr) < _MIN_SAMPLES:
        raise ValueError(
            f"{path}: {len(arr)} samples; a beam map needs at least {_MIN_SAMPLES} "
            "(one sample a line: u, v, power)"
        )
    if units is not None and file_units is not None and units != file_units:
        raise ValueError(
            f"{path}: units={units!r} contradicts the file's unit {file_units!r} "
            f"(line {tag_line})"
        )
    unit = units or file_units or "rad"
    u, v, power = arr[:, 0] * UNITS[unit], arr[:, 1] * UNITS[unit], arr[:, 2]
    if units is None and file_units is None:
        big = np.nanmax(np.abs(np.concatenate([u, v])))
        if big > _MAX_RADIANS:
            raise ValueError(
                f"{path}: offsets up to {big:g} rad are too large for a beam map; "
                "give the unit (units='deg', 'arcmin' or 'arcsec', or a header tag "
                "such as '# units: arcsec')"
            )
    fast = None
    finite = np.isfinite(u) & np.isfinite(v)
    uf, vf = u[finite], v[finite]
    if uf.size >= 2:
        # one coordinate steps, the other stays (or jitters: recorded positions)
        du, dv = abs(uf[1] - uf[0]), abs(vf[1] - vf[0])
        fast = "u" if du > 4 * dv else "v" if dv > 4 * du else None
    return TextMap(u=u, v=v, power=power, line=np.asarray(lines), units=unit, fast_axis=fast,
                   path=path)


def _parse_rows(data: list[str], lines: list[int], path: str, order: list[int]) -> np.ndarray:
    """The (n, 3) array of u, v, power; errors name the first bad line."""
    if data:
        # fast path: one conversion for the whole file; any problem -> the slow, exact scan
        flat = " ".join(data).replace(",", " ").replace(";", " ").split()
        if len(flat) == 3 * len(data):
            try:
                arr = np.array(flat, dtype=np.float64).reshape(len(data), 3)
            except ValueError:
                arr = None
            if arr is not None and all(len(_split(x)) == 3 for x in (data[0], data[-1])):
                if all(len(_split(x)) == 3 for x in data):
                    return arr[:, order]
    names = ("u", "v", "power")
    rows = []
    for line, lineno in zip(data, lines):
        cells = _split(line)
        if len(cells) != 3:
            raise ValueError(
                f"{path}: line {lineno}: {len(cells)} columns, expected 3 (u, v, power)"
            )
        row = []
        for j, c in enumerate(cells):
            try:
                row.append(float(c))
            except ValueError:
                role = names[order.index(j)]
                raise ValueError(
                    f"{path}: line {lineno}: column {j + 1} ({role}) is not a number: {c!r}"
                ) from None
        rows.append(row)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)[:, order]


# ------------------------------------------------------------------ grids
def _describe(m: TextMap, grid) -> str:
    s = 1.0 / UNITS[m.units]
    what = f"{grid[1][0]} x {grid[1][1]} grid" if grid else f"{m.n} scattered samples"
    return (f"{what}, u {np.nanmin(m.u) * s:.6g}..{np.nanmax(m.u) * s:.6g}, "
            f"v {np.nanmin(m.v) * s:.6g}..{np.nanmax(m.v) * s:.6g} {m.units}")


def _same_grid(a: TextMap, ga, b: TextMap, gb) -> bool:
    if (ga is None) != (gb is None):
        return False
    if ga is not None:
        if ga[1] != gb[1]:
            return False
        step = min(np.min(np.abs(np.diff(ga[2]))), np.min(np.abs(np.diff(ga[3]))))
        tol = 1e-3 * step
        return bool(np.all(np.abs(ga[2] - gb[2]) <= tol) and np.all(np.abs(ga[3] - gb[3]) <= tol))
    if a.n != b.n:
        return False
    pa, pb = np.lexsort((a.u, a.v)), np.lexsort((b.u, b.v))
    scale = max(float(np.nanmax(np.abs(a.u))), float(np.nanmax(np.abs(a.v))), 1e-300)
    tol = 1e-4 * scale
    if (np.allclose(a.u[pa], b.u[pb], rtol=0, atol=tol, equal_nan=True)
            and np.allclose(a.v[pa], b.v[pb], rtol=0, atol=tol, equal_nan=True)):
        return True
    return _same_raster(a, b)


def _same_raster(a: TextMap, b: TextMap) -> bool:
    """Whether two maps whose recorded positions jitter lie on one raster.

    Each must be a raster (:func:`gradfit.oof.noise.raster_indices`) of the same size,
    its rows' v and columns' u (the means of their samples) within the raster tolerance
    of the other's.
    """
    from gradfit.oof.noise import RASTER_TOL, raster_indices

    axes = []
    for m in (a, b):
        ok = np.isfinite(m.u) & np.isfinite(m.v)
        try:
            rows, cols = raster_indices(m.u[ok], m.v[ok])
        except ValueError:
            return False
        with np.errstate(invalid="ignore"):  # a row without samples: NaN, never equal
            axes.append((np.bincount(cols, weights=m.u[ok]) / np.bincount(cols),
                         np.bincount(rows, weights=m.v[ok]) / np.bincount(rows)))
    (ua, va), (ub, vb) = axes
    if ua.size != ub.size or va.size != vb.size:
        return False
    tol = RASTER_TOL * min(abs(float(np.nanmedian(np.diff(ua)))),
                           abs(float(np.nanmedian(np.diff(va)))))
    return bool(np.all(np.abs(ua - ub) <= tol) and np.all(np.abs(va - vb) <= tol))


# ------------------------------------------------------------------ observation
def parse_dz(dz, n_files: int | None = None) -> list[float]:
    """Defocus values (metres) from a sequence or a comma-separated string, in file order.

    Raises
    ------
    ValueError
        For a non-numeric or non-finite value, or (with ``n_files``) the wrong count.
    """
    items = [s for s in dz.replace(";", ",").split(",")] if isinstance(dz, str) else (
        [dz] if np.ndim(dz) == 0 else list(np.ravel(dz)))
    out = []
    for k, item in enumerate(items):
        try:
            value = float(item.strip() if isinstance(item, str) else item)
        except (TypeError, ValueError):
            raise ValueError(f"dz value {k + 1} ({item!r}) is not a number (metres)") from None
        if not math.isfinite(value):
            raise ValueError(f"dz value {k + 1} is {value}; defocus must be finite (metres)")
        out.append(value)
    if n_files is not None and len(out) != n_files:
        raise ValueError(
            f"dz has {len(out)} value{'s' if len(out) != 1 else ''} for {n_files} file"
            f"{'s' if n_files != 1 else ''}; give one defocus (metres) per file, in file "
            "order, e.g. dz=[-0.027, 0, 0.027]"
        )
    return out


def _wavelength(frequency, wavelength) -> tuple[float, float]:
    if (frequency is None) == (wavelength is None):
        raise ValueError(
            "give exactly one of frequency= (Hz) or wavelength= (m): a text map does not "
            "record the observing frequency"
        )
    if frequency is not None:
        try:
            f = float(frequency)
        except (TypeError, ValueError):
            f = math.nan
        if not (math.isfinite(f) and f > 0):
            raise ValueError(f"frequency must be a positive number of Hz, got {frequency!r}")
        return _C / f, f
    try:
        lam = float(wavelength)
    except (TypeError, ValueError):
        lam = math.nan
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"wavelength must be a positive number of metres, got {wavelength!r}")
    return lam, _C / lam


def _telescope_label(telescope) -> tuple[str | None, dict]:
    """The Observation.telescope string (checked now) and extra metadata."""
    if telescope is None:
        return None, {}
    from gradfit.oof.telescope import TELESCOPES, Telescope, load

    tel = load(telescope)
    if isinstance(telescope, Telescope):
        return tel.name, {"TELESCOPE_GEOMETRY": tel.blockage_dict()}
    if isinstance(telescope, str) and telescope.strip().lower() in TELESCOPES:
        return tel.name, {}
    # a file: keep its path so that get_telescope(obs.telescope) finds it again
    return str(telescope), {"TELESCOPE_NAME": tel.name}


def from_arrays(
    us,
    vs,
    powers,
    dz,
    *,
    frequency: float | None = None,
    wavelength: float | None = None,
    telescope=None,
    names=None,
    sigma=None,
    zero_is_flag: bool = True,
    layout: str = "pyoof",
    meta: dict | None = None,
    sources=None,
) -> Observation:
    """An Observation from per-map arrays of offsets (radians) and power.

    Flagged samples (non-finite, or exact zeros with ``zero_is_flag``) are counted in a
    warning; a regular grid (to :data:`~gradfit.oof.observation.GRID_RTOL`) is put in
    u-fastest order with its ``shape`` and keeps them masked (NaN power and sigma),
    scattered samples drop them (:func:`~gradfit.oof.observation.place_samples`). See
    :func:`read_text` for the other parameters.

    Raises
    ------
    ValueError
        For a wrong dz count, maps of unequal lengths, fewer than 10 samples, maps on
        different grids, or a map with nothing left after masking.
    """
    us, vs, powers = list(us), list(vs), list(powers)
    n = len(powers)
    if not (len(us) == len(vs) == n) or n == 0:
        raise ValueError(f"from_arrays: {len(us)} u, {len(vs)} v and {n} power arrays")
    sources = list(sources) if sources is not None else [f"map {k + 1}" for k in range(n)]
    maps_raw = []
    for k in range(n):
        u = np.asarray(us[k], dtype=np.float64).ravel()
        v = np.asarray(vs[k], dtype=np.float64).ravel()
        p = np.asarray(powers[k], dtype=np.float64).ravel()
        if not (u.size == v.size == p.size):
            raise ValueError(f"{sources[k]}: u, v and power lengths differ "
                             f"({u.size}, {v.size}, {p.size})")
        if p.size < _MIN_SAMPLES:
            raise ValueError(f"{sources[k]}: {p.size} samples; a beam map needs at least "
                             f"{_MIN_SAMPLES}")
        maps_raw.append(TextMap(u, v, p, np.arange(1, p.size + 1), "rad", None, sources[k],
                                from_file=False))
    return _observation(maps_raw, dz, frequency=frequency, wavelength=wavelength,
                        telescope=telescope, names=names, sigma=sigma,
                        zero_is_flag=zero_is_flag, layout=layout, meta=meta)


def _observation(raw: list[TextMap], dz, *, frequency, wavelength, telescope, names, sigma,
                 zero_is_flag, layout, meta) -> Observation:
    n = len(raw)
    dzs = parse_dz(dz, n)
    lam, freq = _wavelength(frequency, wavelength)
    tel_label, tel_meta = _telescope_label(telescope)
    if names is None:
        stems = [Path(m.path).stem or f"MAP {k + 1}" for k, m in enumerate(raw)]
        names = stems if len(set(stems)) == n else [f"MAP {k + 1}" for k in range(n)]
    elif len(names) != n:
        raise ValueError(f"names has {len(names)} entries for {n} maps")
    if sigma is None or np.ndim(sigma) == 0:
        sigmas = [sigma] * n
    else:
        sigmas = list(sigma)
        if len(sigmas) != n:
            raise ValueError(f"sigma has {len(sigmas)} entries for {n} maps")
    grids = [regular_grid(m.u, m.v) for m in raw]
    for k in range(1, n):
        if not _same_grid(raw[0], grids[0], raw[k], grids[k]):
            raise ValueError(
                f"maps on different grids: {raw[0].path} has {_describe(raw[0], grids[0])}; "
                f"{raw[k].path} has {_describe(raw[k], grids[k])}"
            )
    maps, flagged, scan_axes = [], [], []
    for k, m in enumerate(raw):
        u, v, p, line = m.u, m.v, m.power, m.line
        s = sigmas[k]
        if s is not None:
            s = np.broadcast_to(np.asarray(s, dtype=np.float64), p.shape).copy()
            if not np.all(s > 0):
                raise ValueError(f"{m.path}: sigma must be > 0")
        bad_nan = ~(np.isfinite(u) & np.isfinite(v) & np.isfinite(p))
        bad_zero = (p == 0) if zero_is_flag else np.zeros(p.size, dtype=bool)
        bad = bad_nan | bad_zero
        n_bad = int(bad.sum())
        if n_bad:
            if n_bad == p.size:
                raise ValueError(f"{m.path}: all {p.size} samples are flagged (NaN or zero)")
            first = int(np.min(line[bad]))
            where = "line" if m.from_file else "sample"
            warnings.warn(
                f"{m.path}: masked {n_bad} flagged sample{'s' if n_bad > 1 else ''} of "
                f"{p.size} ({int(bad_nan.sum())} NaN, {int((bad_zero & ~bad_nan).sum())} "
                f"exact zero; first at {where} {first})",
                UserWarning,
                stacklevel=3,
            )
        # the one placement every reader shares: a grid (to GRID_RTOL, in any sample
        # order) keeps its flagged samples masked (NaN power and sigma); scattered
        # samples drop them
        u, v, p, s, shape, mask = place_samples(u, v, p, s, flagged=bad_zero)
        n_left = p.size if mask is None else int(mask.sum())
        if n_left < _MIN_SAMPLES:
            raise ValueError(f"{m.path}: {n_left} samples left after masking; a beam map "
                             f"needs at least {_MIN_SAMPLES}")
        flagged.append(n_bad)
        scan_axes.append(m.fast_axis)
        maps.append(BeamMap(u=u, v=v, power=p, dz=dzs[k], sigma=s, name=str(names[k]),
                            shape=shape, mask=mask))
    info = {
        "OBJECT": "unknown",
        "source": ", ".join(m.path for m in raw),
        "files": [m.path for m in raw],
        "units": [m.units for m in raw],
        "scan_axis": scan_axes,
        "n_flagged": flagged,
    }
    info.update(tel_meta)
    info.update(meta or {})
    return Observation(maps=maps, wavelength_m=lam, frequency_hz=freq, telescope=tel_label,
                       layout=layout, meta=info)


def read_text(
    paths,
    dz,
    *,
    telescope=None,
    frequency: float | None = None,
    wavelength: float | None = None,
    units: str | None = None,
    names=None,
    sigma=None,
    zero_is_flag: bool = True,
    layout: str = "pyoof",
) -> Observation:
    """An Observation from N text maps and their defocus values, in file order.

    Parameters
    ----------
    paths : sequence of str or path-like
        One file per map (any number, usually -dz, 0, +dz).
    dz : sequence of float, or str
        Defocus of each file's map (metres), in file order, or ``"-0.027,0,0.027"``.
    telescope : str, path-like or Telescope, optional
        A built-in name or a TOML file (see :func:`gradfit.oof.telescope.load`), checked
        now. ``Observation.telescope`` holds the name, or the file's path.
    frequency, wavelength : float
        Exactly one: observing frequency (Hz) or wavelength (m).
    units : {'rad', 'deg', 'arcmin', 'arcsec'}, optional
        Coordinate unit for every file; default: each file's tag, else radians.
    names : sequence of str, optional
        Map names; default: the file names without extension.
    sigma : float or sequence, optional
        Known per-sample noise (one value, or one per map); default: unknown.
    zero_is_flag : bool
        Treat exact zeros in the power column as flagged (right for raw counts).
    layout : str
        Sign convention of the data (``'pyoof'``, as for files written for pyoof).

    Returns
    -------
    Observation
        ``meta`` holds ``files``, ``units``, ``scan_axis`` (the coordinate that varies
        fastest in each file: the scan direction of a raster) and ``n_flagged``.

    Raises
    ------
    ValueError
        Naming the file and line for a bad file (see :func:`read_map`), and for a dz of
        the wrong count, maps on different grids, or a missing frequency.

    Warns
    -----
    UserWarning
        When flagged samples are masked, with their count.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise ValueError("read_text: no files given")
    parse_dz(dz, len(paths))  # the count is checked before any file is read
    raw = [read_map(p, units) for p in paths]
    return _observation(raw, dz, frequency=frequency, wavelength=wavelength,
                        telescope=telescope, names=names, sigma=sigma,
                        zero_is_flag=zero_is_flag, layout=layout, meta=None)


def write_text(path: str | os.PathLike, u, v, power, *, units: str = "rad",
               delimiter: str = " ", comment: str | None = None) -> Path:
    """Write one map as text: a unit tag, a header line, then ``u v power`` per line.

    Parameters
    ----------
    path : str or path-like
    u, v : array_like
        Offsets in radians (written in ``units``).
    power : array_like
        NaN is written as ``nan`` (a flagged sample).
    units : {'rad', 'deg', 'arcmin', 'arcsec'}
    delimiter : str
        ``' '``, ``'\\t'`` or ``','``.
    comment : str, optional
        A first comment line.
    """
    units = _unit(units, "write_text: units")
    if delimiter not in (" ", "\t", ","):
        raise ValueError(f"write_text: delimiter must be ' ', '\\t' or ',', got {delimiter!r}")
    u = np.asarray(u, dtype=np.float64).ravel() / UNITS[units]
    v = np.asarray(v, dtype=np.float64).ravel() / UNITS[units]
    p = np.asarray(power, dtype=np.float64).ravel()
    if not (u.size == v.size == p.size):
        raise ValueError(f"write_text: u, v and power lengths differ ({u.size}, {v.size}, "
                         f"{p.size})")
    path = Path(path)
    head = [f"# {comment}"] if comment else []
    head += [f"# units: {units}", delimiter.join(["u", "v", "power"])]
    body = [delimiter.join(f"{x:.17g}" for x in row) for row in zip(u, v, p)]
    path.write_text("\n".join(head + body) + "\n", encoding="utf-8")
    return path


def convert(paths, out: str | os.PathLike, dz, *, overwrite: bool = True, **kwargs) -> Path:
    """Read text maps with :func:`read_text` and write them in the pyoof FITS layout.

    ``kwargs`` go to :func:`read_text` (``telescope``, ``frequency``, ``units``, ...).
    Returns the FITS file written (by :func:`gradfit.oof.io.write`).
    """
    from gradfit.oof.io import write

    obs = read_text(paths, dz, **kwargs)
    return write(compact(obs), out, overwrite=overwrite)


def compact(obs: Observation) -> Observation:
    """The observation without its masked samples (the pyoof layout has no mask).

    Maps with a mask lose their flagged samples and with them their ``shape``.
    """
    import dataclasses

    maps = []
    for m in obs.maps:
        if m.mask is None:
            maps.append(m)
            continue
        k = m.mask
        maps.append(BeamMap(u=m.u[k], v=m.v[k], power=m.power[k], dz=m.dz,
                            sigma=None if m.sigma is None else m.sigma[k], name=m.name))
    return dataclasses.replace(obs, maps=maps)
