import os

import pytest
import torch

import metarec  # noqa: F401  (registers the environments)

# Two test workers on two cores: one torch thread each keeps them from fighting.
torch.set_num_threads(int(os.environ.get("METAREC_TEST_THREADS", "1")))


@pytest.fixture
def cpu_generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
