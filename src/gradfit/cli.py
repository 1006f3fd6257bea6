"""The ``gradfit`` command line: ``gradfit oof simulate|fit|convert|plot``, ``demo``, ``bench``.

Conventions: machine-readable output (``--json``) on stdout, human output (tables,
progress, warnings) on stderr; exit code 0 on success, 1 on a failed fit, 2 on bad
input, 3 on an I/O fault (disk full, permission, another writer holds the lock), with
a one-line reason that names the file, field or option at fault.

This module parses options, calls the library and maps its errors to exit codes:
checks of the input are in :mod:`gradfit.oof.checks`, result writing (atomic, locked,
never over an input or another input's result unasked) in :mod:`gradfit.oof.output`,
the time budget in :mod:`gradfit.oof.budget`.

torch and matplotlib are imported inside the commands that need them, so that
``gradfit --help`` and argument errors answer at once.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import click

from gradfit import termination

__all__ = ["main", "cli", "CLIError"]

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_IO = 0, 1, 2, 3
_ERRORS_IMPLEMENTED = ("hessian", "profile", "mcmc", "jackknife", "bootstrap")


class CLIError(click.ClickException):
    """A one-line error with an exit code (2: bad input, 1: failed fit, 3: I/O fault)."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.exit_code = exit_code


def _one_line(text: str) -> str:
    return "; ".join(s.strip() for s in str(text).strip().splitlines() if s.strip())


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"gradfit: warning: {_one_line(message)}", err=True)


class _Terminated(BaseException):
    """SIGTERM, raised as an exception so that ``finally`` blocks remove staging files.

    Not a KeyboardInterrupt: the profile and MCMC loops take Ctrl-C as "stop and keep
    what is done", and a SIGTERM caught there let the process finish with exit code 0.
    """


def _raise_terminated(signum, frame):
    # (no import here: the flag's module is loaded with this one)
    termination.STOP.set()  # stands even if the exception below is swallowed on its way
    raise _Terminated()


def _on_sigterm():
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def _stop_requested() -> bool:
    return termination.STOP.is_set()


def _restore_sigterm(old) -> None:
    import signal

    if old is not None:
        signal.signal(signal.SIGTERM, old)


class _Group(click.Group):
    """Top-level group: one-line errors, exit codes 0/1/2/3, warnings as stderr lines."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        prog_name = prog_name or "gradfit"
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
            warnings.showwarning = _show_warning
            termination.STOP.clear()  # a new command (tests run many in one process)
            old_term = _on_sigterm()
            try:
                rv = super().main(
                    args=args,
                    prog_name=prog_name,
                    complete_var=complete_var,
                    standalone_mode=False,
                    **extra,
                )
                code = rv if isinstance(rv, int) else EXIT_OK
            except click.exceptions.NoArgsIsHelpError as exc:
                click.echo(exc.ctx.get_help(), err=True)
                code = EXIT_BAD_INPUT
            except click.UsageError as exc:
                where = exc.ctx.command_path if exc.ctx is not None else prog_name
                hint = f" (see '{where} --help')" if exc.ctx is not None else ""
                click.echo(f"{where}: error: {_one_line(exc.format_message())}{hint}", err=True)
                code = EXIT_BAD_INPUT
            except click.ClickException as exc:
                click.echo(f"{prog_name}: error: {_one_line(exc.format_message())}", err=True)
                code = exc.exit_code
            except click.Abort:  # (click's form of a KeyboardInterrupt or EOF)
                click.echo(f"{prog_name}: aborted", err=True)
                code = 130
            except KeyboardInterrupt:
                click.echo(f"{prog_name}: interrupted", err=True)
                code = 130
            except Exception as exc:  # a bug, not bad input: say so on one line
                if os.environ.get("GRADFIT_DEBUG"):
                    raise
                click.echo(
                    f"{prog_name}: internal error: {type(exc).__name__}: {_one_line(exc)} "
                    "(set GRADFIT_DEBUG=1 for a traceback)",
                    err=True,
                )
                code = EXIT_FAILED
            except BaseException:
                # _Terminated (the handler set the flag before raising it), or
                # output.Stopped: a termination whose exception was caught on its way
                if not _stop_requested():
                    raise
                click.echo(f"{prog_name}: terminated", err=True)
                code = 143
            finally:
                _restore_sigterm(old_term)
            if code != 143 and _stop_requested():
                # the SIGTERM's exception was swallowed on its way (e.g. inside an
                # extension module's import) and nothing was committed after it
                click.echo(f"{prog_name}: terminated", err=True)
                code = 143
        if not standalone_mode:
            return code
        sys.exit(code)


def _stderr_console():
    from rich.console import Console

    # soft_wrap: lines are not broken at 80 columns when stderr is not a terminal
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def _io_error(exc: OSError, what: str = "") -> CLIError:
    """An I/O fault (exit 3): the library's message, or the path and the OS's reason."""
    from gradfit.oof.output import OutputIOError

    if isinstance(exc, OutputIOError):
        return CLIError(_one_line(exc.strerror or exc), EXIT_IO)
    where = f"{what}: " if what else (f"{exc.filename}: " if exc.filename else "")
    return CLIError(f"{where}{exc.strerror or exc}", EXIT_IO)


def _read_observation(path):
    """Read an observation; any input problem becomes a one-line exit-2 error."""
    from gradfit.oof import io

    try:
        return io.read(path)
    except ValueError as exc:
        raise CLIError(_one_line(exc)) from None
    except OSError as exc:  # an I/O fault while reading a file that passed the checks
        raise _io_error(exc, str(path)) from None


def _resolve_device(device: str) -> str:
    if device == "cpu":
        return device
    import torch

    has_cuda = torch.cuda.is_available()
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if not has_cuda:
        raise CLIError(
            "--device cuda: no CUDA device is available (torch.cuda.is_available() is False); "
            "use --device cpu or auto"
        )
    return device


def _telescope(name, obs=None, source=None):
    """The Telescope for --telescope or the file's TELESCOP header (exit 2 if neither)."""
    from gradfit.oof.telescope import get_telescope

    if name is None and obs is not None:
        name = obs.telescope
        if name is None:
            raise CLIError(
                f"{source}: no telescope in the primary header (TELESCOP); pass --telescope NAME"
            )
        label = f"{source}: header TELESCOP"
    else:
        label = "--telescope"
    try:
        return get_telescope(name)
    except (ValueError, KeyError, TypeError) as exc:
        raise CLIError(f"{label}: {_one_line(exc.args[0] if exc.args else exc)}") from None


