"""The README's examples run as written, and so does the demo.

Every fenced ```bash (or ```sh) and ```python block of README.md is run in a fresh
directory: the shell blocks first, top to bottom (they make the files the Python
examples read, such as ``obs.fits``), then the Python blocks, top to bottom, in one
namespace, as a reader pasting them into one session would. New sections are picked
up automatically.

Only two things are not run:

* shell lines that start with ``make`` (they install packages; ``make demo`` is
  ``gradfit demo``, run below, and ``make test`` is this suite);
* a block whose first line is the marker ``# not run: <reason>``, visible to every
  reader. Use it sparingly: each one is listed in the test output.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from figures import assert_png
from honest import assert_chi2

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
OPT_OUT = re.compile(r"\A\s*#\s*not run:\s*(\S.*)$", re.M)
SHELL = {"bash", "sh", "shell"}


def readme_blocks(text: str):
    """(language, code, line number) of every fenced block, in order."""
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        out.append((m.group(1).lower(), m.group(2), line))
    return out


def runnable(blocks):
    """Split into (shell blocks, python blocks, opted out): the first two as
    (code, line) lists."""
    shell, python, skipped = [], [], []
    for lang, code, line in blocks:
        if lang not in SHELL and lang != "python":
            continue
        marker = OPT_OUT.match(code)
        if marker:
            skipped.append((line, marker.group(1).strip()))
            continue
        if lang in SHELL:
            # make installs packages: not in a test (the demo and the suite are run here)
            code = "\n".join(ln for ln in code.splitlines()
                             if not re.match(r"\s*make(\s|$)", ln))
            if code.strip():
                shell.append((code, line))
        else:
            python.append((code, line))
    return shell, python, skipped


def _gradfit_on_path(tmp_path: Path) -> dict:
    """An environment whose ``gradfit`` is this checkout's, run by this interpreter."""
    bindir = tmp_path / ".bin"
    bindir.mkdir()
    shim = bindir / "gradfit"
    shim.write_text(f"#!/bin/sh\nexec '{sys.executable}' -c 'import sys; "
                    "from gradfit.cli import main; sys.argv[0] = \"gradfit\"; "
                    "sys.exit(main())' \"$@\"\n")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("MPLBACKEND", "Agg")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_block_parser_and_markers():
    text = ("intro\n```bash\nmake demo\ngradfit --help\n```\n"
            "```python\n# not run: needs a GPU\nx = 1\n```\n"
            "```python\ny = 2\n```\n```text\nnot code\n```\n")
    shell, python, skipped = runnable(readme_blocks(text))
    assert shell == [("gradfit --help", 2)]
    assert python == [("y = 2\n", 10)]
    assert skipped == [(6, "needs a GPU")]


def test_readme_examples_run(tmp_path, monkeypatch, capsys):
    shell, python, skipped = runnable(readme_blocks(README.read_text()))
    # the README has at least the five-line fit, the OOF Python example and its shell
    # example; fewer would mean the parser lost them
    assert len(python) >= 3 and len(shell) >= 1, (len(python), len(shell))
    print(f"README: {len(shell)} shell and {len(python)} Python blocks run; "
          f"{len(skipped)} opted out: {skipped}")
    work = tmp_path / "readme"
    work.mkdir()
    env = _gradfit_on_path(tmp_path)
    for code, line in shell:
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=work, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (
            f"README.md line {line}: shell block failed ({r.returncode})\n{code}\n"
            f"--- stderr ---\n{r.stderr[-3000:]}")
    monkeypatch.chdir(work)
    namespace = {"__name__": "__readme__"}
    for code, line in python:
        # compiled with README line numbers, so a failure points at the README
        compiled = compile("\n" * (line) + code, str(README), "exec")
        exec(compiled, namespace)  # noqa: S102 -- running the README is the point
    capsys.readouterr()
    # what the OOF examples made is real: a solution, figures, and the MCMC corner plot
    sol = json.loads((work / "solution.json").read_text())
    assert sol["fit"]["success"] is True and sol["order"] == 5
    for png in ("result/maps.png", "result/surface.png", "corner.png"):
        assert_png(work / png)
    assert namespace["sol"].success and namespace["res"].success


def _demo_checks(out: Path, stdout: str, order: int):
    sol = json.loads(stdout)
    assert sol["fit"]["success"] is True and sol["order"] == order
    for name in ("observation.fits", "solution.json", "maps.png", "surface.png"):
        assert (out / name).exists(), name
    for name in ("maps.png", "surface.png"):
        assert_png(out / name)
    # the fit recovers the simulation's truth within its errors, two-sided: the sum of
    # squared pulls is about chi-square (the full-covariance checks: test_oof_fit.py)
    from gradfit.oof import io

    truth = io.read(out / "observation.fits").truth["zernike"]
    pulls = [(c["value_waves"] - t["K_waves"]) / c["error_waves"]
             for c, t in zip(sol["zernike"], truth, strict=True) if c["n"] >= 1]
    assert_chi2(float(sum(p * p for p in pulls)), len(pulls), "demo against the truth")


def test_demo_quick(tmp_path):
    """`gradfit demo` (what `make demo` runs) on a small map, in this process."""
    from click.testing import CliRunner

    from gradfit.cli import cli

    out = tmp_path / "demo"
    r = CliRunner().invoke(cli, ["demo", "--out", str(out), "--order", "3", "--npix", "17",
                                 "--json"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "against the simulation's truth: rms error" in r.stderr
    assert "demo done in" in r.stderr
    _demo_checks(out, r.stdout, 3)


@pytest.mark.slow
def test_make_demo_command(tmp_path):
    """Exactly the Makefile's demo command (without its install step), in a fresh process."""
    make = (ROOT / "Makefile").read_text()
    cmd = re.search(r"^demo:.*\n\t(gradfit demo[^\n]*)", make, re.M)
    assert cmd, "Makefile: no 'demo' target running 'gradfit demo'"
    env = _gradfit_on_path(tmp_path)
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd.group(1) + " --json"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / re.search(r"--out\s+(\S+)", cmd.group(1)).group(1)
    _demo_checks(out, r.stdout, 5)
