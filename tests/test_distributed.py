"""One likelihood over two processes (gloo on loopback) against the single-process fit."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gradfit

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import dist_worker  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script, out, timeout_s="120"):
    env = dict(os.environ, OMP_NUM_THREADS="1", GRADFIT_DIST_TIMEOUT=timeout_s,
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(HERE / script), str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "rank"
    proc = _launch("dist_worker.py", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(Path(f"{out}.{r}.json").read_text()) for r in (0, 1)]


def test_two_ranks_match_single_process(two_ranks):
    x, y = dist_worker.data()
    ref = gradfit.fit(dist_worker.model, x, y, dist_worker.P0, method="lm")
    r0, r1 = two_ranks
    for name in dist_worker.CASES:
        # every rank returns the identical result
        assert r0[name] == r1[name], name
        got = r0[name]
        assert got["success"] and got["ndata"] == x.size
        # L-BFGS stops on its own f-resolution test, a little short of 1e-10
        tol = 1e-8 if name.startswith("lbfgs") else 1e-10
        for k, v in ref.params.items():
            assert abs(got["params"][k] - v) <= tol * abs(v), (name, k)
            assert abs(got["errors"][k] - ref.errors[k]) <= 1e-6 * ref.errors[k], (name, k)
        assert abs(got["fun"] - ref.fun) <= 1e-12 * ref.fun
    assert r0["lm"]["method"] == "lm-normal"  # dense JᵀJ summed over the ranks
    assert r0["lm-cg-chunks"]["method"] == "lm-cg"


def test_failing_rank_raises_on_every_rank(two_ranks):
    for got in two_ranks:
        assert got["failure"].startswith("DistributedError: rank(s) 1 of 2 failed")
    assert "model exploded on rank 1" in two_ranks[1]["failure"]


def test_mismatched_parameter_shapes(two_ranks):
    for got in two_ranks:
        assert got["shapes"].startswith("ValueError: the ranks fit different parameters")
        assert "c(2,)" in got["shapes"] and "c(3,)" in got["shapes"]


def test_distributed_needs_a_process_group(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    x, y = dist_worker.data()
    with pytest.raises(ValueError, match="torchrun"):
        gradfit.fit(dist_worker.model, x, y, dist_worker.P0, distributed=True)
    assert not np.isnan(y).any()


@pytest.mark.slow
def test_a_rank_that_dies_does_not_hang_the_others(tmp_path):
    proc = _launch("dist_hard_death.py", tmp_path / "rank", timeout_s="30")
    assert proc.returncode != 0  # torchrun reports the dead rank
    got = (tmp_path / "rank.0").read_text()
    assert got.startswith("DistributedError: rank 0: the all-reduce failed"), got
