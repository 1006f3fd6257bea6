import os
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data"

# small tensors: one thread avoids erratic slowdowns on 2-core machines
torch.set_num_threads(int(os.environ.get("GRADFIT_TEST_THREADS", "1")))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def data_dir():
    return DATA


def _devices():
    # the CUDA variant is collected only where a GPU exists (no skipped checks elsewhere);
    # it carries the 'cuda' marker, so `pytest -m cuda` runs just the GPU checks
    devs = ["cpu"]
    if torch.cuda.is_available():
        devs.append(pytest.param("cuda", marks=pytest.mark.cuda))
    return devs


@pytest.fixture(params=_devices())
def device(request):
    """Runs a test on the CPU, and on CUDA too where a GPU exists."""
    return request.param
