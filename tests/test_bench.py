"""``gradfit bench`` on a tiny configuration: schema and sanity, never timings."""

import json
import math

import pytest

from figures import assert_png
from gradfit.bench import scaling as bench

TINY = dict(quick=True, sizes=(16, 24), orders=(1, 2), params_nn=16, repeats=1,
            numpy_fit_cap_s=5.0, generic_nn=16, generic_sources=1, gradfit_methods=("lbfgs",),
            impls=("numpy-fd", "torch-cpu", "torch-cuda", "jax"))


@pytest.fixture(scope="module")
def report():
    return bench.run(**TINY, log=lambda msg: None)


def _positive(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_schema(report):
    assert set(report) >= {"machine", "results"}
    assert isinstance(report["machine"], dict) and report["machine"]["cpu_count"] >= 1
    rows = report["results"]
    kinds = {(r["kind"], r["nn"], r["n_params"]) for r in rows}
    assert kinds == {("size", 16, 16), ("size", 24, 16), ("params", 16, 4), ("params", 16, 7)}
    for r in rows:
        assert r["impl"] in {"numpy-fd", "torch-cpu", "torch-cuda", "jax"}
        for key in ("t_eval_s", "t_fit_s", "neg_log_likelihood", "t_f_s"):
            assert _positive(r[key]), (key, r)
        assert isinstance(r["n_iter"], int) and r["n_iter"] >= 1
        assert isinstance(r["nn"], int) and isinstance(r["n_params"], int)
    assert {r["impl"] for r in rows} >= {"numpy-fd", "torch-cpu"}


def test_ratios_and_agreement(report):
    for r in report["results"] + report["generic"]:
        if r["impl"] == "numpy-fd":
            assert r["speedup_eval_vs_numpy_fd"] == 1.0
            assert _positive(r["fd_cost_ratio"])
        else:
            assert _positive(r["autodiff_overhead"])
            assert _positive(r["speedup_eval_vs_numpy_fd"])
            assert _positive(r["speedup_fit_vs_numpy_fd"])
        assert r["rel_diff_nll_vs_best"] >= 0
    # the before and after fits of the same problem end at the same −log L
    for r in report["results"]:
        if not r["capped"] and r["method"] == "scipy-bfgs+autodiff":
            assert r["rel_diff_nll_vs_best"] < 1e-6


def test_absent_backends_are_noted(report):
    import torch

    notes = " ".join(report["machine"]["notes"])
    if not torch.cuda.is_available():
        assert "torch-cuda not measured" in notes
        assert all(r["impl"] != "torch-cuda" for r in report["results"])
    try:
        import jax  # noqa: F401
    except ImportError:
        assert "jax not measured" in notes


def test_generic_and_threads(report):
    g = report["generic"]
    assert {r["impl"] for r in g} >= {"numpy-fd", "torch-cpu"}
    assert all(r["kind"] == "gaussians2d" and r["n_params"] == 5 for r in g)
    assert [t["nn"] for t in report["threads"]] == [16, 24]
    for t in report["threads"]:
        assert all(_positive(v) for k, v in t.items() if k.startswith("t_eval_"))
    assert isinstance(report["summary"], str) and "GPU" in report["summary"]


def test_json_and_files(report, tmp_path, capsys):
    bench.write_outputs(report, str(tmp_path), figures=True)
    for name in ("bench.json", "summary.txt"):
        assert (tmp_path / name).stat().st_size > 0
    for name in ("time_vs_size.png", "time_vs_params.png"):
        assert_png(tmp_path / name)
    assert "nn" in (tmp_path / "summary.txt").read_text()
    back = json.loads((tmp_path / "bench.json").read_text())
    assert len(back["results"]) == len(report["results"])
    assert "nn" in bench.format_table(report)


def test_json_out_prints_one_object(capsys):
    bench.run(quick=True, sizes=(16,), orders=(1,), params_nn=16, repeats=1, json_out=True,
              generic=False, threads_check=False, gradfit_methods=(), impls=("torch-cpu",),
              log=lambda msg: None)
    out = capsys.readouterr().out
    obj = json.loads(out)
    assert set(obj) >= {"machine", "results"} and len(obj["results"]) == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown impl"):
        bench.run(quick=True, impls=("numpy",), log=lambda msg: None)
    with pytest.raises(ValueError, match="threads"):
        bench.run(quick=True, threads=0, log=lambda msg: None)


def test_main_parses_flags(monkeypatch):
    seen = {}
    monkeypatch.setattr(bench, "run", lambda **kw: seen.update(kw) or {})
    assert bench.main(["--quick", "--json", "--out", "x"]) == 0
    assert seen == {"quick": True, "out": "x", "json_out": True}
    seen.clear()
    assert bench.main(["--sizes", "512,1024", "--orders", "none", "--impls",
                       "numpy-fd,torch-cuda", "--cap", "60"]) == 0
    assert seen["sizes"] == (512, 1024) and seen["orders"] == ()
    assert seen["impls"] == ("numpy-fd", "torch-cuda") and seen["numpy_fit_cap_s"] == 60.0
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "a,b"])


def test_cuda_path_runs_with_a_cpu_stand_in(monkeypatch):
    """The torch-cuda code path (rows, ratios, summary), run on the CPU where no GPU exists."""
    import torch

    if not torch.cuda.is_available():
        monkeypatch.setattr(bench, "CUDA_DEVICE", "cpu")
        monkeypatch.setattr(bench, "_cuda_available", lambda: True)
    rep = bench.run(quick=True, sizes=(16,), orders=(), params_nn=16, repeats=1, generic=False,
                    threads_check=False, gradfit_methods=(), impls=("numpy-fd", "torch-cuda"),
                    numpy_fit_cap_s=5.0, log=lambda msg: None)
    rows = [r for r in rep["results"] if r["impl"] == "torch-cuda"]
    assert len(rows) == 1 and _positive(rows[0]["t_eval_s"]) and _positive(rows[0]["t_fit_s"])
    assert rows[0]["rel_diff_nll_vs_best"] < 1e-6
    assert rep["machine"]["cuda"] is True and "GPU" in rep["summary"]
