"""The Moré–Garbow–Hillstrom test set (gradfit.mgh) through the minimisers.

Fast: the problem definitions at their closed-form minimisers, and a subset of
small instances through every main method (solved, no false success claim).
Slow: all 38 instances through every method, against the solved counts of the
best SciPy peer (issue 10). ``benchmarks/mgh.py`` prints the full table.
"""

import math

import pytest

from gradfit import mgh


def test_38_instances_of_35_problems():
    assert len(mgh.PROBLEMS) == 38
    assert sorted({p.number for p in mgh.PROBLEMS}) == list(range(1, 36))
    for p in mgh.PROBLEMS:
        assert len(p.x0) == p.n
        assert p.residuals(p.start()).shape == (p.m,)
        assert math.isfinite(float(p.cost(p.start())))


# Closed-form minimisers from the paper: F(x*) = 0 there, and > 0 nearby.
ZEROS = [(1, None, (1.0, 1.0)), (4, None, (1e6, 2e-6)), (5, None, (3.0, 0.5)),
         (7, None, (1.0, 0.0, 0.0)), (11, None, (50.0, 25.0, 1.5)),
         (12, None, (1.0, 10.0, 1.0)), (13, None, (0.0, 0.0, 0.0, 0.0)),
         (14, None, (1.0, 1.0, 1.0, 1.0)), (18, None, (1.0, 10.0, 1.0, 5.0, 4.0, 3.0)),
         (21, None, (1.0,) * 10), (25, None, (1.0,) * 10), (27, None, (1.0,) * 10)]


@pytest.mark.parametrize("number,n,xstar", ZEROS, ids=[str(z[0]) for z in ZEROS])
def test_published_zero_minimisers(number, n, xstar):
    import torch

    p = mgh.problem(number, n)
    x = torch.tensor(xstar, dtype=torch.float64)
    assert float(p.cost(x)) < 1e-20
    assert float(p.cost(x * (1 + 1e-3) + 1e-3)) > 1e-14


def test_linear_problems_have_their_closed_form_minimum():
    # the linear problems' minima are known in closed form (paper, problems 32-34)
    assert mgh.problem(32).fstar == 10.0
    assert mgh.problem(33).fstar == pytest.approx(20 * 19 / (2 * 41))
    assert mgh.problem(34).fstar == pytest.approx((400 + 60 - 6) / (2 * 37))


SUBSET = [(1, None), (5, None), (6, None), (7, None), (8, None), (9, None), (15, None),
          (20, 6), (23, 4), (25, None), (33, None), (35, None)]


@pytest.mark.parametrize("method", ["lm", "bfgs", "lbfgs", "trust-exact", "newton-cg"])
def test_subset_solved_without_false_claims(method):
    missed = []
    for number, n in SUBSET:
        p = mgh.problem(number, n)
        run = mgh.run_gradfit(p, method)
        assert not run.false_claim(p), (p.label, run.F, run.message)
        if not (run.success and run.solved(p)):
            missed.append((p.label, run.F, run.message))
    assert not missed


# What the best SciPy peer solves (issue 10, measured there); gradfit must match it.
# trust-krylov had no goal there (SciPy's solves 27 here); 35 is what it reaches now.
GOALS = {"bfgs": 35, "lbfgs": 33, "newton-cg": 31, "trust-exact": 35, "lm": 36,
         "default": 36, "trust-krylov": 35}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(GOALS))
def test_all_instances_against_the_best_peer(method):
    solved, false = [], []
    for p in mgh.PROBLEMS:
        run = mgh.run_gradfit(p, method)
        solved.append(run.solved(p))
        if run.false_claim(p):
            false.append((p.label, run.F, run.message))
    assert not false
    assert sum(solved) >= GOALS[method]
    # F-R and trigonometric (n=10) end at their published local minima from the standard
    # start for every solver tried; nothing can solve more than 36
    assert sum(solved) <= 36