def _check_observation(obs, tel, order, source, likelihood=None) -> None:
    """Pre-fit sanity checks (units, defocus, structure, order): refusals exit 2."""
    from gradfit.oof import checks

    try:
        notes = checks.check_observation(obs, tel, order, likelihood)
    except ValueError as exc:
        raise CLIError(f"{source}: {_one_line(exc)}") from None
    for note in notes:
        click.echo(f"gradfit: warning: {source}: {note}", err=True)


def _result_dir(out, inputs, overwrite: bool, fingerprint=True):
    """The atomic, locked result directory; a refused target exits 2, an I/O fault 3."""
    from gradfit.oof import output

    try:
        sha = output.file_sha256(inputs[0]) if fingerprint and inputs else None
        rd = output.ResultDir(out, inputs=inputs, input_sha256=sha, overwrite=overwrite)
        rd.check()  # refuse before the (long) fit, not after it
    except output.OutputError as exc:
        raise CLIError(_one_line(exc)) from None
    except OSError as exc:
        raise _io_error(exc) from None
    return rd


# ---------------------------------------------------------------------------- commands


@click.group(name="gradfit", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gradfit", prog_name="gradfit")
def cli():
    """gradfit: fast maximum-likelihood fitting with PyTorch; OOF holography of radio telescopes.

    Run 'gradfit demo --out DIR' for a simulated Effelsberg fit with figures.
    Exit codes: 0 success, 1 failed fit, 2 bad input, 3 I/O fault.
    """


def main(argv=None):
    """Entry point of the ``gradfit`` command (``argv`` defaults to ``sys.argv[1:]``)."""
    return cli.main(args=argv, prog_name="gradfit")


@cli.group()
def oof():
    """Out-of-focus holography: simulate, fit and plot beam maps."""


def _simulate(telescope, order, snr, npix, seed, freq_ghz, dz):
    from gradfit.oof import simulate

    try:
        return simulate(
            telescope=telescope,
            order=order,
            snr=snr,
            npix=npix,
            freq_hz=freq_ghz * 1e9,
            dz=dz,
            seed=seed,
        )
    except (ValueError, KeyError) as exc:
        raise CLIError(f"oof simulate: {_one_line(exc.args[0] if exc.args else exc)}") from None


_sim_options = [
    click.option("--telescope", default="effelsberg", show_default=True, help="Telescope name."),
    click.option(
        "--order",
        type=click.IntRange(min=1),
        default=5,
        show_default=True,
        help="Maximum Zernike order n of the simulated aperture phase.",
    ),
    click.option(
        "--snr",
        type=click.FloatRange(min=0, min_open=True),
        default=1000.0,
        show_default=True,
        help="Peak signal-to-noise ratio of the in-focus map.",
    ),
    click.option(
        "--npix",
        type=click.IntRange(min=5),
        default=33,
        show_default=True,
        help="Samples per map side (npix x npix grid).",
    ),
    click.option("--seed", type=int, default=0, show_default=True, help="Random seed."),
    click.option(
        "--freq-ghz",
        type=click.FloatRange(min=0, min_open=True),
        default=32.0,
        show_default=True,
        help="Observing frequency (GHz).",
    ),
    click.option(
        "--dz",
        type=click.FloatRange(min=0, min_open=True),
        default=0.022,
        show_default=True,
        help="Defocus (m); maps are taken at -dz, 0, +dz.",
    ),
]


def _apply(options):
    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco


_overwrite_option = click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing output that the policy protects (an existing file; a result "
    "from another input or holding an input).",
)


@oof.command("simulate")
@_apply(_sim_options)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Output FITS file (pyoof layout); an existing file needs --overwrite.",
)
@_overwrite_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary to stdout.")
def simulate_cmd(telescope, order, snr, npix, seed, freq_ghz, dz, out, overwrite, as_json):
    """Simulate an OOF observation and write it as FITS (pyoof layout)."""
    from gradfit.oof import io, output

    if not str(out).strip():
        raise CLIError("--out is empty; give a FITS file name")
    out = Path(out)
    if not out.parent.exists():
        raise CLIError(f"--out {out}: directory {out.parent} does not exist")
    if out.exists() and not overwrite:  # refuse before the simulation, not after it
        raise CLIError(f"--out {out}: exists; pass --overwrite to replace it")
    tel = _telescope(telescope)
    obs = _simulate(tel, order, snr, npix, seed, freq_ghz, dz)
    try:
        io.write(obs, out, overwrite=overwrite)
    except output.OutputError as exc:
        raise CLIError(_one_line(exc)) from None
    except OSError as exc:
        raise _io_error(exc, f"--out {out}: cannot write") from None
    click.echo(
        f"wrote {out}: {tel.name}, {len(obs.maps)} maps of "
        f"{obs.maps[0].n} points, order {order}, SNR {snr:g}, seed {seed}",
        err=True,
    )
    if as_json:
        click.echo(
            io.to_json(
                {
                    "path": str(out),
                    "telescope": tel.name,
                    "n_maps": len(obs.maps),
                    "points_per_map": [m.n for m in obs.maps],
                    "dz_m": [m.dz for m in obs.maps],
                    "wavelength_m": obs.wavelength_m,
                    "frequency_hz": obs.frequency_hz,
                    # the noiseless maps stay in the file; stdout gets the parameters
                    "truth": {k: v for k, v in (obs.truth or {}).items() if k != "power_noiseless"},
                },
                indent=2,
            )
        )


