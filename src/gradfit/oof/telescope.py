"""Telescope descriptions for OOF holography: dish size, optics and aperture blockage.

A :class:`Telescope` knows its primary radius, focal lengths, optics and the
shape of its aperture blockage (sub-reflector or feed-cabin shadow, support
legs with optional shadow wedges). It gives the defocus path length
:meth:`Telescope.defocus_path` and a point-wise blockage test
:meth:`Telescope.illuminated`, which :mod:`gradfit.oof.aperture` averages over
sub-pixels to build an anti-aliased mask.

Built-in dishes are in :data:`TELESCOPES`; any other is described by a TOML file
(:data:`TOML_TEMPLATE`, :meth:`Telescope.from_toml`) and found by :func:`load` or
:func:`get_telescope`, which accept a registered name or the path of such a file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Telescope", "get_telescope", "load", "TELESCOPES", "TOML_TEMPLATE"]

_OPTICS = ("cassegrain", "gregorian", "prime")

#: Keys a telescope TOML file may hold (the arguments of :meth:`Telescope.generic`).
_TOML_FIELDS = (
    "name",
    "description",
    "diameter_m",
    "Fp_m",
    "F_eff_m",
    "optics",
    "blockage_radius_m",
    "leg_count",
    "leg_half_width_m",
    "leg_length_m",
    "leg_angle_deg",
    "shadow_angle_deg",
)

#: A telescope file to copy and edit (here: the Sardinia Radio Telescope, no legs).
TOML_TEMPLATE = """\
# gradfit telescope file: pass its path wherever a telescope name is accepted
name = "mydish"               # label (default: the file name)
diameter_m = 64.008           # illuminated aperture diameter, metres (required)
Fp_m = 21.0236                # primary focal length, metres (required)
F_eff_m = 149.76              # effective focal length, metres (required unless optics = "prime")
optics = "gregorian"          # "cassegrain", "gregorian" or "prime"
blockage_radius_m = 3.953     # central (sub-reflector or cabin) shadow radius, metres
leg_count = 0                 # support legs
leg_half_width_m = 0.0        # half width of each leg's shadow, metres
# leg_length_m = 28.0         # from the central shadow outwards; default: to the rim
leg_angle_deg = 0.0           # direction of the first leg, counter-clockwise from +x
shadow_angle_deg = 0.0        # opening angle of a shadow wedge beyond each leg (0: none)
"""


def _toml_str(text: str) -> str:
    """A TOML basic string."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Telescope:
    """A radio telescope as OOF holography sees it.

    Parameters
    ----------
    name : str
        Label (e.g. ``'effelsberg'``).
    primary_radius_m : float
        Radius ``pr`` of the illuminated primary aperture (metres).
    Fp_m : float
        Focal length of the primary reflector (metres).
    F_eff_m : float or None
        Effective focal length of a Cassegrain/Gregorian system (metres); None for prime focus.
    optics : {'cassegrain', 'gregorian', 'prime'}
        Optical layout; selects the defocus formula.
    blockage_radius_m : float
        Radius of the central blockage (sub-reflector or prime-focus cabin), 0 for none.
    leg_count : int
        Number of support legs (0 for none).
    leg_half_width_m : float
        Half width of each leg's shadow (metres).
    leg_length_m : float
        Length of each leg measured from the edge of the central blockage (metres);
        a leg covers ``blockage_radius_m < r < blockage_radius_m + leg_length_m``.
    leg_angle_deg : float
        Direction of the first leg, counter-clockwise from +x; the others follow at
        equal angles.
    shadow_angle_deg : float
        Opening angle of the triangular shadow beyond each leg's end (0: no shadow),
        built exactly as pyoof's ``block_effelsberg``: a wedge from ``(A, +-a)`` to the
        rim point ``(C, +-D)`` and the rim cap beyond ``C``.
    description : str
        Free text (sources, approximations).
    """

    name: str
    primary_radius_m: float
    Fp_m: float
    F_eff_m: float | None = None
    optics: str = "cassegrain"
    blockage_radius_m: float = 0.0
    leg_count: int = 0
    leg_half_width_m: float = 0.0
    leg_length_m: float = 0.0
    leg_angle_deg: float = 0.0
    shadow_angle_deg: float = 0.0
    description: str = ""

    def __post_init__(self):
        if self.optics not in _OPTICS:
            raise ValueError(
                f"telescope {self.name!r}: unknown optics {self.optics!r}; "
                f"choose one of: {', '.join(_OPTICS)}"
            )
        if not self.primary_radius_m > 0:
            raise ValueError(
                f"telescope {self.name!r}: primary_radius_m must be > 0, "
                f"got {self.primary_radius_m}"
            )
        if not self.Fp_m > 0:
            raise ValueError(f"telescope {self.name!r}: Fp_m must be > 0, got {self.Fp_m}")
        if self.optics != "prime" and (self.F_eff_m is None or not self.F_eff_m > 0):
            raise ValueError(
                f"telescope {self.name!r}: optics {self.optics!r} needs F_eff_m > 0 "
                f"(got {self.F_eff_m}); use optics='prime' for a prime-focus dish"
            )
        if not 0 <= self.blockage_radius_m < self.primary_radius_m:
            raise ValueError(
                f"telescope {self.name!r}: blockage_radius_m must be in [0, primary radius), "
                f"got {self.blockage_radius_m}"
            )
        if self.leg_count < 0 or self.leg_half_width_m < 0 or self.leg_length_m < 0:
            raise ValueError(
                f"telescope {self.name!r}: leg_count, leg_half_width_m and leg_length_m "
                "must be >= 0"
            )
        if not 0 <= self.shadow_angle_deg < 90:
            raise ValueError(
                f"telescope {self.name!r}: shadow_angle_deg must be in [0, 90), "
                f"got {self.shadow_angle_deg}"
            )

    # ----------------------------------------------------------------- factories
    @classmethod
    def generic(
        cls,
        diameter_m: float,
        Fp_m: float,
        F_eff_m: float | None = None,
        *,
        optics: str | None = None,
        blockage_radius_m: float = 0.0,
        leg_count: int = 0,
        leg_half_width_m: float = 0.0,
        leg_length_m: float | None = None,
        leg_angle_deg: float = 0.0,
        shadow_angle_deg: float = 0.0,
        name: str = "generic",
    ) -> Telescope:
        """A dish from its numbers.

        Parameters
        ----------
        diameter_m : float
            Aperture diameter (metres).
        Fp_m : float
            Primary focal length (metres).
        F_eff_m : float, optional
            Effective focal length; None (default) means prime focus.
        optics : str, optional
            'cassegrain' (default when ``F_eff_m`` is given), 'gregorian' or 'prime'.
        leg_length_m : float, optional
            Leg length from the central blockage; default: out to the rim.
        Other parameters are as in :class:`Telescope`.
        """
        if optics is None:
            optics = "prime" if F_eff_m is None else "cassegrain"
        pr = 0.5 * float(diameter_m)
        if leg_length_m is None:
            leg_length_m = max(pr - blockage_radius_m, 0.0) if leg_count else 0.0
        return cls(
            name=name,
            primary_radius_m=pr,
            Fp_m=float(Fp_m),
            F_eff_m=None if F_eff_m is None else float(F_eff_m),
            optics=optics,
            blockage_radius_m=float(blockage_radius_m),
            leg_count=int(leg_count),
            leg_half_width_m=float(leg_half_width_m),
            leg_length_m=float(leg_length_m),
            leg_angle_deg=float(leg_angle_deg),
            shadow_angle_deg=float(shadow_angle_deg),
            description="generic dish",
        )

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> Telescope:
        """A dish from a TOML file holding the arguments of :meth:`generic`.

        Required: ``diameter_m`` and ``Fp_m``; ``F_eff_m`` too unless
        ``optics = "prime"``. Optional: ``name`` (default: the file's stem),
        ``optics``, ``blockage_radius_m``, ``leg_count``, ``leg_half_width_m``,
        ``leg_length_m``, ``leg_angle_deg``, ``shadow_angle_deg`` and ``description``.
        See :data:`TOML_TEMPLATE`.

        Raises
        ------
        ValueError
            Naming the file and the field: a missing required field, an unknown key,
            a value of the wrong type, a negative or non-finite number, or a file that
            is not valid TOML. A missing file raises ``ValueError`` too.
        """
        import tomllib

        path = Path(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ValueError(f"telescope file {str(path)!r} does not exist") from None
        except IsADirectoryError:
            raise ValueError(f"telescope file {str(path)!r} is a directory") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML ({exc})") from None
        return cls._from_mapping(data, str(path), default_name=path.stem)

    @classmethod
    def _from_mapping(cls, data: dict, source: str, default_name: str) -> Telescope:
        unknown = sorted(set(data) - set(_TOML_FIELDS))
        if unknown:
            hint = ""
            if "primary_radius_m" in unknown:
                hint = " (give diameter_m = 2 x the primary radius)"
            raise ValueError(
                f"{source}: unknown field {unknown[0]!r}{hint}; valid fields: "
                f"{', '.join(_TOML_FIELDS)}"
            )
        optics = data.get("optics")
        if optics is not None and (not isinstance(optics, str) or optics not in _OPTICS):
            raise ValueError(
                f"{source}: field 'optics' = {optics!r}; choose one of: {', '.join(_OPTICS)}"
            )
        required = ["diameter_m", "Fp_m"]
        if optics != "prime":
            required.append("F_eff_m")
        for key in required:
            if key not in data:
                extra = (
                    " (or set optics = \"prime\" for a prime-focus dish)"
                    if key == "F_eff_m" else ""
                )
                raise ValueError(f"{source}: missing field {key!r}{extra}")
        values = {}
        for key in _TOML_FIELDS:
            if key not in data or key in ("name", "description", "optics"):
                continue
            value = data[key]
            if key == "leg_count":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(
                        f"{source}: field 'leg_count' must be an integer, got {value!r}"
                    )
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{source}: field {key!r} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{source}: field {key!r} must be finite, got {value!r}")
            if key in ("diameter_m", "Fp_m", "F_eff_m") and not value > 0:
                raise ValueError(f"{source}: field {key!r} must be > 0, got {value!r}")
            if key != "leg_angle_deg" and value < 0:
                raise ValueError(f"{source}: field {key!r} must be >= 0, got {value!r}")
            values[key] = value
        for key in ("name", "description"):
            if key in data and not isinstance(data[key], str):
                raise ValueError(f"{source}: field {key!r} must be a string, got {data[key]!r}")
        name = data.get("name", default_name)
        try:
            tel = cls.generic(
                values.pop("diameter_m"),
                values.pop("Fp_m"),
                values.pop("F_eff_m", None),
                optics=optics,
                name=name,
                **values,
            )
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        description = data.get("description", f"from {source}")
        return dataclasses.replace(tel, description=description)

    def to_toml(self) -> str:
        """This dish as TOML text that :meth:`from_toml` reads back to an equal Telescope."""
        lines = [f"name = {_toml_str(self.name)}"]
        if self.description:
            lines.append(f"description = {_toml_str(self.description)}")
        lines += [
            f"diameter_m = {2 * self.primary_radius_m!r}",
            f"Fp_m = {self.Fp_m!r}",
        ]
        if self.F_eff_m is not None:
            lines.append(f"F_eff_m = {self.F_eff_m!r}")
        lines += [
            f"optics = {_toml_str(self.optics)}",
            f"blockage_radius_m = {self.blockage_radius_m!r}",
            f"leg_count = {self.leg_count}",
            f"leg_half_width_m = {self.leg_half_width_m!r}",
            f"leg_length_m = {self.leg_length_m!r}",
            f"leg_angle_deg = {self.leg_angle_deg!r}",
            f"shadow_angle_deg = {self.shadow_angle_deg!r}",
        ]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------- physics
    def defocus_path(self, r, dz):
        """Extra path length delta(r) of a ray hitting the aperture at radius ``r``.

        Prime focus: ``delta = dz (1 - a^2)/(1 + a^2)`` with ``a = r/(2 Fp)``;
        Cassegrain/Gregorian: ``delta = dz [(1 - a^2)/(1 + a^2) + (1 - b^2)/(1 + b^2)]``
        with ``b = r/(2 F_eff)`` (pyoof's ``opd_effelsberg``).

        Parameters
        ----------
        r : array_like or torch.Tensor
            Radius in the aperture plane (metres).
        dz : float
            Axial defocus of the sub-reflector (or feed), metres.

        Returns
        -------
        Same type as ``r``: path length in metres.
        """
        a2 = (r / (2.0 * self.Fp_m)) ** 2
        out = (1 - a2) / (1 + a2)
        if self.optics != "prime":
            b2 = (r / (2.0 * self.F_eff_m)) ** 2
            out = out + (1 - b2) / (1 + b2)
        return dz * out

    @property
    def _shadow_points(self) -> tuple[float, float, float, float]:
        """``(A, a, C, D)`` of pyoof's shadow wedge for the leg along +x."""
        pr, a = self.primary_radius_m, self.leg_half_width_m
        A = self.blockage_radius_m + self.leg_length_m
        alpha = math.radians(self.shadow_angle_deg)
        csc2 = math.sin(alpha) ** -2
        d = (-a + math.sqrt(a * a - (a * a - pr * pr) * csc2)) / csc2
        return A, a, d / math.tan(alpha), a + d

    def illuminated(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Point-wise mask B(x, y): True where the aperture is open.

        All inequalities are strict, as in pyoof's ``block_effelsberg``.

        Parameters
        ----------
        x, y : numpy.ndarray
            Aperture-plane coordinates (metres), broadcastable.

        Returns
        -------
        numpy.ndarray of bool
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        pr, sr = self.primary_radius_m, self.blockage_radius_m
        r2 = x * x + y * y
        open_ = (r2 < pr * pr) & (r2 > sr * sr)
        if self.leg_count == 0 or self.leg_half_width_m == 0:
            return open_
        a = self.leg_half_width_m
        A = sr + self.leg_length_m
        shadow = self.shadow_angle_deg > 0
        if shadow:
            _, _, C, D = self._shadow_points
        for k in range(self.leg_count):
            ang = math.radians(self.leg_angle_deg) + 2 * math.pi * k / self.leg_count
            # pyoof's 4 legs sit exactly on the axes; avoid cos(pi/2) = 6e-17 noise there
            c, s = round(math.cos(ang), 15), round(math.sin(ang), 15)
            xl = c * x + s * y  # along the leg
            yl = -s * x + c * y  # across the leg
            if self.leg_count == 4 and self.leg_angle_deg == 0.0:
                # both directions of one axis: the same test as block_effelsberg
                blocked = (-A < xl) & (xl < A) & (-a < yl) & (yl < a)
                if k >= 2:
                    blocked = np.zeros_like(blocked)
            else:
                blocked = (0 <= xl) & (xl < A) & (-a < yl) & (yl < a)
            if shadow:
                half = a + (D - a) * (xl - A) / (C - A)
                blocked = blocked | ((A < xl) & (xl < C) & (-half < yl) & (yl < half))
                blocked = blocked | ((C < xl) & (xl < pr))
            open_ = open_ & ~blocked
        return open_

    def blockage_dict(self) -> dict:
        """JSON-ready description of the geometry."""
        return {
            "name": self.name,
            "primary_radius_m": self.primary_radius_m,
            "Fp_m": self.Fp_m,
            "F_eff_m": self.F_eff_m,
            "optics": self.optics,
            "blockage_radius_m": self.blockage_radius_m,
            "leg_count": self.leg_count,
            "leg_half_width_m": self.leg_half_width_m,
            "leg_length_m": self.leg_length_m,
            "leg_angle_deg": self.leg_angle_deg,
            "shadow_angle_deg": self.shadow_angle_deg,
        }


# Sources of the built-in geometries (checked 2026-11; "approximate" marks what is not
# the real dish):
# - effelsberg: exactly pyoof's telgeometry.block_effelsberg / opd_effelsberg
#   (github.com/tcassanelli/pyoof), so that fits agree with pyoof's.
# - srt: the numbers of the SRT configuration shipped with pyoof-srt
#   (github.com/pinno/pyoof-srt, sample_input_files/run_config.yaml: radius 32.004 m,
#   focus_primary_reflector 21.0236 m, total_focus 149.76 m) and the 7.9 m Gregorian
#   sub-reflector (en.wikipedia.org/wiki/Sardinia_Radio_Telescope; shadow radius
#   3.953 m). Approximate: the quadrupod legs holding the sub-reflector are left out
#   (their shadow width is not published in the sources above), and the shaped
#   Gregorian surfaces are treated with the classical (unshaped) defocus formula.
# - gbt: Green Bank Observatory, "Basic GBT Info - Quick Technical Facts"
#   (greenbankobservatory.org): 110 m x 100 m unblocked section of a 208 m parent
#   paraboloid, 100 m effective diameter, f/D (prime) = 0.6 referred to the 100 m
#   effective parabola -> Fp = 60 m, f/D (Gregorian) = 1.9 -> F_eff = 190 m, 8 m
#   sub-reflector off the aperture (no blockage, no legs). Approximate: the offset
#   geometry is treated as an axisymmetric dish of 100 m diameter, so the defocus
#   pattern lacks the asymmetric (coma-like) part of a real offset system, whose
#   parent axis lies 54 m from the aperture centre.
# - alma: ALMA Project Book ch. 4 (Andersen & Napier; www.cv.nrao.edu/~demerson/almapbk):
#   12 m Cassegrain, primary f/D = 0.4 -> Fp = 4.8 m, f/8 at the Cassegrain focus ->
#   F_eff = 96 m, 0.75 m sub-reflector on a quadripod. Approximate: leg width
#   (0.1 m), orientation (45 deg) and length (to the rim) are guesses; the three
#   antenna designs differ in their quadripods.
# - jcmt: JAC "JCMT Optical Constants" (www.jach.hawaii.edu/JCMT/telescope/pointing/
#   optics.html): Dp = 15 m, Ds = 0.75 m, Fp = 5.4 m, 2c = 9.136 m between prime and
#   real focus; the rim ray then gives a magnification of 33.3 -> F_eff = 180 m (f/12).
#   (Before this check Fp was 4.5 m, which is wrong.) Approximate: leg width and
#   orientation of the quadripod are guesses.
TELESCOPES: dict[str, Telescope] = {
    "effelsberg": Telescope(
        name="effelsberg",
        primary_radius_m=50.0,
        Fp_m=30.0,
        F_eff_m=387.39435,
        optics="gregorian",
        blockage_radius_m=3.25,
        leg_count=4,
        leg_half_width_m=1.0,
        leg_length_m=20.0,
        leg_angle_deg=0.0,
        shadow_angle_deg=10.0,
        description="Effelsberg 100 m, exactly as pyoof.telgeometry.block_effelsberg and "
        "opd_effelsberg",
    ),
    "srt": Telescope(
        name="srt",
        primary_radius_m=32.004,
        Fp_m=21.0236,
        F_eff_m=149.76,
        optics="gregorian",
        blockage_radius_m=3.953,
        description="Sardinia Radio Telescope 64 m, Gregorian (numbers of pyoof-srt); "
        "7.9 m sub-reflector shadow; quadrupod legs not modelled",
    ),
    "gbt": Telescope(
        name="gbt",
        primary_radius_m=50.0,
        Fp_m=60.0,
        F_eff_m=190.0,
        optics="gregorian",
        description="GBT-like: unblocked offset Gregorian treated as a 100 m circular "
        "aperture; Fp = 60 m (f/D 0.6), F_eff = 190 m (f/D 1.9); offset-optics defocus "
        "asymmetry not modelled",
    ),
    "alma": Telescope(
        name="alma",
        primary_radius_m=6.0,
        Fp_m=4.8,
        F_eff_m=96.0,
        optics="cassegrain",
        blockage_radius_m=0.375,
        leg_count=4,
        leg_half_width_m=0.05,
        leg_length_m=5.625,
        leg_angle_deg=45.0,
        description="ALMA 12 m antenna, f/0.4 primary, Cassegrain f/8; sub-reflector "
        "0.75 m, quadripod (approximate leg width and orientation)",
    ),
    "jcmt": Telescope(
        name="jcmt",
        primary_radius_m=7.5,
        Fp_m=5.4,
        F_eff_m=180.0,
        optics="cassegrain",
        blockage_radius_m=0.375,
        leg_count=4,
        leg_half_width_m=0.1,
        leg_length_m=7.125,
        leg_angle_deg=45.0,
        description="JCMT 15 m, Fp = 5.4 m, Cassegrain f/12; sub-reflector 0.75 m, "
        "quadripod (approximate leg width and orientation)",
    ),
}


def _is_path(name: str) -> bool:
    """Whether a telescope argument names a file rather than a built-in dish."""
    return name.lower().endswith(".toml") or os.sep in name or "/" in name


def load(name_or_path: str | os.PathLike | Telescope) -> Telescope:
    """A built-in telescope by name, or one described by a TOML file.

    Parameters
    ----------
    name_or_path : str, path-like or Telescope
        A name in :data:`TELESCOPES` (case-insensitive), or the path of a TOML file
        with the fields of :meth:`Telescope.generic` (see :data:`TOML_TEMPLATE`); a
        Telescope is returned as it is.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones and says how to write a
        file) or a bad file (the message names the file and the field).
    """
    if isinstance(name_or_path, Telescope):
        return name_or_path
    if isinstance(name_or_path, os.PathLike):
        return Telescope.from_toml(name_or_path)
    if not isinstance(name_or_path, str):
        raise TypeError(
            "telescope must be a name, a TOML file path or a Telescope, "
            f"not {type(name_or_path).__name__}"
        )
    key = name_or_path.strip().lower()
    if key in TELESCOPES:
        return TELESCOPES[key]
    if _is_path(name_or_path) or Path(name_or_path).is_file():
        return Telescope.from_toml(name_or_path)
    raise ValueError(
        f"unknown telescope {name_or_path!r}; choose one of: {', '.join(sorted(TELESCOPES))}, "
        "or describe the dish in a TOML file and pass its path, e.g. mydish.toml holding "
        'name = "mydish", diameter_m = 25.0, Fp_m = 10.0, F_eff_m = 120.0, '
        'optics = "cassegrain", blockage_radius_m = 1.0, leg_count = 4, '
        "leg_half_width_m = 0.1 (full template: gradfit.oof.telescope.TOML_TEMPLATE)"
    )


def get_telescope(name: str | os.PathLike | Telescope) -> Telescope:
    """The registered telescope called ``name`` (case-insensitive), a TOML file's, or ``name``.

    The same as :func:`load`.

    Raises
    ------
    ValueError
        If the name is not registered (the message lists the valid ones and says how to
        describe another dish in a file), or the file is invalid.
    """
    return load(name)
