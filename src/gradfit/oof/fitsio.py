"""A small FITS reader and writer for the files gradfit.oof reads and writes.

Importing astropy.io.fits (and, for writing tables, astropy.table) costs more than the
whole 49 x 49 OOF fit in a fresh ``gradfit oof fit`` process. The files involved are
simple: a primary header, binary tables of fixed-width numeric (or character) columns,
and 2-D float64 images. This module handles exactly that subset of the FITS standard
(version 4.0: 80-character cards, 2880-byte blocks, big-endian data).

:func:`read` raises :class:`Unsupported` for anything outside the subset (scaled or
null-flagged columns, variable-length arrays, long-string CONTINUE cards, a file that
ends early, ...); :func:`gradfit.oof.io.read` then falls back to astropy, which also
words the error messages for broken files. :func:`write` is used for every file
gradfit writes.
"""

from __future__ import annotations

import math
import re

import numpy as np

__all__ = ["Unsupported", "Header", "read", "write", "table_hdu", "image_hdu"]

BLOCK = 2880
_TFORM = {"L": "i1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8"}
_TFORM_RE = re.compile(r"^\s*(\d*)([A-Z])\s*$")


class Unsupported(Exception):
    """The file uses FITS features beyond this module's subset (use astropy instead)."""


class Header:
    """Ordered FITS header: case-insensitive ``in``, ``[]``, ``get``; iteration gives keys."""

    def __init__(self, cards=()):
        self.cards: list[tuple[str, object, str]] = []
        for key, value, *comment in cards:
            self.cards.append((key.upper(), value, comment[0] if comment else ""))

    def __contains__(self, key) -> bool:
        key = str(key).upper()
        return any(k == key for k, _, _ in self.cards)

    def __getitem__(self, key):
        key = str(key).upper()
        for k, v, _ in self.cards:
            if k == key:
                return v
        raise KeyError(key)

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __iter__(self):
        return iter([k for k, _, _ in self.cards])

    def __setitem__(self, key, value):
        if isinstance(value, tuple):
            value, comment = value
        else:
            comment = ""
        key = str(key).upper()
        for i, (k, _, c) in enumerate(self.cards):
            if k == key:
                self.cards[i] = (k, value, comment or c)
                return
        self.cards.append((key, value, comment))


class _Column:
    def __init__(self, name: str):
        self.name = name


class HDU:
    """One HDU read by :func:`read`: ``header``, ``name``, ``columns`` and ``data``."""

    def __init__(self, header: Header, columns=None, data=None, is_table=False):
        self.header = header
        self.name = str(header.get("EXTNAME", "PRIMARY" if "SIMPLE" in header else "")).strip()
        self.columns = columns or []
        self.data = data
        self.is_table = is_table


class HDUList(list):
    """The HDUs of a file; ``name in hdul`` and ``hdul[name]`` look up EXTNAME."""

    def __contains__(self, name) -> bool:
        if isinstance(name, str):
            return any(h.name.upper() == name.upper() for h in self)
        return list.__contains__(self, name)

    def __getitem__(self, key):
        if isinstance(key, str):
            for h in self:
                if h.name.upper() == key.upper():
                    return h
            raise KeyError(key)
        out = list.__getitem__(self, key)
        return HDUList(out) if isinstance(key, slice) else out

    def index(self, hdu) -> int:
        for i, h in enumerate(self):
            if h is hdu:
                return i
        raise ValueError("HDU not in list")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


# ---------------------------------------------------------------------------- reading
def _value(text: str, key: str):
    """The value of a card's value field (columns 11-80), as astropy would give it."""
    s = text.strip()
    if s.startswith("'"):
        m = re.match(r"'((?:[^']|'')*)'", s)
        if m is None:
            raise Unsupported(f"card {key}: unterminated string")
        return m.group(1).replace("''", "'").rstrip()
    s = s.split("/", 1)[0].strip()
    if s == "":
        return None
    if s == "T":
        return True
    if s == "F":
        return False
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s.replace("D", "E"))
    except ValueError:
        raise Unsupported(f"card {key}: value {s!r} is not a plain number") from None