_STAGES = {"grid": "choosing the aperture grid", "fit": "fitting", "done": "done",
           "profile": "profile-likelihood intervals", "mcmc": "sampling the posterior (NUTS)",
           "start": "multi-start", "order": "choosing the order (BIC)",
           "jackknife": "jackknife over scans", "bootstrap": "bootstrap over scans"}


def _describe(info: dict, elapsed: float) -> str:
    parts = [_STAGES.get(info.get("stage"), str(info.get("stage", "fitting")))]
    if info.get("stage") == "order":
        parts.append(f"order {info.get('order')}: chi2r {info.get('chi2r')}, "
                     f"BIC {info.get('bic')}")
    elif info.get("stage") == "start":
        parts.append(f"start {int(info.get('start', 0)) + 1}, misfit {info.get('misfit')}")
    elif info.get("start"):
        parts.append(f"start {int(info['start']) + 1}")
    if info.get("of"):
        parts.append(f"coefficient {info['nit']} of {info['of']}")
    elif info.get("nit") is not None:
        parts.append(f"evaluation {info['nit']}")
    if isinstance(info.get("fun"), (int, float)):
        parts.append(f"-log L {float(info['fun']):.6g}")
    parts.append(f"{elapsed:.1f} s")
    return ", ".join(parts)


def _progress_fit(fit_fn, obs, kwargs, quiet, max_time=None):
    """Run the fit within ``max_time`` seconds, with its progress visible on stderr.

    ``oof.fit`` calls ``progress(info)`` with a dict holding ``stage`` and, while
    minimising, ``nit``, ``fun`` and ``start`` (index of a multi-start). On a terminal
    a live status line shows it; otherwise (a log file) a plain line every 10 s.
    """
    from gradfit.oof.budget import time_budget

    t0 = time.perf_counter()
    if quiet:
        with time_budget(max_time) as report:
            return fit_fn(obs, progress=report, **kwargs)
    console = _stderr_console()
    if not console.is_terminal:
        last = {"t": t0}

        def log(info):
            now = time.perf_counter()
            if now - last["t"] >= 10.0:
                last["t"] = now
                click.echo(f"gradfit: {_describe(info, now - t0)}", err=True)

        with time_budget(max_time, log) as report:
            return fit_fn(obs, progress=report, **kwargs)
    with console.status("reading the model ...", spinner="dots") as status:

        def show(info):
            status.update(_describe(info, time.perf_counter() - t0))

        with time_budget(max_time, show) as report:
            return fit_fn(obs, progress=report, **kwargs)


def _summary(sol_dict: dict, console) -> None:
    """A human summary of a solution on stderr: coefficients, convergence, adequacy."""
    from rich.table import Table

    fit = sol_dict.get("fit", {})
    table = Table(title="Zernike coefficients", title_justify="left")
    for col in ("n", "l", "rad", "± rad", "waves", "± waves"):
        table.add_column(col, justify="right")
    for z in sol_dict.get("zernike", []):
        table.add_row(
            str(z.get("n")),
            str(z.get("l")),
            f"{z.get('value_rad', float('nan')):+.4f}",
            f"{z.get('error_rad', float('nan')):.4f}",
            f"{z.get('value_waves', float('nan')):+.5f}",
            f"{z.get('error_waves', float('nan')):.5f}",
        )
    console.print(table)
    nuis = sol_dict.get("nuisance") or {}
    if nuis:
        items = []
        for k, v in nuis.items():
            if not isinstance(v, dict):
                items.append(f"{k} = {v}")
            elif isinstance(v.get("value"), (int, float)):
                err = v.get("error")
                if isinstance(err, (int, float)) and err > 0:
                    items.append(f"{k} = {v['value']:.4g} ± {err:.2g}")
                else:
                    items.append(f"{k} = {v['value']:.4g} (fixed)")
            elif k == "scan_offset":
                items.append(f"scan_offset = {len(v.get('value') or [[]])} x "
                             f"{len((v.get('value') or [[]])[0])} (see solution.json)")
            else:
                import numpy as np

                val = np.round(np.asarray(v.get("value"), dtype=float), 5).tolist()
                err = np.round(np.asarray(v.get("error"), dtype=float), 5).tolist()
                items.append(f"{k} = {val} ± {err}")
        console.print("nuisance: " + ", ".join(items))
    sel = fit.get("order_selection")
    if sel:
        console.print("order selection (BIC):\n" + sel.get("table", ""))
        console.print(f"picked order {sel.get('chosen')}: {sel.get('reason', '')}")
    if fit.get("chi2r") is not None:
        console.print(f"noise sigma {fit.get('sigma_value', float('nan')):.4g} (data units, "
                      f"{fit.get('sigma', '')}); chi2r {fit['chi2r']:.3f}")
        for m in fit.get("maps", []):
            console.print(f"  map {m.get('name')}: chi2r {m.get('chi2r', float('nan')):.3f}, "
                          f"rms(data - model)/peak {m.get('rms_residual_over_peak', 0):.4f}"
                          + (f", {m['n_masked']} masked" if m.get("n_masked") else ""))
    if fit.get("error_note"):
        console.print(f"errors: {fit['error_note']}")
    log = fit.get("start_log") or []
    if len(log) > 1:
        stop = next((r["stop"] for r in log if r.get("stop")), "all starts run")
        console.print(f"starts: {len(log)}; {stop}")
    errs = sol_dict.get("errors") or {}
    if errs.get("method") in ("jackknife", "bootstrap"):
        col = [z.get(f"{errs['method']}_error_waves") for z in sol_dict.get("zernike", [])]
        console.print(f"{errs['method']} errors (waves, {errs.get('n')} replicates over scans "
                      f"along {errs.get('scan_axis')}): "
                      + ", ".join("-" if c is None else f"{c:.5f}" for c in col))
    rms = sol_dict.get("surface_rms_um")
    status = "converged" if fit.get("success") else "FAILED"
    line = f"fit {status}: {fit.get('message', '')}"
    if fit.get("nfev") is not None:
        line += f"; {fit['nfev']} evaluations"
    if fit.get("time_s") is not None:
        line += f", {float(fit['time_s']):.2f} s"
    console.print(line)
    adequacy = sol_dict.get("adequacy")
    if adequacy:
        x, limit = adequacy.get("normalised_residual"), adequacy.get("limit")
        if adequacy.get("adequate"):
            console.print(f"model adequate: normalised residual {x:.3g} (limit {limit:g})")
        else:
            console.print(
                f"[bold]MODEL DOES NOT DESCRIBE THE DATA[/bold]: normalised residual {x:.3g} "
                f"(limit {limit:g}); likely causes: " + "; ".join(adequacy.get("causes", []))
            )
    if isinstance(rms, (int, float)):
        line = f"surface rms: {rms:.1f} µm"
        w = sol_dict.get("surface_rms_weighted_um")
        if isinstance(w, (int, float)):
            line += f" (illumination-weighted {w:.1f} µm)"
        ruze = sol_dict.get("ruze_efficiency")
        if isinstance(ruze, (int, float)):
            line += f", Ruze efficiency {ruze:.3f}"
        console.print(line)


