"""Read and write OOF holography observations and fit results (FITS, JSON).

Two input layouts are detected automatically:

- **pyoof**: primary header ``FREQ``, ``WAVEL``, ``MEANEL``, ``OBJECT``, ``DATE_OBS``
  (optionally ``TELESCOP``, ``NOISE``); binary tables ``MINUS OOF``, ``ZERO OOF`` and
  ``PLUS OOF``, each with header ``DZ`` (m) and columns ``U``, ``V`` (radians) and ``BEAM``.
  Files written by gradfit may hold any number of maps (primary header ``NMAPS``) and an
  optional per-point ``SIGMA`` column.
- **oof** (B. Nikolic's original OOF code): one binary table per map with columns ``DX``,
  ``DY`` (radians), ``FNu`` and optionally ``UFNu`` (per-point error), and header ``dz``.
  The frequency (``FREQ``) or wavelength (``WAVEL``) comes from the primary header or,
  failing that, from the first map's header.

Every problem with an input file raises :class:`OOFDataError` (a ``ValueError``) whose
message names the file and the HDU, column or header keyword at fault; a path that is not
a regular file, or is larger than :data:`MAX_INPUT_BYTES`, is refused before it is read.

Files that use only simple FITS features (fixed-width numeric columns, no scaling) are
read and all files are written by :mod:`gradfit.oof.fitsio`, which imports nothing
heavy; anything else is read by astropy. Writers go through a temporary file renamed
into place (:func:`gradfit.oof.output.atomic_path`).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np

from gradfit.oof.observation import BeamMap, Observation, place_samples

__all__ = [
    "OOFDataError",
    "read",
    "write",
    "write_solution",
    "write_maps",
    "write_fit_result",
    "PYOOF_MAP_NAMES",
    "MAX_INPUT_BYTES",
]

#: The map tables of a pyoof file, in pyoof's order.
PYOOF_MAP_NAMES = ("MINUS OOF", "ZERO OOF", "PLUS OOF")

#: Largest input file :func:`read` opens (bytes). Beam maps of 1000 x 1000 points in
#: ten maps take about 250 MB; anything far larger is not an OOF observation, and a
#: device such as /dev/zero would otherwise be read until memory runs out.
MAX_INPUT_BYTES = 2 * 1024**3

_C = 299_792_458.0  # speed of light, m/s
_TRUTH_HDU = "GRADFIT TRUTH"


class OOFDataError(ValueError):
    """An OOF input file is missing, unreadable or inconsistent.

    The message names the file and the HDU, column or header keyword at fault.
    """


# ---------------------------------------------------------------------------- reading


def read(path: str | os.PathLike, *, max_bytes: int | None = None) -> Observation:
    """Read an OOF holography observation from a FITS file.

    The layout (pyoof or original OOF) is detected from the file's contents.

    Parameters
    ----------
    path : str or path-like
        The FITS file.
    max_bytes : int, optional
        Refuse files larger than this (default :data:`MAX_INPUT_BYTES`).

    Returns
    -------
    Observation
        With ``layout`` set to ``'pyoof'`` or ``'oof'``, or, for a file written by
        :func:`write`, the layout recorded there (a simulation keeps ``'gradfit'``).
        Maps keep the file's order.
        ``shape`` is ``(n_v, n_u)`` when a map's samples form a regular grid with u
        varying fastest, else None; the samples of a grid written in another order (v
        fastest, scans back and forth) are put in that order. On a grid, samples whose
        BEAM (or SIGMA) is NaN or infinite stay in place, flagged by the map's ``mask``;
        samples with a non-finite U or V, or off a grid, are dropped.

    Raises
    ------
    OOFDataError
        If the file is missing, not a regular file, larger than ``max_bytes``, not FITS
        or truncated, or an HDU, column or header keyword is missing, duplicated or
        invalid, or a map is all zero or all NaN.

    Warns
    -----
    UserWarning
        When samples with a NaN (or infinite) value are masked; the message says how
        many, in which map.
    """
    from gradfit.oof import fitsio

    path = Path(path)
    size = _regular_file_size(path, max_bytes)
    try:
        # the common, simple files without importing astropy (a fresh process's cost)
        hdul = fitsio.read(path)
        tables = [h for h in hdul[1:] if h.is_table]
    except fitsio.Unsupported:
        hdul = None
    except OSError as exc:
        raise OOFDataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if hdul is None:
        hdul, tables = _astropy_open(path, size)
    with hdul:
        if not tables:
            raise OOFDataError(
                f"{path}: no binary table HDUs; expected the pyoof layout "
                f"({', '.join(PYOOF_MAP_NAMES)}) or OOF tables with DX, DY, FNu columns"
            )
        if _is_pyoof(hdul, tables):
            return _read_pyoof(path, hdul, tables)
        return _read_oof(path, hdul, tables)


def _astropy_open(path: Path, size: int):
    """Open with astropy (the general reader), checking that no HDU is cut short."""
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            # astropy warns on non-standard cards; the checks below are what matters here
            warnings.simplefilter("ignore")
            hdul = fits.open(path, memmap=False)
            hdul.verify("silentfix")
            hdul.readall()
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise OOFDataError(f"{path}: not a readable FITS file ({_one_line(exc)})") from None
    try:
        _check_complete(path, hdul, size)
    except OOFDataError:
        hdul.close()
        raise
    return hdul, [h for h in hdul[1:] if isinstance(h, fits.BinTableHDU | fits.TableHDU)]


def _one_line(exc) -> str:
    return "; ".join(s.strip() for s in str(exc).strip().splitlines() if s.strip())


def _regular_file_size(path: Path, max_bytes: int | None) -> int:
    """The size of ``path``, refusing what is not a regular file of a sane size.

    Checked before anything is read: a FIFO, a device (``/dev/zero``) or a huge file
    would otherwise block or be read until memory runs out.
    """
    import stat

    try:
        st = path.stat()
    except FileNotFoundError:
        raise OOFDataError(f"{path}: no such file") from None
    except OSError as exc:
        raise OOFDataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise OOFDataError(f"{path}: is a directory, not a FITS file")
    if not stat.S_ISREG(st.st_mode):
        raise OOFDataError(
            f"{path}: not a regular file (a device, pipe or socket); give a FITS file"
        )
    limit = MAX_INPUT_BYTES if max_bytes is None else int(max_bytes)
    if st.st_size > limit:
        raise OOFDataError(
            f"{path}: {st.st_size} bytes is larger than the input limit of {limit} bytes; "
            "this is not an OOF observation (raise max_bytes if it really is)"
        )
    if st.st_size == 0:
        raise OOFDataError(f"{path}: empty file, not a FITS file")
    return int(st.st_size)


def _data_bytes(header) -> int:
    """Bytes of an HDU's data from its header (FITS standard 4.4.1, without padding)."""
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return 0
    dims = [int(header.get(f"NAXIS{i}", 0)) for i in range(1, naxis + 1)]
    if header.get("GROUPS") and dims and dims[0] == 0:  # random groups
        dims = dims[1:]
    n = 1
    for d in dims:
        n *= d
    gcount = int(header.get("GCOUNT", 1))
    pcount = int(header.get("PCOUNT", 0))
    return abs(int(header.get("BITPIX", 8))) // 8 * gcount * (pcount + n)


