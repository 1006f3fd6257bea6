"""Write OOF results so that they are never lost or mixed.

A fit's result is a directory (``solution.json``, FITS maps, figures) that appears
all at once or not at all:

- everything is written into a staging directory next to the target
  (``.NAME.tmp-XXXX`` in the same parent, so the final step is a rename, not a copy),
  then swapped into place; an earlier result is replaced only once the new one is
  complete, and a result that fails half-way leaves the earlier one untouched;
- a lock file next to the target (``.NAME.lock``) keeps two writers apart: the second
  gets :class:`OutputBusyError` at once instead of mixing its files with the first's;
- a directory that holds files gradfit did not write, an input of the fit, or an
  earlier result of a *different* input is not replaced unless ``overwrite=True``.

Single files (an observation written by ``gradfit oof simulate``) go through
:func:`atomic_path`: a temporary file in the same directory, renamed over the target.

This module imports nothing heavy (no astropy, torch or matplotlib), so the command
line can check its output before it loads them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .. import termination as _termination

__all__ = [
    "RESULT_FILES",
    "OutputError",
    "OutputBusyError",
    "OutputIOError",
    "atomic_path",
    "file_sha256",
    "ResultDir",
    "locked",
]

#: Every file a 'gradfit oof fit' (or 'gradfit demo') result directory may hold.
RESULT_FILES = (
    "solution.json",
    "phase.fits",
    "surface.fits",
    "surface_error.fits",
    "model.fits",
    "maps.png",
    "surface.png",
    "surface_error.png",
    "observation.fits",
)


class OutputError(ValueError):
    """The output target is refused by policy (bad input; exit code 2 on the command line).

    The message names the path and says what to do (``--overwrite``, another directory).
    """


class OutputIOError(OSError):
    """Writing failed (disk full, permission lost, read-only directory); exit code 3.

    Nothing partial is left at the target; an earlier result there is untouched.
    """


class OutputBusyError(OutputIOError):
    """Another process is writing to the same target (its lock is held); exit code 3."""


def _io_error(path, exc: OSError, what: str = "cannot write") -> OutputIOError:
    err = OutputIOError(exc.errno, f"{path}: {what} ({exc.strerror or exc}); nothing was written")
    err.filename = str(path)
    return err


# ------------------------------------------------------------------------- files
def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex), the fingerprint of a fit's input."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_files(paths) -> None:
    """fsync every file, concurrently: the file system commits them together (one
    journal commit for all instead of one each: 5 files took 5 ms here, 15-25 ms in
    turn). The first error is raised after all have finished."""
    paths = list(paths)
    if len(paths) < 2:
        for p in paths:
            _fsync_file(p)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
        futures = [pool.submit(_fsync_file, p) for p in paths]
    for f in futures:
        f.result()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; the rename is what matters
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Stopped(BaseException):
    """:meth:`ResultDir.commit` after :data:`STOP` was set (not an error of the output)."""


#: set by a termination handler (the CLI's SIGTERM): no result is committed after it
#: (one flag for the process, in :mod:`gradfit.termination`)
STOP = _termination.STOP

#: staging directories of the open ResultDirs of this process (absolute paths)
_STAGING: set = set()


def _is_staging(directory: Path) -> bool:
    return bool(_STAGING) and os.path.abspath(directory) in _STAGING


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True):
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.

    Parameters
    ----------
    path : str or path-like
        The file to create or replace; its directory must exist.
    overwrite : bool
        If False and ``path`` exists, raise :class:`OutputError` before writing anything.

    Raises
    ------
    OutputError
        ``path`` exists and ``overwrite`` is False, or it is a directory.
    OutputIOError
        The temporary file could not be created, written or renamed.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file name")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: exists; pass --overwrite (overwrite=True) to replace it")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise _io_error(path, exc) from None
    tmp = Path(tmp)
    # in a result's staging directory the commit syncs every file and the directory once
    # (and its rename is what makes the result appear): no sync per file here
    staged = _is_staging(path.parent)
    try:
        yield tmp
        if not staged:
            _fsync_file(tmp)
        if not overwrite and path.exists():  # appeared while we wrote
            raise OutputError(f"{path}: exists; pass --overwrite (overwrite=True) to replace it")
        os.replace(tmp, path)
        if not staged:
            _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OutputIOError):
            raise
        raise _io_error(path, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# ------------------------------------------------------------------------- lock
class _Lock:
    """An exclusive, non-blocking lock on ``.NAME.lock`` beside the target.

    ``fcntl.flock`` where available (released by the kernel if the process dies);
    elsewhere an ``O_EXCL`` lock file removed on release.
    """

    def __init__(self, target: Path):
        self.path = target.parent / f".{target.name}.lock"
        self.target = target
        self._fd = None
        self._excl = False

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            fcntl = None
        busy = OutputBusyError(
            errno.EBUSY,
            f"{self.target}: another gradfit process is writing there (lock {self.path} "
            "is held); wait for it to finish or choose another --out",
        )
        try:
            if fcntl is None:  # pragma: no cover
                try:
                    self._fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    raise busy from None
                self._excl = True
                return
            self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(self._fd)
                self._fd = None
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise busy from None
                raise
        except OutputIOError:
            raise
        except OSError as exc:
            raise _io_error(self.target, exc, "cannot create the lock file") from None

    def release(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)  # closing releases the flock
        self._fd = None
        if self._excl:  # pragma: no cover
            with contextlib.suppress(OSError):
                self.path.unlink()
        # the flock file stays: removing it would race with a process that opened it


@contextlib.contextmanager
def locked(target: str | os.PathLike):
    """Hold the writer's lock of ``target`` (a result directory) for the block.

    Raises
    ------
    OutputBusyError
        If another process holds it.
    """
    lock = _Lock(Path(os.path.abspath(target)))
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


# -------------------------------------------------------------------- directories
def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP if hasattr(errno, "ENOTSUP") else 95):
        return False  # kernel or file system without exchange: two renames instead
    raise OSError(err, os.strerror(err), str(b))


def _earlier_result(target: Path) -> dict | None:
    """The ``solution.json`` of an earlier gradfit result in ``target``, else None."""
    try:
        data = json.loads((target / "solution.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "fit" in data else None


class ResultDir:
    """A result directory written atomically under a lock.

    Use as a context manager: inside, write every file into :attr:`staging`; then call
    :meth:`commit`, which swaps the staging directory into place. Leaving the block
    without a commit (an exception, a failed fit) removes the staging directory and
    leaves the target as it was.

    Parameters
    ----------
    out : str or path-like
        The result directory. It may be absent, empty, or an earlier gradfit result;
        a directory holding other files is refused (its files would be lost).
    inputs : iterable of path-like
        Files the result is computed from; one inside ``out`` is refused unless
        ``overwrite`` (it would be replaced).
    input_sha256 : str, optional
        Fingerprint of the input (:func:`file_sha256`). An earlier result whose
        ``solution.json`` records another ``input.sha256`` is refused unless
        ``overwrite``; a refit of the same input replaces it.
    overwrite : bool
        Replace an earlier result of another input, or one that holds an input.

    Raises
    ------
    OutputError
        On entry, for a refused target (exit code 2 on the command line).
    OutputBusyError, OutputIOError
        On entry (lock held, directory not writable) or at :meth:`commit` (exit code 3).
    """

    def __init__(self, out, *, inputs=(), input_sha256: str | None = None,
                 overwrite: bool = False):
        if out is None or str(out).strip() == "":
            raise OutputError("--out is empty; give a directory for the results")
        self.target = Path(out)
        self.inputs = [Path(p) for p in inputs if p]
        self.input_sha256 = input_sha256
        self.overwrite = bool(overwrite)
        self.staging: Path | None = None
        self.earlier: dict | None = None
        self.committed = False
        self._lock = _Lock(self._abs_target())

    def _abs_target(self) -> Path:
        return Path(os.path.abspath(self.target))

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        """Apply the overwrite policy to the target as it is now (raises OutputError)."""
        t = self._abs_target()
        if t.exists() and not t.is_dir():
            raise OutputError(f"--out {self.target}: exists and is not a directory")
        if t.parent.exists() and not t.parent.is_dir():
            raise OutputError(f"--out {self.target}: {t.parent} is not a directory")
        if not t.exists():
            self.earlier = None
            return
        entries = sorted(p.name for p in t.iterdir())
        self.earlier = _earlier_result(t)
        known = set(RESULT_FILES)
        foreign = [n for n in entries if n not in known]
        inside = [p for p in self.inputs if _is_inside(p, t)]
        if inside and (not self.overwrite or any(p.name in foreign for p in inside)):
            raise OutputError(
                f"--out {self.target}: holds the input {inside[0]}, which the new result "
                "would replace; choose another --out"
                + ("" if any(p.name in foreign for p in inside) else " or pass --overwrite"))
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise OutputError(
                f"--out {self.target}: holds files that are not part of a gradfit result "
                f"({shown}); results replace the whole directory, so write them to a new "
                "or empty directory"
            )
        if entries and self.earlier is None:
            raise OutputError(
                f"--out {self.target}: holds result files but no readable solution.json "
                "(an incomplete or foreign result); remove it or choose another directory"
            )
        if self.earlier is not None and not self.overwrite:
            old = (self.earlier.get("input") or {}).get("sha256")
            old_path = (self.earlier.get("input") or {}).get("path")
            same_path = (old is None and old_path is not None and self.inputs
                         and os.path.realpath(old_path) == os.path.realpath(self.inputs[0]))
            # (a result written before fingerprints were recorded: its path must match)
            if self.input_sha256 is not None and old != self.input_sha256 and not same_path:
                what = f"input {old_path}" if old_path else "another input"
                if old is None:
                    what += " (no fingerprint recorded)"
                raise OutputError(
                    f"--out {self.target}: holds an earlier result from {what}, not from "
                    "this one; pass --overwrite to replace it or choose another --out"
                )

    # --------------------------------------------------------------- lifecycle
    def __enter__(self) -> ResultDir:
        self.check()
        try:  # the staging directory and the lock live beside the target
            self._abs_target().parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _io_error(self.target, exc, "cannot create its parent directory") from None
        self._lock.acquire()
        try:
            self.check()  # again, now that no one else can change it
            t = self._abs_target()
            # staging directories of this target left by a killed writer (we hold the lock)
            for stale in t.parent.glob(f".{t.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            try:
                self.staging = Path(tempfile.mkdtemp(dir=t.parent, prefix=f".{t.name}.tmp-"))
            except OSError as exc:
                raise _io_error(self.target, exc) from None
            _STAGING.add(os.path.abspath(self.staging))
        except BaseException:
            # interrupted after the staging directory was made (e.g. by SIGTERM): the
            # caller's 'with' never started, so its __exit__ will not clean up
            self._remove_staging()
            self.staging = None
            self._lock.release()
            raise
        return self

    def _remove_staging(self) -> None:
        if self.staging is not None:
            _STAGING.discard(os.path.abspath(self.staging))
            # after a commit it is gone, or holds the replaced result (rename exchange)
            shutil.rmtree(self.staging, ignore_errors=True)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._remove_staging()
        finally:
            self._lock.release()

    def commit(self) -> Path:
        """Swap the staging directory into place (the old result goes only now).

        Raises
        ------
        OutputIOError
            If a file cannot be synced or the rename fails; the target is unchanged.
        """
        if self.staging is None or self.committed:
            raise RuntimeError("ResultDir.commit outside its 'with' block or twice")
        if STOP.is_set():
            # a termination was asked for; its exception may have been lost in code
            # that swallows exceptions (an extension module's import): publish nothing
            raise Stopped(f"{self.target}: not written; the process was asked to stop")
        t = self._abs_target()
        try:
            _fsync_files(self.staging.iterdir())
            _fsync_dir(self.staging)
            if not t.exists():
                os.rename(self.staging, t)
            elif not any(t.iterdir()):
                os.rmdir(t)
                os.rename(self.staging, t)
            elif _rename_exchange(self.staging, t):
                pass  # the staging path now holds the old result; __exit__ removes it
            else:
                old = t.parent / f"{self.staging.name}.old"
                os.rename(t, old)
                try:
                    os.rename(self.staging, t)
                except OSError:
                    os.rename(old, t)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            _fsync_dir(t.parent)
        except OSError as exc:
            raise _io_error(self.target, exc, "cannot put the result in place") from None
        self.committed = True
        return self.target


def _is_inside(path: Path, directory: Path) -> bool:
    try:
        p = Path(os.path.realpath(path))
        d = Path(os.path.realpath(directory))
    except OSError:
        return False
    return p == d or d in p.parents
