"""One likelihood over many processes with torch.distributed.

``gradfit.fit(model, x_shard, y_shard, params, distributed=True)``, run by every
rank under ``torchrun``, fits the sum of the ranks' −log L: gradfit initialises the
process group from the environment when needed (gloo on CPU, NCCL on CUDA), checks
that all ranks fit the same parameters, starts every rank from rank 0's values, and
all-reduces f, ∇f, ``JᵀJ``/``Jᵀr`` or the CG products (:mod:`gradfit.data`), so that
every rank takes identical steps and returns the identical result.

Failures do not hang: every reduction carries one flag per rank, so an exception in
one rank's model makes every rank raise :class:`DistributedError` naming it (the
failing rank raises it chained to its own exception); a rank that dies outright is
caught by the process group's timeout.

The same script runs on a cluster::

    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint head-node:29500 my_fit.py
"""

from __future__ import annotations

import atexit
import datetime
import os
import time

import torch

__all__ = ["DistributedError", "Reducer", "DEFAULT_TIMEOUT_S", "setup", "check_same",
           "broadcast", "check_identical"]

#: Seconds a collective waits for a missing rank before every rank raises.
DEFAULT_TIMEOUT_S = float(os.environ.get("GRADFIT_DIST_TIMEOUT", "300"))


class DistributedError(RuntimeError):
    """A distributed fit cannot go on: a rank failed or the ranks disagree."""


def _dist():
    import torch.distributed as dist

    if not dist.is_available():
        raise DistributedError("distributed=True needs torch.distributed, which this torch "
                               "build does not provide")
    return dist


def setup(device: torch.device, timeout_s: float | None = None):
    """Initialise the default process group from the environment if needed.

    Returns ``(rank, world_size, backend)``. The backend is NCCL for a CUDA device and
    gloo otherwise; under torchrun, ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` are set.
    """
    dist = _dist()
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
                   if k not in os.environ]
        if missing:
            raise ValueError(
                "distributed=True needs a process group: run the script with torchrun "
                "(e.g. `torchrun --nproc_per_node 2 fit.py`), or call "
                f"torch.distributed.init_process_group first (missing: {', '.join(missing)})")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda" and "LOCAL_RANK" in os.environ:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend, timeout=datetime.timedelta(
            seconds=DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s))
        # A group left alive at interpreter exit aborts the process (gloo's threads).
        atexit.register(_destroy)
    return dist.get_rank(), dist.get_world_size(), dist.get_backend()


def _destroy():
    dist = _dist()
    if dist.is_initialized():
        dist.destroy_process_group()


class Reducer:
    """Sums a tensor over all ranks, with a per-rank failure flag in the same message.

    ``calls``, ``seconds`` and ``bytes`` count the all-reduces (for benchmarks).
    """

    def __init__(self, device: torch.device):
        dist = _dist()
        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.comm_device = _comm_device(device)
        self.calls = 0
        self.seconds = 0.0
        self.bytes = 0

    def sum(self, t: torch.Tensor, error: BaseException | None = None) -> torch.Tensor:
        flags = torch.zeros(self.world_size, dtype=t.dtype, device=t.device)
        if error is not None:
            flags[self.rank] = 1.0
        payload = torch.cat([t.reshape(-1), flags]).to(self.comm_device)
        t0 = time.perf_counter()
        try:
            self._dist.all_reduce(payload)
        except RuntimeError as exc:  # a rank died (connection reset) or the timeout passed
            raise DistributedError(
                f"rank {self.rank}: the all-reduce failed, so another rank died or stalled "
                f"(timeout {DEFAULT_TIMEOUT_S:g} s, GRADFIT_DIST_TIMEOUT): {exc}") from exc
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.bytes += payload.numel() * payload.element_size()
        payload = payload.to(t.device)
        bad = [i for i, f in enumerate(payload[t.numel():].tolist()) if f != 0]
        if bad:
            who = ", ".join(map(str, bad))
            msg = (f"rank(s) {who} of {self.world_size} failed while evaluating the "
                   "likelihood; every rank stops")
            if error is not None:
                raise DistributedError(f"{msg}: {type(error).__name__}: {error}") from error
            raise DistributedError(f"{msg} (see that rank's error)")
        return payload[: t.numel()].reshape(t.shape)


def check_same(signature: str, error: BaseException | None = None) -> None:
    """Every rank must fit the same parameters: compare ``signature`` across ranks.

    A rank whose own set-up failed passes its ``error``; then every rank raises.
    """
    dist = _dist()
    world = dist.get_world_size()
    mine = ("error", f"{type(error).__name__}: {error}") if error is not None else \
        ("ok", signature)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    failed = [(i, m) for i, (k, m) in enumerate(gathered) if k == "error"]
    if failed:
        text = "; ".join(f"rank {i}: {m}" for i, m in failed)
        if error is not None:
            raise DistributedError(f"set-up failed on {text}") from error
        raise DistributedError(f"set-up failed on {text}")
    sigs = [m for _, m in gathered]
    if any(s != sigs[0] for s in sigs):
        text = "; ".join(f"rank {i}: {s}" for i, s in enumerate(sigs))
        raise ValueError(f"the ranks fit different parameters (names and shapes must agree on "
                         f"every rank): {text}")


def _comm_device(device: torch.device) -> torch.device:
    """NCCL reduces CUDA tensors (even for a fit on the CPU); gloo host tensors."""
    if _dist().get_backend() == "nccl":
        return device if device.type == "cuda" else torch.device(
            "cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rank 0's copy of ``t`` on every rank."""
    dist = _dist()
    buf = t.detach().to(_comm_device(device)).clone()
    dist.broadcast(buf, src=0)
    return buf.to(t.device)


def check_identical(theta: torch.Tensor, device: torch.device) -> None:
    """Raise if the ranks ended at different points (they agree bit for bit, NaN included)."""
    import hashlib

    dist = _dist()
    mine = hashlib.sha256(theta.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if any(g != mine for g in gathered):
        raise DistributedError("the ranks ended at different parameters; this is a bug "
                               "(or a model that is not deterministic)")
