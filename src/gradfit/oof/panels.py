"""Panel layouts of a reflector: rings of equal panels, read from a small text file.

File format (``#`` starts a comment; blank lines are ignored), one ring per line::

    # r_inner_m  r_outer_m  n_panels  [angle0_deg]
    3.25   6.00   12
    6.00   8.75   20   4.5

A ring spans radii ``[r_inner_m, r_outer_m)`` and is cut into ``n_panels`` equal
azimuthal sectors, the first starting at ``angle0_deg`` (default 0) from the +x axis,
counter-clockwise. Rings must not overlap. Panels are numbered ring by ring from the
inside out, and counter-clockwise within a ring.

:func:`effelsberg_like` is a 17-ring layout with panels about 2.75 m x 2.5 m (1,000
or so panels; the real Effelsberg surface has 2,372 smaller panels in 17 rings).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

__all__ = ["PanelLayout", "read_panel_layout", "effelsberg_like", "panel_offsets_um"]


@dataclass(frozen=True)
class PanelLayout:
    """Rings of panels: ``rings[k] = (r_inner_m, r_outer_m, n_panels, angle0_deg)``."""

    rings: tuple

    def __post_init__(self):
        if not self.rings:
            raise ValueError("a panel layout needs at least one ring")
        prev = -math.inf
        for k, ring in enumerate(self.rings):
            if len(ring) != 4:
                raise ValueError(f"ring {k}: expected (r_inner_m, r_outer_m, n_panels, "
                                 f"angle0_deg), got {ring!r}")
            r0, r1, n, _ = ring
            if not (0 <= r0 < r1 and math.isfinite(r1)):
                raise ValueError(f"ring {k}: need 0 <= r_inner_m < r_outer_m, got {r0}, {r1}")
            if int(n) != n or n < 1:
                raise ValueError(f"ring {k}: n_panels must be an integer >= 1, got {n}")
            if r0 < prev - 1e-12:
                raise ValueError(f"ring {k} starts at r = {r0} m inside the previous ring "
                                 f"(ends at {prev} m); rings must be ordered and not overlap")
            prev = r1

    @property
    def n_panels(self) -> int:
        return int(sum(r[2] for r in self.rings))

    def panel_of(self, x, y) -> np.ndarray:
        """Panel number at each point ``(x, y)`` (metres), -1 off every panel."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        r = np.hypot(x, y)
        out = np.full(r.shape, -1, dtype=np.int64)
        first = 0
        for r0, r1, n, a0 in self.rings:
            inside = (r >= r0) & (r < r1)
            ang = (np.degrees(np.arctan2(y[inside], x[inside])) - a0) % 360.0
            out[inside] = first + np.minimum((ang / (360.0 / n)).astype(np.int64), n - 1)
            first += int(n)
        return out

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` (metres) of the centre of each panel (mid radius, mid angle)."""
        xs, ys = [], []
        for r0, r1, n, a0 in self.rings:
            a = np.radians(a0 + (np.arange(n) + 0.5) * 360.0 / n)
            rm = 0.5 * (r0 + r1)
            xs.append(rm * np.cos(a))
            ys.append(rm * np.sin(a))
        return np.concatenate(xs), np.concatenate(ys)

    def to_text(self) -> str:
        """The layout in the file format of this module."""
        lines = ["# gradfit panel layout: one ring per line",
                 "# r_inner_m  r_outer_m  n_panels  angle0_deg"]
        lines += [f"{r0:.6g} {r1:.6g} {int(n)} {a0:.6g}" for r0, r1, n, a0 in self.rings]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str, source: str = "<text>") -> PanelLayout:
        """Parse the file format (see the module docstring)."""
        rings = []
        for ln, line in enumerate(text.splitlines(), 1):
            body = line.split("#", 1)[0].strip()
            if not body:
                continue
            parts = body.split()
            if len(parts) not in (3, 4):
                raise ValueError(f"{source}, line {ln}: expected 'r_inner_m r_outer_m n_panels "
                                 f"[angle0_deg]', got {line.strip()!r}")
            try:
                r0, r1 = float(parts[0]), float(parts[1])
                n = int(parts[2])
                a0 = float(parts[3]) if len(parts) == 4 else 0.0
            except ValueError as exc:
                raise ValueError(f"{source}, line {ln}: {exc} in {line.strip()!r}") from None
            rings.append((r0, r1, n, a0))
        if not rings:
            raise ValueError(f"{source}: no rings found (one 'r_inner_m r_outer_m n_panels' "
                             "line per ring)")
        try:
            return cls(tuple(rings))
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None


def read_panel_layout(path: str | os.PathLike) -> PanelLayout:
    """Read a panel layout file (format in the module docstring)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ValueError(f"cannot read panel layout file {path!r}: {exc.strerror}") from None
    return PanelLayout.from_text(text, source=path)


def effelsberg_like(r_inner_m: float = 3.25, r_outer_m: float = 50.0, n_rings: int = 17,
                    panel_width_m: float = 2.5) -> PanelLayout:
    """Rings of equal width from ``r_inner_m`` to ``r_outer_m``, panels about
    ``panel_width_m`` wide along the ring (a multiple of 4 per ring), every other ring
    turned by half a panel (as panels are staggered on real dishes)."""
    edges = np.linspace(r_inner_m, r_outer_m, int(n_rings) + 1)
    rings = []
    for k in range(int(n_rings)):
        rm = 0.5 * (edges[k] + edges[k + 1])
        n = max(4, 4 * int(round(2 * math.pi * rm / panel_width_m / 4)))
        rings.append((float(edges[k]), float(edges[k + 1]), n, 180.0 / n * (k % 2)))
    return PanelLayout(tuple(rings))


def panel_offsets_um(layout: PanelLayout, low_um: float = 100.0, high_um: float = 300.0,
                     seed: int = 0) -> np.ndarray:
    """Random panel offsets (micrometres): magnitudes uniform in ``[low_um, high_um]``,
    random signs, one per panel."""
    if not 0 <= low_um <= high_um:
        raise ValueError(f"need 0 <= low_um <= high_um, got {low_um}, {high_um}")
    rng = np.random.default_rng(seed)
    mag = rng.uniform(low_um, high_um, layout.n_panels)
    return mag * rng.choice([-1.0, 1.0], layout.n_panels)
