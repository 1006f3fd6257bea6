"""Data larger than memory: chunked likelihoods equal the in-memory fit.

Chunked fits run Levenberg–Marquardt on JᵀJ and Jᵀr summed chunk by chunk
('lm-normal'); the reference is the same fit on the whole arrays, and the dense
SVD LM (pinned to SciPy and NIST elsewhere).
"""

import numpy as np
import pytest
import torch

import gradfit

P0 = {"a": 2.0, "k": 0.3, "b": 0.4, "w": 1.25}


def model(p, x):
    return p["a"] * torch.exp(-p["k"] * x) + p["b"] * torch.sin(p["w"] * x)


def curve(n=6000, seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 10.0, n)
    y = 3.0 * np.exp(-0.4 * x) + 0.5 * np.sin(1.3 * x) + 0.01 * rng.standard_normal(n)
    return x, y


def assert_same(r, ref, rtol, etol=None):
    assert r.success, r.message
    for k, v in ref.params.items():
        assert abs(r.params[k] - v) <= rtol * abs(v), (k, r.params[k], v)
        assert abs(r.errors[k] - ref.errors[k]) <= (etol or rtol) * ref.errors[k], k
    assert r.ndata == ref.ndata


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import h5py  # the test extra installs it
    d = tmp_path_factory.mktemp("chunks")
    x, y = curve()
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", y)
    with h5py.File(d / "data.h5", "w") as fh:
        fh["x"] = x
        fh["y"] = y
    return d


def test_every_source_gives_the_in_memory_answer(files):
    import h5py

    x, y = curve()
    ref = gradfit.fit(model, x, y, P0, method="lm-normal")
    dense = gradfit.fit(model, x, y, P0)  # SVD LM on the whole arrays
    assert_same(ref, dense, 1e-10)
    xm = np.load(files / "x.npy", mmap_mode="r")
    ym = np.load(files / "y.npy", mmap_mode="r")
    pieces = [(x[i:i + 1000], y[i:i + 1000]) for i in range(0, x.size, 1000)]
    with h5py.File(files / "data.h5", "r") as fh:
        runs = {
            "numpy": gradfit.fit(model, x, y, P0, chunk_size=777),
            "memmap": gradfit.fit(model, xm, ym, P0, chunk_size=1000),
            "hdf5": gradfit.fit(model, fh["x"], fh["y"], P0, chunk_size=1500),
            "list": gradfit.fit(model, pieces, None, P0),
            "callable": gradfit.fit(model, lambda: iter(pieces), None, P0),
        }
    for name, r in runs.items():
        assert r.method == "lm-normal" and "summed over the data chunks" in r.message, name
        assert r.error_method == "dense-gauss-newton"
        assert_same(r, ref, 1e-12)
    # follow-ups re-minimise on the same chunked data
    np.testing.assert_allclose(runs["memmap"].interval("k"), dense.interval("k"), rtol=1e-9)
    # float32 (e.g. on a GPU): the same answer to float32's resolution
    r32 = gradfit.fit(model, x, y, P0, chunk_size=1000, dtype="float32")
    assert_same(r32, dense, 1e-5, 1e-4)
    # the other solvers see the same objective through value_and_grad / hvp / hessian
    for meth, tol in (("lm-cg", 1e-10), ("bfgs", 1e-8), ("trust-exact", 1e-10)):
        assert_same(gradfit.fit(model, x, y, P0, method=meth, chunk_size=1000), dense, tol, 1e-6)