def _check_complete(path: Path, hdul, size: int) -> None:
    """Raise a 'truncated' OOFDataError if an HDU's data run past the end of the file."""
    end = 0
    for i, hdu in enumerate(hdul):
        info = hdul.fileinfo(i)
        if info is None:
            continue
        need = int(info["datLoc"]) + _data_bytes(hdu.header)
        if need > size:
            raise OOFDataError(
                f"{path}: truncated: {_hdu_label(hdu, i)} needs {need} bytes but the file "
                f"has {size} (the file was cut short; copy it again)"
            )
        end = int(info["datLoc"]) + int(info["datSpan"])
    # bytes after the last complete HDU that astropy skipped: a header cut short (padding
    # after the last HDU, e.g. zero blocks, is not an HDU and is allowed)
    if size - end >= 8:
        with open(path, "rb") as f:
            f.seek(end)
            start = f.read(8)
    else:
        start = b""
    if start == b"XTENSION":
        raise OOFDataError(
            f"{path}: truncated: {size - end} bytes after the last complete HDU do not form "
            "a complete HDU (the file was cut short; copy it again)"
        )


def _colnames(hdu) -> list[str]:
    return [c.name for c in hdu.columns]


def _has_col(hdu, name: str) -> bool:
    return any(c.upper() == name.upper() for c in _colnames(hdu))


def _extname(hdu) -> str:
    return str(hdu.header.get("EXTNAME", hdu.name or "")).strip().upper()


