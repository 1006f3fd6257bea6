"""A wall-time budget for long work (an OOF fit, its error estimates).

:func:`time_budget` wraps a ``progress`` callback so that every progress report checks
the clock, and, on POSIX in the main thread, also arms a timer (``SIGALRM``) so that a
step that reports nothing (choosing the aperture grid, one long model evaluation) is
stopped too. Either way the work ends with :class:`BudgetExceeded`, which says how far
it got.

``BudgetExceeded`` derives from ``BaseException`` (as ``KeyboardInterrupt`` does): it
is a stop from outside the computation, and no ``except Exception`` inside a solver
may turn it into a result.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time

__all__ = ["BudgetExceeded", "time_budget"]


class BudgetExceeded(BaseException):
    """The wall-time budget ran out; ``str()`` says the budget and the last progress."""

    def __init__(self, seconds: float, where: str = ""):
        self.seconds = float(seconds)
        self.where = where
        msg = f"time budget of {seconds:g} s exceeded"
        if where:
            msg += f" ({where})"
        super().__init__(msg)


_STAGES = {"grid": "while choosing the aperture grid", "fit": "while fitting",
           "profile": "during the profile-likelihood intervals",
           "mcmc": "while sampling the posterior"}


def _where(info: dict | None) -> str:
    if not info:
        return ""
    stage = str(info.get("stage", ""))
    parts = [_STAGES.get(stage, stage)]
    if info.get("nit") is not None:
        parts.append(f"evaluation {info['nit']}")
    if isinstance(info.get("fun"), (int, float)):
        parts.append(f"-log L {float(info['fun']):.6g}")
    return ", ".join(p for p in parts if p)


@contextlib.contextmanager
def time_budget(seconds: float | None, progress=None):
    """Yield a progress callback that raises :class:`BudgetExceeded` after ``seconds``.

    Parameters
    ----------
    seconds : float or None
        The budget; None means no limit (the callback only forwards).
    progress : callable, optional
        Called with each report's dict before the clock is checked.

    Yields
    ------
    callable
        ``report(info=None, **kw)``, to pass as ``progress=`` to :func:`gradfit.oof.fit`.
    """
    if seconds is not None and not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"time budget must be a positive number of seconds, got {seconds}")
    t0 = time.monotonic()
    last: dict = {}

    def report(info=None, **kw):
        info = dict(info or {}, **kw)
        last.clear()
        last.update(info)
        if progress is not None:
            progress(info)
        if seconds is not None and time.monotonic() - t0 > seconds:
            raise BudgetExceeded(seconds, _where(last))

    use_alarm = (seconds is not None and hasattr(signal, "setitimer")
                 and threading.current_thread() is threading.main_thread())
    old = None
    if use_alarm:
        def on_alarm(signum, frame):
            raise BudgetExceeded(seconds, _where(last))

        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield report
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