def _enter(rd) -> None:
    """Take the result directory's lock and staging area; refusals are exit 2, faults 3."""
    from gradfit.oof import output

    try:
        rd.__enter__()
    except output.OutputError as exc:
        raise CLIError(_one_line(exc)) from None
    except OSError as exc:
        raise _io_error(exc) from None


def _assess(sol, obs, tel) -> dict:
    """The adequacy of a finished fit (convergence is reported beside it): oof.fit's own."""
    return dict(sol.adequacy)


def _run_fit(obs, *, order, likelihood, method, device, telescope, errors, quiet, max_iter=None,
             error_options=None, max_time=None, free=None, scan_axis=None):
    """oof.fit with CLI error mapping: bad settings → exit 2, crash or budget → exit 1."""
    try:
        from gradfit.oof import fit
    except ImportError as exc:
        fit = None
        missing = exc
    from gradfit.oof.budget import BudgetExceeded

    kwargs = dict(
        order=order, telescope=telescope, likelihood=likelihood, method=method, device=device
    )
    if max_iter is not None:
        kwargs["max_iter"] = max_iter
    if free is not None:
        kwargs["free"] = free
    if scan_axis is not None:
        kwargs["scan_axis"] = scan_axis
    if errors not in _ERRORS_IMPLEMENTED:
        raise CLIError(f"--errors {errors}: choose one of {', '.join(_ERRORS_IMPLEMENTED)}")
    kwargs["errors"] = errors
    if error_options:
        kwargs["error_options"] = error_options
    if fit is None:
        raise CLIError(f"the OOF fit is not available: {missing}", EXIT_FAILED)
    try:
        return _progress_fit(fit, obs, kwargs, quiet, max_time)
    except BudgetExceeded as exc:
        raise CLIError(
            f"fit stopped: {exc} (--max-time); no result was written", EXIT_FAILED
        ) from None
    except (ValueError, KeyError) as exc:
        raise CLIError(_one_line(exc.args[0] if exc.args else exc)) from None
    except Exception as exc:  # noqa: BLE001 - a crashed fit is a failed fit (exit 1)
        if os.environ.get("GRADFIT_DEBUG"):
            raise
        raise CLIError(
            f"fit failed: {type(exc).__name__}: {_one_line(exc)} "
            "(set GRADFIT_DEBUG=1 for a traceback)",
            EXIT_FAILED,
        ) from None


def _publish(rd, sol, obs, *, input_path, settings, adequacy, figures, failed, quiet,
             write_observation=False) -> tuple[dict, bool]:
    """Write the result atomically into ``rd``; (JSON, whether it was written).

    A failed fit does not replace an earlier result: that stays, and the JSON goes
    only to stdout (with --json).
    """
    from gradfit.oof import io, output

    sha = rd.input_sha256
    if failed and rd.earlier is not None:
        data = json.loads(io.to_json({**sol.to_dict(), "adequacy": adequacy,
                                      "settings": settings}))
        click.echo(f"gradfit: warning: the earlier result in {rd.target} is kept; the failed "
                   "fit was not written", err=True)
        return data, False
    try:
        if write_observation:
            io.write(obs, rd.staging / "observation.fits")
            if sha is None:  # no input file of its own (the demo): the observation is it
                sha = output.file_sha256(rd.staging / "observation.fits")
        data = io.write_fit_result(rd.staging, sol, obs, input_path=input_path,
                                   input_sha256=sha, settings=settings, adequacy=adequacy)
        if figures:  # after the solution files, from them (matplotlib is imported only now)
            from gradfit.oof import plots

            try:
                plots.plot_dir(rd.staging, obs)
            except (OSError, KeyboardInterrupt):
                raise
            except Exception as exc:  # noqa: BLE001 - a figure must not cost the solution
                if os.environ.get("GRADFIT_DEBUG"):
                    raise
                figures = False
                for png in rd.staging.glob("*.png"):
                    png.unlink()
                click.echo(f"gradfit: warning: figures not drawn ({type(exc).__name__}: "
                           f"{_one_line(exc)}); 'gradfit oof plot {rd.target}' retries", err=True)
        rd.commit()
    except output.OutputError as exc:
        raise CLIError(_one_line(exc)) from None
    except OSError as exc:
        raise _io_error(exc, f"--out {rd.target}: cannot write results") from None
    names = "solution.json, phase.fits, surface.fits, surface_error.fits, model.fits"
    if figures:
        names += ", maps.png, surface.png, surface_error.png"
    if not quiet:
        click.echo(f"wrote {rd.target}/: {names}", err=True)
    return data, True


