"""Telescope descriptions for OOF holography: dish size, optics and aperture blockage.

A :class:`Telescope` knows its primary radius, focal lengths, optics and the
shape of its aperture blockage (sub-reflector or feed-cabin shadow, support
legs with optional shadow wedges). It gives the defocus path length
:meth:`Telescope.defocus_path` and a point-wise blockage test
:meth:`Telescope.illuminated`, which :mod:`gradfit.oof.aperture` averages over
sub-pixels to build an anti-aliased mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Telescope", "get_telescope", "TELESCOPES"]

_OPTICS = ("cassegrain", "gregorian", "prime")


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
    "gbt": Telescope(
        name="gbt",
        primary_radius_m=50.0,
        Fp_m=60.0,
        F_eff_m=190.0,
        optics="gregorian",
        description="GBT-like: unblocked (offset) 100 m circular aperture, Gregorian; "
        "Fp = 60 m, F_eff approximate (defocus treated as for an axisymmetric system)",
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
        description="ALMA 12 m antenna, Cassegrain f/8; sub-reflector 0.75 m, quadripod "
        "(approximate leg width)",
    ),
    "jcmt": Telescope(
        name="jcmt",
        primary_radius_m=7.5,
        Fp_m=4.5,
        F_eff_m=180.0,
        optics="cassegrain",
        blockage_radius_m=0.375,
        leg_count=4,
        leg_half_width_m=0.1,
        leg_length_m=7.125,
        leg_angle_deg=45.0,
        description="JCMT 15 m, Cassegrain f/12; sub-reflector 0.75 m, quadripod "
        "(approximate leg width)",
    ),
}


def get_telescope(name: str | Telescope) -> Telescope:
    """The registered telescope called ``name`` (case-insensitive), or ``name`` itself.

    Raises
    ------
    ValueError
        If the name is not registered; the message lists the valid ones.
    """
    if isinstance(name, Telescope):
        return name
    if not isinstance(name, str):
        raise TypeError(f"telescope must be a name or a Telescope, not {type(name).__name__}")
    key = name.strip().lower()
    if key not in TELESCOPES:
        raise ValueError(
            f"unknown telescope {name!r}; choose one of: {', '.join(sorted(TELESCOPES))} "
            "(or build one with Telescope.generic(...))"
        )
    return TELESCOPES[key]
