"""Progress reports of the OOF fits: ``progress`` as False/None, True (a line on
stderr) or a callable ``progress(info)``; shared by :func:`gradfit.oof.fit` and the
pixel fits."""

from __future__ import annotations

import sys

__all__ = ["reporter"]


def reporter(progress):
    """``report(**info)`` for a ``progress`` option (bool or callable)."""
    if progress is None or progress is False:
        return lambda **info: None
    if progress is True:
        def report(**info):
            parts = [str(info.get("stage", ""))]
            parts += [f"{k} {v}" for k, v in info.items() if k != "stage" and v is not None]
            sys.stderr.write("\r  " + ", ".join(parts) + " " * 8)
            if info.get("stage") == "done":
                sys.stderr.write("\n")
            sys.stderr.flush()

        return report
    if callable(progress):
        return lambda **info: progress(info)
    raise TypeError(f"progress must be a bool or a callable progress(info), not "
                    f"{type(progress).__name__}")