def _finish(data: dict, as_json: bool, quiet: bool, strict: bool) -> int:
    from gradfit.oof import io

    if not quiet:
        _summary(data, _stderr_console())
    if as_json:
        click.echo(io.to_json(data, indent=2))
    fit = data.get("fit", {})
    if not fit.get("success", False):
        click.echo(f"gradfit: error: fit failed: {_one_line(fit.get('message', ''))}", err=True)
        return EXIT_FAILED
    adequacy = data.get("adequacy") or {}
    if strict and not adequacy.get("adequate", True):
        click.echo(
            f"gradfit: error: the model does not describe the data (normalised residual "
            f"{adequacy.get('normalised_residual', float('nan')):.3g} > "
            f"{adequacy.get('limit', float('nan')):g}; --strict)",
            err=True,
        )
        return EXIT_FAILED
    return EXIT_OK


class _OrderType(click.ParamType):
    """An integer >= 1 or 'auto'."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or str(value).strip().lower() == "auto":
            return value if isinstance(value, int) else "auto"
        try:
            n = int(str(value).strip())
        except ValueError:
            self.fail(f"{value!r} is not an integer >= 1 or 'auto'", param, ctx)
        if n < 1:
            self.fail(f"{n} is not an integer >= 1 or 'auto'", param, ctx)
        return n


_ORDER = _OrderType()

_text_options = [
    click.option("--dz", "dz", default=None,
                 help="Text maps: the defocus (m) of each file, in file order, comma-separated "
                 "(e.g. -0.027,0,0.027)."),
    click.option("--freq-ghz", "freq_ghz", type=float, default=None,
                 help="Text maps: the observing frequency (GHz)."),
    click.option("--units", "units", default=None,
                 help="Text maps: unit of u and v (rad, deg, arcmin, arcsec; default: the "
                 "file's tag or header, else rad)."),
]

_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fz")
_TEXT_SUFFIXES = (".txt", ".csv", ".dat", ".tsv", ".asc")


def _is_fits(path) -> bool:
    name = str(path).lower()
    if name.endswith(_FITS_SUFFIXES):
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(9) == b"SIMPLE  ="
    except OSError:
        return False


def _read_input(files, dz, freq_ghz, units, telescope, need_telescope=True):
    """``(observation, label, is_text)`` from one FITS file or several text maps."""
    from gradfit.oof import textio

    files = list(files)
    # one file is a FITS observation (the reader's own checks refuse anything else),
    # unless it is named or described as a text map
    texty = (str(files[0]).lower().endswith(_TEXT_SUFFIXES) or dz is not None
             or freq_ghz is not None or units is not None) and not _is_fits(files[0])
    if len(files) == 1 and not texty:
        for opt, val in (("--dz", dz), ("--freq-ghz", freq_ghz), ("--units", units)):
            if val is not None:
                raise CLIError(f"{opt} is for text maps; {files[0]} is a FITS file that "
                               "records it")
        return _read_observation(files[0]), files[0], False
    fits = [f for f in files if _is_fits(f)]
    if fits:
        raise CLIError(f"{fits[0]}: a FITS file among {len(files)} inputs; give one FITS "
                       "observation, or text maps only")
    if dz is None:
        raise CLIError(f"--dz is required for text maps: one defocus (m) per file, in file "
                       f"order, e.g. --dz {','.join(['0'] * len(files))}")
    if freq_ghz is None:
        raise CLIError("--freq-ghz is required for text maps (they do not record it)")
    if not (freq_ghz > 0):
        raise CLIError(f"--freq-ghz must be > 0, got {freq_ghz:g}")
    if telescope is None and need_telescope:
        raise CLIError("--telescope is required for text maps: a name (e.g. srt) or a "
                       "TOML file")
    for f in files:
        if not Path(f).exists():
            raise CLIError(f"{f}: no such file")
    try:
        dzs = textio.parse_dz(dz, len(files))
    except ValueError as exc:
        raise CLIError(f"--dz: {_one_line(exc)}") from None
    try:
        obs = textio.read_text(files, dzs, telescope=telescope, frequency=freq_ghz * 1e9,
                               units=units)
    except ValueError as exc:
        raise CLIError(_one_line(exc)) from None
    except OSError as exc:
        raise _io_error(exc) from None
    return obs, files[0], True


def _free(free, background_plane: bool, scan_offsets: bool):
    """The ``free`` of oof.fit from --free, --background-plane, --scan-offsets."""
    from gradfit.oof.solve import REAL_FREE

    if free is None and not (background_plane or scan_offsets):
        return None  # the library's default for the data
    names = (tuple(x.strip() for x in free.split(",") if x.strip()) if free is not None
             else REAL_FREE)
    names += (("background_plane",) if background_plane else ()) + (
        ("scan_offset",) if scan_offsets else ())
    return names


def _fitted_samples(obs):
    """The observation as the checks see it: masked samples left out."""
    from gradfit.oof import textio

    return textio.compact(obs)


@oof.command("fit")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--order", type=_ORDER, required=True,
    help="Maximum Zernike order n to fit, or 'auto': orders upwards, the lowest BIC.",
)
@_apply(_text_options)
@click.option(
    "--free", "free", default=None,
    help="Nuisance parameters to fit, comma-separated (amp, c_dB, q, x0, y0, pointing, gain, "
    "background, background_plane, scan_offset). Default: amp, c_dB, pointing, gain, "
    "background for measured maps (no noise column); amp, c_dB for maps that carry their "
    "noise. --free amp,c_dB turns the real-map nuisance parameters off.",
)
@click.option("--background-plane", is_flag=True,
              help="Also fit a background plane per map (on top of the defaults).")
@click.option("--scan-offsets", is_flag=True,
              help="Also fit an offset per scan of every map (scan direction from the files).")
@click.option("--scan-axis", type=click.Choice(["u", "v"]), default=None,
              help="Direction of the scans, for --scan-offsets and the jackknife / bootstrap "
                   "errors (default: recorded in the text maps, else detected from the noise).")
@click.option(
    "--likelihood",
    type=click.Choice(["gaussian", "cauchy"]),
    default="gaussian",
    show_default=True,
    help="Gaussian, or Cauchy for data with glitches.",
)
@click.option("--method", default="lm", show_default=True, help="Minimiser (e.g. lm, bfgs).")
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda", "auto"]),
    default="cpu",
    show_default=True,
    help="Where the model runs.",
)
@click.option(
    "--telescope", default=None,
    help="Telescope name or FILE.toml (default: the file's TELESCOP header; required for "
    "text maps).",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False),
    help="Output directory for solution.json, FITS maps and figures; written atomically. "
    "It must be new, empty or an earlier result of the same input (else --overwrite).",
)
@_overwrite_option
@click.option("--json", "as_json", is_flag=True, help="Print the solution JSON to stdout.")
@click.option(
    "--errors",
    type=click.Choice(list(_ERRORS_IMPLEMENTED)),
    default="hessian",
    show_default=True,
    help="How coefficient errors are computed: inverse Hessian, profile-likelihood "
    "intervals (about ten refits per coefficient), NUTS posterior samples (pyro-ppl), or "
    "a jackknife / bootstrap over scans (10 refits; honest on noise correlated along scans), "
    "reported beside the Hessian errors.",
)
@click.option(
    "--mcmc-samples",
    type=click.IntRange(min=20),
    default=300,
    show_default=True,
    help="Posterior draws per chain (2 chains) with --errors mcmc.",
)
@click.option(
    "--max-iter",
    type=click.IntRange(min=1),
    default=None,
    help="Iteration limit of the minimiser (default: the solver's).",
)
@click.option(
    "--max-time",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Wall-time budget of the fit in seconds; beyond it the fit stops (exit 1) and "
    "nothing is written.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Exit 1 when the fit converged but the model does not describe the data "
    "(normalised residual above its limit).",
)
@click.option(
    "--figures/--no-figures", default=True, show_default=True, help="Draw maps.png and surface.png."
)
@click.option(
    "--dask", "dask_address", default=None,
    help="With several FITS files (a campaign, see 'gradfit oof campaign'): 'local' or "
    "tcp://HOST:PORT to fit them on Dask workers.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress or summary on stderr.")
def fit_cmd(
    files,
    order,
    dz,
    freq_ghz,
    units,
    free,
    background_plane,
    scan_offsets,
    scan_axis,
    likelihood,
    method,
    device,
    telescope,
    out,
    overwrite,
    as_json,
    errors,
    mcmc_samples,
    max_iter,
    max_time,
    strict,
    figures,
    dask_address,
    quiet,
):
    """Fit Zernike coefficients to the beam maps in FILES and write results to --out.

    FILES is one observation: a FITS file (pyoof layout), or text maps (columns u, v,
    power; one map per file) with --dz (one defocus per file, in file order),
    --freq-ghz and --telescope. Several FITS files are a campaign of observations,
    fitted as by 'gradfit oof campaign' (one folder each in --out, and
    summary.csv, summary.json and campaign.png).
    """

    if not str(out).strip():
        raise CLIError("--out is empty; give a directory for the results")
    if len(files) > 1 and dz is None and all(_is_fits(f) for f in files):
        return campaign_cmd.callback(files=files, out=out, order=order, telescope=telescope,
                                     dask_address=dask_address, gravity=False,
                                     overwrite=overwrite, as_json=as_json, quiet=quiet,
                                     no_figures=not figures)
    if dask_address is not None:
        raise CLIError("--dask is for a campaign of several FITS files")
    obs, file, text = _read_input(files, dz, freq_ghz, units, telescope)
    tel = _telescope(telescope, obs, file)
    device = _resolve_device(device)
    free = _free(free, background_plane, scan_offsets)
    rd = _result_dir(out, list(files), overwrite)
    _check_observation(_fitted_samples(obs), tel, None if order == "auto" else order, file,
                       likelihood)
    _enter(rd)  # lock held from the fit to the commit: a second writer stops now
    try:
        sol = _run_fit(
            obs,
            order=order,
            likelihood=likelihood,
            method=method,
            device=device,
            telescope=tel,
            errors=errors,
            quiet=quiet,
            max_iter=max_iter,
            error_options={"num_samples": mcmc_samples} if errors == "mcmc" else None,
            max_time=max_time,
            free=free,
            scan_axis=scan_axis,
        )
        adequacy = _assess(sol, obs, tel)
        settings = dict(
            order=order,
            likelihood=likelihood,
            method=method,
            device=device,
            telescope=tel.name,
            errors=errors,
            max_iter=max_iter,
            max_time=max_time,
            strict=strict,
            free=list(sol.fit.get("free", [])),
            scan_axis=scan_axis,
        )
        if text:
            settings.update(files=[str(f) for f in files], dz=[m.dz for m in obs.maps],
                            frequency_hz=obs.frequency_hz, units=units)
        failed = not sol.success or (strict and not adequacy["adequate"])
        # text maps: the observation is written beside the result (observation.fits) so
        # that 'gradfit oof plot DIR' finds it
        data, _ = _publish(rd, sol, obs,
                           input_path=Path(out) / "observation.fits" if text else file,
                           settings=settings, adequacy=adequacy, figures=figures, failed=failed,
                           quiet=quiet, write_observation=text)
    finally:
        rd.__exit__(None, None, None)
    return _finish(data, as_json, quiet, strict)


@oof.command("convert")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_apply(_text_options)
@click.option("--telescope", default=None,
              help="Telescope name or FILE.toml, recorded in the FITS header.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Output FITS file (pyoof layout); an existing file needs --overwrite.")
@_overwrite_option
def convert_cmd(files, dz, freq_ghz, units, telescope, out, overwrite):
    """Convert text maps FILES (u, v, power; one map per file) to one FITS observation.

    The pyoof layout has no mask: flagged samples are left out of the file.
    """
    from gradfit.oof import io, output, textio

    if not str(out).strip():
        raise CLIError("--out is empty; give a FITS file name")
    out = Path(out)
    if not out.parent.exists():
        raise CLIError(f"--out {out}: directory {out.parent} does not exist")
    if out.exists() and not overwrite:
        raise CLIError(f"--out {out}: exists; pass --overwrite to replace it")
    if any(Path(f).resolve() == out.resolve() for f in files):
        raise CLIError(f"--out {out}: is one of the inputs")
    if telescope is not None:
        _telescope(telescope)
    obs, _, text = _read_input(files, dz, freq_ghz, units, telescope, need_telescope=False)
    if not text:
        raise CLIError(f"{files[0]}: already a FITS file; convert reads text maps")
    try:
        io.write(textio.compact(obs), out, overwrite=overwrite)
    except output.OutputError as exc:
        raise CLIError(_one_line(exc)) from None
    except OSError as exc:
        raise _io_error(exc, f"--out {out}: cannot write") from None
    click.echo(f"wrote {out}: {len(obs.maps)} maps of {obs.maps[0].n} points, dz "
               f"{', '.join(f'{m.dz:g}' for m in obs.maps)} m", err=True)


@oof.command("campaign")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Directory: one result folder per observation, plus summary.csv, "
                   "summary.json and campaign.png.")
@click.option("--order", type=click.IntRange(min=1), default=5, show_default=True,
              help="Zernike order fitted to every observation.")
@click.option("--telescope", default=None, help="Telescope (default: each file's own).")
@click.option("--dask", "dask_address", default=None,
              help="'local' (a 2-worker LocalCluster) or tcp://HOST:PORT of a scheduler: fit "
                   "the observations on Dask workers (pip install 'gradfit[dask]').")
@click.option("--gravity", is_flag=True,
              help="Also fit the gravity model K(el) = a + b sin(el) + c cos(el) to all "
                   "observations jointly (gravity.json, gravity.png).")
@click.option("--overwrite", is_flag=True,
              help="Replace earlier results of other inputs in the observation folders.")
@click.option("--no-batch", is_flag=True,
              help="Fit each observation from scratch (default: the observations on one sky "
                   "grid are fitted as one batch first, then each from that answer).")
@click.option("--no-figures", is_flag=True, help="Do not draw campaign.png (or gravity.png).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary JSON to stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def campaign_cmd(files, out, order, telescope, dask_address, gravity, overwrite, as_json,
                 quiet, no_batch=False, no_figures=False):
    """Fit many observations (FITS files) and summarise the campaign.

    In process, the observations that share a dish, sky grid, defocus and order are
    fitted as one batch, then each polished on its own; with --dask each worker fits
    whole files.

    A file that cannot be read or fitted gets its row with the reason and the others go
    on; the exit code is 1 if any failed, 0 if all succeeded.
    """
    import json

    from gradfit.oof import campaign, io

    if str(out).strip() == "":
        raise CLIError("--out is empty; give a directory for the results")
    outp = Path(out)
    if outp.exists() and not outp.is_dir():
        raise CLIError(f"--out {out}: exists and is not a directory")
    for f in files:
        if _is_inside(Path(f), outp) and not overwrite:
            raise CLIError(f"--out {out}: holds the input {f}; choose another --out")

    def progress(done, total, row):
        if not quiet:
            state = "ok" if row["success"] else f"FAILED ({row['reason']})"
            click.echo(f"  [{done}/{total}] {row['name']}: {state}", err=True)

    try:
        res = campaign.fit_many(list(files), order=order, telescope=telescope, out=outp,
                                dask=dask_address, progress=progress, overwrite=overwrite,
                                batch=not no_batch, figures=not no_figures)
    except ImportError as exc:
        raise CLIError(f"--dask: {_one_line(exc)}") from None
    except ValueError as exc:
        raise CLIError(_one_line(exc)) from None
    except OSError as exc:
        raise _io_error(exc, str(out)) from None
    data = res.to_dict()
    if gravity:
        ok = [Path(r["file"]) for r in res.rows if r["success"]]
        try:
            model = campaign.fit_campaign([io.read(f) for f in ok], order=order,
                                          telescope=telescope)
        except ValueError as exc:
            raise CLIError(f"--gravity: {_one_line(exc)}") from None
        g = model.to_dict()
        (outp / "gravity.json").write_text(json.dumps(g, indent=1) + "\n")
        if not no_figures:
            model.plot(outp / "gravity.png")
        data["gravity"] = g
    if as_json:
        click.echo(json.dumps(data, indent=1, default=float))
    if not quiet:
        click.echo(str(res), err=True)
    return EXIT_OK if res.success else EXIT_FAILED


def _is_inside(path: Path, directory: Path) -> bool:
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(directory))
    except (OSError, ValueError):
        return False


@oof.command("plan")
@click.option("--telescope", default="effelsberg", show_default=True, help="Telescope name.")
@click.option("--frequency", type=float, default=32e9, show_default=True,
              help="Observing frequency (Hz).")
@click.option("--order", type=int, default=5, show_default=True, help="Zernike order fitted.")
@click.option("--snr", type=float, default=1000.0, show_default=True,
              help="In-focus peak over the noise per sample.")
@click.option("--npix", type=int, default=33, show_default=True, help="Samples per map side.")
@click.option("--half-width", "half_width", default="8", show_default=True,
              help="Map half width(s) in beams of 1.22 lambda/D, comma-separated to compare.")
@click.option("--dz", "dz", multiple=True,
              help="A candidate plan: defocus of each map in metres, comma-separated "
                   "(0 for the in-focus map); repeat to compare plans. Default: search "
                   "symmetric plans -d, 0, +d.")
@click.option("--criterion", default="D", show_default=True,
              help="D (determinant), A (trace) or worst (largest coefficient error).")
@click.option("--nuisance", default="amp,c_dB", show_default=True,
              help="Nuisance parameters marginalised, comma-separated.")
@click.option("--figure", type=click.Path(dir_okay=False), default=None,
              help="Write the figure of expected errors against dz to this PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON to stdout.")
def plan_cmd(telescope, frequency, order, snr, npix, half_width, dz, criterion, nuisance,
             figure, as_json):
    """Plan an observation: expected coefficient errors by Fisher information."""
    from gradfit.oof import plan as planning

    def floats(text, option):
        try:
            return [float(t) for t in str(text).split(",") if t.strip()]
        except ValueError:
            raise CLIError(f"{option} {text}: not a comma-separated list of numbers") from None

    if figure is not None and Path(figure).exists():
        raise CLIError(f"--figure {figure}: exists; choose a new file name")
    try:
        result = planning.plan(
            telescope, frequency, order=order, snr=snr, npix=npix,
            half_width_beams=floats(half_width, "--half-width"),
            dz=[floats(d, "--dz") for d in dz] or None, criterion=criterion,
            nuisance=[n.strip() for n in nuisance.split(",") if n.strip()])
    except (ValueError, KeyError) as exc:
        raise CLIError(f"oof plan: {_one_line(exc.args[0] if exc.args else exc)}") from None
    if figure is not None:
        planning.plan_figure(result, figure)
    if as_json:
        import json

        click.echo(json.dumps(result.to_dict(), indent=1, allow_nan=False))
    else:
        click.echo(str(result), err=True)


@oof.command("plot")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--obs",
    "obs_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Observation FITS (default: the input recorded in solution.json).",
)
@click.option(
    "--units",
    type=click.Choice(["arcsec", "beam", "rad"]),
    default="arcsec",
    show_default=True,
    help="Units of the map axes (beam: lambda/D).",
)
def plot_cmd(directory, obs_path, units):
    """Re-draw the figures of a 'gradfit oof fit' output DIRECTORY."""
    from gradfit.oof import plots

    d = Path(directory)
    if not d.is_dir():
        raise CLIError(f"{d}: no such directory")
    obs = _read_observation(obs_path) if obs_path else None
    from gradfit.oof.output import locked

    try:
        with locked(d):  # not while a fit is replacing the directory
            written = plots.plot_dir(d, obs, units=units)
    except ValueError as exc:  # OOFDataError included
        raise CLIError(_one_line(exc)) from None
    except OSError as exc:
        raise _io_error(exc, f"{d}: cannot write figures") from None
    for p in written:
        click.echo(str(p))


@cli.command("demo")
@click.option(
    "--out",
    "out",
    default="demo-output",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Output directory (new, empty, or an earlier demo's).",
)
@click.option("--order", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--npix", type=click.IntRange(min=5), default=33, show_default=True)
@click.option(
    "--snr", type=click.FloatRange(min=0, min_open=True), default=1000.0, show_default=True
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the solution JSON to stdout.")
def demo_cmd(out, order, npix, snr, seed, as_json):
    """Simulate an Effelsberg observation, fit it and write the figures to --out."""

    t0 = time.perf_counter()
    if not str(out).strip():
        raise CLIError("--out is empty; give a directory for the results")
    # the observation is part of the demo's result (observation.fits): no input to protect
    rd = _result_dir(out, [], overwrite=False, fingerprint=False)
    console = _stderr_console()
    console.print(
        f"simulating Effelsberg at 32 GHz: order {order}, {npix}x{npix} points per "
        f"map, SNR {snr:g}, seed {seed}"
    )
    obs = _simulate("effelsberg", order, snr, npix, seed, 32.0, 0.022)
    tel = _telescope("effelsberg")
    _enter(rd)
    try:
        sol = _run_fit(
            obs,
            order=order,
            likelihood="gaussian",
            method="lm",
            device="cpu",
            telescope=tel,
            errors="hessian",
            quiet=False,
        )
        adequacy = _assess(sol, obs, tel)
        settings = dict(
            order=order,
            likelihood="gaussian",
            method="lm",
            device="cpu",
            telescope=tel.name,
            errors="hessian",
        )
        obs_path = Path(out) / "observation.fits"
        data, _ = _publish(rd, sol, obs, input_path=obs_path, settings=settings,
                           adequacy=adequacy, figures=True, failed=not sol.success,
                           quiet=False, write_observation=True)
    finally:
        rd.__exit__(None, None, None)
    code = _finish(data, as_json, quiet=False, strict=False)
    _compare_truth(obs, data, console)
    console.print(
        f"demo done in {time.perf_counter() - t0:.1f} s; figures: "
        f"{Path(out) / 'maps.png'}, {Path(out) / 'surface.png'}"
    )
    return code


def _compare_truth(obs, data: dict, console) -> None:
    """Print the rms of (fit - truth) over the Zernike coefficients with n >= 2."""
    import math

    true = {}
    for z in (obs.truth or {}).get("zernike") or []:
        if isinstance(z, dict) and "K_waves" in z:
            true[(z.get("n"), z.get("l"))] = float(z["K_waves"])
    diffs = [
        z["value_waves"] - true[(z["n"], z["l"])]
        for z in data.get("zernike", [])
        if (z.get("n"), z.get("l")) in true and z.get("n", 0) >= 2 and "value_waves" in z
    ]
    if diffs:
        rms = math.sqrt(sum(d * d for d in diffs) / len(diffs))
        console.print(
            f"coefficients with n >= 2 against the simulation's truth: rms error "
            f"{rms:.4f} waves ({2 * math.pi * rms:.4f} rad) over {len(diffs)} coefficients"
        )


@cli.command(
    "bench",
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": [],
    },
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_cmd(args):
    """Run the benchmarks (gradfit.bench); arguments are passed through."""
    import importlib

    try:
        bench = importlib.import_module("gradfit.bench")
    except ModuleNotFoundError as exc:
        if exc.name in ("gradfit.bench",):
            raise CLIError("bench: gradfit.bench is not available in this installation") from None
        raise
    entry = getattr(bench, "main", None) or getattr(bench, "cli", None)
    if entry is None:
        raise CLIError("bench: gradfit.bench has no main() or cli entry point")
    if isinstance(entry, click.Command):
        rv = entry.main(args=list(args), prog_name="gradfit bench", standalone_mode=False)
    else:
        rv = entry(list(args))
    return rv if isinstance(rv, int) else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    main()