def _hdu_label(hdu, index: int) -> str:
    name = _extname(hdu)
    return f"HDU {index} ({name!r})" if name else f"HDU {index}"


def _is_pyoof(hdul, tables) -> bool:
    names = {_extname(h) for h in tables}
    if names & set(PYOOF_MAP_NAMES):
        return True
    if "NMAPS" in hdul[0].header:
        return True
    has_beam = any(_has_col(h, "BEAM") for h in tables)
    has_fnu = any(_has_col(h, "FNU") for h in tables)
    return has_beam and not has_fnu


def _column(path, label, hdu, name) -> np.ndarray:
    """One column, flattened to 1-D float64 (array-valued cells are concatenated)."""
    match = [c for c in _colnames(hdu) if c.upper() == name.upper()]
    if not match:
        raise OOFDataError(
            f"{path}: {label}: missing column {name!r} (columns: {', '.join(_colnames(hdu))})"
        )
    raw = hdu.data[match[0]] if hdu.data is not None else np.zeros(0)
    try:
        if raw.dtype == object:  # variable-length array column
            arr = np.concatenate([np.ravel(np.asarray(r, dtype=np.float64)) for r in raw])
        else:
            arr = np.ravel(np.asarray(raw, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise OOFDataError(f"{path}: {label}: column {match[0]!r} is not numeric ({exc})") from None
    return arr


def _header_float(path, where, header, keys, *, required=True):
    """The first of ``keys`` present in ``header`` as a finite float (None if absent)."""
    for key in keys:
        if key in header:
            value = header[key]
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise OOFDataError(
                    f"{path}: {where}: header {key} = {value!r} is not a number"
                ) from None
            if not math.isfinite(value):
                raise OOFDataError(f"{path}: {where}: header {key} = {value} is not finite")
            return value
    if required:
        raise OOFDataError(f"{path}: {where}: missing header keyword {keys[0]}")
    return None


def _wavelength(path, headers) -> tuple[float, float]:
    """(wavelength_m, frequency_hz) from the first header list entry that has either."""
    for where, header in headers:
        freq = _header_float(path, where, header, ("FREQ", "FREQUENCY", "OBSFREQ"), required=False)
        wavel = _header_float(path, where, header, ("WAVEL", "WAVELEN"), required=False)
        if freq is None and wavel is None:
            continue
        for key, value in (("FREQ", freq), ("WAVEL", wavel)):
            if value is not None and value <= 0:
                raise OOFDataError(f"{path}: {where}: header {key} = {value} must be positive")
        if wavel is None:
            wavel = _C / freq
        elif freq is None:
            freq = _C / wavel
        elif abs(wavel * freq / _C - 1) > 1e-3:
            warnings.warn(
                f"{path}: {where}: WAVEL = {wavel} m and FREQ = {freq} Hz disagree "
                f"(c/FREQ = {_C / freq} m); using WAVEL",
                UserWarning,
                stacklevel=4,
            )
        return wavel, freq
    raise OOFDataError(
        f"{path}: {headers[0][0]}: missing header keyword FREQ (or WAVEL); "
        "the observing frequency is needed"
    )


def _make_map(path, label, name, u, v, power, sigma, dz) -> BeamMap:
    """Check one map's arrays, mask non-finite samples, and build the BeamMap."""
    lengths = {"U": u.size, "V": v.size, "BEAM": power.size}
    if sigma is not None:
        lengths["SIGMA"] = sigma.size
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k} {n}" for k, n in lengths.items())
        raise OOFDataError(f"{path}: {label}: column lengths differ ({detail})")
    if power.size == 0:
        raise OOFDataError(f"{path}: {label}: map has no samples")
    finite = np.isfinite(u) & np.isfinite(v) & np.isfinite(power)
    if sigma is not None:
        finite &= np.isfinite(sigma)
    n_bad = int(power.size - finite.sum())
    if n_bad == power.size:
        raise OOFDataError(f"{path}: {label}: all {power.size} samples are NaN or infinite")
    if n_bad:
        warnings.warn(
            f"{path}: {label}: masked {n_bad} of {power.size} samples with NaN or infinite values",
            UserWarning,
            stacklevel=4,
        )
    # the one placement every reader shares: a grid (to GRID_RTOL, in any sample order)
    # keeps its flagged samples masked (NaN power and sigma); scattered ones drop them
    u, v, power, sigma, shape, mask = place_samples(u, v, power, sigma)
    used = slice(None) if mask is None else mask
    if not np.any(power[used] != 0):
        raise OOFDataError(f"{path}: {label}: map is all zero")
    if sigma is not None and np.any(sigma[used] <= 0):
        raise OOFDataError(
            f"{path}: {label}: per-point errors must be positive "
            f"({int(np.sum(sigma[used] <= 0))} values <= 0)"
        )
    return BeamMap(u=u, v=v, power=power, dz=dz, sigma=sigma, name=name, shape=shape,
                   mask=mask)


_STRUCTURAL = {
    "SIMPLE",
    "BITPIX",
    "NAXIS",
    "EXTEND",
    "COMMENT",
    "HISTORY",
    "",
    "FREQ",
    "WAVEL",
    "TELESCOP",
    "NOISE",
    "NMAPS",
    "ORIGIN",
    "LAYOUT",
}


def _meta(header) -> dict:
    """Primary-header values other than the structural and parsed ones."""
    meta = {}
    for key in header:
        if key in _STRUCTURAL or key.startswith("NAXIS"):
            continue
        value = header[key]
        if isinstance(value, (bool, int, float, str)):
            meta[key] = value
    return meta


def _layout(header, default: str) -> str:
    """The layout recorded by :func:`write` (so simulations keep their convention)."""
    if str(header.get("ORIGIN", "")).strip() == "gradfit":
        layout = str(header.get("LAYOUT", "")).strip().lower()
        if layout in ("gradfit", "pyoof", "oof"):
            return layout
    return default


def _read_truth(hdul) -> dict | None:
    if _TRUTH_HDU not in hdul:
        return None
    try:
        text = hdul[_TRUTH_HDU].data["JSON"][0]
        text = text.decode() if isinstance(text, bytes) else str(text)
        return json.loads(text)
    except (KeyError, IndexError, ValueError, TypeError):
        warnings.warn(f"HDU {_TRUTH_HDU!r} is unreadable; truth ignored", UserWarning, stacklevel=3)
        return None


def _no_duplicate_names(path, map_hdus) -> None:
    """Two map HDUs with one name: which one is meant is unknowable, so refuse."""
    seen: dict[str, int] = {}
    for index, hdu in map_hdus:
        name = _extname(hdu)
        if not name:
            continue
        if name in seen:
            raise OOFDataError(
                f"{path}: HDUs {seen[name]} and {index} are both named {name!r}; "
                "each map must appear once"
            )
        seen[name] = index


def _read_pyoof(path, hdul, tables) -> Observation:
    primary = hdul[0].header
    wavel, freq = _wavelength(path, [("primary header", primary)])
    if "NMAPS" in primary:
        try:
            nmaps = int(primary["NMAPS"])
        except (TypeError, ValueError):
            raise OOFDataError(
                f"{path}: primary header: NMAPS = {primary['NMAPS']!r} is not an integer"
            ) from None
        map_hdus = [(hdul.index(h), h) for h in tables if _has_col(h, "BEAM")]
        if len(map_hdus) != nmaps:
            names = [_extname(h) for _, h in map_hdus]
            raise OOFDataError(
                f"{path}: primary header NMAPS = {nmaps} but {len(map_hdus)} map HDUs "
                f"with a BEAM column were found ({', '.join(names) or 'none'})"
            )
    else:
        map_hdus = []
        for name in PYOOF_MAP_NAMES:
            found = [h for h in tables if _extname(h) == name]
            if not found:
                present = ", ".join(_extname(h) or "?" for h in tables)
                raise OOFDataError(
                    f"{path}: missing HDU {name!r} (pyoof layout needs "
                    f"{', '.join(PYOOF_MAP_NAMES)}; found: {present})"
                )
            if len(found) > 1:
                where = ", ".join(str(hdul.index(h)) for h in found)
                raise OOFDataError(
                    f"{path}: {len(found)} HDUs are named {name!r} (HDUs {where}); "
                    "each map must appear once"
                )
            map_hdus.append((hdul.index(found[0]), found[0]))
        map_hdus.sort(key=lambda t: t[0])
    _no_duplicate_names(path, map_hdus)

    noise = _header_float(path, "primary header", primary, ("NOISE",), required=False)
    if noise is not None and noise <= 0:
        raise OOFDataError(f"{path}: primary header: NOISE = {noise} must be positive")
    maps = []
    for index, hdu in map_hdus:
        label = _hdu_label(hdu, index)
        dz = _header_float(path, label, hdu.header, ("DZ",))
        u = _column(path, label, hdu, "U")
        v = _column(path, label, hdu, "V")
        power = _column(path, label, hdu, "BEAM")
        if _has_col(hdu, "SIGMA"):
            sigma = _column(path, label, hdu, "SIGMA")
        elif noise is not None:
            sigma = np.full(power.size, noise)
        else:
            sigma = None
        maps.append(_make_map(path, label, _extname(hdu), u, v, power, sigma, dz))

    extra = {"NOISE": noise} if noise is not None else {}
    return _observation(path, hdul, maps, wavel, freq, "pyoof", extra)


def _read_oof(path, hdul, tables) -> Observation:
    primary = hdul[0].header
    map_hdus = []
    for hdu in tables:
        index = hdul.index(hdu)
        if _extname(hdu) == _TRUTH_HDU:
            continue
        present = [c for c in ("DX", "DY", "FNU") if _has_col(hdu, c)]
        if not present:
            continue  # an auxiliary table, not a beam map
        if len(present) < 3:
            missing = next(c for c in ("DX", "DY", "FNu") if not _has_col(hdu, c))
            raise OOFDataError(
                f"{path}: {_hdu_label(hdu, index)}: missing column {missing!r} "
                f"(OOF layout needs DX, DY, FNu; columns: {', '.join(_colnames(hdu))})"
            )
        map_hdus.append((index, hdu))
    # (OOF-layout files name every table alike, e.g. 'OOF BEAM'; their dz tells them apart)
    if not map_hdus:
        first = tables[0]
        raise OOFDataError(
            f"{path}: {_hdu_label(first, hdul.index(first))}: no beam-map table found; "
            f"expected HDUs {', '.join(PYOOF_MAP_NAMES)} (pyoof layout, columns U, V, BEAM) "
            f"or tables with columns DX, DY, FNu (OOF layout); "
            f"columns: {', '.join(_colnames(first))}"
        )
    headers = [("primary header", primary)] + [(_hdu_label(h, i), h.header) for i, h in map_hdus]
    wavel, freq = _wavelength(path, headers)
    maps = []
    for index, hdu in map_hdus:
        label = _hdu_label(hdu, index)
        dz = _header_float(path, label, hdu.header, ("DZ",))
        u = _column(path, label, hdu, "DX")
        v = _column(path, label, hdu, "DY")
        power = _column(path, label, hdu, "FNu")
        sigma = _column(path, label, hdu, "UFNu") if _has_col(hdu, "UFNU") else None
        name = _extname(hdu) or f"MAP {len(maps) + 1}"
        maps.append(_make_map(path, label, name, u, v, power, sigma, dz))
    return _observation(path, hdul, maps, wavel, freq, "oof")


def _observation(path, hdul, maps, wavel, freq, layout: str, extra_meta=None) -> Observation:
    """The Observation of a read file: telescope, metadata and truth from its headers."""
    primary = hdul[0].header
    telescope = primary.get("TELESCOP")
    telescope = str(telescope).strip().lower() if telescope not in (None, "") else None
    meta = _meta(primary)
    meta.update(extra_meta or {})
    meta["source"] = str(path)
    return Observation(
        maps=maps,
        wavelength_m=wavel,
        frequency_hz=freq,
        telescope=telescope,
        layout=_layout(primary, layout),
        meta=meta,
        truth=_read_truth(hdul),
    )


# ---------------------------------------------------------------------------- writing


def _map_names(obs: Observation) -> list[str]:
    """HDU names: pyoof's three names where they fit, else the maps' own (unique) names."""
    dzs = [m.dz for m in obs.maps]
    if len(dzs) == 3 and dzs[0] < 0 and dzs[1] == 0 and dzs[2] > 0:
        return list(PYOOF_MAP_NAMES)
    names = [m.name.strip().upper() for m in obs.maps]
    if all(names) and len(set(names)) == len(names) and _TRUTH_HDU not in names:
        return names
    return [f"MAP {i + 1}" for i in range(len(obs.maps))]


def _ascii(text) -> str:
    """FITS header strings must be printable ASCII."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in str(text))


def _header_value(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        return _ascii(value)[:68]
    if isinstance(value, (bool, int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value
    return None


def write(obs: Observation, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write an observation as FITS in the pyoof layout (readable by :func:`read` and pyoof).

    Three maps at dz < 0, 0, > 0 are named ``MINUS OOF``, ``ZERO OOF``, ``PLUS OOF``;
    other sets of maps keep their own names and the primary header records ``NMAPS``.
    A noise level common to all samples goes to the primary header ``NOISE``, per-point
    errors otherwise to a ``SIGMA`` column; ``obs.truth`` goes to an HDU
    ``GRADFIT TRUTH`` (JSON), after the maps. A masked sample is written with NaN power
    (and sigma), so that :func:`read` masks it again.

    Parameters
    ----------
    obs : Observation
    path : str or path-like
        Output FITS file; its directory must exist.
    overwrite : bool
        Replace an existing file; if False, an existing file raises
        :class:`~gradfit.oof.output.OutputError` (a ``ValueError``).

    Returns
    -------
    Path
        The file written.
    """
    from gradfit.oof import fitsio
    from gradfit.oof.output import atomic_path

    path = Path(path)
    if not obs.maps:
        raise ValueError("write: the observation has no maps")
    h = fitsio.Header()
    h["FREQ"] = (float(obs.frequency_hz), "observing frequency (Hz)")
    h["WAVEL"] = (float(obs.wavelength_m), "observing wavelength (m)")
    h["MEANEL"] = (float(obs.meta.get("MEANEL", 0.0)), "mean elevation (deg)")
    h["OBJECT"] = _ascii(obs.meta.get("OBJECT", "unknown"))[:68]
    h["DATE_OBS"] = _ascii(obs.meta.get("DATE_OBS", obs.meta.get("DATE-OBS", "unknown")))[:68]
    if obs.telescope:
        h["TELESCOP"] = _ascii(obs.telescope)[:68]
    names = _map_names(obs)
    standard = names == list(PYOOF_MAP_NAMES)
    if not standard:
        h["NMAPS"] = (len(obs.maps), "number of beam-map tables")

    common = None
    if all(m.sigma is not None and m.sigma.size for m in obs.maps):
        # a flagged sample's sigma is NaN (place_samples): the others decide
        used = np.concatenate([m.sigma[m.valid] for m in obs.maps])
        if used.size and np.all(used == used[0]):
            common = float(used[0])
    if common is not None:
        h["NOISE"] = (common, "noise sigma per sample, units of BEAM")
    reserved = {"SIMPLE", "BITPIX", "NAXIS", "EXTEND", "END", "XTENSION", "PCOUNT", "GCOUNT",
                "NOISE", "SOURCE", "NMAPS", "COMMENT", "HISTORY", "CONTINUE", "HIERARCH"}
    for key, value in obs.meta.items():
        key_u = str(key).upper()
        if key_u in h or key_u in reserved or key_u.startswith("NAXIS") or len(key_u) > 8:
            continue
        if not key_u.replace("_", "").replace("-", "").isalnum():
            continue
        value = _header_value(value)
        if value is not None:
            h[key_u] = value
    h["ORIGIN"] = "gradfit"
    h["LAYOUT"] = (obs.layout, "layout/convention of the data's origin")

    # gradfit's own small FITS writer: astropy.table alone costs more to import than a fit
    hdus = [fitsio.primary_hdu(h.cards)]
    for name, m in zip(names, obs.maps, strict=True):
        # a masked sample is written as NaN, which the reader masks again: a hand-made
        # map may hold a finite value there (the caller's arrays are not touched)
        cols = [("U", m.u, "rad"), ("V", m.v, "rad"), ("BEAM", m.masked_power(), "")]
        if m.sigma is not None and common is None:
            sigma = m.sigma if m.mask is None else np.where(m.mask, m.sigma, np.nan)
            cols.append(("SIGMA", sigma, ""))
        hdus.append(fitsio.table_hdu(name, cols, [("DZ", float(m.dz),
                                                   "subreflector defocus (m)")]))
    if obs.truth is not None:
        text = json.dumps(obs.truth, default=_json_default)
        hdus.append(fitsio.table_hdu(_TRUTH_HDU, [("JSON", np.array([text.encode("ascii")]),
                                                   "")]))
    # a temporary file renamed into place: a full disk or an interrupt leaves the old
    # file (or none), never a truncated one
    with atomic_path(path, overwrite=overwrite) as tmp:
        fitsio.write(tmp, hdus)
    return path


def write_maps(obs: Observation, powers, path: str | os.PathLike) -> Path:
    """Write model (or residual) power for each map of ``obs`` in the pyoof layout.

    Parameters
    ----------
    obs : Observation
        Supplies the sample positions, defocus and metadata.
    powers : sequence of 1-D arrays
        One per map, the same length as the map.
    path : str or path-like
        Output FITS file.
    """
    powers = [np.asarray(p, dtype=np.float64).ravel() for p in powers]
    if len(powers) != len(obs.maps):
        raise ValueError(f"write_maps: {len(powers)} arrays for {len(obs.maps)} maps")
    maps = []
    for m, p in zip(obs.maps, powers, strict=True):
        if p.size != m.n:
            raise ValueError(f"write_maps: map {m.name!r} has {m.n} samples, got {p.size} values")
        maps.append(BeamMap(u=m.u, v=m.v, power=p, dz=m.dz, name=m.name, shape=m.shape))
    out = Observation(
        maps=maps,
        wavelength_m=obs.wavelength_m,
        frequency_hz=obs.frequency_hz,
        telescope=obs.telescope,
        layout=obs.layout,
        meta={k: v for k, v in obs.meta.items() if k != "NOISE"},
    )
    return write(out, path)


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def to_json(data: dict, **kwargs) -> str:
    """``json.dumps`` that also accepts NumPy arrays and scalars."""
    return json.dumps(data, default=_json_default, **kwargs)


def _image_hdu(data, unit: str, what: str, extent_m, telescope, wavelength_m) -> bytes:
    """A 2-D float64 image as FITS bytes, with its axes in metres (written by fitsio)."""
    from gradfit.oof import fitsio

    data = np.asarray(data, dtype=np.float64)
    cards = [("BUNIT", unit, what), ("BTYPE", what)]
    if extent_m is not None:
        ny, nx = data.shape
        x0, x1, y0, y1 = extent_m
        # pixel centres span the extent edges
        for axis, (lo, hi, n) in ((1, (x0, x1, nx)), (2, (y0, y1, ny))):
            step = (hi - lo) / n
            cards += [(f"CTYPE{axis}", "X" if axis == 1 else "Y"), (f"CUNIT{axis}", "m"),
                      (f"CRPIX{axis}", 1.0), (f"CRVAL{axis}", lo + 0.5 * step),
                      (f"CDELT{axis}", step)]
    if telescope:
        cards.append(("TELESCOP", _ascii(telescope)[:68]))
    if wavelength_m:
        cards.append(("WAVEL", float(wavelength_m), "observing wavelength (m)"))
    cards.append(("ORIGIN", "gradfit"))
    return fitsio.image_hdu(data, cards)


def _write_image(hdu: bytes, path: Path) -> None:
    from gradfit.oof import fitsio
    from gradfit.oof.output import atomic_path

    with atomic_path(path) as tmp:
        fitsio.write(tmp, [hdu])


def _unpack_map(result):
    """A map method may return the 2-D array, or (array, extent) / (x, y, array)."""
    if isinstance(result, tuple):
        if len(result) == 3:
            x, y, data = (np.asarray(a, dtype=np.float64) for a in result)
            if x.ndim == 2:
                x, y = x[0], y[:, 0]
            dx = (x[-1] - x[0]) / max(x.size - 1, 1)
            dy = (y[-1] - y[0]) / max(y.size - 1, 1)
            return data, (x[0] - dx / 2, x[-1] + dx / 2, y[0] - dy / 2, y[-1] + dy / 2)
        if len(result) == 2:
            data, extent = result
            return np.asarray(data, dtype=np.float64), tuple(float(e) for e in extent)
    return np.asarray(result, dtype=np.float64), None


def write_solution(sol, outdir: str | os.PathLike, *, extra: dict | None = None) -> dict:
    """Write a fit's results: ``solution.json``, ``phase.fits``, ``surface.fits`` and,
    where the solution gives one, ``surface_error.fits`` (1σ uncertainty, µm).

    Parameters
    ----------
    sol : Solution
        From :func:`gradfit.oof.fit`; needs ``to_dict()``, ``phase_map()`` and
        ``surface_map()``.
    outdir : str or path-like
        Output directory (created if needed).
    extra : dict, optional
        Added to the JSON under its keys (e.g. ``"input"``: where the data came from).

    Returns
    -------
    dict
        The JSON content written (plain Python values).
    """
    from gradfit.oof.output import atomic_path

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # a degenerate fit has NaN errors; its rms over an all-NaN map is NaN, said once
        warnings.filterwarnings("ignore", message="Mean of empty slice", category=RuntimeWarning)
        data = dict(sol.to_dict())
    if extra:
        data.update(extra)
    text = to_json(data, indent=2)
    with atomic_path(outdir / "solution.json") as tmp:
        tmp.write_text(text + "\n")
    data = json.loads(text)  # JSON-ready: NumPy values become plain Python

    extent = getattr(sol, "extent_m", None)
    telescope = getattr(sol, "telescope", None)
    telescope = getattr(telescope, "name", telescope)
    wavelength = getattr(sol, "wavelength_m", None)
    phase, ext = _unpack_map(sol.phase_map())
    _write_image(_image_hdu(phase, "rad", "aperture phase", ext or extent, telescope,
                            wavelength), outdir / "phase.fits")
    surface, ext = _unpack_map(sol.surface_map())
    _write_image(_image_hdu(surface, "um", "surface error", ext or extent, telescope,
                            wavelength), outdir / "surface.fits")
    if hasattr(sol, "surface_error_map"):
        err, ext = _unpack_map(sol.surface_error_map())
        _write_image(_image_hdu(err, "um", "surface error uncertainty (1 sigma)",
                                ext or extent, telescope, wavelength),
                     outdir / "surface_error.fits")
    return data


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, tuple | None, dict]:
    """Read a map written by :func:`write_solution`: (data, extent_m or None, header dict)."""
    from astropy.io import fits

    path = Path(path)
    if not path.exists():
        raise OOFDataError(f"{path}: no such file")
    try:
        with fits.open(path, memmap=False) as hdul:
            data = np.asarray(hdul[0].data, dtype=np.float64)
            h = hdul[0].header
            header = {k: h[k] for k in h if k not in ("COMMENT", "HISTORY", "")}
    except (OSError, ValueError, TypeError) as exc:
        raise OOFDataError(f"{path}: not a readable FITS image ({exc})") from None
    if data.ndim != 2:
        raise OOFDataError(f"{path}: primary HDU: expected a 2-D image, got shape {data.shape}")
    extent = None
    if all(f"CDELT{a}" in header for a in (1, 2)):
        ny, nx = data.shape
        x0 = header["CRVAL1"] - (header["CRPIX1"] - 0.5) * header["CDELT1"]
        y0 = header["CRVAL2"] - (header["CRPIX2"] - 0.5) * header["CDELT2"]
        extent = (x0, x0 + nx * header["CDELT1"], y0, y0 + ny * header["CDELT2"])
    return data, extent, header


