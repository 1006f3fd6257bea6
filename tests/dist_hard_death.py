"""Worker for tests/test_distributed.py: rank 1 dies outright (os._exit) mid-fit."""

import os
import sys

import dist_worker
import gradfit


def main(out):
    rank = int(os.environ["RANK"])
    x, y = dist_worker.data()
    calls = [0]

    def model(p, x):
        calls[0] += 1
        if rank == 1 and calls[0] > 6:
            os._exit(3)  # no exception, no flag: the others must not hang
        return dist_worker.model(p, x)

    try:
        gradfit.fit(model, x[rank::2], y[rank::2], dist_worker.P0, distributed=True)
        got = "no error"
    except Exception as exc:  # noqa: BLE001 - the test checks the type and text
        got = f"{type(exc).__name__}: {exc}"
    with open(f"{out}.{rank}", "w") as fh:
        fh.write(got)


if __name__ == "__main__":
    main(sys.argv[1])