def _read_header(buf: bytes, pos: int) -> tuple[Header, int]:
    cards = []
    while True:
        if pos + BLOCK > len(buf):
            raise Unsupported("file ends inside a header")
        block = buf[pos:pos + BLOCK]
        pos += BLOCK
        for i in range(0, BLOCK, 80):
            card = block[i:i + 80].decode("ascii", errors="replace")
            key = card[:8].strip()
            if key == "END":
                return Header(cards), pos
            if key in ("CONTINUE", "HIERARCH"):
                raise Unsupported(f"{key} cards")
            if key in ("", "COMMENT", "HISTORY") or card[8:10] != "= ":
                continue
            cards.append((key, _value(card[10:], key), ""))


def _data_size(h: Header) -> int:
    naxis = int(h.get("NAXIS", 0))
    if naxis == 0:
        return 0
    n = 1
    for i in range(1, naxis + 1):
        n *= int(h[f"NAXIS{i}"])
    return abs(int(h.get("BITPIX", 8))) // 8 * int(h.get("GCOUNT", 1)) * (
        int(h.get("PCOUNT", 0)) + n)


def _table(h: Header, raw: bytes) -> HDU:
    nfields = int(h["TFIELDS"])
    if int(h.get("PCOUNT", 0)) != 0 or "THEAP" in h:
        raise Unsupported("variable-length columns")
    names, fields = [], []
    for i in range(1, nfields + 1):
        for k in ("TSCAL", "TZERO", "TNULL", "TDIM"):
            if f"{k}{i}" in h:
                raise Unsupported(f"{k}{i}")
        m = _TFORM_RE.match(str(h[f"TFORM{i}"]).upper())
        if m is None:
            raise Unsupported(f"TFORM{i}")
        rep = int(m.group(1) or 1)
        code = m.group(2)
        if code == "A":
            dt = (f"S{rep}",)
        elif code in _TFORM and code != "L":
            dt = (_TFORM[code], (rep,)) if rep != 1 else (_TFORM[code],)
        else:
            raise Unsupported(f"TFORM{i} = {code}")
        name = str(h.get(f"TTYPE{i}", f"col{i}")).strip()
        names.append(name)
        fields.append((f"f{i}", *dt))
    dtype = np.dtype(fields)
    nrows, width = int(h["NAXIS2"]), int(h["NAXIS1"])
    if dtype.itemsize != width:
        raise Unsupported("row width does not match the columns")
    rec = np.frombuffer(raw, dtype=dtype, count=nrows)
    data = {}
    for i, name in enumerate(names):
        col = rec[f"f{i + 1}"]
        data[name] = col if col.dtype.kind == "S" else col.astype(col.dtype.newbyteorder("="))
    return HDU(h, [_Column(n) for n in names], _Data(data), is_table=True)


class _Data(dict):
    """Column name (case-insensitive) -> array."""

    def __getitem__(self, key):
        for k in self:
            if k.upper() == str(key).upper():
                return dict.__getitem__(self, k)
        raise KeyError(key)


def read(path) -> HDUList:
    """Read a FITS file of the supported subset; :class:`Unsupported` otherwise."""
    with open(path, "rb") as f:
        buf = f.read()
    if not buf.startswith(b"SIMPLE  ="):
        raise Unsupported("not a FITS file")
    hdus = HDUList()
    pos = 0
    while pos < len(buf):
        if hdus and not buf.startswith(b"XTENSION", pos):
            if buf[pos:].strip(b"\0 "):
                raise Unsupported("bytes after the last HDU")
            break
        h, pos = _read_header(buf, pos)
        size = _data_size(h)
        if pos + size > len(buf):
            raise Unsupported("file ends inside the data")
        raw = buf[pos:pos + size]
        pos += -(-size // BLOCK) * BLOCK
        xt = str(h.get("XTENSION", "")).strip().upper()
        if not hdus:
            if not h.get("SIMPLE"):
                raise Unsupported("SIMPLE = F")
            hdus.append(HDU(h))
        elif xt == "BINTABLE":
            hdus.append(_table(h, raw))
        elif xt == "IMAGE":
            hdus.append(HDU(h))
        else:
            raise Unsupported(f"XTENSION = {xt}")
    return hdus


# ---------------------------------------------------------------------------- writing
def _card(key: str, value, comment: str = "") -> bytes:
    key = key.upper()
    if isinstance(value, (bool, np.bool_)):
        v = f"{'T' if value else 'F':>20}"
    elif isinstance(value, (int, np.integer)):
        v = f"{int(value):>20d}"
    elif isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"FITS header {key}: {value} is not finite")
        s = f"{value:.16G}"
        if "." not in s and "E" not in s:
            s += ".0"
        elif "E" in s and "." not in s.split("E")[0]:
            m, e = s.split("E")
            s = f"{m}.0E{e}"
        v = f"{s:>20}"
    elif isinstance(value, str):
        text = "".join(c if 32 <= ord(c) < 127 else "?" for c in value).replace("'", "''")
        v = f"'{text:<8}'"
        if len(v) > 70:
            raise ValueError(f"FITS header {key}: string longer than 68 characters")
    else:
        raise TypeError(f"FITS header {key}: {type(value).__name__} is not a header value")
    card = f"{key:<8}= {v}"
    if comment:
        card += f" / {comment}"
    return card[:80].ljust(80).encode("ascii", errors="replace")


