import os

import pytest
import torch

from harness.data.world import WorldConfig

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


@pytest.fixture(scope="session")
def world() -> WorldConfig:
    return WorldConfig()
