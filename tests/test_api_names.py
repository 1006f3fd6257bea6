"""One name for one idea: ``errors`` is a string, ``progress`` a bool or a callable,
``max_iter`` (never ``maxiter``); the old spellings still work, with a DeprecationWarning."""

import math

import numpy as np
import pytest
import torch

import gradfit
from gradfit.profile import profile

X = np.linspace(0.0, 2.0, 12)
Y = 3.0 * np.exp(-1.1 * X) + 0.02 * np.cos(7 * X)


def _model(p, x):
    return p["a"] * torch.exp(-p["b"] * x)


def _fit(**kw):
    return gradfit.fit(_model, X, Y, {"a": 1.0, "b": 0.5}, **kw)


def _nll(p):
    return 0.5 * ((p["a"] - 1.0) ** 2 / 0.04 + (p["b"] + 2.0) ** 2 / 0.25)


def test_errors_strings():
    res = _fit(errors="hessian")
    assert np.all(np.isfinite(res.cov)) and res.errors["a"] > 0
    none = _fit(errors="none")
    assert np.all(np.isnan(none.cov)) and math.isnan(none.errors["a"])
    assert none.params["a"] == pytest.approx(res.params["a"], rel=1e-10)
    assert _fit(errors="HESSIAN").errors["b"] == pytest.approx(res.errors["b"], rel=1e-12)
    m = gradfit.minimize(_nll, {"a": 0.0, "b": 0.0}, errors="hessian")
    assert m.errors["a"] == pytest.approx(0.2, rel=1e-6)
    assert m.errors["b"] == pytest.approx(0.5, rel=1e-6)
    assert math.isnan(gradfit.minimize(_nll, {"a": 0.0, "b": 0.0}, errors="none").errors["a"])


@pytest.mark.parametrize("old, new", [(True, "hessian"), (False, "none")])
def test_errors_bool_is_deprecated_but_works(old, new):
    with pytest.warns(DeprecationWarning, match=f"fit\\(errors={old}\\) is deprecated; use "
                                                f"errors='{new}'"):
        res = _fit(errors=old)
    assert np.all(np.isfinite(res.cov)) == old and np.all(np.isnan(res.cov)) == (not old)
    with pytest.warns(DeprecationWarning, match=f"minimize\\(errors={old}\\)"):
        m = gradfit.minimize(_nll, {"a": 0.0, "b": 0.0}, errors=old)
    assert math.isfinite(m.errors["a"]) == old


@pytest.mark.parametrize("bad", ["profile", "yes", 1, None])
def test_errors_bad_value_names_the_choices(bad):
    with pytest.raises(ValueError, match="errors must be one of 'hessian', 'none'"):
        _fit(errors=bad)


def test_progress_callable_gets_each_iteration():
    seen = []
    res = _fit(progress=seen.append, method="bfgs")
    assert res.success and len(seen) == res.nit
    assert [s["nit"] for s in seen] == list(range(1, res.nit + 1))
    assert all(s["stage"] == "fit" for s in seen)
    funs = [s["fun"] for s in seen]
    assert all(b <= a for a, b in zip(funs, funs[1:]))  # BFGS decreases f every step
    assert funs[-1] == pytest.approx(res.fun, rel=1e-9)


def test_progress_true_false_and_bad(capsys):
    _fit(progress=True)
    assert "iteration" in capsys.readouterr().err
    _fit(progress=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match="progress must be True, False or a callable"):
        _fit(progress="verbose")


def test_profile_progress_callable():
    res = _fit()
    seen = []
    prof = profile(res, "a", size=5, progress=seen.append)
    assert [s["done"] for s in seen] == [1, 2, 3, 4, 5]
    assert all(s["total"] == 5 and s["stage"] == "profile" for s in seen)
    assert np.all(np.isfinite(prof.nll))
    with pytest.raises(TypeError, match="progress must be True, False, None or a callable"):
        profile(res, "a", size=3, progress="yes")


def test_sample_progress_callable():
    pytest.importorskip("emcee")
    seen = []
    s = gradfit.sample(nll=_nll, params={"a": 1.0, "b": -2.0}, method="emcee", num_samples=6,
                       warmup=4, num_walkers=8, seed=1, progress=seen.append)
    assert s.samples["a"].shape == (6 * 8,)
    assert [d["step"] for d in seen] == list(range(1, 11))
    assert all(d["stage"] == "mcmc" and d["total"] == 10 for d in seen)


def test_bench_fit_helpers_take_max_iter_and_deprecate_maxiter():
    from gradfit.bench import fit_numpy_fd

    def nll(theta, st):
        return float(np.sum((theta - st) ** 2) + np.sum(theta ** 4))

    st = np.array([1.0, -2.0, 0.5])
    new = fit_numpy_fd(nll, st, np.zeros(3), max_iter=2)
    assert new.capped and new.nit == 2 and "capped at max_iter=2" in new.message
    with pytest.warns(DeprecationWarning, match=r"fit_numpy_fd\(maxiter=...\) is deprecated"):
        old = fit_numpy_fd(nll, st, np.zeros(3), maxiter=2)
    np.testing.assert_array_equal(old.x, new.x)
    with pytest.raises(TypeError, match="give max_iter or maxiter, not both"), \
            pytest.warns(DeprecationWarning):
        fit_numpy_fd(nll, st, np.zeros(3), max_iter=2, maxiter=2)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        fit_numpy_fd(nll, st, np.zeros(3), max_iters=2)