def _header_bytes(cards) -> bytes:
    out = b"".join(_card(*c) for c in cards) + b"END".ljust(80)
    return out + b" " * (-len(out) % BLOCK)


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def table_hdu(name: str, columns, cards=()) -> bytes:
    """A BINTABLE HDU: ``columns`` is a list of ``(name, array, unit)``; float64 ('D')
    columns, or byte strings ('nA')."""
    arrays = []
    fields, tcards = [], []
    n = None
    for i, (cname, arr, unit) in enumerate(columns, 1):
        arr = np.asarray(arr)
        if arr.dtype.kind in "SU":
            arr = np.char.encode(arr.astype(str), "ascii") if arr.dtype.kind == "U" else arr
            width = max(arr.dtype.itemsize, 1)
            fields.append((f"f{i}", f"S{width}"))
            tform = f"{width}A"
        else:
            arr = np.asarray(arr, dtype=np.float64).ravel()
            fields.append((f"f{i}", ">f8"))
            tform = "D"
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise ValueError(f"column {cname}: {arr.shape[0]} rows, expected {n}")
        arrays.append(arr)
        tcards += [(f"TTYPE{i}", cname), (f"TFORM{i}", tform)]
        if unit:
            tcards.append((f"TUNIT{i}", unit))
    rec = np.empty(n or 0, dtype=np.dtype(fields))
    for i, arr in enumerate(arrays, 1):
        rec[f"f{i}"] = arr
    head = [("XTENSION", "BINTABLE", "binary table extension"), ("BITPIX", 8),
            ("NAXIS", 2), ("NAXIS1", rec.dtype.itemsize), ("NAXIS2", rec.shape[0]),
            ("PCOUNT", 0), ("GCOUNT", 1), ("TFIELDS", len(arrays))]
    head += tcards + [("EXTNAME", name)] + list(cards)
    return _header_bytes(head) + _pad(rec.tobytes())


def image_hdu(data, cards=()) -> bytes:
    """A primary HDU holding a 2-D float64 image (``data[y, x]``)."""
    a = np.ascontiguousarray(np.asarray(data, dtype=">f8"))
    head = [("SIMPLE", True, "conforms to FITS standard"), ("BITPIX", -64),
            ("NAXIS", a.ndim)] + [(f"NAXIS{i}", a.shape[a.ndim - i])
                                  for i in range(1, a.ndim + 1)]
    head += [("EXTEND", True)] + list(cards)
    return _header_bytes(head) + _pad(a.tobytes())


def primary_hdu(cards=()) -> bytes:
    """A primary HDU without data."""
    head = [("SIMPLE", True, "conforms to FITS standard"), ("BITPIX", 8), ("NAXIS", 0),
            ("EXTEND", True)] + list(cards)
    return _header_bytes(head)


def write(path, hdus) -> None:
    """Write HDUs (bytes from :func:`primary_hdu`, :func:`image_hdu`, :func:`table_hdu`)."""
    with open(path, "wb") as f:
        for h in hdus:
            f.write(h)