def write_fit_result(staging, sol, obs, *, input_path=None, input_sha256=None,
                     settings=None, adequacy=None, extra=None) -> dict:
    """Write a fit's files into ``staging``: solution.json, the FITS maps, model.fits.

    Parameters
    ----------
    staging : path-like
        The directory to write into (:attr:`gradfit.oof.output.ResultDir.staging`).
    sol : Solution
        From :func:`gradfit.oof.fit`.
    obs : Observation
        The fitted observation (sample positions of ``model.fits``).
    input_path, input_sha256 : optional
        Recorded under ``input`` in solution.json (the fingerprint decides later
        whether a refit may replace this result).
    settings : dict, optional
        The fit's settings, recorded under ``settings``.
    adequacy : dict, optional
        From :func:`gradfit.oof.checks.assess`, recorded under ``adequacy``.
    extra : dict, optional
        More top-level keys.

    Returns
    -------
    dict
        The JSON written.
    """
    staging = Path(staging)
    info = {
        "path": str(Path(input_path).resolve()) if input_path else None,
        "sha256": input_sha256,
        "layout": obs.layout,
        "n_maps": len(obs.maps),
        "points_per_map": [m.n for m in obs.maps],
        "masked_per_map": [m.n - m.n_used for m in obs.maps],
    }
    more = {"input": info, "settings": dict(settings or {})}
    if adequacy is not None:
        more["adequacy"] = dict(adequacy)
    more.update(extra or {})
    data = write_solution(sol, staging, extra=more)
    write_maps(obs, sol.model_maps(), staging / "model.fits")
    return data
