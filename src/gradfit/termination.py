"""One process-wide flag: termination was asked for (the CLI's SIGTERM handler sets it).

It lives in a module that imports nothing beyond the standard library, so the signal
handler can set it without importing anything: an import inside a handler can land in
the middle of another import (the command's own lazy imports of torch or astropy) and
fail there. :mod:`gradfit.oof.output` reads it before it commits a result.
"""

from __future__ import annotations

import threading

__all__ = ["STOP"]

#: set by a termination handler (the CLI's SIGTERM): no result is committed after it
STOP = threading.Event()