def test_priors_bounds_and_robust_likelihoods_chunked():
    x, y = curve(3000)
    kw = dict(params={"a": 2.0, "k": gradfit.Param(0.3, bounds=(0.01, 2.0)), "b": 0.4,
                      "w": 1.25},
              priors={"b": gradfit.Normal(0.5, 0.01)}, likelihood=gradfit.Gaussian(sigma=0.01))
    ref = gradfit.fit(model, x, y, method="lm-normal", **kw)
    # the prior is counted once, not once per chunk
    assert_same(gradfit.fit(model, x, y, chunk_size=500, **kw), ref, 1e-12)
    # a fitted nuisance parameter (Cauchy gamma) starts from the first chunk
    refc = gradfit.fit(model, x, y, P0, likelihood="cauchy", method="bfgs")
    rc = gradfit.fit(model, x, y, P0, likelihood="cauchy", method="bfgs", chunk_size=700)
    assert_same(rc, refc, 1e-7, 1e-5)
    assert abs(rc.fun - refc.fun) <= 1e-12 * abs(refc.fun)
    # Poisson counts, LM on deviance residuals
    rng = np.random.default_rng(3)
    lam = 20 * np.exp(-0.3 * x) + 5
    counts = rng.poisson(lam).astype(float)

    def pm(p, x):
        return p["a"] * torch.exp(-p["k"] * x) + p["c"]

    pp = {"a": 15.0, "k": 0.2, "c": 3.0}
    refp = gradfit.fit(pm, x, counts, pp, likelihood="poisson", method="lm-normal")
    assert_same(gradfit.fit(pm, x, counts, pp, likelihood="poisson", chunk_size=400), refp,
                1e-12)


def test_bad_chunked_input_is_named():
    x, y = curve(2000)
    yb = y.copy()
    yb[1234] = np.nan
    with pytest.raises(ValueError, match=r"y \(chunk 2\) contains 1 non-finite"):
        gradfit.fit(model, x, yb, P0, chunk_size=500)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        gradfit.fit(model, x, y, P0, chunk_size=0)
    with pytest.raises(ValueError, match="x must have the data on its first axis"):
        gradfit.fit(model, x[:-1], y, P0, chunk_size=500)
    with pytest.raises(TypeError, match="generator of chunks can be read only once"):
        gradfit.fit(model, ((x[i:i + 9], y[i:i + 9]) for i in range(0, 90, 9)), None, P0)
    with pytest.raises(ValueError, match="sigma is an array"):
        gradfit.fit(model, x, y, P0, likelihood=gradfit.Gaussian(sigma=np.full(y.size, 0.1)),
                    chunk_size=500)
    with pytest.raises(ValueError, match="'scipy-lm' needs the full residual vector"):
        gradfit.fit(model, x, y, P0, method="scipy-lm", chunk_size=500)
    pieces = [(x[:100], y[:100]), (x[100:200], y[100:150])]
    with pytest.raises(ValueError, match=r"on chunk 1 the model returned \(100,\)"):
        gradfit.fit(model, pieces, None, P0)


_PEAK_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import gradfit
from test_data import P0, curve, model
from test_large_scale import PeakAnon
n = 200_000  # x and y: 3.2 MB on disk
x, y = curve(n)
np.save(sys.argv[2] + "/x.npy", x)
np.save(sys.argv[2] + "/y.npy", y)
xm = np.load(sys.argv[2] + "/x.npy", mmap_mode="r")
ym = np.load(sys.argv[2] + "/y.npy", mmap_mode="r")
gradfit.fit(model, x[:5000], y[:5000], P0)  # warm up torch's one-off allocations
with PeakAnon() as chunked:
    r = gradfit.fit(model, xm, ym, P0, chunk_size=5000)
with PeakAnon() as whole:
    ref = gradfit.fit(model, x, y, P0)
print(json.dumps({"whole": whole.increase, "chunked": chunked.increase, "n": n,
                  "p": {k: float(r.params[k]) for k in P0},
                  "p_ref": {k: float(ref.params[k]) for k in P0}}))
"""


def test_peak_memory_is_bounded_by_the_chunk(tmp_path):
    """In a fresh process (so that memory freed by earlier tests cannot hide the peak)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(Path(__file__).parent),
                          str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout.strip().splitlines()[-1])
    for k in P0:
        assert d["p"][k] == pytest.approx(d["p_ref"][k], rel=1e-10)
    # in memory, x, y, the prediction and the n x 4 Jacobian are all whole-data arrays
    assert d["whole"] > 5 * 8 * d["n"], d
    assert d["chunked"] < 0.2 * d["whole"], d


